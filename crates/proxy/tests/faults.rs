//! Upstream faults (refused, slow, killed) and graceful shutdown.

mod common;

use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;

const FAULTS: &str = r#"
listeners:
  - bind: 127.0.0.1:0
services:
  - name: payment
    match: { path_prefix: /api/payment }
    versions:
      stable: { endpoints: ["{refused}"] }
  - name: search
    match: { path_prefix: /api/search }
    timeouts: { request: 300ms }
    versions:
      stable: { endpoints: ["{slow}"] }
      canary: { endpoints: ["{healthy}"] }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      force:
        - header: { name: X-Release-Phase, equals: canary }
      steps:
        - weight: 0
  - name: orders
    match: { path_prefix: /api/orders }
    versions:
      stable: { endpoints: ["{healthy}"] }
"#;

#[track_caller]
fn assert_upstream_failure(r: &Reply, status: StatusCode, service: &str, version: &str) {
    assert_eq!(r.status, status, "body {:?}", r.body);
    assert_eq!(r.headers.get("content-type").unwrap(), "application/json");
    assert_eq!(r.version(), Some(version), "the failing version is named");
    let body = r.json();
    assert_eq!(body["service"], service, "{body}");
    assert_eq!(body["version"], version, "{body}");
    assert!(!body["error"].as_str().unwrap_or("").is_empty(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_slow_upstreams_get_502_and_504_and_others_keep_answering() {
    let slow = Upstream::start("slow");
    slow.set_delay(Duration::from_secs(10));
    let healthy = Upstream::start("healthy");
    let yaml = fill(
        FAULTS,
        &[
            ("refused", closed_port().to_string()),
            ("slow", slow.addr.to_string()),
            ("healthy", healthy.addr.to_string()),
        ],
    );
    let gateway = start_gateway(config(&yaml));
    let gw = addr(&gateway);

    for _ in 0..3 {
        let r = get(gw, "/api/payment/orders", &[]).await;
        assert_upstream_failure(&r, StatusCode::BAD_GATEWAY, "payment", "stable");
        assert_eq!(r.json()["kind"], "connect_refused");
    }

    let started = Instant::now();
    let r = get(gw, "/api/search?q=x", &[]).await;
    let took = started.elapsed();
    assert_upstream_failure(&r, StatusCode::GATEWAY_TIMEOUT, "search", "stable");
    assert_eq!(r.json()["kind"], "timeout");
    // The upstream would take 10 s; the 300 ms service timeout must cut it short (the bound
    // is generous for a loaded machine, but far below the upstream's delay).
    assert!(took < Duration::from_secs(6), "504 took {took:?}");
    assert_eq!(slow.received(), 1, "the slow upstream did get the request");

    // The same service's other version, and other services, still answer at once.
    let r = get(gw, "/api/search?q=x", &[("X-Release-Phase", "canary")]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.version(), Some("canary"));
    assert_eq!(r.upstream_version(), "healthy");
    let r = get(gw, "/api/orders/1", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.version(), Some("stable"));
    assert_eq!(r.upstream_version(), "healthy");

    // Concurrent slow requests do not hold up the fast ones on the same workers.
    let mut slow_requests = Vec::new();
    for _ in 0..4 {
        slow_requests.push(tokio::spawn(async move {
            get(gw, "/api/search", &[]).await.status
        }));
    }
    for i in 0..10 {
        let r = get(gw, &format!("/api/orders/{i}"), &[]).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    for t in slow_requests {
        assert_eq!(t.await.unwrap(), StatusCode::GATEWAY_TIMEOUT);
    }
    shutdown(gateway).await;
}

const ONE_SERVICE: &str = r#"
listeners:
  - bind: 127.0.0.1:0
services:
  - name: payment
    match: { path_prefix: /api/payment }
    versions:
      stable: { endpoints: ["{stable}"] }
"#;

fn one_service(upstream: &Upstream, drain: Duration) -> graylane_proxy::Gateway {
    let yaml = fill(ONE_SERVICE, &[("stable", upstream.addr.to_string())]);
    start_gateway_with(config(&yaml), drain)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_goes_down_gets_502_and_is_used_again_when_it_returns() {
    let upstream = Upstream::start("stable");
    let upstream_addr = upstream.addr;
    let gateway = one_service(&upstream, Duration::from_secs(10));
    let gw = addr(&gateway);

    // Warm the gateway's keep-alive pool on both workers.
    let mut conns = Vec::new();
    for _ in 0..4 {
        let mut c = Http1::connect(gw).await.unwrap();
        let r = c.get("/api/payment/orders", &[]).await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        conns.push(c);
    }

    upstream.kill();
    for c in &mut conns {
        let r = c.get("/api/payment/orders", &[]).await.unwrap();
        assert_upstream_failure(&r, StatusCode::BAD_GATEWAY, "payment", "stable");
        let kind = r.json()["kind"].as_str().unwrap().to_string();
        assert!(
            kind == "connect_refused" || kind == "protocol",
            "kind {kind}"
        );
    }

    let _back = Upstream::start_on(upstream_addr, "stable");
    eventually("the restarted upstream to be used", || async {
        try_get(gw, "/api/payment/orders", &[])
            .await
            .ok()
            .filter(|r| r.status == StatusCode::OK)
    })
    .await;
    let mut conn = Http1::connect(gw).await.unwrap();
    // And it stays in use: no stale pooled connection fails a later request.
    for c in conns.iter_mut().chain([&mut conn]) {
        let r = c.get("/api/payment/orders", &[]).await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        assert_eq!(r.upstream_version(), "stable");
    }
    shutdown(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_request_in_flight_finish() {
    let upstream = Upstream::start("stable");
    let gateway = one_service(&upstream, Duration::from_secs(30));
    let gw = addr(&gateway);

    // An idle keep-alive connection must not hold the shutdown up for the drain timeout.
    let mut idle = Http1::connect(gw).await.unwrap();
    assert_eq!(
        idle.get("/api/payment/a", &[]).await.unwrap().status,
        StatusCode::OK
    );

    let in_flight =
        tokio::spawn(
            async move { try_get(gw, "/api/payment/slow", &[(DELAY_HEADER, "500")]).await },
        );
    eventually("the slow request to reach the upstream", || {
        let n = upstream.received();
        async move { (n >= 2).then_some(()) }
    })
    .await;

    let started = Instant::now();
    let stopping = tokio::task::spawn_blocking(move || gateway.shutdown());
    let reply = in_flight
        .await
        .unwrap()
        .expect("the request in flight gets an answer");
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.version(), Some("stable"));
    assert_eq!(reply.json()["path"], "/api/payment/slow");

    tokio::time::timeout(Duration::from_secs(20), stopping)
        .await
        .expect("shutdown finishes well before the 30 s drain timeout")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(20));

    // Stopped: new connections are refused and the idle one was closed.
    assert!(
        tokio::net::TcpStream::connect(gw).await.is_err(),
        "the listener is closed after shutdown"
    );
    assert!(idle.get("/api/payment/a", &[]).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_timeout_bounds_shutdown() {
    let upstream = Upstream::start("stable");
    let gateway = one_service(&upstream, Duration::from_millis(300));
    let gw = addr(&gateway);

    let in_flight =
        tokio::spawn(
            async move { try_get(gw, "/api/payment/stuck", &[(DELAY_HEADER, "30000")]).await },
        );
    eventually("the stuck request to reach the upstream", || {
        let n = upstream.received();
        async move { (n >= 1).then_some(()) }
    })
    .await;

    let stopping = tokio::task::spawn_blocking(move || gateway.shutdown());
    tokio::time::timeout(Duration::from_secs(8), stopping)
        .await
        .expect("shutdown gives up on a 30 s request after the 300 ms drain timeout")
        .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(8), in_flight)
        .await
        .expect("the cut-off client is not left hanging")
        .unwrap();
    assert!(
        outcome
            .as_ref()
            .map_or(true, |r| r.status != StatusCode::OK),
        "{outcome:?}"
    );
}
