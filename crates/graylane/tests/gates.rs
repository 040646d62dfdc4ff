//! Release gates end to end: a real `graylane serve` asking real HTTP gate servers on loopback.
//! A confirm gate answering 503 holds the release (the API and `graylane status` say so) until
//! it answers 200; a failing pre_step gate aborts the step and the post_rollback gate hears of
//! it; an unreachable gate counts as failing; every answer is in the audit log.

mod common;

use std::time::Duration;

use common::*;
use http::{Method, StatusCode};
use serde_json::Value;

const VIEWER: &str = "viewer-secret";

const CONFIG: &str = r#"
listeners:
  - bind: 127.0.0.1:{port}
admin:
  bind: 127.0.0.1:{admin}
  tokens:
    - { name: vera, env: TEST_TOKEN_VIEWER, role: viewer }
services:
  - name: payment
    match: { path_prefix: /payment }
    versions:
      stable: { endpoints: ["{stable}"] }
      canary: { endpoints: ["{canary}"] }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      steps: [{ weight: 10, pause: 1s }, { weight: 100 }]
      gates:
        - { kind: confirm_promotion, url: "{confirm}", timeout: 1s, retries: 0 }
  - name: web
    match: { path_prefix: /web }
    versions:
      stable: { endpoints: ["{stable}"] }
      canary: { endpoints: ["{canary}"] }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      steps: [{ weight: 10, pause: 1s }, { weight: 50, pause: 1s }, { weight: 100 }]
      gates:
        - { kind: pre_step, url: "{failing}", timeout: 1s, retries: 1 }
        - { kind: post_rollback, url: "{after}", timeout: 1s }
  - name: search
    match: { path_prefix: /search }
    versions:
      stable: { endpoints: ["{stable}"] }
      canary: { endpoints: ["{canary}"] }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      steps: [{ weight: 50, pause: 1m }, { weight: 100 }]
      gates:
        - { kind: pre_rollout, url: "{unreachable}", timeout: 500ms, retries: 1 }
"#;

struct Gates {
    confirm: Upstream,
    failing: Upstream,
    after: Upstream,
}

async fn serve(test: &str) -> (Served, Gates) {
    let gates = Gates {
        confirm: Upstream::start("confirm"),
        failing: Upstream::start("failing"),
        after: Upstream::start("after"),
    };
    gates.confirm.set_status(503);
    gates.failing.set_status(500);
    let url = |u: &Upstream, path: &str| format!("http://{}/{path}", u.addr);
    let served = Served::start(
        test,
        CONFIG,
        &[
            ("confirm", url(&gates.confirm, "confirm")),
            ("failing", url(&gates.failing, "step")),
            ("after", url(&gates.after, "after")),
            ("unreachable", format!("http://{}/pre", closed_port())),
        ],
        &[("TEST_TOKEN_VIEWER", VIEWER)],
    )
    .await;
    (served, gates)
}

async fn release(s: &Served, service: &str) -> Value {
    let r = s
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

async fn gate_audit(s: &Served, service: &str) -> Vec<String> {
    let r = s
        .api(
            Method::GET,
            &format!("/api/v1/audit?action=gate&target={service}"),
            VIEWER,
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn a_confirm_gate_holds_the_release_and_status_shows_it_until_it_answers_200() {
    let (s, gates) = serve("gates-confirm").await;
    let url = format!("http://{}/confirm", gates.confirm.addr);
    let held = eventually("payment to wait on its confirm gate's 503", || async {
        let r = release(&s, "payment").await;
        (r["gate"]["answer"] == "503").then_some(r)
    })
    .await;
    assert_eq!(held["state"], "progressing");
    assert_eq!(held["weights"]["canary"], 10.0, "held at its weight");
    assert_eq!(held["gate"]["kind"], "confirm_promotion");
    assert_eq!(
        held["gate"]["summary"],
        format!("waiting on gate {url}: 503")
    );

    let admin = format!("http://{}", s.admin);
    let out = tokio::task::spawn_blocking(move || {
        let args = ["status", "payment", "--admin", admin.as_str()];
        run_with_env(&args, &[("GRAYLANE_TOKEN", VIEWER)])
    })
    .await
    .unwrap();
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(
        out.stdout.contains("gate confirm_promotion: 503"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&format!("waiting on gate {url}: 503")),
        "{}",
        out.stdout
    );

    gates.confirm.set_status(200);
    let done = eventually_within(
        Duration::from_secs(30),
        "payment to be promoted once the gate answers 200 (asked again every 10s)",
        || async {
            let r = release(&s, "payment").await;
            (r["state"] == "completed").then_some(r)
        },
    )
    .await;
    assert_eq!(done["weights"]["canary"], 100.0);
    assert!(done.get("gate").is_none(), "{done}");
    let audit = gate_audit(&s, "payment").await;
    assert!(
        audit.iter().any(|r| r.ends_with("answered 503")),
        "{audit:?}"
    );
    assert!(
        audit.iter().any(|r| r.ends_with("answered 200")),
        "{audit:?}"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_failing_pre_step_gate_aborts_the_step_and_post_rollback_hears_of_it() {
    let (s, gates) = serve("gates-pre-step").await;
    let aborted = eventually("web to abort on its failing pre_step gate", || async {
        let r = release(&s, "web").await;
        (r["state"] == "aborted" && r.get("gate").is_none()).then_some(r)
    })
    .await;
    assert_eq!(aborted["weights"]["canary"], 0.0);
    assert_eq!(gates.failing.received(), 2, "asked once, retried once");
    let told = gates.after.seen();
    assert_eq!(told.len(), 1, "post_rollback is called once");
    let body: Value = serde_json::from_slice(&told[0].body).unwrap();
    assert_eq!(body["kind"], "post_rollback");
    assert_eq!(body["service"], "web");
    assert_eq!(body["phase"], "aborted");
    let audit = gate_audit(&s, "web").await;
    let step_url = format!("http://{}/step", gates.failing.addr);
    let after_url = format!("http://{}/after", gates.after.addr);
    assert!(
        audit.contains(&format!("pre_step gate {step_url} answered 500")),
        "{audit:?}"
    );
    assert!(
        audit.contains(&format!("post_rollback gate {after_url} answered 200")),
        "{audit:?}"
    );

    // An unreachable pre_rollout gate fails the release before it sends anything, and the
    // gateway goes on serving.
    let search = eventually("search to abort on its unreachable gate", || async {
        let r = release(&s, "search").await;
        (r["state"] == "aborted").then_some(r)
    })
    .await;
    assert_eq!(search["weights"]["canary"], 0.0);
    let audit = gate_audit(&s, "search").await;
    assert!(
        audit.iter().any(|r| r.contains("answered unreachable: ")),
        "{audit:?}"
    );
    let r = get(s.proxy, "/search", &[]).await;
    assert_eq!(r.version(), Some("stable"));
    s.stop().await;
}
