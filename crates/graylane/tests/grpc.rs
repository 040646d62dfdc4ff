//! gRPC canaries through the real binary: versions behind `h2c://` endpoints answering every
//! call with HTTP 200, the canary's calls failing by `grpc-status`; the analysis sees those
//! failures as errors and rolls the canary back on its own.

mod common;

use std::time::Duration;

use common::*;
use graylane_testing::upstream::Speaks;
use http::Method;
use serde_json::Value;

const OPERATOR: &str = "operator-secret";

/// Several analysis intervals of real traffic, on a loaded machine.
const ANALYSIS_DEADLINE: Duration = Duration::from_secs(45);

const CONFIG: &str = r#"
listeners:
  - bind: 127.0.0.1:{port}
admin:
  bind: 127.0.0.1:{admin}
  tokens:
    - { name: otto, env: TEST_TOKEN_OPERATOR, role: operator }
services:
  - name: greeter
    versions:
      stable: { endpoints: ["h2c://{grpc_stable}"] }
      canary: { endpoints: ["h2c://{grpc_canary}"] }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      bucket_by: "header:X-User-Id"
      steps:
        - weight: 30
        - weight: 60
        - weight: 100
      analysis:
        interval: 500ms
        min_requests: 40
        success_needed: 2
        failure_limit: 1
        checks:
          - metric: error_rate
            max_increase: 0.02
"#;

/// An upstream speaking HTTP/2 with prior knowledge, answering every call with `grpc-status`.
fn grpc_upstream(name: &'static str, status: u32) -> Upstream {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = Upstream::serve_speaking(listener, name, Speaks::H2c);
    upstream.set_grpc_status(status);
    upstream
}

#[tokio::test]
async fn a_canary_failing_by_grpc_status_behind_http_200_is_rolled_back_by_the_analysis() {
    let stable = grpc_upstream("stable", 0);
    let canary = grpc_upstream("canary", 14);
    let s = Served::start(
        "grpc-analysis",
        CONFIG,
        &[
            ("grpc_stable", stable.addr.to_string()),
            ("grpc_canary", canary.addr.to_string()),
        ],
        &[("TEST_TOKEN_OPERATOR", OPERATOR)],
    )
    .await;
    let release = || async {
        s.api(Method::GET, "/api/v1/releases/greeter", OPERATOR, "")
            .await
            .json()
    };

    // Calls from ever new users, until the release is aborted (bounded by the deadline).
    let deadline = tokio::time::Instant::now() + ANALYSIS_DEADLINE;
    let mut sent = 0u64;
    let r: Value = loop {
        for _ in 0..20 {
            let user = format!("user-{sent}");
            let r = try_get(
                s.proxy,
                "/greeter.Greeter/SayHello",
                &[
                    ("x-user-id", user.as_str()),
                    ("content-type", "application/grpc"),
                ],
            )
            .await;
            if let Ok(r) = r {
                assert_eq!(r.status, http::StatusCode::OK, "gRPC answers with 200");
            }
            sent += 1;
        }
        let r = release().await;
        if r["state"] == "aborted" {
            break r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the analysis did not abort the release within {ANALYSIS_DEADLINE:?}: {r}"
        );
    };
    assert_eq!(r["weights"]["canary"], 0.0, "{r}");
    let last = r["transitions"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["actor"].as_str(), last["action"].as_str()),
        (Some("analysis"), Some("analysis_failed"))
    );
    assert!(
        last["reason"].as_str().unwrap().contains("error_rate"),
        "{last}"
    );
    assert!(canary.received() > 0 && stable.received() > 0);
    s.stop().await;
}
