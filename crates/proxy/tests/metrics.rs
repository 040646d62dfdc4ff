//! The Prometheus exposition counts what clients actually experienced.

mod common;

use common::*;
use http::StatusCode;

const CONFIG: &str = r#"
listeners:
  - bind: 127.0.0.1:0
segments:
  staff: { values: [u-1001] }
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
  - name: catalog
    match: { path_prefix: /api/catalog }
    versions:
      stable: { endpoints: ["{stable}"] }
  - name: broken
    match: { path_prefix: /api/broken }
    versions:
      stable: { endpoints: ["{refused}"] }
"#;

fn value(text: &str, series: &str) -> f64 {
    metric_value(text, series).unwrap_or_else(|| panic!("no `{series}` in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_decision_and_error_counters_match_the_traffic() {
    let stable = Upstream::start("stable");
    let canary = Upstream::start("canary");
    let yaml = fill(
        CONFIG,
        &[
            ("stable", stable.addr.to_string()),
            ("canary", canary.addr.to_string()),
            ("refused", closed_port().to_string()),
        ],
    );
    let cfg = config(&yaml);
    let gateway = start_gateway(cfg.clone());
    let gw = addr(&gateway);
    let mut conn = Http1::connect(gw).await.unwrap();

    let ok = |r: Reply, want: &str| {
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        assert_eq!(r.version(), Some(want));
    };
    // 5 bucketed on the user id, 2 without it (bucketed on the IP), 3 forced.
    for i in 0..5 {
        let user = format!("u-{i}");
        ok(
            conn.get("/api/payment/orders", &[("X-User-Id", &user)])
                .await
                .unwrap(),
            "stable",
        );
    }
    for _ in 0..2 {
        ok(
            conn.get("/api/payment/orders", &[]).await.unwrap(),
            "stable",
        );
    }
    for _ in 0..3 {
        let forced = [("X-Release-Phase", "canary")];
        ok(
            conn.get("/api/payment/orders", &forced).await.unwrap(),
            "canary",
        );
    }
    for _ in 0..4 {
        ok(conn.get("/api/catalog/items", &[]).await.unwrap(), "stable");
    }
    let r = conn.get("/api/broken/x", &[]).await.unwrap();
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    let r = conn.get("/not/routed", &[]).await.unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    let text = gateway.metrics().encode();
    let requests = |svc: &str, ver: &str, code: u16| {
        value(
            &text,
            &format!(r#"graylane_requests_total{{service="{svc}",version="{ver}",code="{code}"}}"#),
        )
    };
    assert_eq!(requests("payment", "stable", 200), 7.0);
    assert_eq!(requests("payment", "canary", 200), 3.0);
    assert_eq!(requests("catalog", "stable", 200), 4.0);
    assert_eq!(requests("broken", "stable", 502), 1.0);
    assert!(
        !text.contains(r#"code="404""#),
        "unrouted requests belong to no service:\n{text}"
    );

    let decisions = |svc: &str, ver: &str, reason: &str| {
        value(
            &text,
            &format!(
                r#"graylane_routing_decisions_total{{service="{svc}",version="{ver}",reason="{reason}"}}"#
            ),
        )
    };
    assert_eq!(decisions("payment", "stable", "bucket"), 5.0);
    assert_eq!(decisions("payment", "stable", "fallback_key"), 2.0);
    assert_eq!(decisions("payment", "canary", "forced"), 3.0);
    assert_eq!(decisions("catalog", "stable", "no_release"), 4.0);
    assert_eq!(
        value(
            &text,
            r#"graylane_bucket_key_fallbacks_total{service="payment"}"#
        ),
        2.0
    );

    assert_eq!(
        value(
            &text,
            r#"graylane_upstream_errors_total{service="broken",version="stable",kind="connect_refused"}"#
        ),
        1.0
    );
    assert!(
        !text.contains(r#"graylane_upstream_errors_total{service="payment""#),
        "no upstream errors for a healthy service:\n{text}"
    );
    assert_eq!(
        value(
            &text,
            r#"graylane_request_duration_seconds_count{service="payment",version="stable"}"#
        ),
        7.0
    );
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics text ends with # EOF"
    );

    // Counters survive a reload (a reset would look like a traffic drop to rate()).
    gateway.apply(cfg);
    ok(
        conn.get("/api/payment/orders", &[("X-User-Id", "u-9")])
            .await
            .unwrap(),
        "stable",
    );
    let text = gateway.metrics().encode();
    assert_eq!(
        value(
            &text,
            r#"graylane_requests_total{service="payment",version="stable",code="200"}"#
        ),
        8.0
    );
    shutdown(gateway).await;
}
