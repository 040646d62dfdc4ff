//! A Redis segment through the real binary and a real `redis-server` (installed by
//! scripts/deps): its members are kept in the data dir, so a gateway restarted while Redis is
//! down still forces them to the canary, and says the segment is stale.

mod common;

use std::time::Duration;

use common::*;
use http::{Method, StatusCode};

const OPERATOR: &str = "segments-operator-secret";

const CONFIG: &str = r#"
listeners:
  - bind: 127.0.0.1:{port}
admin:
  bind: 127.0.0.1:{admin}
  tokens:
    - { name: otto, env: TEST_TOKEN_OPERATOR, role: operator }
segments:
  beta: { source: redis, url: "redis://127.0.0.1:{redis}", key: "graylane:beta", refresh: 100ms, max_staleness: 1h }
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
      steps:
        - weight: 0
          pause: manual
"#;

async fn version_of(proxy: std::net::SocketAddr, user: &str) -> Option<String> {
    let r = try_get(proxy, "/api/payment/x", &[("X-User-Id", user)])
        .await
        .ok()?;
    (r.status == StatusCode::OK).then(|| r.version().unwrap_or("").to_string())
}

async fn stale(admin: std::net::SocketAddr) -> Option<f64> {
    let metrics = try_get(admin, "/metrics", &[]).await.ok()?.text();
    metrics
        .lines()
        .find(|l| l.starts_with("graylane_segment_stale{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_restarted_while_redis_is_down_still_serves_the_segment_and_says_it_is_stale() {
    let redis = RedisServer::start();
    let redis_port = redis.port;
    let mut served = Served::start(
        "redis-segment-restart",
        CONFIG,
        &[("redis", redis_port.to_string())],
        &[("TEST_TOKEN_OPERATOR", OPERATOR)],
    )
    .await;
    eventually("the segment to be read from Redis", || async {
        let r = served
            .api(
                Method::POST,
                "/api/v1/segments/beta/members",
                OPERATOR,
                r#"{"add": ["u-1"]}"#,
            )
            .await;
        (r.status == StatusCode::OK).then_some(())
    })
    .await;
    eventually("u-1 to be forced to the canary", || async {
        (version_of(served.proxy, "u-1").await.as_deref() == Some("canary")).then_some(())
    })
    .await;
    assert_eq!(stale(served.admin).await, Some(0.0));
    assert_eq!(
        version_of(served.proxy, "u-2").await.as_deref(),
        Some("stable")
    );

    // Stop the gateway, lose Redis, start the gateway again on the same data dir.
    served.process.signal("TERM");
    let status = served.process.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", served.process.logs());
    drop(redis);
    served.process = spawn_with_env(
        &served.dir,
        &[
            "serve",
            "--config",
            served.file.to_str().unwrap(),
            "--workers",
            "1",
            "--drain-timeout",
            "2s",
        ],
        &[("TEST_TOKEN_OPERATOR", OPERATOR)],
    );
    let listening = bound(&mut served.process, true);
    served.proxy = listening.listeners[0];
    served.admin = listening.admin.unwrap();
    let proxy = served.proxy;
    let version = eventually("the restarted gateway to answer", || async {
        version_of(proxy, "u-1").await
    })
    .await;
    assert_eq!(
        version,
        "canary",
        "the members read before the outage are served\n{}",
        served.process.logs()
    );
    assert_eq!(
        version_of(served.proxy, "u-2").await.as_deref(),
        Some("stable")
    );
    let stale = eventually("the stale metric", || async { stale(served.admin).await }).await;
    assert_eq!(stale, 1.0, "never read since the start: stale");
    served.stop().await;
}
