//! `graylane-sdk` against a real `graylane serve`: lane consistency across hops with real
//! instances of examples/lane-service on loopback (a request graylane puts on the canary lane
//! makes the service's own outbound call, through graylane, reach the downstream's canary too),
//! and local evaluation from `GET /api/v1/flags/snapshot` agreeing with the gateway's OFREP
//! answers, `POST /api/v1/eval` and `graylane eval` for many contexts; the snapshot's `ETag` and
//! `304`; the last snapshot kept while graylane is down, and stale past the bound; the offline
//! default before the first snapshot.

mod common;

use std::time::Duration;

use common::*;
use graylane_sdk::{Client, EvalContext, EvalError, Freshness, Options, Refreshed, Snapshot};
use http::{Method, StatusCode};
use serde_json::{Value, json};

const VIEWER: &str = "sdk-viewer-secret";
const OPERATOR: &str = "sdk-operator-secret";
const TOKENS: [(&str, &str); 2] = [
    ("TEST_TOKEN_VIEWER", VIEWER),
    ("TEST_TOKEN_OPERATOR", OPERATOR),
];

/// Two services of two versions each, every one a lane-service; `front` calls `back` through
/// graylane. Loopback is a trusted hop, so graylane honours the lane the services send.
const CHAIN: &str = r#"
listeners:
  - bind: 127.0.0.1:{port}
    trusted_hops: [127.0.0.1/32]
admin:
  bind: 127.0.0.1:{admin}
  tokens:
    - { name: vera, env: TEST_TOKEN_VIEWER, role: viewer }
services:
  - name: front
    match: { path_prefix: /front }
    versions:
      stable: { endpoints: ["{front_stable}"] }
      canary: { endpoints: ["{front_canary}"] }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      force:
        - header: { name: X-Canary, equals: "yes" }
      steps: [{ weight: 0, pause: manual }, { weight: 100 }]
  - name: back
    match: { path_prefix: /back }
    versions:
      stable: { endpoints: ["{back_stable}"] }
      canary: { endpoints: ["{back_canary}"] }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      steps: [{ weight: 0, pause: manual }, { weight: 100 }]
"#;

const FLAGS: &str = r#"
listeners:
  - bind: 127.0.0.1:{port}
admin:
  bind: 127.0.0.1:{admin}
  tokens:
    - { name: vera, env: TEST_TOKEN_VIEWER, role: viewer }
    - { name: otto, env: TEST_TOKEN_OPERATOR, role: operator }
segments:
  beta: { values: [user-7, user-70, user-140] }
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
        - segment: { name: beta, key: "header:X-User-Id" }
      bucket_by: "header:X-User-Id"
      steps: [{ weight: 0, pause: manual }, { weight: 100 }]
flags:
  new-checkout:
    variants: { on: true, off: false }
    default: off
    rules:
      - header: { name: plan, equals: pro }
        variant: on
    rollout: { on: 30 }
  theme:
    variants: { dark: "dark", light: "light", auto: { follow: system } }
    default: light
    rollout: { dark: 20, auto: 25 }
    bucket_by: account
  banner:
    variants: { big: 3, small: 1 }
    default: small
    disabled: true
"#;

/// Binds a loopback listener for a lane-service before graylane starts, so graylane's file can
/// name it; the service starts on it once graylane's own address (its downstream) is known.
async fn listener() -> (tokio::net::TcpListener, String) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    (l, addr)
}

fn lane_service(
    listener: tokio::net::TcpListener,
    name: &str,
    version: &str,
    downstream: Option<String>,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    let settings = lane_service::Settings {
        name: name.to_string(),
        version: version.to_string(),
        downstream: downstream.map(|d| d.parse().unwrap()),
    };
    tokio::spawn(lane_service::serve(listener, settings))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_on_the_canary_lane_keeps_the_services_outbound_call_on_canary() {
    let (fs, fs_addr) = listener().await;
    let (fc, fc_addr) = listener().await;
    let (bs, bs_addr) = listener().await;
    let (bc, bc_addr) = listener().await;
    let s = Served::start(
        "sdk-chain",
        CHAIN,
        &[
            ("front_stable", fs_addr),
            ("front_canary", fc_addr),
            ("back_stable", bs_addr),
            ("back_canary", bc_addr),
        ],
        &TOKENS,
    )
    .await;
    let downstream = format!("http://{}/back/orders", s.proxy);
    let services = [
        lane_service(fs, "front", "stable", Some(downstream.clone())),
        lane_service(fc, "front", "canary", Some(downstream)),
        lane_service(bs, "back", "stable", None),
        lane_service(bc, "back", "canary", None),
    ];

    let r = get(s.proxy, "/front/checkout", &[("x-canary", "yes")]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.version(), Some("canary"));
    let body = r.json();
    assert_eq!(body["version"], "canary", "{body}");
    assert_eq!(body["lane"], "canary", "the front read its lane: {body}");
    let back = &body["downstream"];
    assert_eq!(
        back["answered_by"], "canary",
        "graylane routed the front's own call by its lane: {body}"
    );
    assert_eq!(back["version"], "canary", "{body}");
    assert_eq!(back["lane"], "canary", "{body}");

    // The back's release is at 0%: only the lane puts a call on its canary. A stable request's
    // whole chain stays stable.
    for _ in 0..5 {
        let body = get(s.proxy, "/front/checkout", &[]).await.json();
        assert_eq!(body["version"], "stable", "{body}");
        assert_eq!(body["lane"], "stable", "{body}");
        assert_eq!(body["downstream"]["answered_by"], "stable", "{body}");
        assert_eq!(body["downstream"]["lane"], "stable", "{body}");
    }
    for service in services {
        service.abort();
    }
    s.stop().await;
}

async fn flags_gateway(test: &str) -> Served {
    Served::start(test, FLAGS, &[], &TOKENS).await
}

fn options(s: &Served) -> Options {
    Options::new(format!("http://{}", s.admin))
        .token(VIEWER)
        .poll_interval(Duration::from_millis(100))
}

/// A started client once its first snapshot is in.
async fn client(s: &Served) -> Client {
    let client = Client::start(options(s)).unwrap();
    eventually("the first snapshot", || async {
        client.status().revision.map(|_| ())
    })
    .await;
    client
}

fn context(i: usize) -> Value {
    json!({
        "targetingKey": format!("user-{i}"),
        "X-User-Id": format!("user-{i}"),
        "account": format!("acct-{}", i % 37),
        "plan": if i.is_multiple_of(9) { "pro" } else { "free" },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_evaluation_agrees_with_ofrep_and_eval_for_many_contexts() {
    let s = flags_gateway("sdk-agree").await;
    // An operator's override, not a step of the file: the snapshot carries the live split.
    let r = s
        .api(
            Method::POST,
            "/api/v1/releases/payment/weight",
            OPERATOR,
            r#"{"weight": 37.5}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let client = client(&s).await;
    let mut versions = std::collections::BTreeSet::new();
    for i in 0..200 {
        let json_ctx = context(i);
        let ctx = EvalContext::from_json(&json_ctx).unwrap();
        let body = json!({ "context": json_ctx }).to_string();
        let bulk = s
            .api(Method::POST, "/ofrep/v1/evaluate/flags", VIEWER, &body)
            .await
            .json();
        for remote in bulk["flags"].as_array().unwrap() {
            let key = remote["key"].as_str().unwrap();
            let local = client.flag(key, &ctx).unwrap();
            assert!(matches!(local.freshness, Freshness::Fresh { .. }));
            let local = local.evaluation;
            assert_eq!(local.value, remote["value"], "{key} for {json_ctx}");
            assert_eq!(local.variant, remote["variant"], "{key} for {json_ctx}");
            assert_eq!(
                local.reason.as_str(),
                remote["reason"],
                "{key} for {json_ctx}"
            );
        }
        let request = json!({
            "method": "GET",
            "target": "/api/payment/orders",
            "headers": [format!("X-User-Id: user-{i}")],
        });
        let routed = s
            .api(Method::POST, "/api/v1/eval", VIEWER, &request.to_string())
            .await
            .json();
        let local = client.release("payment", &ctx).unwrap().evaluation.variant;
        assert_eq!(local, routed["version"], "payment for user-{i}: {routed}");
        versions.insert(local);
    }
    assert_eq!(
        versions.len(),
        2,
        "the split and the force rule reach both versions"
    );

    // The CLI, as an operator would ask.
    let admin = format!("http://{}", s.admin);
    for i in [3, 7, 11, 140, 199] {
        let header = format!("X-User-Id: user-{i}");
        let out = run_with_env(
            &[
                "eval",
                "--admin",
                &admin,
                "--json",
                "GET",
                "/api/payment/x",
                "-H",
                &header,
            ],
            &[("GRAYLANE_TOKEN", VIEWER)],
        );
        assert!(out.status.success(), "{}", out.stderr);
        let routed: Value = serde_json::from_str(&out.stdout).unwrap();
        let ctx = EvalContext::from_json(&context(i)).unwrap();
        let local = client.release("payment", &ctx).unwrap().evaluation.variant;
        assert_eq!(local, routed["version"], "user-{i}: {}", out.stdout);
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_has_a_strong_etag_and_answers_304_until_it_changes() {
    let s = flags_gateway("sdk-etag").await;
    let r = s
        .api(Method::GET, "/api/v1/flags/snapshot", VIEWER, "")
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let etag = r.headers["etag"].to_str().unwrap().to_string();
    assert!(etag.starts_with('"'), "a strong tag: {etag}");
    let text = r.text();
    for secret in [
        s.stable.addr.to_string(),
        s.canary.addr.to_string(),
        VIEWER.into(),
    ] {
        assert!(!text.contains(&secret), "{secret} in the snapshot: {text}");
    }
    let split = &r.json()["releases"][0];
    assert_eq!(split["service"], "payment");
    assert_eq!(split["step"], 0, "{split}");
    assert_eq!(
        split["shares"][0],
        json!({"version": "canary", "milli_percent": 0})
    );

    let again = request(
        s.admin,
        Method::GET,
        "/api/v1/flags/snapshot",
        &[
            ("authorization", &format!("Bearer {VIEWER}")),
            ("if-none-match", &etag),
        ],
        "",
    )
    .await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert_eq!(
        s.api(Method::GET, "/api/v1/flags/snapshot", "", "")
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );

    let client = Client::without_polling(options(&s)).unwrap();
    assert_eq!(client.refresh().await, Ok(Refreshed::Updated));
    assert_eq!(client.refresh().await, Ok(Refreshed::NotModified));
    assert_eq!(client.status().not_modified, 1);

    let r = s
        .api(
            Method::POST,
            "/api/v1/releases/payment/weight",
            OPERATOR,
            r#"{"weight": 50}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let changed = s
        .api(Method::GET, "/api/v1/flags/snapshot", VIEWER, "")
        .await;
    assert_ne!(changed.headers["etag"].to_str().unwrap(), etag);
    assert_eq!(client.refresh().await, Ok(Refreshed::Updated));
    assert_eq!(client.status().updates, 2);
    let (snapshot, _) = client.snapshot().unwrap();
    let shares = &snapshot.releases()[0].shares;
    assert_eq!(
        (shares[0].version.as_str(), shares[0].milli_percent),
        ("canary", 50_000)
    );

    let config = s
        .api(Method::GET, "/ofrep/v1/configuration", VIEWER, "")
        .await;
    assert_eq!(config.status, StatusCode::OK, "{}", config.text());
    let body = config.json();
    assert_eq!(body["name"], "graylane");
    assert_eq!(
        body["capabilities"]["cacheInvalidation"]["polling"]["enabled"],
        true
    );
    assert!(
        body["capabilities"]["cacheInvalidation"]["polling"]["minPollingIntervalMs"].is_number()
    );
    let tag = config.headers["etag"].to_str().unwrap();
    let cached = request(
        s.admin,
        Method::GET,
        "/ofrep/v1/configuration",
        &[
            ("authorization", &format!("Bearer {VIEWER}")),
            ("if-none-match", tag),
        ],
        "",
    )
    .await;
    assert_eq!(cached.status, StatusCode::NOT_MODIFIED);
    let doc = get(s.admin, "/api/v1/openapi.json", &[]).await.json();
    for path in ["/api/v1/flags/snapshot", "/ofrep/v1/configuration"] {
        assert!(
            doc["paths"][path]["get"].is_object(),
            "{path} is not in the OpenAPI document"
        );
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_snapshot_answers_while_graylane_is_down_and_is_stale_past_the_bound() {
    let s = flags_gateway("sdk-down").await;
    let client = Client::start(options(&s).max_staleness(Duration::from_millis(600))).unwrap();
    eventually("the first snapshot", || async {
        client.status().revision.map(|_| ())
    })
    .await;
    let ctx = EvalContext::from_json(&context(9)).unwrap();
    let before = client.flag("new-checkout", &ctx).unwrap();
    assert!(matches!(before.freshness, Freshness::Fresh { .. }));
    assert_eq!(before.evaluation.value, true);

    s.stop().await;
    let error = eventually("a failed poll", || async { client.status().last_error }).await;
    assert!(error.contains("cannot connect"), "{error}");
    let stale = eventually("the snapshot to turn stale", || async {
        let answer = client.flag("new-checkout", &ctx).unwrap();
        matches!(answer.freshness, Freshness::Stale { .. }).then_some(answer)
    })
    .await;
    assert_eq!(
        stale.evaluation, before.evaluation,
        "the last snapshot still answers"
    );
    let status = client.status();
    assert!(
        status.stale && status.age.unwrap() > Duration::from_millis(600),
        "{status:?}"
    );
    assert_eq!(status.revision, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_the_first_snapshot_the_offline_default_answers() {
    let nowhere = format!("http://{}", closed_port());
    let ctx = EvalContext::from_json(&context(9)).unwrap();
    let client = Client::without_polling(Options::new(&nowhere)).unwrap();
    assert!(client.refresh().await.is_err());
    assert_eq!(
        client.flag("new-checkout", &ctx).unwrap_err(),
        EvalError::NoSnapshot
    );

    let file = fill(
        FLAGS,
        &[
            ("port", "0".into()),
            ("admin", "0".into()),
            ("stable", "127.0.0.1:1".into()),
            ("canary", "127.0.0.1:2".into()),
        ],
    );
    let config =
        graylane_config::load_str(&file, "offline.yaml", std::path::Path::new(".")).unwrap();
    let offline = Snapshot::from_config(&config);
    let client = Client::start(Options::new(&nowhere).offline(offline)).unwrap();
    let answer = client.flag("new-checkout", &ctx).unwrap();
    assert_eq!(answer.freshness, Freshness::Offline);
    assert_eq!(answer.evaluation.value, true, "plan pro matches the rule");
    assert_eq!(
        client.flag("no-such-flag", &ctx).unwrap_err(),
        EvalError::NotFound
    );

    // Something that answers, but not graylane: its garbage is not used.
    let not_graylane = Upstream::start("stable");
    let client = Client::without_polling(
        Options::new(format!("http://{}", not_graylane.addr))
            .offline(Snapshot::from_config(&config)),
    )
    .unwrap();
    let error = client.refresh().await.unwrap_err();
    assert!(error.contains("snapshot"), "{error}");
    assert_eq!(
        client.flag("new-checkout", &ctx).unwrap().freshness,
        Freshness::Offline
    );
}
