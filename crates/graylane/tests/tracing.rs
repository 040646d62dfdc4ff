//! `graylane serve` with `telemetry.otlp` as a process: a proxied request's spans and a release
//! transition's span (its start, then a promotion) reach a real OTLP receiver over gRPC, with a
//! header read from the environment.

mod common;

use common::*;
use graylane_testing::otlp::{OtlpReceiver, Protocol};
use http::{Method, StatusCode};

const OPERATOR: &str = "operator-secret";

const CONFIG: &str = r#"
listeners:
  - bind: 127.0.0.1:{port}
admin:
  bind: 127.0.0.1:{admin}
  tokens:
    - { name: otto, env: TEST_TOKEN_OPERATOR, role: operator }
telemetry:
  otlp: { endpoint: "{collector}", protocol: grpc, sample: 1, headers: { x-api-key: { env: OTLP_API_KEY } } }
services:
  - name: payment
    match: { path_prefix: /pay }
    versions:
      stable: { endpoints: ["{stable}"] }
      canary: { endpoints: ["{canary}"] }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      steps:
        - weight: 0
          pause: manual
        - weight: 25
          pause: manual
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_exports_request_spans_and_release_transitions_to_an_otlp_collector() {
    let receiver = OtlpReceiver::start(Protocol::Grpc);
    let s = Served::start(
        "tracing-serve",
        CONFIG,
        &[("collector", receiver.endpoint())],
        &[
            ("TEST_TOKEN_OPERATOR", OPERATOR),
            ("OTLP_API_KEY", "k-from-env"),
        ],
    )
    .await;
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let r = get(s.proxy, "/pay/x", &[("traceparent", traceparent)]).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = s
        .api(
            Method::POST,
            "/api/v1/releases/payment/promote",
            OPERATOR,
            r#"{"reason":"looks good"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    let spans = eventually("the request's and the transition's spans", || async {
        let spans = receiver.spans();
        let request = spans
            .iter()
            .filter(|s| s.trace_id == "0af7651916cd43dd8448eb211c80319c")
            .count();
        let transition = spans
            .iter()
            .any(|s| s.attr("graylane.release.action") == Some("promote"));
        (request == 2 && transition).then_some(spans)
    })
    .await;
    let server = spans
        .iter()
        .find(|s| s.kind == "SPAN_KIND_SERVER")
        .expect("a server span");
    assert_eq!(server.parent_span_id, "b7ad6b7169203331");
    assert_eq!(server.service_name, "graylane");
    assert_eq!(server.attr("graylane.service"), Some("payment"));
    assert_eq!(server.attr("graylane.version"), Some("stable"));
    let transition = spans
        .iter()
        .find(|s| s.attr("graylane.release.action") == Some("promote"))
        .expect("a transition span");
    assert_eq!(transition.name, "release.transition");
    assert_eq!(transition.attr("graylane.service"), Some("payment"));
    assert_eq!(
        transition.attr("graylane.release.reason"),
        Some("looks good")
    );
    assert_eq!(
        transition.attr("graylane.release.weight.canary"),
        Some("25")
    );
    s.stop().await;
}
