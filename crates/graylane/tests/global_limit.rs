//! A rate limit shared by two `graylane serve` processes through one real `redis-server`
//! (installed by scripts/deps): together they let through what one limit allows, not twice
//! that.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use http::StatusCode;

const CONFIG: &str = r#"
listeners:
  - bind: 127.0.0.1:{port}
admin:
  bind: 127.0.0.1:{admin}
services:
  - name: payment
    match: { path_prefix: /pay }
    versions:
      stable: { endpoints: ["{stable}"] }
traffic_control:
  rate_limits:
    - service: payment
      key: "header:X-User-Id"
      rate: 10/s
      burst: 10
      backend: redis
      redis_url: "redis://127.0.0.1:{redis}"
      timeout: 100ms
"#;

#[tokio::test]
async fn two_gateway_processes_share_one_limit_through_redis() {
    let redis = RedisServer::start();
    let redis_port = redis.port;
    let extra = [("redis", redis_port.to_string())];
    let a = Served::start("global-limit-a", CONFIG, &extra, &[]).await;
    let b = Served::start("global-limit-b", CONFIG, &extra, &[]).await;
    // The clients connect in the background: wait until a check is answered by Redis (the
    // error count does not grow), on both gateways.
    for g in [&a, &b] {
        eventually("a check answered by Redis", || async {
            let errors = || async {
                let metrics = get(g.admin, "/metrics", &[]).await.text();
                metric_value(&metrics, "graylane_ratelimit_redis_errors_total")
            };
            let before = errors().await;
            let r = get(g.proxy, "/pay", &[("x-user-id", "warm-up")]).await;
            let after = errors().await;
            (r.status == StatusCode::OK && before.is_some() && after == before).then_some(())
        })
        .await;
    }
    let mut allowed = 0;
    for i in 0..40 {
        let proxy: SocketAddr = if i % 2 == 0 { a.proxy } else { b.proxy };
        let r = get(proxy, "/pay", &[("x-user-id", "u-1")]).await;
        match r.status {
            StatusCode::OK => allowed += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("unexpected {other}"),
        }
    }
    // The shared bucket of 10 plus what refills while 40 requests are sent (well under a
    // second on loopback); two separate limits would have let 20 through.
    assert!(
        (10..=15).contains(&allowed),
        "{allowed} of 40 allowed by two processes sharing a 10/s limit"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    a.stop().await;
    b.stop().await;
}
