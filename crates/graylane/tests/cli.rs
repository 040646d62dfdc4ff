//! `graylane validate` and `graylane eval`, run as a user runs them.

mod common;

use common::*;

#[test]
fn validate_accepts_the_briefs_example_with_a_one_line_summary() {
    let file = fixture("brief.yaml");
    let out = run(&["validate", file.to_str().unwrap()]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {:?}", out.stdout);
    let line = lines[0];
    assert!(
        line.starts_with(&format!("{}: ok", file.display())),
        "{line}"
    );
    for part in [
        "1 listener",
        "1 service",
        "1 segment",
        "payment: stable → canary at 0%",
    ] {
        assert!(line.contains(part), "{part:?} missing from {line:?}");
    }
    assert!(out.stderr.is_empty(), "{:?}", out.stderr);
}

#[test]
fn validate_summarises_each_strategy_in_its_own_terms() {
    let file = fixture("three_strategies.yaml");
    let out = run(&["validate", file.to_str().unwrap()]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_eq!(
        out.stdout,
        format!(
            "{}: ok: 1 listener, 3 services, 0 segments; releases: payment: stable → canary at 5%, \
             web: blue-green blue → green, search: experiment control (a) 70% · treatment (b) 30%\n",
            file.display()
        )
    );
}

/// A bad file, the line and key path its error must name, part of the message, and a piece
/// of text on that line of the file (so the expectation itself is checked against the file).
struct Bad {
    file: &'static str,
    line: usize,
    key: &'static str,
    says: &'static str,
    on_line: Option<&'static str>,
}

const BAD: &[Bad] = &[
    Bad {
        file: "yaml_syntax.yaml",
        line: 7,
        key: "services[0].versions.stable",
        says: "did not find expected ',' or '}'",
        on_line: None,
    },
    Bad {
        file: "unknown_key.yaml",
        line: 13,
        key: "services[0].release.bukcet_by",
        says: "unknown field `bukcet_by`, expected one of",
        on_line: Some("bukcet_by:"),
    },
    Bad {
        file: "weight_150.yaml",
        line: 16,
        key: "services[0].release.steps[1].weight",
        says: "weight 150 must be a percentage from 0 to 100",
        on_line: Some("weight: 150"),
    },
    Bad {
        file: "unknown_segment.yaml",
        line: 18,
        key: "services[0].release.force[1].segment.name",
        says: "unknown segment `staf`; did you mean `staff`?",
        on_line: Some("name: staf,"),
    },
    Bad {
        file: "bad_regex.yaml",
        line: 16,
        key: "services[0].release.force[0].cookie.regex",
        says: "invalid regex `^(yes|on`",
        on_line: Some("regex:"),
    },
    Bad {
        file: "bad_cidr.yaml",
        line: 5,
        key: "listeners[0].trusted_hops[1]",
        says: "`10.1.2.300/24` is not a CIDR",
        on_line: Some("10.1.2.300/24"),
    },
    Bad {
        file: "bad_semver.yaml",
        line: 14,
        key: "services[0].release.force[0].semver.range",
        says: "`>=2.banana <3.0.0` is not a semver range",
        on_line: Some("range:"),
    },
    Bad {
        file: "duplicate_service.yaml",
        line: 12,
        key: "services[2].name",
        says: "duplicate service name `payment` (also services[0])",
        on_line: Some("name: payment"),
    },
    Bad {
        file: "overlapping_listeners.yaml",
        line: 3,
        key: "listeners[1].bind",
        says: "0.0.0.0:8080 overlaps 127.0.0.1:8080",
        on_line: Some("0.0.0.0:8080"),
    },
    Bad {
        file: "unknown_candidate.yaml",
        line: 12,
        key: "services[0].release.candidate",
        says: "unknown version `canry`",
        on_line: Some("candidate: canry"),
    },
];

#[test]
fn validate_rejects_bad_files_naming_the_line_and_key() {
    for bad in BAD {
        let path = fixture(&format!("bad/{}", bad.file));
        let shown = path.display().to_string();
        if let Some(text) = bad.on_line {
            let content = std::fs::read_to_string(&path).unwrap();
            let line = content.lines().nth(bad.line - 1).unwrap_or("");
            assert!(
                line.contains(text),
                "fixture {}: line {} is {line:?}",
                bad.file,
                bad.line
            );
        }
        let out = run(&["validate", &shown]);
        assert_eq!(out.code(), Some(1), "{}: {out:?}", bad.file);
        assert!(out.stdout.is_empty(), "{}: {:?}", bad.file, out.stdout);
        let error = out
            .stderr
            .lines()
            .find(|l| l.starts_with(&format!("error: {shown}:{}:", bad.line)))
            .unwrap_or_else(|| {
                panic!(
                    "{}: no error on line {}:\n{}",
                    bad.file, bad.line, out.stderr
                )
            });
        assert!(
            error.contains(&format!(": {}", bad.key)),
            "{}: key path {} missing: {error}",
            bad.file,
            bad.key
        );
        assert!(
            error.contains(bad.says),
            "{}: {:?} missing: {error}",
            bad.file,
            bad.says
        );
        assert_eq!(
            out.stderr.lines().last(),
            Some(format!("{shown}: 1 error").as_str()),
            "{}",
            bad.file
        );
    }
}

#[test]
fn validate_reports_every_error_of_a_file_at_once() {
    let path = fixture("bad/several_errors.yaml");
    let shown = path.display().to_string();
    let out = run(&["validate", &shown]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    let expected = [
        (3, "listeners[0].trusted_hops[0]", "10.0.0.0/33"),
        (
            18,
            "services[0].release.force[0].segment.name",
            "did you mean `staff`?",
        ),
        (21, "services[0].release.steps[1].weight", "weight 101"),
    ];
    assert_eq!(errors.len(), expected.len(), "{}", out.stderr);
    for (line, key, says) in expected {
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with(&format!("error: {shown}:{line}:"))
                    && e.contains(&format!(": {key}: "))
                    && e.contains(says)),
            "no error at line {line} for {key}:\n{}",
            out.stderr
        );
    }
    assert!(
        out.stderr.ends_with(&format!("{shown}: 3 errors\n")),
        "{}",
        out.stderr
    );
}

/// The `error: ` lines of a failed `validate`.
fn validate_errors(path: &std::path::Path) -> (String, Vec<String>) {
    let out = run(&["validate", path.to_str().unwrap()]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    let errors = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .map(str::to_string)
        .collect();
    (out.stderr, errors)
}

fn assert_reported(
    stderr: &str,
    errors: &[String],
    shown: &str,
    line: usize,
    key: &str,
    says: &str,
) {
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with(&format!("error: {shown}:{line}:"))
                && e.contains(&format!(": {key}: "))
                && e.contains(says)),
        "no error at line {line} for {key} saying {says:?}:\n{stderr}"
    );
}

#[test]
fn validate_reports_the_errors_after_an_unknown_key_too() {
    let path = fixture("bad/unknown_keys_and_more.yaml");
    let shown = path.display().to_string();
    let (stderr, errors) = validate_errors(&path);
    let expected = [
        (
            3,
            "listeners[0].max_conections",
            "did you mean `max_connections`?",
        ),
        (
            17,
            "services[0].release.bukcet_by",
            "did you mean `bucket_by`?",
        ),
        (
            19,
            "services[0].release.force[0].segment.name",
            "did you mean `staff`?",
        ),
        (22, "services[0].release.steps[1].weight", "weight 101"),
    ];
    assert_eq!(errors.len(), expected.len(), "{stderr}");
    for (line, key, says) in expected {
        assert_reported(&stderr, &errors, &shown, line, key, says);
    }
    assert!(
        stderr.ends_with(&format!("{shown}: 4 errors\n")),
        "{stderr}"
    );
}

#[test]
fn validate_reports_every_wrongly_typed_value_and_unknown_key() {
    let path = fixture("bad/wrong_types.yaml");
    let shown = path.display().to_string();
    let (stderr, errors) = validate_errors(&path);
    let expected = [
        (
            3,
            "listeners[0].max_connections",
            "invalid type: string \"many\"",
        ),
        (
            7,
            "services[0].versions.stable.weight",
            "unknown field `weight`",
        ),
        (8, "services[0].load_balancing", "invalid type: sequence"),
    ];
    assert_eq!(errors.len(), expected.len(), "{stderr}");
    for (line, key, says) in expected {
        assert_reported(&stderr, &errors, &shown, line, key, says);
    }
}

#[test]
fn validate_refuses_a_deeply_nested_file_at_once() {
    let dir = temp_dir("deep");
    let path = dir.join("deep.yaml");
    // 200 KB nested 100,000 deep: minutes of parsing without the limit.
    let depth = 100_000;
    std::fs::write(
        &path,
        format!("listeners: {}{}\n", "[".repeat(depth), "]".repeat(depth)),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let out = run(&["validate", path.to_str().unwrap()]);
    let took = started.elapsed();
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.starts_with(&format!(
            "error: {}:1:139: the document nests more than 128 levels deep",
            path.display()
        )),
        "{}",
        out.stderr
    );
    assert!(took < std::time::Duration::from_secs(2), "took {took:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn validate_a_missing_file_fails_clearly() {
    let out = run(&["validate", "/nonexistent/graylane.yaml"]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains("/nonexistent/graylane.yaml")
            && out.stderr.contains("cannot read the file"),
        "{}",
        out.stderr
    );
}

fn eval(extra: &[&str]) -> Output {
    let config = fixture("brief.yaml");
    let mut args = vec!["eval", "--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    run(&args)
}

fn eval_json(extra: &[&str]) -> serde_json::Value {
    let mut args = extra.to_vec();
    args.push("--json");
    let out = eval(&args);
    assert_eq!(out.code(), Some(0), "{out:?}");
    serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("--json output is not JSON ({e}): {:?}", out.stdout))
}

#[test]
fn eval_names_service_version_and_reason() {
    let out = eval(&["GET", "/api/payment/orders", "-H", "X-User-Id: u-1001"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines.contains(&"service: payment"), "{}", out.stdout);
    assert!(lines.contains(&"version: canary"), "{}", out.stdout);
    let why = lines
        .iter()
        .find(|l| l.starts_with("why:"))
        .unwrap_or_else(|| panic!("no reason in {}", out.stdout));
    assert!(
        why.contains("force rule #2") && why.contains("staff"),
        "the staff segment rule is named: {why}"
    );

    let out = eval(&[
        "GET",
        "/api/payment/orders",
        "-H",
        "X-Release-Phase: canary",
    ]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stdout.contains("version: canary"), "{}", out.stdout);
    assert!(out.stdout.contains("force rule #1"), "{}", out.stdout);

    let out = eval(&["GET", "/api/payment/orders", "-H", "X-User-Id: u-42"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stdout.contains("version: stable"), "{}", out.stdout);
    assert!(
        out.stdout.contains("bucket") && out.stdout.contains("header:x-user-id"),
        "a weight-0 bucket decision is explained: {}",
        out.stdout
    );
}

#[test]
fn eval_json_has_service_version_and_reason() {
    let v = eval_json(&["GET", "/api/payment/orders", "-H", "X-User-Id: u-1001"]);
    assert_eq!(v["service"], "payment", "{v}");
    assert_eq!(v["version"], "canary", "{v}");
    assert_eq!(v["reason"], "forced", "{v}");
    assert_eq!(
        v["rule"], 1,
        "release.force[1] is the staff segment rule: {v}"
    );
    assert!(v["explanation"].as_str().unwrap().contains("staff"), "{v}");

    let v = eval_json(&["GET", "/api/payment/orders", "-H", "X-User-Id: u-42"]);
    assert_eq!(v["version"], "stable", "{v}");
    assert_eq!(v["reason"], "bucket", "{v}");
    assert_eq!(v["key"], "configured", "{v}");
    assert_eq!(v["weight_percent"], 0.0, "{v}");
    assert!(v["bucket"].as_u64().is_some_and(|b| b < 100_000), "{v}");

    let v = eval_json(&["GET", "/api/payment/orders"]);
    assert_eq!(v["version"], "stable", "{v}");
    assert_eq!(
        v["reason"], "fallback_key",
        "no user id: bucketed on the IP: {v}"
    );

    // The lane header counts only from a trusted hop.
    let lane = [
        "GET",
        "/api/payment/orders",
        "-H",
        "x-graylane-lane: canary",
    ];
    let v = eval_json(&lane);
    assert_eq!(v["version"], "stable", "{v}");
    let mut trusted = lane.to_vec();
    trusted.push("--trusted");
    let v = eval_json(&trusted);
    assert_eq!(
        (&v["version"], &v["reason"]),
        (&"canary".into(), &"lane".into()),
        "{v}"
    );
}

#[test]
fn eval_shows_the_sticky_cookie_it_would_set_and_explains_it_when_replayed() {
    let config = fixture("brief.yaml");
    let keys = [("GRAYLANE_COOKIE_KEYS", "eval-test-key-0123456789")];
    let eval = |extra: &[&str]| {
        let mut args = vec!["eval", "--config", config.to_str().unwrap(), "--json"];
        args.extend_from_slice(extra);
        let out = run_with_env(&args, &keys);
        assert_eq!(out.code(), Some(0), "{out:?}");
        serde_json::from_str::<serde_json::Value>(out.stdout.trim()).unwrap()
    };
    let first = eval(&["GET", "/api/payment/orders"]);
    assert_eq!(first["key"], "random", "{first}");
    let cookie = first["set_cookie"]
        .as_str()
        .unwrap_or_else(|| panic!("{first}"));
    assert!(cookie.starts_with("graylane_lane=v1."), "{cookie}");
    let header = format!("Cookie: {cookie}");
    let again = eval(&["GET", "/api/payment/orders", "-H", &header]);
    assert_eq!(again["reason"], "sticky", "{again}");
    assert_eq!(again["bucket"], first["bucket"], "{again}");
    assert_eq!(again["version"], first["version"], "{again}");
    assert!(again.get("set_cookie").is_none(), "{again}");
    assert!(
        again["explanation"]
            .as_str()
            .unwrap()
            .starts_with("signed sticky cookie graylane_lane carries bucket"),
        "{again}"
    );
    // A forged cookie is not honoured.
    let forged = eval(&[
        "GET",
        "/api/payment/orders",
        "-H",
        "Cookie: graylane_lane=canary",
    ]);
    assert_eq!(forged["key"], "random", "{forged}");
}

#[test]
fn eval_without_a_matching_service_exits_1() {
    let out = eval(&["GET", "/nothing/here"]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.stdout.contains("no service matches GET /nothing/here"),
        "{}",
        out.stdout
    );

    let out = eval(&["GET", "/nothing/here", "--json"]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(v["service"], serde_json::Value::Null);
    assert_eq!(v["reason"], "no_route");
}

#[test]
fn eval_refuses_an_invalid_config_or_request() {
    let bad = fixture("bad/weight_150.yaml");
    let out = run(&[
        "eval",
        "--config",
        bad.to_str().unwrap(),
        "GET",
        "/api/payment/orders",
    ]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains(&format!("{}:16:", bad.display())),
        "{}",
        out.stderr
    );

    let out = eval(&["GET", "/api/payment/orders", "-H", "no colon here"]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("Name: value"), "{}", out.stderr);

    let out = eval(&["GET", "api/payment"]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("must start with `/`"), "{}", out.stderr);
}

#[test]
fn help_lists_the_admin_api_commands() {
    let out = run(&["--help"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let commands: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("  ")?.split_whitespace().next())
        .collect();
    for verb in [
        "status",
        "promote",
        "pause",
        "resume",
        "abort",
        "retry",
        "rollback",
        "set-weight",
        "history",
        "diff",
        "revert",
        "apply",
        "audit",
        "segment",
    ] {
        assert!(commands.contains(&verb), "{verb} missing:\n{}", out.stdout);
    }
}

#[test]
fn an_unreachable_admin_api_is_named_with_a_hint() {
    // Bound by the kernel's choice, then released: nothing listens there.
    let admin = format!("http://127.0.0.1:{}", closed_port().port());
    let out = run(&["status", "--admin", &admin]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty(), "{:?}", out.stdout);
    assert!(
        out.stderr.starts_with(&format!(
            "graylane: cannot reach the admin API at {admin}: "
        )),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("set --admin or GRAYLANE_ADMIN"),
        "{}",
        out.stderr
    );
}

#[test]
fn an_admin_address_that_is_not_a_url_is_refused() {
    let out = run(&["history", "--admin", "not a url"]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.stderr
            .starts_with("graylane: `not a url` is not a usable admin API address"),
        "{}",
        out.stderr
    );
}

#[test]
fn set_weight_needs_a_number() {
    let out = run(&["set-weight", "payment", "abc"]);
    assert_eq!(out.code(), Some(2), "a usage error: {out:?}");
    assert!(out.stderr.contains("invalid value 'abc'"), "{}", out.stderr);
    assert!(out.stderr.contains("<WEIGHT>"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("give a percentage from 0 to 100 with at most three decimals"),
        "the error says what a weight may be: {}",
        out.stderr
    );
}

#[test]
fn an_admin_address_with_a_password_is_named_without_it() {
    // Bound by the kernel's choice, then released: nothing listens there.
    let port = closed_port().port();
    let admin = format!("http://ops:s3cret-pw@127.0.0.1:{port}");
    let out = run(&["status", "--admin", &admin]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "cannot reach the admin API at http://ops:***@127.0.0.1:{port}: "
        )),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("s3cret-pw"), "{}", out.stderr);
}
