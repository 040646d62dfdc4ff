//! The three release strategies (canary, blue-green, experiment), admin API tokens and webhooks:
//! what a valid file turns into, and the error a user gets for each kind of mistake — the key
//! path it is at, and why.

use std::path::Path;
use std::time::Duration;

use graylane_config::{
    Config, ConfigError, ConfigErrors, Role, Strategy, Variant, Webhook, Weight,
};

const LISTENERS: &str = "listeners: [{ bind: 127.0.0.1:8080 }]\n";

/// A service `web` with versions `blue`, `green` and `stable` (indices 0, 1, 2: versions are
/// sorted by name) and the release `release` (flow or block YAML, indented under `release:`).
fn with_release(release: &str) -> String {
    format!(
        "{LISTENERS}services:
  - name: web
    versions:
      stable: {{ endpoints: [127.0.0.1:9003] }}
      green: {{ endpoints: [127.0.0.1:9002] }}
      blue: {{ endpoints: [127.0.0.1:9001] }}
    release:
{release}"
    )
}

fn load(yaml: &str) -> Result<Config, ConfigErrors> {
    graylane_config::load_str(yaml, "t.yaml", Path::new("."))
}

fn valid(yaml: &str) -> Config {
    load(yaml).unwrap_or_else(|e| panic!("expected a valid configuration, got:\n{e}\n---\n{yaml}"))
}

fn errors(yaml: &str) -> Vec<ConfigError> {
    match load(yaml) {
        Ok(_) => panic!("expected errors, the configuration was accepted:\n{yaml}"),
        Err(e) => e.errors,
    }
}

/// The only error of `yaml`, which must be at `key` and say every one of `says`; the rendered
/// line names the file and the key too.
fn only_error(yaml: &str, key: &str, says: &[&str]) -> ConfigError {
    let all = errors(yaml);
    let rendered: Vec<String> = all.iter().map(ToString::to_string).collect();
    assert_eq!(
        all.len(),
        1,
        "expected exactly one error at `{key}`, got:\n{}",
        rendered.join("\n")
    );
    let e = all.into_iter().next().unwrap();
    assert_eq!(e.key, key, "{e}");
    for s in says {
        assert!(e.message.contains(s), "`{}` should say {s:?}", e.message);
    }
    let line = e.to_string();
    assert!(line.starts_with("t.yaml:"), "{line}");
    assert!(line.contains(&format!(": {key}: ")), "{line}");
    assert!(e.line.is_some(), "the error points at a line: {line}");
    e
}

/// An error at `key` saying every one of `says`, among possibly others.
fn has_error(yaml: &str, key: &str, says: &[&str]) -> ConfigError {
    let all = errors(yaml);
    let found = all
        .iter()
        .find(|e| e.key == key && says.iter().all(|s| e.message.contains(s)));
    match found {
        Some(e) => e.clone(),
        None => {
            let rendered: Vec<String> = all.iter().map(ToString::to_string).collect();
            panic!(
                "no error at `{key}` saying {says:?}; got:\n{}",
                rendered.join("\n")
            )
        }
    }
}

fn pct(p: f64) -> Weight {
    Weight::from_percent(p).unwrap()
}

// ---------------------------------------------------------------------------------------------
// What valid releases turn into
// ---------------------------------------------------------------------------------------------

#[test]
fn blue_green_resolves_active_and_preview_and_defaults_keep_previous() {
    let cfg = valid(&with_release(
        "      strategy: blue_green\n      active: green\n      preview: blue\n",
    ));
    let svc = &cfg.services[0];
    let names: Vec<&str> = svc.versions.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(
        names,
        ["blue", "green", "stable"],
        "versions are sorted by name"
    );
    let r = svc.release.as_ref().expect("a release");
    assert_eq!(
        r.strategy,
        Strategy::BlueGreen {
            keep_previous: Duration::from_secs(600)
        }
    );
    assert_eq!(Strategy::DEFAULT_KEEP_PREVIOUS, Duration::from_secs(600));
    assert_eq!(r.strategy.as_str(), "blue_green");
    assert_eq!(r.baseline, svc.version_index("green").unwrap(), "active");
    assert_eq!(r.candidate, svc.version_index("blue").unwrap(), "preview");
    assert_eq!(svc.default_version, r.baseline, "traffic starts on active");
    assert!(
        r.steps.is_empty(),
        "a blue-green release has no canary steps"
    );
    assert_eq!(r.initial_weight(), Weight::ZERO);
    assert!(!r.skip_rollback);
    assert_eq!(r.salt, "blue", "the salt defaults to the preview's name");
}

#[test]
fn blue_green_keep_previous_and_skip_rollback_are_read() {
    let cfg = valid(&with_release(
        "      strategy: blue_green
      active: blue
      preview: stable
      keep_previous: 1h30m
      skip_rollback: true
",
    ));
    let r = cfg.services[0].release.as_ref().unwrap();
    assert_eq!(
        r.strategy,
        Strategy::BlueGreen {
            keep_previous: Duration::from_secs(5400)
        }
    );
    assert_eq!((r.baseline, r.candidate), (0, 2));
    assert!(r.skip_rollback);
}

#[test]
fn experiment_resolves_variants_in_order_with_their_weights() {
    let cfg = valid(&with_release(
        "      strategy: experiment
      bucket_by: \"header:X-User-Id\"
      variants:
        - { name: control, version: stable, weight: 50 }
        - { name: wide, version: blue, weight: 30.5 }
        - { name: narrow, version: green, weight: 19.5 }
",
    ));
    let r = cfg.services[0].release.as_ref().unwrap();
    let Strategy::Experiment { variants } = &r.strategy else {
        panic!("not an experiment: {:?}", r.strategy)
    };
    assert_eq!(
        variants,
        &[
            Variant {
                name: "control".into(),
                version: 2,
                weight: pct(50.0)
            },
            Variant {
                name: "wide".into(),
                version: 0,
                weight: pct(30.5)
            },
            Variant {
                name: "narrow".into(),
                version: 1,
                weight: pct(19.5)
            },
        ]
    );
    assert_eq!(r.strategy.as_str(), "experiment");
    assert_eq!(
        (r.baseline, r.candidate),
        (2, 0),
        "baseline is the first variant's version, candidate the second's"
    );
    assert_eq!(cfg.services[0].default_version, 2);
    assert_eq!(
        r.salt, "control,wide,narrow",
        "the salt defaults to the variant names"
    );
    assert!(r.steps.is_empty());
}

#[test]
fn experiment_weights_may_have_thousandths_that_add_up_to_exactly_100() {
    let cfg = valid(&with_release(
        "      strategy: experiment
      variants:
        - { name: a, version: stable, weight: 33.333 }
        - { name: b, version: blue, weight: 33.333 }
        - { name: c, version: green, weight: 33.334 }
",
    ));
    let r = cfg.services[0].release.as_ref().unwrap();
    let Strategy::Experiment { variants } = &r.strategy else {
        panic!()
    };
    let total: u32 = variants.iter().map(|v| v.weight.milli_percent()).sum();
    assert_eq!(total, Weight::FULL.milli_percent());
}

#[test]
fn canary_still_parses_with_the_strategy_key() {
    let cfg = valid(&with_release(
        "      strategy: canary
      baseline: blue
      candidate: green
      steps: [{ weight: 5, pause: manual }, { weight: 100 }]
",
    ));
    let r = cfg.services[0].release.as_ref().unwrap();
    assert_eq!(r.strategy, Strategy::Canary);
    assert_eq!((r.baseline, r.candidate), (0, 1));
    assert_eq!(r.initial_weight(), pct(5.0));
}

// ---------------------------------------------------------------------------------------------
// Experiment mistakes
// ---------------------------------------------------------------------------------------------

#[test]
fn experiment_weights_must_add_up_to_100() {
    let e = only_error(
        &with_release(
            "      strategy: experiment
      variants:
        - { name: a, version: stable, weight: 50 }
        - { name: b, version: blue, weight: 30 }
        - { name: c, version: green, weight: 10 }
",
        ),
        "services[0].release.variants",
        &["add up to 90%", "must add up to 100"],
    );
    assert_eq!(e.line, Some(10), "points at the variants: {e}");
}

#[test]
fn experiment_weights_over_100_are_refused_too() {
    only_error(
        &with_release(
            "      strategy: experiment
      variants: [{ name: a, version: stable, weight: 60 }, { name: b, version: blue, weight: 60 }]
",
        ),
        "services[0].release.variants",
        &["add up to 120%"],
    );
}

#[test]
fn an_experiment_needs_at_least_two_variants() {
    only_error(
        &with_release(
            "      strategy: experiment
      variants: [{ name: a, version: stable, weight: 100 }]
",
        ),
        "services[0].release.variants",
        &["at least two variants"],
    );
}

#[test]
fn an_experiment_without_variants_says_how_to_write_them() {
    only_error(
        &with_release("      strategy: experiment\n"),
        "services[0].release.variants",
        &["an experiment needs `variants`", "weight: 50"],
    );
}

#[test]
fn variant_names_must_be_distinct() {
    only_error(
        &with_release(
            "      strategy: experiment
      variants:
        - { name: a, version: stable, weight: 50 }
        - { name: a, version: blue, weight: 50 }
",
        ),
        "services[0].release.variants[1].name",
        &["variant `a` is named twice"],
    );
}

#[test]
fn two_variants_cannot_share_a_version() {
    only_error(
        &with_release(
            "      strategy: experiment
      variants:
        - { name: a, version: stable, weight: 50 }
        - { name: b, version: stable, weight: 50 }
",
        ),
        "services[0].release.variants[1].version",
        &["version `stable` is already variant `a`"],
    );
}

#[test]
fn a_variant_naming_an_unknown_version_gets_a_did_you_mean() {
    only_error(
        &with_release(
            "      strategy: experiment
      variants:
        - { name: a, version: stable, weight: 50 }
        - { name: b, version: gren, weight: 50 }
",
        ),
        "services[0].release.variants[1].version",
        &[
            "unknown version `gren`",
            "blue, green, stable",
            "did you mean `green`?",
        ],
    );
}

#[test]
fn a_variant_weight_outside_0_to_100_is_refused() {
    has_error(
        &with_release(
            "      strategy: experiment
      variants:
        - { name: a, version: stable, weight: 150 }
        - { name: b, version: blue, weight: -50 }
",
        ),
        "services[0].release.variants[0].weight",
        &["weight 150 must be a percentage from 0 to 100"],
    );
}

#[test]
fn canary_keys_on_an_experiment_are_refused() {
    only_error(
        &with_release(
            "      strategy: experiment
      candidate: blue
      variants:
        - { name: a, version: stable, weight: 50 }
        - { name: b, version: blue, weight: 50 }
",
        ),
        "services[0].release.candidate",
        &[
            "`candidate` does not apply to strategy `experiment`",
            "variants",
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// Blue-green mistakes
// ---------------------------------------------------------------------------------------------

#[test]
fn preview_must_differ_from_active() {
    only_error(
        &with_release("      strategy: blue_green\n      active: blue\n      preview: blue\n"),
        "services[0].release.preview",
        &["the preview must differ from the active"],
    );
}

#[test]
fn steps_on_a_blue_green_release_are_refused() {
    only_error(
        &with_release(
            "      strategy: blue_green
      active: blue
      preview: green
      steps: [{ weight: 5 }]
",
        ),
        "services[0].release.steps",
        &[
            "`steps` does not apply to strategy `blue_green`",
            "active, preview, keep_previous",
        ],
    );
}

#[test]
fn a_missing_active_names_the_versions_to_choose_from() {
    has_error(
        &with_release("      strategy: blue_green\n      preview: green\n"),
        "services[0].release.active",
        &[
            "strategy `blue_green` needs `active`",
            "blue, green, stable",
        ],
    );
}

#[test]
fn an_unknown_preview_gets_a_did_you_mean() {
    only_error(
        &with_release("      strategy: blue_green\n      active: blue\n      preview: gren\n"),
        "services[0].release.preview",
        &["unknown version `gren`", "did you mean `green`?"],
    );
}

#[test]
fn a_bad_keep_previous_is_refused() {
    only_error(
        &with_release(
            "      strategy: blue_green
      active: blue
      preview: green
      keep_previous: a while
",
        ),
        "services[0].release.keep_previous",
        &["`a while` is not a duration"],
    );
}

// ---------------------------------------------------------------------------------------------
// A broken release is the whole story
// ---------------------------------------------------------------------------------------------

/// Like [`with_release`] but the versions are only `blue` and `green`, as in a typical
/// blue-green service: no `stable` version to fall back on.
fn blue_and_green(release: &str) -> String {
    format!(
        "{LISTENERS}services:
  - name: web
    versions:
      blue: {{ endpoints: [127.0.0.1:9001] }}
      green: {{ endpoints: [127.0.0.1:9002] }}
    release:
{release}"
    )
}

/// A service with a release needs no `default_version` (the release's baseline is the
/// default), so when the release itself is wrong the user must be told what is wrong with it,
/// not asked for a `default_version` they do not need.
#[test]
fn a_broken_release_does_not_also_ask_for_a_default_version() {
    only_error(
        &blue_and_green("      strategy: blue_green\n      preview: green\n"),
        "services[0].release.active",
        &["strategy `blue_green` needs `active`", "blue, green"],
    );
    only_error(
        &blue_and_green(
            "      strategy: experiment
      variants: [{ name: a, version: blue, weight: 50 }, { name: b, version: green, weight: 40 }]
",
        ),
        "services[0].release.variants",
        &["add up to 90%"],
    );
    only_error(
        &blue_and_green("      strategy: bluegreen\n      active: blue\n      preview: green\n"),
        "services[0].release.strategy",
        &["did you mean `blue_green`?"],
    );
}

// ---------------------------------------------------------------------------------------------
// Strategy names
// ---------------------------------------------------------------------------------------------

#[test]
fn an_unknown_strategy_gets_a_did_you_mean() {
    let e = only_error(
        &with_release("      strategy: bluegreen\n      active: blue\n      preview: green\n"),
        "services[0].release.strategy",
        &[
            "unknown strategy `bluegreen`",
            "`canary`, `blue_green` or `experiment`",
            "did you mean `blue_green`?",
        ],
    );
    assert_eq!(e.line, Some(9), "{e}");
}

#[test]
fn a_release_without_a_strategy_is_refused() {
    has_error(
        &with_release("      active: blue\n      preview: green\n"),
        "services[0].release",
        &["missing field `strategy`"],
    );
}

#[test]
fn every_problem_of_a_release_is_reported_at_once() {
    let all = errors(&with_release(
        "      strategy: blue_green
      active: blue
      preview: green
      steps: [{ weight: 5 }]
      variants: [{ name: a, version: stable, weight: 100 }]
      candidate: stable
",
    ));
    let mut keys: Vec<&str> = all.iter().map(|e| e.key.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "services[0].release.candidate",
            "services[0].release.steps",
            "services[0].release.variants",
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Admin tokens
// ---------------------------------------------------------------------------------------------

fn with_admin(admin: &str) -> String {
    format!("{LISTENERS}admin:\n  bind: 127.0.0.1:9900\n{admin}")
}

#[test]
fn admin_tokens_are_read_with_their_roles() {
    let cfg = valid(&with_admin(
        "  token_env: ROOT_TOKEN
  tokens:
    - { name: dashboards, env: VIEW_TOKEN, role: viewer }
    - { name: release-bot, env: BOT_TOKEN, role: operator }
    - { name: platform, env: PLATFORM_TOKEN, role: admin }
",
    ));
    let admin = cfg.admin.expect("admin");
    let tokens: Vec<(&str, &str, Role)> = admin
        .tokens
        .iter()
        .map(|t| (t.name.as_str(), t.env.as_str(), t.role))
        .collect();
    assert_eq!(
        tokens,
        [
            ("admin", "ROOT_TOKEN", Role::Admin),
            ("dashboards", "VIEW_TOKEN", Role::Viewer),
            ("release-bot", "BOT_TOKEN", Role::Operator),
            ("platform", "PLATFORM_TOKEN", Role::Admin),
        ]
    );
    assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
}

#[test]
fn an_unknown_role_lists_the_roles() {
    only_error(
        &with_admin("  tokens: [{ name: ci, env: CI_TOKEN, role: superuser }]\n"),
        "admin.tokens[0].role",
        &[
            "unknown role `superuser`",
            "`viewer`, `operator` or `admin`",
        ],
    );
}

#[test]
fn token_names_must_be_distinct() {
    only_error(
        &with_admin(
            "  tokens:
    - { name: ci, env: CI_TOKEN, role: viewer }
    - { name: ci, env: OTHER_TOKEN, role: operator }
",
        ),
        "admin.tokens[1].name",
        &["token name `ci` is used twice"],
    );
}

#[test]
fn a_token_named_like_the_token_env_one_is_a_duplicate() {
    only_error(
        &with_admin(
            "  token_env: ROOT_TOKEN\n  tokens: [{ name: admin, env: OTHER, role: viewer }]\n",
        ),
        "admin.tokens[0].name",
        &["token name `admin` is used twice"],
    );
}

#[test]
fn a_duplicate_token_name_is_caught_even_when_the_first_has_a_bad_role() {
    let all = errors(&with_admin(
        "  tokens:
    - { name: ci, env: CI_TOKEN, role: root }
    - { name: ci, env: OTHER_TOKEN, role: viewer }
",
    ));
    let keys: Vec<&str> = all.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        ["admin.tokens[0].role", "admin.tokens[1].name"],
        "both mistakes are reported in one go"
    );
}

#[test]
fn a_misspelt_token_key_gets_a_did_you_mean() {
    let all = errors(&with_admin(
        "  tokens: [{ name: ci, env: CI_TOKEN, rol: viewer }]\n",
    ));
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].key, "admin.tokens[0].rol");
    assert!(
        all[0].message.contains("did you mean `role`?"),
        "{}",
        all[0]
    );
}

// ---------------------------------------------------------------------------------------------
// Webhooks
// ---------------------------------------------------------------------------------------------

fn with_webhooks(hooks: &str) -> String {
    format!("{LISTENERS}webhooks:\n{hooks}")
}

#[test]
fn webhooks_are_read_with_defaults() {
    let cfg = valid(&with_webhooks(
        "  - url: http://127.0.0.1:7000/hooks
  - { url: \"http://relay.internal:8080/graylane\", timeout: 500ms, retries: 0 }
",
    ));
    assert_eq!(cfg.webhooks.len(), 2);
    let first = &cfg.webhooks[0];
    assert_eq!(first.url.to_string(), "http://127.0.0.1:7000/hooks");
    assert_eq!(first.timeout, Webhook::DEFAULT_TIMEOUT);
    assert_eq!(first.retries, Webhook::DEFAULT_RETRIES);
    let second = &cfg.webhooks[1];
    assert_eq!(second.url.host(), Some("relay.internal"));
    assert_eq!(second.url.port_u16(), Some(8080));
    assert_eq!(second.timeout, Duration::from_millis(500));
    assert_eq!(second.retries, 0);
}

#[test]
fn an_https_webhook_says_it_is_not_supported_yet() {
    only_error(
        &with_webhooks("  - url: https://hooks.example.com/graylane\n"),
        "webhooks[0].url",
        &[
            "`https://hooks.example.com/graylane`",
            "https webhooks are not supported yet",
            "use http",
        ],
    );
}

#[test]
fn a_webhook_url_that_is_not_a_url_shows_an_example() {
    for bad in [
        "not a url",
        "hooks.example.com/x",
        "ftp://example.com/x",
        "http://",
    ] {
        only_error(
            &with_webhooks(&format!("  - url: \"{bad}\"\n")),
            "webhooks[0].url",
            &[
                &format!("`{bad}` is not an http URL"),
                "http://127.0.0.1:7000/hooks",
            ],
        );
    }
}

#[test]
fn a_bad_webhook_timeout_is_refused() {
    only_error(
        &with_webhooks("  - { url: http://127.0.0.1:7000/hooks, timeout: soon }\n"),
        "webhooks[0].timeout",
        &["`soon` is not a duration like 30s, 5m or 1h30m"],
    );
}

#[test]
fn every_bad_webhook_is_reported() {
    let all = errors(&with_webhooks(
        "  - { url: http://127.0.0.1:7000/ok }
  - { url: https://example.com/x, timeout: 5 }
",
    ));
    let mut keys: Vec<&str> = all.iter().map(|e| e.key.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["webhooks[1].timeout", "webhooks[1].url"]);
}

#[test]
fn force_rules_do_not_apply_to_an_experiment() {
    only_error(
        &with_release(
            "      strategy: experiment
      force: [{ header: { name: X-Test, exists: true } }]
      variants:
        - { name: a, version: blue, weight: 50 }
        - { name: b, version: green, weight: 50 }
",
        ),
        "services[0].release.force",
        &["does not apply to strategy `experiment`"],
    );
}

// ---------------------------------------------------------------------------------------------
// trusted_only keys and rules
// ---------------------------------------------------------------------------------------------

fn with_trusted_hops(yaml: &str) -> String {
    yaml.replacen(
        LISTENERS,
        "listeners: [{ bind: 127.0.0.1:8080, trusted_hops: [10.0.0.0/8] }]\n",
        1,
    )
}

const CANARY: &str = "      strategy: canary
      baseline: stable
      candidate: green
      steps: [{ weight: 5 }]
";

#[test]
fn bucket_by_takes_the_plain_and_the_trusted_only_form() {
    let plain = valid(&with_release(&format!(
        "{CANARY}      bucket_by: \"header:X-User-Id\"\n"
    )));
    let r = plain.services[0].release.as_ref().unwrap();
    assert_eq!(r.bucket_by.to_string(), "header:x-user-id");
    assert!(!r.bucket_by_trusted_only);
    let full = valid(&with_trusted_hops(&with_release(&format!(
        "{CANARY}      bucket_by: {{ key: \"header:X-User-Id\", trusted_only: true }}\n"
    ))));
    let r = full.services[0].release.as_ref().unwrap();
    assert_eq!(r.bucket_by.to_string(), "header:x-user-id");
    assert!(r.bucket_by_trusted_only);
}

#[test]
fn trusted_only_without_any_trusted_hops_is_refused() {
    only_error(
        &with_release(&format!(
            "{CANARY}      bucket_by: {{ key: \"header:X-User-Id\", trusted_only: true }}\n"
        )),
        "services[0].release.bucket_by.trusted_only",
        &["needs a listener with `trusted_hops`"],
    );
    only_error(
        &with_release(&format!(
            "{CANARY}      force: [{{ header: {{ name: X-Canary, exists: true, trusted_only: true }} }}]\n"
        )),
        "services[0].release.force[0].header.trusted_only",
        &["needs a listener with `trusted_hops`"],
    );
}

#[test]
fn trusted_only_is_refused_where_a_hop_sets_nothing() {
    only_error(
        &with_trusted_hops(&with_release(&format!(
            "{CANARY}      force: [{{ cookie: {{ name: beta, exists: true, trusted_only: true }} }}]\n"
        ))),
        "services[0].release.force[0].cookie.trusted_only",
        &["a cookie comes from the client"],
    );
    only_error(
        &with_trusted_hops(&with_release(&format!(
            "{CANARY}      bucket_by: {{ key: ip, trusted_only: true }}\n"
        ))),
        "services[0].release.bucket_by.trusted_only",
        &["does not apply"],
    );
    only_error(
        &with_trusted_hops(&with_release(&format!(
            "{CANARY}      bucket_by: {{ key: \"header:\" }}\n"
        ))),
        "services[0].release.bucket_by.key",
        &["is not a key"],
    );
}

// ---------------------------------------------------------------------------------------------
// Mirror (shadow) steps
// ---------------------------------------------------------------------------------------------

fn canary_steps(steps: &str, extra: &str) -> String {
    with_release(&format!(
        "      strategy: canary
      baseline: blue
      candidate: green
      steps: {steps}
{extra}"
    ))
}

#[test]
fn a_mirror_step_gives_the_candidate_no_users_and_copies_its_share() {
    let cfg = valid(&canary_steps(
        "[{ mirror: 20, pause: 10m }, { weight: 5 }, { weight: 100 }]",
        "",
    ));
    let r = cfg.services[0].release.as_ref().unwrap();
    assert_eq!(r.steps[0].weight, Weight::ZERO);
    assert_eq!(r.steps[0].mirror, Some(pct(20.0)));
    assert_eq!(
        r.steps[0].pause,
        graylane_config::Pause::For(Duration::from_secs(600))
    );
    assert_eq!((r.steps[1].weight, r.steps[1].mirror), (pct(5.0), None));
    assert_eq!(r.initial_mirror(), Some(pct(20.0)));
    assert_eq!(
        r.mirror_methods,
        [http::Method::GET, http::Method::HEAD, http::Method::OPTIONS],
        "only safe methods are copied unless configured"
    );
}

#[test]
fn mirror_methods_are_read_in_any_case() {
    let cfg = valid(&canary_steps(
        "[{ mirror: 100 }, { weight: 100 }]",
        "      mirror_methods: [get, POST]\n",
    ));
    let r = cfg.services[0].release.as_ref().unwrap();
    assert_eq!(r.mirror_methods, [http::Method::GET, http::Method::POST]);
}

#[test]
fn a_step_with_both_weight_and_mirror_is_refused() {
    only_error(
        &canary_steps("[{ weight: 5 }, { weight: 5, mirror: 20 }]", ""),
        "services[0].release.steps[1].mirror",
        &["either `weight`", "or `mirror`", "not both"],
    );
}

#[test]
fn a_step_with_neither_weight_nor_mirror_says_how_to_write_one() {
    only_error(
        &canary_steps("[{ pause: 5m }, { weight: 100 }]", ""),
        "services[0].release.steps[0]",
        &[
            "needs `weight`",
            "or `mirror`",
            "{ mirror: 20, pause: 10m }",
        ],
    );
}

#[test]
fn a_mirror_share_outside_1_to_100_is_refused() {
    for bad in ["0", "0.5", "101", "-3"] {
        only_error(
            &canary_steps(&format!("[{{ mirror: {bad} }}, {{ weight: 100 }}]"), ""),
            "services[0].release.steps[0].mirror",
            &[&format!("mirror {bad} must be a percentage from 1 to 100")],
        );
    }
}

#[test]
fn mirror_methods_must_be_methods_and_not_empty() {
    only_error(
        &canary_steps(
            "[{ mirror: 10 }, { weight: 100 }]",
            "      mirror_methods: [GET, \"NOT A METHOD\"]\n",
        ),
        "services[0].release.mirror_methods[1]",
        &["`NOT A METHOD` is not an HTTP method"],
    );
    only_error(
        &canary_steps(
            "[{ mirror: 10 }, { weight: 100 }]",
            "      mirror_methods: []\n",
        ),
        "services[0].release.mirror_methods",
        &["at least one method", "GET, HEAD and OPTIONS"],
    );
}

#[test]
fn mirror_methods_on_a_blue_green_release_are_refused() {
    only_error(
        &with_release(
            "      strategy: blue_green
      active: blue
      preview: green
      mirror_methods: [GET]
",
        ),
        "services[0].release.mirror_methods",
        &["`mirror_methods` does not apply to strategy `blue_green`"],
    );
}

const ANALYSIS: &str = "      analysis:
        interval: 30s
        checks: [{ metric: error_rate, max_increase: 0.02 }]
";

#[test]
fn an_adaptive_canary_gets_the_documented_defaults_and_starts_at_its_start_weight() {
    let cfg = valid(&canary_steps("adaptive", ANALYSIS));
    let r = cfg.services[0].release.as_ref().unwrap();
    let a = r.adaptive.expect("steps: adaptive gives adaptive bounds");
    assert_eq!((a.start, a.max), (pct(1.0), Weight::FULL));
    assert_eq!((a.grow, a.shrink), (2.0, 0.5));
    assert_eq!(
        (a.min_pause, a.max_pause),
        (Duration::from_secs(30), Duration::from_secs(600))
    );
    assert_eq!(a.max_bad_requests, None);
    assert_eq!(r.initial_weight(), pct(1.0));
}

#[test]
fn an_adaptive_canary_takes_its_bounds_and_exposure_budget() {
    let cfg = valid(&canary_steps(
        "adaptive",
        &format!(
            "      adaptive: {{ start: 2, max: 50, grow: 3, shrink: 0.25, min_pause: 10s, max_pause: 5m }}
      max_bad_requests: 500
{ANALYSIS}"
        ),
    ));
    let a = cfg.services[0].release.as_ref().unwrap().adaptive.unwrap();
    assert_eq!(
        (a.start, a.max, a.grow, a.shrink),
        (pct(2.0), pct(50.0), 3.0, 0.25)
    );
    assert_eq!(
        (a.min_pause, a.max_pause),
        (Duration::from_secs(10), Duration::from_secs(300))
    );
    assert_eq!(a.max_bad_requests, Some(500));
}

#[test]
fn fixed_steps_have_no_adaptive_bounds() {
    let cfg = valid(&canary_steps("[{ weight: 5 }, { weight: 100 }]", ANALYSIS));
    let r = cfg.services[0].release.as_ref().unwrap();
    assert!(r.adaptive.is_none());
    assert_eq!(r.steps.len(), 2);
}

#[test]
fn an_adaptive_canary_without_analysis_is_refused_naming_the_release() {
    only_error(
        &canary_steps("adaptive", ""),
        "services[0].release.analysis",
        &["`steps: adaptive`", "needs an `analysis:`"],
    );
}

#[test]
fn adaptive_bounds_out_of_range_name_their_key() {
    let cases = [
        ("{ start: 0 }", "start", "above 0"),
        ("{ start: 101 }", "start", "at most 100"),
        ("{ max: 0 }", "max", "above 0"),
        ("{ start: 20, max: 10 }", "start", "above max"),
        ("{ grow: 1 }", "grow", "above 1"),
        ("{ shrink: 0 }", "shrink", "between 0 and 1"),
        ("{ shrink: 1 }", "shrink", "between 0 and 1"),
        (
            "{ min_pause: 5m, max_pause: 1m }",
            "min_pause",
            "longer than max_pause",
        ),
    ];
    for (bounds, key, says) in cases {
        only_error(
            &canary_steps("adaptive", &format!("      adaptive: {bounds}\n{ANALYSIS}")),
            &format!("services[0].release.adaptive.{key}"),
            &[says],
        );
    }
}

#[test]
fn adaptive_keys_with_a_list_of_steps_or_an_unknown_plan_word_are_refused() {
    only_error(
        &canary_steps(
            "[{ weight: 5 }, { weight: 100 }]",
            &format!("      max_bad_requests: 500\n{ANALYSIS}"),
        ),
        "services[0].release.max_bad_requests",
        &["only to `steps: adaptive`"],
    );
    only_error(
        &canary_steps("adaptiv", ANALYSIS),
        "services[0].release.steps",
        &["not a plan", "did you mean `adaptive`?"],
    );
    only_error(
        &canary_steps(
            "adaptive",
            &format!("      max_bad_requests: 0\n{ANALYSIS}"),
        ),
        "services[0].release.max_bad_requests",
        &["at least 1"],
    );
}
