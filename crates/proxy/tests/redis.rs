//! The Redis integrations through real gateways and a real `redis-server` (installed by
//! scripts/deps): a rate limit shared by two gateways, a segment whose members come from a
//! Redis set, and Redis dying under both — requests keep being served.

mod common;

use std::process::Command;

use common::*;
use graylane_testing::redis::RedisServer;
use http::StatusCode;

/// `redis-cli ARGS` against `redis`: its answer, trimmed.
fn cli(redis: &RedisServer, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &redis.port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli (Debian package redis-tools, with redis-server)");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn gateway_config(redis: &str, stable: &Upstream, canary: &Upstream) -> String {
    format!(
        "listeners:
  - bind: 127.0.0.1:0
segments:
  beta: {{ source: redis, url: \"{redis}\", key: graylane:beta, refresh: 100ms, max_staleness: 1s }}
services:
  - name: payment
    match: {{ path_prefix: /pay }}
    versions:
      stable: {{ endpoints: [\"{}\"] }}
      canary: {{ endpoints: [\"{}\"] }}
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      force:
        - segment: {{ name: beta, key: \"header:X-User-Id\" }}
      bucket_by: \"header:X-User-Id\"
      steps: [{{ weight: 0, pause: manual }}]
traffic_control:
  rate_limits:
    - {{ service: payment, rate: 10/s, burst: 10, backend: redis, redis_url: \"{redis}\", timeout: 50ms, on_redis_error: allow }}
",
        stable.addr, canary.addr
    )
}

#[tokio::test]
async fn two_gateways_share_one_limit_through_redis() {
    let redis = RedisServer::start();
    let (stable, canary) = (Upstream::start("stable"), Upstream::start("canary"));
    let yaml = gateway_config(&redis.url(), &stable, &canary);
    let (a, b) = (start_gateway(config(&yaml)), start_gateway(config(&yaml)));
    let mut allowed = 0;
    for i in 0..40 {
        let target = if i % 2 == 0 { addr(&a) } else { addr(&b) };
        let r = get(target, "/pay", &[("x-user-id", "u-1")]).await;
        match r.status {
            StatusCode::OK => allowed += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert!(r.headers.contains_key("retry-after"));
            }
            other => panic!("unexpected {other}"),
        }
    }
    // 40 requests in well under a second: the shared bucket (10) plus what refills meanwhile;
    // two separate limits would have let 20 through.
    assert!(
        (10..=14).contains(&allowed),
        "{allowed} allowed by two gateways sharing a 10/s limit"
    );
    shutdown(a).await;
    shutdown(b).await;
}

#[tokio::test]
async fn a_redis_segment_follows_the_set_and_survives_redis_dying() {
    let redis = RedisServer::start();
    let (stable, canary) = (Upstream::start("stable"), Upstream::start("canary"));
    let gateway = start_gateway(config(&gateway_config(&redis.url(), &stable, &canary)));
    let a = addr(&gateway);
    let version = |user: &'static str| async move {
        get(a, "/pay", &[("x-user-id", user)])
            .await
            .version()
            .map(str::to_string)
    };
    assert_eq!(version("u-7").await.as_deref(), Some("stable"));
    assert_eq!(cli(&redis, &["SADD", "graylane:beta", "u-7"]), "1");
    eventually("the member to be mirrored", || async {
        (version("u-7").await.as_deref() == Some("canary")).then_some(())
    })
    .await;

    // Redis dies: the mirror keeps serving until max_staleness, then the segment is empty;
    // the rate limit lets requests through (on_redis_error: allow). No request fails.
    drop(redis);
    assert_eq!(
        version("u-7").await.as_deref(),
        Some("canary"),
        "the last members still count"
    );
    eventually("the segment to go stale and empty", || async {
        (version("u-7").await.as_deref() == Some("stable")).then_some(())
    })
    .await;
    for _ in 0..20 {
        let r = get(a, "/pay", &[("x-user-id", "u-8")]).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "Redis being down fails no request"
        );
    }
    let metrics = gateway.metrics().encode();
    assert!(
        metric_value(&metrics, "graylane_ratelimit_redis_errors_total").unwrap_or(0.0) > 0.0,
        "{metrics}"
    );
    assert!(
        metrics.contains("graylane_segment_stale{segment="),
        "{metrics}"
    );
    shutdown(gateway).await;
}

#[tokio::test]
async fn segment_members_are_edited_through_the_gateway() {
    let redis = RedisServer::start();
    let (stable, canary) = (Upstream::start("stable"), Upstream::start("canary"));
    let gateway = start_gateway(config(&gateway_config(&redis.url(), &stable, &canary)));
    let a = addr(&gateway);
    let added = gateway
        .edit_segment("beta", &["u-9".to_string()], &[])
        .await
        .unwrap();
    assert_eq!(added, (1, 0));
    assert_eq!(cli(&redis, &["SISMEMBER", "graylane:beta", "u-9"]), "1");
    eventually("the added member to route to the canary", || async {
        let r = get(a, "/pay", &[("x-user-id", "u-9")]).await;
        (r.version() == Some("canary")).then_some(())
    })
    .await;
    let removed = gateway
        .edit_segment("beta", &[], &["u-9".to_string()])
        .await
        .unwrap();
    assert_eq!(removed, (0, 1));
    let err = gateway.edit_segment("nope", &[], &[]).await.unwrap_err();
    assert!(err.to_string().contains("segments: beta"), "{err}");
    shutdown(gateway).await;
}

/// The `RateLimit-*` headers a client sees for `burst` quick requests and one more, allowed
/// responses included.
async fn limit_headers_seen(backend: &str, stable: &Upstream) -> Vec<(u16, Vec<String>)> {
    let yaml = format!(
        "listeners:
  - bind: 127.0.0.1:0
services:
  - name: payment
    match: {{ path_prefix: /pay }}
    versions:
      stable: {{ endpoints: [\"{}\"] }}
traffic_control:
  rate_limits:
    - {{ service: payment, key: \"header:X-User-Id\", rate: 1/m, burst: 3, headers: always{backend} }}
",
        stable.addr
    );
    let gateway = start_gateway(config(&yaml));
    let mut seen = Vec::new();
    for _ in 0..4 {
        let r = get(addr(&gateway), "/pay", &[("x-user-id", "u-7")]).await;
        let header = |name: &str| {
            r.headers
                .get(name)
                .map_or("-".to_string(), |v| v.to_str().unwrap().to_string())
        };
        seen.push((
            r.status.as_u16(),
            vec![
                header("ratelimit-limit"),
                header("ratelimit-remaining"),
                header("ratelimit-policy"),
            ],
        ));
    }
    shutdown(gateway).await;
    seen
}

#[tokio::test]
async fn ratelimit_headers_mean_the_same_for_a_local_and_a_redis_limit() {
    let redis = RedisServer::start();
    let stable = Upstream::start("stable");
    let local = limit_headers_seen("", &stable).await;
    let shared = limit_headers_seen(
        &format!(", backend: redis, redis_url: \"{}\"", redis.url()),
        &stable,
    )
    .await;
    let row = |status: u16, remaining: &str| {
        (
            status,
            vec![
                "3".to_string(),
                remaining.to_string(),
                "3;w=180".to_string(),
            ],
        )
    };
    let want = vec![row(200, "2"), row(200, "1"), row(200, "0"), row(429, "0")];
    assert_eq!(local, want, "local limit");
    assert_eq!(shared, want, "Redis limit");
}
