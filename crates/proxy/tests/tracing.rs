//! OpenTelemetry traces, read back from a real OTLP receiver (`http/protobuf` and `grpc`): a
//! server span under the caller's `traceparent` and a client span per upstream attempt that the
//! upstream's own spans nest under; retries and a fallback as client spans of their own; the
//! routing attributes; sampling (the caller's flag, the `sample` share, `always_on_error`); a
//! reload turning traces on; and a collector that is down costing a counter, not a request.

mod common;

use std::time::{Duration, Instant};

use common::*;
use graylane_testing::otlp::{OtlpReceiver, Protocol, ReceivedSpan};
use http::StatusCode;

const CONFIG: &str = r#"
listeners:
  - bind: 127.0.0.1:0
{telemetry}
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
      force:
        - header: { name: X-Release-Phase, equals: canary }
      bucket_by: "header:X-User-Id"
      steps: [{ weight: 0, pause: manual }]
  - name: broken
    match: { path_prefix: /broken }
    versions:
      stable: { endpoints: ["{refused}"] }
traffic_control:
  retries:
    - { service: payment, attempts: 1, retry_on: [5xx] }
  circuit_breakers:
    - service: payment
      version: canary
      window: { kind: count, size: 100 }
      minimum_calls: 100
      failure_rate_threshold: 0.9
      open_for: 30s
      half_open_calls: 1
      fallback: stable
"#;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

struct Setup {
    stable: Upstream,
    canary: Upstream,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            stable: Upstream::start("stable"),
            canary: Upstream::start("canary"),
        }
    }

    fn yaml(&self, telemetry: &str) -> String {
        fill(
            CONFIG,
            &[
                ("telemetry", telemetry.to_string()),
                ("stable", self.stable.addr.to_string()),
                ("canary", self.canary.addr.to_string()),
                ("refused", closed_port().to_string()),
            ],
        )
    }
}

fn telemetry(receiver: &OtlpReceiver, sample: f64, always_on_error: bool) -> String {
    format!(
        "telemetry:\n  otlp: {{ endpoint: \"{}\", protocol: {}, sample: {sample}, always_on_error: {always_on_error}, headers: {{ x-api-key: k-123 }}, service_name: edge-gw }}",
        receiver.endpoint(),
        receiver.protocol_name()
    )
}

/// Waits until the receiver holds `n` spans of trace `trace_id`.
async fn trace(receiver: &OtlpReceiver, trace_id: &str, n: usize) -> Vec<ReceivedSpan> {
    eventually(&format!("{n} spans of trace {trace_id}"), || async {
        let spans: Vec<_> = receiver
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect();
        (spans.len() >= n).then_some(spans)
    })
    .await
}

fn one<'a>(spans: &'a [ReceivedSpan], kind: &str) -> &'a ReceivedSpan {
    let found: Vec<_> = spans.iter().filter(|s| s.kind == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} span in {spans:#?}");
    found[0]
}

async fn the_upstream_nests_under_graylanes_client_span(protocol: Protocol) {
    let setup = Setup::new();
    let receiver = OtlpReceiver::start(protocol);
    let gateway = start_gateway(config(&setup.yaml(&telemetry(&receiver, 0.0, false))));
    let traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    let r = get(
        addr(&gateway),
        "/pay/orders?id=7",
        &[
            ("traceparent", traceparent.as_str()),
            ("X-Release-Phase", "canary"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.version(), Some("canary"));

    let spans = trace(&receiver, TRACE_ID, 2).await;
    let server = one(&spans, "SPAN_KIND_SERVER");
    let client = one(&spans, "SPAN_KIND_CLIENT");
    assert_eq!(
        server.parent_span_id, CALLER_SPAN,
        "under the caller's span"
    );
    assert_eq!(client.parent_span_id, server.span_id);
    assert_eq!(server.service_name, "edge-gw");
    assert_eq!(server.name, "GET");
    for (key, value) in [
        ("http.request.method", "GET"),
        ("url.path", "/pay/orders"),
        ("server.address", "127.0.0.1"),
        ("http.response.status_code", "200"),
        ("graylane.service", "payment"),
        ("graylane.version", "canary"),
        ("graylane.lane", "canary"),
        ("graylane.routing.reason", "forced"),
        ("graylane.fallback", "false"),
    ] {
        assert_eq!(server.attr(key), Some(value), "{key} in {server:#?}");
    }
    assert_eq!(server.attr("network.peer.address"), Some("127.0.0.1"));
    assert_eq!(
        client.attr("server.port"),
        Some(setup.canary.addr.port().to_string().as_str())
    );
    assert_eq!(client.attr("graylane.attempt"), Some("1"));
    assert_eq!(client.attr("http.response.status_code"), Some("200"));
    assert!(!server.error && !client.error);
    assert!(server.start_unix_nanos <= client.start_unix_nanos);
    assert!(client.end_unix_nanos <= server.end_unix_nanos);

    let seen = setup.canary.seen();
    assert_eq!(
        seen[0].headers["traceparent"],
        format!("00-{TRACE_ID}-{}-01", client.span_id),
        "the upstream's parent is graylane's client span, in the caller's trace"
    );
    let headers = receiver.export_headers();
    assert_eq!(
        headers[0]["x-api-key"], "k-123",
        "configured headers are sent"
    );
    shutdown(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_http_protobuf_collector_under_the_callers_trace() {
    the_upstream_nests_under_graylanes_client_span(Protocol::HttpProtobuf).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_a_grpc_collector_under_the_callers_trace() {
    the_upstream_nests_under_graylanes_client_span(Protocol::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_and_a_fallback_are_client_spans_of_their_own() {
    let setup = Setup::new();
    setup.canary.set_status(500);
    let receiver = OtlpReceiver::start(Protocol::HttpProtobuf);
    let gateway = start_gateway(config(&setup.yaml(&telemetry(&receiver, 1.0, false))));
    let r = get(addr(&gateway), "/pay", &[("X-Release-Phase", "canary")]).await;
    assert_eq!(r.status, StatusCode::OK, "the fallback answers");
    assert_eq!(r.version(), Some("stable"));

    let server = eventually("the server span", || async {
        receiver
            .spans()
            .into_iter()
            .find(|s| s.kind == "SPAN_KIND_SERVER")
    })
    .await;
    let spans = trace(&receiver, &server.trace_id, 4).await;
    let mut clients: Vec<_> = spans
        .iter()
        .filter(|s| s.kind == "SPAN_KIND_CLIENT")
        .collect();
    clients.sort_by_key(|s| s.attr("graylane.attempt").map(str::to_string));
    assert_eq!(clients.len(), 3, "{spans:#?}");
    let attr = |i: usize, key: &str| clients[i].attr(key).unwrap_or("").to_string();
    assert_eq!(
        (attr(0, "graylane.version"), attr(0, "graylane.retry")),
        ("canary".into(), "false".into())
    );
    assert_eq!(
        (attr(1, "graylane.version"), attr(1, "graylane.retry")),
        ("canary".into(), "true".into())
    );
    assert_eq!(
        (attr(2, "graylane.version"), attr(2, "graylane.fallback")),
        ("stable".into(), "true".into())
    );
    assert!(clients[0].error && clients[1].error && !clients[2].error);
    assert_eq!(attr(0, "http.response.status_code"), "500");
    assert!(clients.iter().all(|c| c.parent_span_id == server.span_id));
    assert_eq!(server.attr("graylane.fallback"), Some("true"));
    assert_eq!(server.attr("graylane.version"), Some("stable"));
    assert_eq!(server.attr("graylane.retries"), Some("1"));
    let upstream_parents: Vec<String> = setup
        .canary
        .seen()
        .iter()
        .chain(setup.stable.seen().iter())
        .map(|s| s.headers["traceparent"][36..52].to_string())
        .collect();
    let client_ids: Vec<String> = clients.iter().map(|c| c.span_id.clone()).collect();
    assert_eq!(
        upstream_parents, client_ids,
        "each attempt carried its own client span"
    );
    shutdown(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_zero_exports_only_sampled_callers_and_failures_with_always_on_error() {
    let setup = Setup::new();
    let receiver = OtlpReceiver::start(Protocol::Grpc);
    let gateway = start_gateway(config(&setup.yaml(&telemetry(&receiver, 0.0, true))));
    let a = addr(&gateway);
    let unsampled = "00-11111111111111111111111111111111-2222222222222222-00";
    for _ in 0..5 {
        assert_eq!(get(a, "/pay", &[]).await.status, StatusCode::OK);
    }
    assert_eq!(
        get(a, "/pay", &[("traceparent", unsampled)]).await.status,
        StatusCode::OK
    );
    let sampled = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    assert_eq!(
        get(a, "/pay", &[("traceparent", sampled.as_str())])
            .await
            .status,
        StatusCode::OK
    );
    let upstream = setup.stable.seen();
    assert!(
        upstream[..5]
            .iter()
            .all(|s| s.headers["traceparent"].ends_with("-00")),
        "an unsampled trace is sent on as unsampled"
    );
    let failed = get(a, "/broken", &[]).await;
    assert_eq!(failed.status, StatusCode::BAD_GATEWAY);

    trace(&receiver, TRACE_ID, 2).await;
    let failure = eventually("the failed request's spans", || async {
        let spans = receiver.spans();
        let server = spans
            .iter()
            .find(|s| s.attr("graylane.service") == Some("broken"))?
            .clone();
        let client = spans
            .iter()
            .find(|s| s.parent_span_id == server.span_id)?
            .clone();
        Some((server, client))
    })
    .await;
    assert!(failure.0.error, "a 502 is an error span");
    assert_eq!(failure.0.attr("http.response.status_code"), Some("502"));
    assert!(failure.1.error);
    assert_eq!(failure.1.attr("error.type"), Some("connect_refused"));
    // The exporter drains every 50 ms: anything else queued with these is in by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let traces: std::collections::BTreeSet<String> =
        receiver.spans().into_iter().map(|s| s.trace_id).collect();
    assert_eq!(
        traces.len(),
        2,
        "only the sampled caller's and the failure's traces: {traces:?}"
    );
    shutdown(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_started_unsampled_is_sent_on_unsampled_and_not_exported() {
    let setup = Setup::new();
    let receiver = OtlpReceiver::start(Protocol::HttpProtobuf);
    let gateway = start_gateway(config(&setup.yaml(&telemetry(&receiver, 0.0, false))));
    let a = addr(&gateway);
    for _ in 0..3 {
        assert_eq!(get(a, "/pay", &[]).await.status, StatusCode::OK);
    }
    assert_eq!(get(a, "/broken", &[]).await.status, StatusCode::BAD_GATEWAY);
    let seen = setup.stable.seen();
    assert_eq!(seen.len(), 3);
    for s in &seen {
        let tp = &s.headers["traceparent"];
        assert!(tp.starts_with("00-") && tp.ends_with("-00"), "{tp}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        receiver.spans().is_empty(),
        "without always_on_error a failure is not exported either"
    );
    shutdown(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_costs_a_counter_and_never_a_request() {
    let setup = Setup::new();
    let yaml = setup.yaml(&format!(
        "telemetry:\n  otlp: {{ endpoint: \"http://{}\", sample: 1 }}",
        closed_port()
    ));
    let gateway = start_gateway(config(&yaml));
    let a = addr(&gateway);
    for _ in 0..50 {
        let started = Instant::now();
        let r = get(a, "/pay", &[]).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "a request waited on the collector: {:?}",
            started.elapsed()
        );
    }
    eventually("a failed export counted", || async {
        let errors = metric_value(
            &gateway.metrics().encode(),
            "graylane_trace_export_errors_total",
        )?;
        (errors >= 1.0).then_some(())
    })
    .await;
    let metrics = gateway.metrics().encode();
    assert_eq!(
        metric_value(&metrics, "graylane_trace_spans_exported_total"),
        Some(0.0)
    );
    assert!(metric_value(&metrics, "graylane_trace_spans_dropped_total").is_some());
    shutdown(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_turns_traces_on_and_off() {
    let setup = Setup::new();
    let receiver = OtlpReceiver::start(Protocol::HttpProtobuf);
    let gateway = start_gateway(config(&setup.yaml("")));
    let a = addr(&gateway);
    assert_eq!(get(a, "/pay", &[]).await.status, StatusCode::OK);
    gateway.apply(config(&setup.yaml(&telemetry(&receiver, 1.0, false))));
    let traced = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    assert_eq!(
        get(a, "/pay", &[("traceparent", traced.as_str())])
            .await
            .status,
        StatusCode::OK
    );
    trace(&receiver, TRACE_ID, 2).await;
    gateway.apply(config(&setup.yaml("")));
    let after = "00-33333333333333333333333333333333-2222222222222222-01";
    assert_eq!(
        get(a, "/pay", &[("traceparent", after)]).await.status,
        StatusCode::OK
    );
    let seen = setup.stable.seen();
    assert_eq!(
        seen.last().map(|s| s.headers["traceparent"].as_str()),
        Some(after),
        "with traces off the caller's traceparent goes on untouched"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        receiver.spans().iter().all(|s| s.trace_id == TRACE_ID),
        "nothing exported once traces are off"
    );
    shutdown(gateway).await;
}
