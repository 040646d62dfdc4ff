//! Releases driven end to end through the admin API of a real `graylane serve`: a canary walked
//! through timed and manual steps with real traffic checked at each one, abort / retry /
//! complete / rollback, blue-green, an experiment, two releases at once, webhooks, the auth
//! matrix, configuration revisions (apply, dry run, invalid, diff, revert), the audit log's
//! filters (API and CLI) and bad input.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use http::{Method, StatusCode};
use serde_json::{Value, json};

const VIEWER: &str = "viewer-secret";
const OPERATOR: &str = "operator-secret";
const ADMIN: &str = "admin-secret";

const CONFIG: &str = r#"
listeners:
  - bind: 127.0.0.1:{port}
admin:
  bind: 127.0.0.1:{admin}
  tokens:
    - { name: vera, env: TEST_TOKEN_VIEWER, role: viewer }
    - { name: otto, env: TEST_TOKEN_OPERATOR, role: operator }
    - { name: ada, env: TEST_TOKEN_ADMIN, role: admin }
{webhooks}
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
      force:
        - header: { name: X-Release-Phase, equals: canary }
      bucket_by: "header:X-User-Id"
      steps:
        - weight: 0
          pause: manual
        - weight: 20
          pause: 1s
        - weight: 50
          pause: manual
        - weight: 100
  - name: web
    match: { path_prefix: /web }
    versions:
      blue: { endpoints: ["{stable}"] }
      green: { endpoints: ["{canary}"] }
    release:
      strategy: blue_green
      active: blue
      preview: green
      force:
        - header: { name: X-Preview, equals: "1" }
      keep_previous: 5m
  - name: search
    match: { path_prefix: /search }
    versions:
      a: { endpoints: ["{stable}"] }
      b: { endpoints: ["{canary}"] }
    release:
      strategy: experiment
      bucket_by: "header:X-User-Id"
      variants:
        - { name: control, version: a, weight: 50 }
        - { name: treatment, version: b, weight: 50 }
traffic_control:
  circuit_breakers:
    - { service: payment, version: canary, fallback: stable }
"#;

async fn serve(test: &str, webhooks: &str) -> Served {
    Served::start(
        test,
        CONFIG,
        &[("webhooks", webhooks.to_string())],
        &[
            ("TEST_TOKEN_VIEWER", VIEWER),
            ("TEST_TOKEN_OPERATOR", OPERATOR),
            ("TEST_TOKEN_ADMIN", ADMIN),
        ],
    )
    .await
}

impl Served {
    async fn release(&self, service: &str) -> Value {
        let r = self
            .api(
                Method::GET,
                &format!("/api/v1/releases/{service}"),
                VIEWER,
                "",
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        r.json()
    }

    /// A release command as the operator; panics unless it is accepted.
    async fn command(&self, service: &str, command: &str, body: Value) -> Value {
        let r = self
            .api(
                Method::POST,
                &format!("/api/v1/releases/{service}/{command}"),
                OPERATOR,
                &body.to_string(),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{command} {service}: {}",
            r.text()
        );
        r.json()
    }

    /// `GET /api/v1/audit?{query}` as a viewer; panics unless it answers 200.
    async fn audit(&self, query: &str) -> Vec<Value> {
        let r = self
            .api(Method::GET, &format!("/api/v1/audit?{query}"), VIEWER, "")
            .await;
        assert_eq!(r.status, StatusCode::OK, "?{query}: {}", r.text());
        r.json()["entries"].as_array().unwrap().clone()
    }

    /// How many of `users` distinct users `version` serves on `path`.
    async fn share(&self, path: &str, users: usize, version: &str) -> usize {
        let mut n = 0;
        for i in 0..users {
            let user = format!("user-{i}");
            let r = get(self.proxy, path, &[("x-user-id", user.as_str())]).await;
            assert_eq!(r.status, StatusCode::OK, "{r:?}");
            if r.version() == Some(version) {
                n += 1;
            }
        }
        n
    }
}

fn weight(release: &Value, version: &str) -> f64 {
    release["weights"][version].as_f64().unwrap_or(0.0)
}

#[tokio::test]
async fn a_canary_walks_its_steps_and_real_traffic_follows() {
    let s = serve("canary-walk", "").await;
    let users = 200;
    let r = s.release("payment").await;
    assert_eq!(
        (r["state"].as_str(), r["step"].as_u64()),
        (Some("progressing"), Some(0))
    );
    assert_eq!(r["pause"], "manual");
    assert_eq!(
        r["circuits"],
        json!({ "canary": "closed" }),
        "the breaker's state is shown"
    );
    assert_eq!(
        s.share("/api/payment/x", users, "canary").await,
        0,
        "step 0 is test traffic only"
    );
    let forced = get(s.proxy, "/api/payment/x", &[("x-release-phase", "canary")]).await;
    assert_eq!(
        forced.version(),
        Some("canary"),
        "test traffic reaches the canary"
    );

    // Manual gate → 20% with a one-second pause, which passes by itself → 50% (manual).
    let r = s
        .command("payment", "promote", json!({"reason": "test traffic ok"}))
        .await;
    assert_eq!((r["step"].as_u64(), weight(&r, "canary")), (Some(1), 20.0));
    let at_20 = s.share("/api/payment/x", users, "canary").await;
    let r = eventually("the timed pause to pass", || async {
        let r = s.release("payment").await;
        (r["step"] == 2).then_some(r)
    })
    .await;
    assert_eq!(weight(&r, "canary"), 50.0);
    assert_eq!(
        r["transitions"].as_array().unwrap().last().unwrap()["actor"],
        "controller"
    );
    let at_50 = s.share("/api/payment/x", users, "canary").await;
    assert!(
        (20..=60).contains(&at_20),
        "about 20% of {users} users: {at_20}"
    );
    assert!(
        (70..=130).contains(&at_50),
        "about 50% of {users} users: {at_50}"
    );
    assert!(at_50 > at_20, "users only move towards the canary");

    // Abort: everything on stable at once, even the forced test traffic; retry starts over.
    let r = s
        .command("payment", "abort", json!({"reason": "errors"}))
        .await;
    assert_eq!(
        (r["state"].as_str(), weight(&r, "canary")),
        (Some("aborted"), 0.0)
    );
    assert_eq!(s.share("/api/payment/x", users, "canary").await, 0);
    let forced = get(s.proxy, "/api/payment/x", &[("x-release-phase", "canary")]).await;
    assert_eq!(
        forced.version(),
        Some("stable"),
        "an aborted release forces nothing"
    );
    let r = s.release("payment").await;
    assert_eq!(
        r["allowed"],
        json!(["retry"]),
        "an aborted release has a way out"
    );
    let r = s.command("payment", "retry", json!({})).await;
    assert_eq!(
        (r["state"].as_str(), r["step"].as_u64()),
        (Some("progressing"), Some(0))
    );

    // Straight to 100%: completed, the canary is the stable version now; rollback goes back.
    let r = s.command("payment", "promote", json!({"full": true})).await;
    assert_eq!(
        (r["state"].as_str(), r["stable"].as_str()),
        (Some("completed"), Some("canary"))
    );
    assert_eq!(s.share("/api/payment/x", 50, "canary").await, 50);
    let r = s
        .command("payment", "rollback", json!({"reason": "regression"}))
        .await;
    assert_eq!(
        (r["state"].as_str(), r["stable"].as_str()),
        (Some("rolled_back"), Some("stable"))
    );
    assert_eq!(s.share("/api/payment/x", 50, "stable").await, 50);

    let audit = s
        .api(Method::GET, "/api/v1/audit?limit=50", VIEWER, "")
        .await
        .json();
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["target"] == "payment")
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "rollback",
            "promote_full",
            "retry",
            "abort",
            "tick",
            "promote",
            "start"
        ],
        "every transition is audited, newest first"
    );
    let promote = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "promote")
        .unwrap();
    assert_eq!(
        (promote["actor"].as_str(), promote["reason"].as_str()),
        (Some("otto"), Some("test traffic ok"))
    );
    s.stop().await;
}

#[tokio::test]
async fn blue_green_switches_at_once_and_back_and_releases_run_side_by_side() {
    let s = serve("blue-green", "").await;
    assert_eq!(
        s.share("/web/", 30, "blue").await,
        30,
        "all traffic on the active version"
    );
    let preview = get(s.proxy, "/web/", &[("x-preview", "1")]).await;
    assert_eq!(
        preview.version(),
        Some("green"),
        "test traffic reaches the preview"
    );
    let refused = s
        .api(
            Method::POST,
            "/api/v1/releases/web/weight",
            OPERATOR,
            r#"{"weight": 10}"#,
        )
        .await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.text());
    assert!(
        refused.json()["error"]
            .as_str()
            .unwrap()
            .contains("blue-green")
    );

    // A canary step on another service at the same time.
    s.command("payment", "promote", json!({})).await;
    let r = s
        .command("web", "promote", json!({"reason": "switch"}))
        .await;
    assert_eq!(
        (r["state"].as_str(), r["stable"].as_str()),
        (Some("completed"), Some("green"))
    );
    assert!(r["previous_kept_until"].is_string(), "{r}");
    assert_eq!(
        s.share("/web/", 30, "green").await,
        30,
        "the switch is atomic and total"
    );
    assert_eq!(
        weight(&s.release("payment").await, "canary"),
        20.0,
        "the other release is untouched"
    );

    let r = s.command("web", "rollback", json!({})).await;
    assert_eq!(r["stable"], "blue");
    assert_eq!(
        s.share("/web/", 30, "blue").await,
        30,
        "the switch back is instant"
    );
    s.stop().await;
}

#[tokio::test]
async fn an_experiment_splits_by_variant_counts_exposures_and_picks_a_winner() {
    let s = serve("experiment", "").await;
    let users = 200;
    let b = s.share("/search/q", users, "b").await;
    assert!(
        (70..=130).contains(&b),
        "about half of {users} users on b: {b}"
    );
    let again = s.share("/search/q", users, "b").await;
    assert_eq!(b, again, "bucketing is sticky per user");
    let r = s.release("search").await;
    let exposures: u64 = r["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["exposures"].as_u64().unwrap())
        .sum();
    assert_eq!(
        exposures,
        2 * users as u64,
        "every bucketed request is an exposure: {r}"
    );

    let refused = s
        .api(
            Method::POST,
            "/api/v1/releases/search/promote",
            OPERATOR,
            "",
        )
        .await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    assert!(
        refused.json()["error"]
            .as_str()
            .unwrap()
            .contains("--variant")
    );
    let unknown = s
        .api(
            Method::POST,
            "/api/v1/releases/search/promote",
            OPERATOR,
            r#"{"variant": "nope"}"#,
        )
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert!(
        unknown.json()["error"]
            .as_str()
            .unwrap()
            .contains("control, treatment")
    );
    let r = s
        .command("search", "promote", json!({"variant": "treatment"}))
        .await;
    assert_eq!(
        (r["state"].as_str(), r["stable"].as_str()),
        (Some("completed"), Some("b"))
    );
    assert_eq!(s.share("/search/q", 40, "b").await, 40);
    s.stop().await;
}

#[tokio::test]
async fn transitions_are_posted_to_webhooks() {
    let receiver = Receiver::start().await;
    let hooks = format!(
        "webhooks:\n  - url: http://{}/hooks\n    timeout: 1s\n    retries: 1",
        receiver.addr
    );
    let s = serve("webhooks", &hooks).await;
    s.command("payment", "promote", json!({"reason": "go"}))
        .await;
    let event = eventually("the promote event", || async {
        receiver
            .events()
            .into_iter()
            .find(|e| e["service"] == "payment" && e["action"] == "promote")
    })
    .await;
    assert_eq!(event["event"], "release.transition");
    assert_eq!(
        (event["actor"].as_str(), event["reason"].as_str()),
        (Some("otto"), Some("go"))
    );
    assert_eq!(event["weights"]["canary"], 20.0);
    assert_eq!(event["env"], "default");
    s.stop().await;
}

#[tokio::test]
async fn the_initial_configuration_and_each_release_start_are_posted_to_webhooks() {
    let receiver = Receiver::start().await;
    let hooks = format!("webhooks:\n  - url: http://{}/hooks", receiver.addr);
    let s = serve("webhooks-start", &hooks).await;
    let events = eventually("the start-up events", || async {
        let events = receiver.events();
        (events.len() >= 4).then_some(events)
    })
    .await;
    assert_eq!(events[0]["event"], "config.applied", "{events:?}");
    assert_eq!(
        (events[0]["revision"].as_u64(), events[0]["author"].as_str()),
        (Some(1), Some("file"))
    );
    let mut started: Vec<&str> = events[1..]
        .iter()
        .filter(|e| e["event"] == "release.transition" && e["action"] == "start")
        .filter_map(|e| e["service"].as_str())
        .collect();
    started.sort_unstable();
    assert_eq!(started, ["payment", "search", "web"], "{events:?}");
    s.stop().await;
}

#[tokio::test]
async fn a_webhook_added_by_a_reload_receives_events_without_a_restart() {
    let receiver = Receiver::start().await;
    let s = serve("webhooks-reload", "").await;
    let yaml = std::fs::read_to_string(&s.file).unwrap().replacen(
        "services:",
        &format!(
            "webhooks:\n  - url: http://{}/hooks\nservices:",
            receiver.addr
        ),
        1,
    );
    write_atomic(&s.file, &yaml);
    let applied = eventually("the reload's config.applied event", || async {
        receiver
            .events()
            .into_iter()
            .find(|e| e["event"] == "config.applied")
    })
    .await;
    assert_eq!(applied["revision"], 2, "{applied}");
    s.command("payment", "promote", json!({"reason": "hooked"}))
        .await;
    eventually("the promote event", || async {
        receiver
            .events()
            .into_iter()
            .find(|e| e["action"] == "promote" && e["reason"] == "hooked")
    })
    .await;
    s.stop().await;
}

#[tokio::test]
async fn a_reason_over_1_kib_is_refused_with_the_limit_and_nothing_changes() {
    let s = serve("reason-cap", "").await;
    let long = "r".repeat(1025);
    let r = s
        .api(
            Method::POST,
            "/api/v1/releases/payment/promote",
            OPERATOR,
            &json!({ "reason": long }).to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    let message = r.json()["error"].as_str().unwrap_or("").to_string();
    assert!(
        message.contains("`reason` is 1025 bytes long; the limit is 1024 bytes"),
        "{message}"
    );
    assert_eq!(s.release("payment").await["step"], 0, "nothing changed");

    let yaml = std::fs::read_to_string(&s.file).unwrap();
    let r = s
        .api(
            Method::PUT,
            &format!("/api/v1/config?message={}", "m".repeat(1025)),
            ADMIN,
            &yaml,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(
        r.text().contains("`message` is 1025 bytes long"),
        "{}",
        r.text()
    );

    // Exactly at the limit is accepted and kept whole in the audit log.
    s.command("payment", "promote", json!({ "reason": "r".repeat(1024) }))
        .await;
    let entries = s.audit("action=promote").await;
    assert_eq!(entries[0]["reason"].as_str().map(str::len), Some(1024));
    s.stop().await;
}

#[tokio::test]
async fn every_call_needs_a_token_with_the_right_role() {
    let s = serve("auth", "").await;
    for open in ["/healthz", "/readyz", "/metrics", "/api/v1/openapi.json"] {
        assert_eq!(
            s.api(Method::GET, open, "", "").await.status,
            StatusCode::OK,
            "{open}"
        );
    }
    let none = s.api(Method::GET, "/api/v1/releases", "", "").await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        (
            none.json()["code"].as_str(),
            none.json()["required_role"].as_str()
        ),
        (Some("unauthorized"), Some("viewer"))
    );
    let wrong = s
        .api(Method::GET, "/api/v1/releases", "not-a-token", "")
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);

    let cases = [
        (Method::GET, "/api/v1/releases", "", VIEWER, StatusCode::OK),
        (
            Method::POST,
            "/api/v1/releases/payment/pause",
            "",
            VIEWER,
            StatusCode::FORBIDDEN,
        ),
        (
            Method::POST,
            "/api/v1/releases/payment/pause",
            "",
            OPERATOR,
            StatusCode::OK,
        ),
        (
            Method::PUT,
            "/api/v1/config?dry_run=true",
            "x",
            OPERATOR,
            StatusCode::FORBIDDEN,
        ),
        (
            Method::POST,
            "/api/v1/config/revert/1?dry_run=true",
            "",
            OPERATOR,
            StatusCode::FORBIDDEN,
        ),
        (
            Method::POST,
            "/api/v1/releases/payment/resume",
            "",
            ADMIN,
            StatusCode::OK,
        ),
        (
            Method::POST,
            "/api/v1/config/revert/1?dry_run=true",
            "",
            ADMIN,
            StatusCode::OK,
        ),
    ];
    for (method, path, body, token, want) in cases {
        let r = s.api(method.clone(), path, token, body).await;
        assert_eq!(r.status, want, "{method} {path} with {token}: {}", r.text());
        if want == StatusCode::FORBIDDEN {
            let body = r.json();
            assert_eq!(body["code"], "forbidden");
            assert!(body["required_role"].is_string(), "{body}");
        }
    }
    s.stop().await;
}

#[tokio::test]
async fn the_openapi_document_lists_every_route() {
    let s = serve("openapi", "").await;
    let doc = s
        .api(Method::GET, "/api/v1/openapi.json", "", "")
        .await
        .json();
    let paths = doc["paths"].as_object().expect("paths");
    let routes = [
        ("get", "/api/v1/releases"),
        ("get", "/api/v1/releases/{service}"),
        ("post", "/api/v1/releases/{service}/promote"),
        ("post", "/api/v1/releases/{service}/pause"),
        ("post", "/api/v1/releases/{service}/resume"),
        ("post", "/api/v1/releases/{service}/abort"),
        ("post", "/api/v1/releases/{service}/retry"),
        ("post", "/api/v1/releases/{service}/rollback"),
        ("post", "/api/v1/releases/{service}/weight"),
        ("get", "/api/v1/config"),
        ("put", "/api/v1/config"),
        ("get", "/api/v1/config/revisions"),
        ("get", "/api/v1/config/revisions/{n}"),
        ("get", "/api/v1/config/diff"),
        ("post", "/api/v1/config/revert/{n}"),
        ("get", "/api/v1/audit"),
        ("get", "/api/v1/releases/{service}/analysis"),
        ("post", "/api/v1/events"),
        ("get", "/api/v1/experiments/{service}/results"),
        ("get", "/api/v1/releases/{service}/series"),
        ("get", "/api/v1/whoami"),
        ("post", "/api/v1/segments/{name}/members"),
        ("post", "/api/v1/eval"),
        ("get", "/api/v1/cluster"),
        ("get", "/api/v1/flags/snapshot"),
    ];
    for (method, path) in routes {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} is not in the OpenAPI document"
        );
        // And the route is really served: a call without a token is refused, not "no such path".
        let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let concrete = path
            .replace("{service}", "payment")
            .replace("{n}", "1")
            .replace("{name}", "staff");
        let r = s.api(m, &concrete, "", "").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{method} {concrete}");
    }
    // Besides the API: /metrics, /healthz and /readyz, open (tests/admin.rs).
    assert_eq!(
        paths.keys().filter(|p| p.starts_with("/api/")).count(),
        24,
        "a documented path nobody tested: {:?}",
        paths.keys().collect::<Vec<_>>()
    );
    s.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_4xx_that_says_why_and_changes_nothing() {
    let s = serve("bad-input", "").await;
    let before = s.release("payment").await;
    let cases: [(&str, &str, StatusCode, &str); 7] = [
        (
            "/api/v1/releases/nope/promote",
            "",
            StatusCode::NOT_FOUND,
            "payment, search, web",
        ),
        (
            "/api/v1/releases/payment/weight",
            r#"{"weight": 120}"#,
            StatusCode::BAD_REQUEST,
            "from 0 to 100",
        ),
        (
            "/api/v1/releases/payment/weight",
            r#"{"weight": "abc"}"#,
            StatusCode::BAD_REQUEST,
            "not a number",
        ),
        (
            "/api/v1/releases/payment/weight",
            r#"{"weight": 1.23456}"#,
            StatusCode::BAD_REQUEST,
            "three decimals",
        ),
        (
            "/api/v1/releases/payment/weight",
            "{",
            StatusCode::BAD_REQUEST,
            "must be JSON",
        ),
        (
            "/api/v1/releases/payment/resume",
            "",
            StatusCode::CONFLICT,
            "allowed now: promote",
        ),
        (
            "/api/v1/releases/payment/rollback",
            r#"{"reson": "typo"}"#,
            StatusCode::BAD_REQUEST,
            "reson",
        ),
    ];
    for (path, body, status, says) in cases {
        let r = s.api(Method::POST, path, OPERATOR, body).await;
        assert_eq!(r.status, status, "{path} {body}: {}", r.text());
        let error = r.json();
        assert!(
            error["error"].as_str().unwrap().contains(says),
            "{path} {body}: {error}"
        );
    }
    let conflict = s
        .api(
            Method::POST,
            "/api/v1/releases/payment/resume",
            OPERATOR,
            "",
        )
        .await
        .json();
    assert_eq!(conflict["code"], "not_allowed");
    assert!(
        conflict["allowed"]
            .as_array()
            .unwrap()
            .contains(&json!("pause"))
    );
    let unknown = s
        .api(Method::GET, "/api/v1/releases/nope", VIEWER, "")
        .await
        .json();
    assert_eq!(unknown["services"], json!(["payment", "search", "web"]));
    let after = s.release("payment").await;
    assert_eq!(
        before["transitions"], after["transitions"],
        "nothing changed"
    );
    assert_eq!(before["weights"], after["weights"]);
    s.stop().await;
}

#[tokio::test]
async fn configuration_revisions_apply_dry_run_reject_diff_and_revert() {
    let s = serve("revisions", "").await;
    let original = std::fs::read_to_string(&s.file).unwrap();
    let changed = original.replace("pause: 1s", "pause: 30s");
    assert_ne!(original, changed);

    // A dry run validates and shows the diff, and changes nothing.
    let r = s
        .api(Method::PUT, "/api/v1/config?dry_run=true", ADMIN, &changed)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let dry = r.json();
    assert_eq!(
        (dry["applied"].as_bool(), dry["valid"].as_bool()),
        (Some(false), Some(true))
    );
    assert!(
        dry["diff"]
            .as_str()
            .unwrap()
            .contains("+          pause: 30s"),
        "{dry}"
    );
    assert_eq!(std::fs::read_to_string(&s.file).unwrap(), original);

    // An invalid configuration is rejected with every error located; nothing changes.
    let invalid = original.replace("weight: 20", "weight: 120");
    let r = s.api(Method::PUT, "/api/v1/config", ADMIN, &invalid).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text());
    let errors = r.json()["errors"].as_array().unwrap().clone();
    assert!(
        errors[0]
            .as_str()
            .unwrap()
            .contains("services[0].release.steps[1].weight"),
        "{errors:?}"
    );
    assert_eq!(std::fs::read_to_string(&s.file).unwrap(), original);
    let current = s.api(Method::GET, "/api/v1/config", VIEWER, "").await;
    assert_eq!(current.text(), original);
    assert_eq!(current.headers["x-graylane-revision"], "1");

    // Applied: written to the file, recorded as revision 2 by the token's name, in effect.
    let r = s
        .api(
            Method::PUT,
            "/api/v1/config?message=slower%20canary",
            ADMIN,
            &changed,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let applied = r.json();
    assert_eq!(applied["revision"]["n"], 2);
    assert_eq!(std::fs::read_to_string(&s.file).unwrap(), changed);
    // The file watcher sees the API's own write and records nothing more.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let list = s
        .api(Method::GET, "/api/v1/config/revisions", VIEWER, "")
        .await
        .json();
    assert_eq!(list["current"], 2);
    let revisions = list["revisions"].as_array().unwrap();
    assert_eq!(revisions.len(), 2, "{list}");
    assert_eq!(
        (
            revisions[0]["author"].as_str(),
            revisions[0]["source"].as_str()
        ),
        (Some("ada"), Some("api"))
    );
    assert_eq!(revisions[0]["message"], "slower canary");
    assert_eq!(
        (
            revisions[1]["author"].as_str(),
            revisions[1]["source"].as_str()
        ),
        (Some("file"), Some("file"))
    );

    // An edit of the file by hand is a revision by `file`.
    let by_hand = changed.replace("pause: 30s", "pause: 45s");
    write_atomic(&s.file, &by_hand);
    eventually("the file edit to become revision 3", || async {
        let list = s
            .api(Method::GET, "/api/v1/config/revisions", VIEWER, "")
            .await
            .json();
        (list["current"] == 3).then_some(())
    })
    .await;

    let diff = s
        .api(Method::GET, "/api/v1/config/diff?from=1&to=3", VIEWER, "")
        .await
        .json();
    let text = diff["diff"].as_str().unwrap();
    assert!(
        text.starts_with("--- revision 1\n+++ revision 3\n"),
        "{text}"
    );
    assert!(
        text.contains("-          pause: 1s") && text.contains("+          pause: 45s"),
        "{text}"
    );

    // Revert: a dry run first, then for real — a new revision with revision 1's text.
    let r = s
        .api(
            Method::POST,
            "/api/v1/config/revert/1?dry_run=true",
            ADMIN,
            "",
        )
        .await
        .json();
    assert_eq!(r["applied"], false);
    assert!(r["diff"].as_str().unwrap().contains("+          pause: 1s"));
    assert_eq!(std::fs::read_to_string(&s.file).unwrap(), by_hand);
    let r = s
        .api(Method::POST, "/api/v1/config/revert/1", ADMIN, "")
        .await
        .json();
    assert_eq!(
        (r["applied"].as_bool(), r["revision"]["n"].as_u64()),
        (Some(true), Some(4))
    );
    assert_eq!(r["revision"]["source"], "revert");
    assert_eq!(std::fs::read_to_string(&s.file).unwrap(), original);
    let missing = s
        .api(Method::POST, "/api/v1/config/revert/99", ADMIN, "")
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(
        missing.json()["error"]
            .as_str()
            .unwrap()
            .contains("from 1 to 4")
    );

    // The release kept its place through all of it (same strategy and versions).
    assert_eq!(s.release("payment").await["state"], "progressing");
    s.stop().await;
}

#[tokio::test]
async fn a_release_keeps_its_place_through_edits_and_starts_over_for_a_new_candidate() {
    let s = serve("identity", "").await;
    s.command("payment", "promote", json!({})).await;
    s.command("payment", "pause", json!({})).await;
    let original = std::fs::read_to_string(&s.file).unwrap();

    // Editing the steps keeps the release where it is.
    let edited = original.replace("weight: 20", "weight: 25");
    write_atomic(&s.file, &edited);
    let r = eventually("the edited weight", || async {
        let r = s.release("payment").await;
        (weight(&r, "canary") == 25.0).then_some(r)
    })
    .await;
    assert_eq!(
        (r["state"].as_str(), r["step"].as_u64()),
        (Some("paused"), Some(1))
    );

    // A new candidate is a new release, from step 0; a removed release is forgotten.
    let canary = s.release("payment").await;
    let endpoint = original
        .lines()
        .find(|l| l.contains("canary: { endpoints:"))
        .unwrap()
        .to_string();
    let new_candidate = edited
        .replace(
            &endpoint,
            &format!("{endpoint}\n{}", endpoint.replace("canary:", "canary2:")),
        )
        .replace("candidate: canary", "candidate: canary2");
    let without_web = {
        let start = new_candidate.find("  - name: web").unwrap();
        let end = new_candidate.find("  - name: search").unwrap();
        format!("{}{}", &new_candidate[..start], &new_candidate[end..])
    };
    write_atomic(&s.file, &without_web);
    let r = eventually("the new release", || async {
        let r = s.release("payment").await;
        (r["candidate"] == "canary2").then_some(r)
    })
    .await;
    assert_eq!(
        (r["state"].as_str(), r["step"].as_u64()),
        (Some("progressing"), Some(0))
    );
    let first = &r["transitions"][0];
    assert_eq!(
        (first["action"].as_str(), first["actor"].as_str()),
        (Some("start"), Some("file"))
    );
    assert_ne!(r["transitions"], canary["transitions"]);
    let web = s.api(Method::GET, "/api/v1/releases/web", VIEWER, "").await;
    assert_eq!(web.status, StatusCode::NOT_FOUND);
    let list = s
        .api(Method::GET, "/api/v1/releases", VIEWER, "")
        .await
        .json();
    let names: Vec<&str> = list["releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["service"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["payment", "search"]);
    s.stop().await;
}

/// The CLI runs in its own blocking process; this keeps the async test's thread free.
async fn cli(args: &[&str], token: &str) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let token = token.to_string();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_with_env(&args, &[("GRAYLANE_TOKEN", token.as_str())])
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn the_cli_drives_releases_and_says_what_is_wrong() {
    let s = serve("cli", "").await;
    let admin = format!("http://{}", s.admin);
    let a = admin.as_str();

    let out = cli(&["status", "--admin", a], VIEWER).await;
    assert_eq!(out.code(), Some(0), "{out:?}");
    for (service, strategy) in [
        ("payment", "canary"),
        ("web", "blue_green"),
        ("search", "experiment"),
    ] {
        let line = out
            .stdout
            .lines()
            .find(|l| l.starts_with(service))
            .unwrap_or_else(|| panic!("{}", out.stdout));
        assert!(line.contains(strategy), "{line}");
    }

    let out = cli(
        &["promote", "payment", "--admin", a, "--reason", "looks good"],
        OPERATOR,
    )
    .await;
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stdout.contains("canary 20%"), "{}", out.stdout);
    let out = cli(&["set-weight", "payment", "12.5", "--admin", a], OPERATOR).await;
    assert!(out.stdout.contains("12.5%"), "{out:?}");
    let out = cli(&["status", "payment", "--admin", a, "--json"], VIEWER).await;
    let json: Value = serde_json::from_str(&out.stdout).expect("--json prints the server's JSON");
    assert_eq!(json["weights"]["canary"], 12.5);

    // What is wrong, said plainly: unknown service, wrong state, missing or weak token.
    let out = cli(&["promote", "nope", "--admin", a], OPERATOR).await;
    assert_eq!(out.code(), Some(1));
    assert!(
        out.stderr.contains("payment, search, web"),
        "{}",
        out.stderr
    );
    let out = cli(&["resume", "payment", "--admin", a], OPERATOR).await;
    assert_eq!(out.code(), Some(1));
    assert!(out.stderr.contains("allowed now"), "{}", out.stderr);
    let out = cli(&["abort", "payment", "--admin", a], VIEWER).await;
    assert_eq!(out.code(), Some(1));
    assert!(out.stderr.contains("operator"), "{}", out.stderr);
    let out = cli(&["status", "--admin", a], "").await;
    assert_eq!(out.code(), Some(1));
    assert!(
        out.stderr.contains("GRAYLANE_TOKEN") && out.stderr.contains("viewer"),
        "{}",
        out.stderr
    );

    // Revisions from the CLI: apply, history, diff, revert with and without --dry-run.
    let edited = std::fs::read_to_string(&s.file)
        .unwrap()
        .replace("pause: 1s", "pause: 2s");
    let proposal = s.dir.join("proposal.yaml");
    std::fs::write(&proposal, &edited).unwrap();
    let out = cli(
        &[
            "apply",
            proposal.to_str().unwrap(),
            "--admin",
            a,
            "--message",
            "slower",
        ],
        ADMIN,
    )
    .await;
    assert_eq!(out.code(), Some(0), "{out:?}");
    let out = cli(&["history", "--admin", a], VIEWER).await;
    let current = out
        .stdout
        .lines()
        .find(|l| l.starts_with('*'))
        .unwrap_or_else(|| panic!("{}", out.stdout));
    assert!(
        current.contains("ada") && current.contains("slower"),
        "{current}"
    );
    let out = cli(&["diff", "1", "2", "--admin", a], VIEWER).await;
    assert!(
        out.stdout.contains("+          pause: 2s"),
        "{}",
        out.stdout
    );
    let out = cli(&["revert", "1", "--dry-run", "--admin", a], ADMIN).await;
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stdout.contains("nothing applied"), "{}", out.stdout);
    assert_eq!(std::fs::read_to_string(&s.file).unwrap(), edited);
    let out = cli(&["revert", "1", "--admin", a], ADMIN).await;
    assert!(out.stdout.contains("revision 3"), "{out:?}");
    let out = cli(&["audit", "--admin", a, "--limit", "3"], VIEWER).await;
    assert_eq!(
        out.stdout.lines().count(),
        4,
        "a header and 3 entries: {}",
        out.stdout
    );
    s.stop().await;
}

#[tokio::test]
async fn the_audit_log_is_filtered_on_the_server() {
    let s = serve("audit-filter", "").await;
    let r = s
        .api(
            Method::POST,
            "/api/v1/releases/web/promote",
            ADMIN,
            r#"{"reason": "switch to green"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // Many newer entries by someone else, as the analysis writes one every interval.
    for weight in 1..=40 {
        s.command("payment", "weight", json!({ "weight": weight }))
            .await;
    }
    let field = |entries: &[Value], name: &str| -> Vec<String> {
        entries
            .iter()
            .map(|e| e[name].as_str().unwrap().to_string())
            .collect()
    };
    let seqs = |entries: &[Value]| -> Vec<u64> {
        entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
    };
    let newest_first = |entries: &[Value]| seqs(entries).windows(2).all(|w| w[0] > w[1]);

    let recent = s.audit("limit=20").await;
    assert_eq!(recent.len(), 20);
    assert!(
        field(&recent, "actor").iter().all(|a| a == "otto"),
        "ada's entry is not among the newest 20: {recent:?}"
    );

    let ada = s.audit("limit=20&actor=ada").await;
    assert_eq!(ada.len(), 1, "{ada:?}");
    assert_eq!(
        (
            ada[0]["action"].as_str(),
            ada[0]["target"].as_str(),
            ada[0]["reason"].as_str()
        ),
        (Some("promote"), Some("web"), Some("switch to green"))
    );

    let otto = s.audit("actor=otto").await;
    assert_eq!(otto.len(), 40);
    assert!(newest_first(&otto), "{:?}", seqs(&otto));
    assert!(field(&otto, "action").iter().all(|a| a == "set_weight"));
    assert_eq!(seqs(&otto)[0], seqs(&recent)[0], "the newest entry first");

    let web = s.audit("service=web").await;
    assert_eq!(field(&web, "target"), ["web", "web"], "{web:?}");
    assert_eq!(field(&web, "action"), ["promote", "start"]);

    let weights = s.audit("action=set_weight&limit=5").await;
    assert_eq!(seqs(&weights), seqs(&otto[..5]), "the limit counts matches");

    let both = s
        .audit("service=payment&actor=otto&action=set_weight")
        .await;
    assert_eq!(seqs(&both), seqs(&otto), "every given filter must match");
    assert!(s.audit("service=payment&actor=ada").await.is_empty());
    assert!(s.audit("actor=nobody").await.is_empty());
    assert_eq!(
        seqs(&s.audit("limit=3&service=&actor=&action=").await),
        seqs(&recent[..3]),
        "an empty value is no filter"
    );
    let bad = s
        .api(Method::GET, "/api/v1/audit?limit=0&actor=ada", VIEWER, "")
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.text());
    assert!(bad.json()["error"].as_str().unwrap().contains("limit"));

    // The filters are documented for API clients.
    let doc = s
        .api(Method::GET, "/api/v1/openapi.json", "", "")
        .await
        .json();
    let params = doc["paths"]["/api/v1/audit"]["get"]["parameters"]
        .as_array()
        .unwrap();
    for name in ["limit", "service", "actor", "action"] {
        let param = params
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no parameter {name}: {params:?}"));
        assert_eq!(param["in"], "query");
        assert!(param["description"].is_string(), "{param}");
    }

    // And from the CLI.
    let admin = format!("http://{}", s.admin);
    let a = admin.as_str();
    let out = cli(&["audit", "--admin", a, "--actor", "ada", "--json"], VIEWER).await;
    assert_eq!(out.code(), Some(0), "{out:?}");
    let json: Value = serde_json::from_str(&out.stdout).expect("--json prints the server's JSON");
    let entries = json["entries"].as_array().unwrap();
    assert_eq!(seqs(entries), seqs(&ada), "{}", out.stdout);
    let out = cli(
        &[
            "audit",
            "--admin",
            a,
            "--service",
            "payment",
            "--action",
            "set_weight",
            "--limit",
            "3",
        ],
        VIEWER,
    )
    .await;
    assert_eq!(out.code(), Some(0), "{out:?}");
    let rows: Vec<&str> = out.stdout.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{}", out.stdout);
    assert!(
        rows.iter()
            .all(|l| l.contains("otto") && l.contains("set_weight") && l.contains("payment")),
        "{}",
        out.stdout
    );
    let out = cli(&["audit", "--admin", a, "--actor", "nobody"], VIEWER).await;
    assert_eq!(out.stdout, "no audit entries\n", "{out:?}");
    s.stop().await;
}

/// A local HTTP server that records the JSON bodies posted to it.
struct Receiver {
    addr: SocketAddr,
    events: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&events);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let sink = std::sync::Arc::clone(&sink);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    // Read the head, then as many body bytes as Content-Length says.
                    loop {
                        let Ok(n) = stream.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            if let Ok(v) = serde_json::from_slice(&buf[end + 4..end + 4 + len]) {
                                sink.lock().unwrap().push(v);
                            }
                            let _ = stream
                                .write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
                                .await;
                            return;
                        }
                    }
                });
            }
        });
        Receiver { addr, events }
    }

    fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }
}
