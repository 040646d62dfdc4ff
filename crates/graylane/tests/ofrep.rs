//! OFREP on the admin listener, against a real `graylane serve`: one flag, every flag in bulk
//! with its `ETag` and `304`, the protocol's error codes and statuses, the bearer tokens, and a
//! real OpenFeature SDK (the node server SDK with `@openfeature/ofrep-provider`, driven by
//! tests/ofrep/sdk.mjs) reading flags and a release.
//!
//! The SDK test needs node and the packages tests/ofrep/package-lock.json pins (scripts/deps
//! installs them with `npm ci`; the test runs `npm ci` itself on a clean checkout).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use http::{Method, StatusCode};
use serde_json::{Value, json};

const VIEWER: &str = "ofrep-viewer-secret";
const OPERATOR: &str = "ofrep-operator-secret";
const TOKENS: [(&str, &str); 2] = [
    ("TEST_TOKEN_VIEWER", VIEWER),
    ("TEST_TOKEN_OPERATOR", OPERATOR),
];

/// Upper bound on the SDK script, and on installing its packages on a clean checkout.
const NODE_DEADLINE: Duration = Duration::from_secs(120);
const NPM_DEADLINE: Duration = Duration::from_secs(300);

const CONFIG: &str = r#"
listeners:
  - bind: 127.0.0.1:{port}
admin:
  bind: 127.0.0.1:{admin}
  tokens:
    - { name: vera, env: TEST_TOKEN_VIEWER, role: viewer }
    - { name: otto, env: TEST_TOKEN_OPERATOR, role: operator }
segments:
  beta: { values: [user-7] }
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
        - weight: 100
flags:
  new-checkout:
    variants: { on: true, off: false }
    default: off
    rules:
      - header: { name: plan, equals: pro }
        variant: on
      - segment: { name: beta, key: "header:userId" }
        variant: on
    rollout: { on: 50 }
  banner:
    variants:
      spring: { colour: green, size: 3 }
      plain: { colour: grey, size: 1 }
    default: plain
    disabled: true
  greeting:
    variants: { formal: "Good day", casual: "Hey" }
    default: casual
  limit:
    variants: { low: 10, high: 2.5 }
    default: high
"#;

async fn serve(test: &str) -> Served {
    Served::start(test, CONFIG, &[], &TOKENS).await
}

/// `POST path` with a viewer token and `body`.
async fn ofrep(s: &Served, path: &str, body: &str) -> Reply {
    s.api(Method::POST, path, VIEWER, body).await
}

async fn flag(s: &Served, key: &str, context: Value) -> Reply {
    let body = json!({ "context": context }).to_string();
    ofrep(s, &format!("/ofrep/v1/evaluate/flags/{key}"), &body).await
}

#[tokio::test]
async fn a_flag_is_evaluated_with_its_value_variant_and_reason() {
    let s = serve("ofrep-single").await;
    let r = flag(
        &s,
        "new-checkout",
        json!({"targetingKey": "user-1", "plan": "pro"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"key": "new-checkout", "value": true, "variant": "on",
               "reason": "TARGETING_MATCH", "metadata": {"rule": 0}})
    );
    let r = flag(
        &s,
        "new-checkout",
        json!({"targetingKey": "x", "userId": "user-7"}),
    )
    .await;
    assert_eq!(
        r.json()["metadata"]["rule"],
        1,
        "the segment rule: {}",
        r.text()
    );

    // Half of the users are in the rollout, each the same every time.
    let mut on = 0;
    for i in 0..200 {
        let ctx = json!({"targetingKey": format!("user-{i}"), "plan": "free"});
        let first = flag(&s, "new-checkout", ctx.clone()).await.json();
        assert_eq!(flag(&s, "new-checkout", ctx).await.json(), first, "sticky");
        match first["reason"].as_str() {
            Some("SPLIT") => {
                assert_eq!(first["value"], true);
                on += 1;
            }
            Some("DEFAULT") => assert_eq!(first["value"], false),
            other => panic!("{other:?}: {first}"),
        }
    }
    assert!((60..=140).contains(&on), "{on} of 200 in a 50% rollout");

    let r = flag(&s, "banner", json!({"targetingKey": "u"}))
        .await
        .json();
    assert_eq!(r["reason"], "DISABLED");
    assert_eq!(r["value"], json!({"colour": "grey", "size": 1}));
    let r = flag(&s, "limit", json!({})).await.json();
    assert_eq!(
        (&r["value"], &r["reason"]),
        (&json!(2.5), &json!("DEFAULT"))
    );
    s.stop().await;
}

#[tokio::test]
async fn a_release_read_as_a_flag_follows_the_live_weight_and_agrees_with_the_proxy() {
    let s = serve("ofrep-release").await;
    let release = |user: &'static str| {
        let s = &s;
        async move {
            flag(
                s,
                "release.payment",
                json!({"targetingKey": "device", "X-User-Id": user}),
            )
            .await
            .json()
        }
    };
    let r = release("user-1").await;
    assert_eq!(
        (&r["value"], &r["variant"]),
        (&json!("stable"), &json!("stable")),
        "{r}"
    );
    assert_eq!(r["reason"], "SPLIT");
    assert_eq!(r["metadata"]["service"], "payment");
    assert_eq!(r["metadata"]["weightPercent"], 0.0);
    let forced = flag(&s, "release.payment", json!({"X-Release-Phase": "canary"}))
        .await
        .json();
    assert_eq!(
        (&forced["value"], &forced["reason"]),
        (&json!("canary"), &json!("TARGETING_MATCH"))
    );

    let r = s
        .api(
            Method::POST,
            "/api/v1/releases/payment/weight",
            OPERATOR,
            r#"{"weight": 30}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let mut canary = 0;
    for i in 0..100 {
        let user = format!("user-{i}");
        let body = json!({"context": {"targetingKey": "device", "X-User-Id": user}}).to_string();
        let answer = ofrep(&s, "/ofrep/v1/evaluate/flags/release.payment", &body)
            .await
            .json();
        assert_eq!(answer["metadata"]["weightPercent"], 30.0);
        let routed = get(s.proxy, "/api/payment/pay", &[("x-user-id", user.as_str())]).await;
        assert_eq!(
            answer["value"].as_str(),
            Some(routed.upstream_version().as_str()),
            "{user}: the flag says {answer}, the proxy sent it to {}",
            routed.upstream_version()
        );
        canary += usize::from(answer["value"] == "canary");
    }
    assert!(
        (10..=55).contains(&canary),
        "{canary} of 100 on the canary at 30%"
    );
    s.stop().await;
}

#[tokio::test]
async fn bulk_evaluation_answers_every_flag_and_release_with_an_etag_that_holds_until_a_weight_changes()
 {
    let s = serve("ofrep-bulk").await;
    let body = json!({"context": {"targetingKey": "user-1", "plan": "pro"}}).to_string();
    let r = ofrep(&s, "/ofrep/v1/evaluate/flags", &body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let flags = r.json()["flags"].as_array().cloned().unwrap_or_default();
    let keys: Vec<&str> = flags.iter().filter_map(|f| f["key"].as_str()).collect();
    assert_eq!(
        keys,
        [
            "banner",
            "greeting",
            "limit",
            "new-checkout",
            "release.payment"
        ]
    );
    assert_eq!(flags[3]["value"], true);
    assert_eq!(flags[4]["value"], "stable");
    let etag = r.headers["etag"].to_str().unwrap().to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");

    let auth = format!("Bearer {VIEWER}");
    let again = |tag: String| {
        let (s, body, auth) = (&s, body.clone(), auth.clone());
        async move {
            let headers = [
                ("authorization", auth.as_str()),
                ("if-none-match", tag.as_str()),
            ];
            request(
                s.admin,
                Method::POST,
                "/ofrep/v1/evaluate/flags",
                &headers,
                body,
            )
            .await
        }
    };
    let r = again(etag.clone()).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED, "{}", r.text());
    assert!(r.body.is_empty());
    assert_eq!(r.headers["etag"].to_str().unwrap(), etag);
    let r = again(format!("\"other\", W/{etag}")).await;
    assert_eq!(
        r.status,
        StatusCode::NOT_MODIFIED,
        "a list with the tag, weak or not"
    );
    let r = again("\"other\"".into()).await;
    assert_eq!(r.status, StatusCode::OK);

    // The weight moves: the user's release flag changes, and so does the tag.
    let r = s
        .api(
            Method::POST,
            "/api/v1/releases/payment/weight",
            OPERATOR,
            r#"{"weight": 100}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = again(etag.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "the weight changed: {}", r.text());
    assert_ne!(r.headers["etag"].to_str().unwrap(), etag);
    assert_eq!(r.json()["flags"][4]["value"], "canary");

    // A flag that cannot be evaluated for this context is an error in its place.
    let r = ofrep(
        &s,
        "/ofrep/v1/evaluate/flags",
        r#"{"context": {"plan": "free"}}"#,
    )
    .await;
    let flags = r.json()["flags"].clone();
    assert_eq!(flags[3]["key"], "new-checkout");
    assert_eq!(flags[3]["errorCode"], "TARGETING_KEY_MISSING", "{flags}");
    assert_eq!(
        flags[1]["value"], "Hey",
        "the others are still there: {flags}"
    );
    s.stop().await;
}

#[tokio::test]
async fn errors_carry_the_protocol_codes_and_statuses() {
    let s = serve("ofrep-errors").await;
    let cases = [
        (
            "/ofrep/v1/evaluate/flags/old-checkout",
            r#"{"context": {}}"#,
            StatusCode::NOT_FOUND,
            "FLAG_NOT_FOUND",
            "new-checkout",
        ),
        (
            "/ofrep/v1/evaluate/flags/release.nope",
            r#"{"context": {}}"#,
            StatusCode::NOT_FOUND,
            "FLAG_NOT_FOUND",
            "release.SERVICE",
        ),
        (
            "/ofrep/v1/evaluate/flags/new-checkout",
            "{not json",
            StatusCode::BAD_REQUEST,
            "PARSE_ERROR",
            "must be JSON",
        ),
        (
            "/ofrep/v1/evaluate/flags/new-checkout",
            r#"{"context": [1]}"#,
            StatusCode::BAD_REQUEST,
            "INVALID_CONTEXT",
            "JSON object",
        ),
        (
            "/ofrep/v1/evaluate/flags/new-checkout",
            r#"{"context": {"targetingKey": 5}}"#,
            StatusCode::BAD_REQUEST,
            "INVALID_CONTEXT",
            "targetingKey",
        ),
        (
            "/ofrep/v1/evaluate/flags/new-checkout",
            r#"{"context": {"ip": "x"}}"#,
            StatusCode::BAD_REQUEST,
            "INVALID_CONTEXT",
            "`ip`",
        ),
        (
            "/ofrep/v1/evaluate/flags/new-checkout",
            r#"{"context": {"plan": "free"}}"#,
            StatusCode::BAD_REQUEST,
            "TARGETING_KEY_MISSING",
            "targeting key",
        ),
        (
            "/ofrep/v1/evaluate/flags",
            "[",
            StatusCode::BAD_REQUEST,
            "PARSE_ERROR",
            "must be JSON",
        ),
        (
            "/ofrep/v1/evaluate/flags",
            r#"{"context": "me"}"#,
            StatusCode::BAD_REQUEST,
            "INVALID_CONTEXT",
            "JSON object",
        ),
    ];
    for (path, body, status, code, says) in cases {
        let r = ofrep(&s, path, body).await;
        assert_eq!(r.status, status, "{path} {body}: {}", r.text());
        let e = r.json();
        assert_eq!(e["errorCode"], code, "{path} {body}: {e}");
        let details = e["errorDetails"].as_str().unwrap_or_default();
        assert!(details.contains(says), "{path} {body}: {details}");
        if let Some(key) = path.strip_prefix("/ofrep/v1/evaluate/flags/") {
            assert_eq!(e["key"], key);
        }
    }
    // No body at all is an empty context.
    let r = ofrep(&s, "/ofrep/v1/evaluate/flags/greeting", "").await;
    assert_eq!(r.json()["value"], "Hey", "{}", r.text());
    s.stop().await;
}

#[tokio::test]
async fn ofrep_needs_an_admin_token_and_a_viewers_is_enough() {
    let s = serve("ofrep-auth").await;
    let body = r#"{"context": {"targetingKey": "u"}}"#;
    for path in [
        "/ofrep/v1/evaluate/flags",
        "/ofrep/v1/evaluate/flags/greeting",
    ] {
        let r = s.api(Method::POST, path, "", body).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}: {}", r.text());
        let r = s.api(Method::POST, path, "not-a-token", body).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}: {}", r.text());
        let r = s.api(Method::POST, path, VIEWER, body).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
    }
    let doc = get(s.admin, "/api/v1/openapi.json", &[]).await.json();
    for path in ["/ofrep/v1/evaluate/flags", "/ofrep/v1/evaluate/flags/{key}"] {
        assert!(
            doc["paths"][path]["post"].is_object(),
            "{path} is not in the OpenAPI document"
        );
    }
    s.stop().await;
}

fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ofrep")
}

/// Runs `program args` in the SDK's folder, killed after `deadline`.
fn run_bounded(
    program: &str,
    args: &[&str],
    env: &[(&str, String)],
    deadline: Duration,
) -> std::process::Output {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(sdk_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!("cannot run {program} (scripts/deps installs node and npm): {e}")
    });
    let until = Instant::now() + deadline;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > until {
            let _ = child.kill();
            panic!(
                "`{program} {}` took longer than {deadline:?}",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

/// The SDK's packages as package-lock.json pins them: installed on a clean checkout (needs
/// the npm registry once), then offline.
fn install_sdk() {
    let installed = sdk_dir().join("node_modules/@openfeature/ofrep-provider/package.json");
    if installed.exists() {
        return;
    }
    let out = run_bounded("npm", &["ci", "--no-audit", "--no-fund"], &[], NPM_DEADLINE);
    assert!(
        out.status.success() && installed.exists(),
        "`npm ci` in {} failed; run scripts/deps: {}",
        sdk_dir().display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn the_openfeature_node_sdk_reads_flags_and_releases_through_the_ofrep_provider() {
    install_sdk();
    let s = serve("ofrep-sdk").await;
    let env = [
        ("GRAYLANE_OFREP", format!("http://{}", s.admin)),
        ("GRAYLANE_TOKEN", VIEWER.to_string()),
    ];
    let out =
        tokio::task::spawn_blocking(move || run_bounded("node", &["sdk.mjs"], &env, NODE_DEADLINE))
            .await
            .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "sdk.mjs failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("sdk.mjs printed no JSON ({e}): {stdout}"));

    let pro = &got["checkoutPro"];
    assert_eq!(
        (&pro["value"], &pro["variant"], &pro["reason"]),
        (&json!(true), &json!("on"), &json!("TARGETING_MATCH")),
        "{got}"
    );
    assert_eq!(pro["flagMetadata"]["rule"], 0);
    let free = &got["checkoutFree"];
    let expected = flag(
        &s,
        "new-checkout",
        json!({"targetingKey": "user-2", "plan": "free"}),
    )
    .await
    .json();
    assert_eq!(
        (&free["value"], &free["reason"]),
        (&expected["value"], &expected["reason"]),
        "{got}"
    );
    assert_eq!(got["banner"]["value"], json!({"colour": "grey", "size": 1}));
    assert_eq!(got["banner"]["reason"], "DISABLED");
    assert_eq!(got["greeting"]["value"], "Hey");
    assert_eq!(got["limit"]["value"], 2.5);
    assert_eq!(got["releaseForced"]["value"], "canary");
    assert_eq!(got["releaseForced"]["reason"], "TARGETING_MATCH");
    assert_eq!(got["releaseUser"]["value"], "stable");
    assert_eq!(got["releaseUser"]["reason"], "SPLIT");
    // The SDK turns the protocol's errors into its own, with the caller's default.
    assert_eq!(got["missing"]["value"], true);
    assert_eq!(got["missing"]["errorCode"], "FLAG_NOT_FOUND");
    assert_eq!(got["wrongType"]["value"], 7);
    assert_eq!(got["wrongType"]["errorCode"], "TYPE_MISMATCH");
    s.stop().await;
}

#[tokio::test]
async fn a_flag_changed_in_the_file_is_answered_after_the_reload_with_a_new_etag() {
    let s = serve("ofrep-reload").await;
    let body = r#"{"context": {"targetingKey": "user-1"}}"#;
    let before = ofrep(&s, "/ofrep/v1/evaluate/flags", body).await;
    let etag = before.headers["etag"].to_str().unwrap().to_string();
    let yaml = std::fs::read_to_string(&s.file).unwrap();
    let edited = yaml.replace("default: casual", "default: formal");
    assert_ne!(yaml, edited);
    write_atomic(&s.file, &edited);
    eventually("the reloaded flag", || async {
        let r = flag(&s, "greeting", json!({"targetingKey": "user-1"}))
            .await
            .json();
        (r["value"] == "Good day").then_some(())
    })
    .await;
    let auth = format!("Bearer {VIEWER}");
    let headers = [
        ("authorization", auth.as_str()),
        ("if-none-match", etag.as_str()),
    ];
    let r = request(
        s.admin,
        Method::POST,
        "/ofrep/v1/evaluate/flags",
        &headers,
        body.to_string(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "the flags changed: {}", r.text());
    assert_ne!(r.headers["etag"].to_str().unwrap(), etag);
    s.stop().await;
}
