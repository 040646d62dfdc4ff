//! What `graylane serve` keeps in its `--data-dir` across restarts: release state (after a
//! `kill -9` too), configuration revisions and the audit log; environments kept apart in one
//! store; and a data directory it cannot use refused loudly instead of being reset.
//!
//! Every test runs the real binary on loopback ports; every wait is bounded.

mod common;

use std::cell::Cell;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use http::{Method, StatusCode};
use serde_json::{Value, json};

/// The operator's token (release commands) and the admin's (configuration changes), handed to
/// the process in the environment variables the configuration names.
const ALICE: &str = "alice-secret-4f1c9e";
const CI: &str = "ci-secret-b7d203";
const TOKEN_ENV: &[(&str, &str)] = &[
    ("GRAYLANE_TEST_TOKEN_ALICE", ALICE),
    ("GRAYLANE_TEST_TOKEN_CI", CI),
];

/// Two services with canary releases on the same pair of test upstreams.
const CONFIG: &str = r#"# {comment}
listeners:
  - bind: 127.0.0.1:{port}
admin:
  bind: 127.0.0.1:{admin}
  tokens:
    - { name: alice, env: GRAYLANE_TEST_TOKEN_ALICE, role: operator }
    - { name: ci, env: GRAYLANE_TEST_TOKEN_CI, role: admin }
services:
  - name: payment
    match: { path_prefix: /api/payment }
    versions:
      stable: { endpoints: ["{stable}"] }
      canary: { endpoints: ["{canary}"] }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      bucket_by: "header:X-User-Id"
      steps:
        - weight: 0
          pause: manual
        - weight: {payment_weight}
          pause: 10m
        - weight: 100
  - name: search
    match: { path_prefix: /api/search }
    versions:
      stable: { endpoints: ["{stable}"] }
      canary: { endpoints: ["{canary}"] }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      bucket_by: "header:X-User-Id"
      steps:
        - weight: 0
          pause: manual
        - weight: 30
          pause: manual
        - weight: 100
{extra}"#;

/// What the configuration changed through the API adds: a service without a release.
const HEALTH_SERVICE: &str = r#"  - name: health
    match: { path_prefix: /api/health }
    versions:
      stable: { endpoints: ["{stable}"] }
"#;

/// A gateway's addresses and upstreams, and how to start `graylane serve` on them.
struct Site {
    dir: PathBuf,
    data: PathBuf,
    /// Where the running process listens: each start binds port 0 and says which it got.
    proxy: Cell<SocketAddr>,
    admin: Cell<SocketAddr>,
    stable: Upstream,
    canary: Upstream,
}

impl Site {
    fn new(test: &str) -> Site {
        let dir = temp_dir(&format!("persistence-{test}"));
        Site {
            data: dir.join("data"),
            dir,
            proxy: Cell::new(SocketAddr::from(([127, 0, 0, 1], 0))),
            admin: Cell::new(SocketAddr::from(([127, 0, 0, 1], 0))),
            stable: Upstream::start("stable"),
            canary: Upstream::start("canary"),
        }
    }

    /// The configuration text: `comment` on the first line, the payment release's second
    /// step at `payment_weight`, plus the health service if `health`.
    fn yaml(&self, comment: &str, payment_weight: &str, health: bool) -> String {
        let values = [
            ("comment", comment.to_string()),
            ("port", "0".to_string()),
            ("admin", "0".to_string()),
            ("stable", self.stable.addr.to_string()),
            ("canary", self.canary.addr.to_string()),
            ("payment_weight", payment_weight.to_string()),
        ];
        let extra = if health {
            fill(HEALTH_SERVICE, &values)
        } else {
            String::new()
        };
        let mut all = values.to_vec();
        all.push(("extra", extra));
        fill(CONFIG, &all)
    }

    /// `graylane serve` on `file` and this site's data directory, ready to answer.
    async fn serve(&self, file: &Path, env: Option<&str>) -> Graylane {
        let mut args = vec![
            "serve",
            "--config",
            file.to_str().unwrap(),
            "--data-dir",
            self.data.to_str().unwrap(),
            "--watch-interval",
            "200ms",
            "--drain-timeout",
            "2s",
            "--workers",
            "1",
        ];
        if let Some(env) = env {
            args.extend(["--env", env]);
        }
        let mut process = spawn_with_env(&self.dir, &args, TOKEN_ENV);
        let listening = bound(&mut process, true);
        self.proxy.set(listening.listeners[0]);
        self.admin.set(listening.admin.unwrap());
        wait_ready(&mut process, self.admin.get(), self.proxy.get()).await;
        process
    }

    async fn api_get(&self, path: &str) -> Value {
        let r = get(self.admin.get(), path, &[("Authorization", &bearer(ALICE))]).await;
        assert_eq!(r.status, StatusCode::OK, "GET {path}: {}", r.text());
        r.json()
    }

    /// A release command as alice; answers the release.
    async fn command(&self, service: &str, command: &str, body: Value) -> Value {
        let path = format!("/api/v1/releases/{service}/{command}");
        let r = request(
            self.admin.get(),
            Method::POST,
            &path,
            &[
                ("Authorization", &bearer(ALICE)),
                ("Content-Type", "application/json"),
            ],
            body.to_string(),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "POST {path}: {}", r.text());
        r.json()
    }

    /// `PUT /api/v1/config` as ci (role admin); answers the outcome.
    async fn put_config(&self, yaml: &str, message: &str) -> Value {
        let path = format!("/api/v1/config?message={}", message.replace(' ', "%20"));
        let r = request(
            self.admin.get(),
            Method::PUT,
            &path,
            &[
                ("Authorization", &bearer(CI)),
                ("Content-Type", "application/yaml"),
            ],
            yaml.to_string(),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "PUT {path}: {}", r.text());
        let outcome = r.json();
        assert_eq!(outcome["applied"], true, "{outcome}");
        outcome
    }

    /// Which version answered each of `users` on `path`, as the upstream itself says (and
    /// as the gateway's `X-Graylane-Version` header agrees).
    async fn served_by(&self, path: &str, users: &[String]) -> Vec<String> {
        let mut out = Vec::with_capacity(users.len());
        for user in users {
            let r = get(self.proxy.get(), path, &[("X-User-Id", user)]).await;
            assert_eq!(r.status, StatusCode::OK, "{path} as {user}: {r:?}");
            let version = r.json()["version"].as_str().unwrap_or("").to_string();
            assert_eq!(r.version(), Some(version.as_str()), "{path} as {user}");
            out.push(version);
        }
        out
    }

    /// Ends `process` with SIGTERM, expecting a clean exit.
    fn terminate(&self, mut process: Graylane) {
        process.assert_running();
        process.signal("TERM");
        let status = process.wait_exit(Duration::from_secs(20));
        assert_eq!(
            status.code(),
            Some(0),
            "exit after SIGTERM\n{}",
            process.logs()
        );
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn users(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user-{i}")).collect()
}

fn share(versions: &[String], version: &str) -> f64 {
    versions.iter().filter(|v| *v == version).count() as f64 / versions.len() as f64
}

/// Waits until `/readyz` answers 200 and the proxy listener accepts, failing at once (with the
/// logs) if the process dies.
async fn wait_ready(process: &mut Graylane, admin: SocketAddr, proxy: SocketAddr) {
    let deadline = Instant::now() + POLL_DEADLINE;
    loop {
        process.assert_running();
        let ready =
            matches!(try_get(admin, "/readyz", &[]).await, Ok(r) if r.status == StatusCode::OK);
        if ready && tokio::net::TcpStream::connect(proxy).await.is_ok() {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "graylane not ready within {POLL_DEADLINE:?}\n{}",
                process.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A release's JSON without what legitimately moves with time.
fn without_clock(release: &Value) -> Value {
    let mut r = release.clone();
    r.as_object_mut().unwrap().remove("pause_remaining_s");
    r
}

fn canary_weight(release: &Value) -> f64 {
    release["weights"]["canary"].as_f64().unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_resumes_every_release_where_it_was() {
    let site = Site::new("kill9");
    let file = site.dir.join("graylane.yaml");
    let initial = site.yaml("initial", "20", false);
    write_atomic(&file, &initial);
    let mut first = site.serve(&file, None).await;

    // payment: step 1, 20% with a 10-minute timed pause running.
    let payment = site
        .command("payment", "promote", json!({"reason": "step one"}))
        .await;
    assert_eq!(
        (&payment["state"], &payment["step"], canary_weight(&payment)),
        (&json!("progressing"), &json!(1), 20.0),
        "{payment}"
    );
    assert_eq!(payment["pause"], "10m", "{payment}");
    // search: step 1 (30%, manual), paused, then its weight set by hand to 35%.
    site.command("search", "promote", json!({})).await;
    let search = site
        .command("search", "pause", json!({"reason": "hold"}))
        .await;
    assert_eq!(search["state"], "paused", "{search}");
    let search = site
        .command(
            "search",
            "weight",
            json!({"weight": 35, "reason": "a bit more"}),
        )
        .await;
    assert_eq!(
        (
            &search["state"],
            &search["step"],
            canary_weight(&search),
            &search["weight_overridden"]
        ),
        (&json!("paused"), &json!(1), 35.0, &json!(true)),
        "{search}"
    );

    // A second revision, through the API.
    let changed = site.yaml("changed through the API", "20", true);
    let outcome = site.put_config(&changed, "add the health service").await;
    let api_revision = outcome["revision"]["n"]
        .as_u64()
        .expect("a revision number");
    assert_eq!(outcome["revision"]["author"], "ci", "{outcome}");
    assert_eq!(outcome["revision"]["source"], "api", "{outcome}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), changed);
    let health = get(site.proxy.get(), "/api/health/check", &[]).await;
    assert_eq!(health.status, StatusCode::OK, "{health:?}");

    // What there is to find again after the crash.
    let before_s0 = Instant::now();
    let payment_before = site.api_get("/api/v1/releases/payment").await;
    let before_e0 = Instant::now();
    let search_before = site.api_get("/api/v1/releases/search").await;
    assert_eq!(without_clock(&search_before), without_clock(&search));
    let remaining_before = payment_before["pause_remaining_s"]
        .as_f64()
        .unwrap_or_else(|| panic!("a timed pause runs: {payment_before}"));
    assert!(
        remaining_before > 590.0 && remaining_before <= 600.0,
        "{payment_before}"
    );
    let revisions_before = site.api_get("/api/v1/config/revisions").await;
    assert_eq!(
        revisions_before["current"], api_revision,
        "{revisions_before}"
    );
    assert_eq!(
        revisions_before["revisions"].as_array().map(Vec::len),
        Some(2),
        "{revisions_before}"
    );
    let audit_before = site.api_get("/api/v1/audit?limit=1000").await;
    let users = users(200);
    let payment_split = site.served_by("/api/payment/orders", &users).await;
    let search_split = site.served_by("/api/search/q", &users).await;

    first.signal("KILL");
    let status = first.wait_exit(Duration::from_secs(10));
    assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status}");
    // Down for a while: a timed pause counts wall-clock time, so this time counts too.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let second = site.serve(&file, None).await;
    let after_s1 = Instant::now();
    let payment_after = site.api_get("/api/v1/releases/payment").await;
    let after_e1 = Instant::now();
    let search_after = site.api_get("/api/v1/releases/search").await;

    // The same state, step, weights, override, pause kind, allowed commands and history.
    assert_eq!(
        without_clock(&payment_after),
        without_clock(&payment_before),
        "payment resumed where it was"
    );
    assert_eq!(search_after, search_before, "search resumed where it was");
    assert_eq!(search_after["state"], "paused");

    // The timed pause counts wall-clock time from the step's start, the time graylane was
    // down included (the pause is a promise about when the next step comes, not about how
    // long graylane watched). With `tb` and `ta` the moments the server read its clock for
    // the two answers:
    //   remaining_after = remaining_before - (ta - tb),
    // where tb lies in [before_s0, before_e0] and ta in [after_s1, after_e1], so
    //   after_s1 - before_e0  <=  ta - tb  <=  after_e1 - before_s0.
    // The upper bound says the downtime was counted (a pause restarted or frozen while down
    // would be larger); the lower bound says no more than real time passed. `EPSILON` covers
    // the millisecond rounding of the API and the wall clock against `Instant`; `MARGIN` a
    // wall clock slewed a little while the test runs.
    const EPSILON: f64 = 0.05;
    const MARGIN: f64 = 1.0;
    let remaining_after = payment_after["pause_remaining_s"]
        .as_f64()
        .unwrap_or_else(|| panic!("the timed pause still runs: {payment_after}"));
    let at_least_passed = (after_s1 - before_e0).as_secs_f64();
    let at_most_passed = (after_e1 - before_s0).as_secs_f64();
    assert!(
        remaining_after <= remaining_before,
        "the pause did not start over: {remaining_after}s left, {remaining_before}s before"
    );
    assert!(
        remaining_after <= remaining_before - at_least_passed + EPSILON,
        "the {at_least_passed:.3}s (at least) between the readings, downtime included, \
         counted: {remaining_after}s left, {remaining_before}s before"
    );
    assert!(
        remaining_after >= remaining_before - at_most_passed - MARGIN,
        "no more than the {at_most_passed:.3}s between the readings counted: \
         {remaining_after}s left, {remaining_before}s before"
    );

    // Both revisions, the API's current; the file holds its text.
    let revisions_after = site.api_get("/api/v1/config/revisions").await;
    assert_eq!(revisions_after, revisions_before, "the revisions are kept");
    assert_eq!(revisions_after["revisions"][0]["source"], "api");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), changed);
    let current = get(
        site.admin.get(),
        "/api/v1/config",
        &[("Authorization", &bearer(ALICE))],
    )
    .await;
    assert_eq!(current.status, StatusCode::OK, "{current:?}");
    assert_eq!(current.text(), changed);
    assert_eq!(
        current
            .headers
            .get("x-graylane-revision")
            .and_then(|v| v.to_str().ok()),
        Some(api_revision.to_string().as_str())
    );
    let initial_revision = &revisions_after["revisions"][1];
    let n = initial_revision["n"].as_u64().unwrap();
    let text = site.api_get(&format!("/api/v1/config/revisions/{n}")).await;
    assert_eq!(text["yaml"], initial.as_str(), "the first revision's text");

    // The data plane resumed too: every user gets the version they had before the crash,
    // about 20% of them the payment canary and 35% the search canary.
    let payment_split_after = site.served_by("/api/payment/orders", &users).await;
    let search_split_after = site.served_by("/api/search/q", &users).await;
    let payment_share = share(&payment_split_after, "canary");
    let search_share = share(&search_split_after, "canary");
    assert!(
        (0.10..=0.30).contains(&payment_share),
        "payment canary share {payment_share}"
    );
    assert!(
        (0.20..=0.50).contains(&search_share),
        "search canary share {search_share}"
    );
    assert_eq!(
        payment_split_after, payment_split,
        "the same users on canary"
    );
    assert_eq!(search_split_after, search_split, "the same users on canary");
    let health = get(site.proxy.get(), "/api/health/check", &[]).await;
    assert_eq!(
        (health.status, health.version()),
        (StatusCode::OK, Some("stable")),
        "the API's configuration serves: {health:?}"
    );

    // The audit log still holds every earlier entry.
    let audit_after = site.api_get("/api/v1/audit?limit=1000").await;
    let entries_after = audit_after["entries"].as_array().unwrap();
    let entries_before = audit_before["entries"].as_array().unwrap();
    for entry in entries_before {
        assert!(
            entries_after.contains(entry),
            "audit entry {entry} is kept: {audit_after}"
        );
    }
    for (actor, action, target) in [
        ("alice", "promote", "payment"),
        ("alice", "promote", "search"),
        ("alice", "pause", "search"),
        ("alice", "set_weight", "search"),
        ("ci", "config.apply", "config"),
    ] {
        assert!(
            entries_after
                .iter()
                .any(|e| e["actor"] == actor && e["action"] == action && e["target"] == target),
            "{actor} {action} {target} in the audit log: {audit_after}"
        );
    }

    site.terminate(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environments_are_isolated() {
    let site = Site::new("envs");
    let staging_file = site.dir.join("staging.yaml");
    let prod_file = site.dir.join("prod.yaml");
    let staging_text = site.yaml("staging", "20", false);
    let prod_text = site.yaml("prod", "10", false);
    write_atomic(&staging_file, &staging_text);
    write_atomic(&prod_file, &prod_text);

    // staging: a promoted release and two revisions.
    let staging = site.serve(&staging_file, Some("staging")).await;
    let payment = site.command("payment", "promote", json!({})).await;
    assert_eq!(
        (&payment["env"], &payment["step"]),
        (&json!("staging"), &json!(1))
    );
    let staging_changed = site.yaml("staging, changed", "20", true);
    site.put_config(&staging_changed, "staging only").await;
    let staging_revisions = site.api_get("/api/v1/config/revisions").await;
    assert_eq!(staging_revisions["env"], "staging", "{staging_revisions}");
    assert_eq!(
        staging_revisions["revisions"].as_array().map(Vec::len),
        Some(2),
        "{staging_revisions}"
    );
    site.terminate(staging);

    // prod on the same store sees none of it.
    let prod = site.serve(&prod_file, Some("prod")).await;
    let revisions = site.api_get("/api/v1/config/revisions").await;
    assert_eq!(revisions["env"], "prod", "{revisions}");
    let list = revisions["revisions"].as_array().unwrap();
    assert_eq!(list.len(), 1, "only prod's own revision: {revisions}");
    assert_eq!(list[0]["source"], "file", "{revisions}");
    assert_eq!(revisions["current"], list[0]["n"], "{revisions}");
    let n = list[0]["n"].as_u64().unwrap();
    let revision = site.api_get(&format!("/api/v1/config/revisions/{n}")).await;
    assert_eq!(revision["yaml"], prod_text.as_str(), "{revision}");
    let payment = site.api_get("/api/v1/releases/payment").await;
    assert_eq!(
        (
            &payment["env"],
            &payment["state"],
            &payment["step"],
            canary_weight(&payment)
        ),
        (&json!("prod"), &json!("progressing"), &json!(0), 0.0),
        "prod's release has not been promoted: {payment}"
    );
    let releases = site.api_get("/api/v1/releases").await;
    assert_eq!(releases["env"], "prod", "{releases}");
    let audit = site.api_get("/api/v1/audit?limit=1000").await;
    assert_eq!(audit["env"], "prod", "{audit}");
    let entries = audit["entries"].as_array().unwrap();
    assert!(
        entries
            .iter()
            .all(|e| e["actor"] != "alice" && e["actor"] != "ci"),
        "none of staging's commands or changes in prod's audit log: {audit}"
    );
    let split = site.served_by("/api/payment/orders", &users(20)).await;
    assert!(split.iter().all(|v| v == "stable"), "{split:?}");
    let health = get(site.proxy.get(), "/api/health/check", &[]).await;
    assert_eq!(
        health.status,
        StatusCode::NOT_FOUND,
        "staging's health service is not prod's: {health:?}"
    );
    site.terminate(prod);

    // And staging finds its own state again after prod ran.
    assert_eq!(
        std::fs::read_to_string(&staging_file).unwrap(),
        staging_changed
    );
    let staging = site.serve(&staging_file, Some("staging")).await;
    let payment = site.api_get("/api/v1/releases/payment").await;
    assert_eq!(
        (&payment["env"], &payment["step"], canary_weight(&payment)),
        (&json!("staging"), &json!(1), 20.0),
        "{payment}"
    );
    let revisions = site.api_get("/api/v1/config/revisions").await;
    assert_eq!(
        revisions, staging_revisions,
        "staging's revisions unchanged"
    );
    site.terminate(staging);
}

/// Runs `serve` expecting it to refuse to start: a non-zero exit within a few seconds.
/// Answers its stderr.
fn refused(dir: &Path, args: &[&str]) -> String {
    let started = Instant::now();
    let mut p = spawn_with_env(dir, args, TOKEN_ENV);
    let status = p.wait_exit(Duration::from_secs(10));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused within a few seconds, took {:?}",
        started.elapsed()
    );
    assert!(
        !status.success() && status.code().is_some(),
        "a non-zero exit (not a crash), got {status}\n{}",
        p.logs()
    );
    p.stderr()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_data_dir_is_a_clear_error_not_a_reset() {
    let site = Site::new("corrupt");
    let file = site.dir.join("graylane.yaml");
    write_atomic(&file, &site.yaml("corrupt", "20", false));
    let serve = |data: &Path| -> Vec<String> {
        [
            "serve",
            "--config",
            file.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--watch-interval",
            "200ms",
            "--drain-timeout",
            "2s",
            "--workers",
            "1",
        ]
        .map(String::from)
        .to_vec()
    };

    // A few bytes of text, and 64 KiB of noise after a plausible-looking start.
    let mut noise = b"redb\x1a\x0a\xa9\x0d\x0a".to_vec();
    let mut x: u32 = 0x2545_f491;
    while noise.len() < 64 * 1024 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        noise.extend_from_slice(&x.to_le_bytes());
    }
    for (name, garbage) in [
        ("text", b"this is not a database\n".to_vec()),
        ("noise", noise),
    ] {
        let data = site.dir.join(format!("data-{name}"));
        std::fs::create_dir_all(&data).unwrap();
        let db = data.join("graylane.redb");
        std::fs::write(&db, &garbage).unwrap();
        let args = serve(&data);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let stderr = refused(&site.dir, &args);
        let db_name = db.display().to_string();
        assert!(
            stderr.contains(&db_name),
            "{name}: the error names {db_name}:\n{stderr}"
        );
        assert!(
            stderr.contains("refusing") && stderr.contains("untouched"),
            "{name}: the error says the file is refused and left untouched:\n{stderr}"
        );
        assert_eq!(
            std::fs::read(&db).unwrap(),
            garbage,
            "{name}: the file's bytes are unchanged"
        );
        let mut entries: Vec<String> = std::fs::read_dir(&data)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        entries.sort();
        assert_eq!(
            entries,
            ["graylane.redb"],
            "{name}: nothing added next to it"
        );
    }

    // A --data-dir that is a regular file.
    let not_a_dir = site.dir.join("not-a-dir");
    std::fs::write(&not_a_dir, "just a file\n").unwrap();
    let args = serve(&not_a_dir);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let stderr = refused(&site.dir, &args);
    let path = not_a_dir.display().to_string();
    assert!(stderr.contains(&path), "the error names {path}:\n{stderr}");
    assert_eq!(
        std::fs::read_to_string(&not_a_dir).unwrap(),
        "just a file\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_env_name_is_refused() {
    let site = Site::new("bad-env");
    let file = site.dir.join("graylane.yaml");
    write_atomic(&file, &site.yaml("bad env", "20", false));
    let stderr = refused(
        &site.dir,
        &[
            "serve",
            "--config",
            file.to_str().unwrap(),
            "--data-dir",
            site.data.to_str().unwrap(),
            "--env",
            "a b",
            "--workers",
            "1",
        ],
    );
    assert!(
        stderr.contains("--env") && stderr.contains("`a b`"),
        "the error names the environment:\n{stderr}"
    );
    assert!(
        !site.data.exists(),
        "refused before the data directory was created"
    );
}
