//! Traffic control with real upstreams: rate limits and their 429, a canary whose breaker opens
//! and whose traffic falls back to stable with no failure the client sees, then half-opens,
//! re-opens and closes on the trial calls' outcomes, a static fallback page, retries past a
//! dead endpoint and its ejection, an ejected endpoint coming back when its ejection ends,
//! retries held to their budget, a concurrency limit that sheds, health checks that keep a dead
//! endpoint out of rotation, and a version with no healthy endpoint left served by its fallback.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;

fn release(canary_weight: u32) -> String {
    format!(
        "    release:
      strategy: canary
      baseline: stable
      candidate: canary
      bucket_by: \"header:X-User-Id\"
      steps: [{{ weight: {canary_weight}, pause: manual }}]
"
    )
}

fn service(stable: &str, canary: &str, canary_weight: u32, traffic: &str) -> String {
    format!(
        "listeners:
  - bind: 127.0.0.1:0
services:
  - name: payment
    match: {{ path_prefix: /pay }}
    versions:
      stable: {{ endpoints: [{stable}] }}
      canary: {{ endpoints: [{canary}] }}
{}traffic_control:
{traffic}",
        release(canary_weight)
    )
}

#[tokio::test]
async fn a_rate_limit_answers_429_with_the_headers_and_counts_per_key() {
    let stable = Upstream::start("stable");
    let canary = Upstream::start("canary");
    let yaml = service(
        &stable.addr.to_string(),
        &canary.addr.to_string(),
        0,
        "  rate_limits:
    - { service: payment, key: \"header:X-User-Id\", rate: 1/s, burst: 5 }
",
    );
    let gateway = start_gateway(config(&yaml));
    let a = addr(&gateway);
    let mut allowed = 0;
    let mut refused = None;
    for _ in 0..8 {
        let r = get(a, "/pay", &[("x-user-id", "alice")]).await;
        match r.status {
            StatusCode::OK => allowed += 1,
            StatusCode::TOO_MANY_REQUESTS => refused = Some(r),
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(allowed, 5, "the burst, then refusals");
    let r = refused.expect("a refusal");
    assert_eq!(r.headers["ratelimit-limit"], "5");
    assert_eq!(r.headers["ratelimit-remaining"], "0");
    assert!(
        r.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    let body = r.json();
    assert_eq!(body["error"], "rate limit exceeded");
    assert!(
        body["limit"]
            .as_str()
            .unwrap()
            .contains("per header:x-user-id"),
        "{body}"
    );
    let bob = get(a, "/pay", &[("x-user-id", "bob")]).await;
    assert_eq!(bob.status, StatusCode::OK, "another key has its own budget");
    shutdown(gateway).await;
}

#[tokio::test]
async fn a_failing_canary_falls_back_to_stable_and_its_breaker_opens() {
    let stable = Upstream::start("stable");
    let canary = Upstream::start("canary");
    canary.set_status(500);
    let yaml = service(
        &stable.addr.to_string(),
        &canary.addr.to_string(),
        100,
        "  circuit_breakers:
    - service: payment
      version: canary
      window: { kind: count, size: 10 }
      minimum_calls: 5
      failure_rate_threshold: 0.5
      open_for: 30s
      half_open_calls: 2
      fallback: stable
",
    );
    let gateway = start_gateway(config(&yaml));
    let a = addr(&gateway);
    for i in 0..40 {
        let user = format!("user-{i}");
        let r = get(a, "/pay", &[("x-user-id", user.as_str())]).await;
        assert_eq!(r.status, StatusCode::OK, "no failure reaches the client");
        assert_eq!(r.version(), Some("stable"));
        assert_eq!(r.headers["x-graylane-fallback"], "stable");
    }
    assert_eq!(
        canary.received(),
        5,
        "the breaker opened after minimum_calls failures; the rest never reached the canary"
    );
    let metrics = gateway.metrics().encode();
    assert_eq!(
        metric_value(
            &metrics,
            "graylane_circuit_state{service=\"payment\",version=\"canary\",state=\"open\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric_value(
            &metrics,
            "graylane_circuit_transitions_total{service=\"payment\",version=\"canary\"}"
        ),
        Some(1.0)
    );
    shutdown(gateway).await;
}

#[tokio::test]
async fn a_static_fallback_page_answers_when_the_canary_fails() {
    let stable = Upstream::start("stable");
    let canary = Upstream::start("canary");
    canary.set_status(503);
    let yaml = service(
        &stable.addr.to_string(),
        &canary.addr.to_string(),
        100,
        "  circuit_breakers:
    - service: payment
      version: canary
      fallback: { status: 200, headers: { Content-Type: text/plain }, body: \"degraded but up\" }
",
    );
    let gateway = start_gateway(config(&yaml));
    let r = get(addr(&gateway), "/pay", &[("x-user-id", "u")]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["x-graylane-fallback"], "static");
    assert_eq!(r.headers["content-type"], "text/plain");
    assert_eq!(&r.body[..], b"degraded but up");
    shutdown(gateway).await;
}

#[tokio::test]
async fn retries_get_past_a_dead_endpoint_and_ejection_takes_it_out() {
    let stable = Upstream::start("stable");
    let dead = closed_port();
    let yaml = format!(
        "listeners:
  - bind: 127.0.0.1:0
services:
  - name: payment
    match: {{ path_prefix: /pay }}
    versions:
      stable: {{ endpoints: [\"{dead}\", \"{}\"] }}
traffic_control:
  retries:
    - {{ service: payment, attempts: 2, retry_on: [connect_error, 5xx] }}
  outlier_detection:
    - {{ service: payment, consecutive_failures: 2, base_ejection: 30s }}
",
        stable.addr
    );
    let gateway = start_gateway(config(&yaml));
    let a = addr(&gateway);
    for _ in 0..20 {
        let r = get(a, "/pay", &[]).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "a retry reaches the live endpoint"
        );
    }
    assert_eq!(stable.received(), 20);
    let metrics = gateway.metrics().encode();
    let refused = metric_value(
        &metrics,
        "graylane_upstream_errors_total{service=\"payment\",version=\"stable\",kind=\"connect_refused\"}",
    )
    .unwrap_or(0.0);
    assert!(
        (1.0..=3.0).contains(&refused),
        "the dead endpoint was tried until ejected, not on every other request: {refused}"
    );
    shutdown(gateway).await;
}

#[tokio::test]
async fn a_concurrency_limit_sheds_with_503() {
    let stable = Upstream::start("stable");
    stable.set_delay(Duration::from_millis(400));
    let canary = Upstream::start("canary");
    let yaml = service(
        &stable.addr.to_string(),
        &canary.addr.to_string(),
        0,
        "  concurrency_limits:
    - { service: payment, version: stable, max: 1 }
",
    );
    let gateway = start_gateway(config(&yaml));
    let a = addr(&gateway);
    let slow = tokio::spawn(async move { get(a, "/pay", &[("x-user-id", "a")]).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let shed = get(a, "/pay", &[("x-user-id", "b")]).await;
    assert_eq!(shed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        shed.json()["error"]
            .as_str()
            .unwrap()
            .contains("concurrency limit")
    );
    assert_eq!(slow.await.unwrap().status, StatusCode::OK);
    let after = get(a, "/pay", &[("x-user-id", "c")]).await;
    assert_eq!(after.status, StatusCode::OK, "the permit was given back");
    shutdown(gateway).await;
}

#[tokio::test]
async fn health_checks_keep_a_dead_endpoint_out_of_rotation() {
    let stable = Upstream::start("stable");
    let dead = closed_port();
    let yaml = format!(
        "listeners:
  - bind: 127.0.0.1:0
services:
  - name: payment
    match: {{ path_prefix: /pay }}
    versions:
      stable: {{ endpoints: [\"{dead}\", \"{}\"] }}
traffic_control:
  health_checks:
    - {{ service: payment, path: /healthz, interval: 100ms, timeout: 200ms, healthy_threshold: 1, unhealthy_threshold: 1 }}
",
        stable.addr
    );
    let gateway = start_gateway(config(&yaml));
    let a = addr(&gateway);
    eventually("the live endpoint to be probed healthy", || async {
        (stable.received() > 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..20 {
        let r = get(a, "/pay", &[]).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "the dead endpoint gets no traffic"
        );
    }
    shutdown(gateway).await;
}

#[tokio::test]
async fn an_open_breaker_half_opens_after_open_for_and_closes_once_the_canary_recovers() {
    let stable = Upstream::start("stable");
    let canary = Upstream::start("canary");
    canary.set_status(500);
    let yaml = service(
        &stable.addr.to_string(),
        &canary.addr.to_string(),
        100,
        "  circuit_breakers:
    - service: payment
      version: canary
      window: { kind: count, size: 10 }
      minimum_calls: 4
      failure_rate_threshold: 0.5
      open_for: 1s
      half_open_calls: 2
      fallback: stable
",
    );
    let gateway = start_gateway(config(&yaml));
    let a = addr(&gateway);
    let state = |gateway: &graylane_proxy::Gateway, state: &str| {
        metric_value(
            &gateway.metrics().encode(),
            &format!(
                "graylane_circuit_state{{service=\"payment\",version=\"canary\",state=\"{state}\"}}"
            ),
        )
    };
    let transitions = |gateway: &graylane_proxy::Gateway| {
        metric_value(
            &gateway.metrics().encode(),
            "graylane_circuit_transitions_total{service=\"payment\",version=\"canary\"}",
        )
    };
    for _ in 0..8 {
        let r = get(a, "/pay", &[("x-user-id", "u")]).await;
        assert_eq!(r.status, StatusCode::OK, "the fallback answers");
    }
    assert_eq!(canary.received(), 4, "open after minimum_calls failures");
    assert_eq!(state(&gateway, "open"), Some(1.0));

    // Still failing when the breaker half-opens: both trial calls fail and it opens again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..4 {
        let r = get(a, "/pay", &[("x-user-id", "u")]).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.headers["x-graylane-fallback"], "stable");
    }
    assert_eq!(
        canary.received(),
        6,
        "the two trial calls reached the canary, nothing after them"
    );
    assert_eq!(
        state(&gateway, "open"),
        Some(1.0),
        "failed trials reopen it"
    );
    assert_eq!(
        transitions(&gateway),
        Some(3.0),
        "closed → open → half-open → open"
    );

    // Recovered: after open_for the trial calls pass and the breaker closes; from then on the
    // canary answers itself.
    canary.set_status(200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for i in 0..10 {
        let r = get(a, "/pay", &[("x-user-id", "u")]).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.version(), Some("canary"), "request {i}");
        assert!(
            !r.headers.contains_key("x-graylane-fallback"),
            "request {i} was served by the canary itself"
        );
    }
    assert_eq!(canary.received(), 16);
    assert_eq!(state(&gateway, "closed"), Some(1.0));
    assert_eq!(transitions(&gateway), Some(5.0), "… → half-open → closed");
    shutdown(gateway).await;
}

#[tokio::test]
async fn an_ejected_endpoint_gets_traffic_again_after_its_ejection_time() {
    let healthy = Upstream::start("b");
    let flaky = Upstream::start("a");
    flaky.set_status(500);
    let yaml = format!(
        "listeners:
  - bind: 127.0.0.1:0
services:
  - name: payment
    match: {{ path_prefix: /pay }}
    versions:
      stable: {{ endpoints: [\"{}\", \"{}\"] }}
traffic_control:
  outlier_detection:
    - {{ service: payment, consecutive_failures: 2, base_ejection: 1s, max_ejection: 10s, max_ejection_percent: 50 }}
",
        flaky.addr, healthy.addr
    );
    let gateway = start_gateway(config(&yaml));
    let a = addr(&gateway);
    let mut failed = 0;
    for _ in 0..20 {
        if get(a, "/pay", &[]).await.status != StatusCode::OK {
            failed += 1;
        }
    }
    assert_eq!(failed, 2, "two consecutive 5xx eject the endpoint");
    assert_eq!(flaky.received(), 2, "an ejected endpoint gets no traffic");

    // Ejection is for a time, not for ever: once it ends the endpoint is back in rotation.
    flaky.set_status(200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..10 {
        assert_eq!(get(a, "/pay", &[]).await.status, StatusCode::OK);
    }
    assert!(
        flaky.received() >= 2 + 4,
        "the endpoint shares the traffic again: {} requests",
        flaky.received()
    );
    shutdown(gateway).await;
}

#[tokio::test]
async fn retries_stay_within_the_retry_budget() {
    let stable = Upstream::start("stable");
    stable.set_status(503);
    stable.set_delay(Duration::from_millis(300));
    let yaml = format!(
        "listeners:
  - bind: 127.0.0.1:0
services:
  - name: payment
    match: {{ path_prefix: /pay }}
    versions:
      stable: {{ endpoints: [\"{}\"] }}
traffic_control:
  retries:
    - {{ service: payment, attempts: 2, retry_on: [503], budget: 0.01, min_concurrent: 1 }}
",
        stable.addr
    );
    let gateway = start_gateway(config(&yaml));
    let a = addr(&gateway);
    // Ten requests fail at once: without a budget each would be tried three times (30
    // attempts); with one retry in flight at a time, one request retries while the others
    // answer with the upstream's failure.
    let requests: Vec<_> = (0..10)
        .map(|i| {
            tokio::spawn(async move {
                let user = format!("u{i}");
                get(a, "/pay", &[("x-user-id", user.as_str())]).await.status
            })
        })
        .collect();
    for r in requests {
        assert_eq!(r.await.unwrap(), StatusCode::SERVICE_UNAVAILABLE);
    }
    let attempts = stable.received();
    assert!(
        (11..=13).contains(&attempts),
        "10 first attempts and the retries one slot allows, not 30: {attempts}"
    );
    shutdown(gateway).await;
}

#[tokio::test]
async fn a_version_with_no_healthy_endpoint_sends_its_traffic_to_the_fallback() {
    let stable = Upstream::start("stable");
    let dead = closed_port();
    let yaml = service(
        &stable.addr.to_string(),
        &format!("\"{dead}\""),
        100,
        "  health_checks:
    - { service: payment, version: canary, path: /healthz, interval: 100ms, timeout: 200ms, healthy_threshold: 1, unhealthy_threshold: 1 }
  circuit_breakers:
    - { service: payment, version: canary, fallback: stable }
",
    );
    let gateway = start_gateway(config(&yaml));
    let a = addr(&gateway);
    // Let the prober find the canary's only endpoint down.
    tokio::time::sleep(Duration::from_millis(400)).await;
    for i in 0..10 {
        let user = format!("u{i}");
        let r = get(a, "/pay", &[("x-user-id", user.as_str())]).await;
        assert_eq!(r.status, StatusCode::OK, "no failure reaches the client");
        assert_eq!(r.version(), Some("stable"));
        assert_eq!(r.headers["x-graylane-fallback"], "stable");
    }
    let metrics = gateway.metrics().encode();
    assert_eq!(
        metric_value(
            &metrics,
            "graylane_upstream_errors_total{service=\"payment\",version=\"canary\",kind=\"connect_refused\"}",
        ),
        None,
        "the unhealthy endpoint was never tried: the fallback came from the health check"
    );
    shutdown(gateway).await;
}
