//! Global rate limits against a real redis-server.

use std::time::{Duration, Instant};

use graylane_redis::{Client, DecisionSource, Error, GlobalLimiter, GlobalLimiterConfig, OnError};
use graylane_testing::redis::RedisServer;

/// What each check may take beyond `timeout` on a busy shared machine.
const SCHEDULING_SLACK: Duration = Duration::from_millis(60);

/// For tests about something else than timeouts: 20 ms is short for a debug build on a busy
/// shared machine.
const GENEROUS: Duration = Duration::from_secs(1);

fn limiter(url: &str, config: GlobalLimiterConfig) -> GlobalLimiter {
    GlobalLimiter::new(Client::open(url).expect("client"), config).expect("limiter")
}

async fn script_calls(redis: &RedisServer) -> u64 {
    redis
        .info_number("commandstats", "cmdstat_evalsha", "calls")
        .await
        + redis
            .info_number("commandstats", "cmdstat_eval", "calls")
            .await
}

/// Checks `key` until one is answered by Redis, at most `limit`.
async fn until_redis_answers(limiter: &GlobalLimiter, key: &str, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if limiter.check(key).await.source == DecisionSource::Redis {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_over_the_limit_are_denied_without_a_round_trip() {
    let redis = RedisServer::start();
    let mut config = GlobalLimiterConfig::new("rl:cache:", 5, Duration::from_secs(10));
    config.burst = 1;
    config.timeout = GENEROUS;
    let l = limiter(&redis.url(), config);
    assert!(until_redis_answers(&l, "warm-up", Duration::from_secs(5)).await);

    let before = script_calls(&redis).await;
    // burst 1: two at once (T = 2 s), then denied.
    let first = l.check("k").await;
    let second = l.check("k").await;
    let third = l.check("k").await;
    assert!(first.allowed && second.allowed && !third.allowed);
    assert_eq!((first.limit, first.remaining, second.remaining), (5, 1, 0));
    assert_eq!(third.source, DecisionSource::Redis);
    assert!(
        third.retry_after > Duration::from_millis(1500)
            && third.retry_after <= Duration::from_secs(2),
        "{third:?}"
    );
    assert!(third.reset_after > third.retry_after, "{third:?}");

    for _ in 0..1000 {
        let d = l.check("k").await;
        assert_eq!((d.allowed, d.source), (false, DecisionSource::LocalCache));
        assert!(d.retry_after <= third.retry_after);
    }
    // Another key is not affected by the cache.
    assert!(l.check("other").await.allowed);
    let calls = script_calls(&redis).await - before;
    assert_eq!(
        calls, 4,
        "three checks of `k` and one of `other` reached Redis"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_zero_never_lets_two_through_at_once_even_after_idling() {
    let redis = RedisServer::start();
    // T = 100 ms.
    let mut config = GlobalLimiterConfig::new("rl:idle:", 10, Duration::from_secs(1));
    config.timeout = GENEROUS;
    let l = limiter(&redis.url(), config);
    assert!(until_redis_answers(&l, "warm-up", Duration::from_secs(5)).await);
    for round in 0..2 {
        let first = l.check("k").await;
        let second = l.check("k").await;
        assert!(
            first.allowed && !second.allowed,
            "round {round}: {first:?} {second:?}"
        );
        assert_eq!(first.remaining, 0);
        assert!(
            second.retry_after <= Duration::from_millis(100),
            "{second:?}"
        );
        // Idle for several intervals: no credit builds up beyond `burst`.
        tokio::time::sleep(Duration::from_millis(350)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_script_is_loaded_again_after_a_flush() {
    let redis = RedisServer::start();
    let mut config = GlobalLimiterConfig::new("rl:flush:", 100, Duration::from_secs(1));
    config.timeout = GENEROUS;
    let l = limiter(&redis.url(), config);
    assert!(until_redis_answers(&l, "a", Duration::from_secs(5)).await);
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut redis.conn().await)
        .await
        .expect("SCRIPT FLUSH");
    let evals = redis
        .info_number("commandstats", "cmdstat_eval", "calls")
        .await;
    let errors = l.redis_errors();
    let d = l.check("b").await;
    assert_eq!((d.allowed, d.source), (true, DecisionSource::Redis));
    assert_eq!(
        redis
            .info_number("commandstats", "cmdstat_eval", "calls")
            .await,
        evals + 1,
        "NOSCRIPT → one EVAL"
    );
    assert_eq!(l.redis_errors(), errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_answers_per_on_error_within_the_timeout_and_recovers() {
    let mut redis = RedisServer::start();
    let client = Client::open(&redis.url()).expect("client");
    let mut config = GlobalLimiterConfig::new("rl:down:", 1000, Duration::from_secs(1));
    config.burst = 100;
    let allow = GlobalLimiter::new(client.clone(), config.clone()).expect("allow");
    let deny = GlobalLimiter::new(
        client,
        GlobalLimiterConfig {
            on_error: OnError::Deny,
            ..config.clone()
        },
    )
    .expect("deny");
    assert!(until_redis_answers(&allow, "k", Duration::from_secs(5)).await);
    assert!(until_redis_answers(&deny, "k", Duration::from_secs(5)).await);

    // The warm-up may have timed out while connecting on a busy machine.
    let errors_before = (allow.redis_errors(), deny.redis_errors());
    redis.kill();
    for i in 0..50 {
        let start = Instant::now();
        let d = allow.check("k").await;
        let took = start.elapsed();
        assert!(d.allowed, "check {i}: {d:?}");
        assert_eq!(d.source, DecisionSource::RedisError, "check {i}");
        assert!(
            took <= config.timeout + SCHEDULING_SLACK,
            "check {i} took {took:?}"
        );
        let start = Instant::now();
        let d = deny.check("k").await;
        assert!(!d.allowed, "check {i}: {d:?}");
        assert_eq!(d.source, DecisionSource::RedisError);
        assert!(start.elapsed() <= config.timeout + SCHEDULING_SLACK);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(allow.redis_errors() - errors_before.0, 50);
    assert_eq!(deny.redis_errors() - errors_before.1, 50);

    redis.restart();
    assert!(
        until_redis_answers(&allow, "k", Duration::from_secs(5)).await,
        "back within 5 s of the restart"
    );
    assert!(allow.check("k").await.allowed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_times_out_and_the_connection_is_replaced() {
    let redis = RedisServer::start();
    let config = GlobalLimiterConfig::new("rl:hung:", 1000, Duration::from_secs(1));
    let l = limiter(&redis.url(), config.clone());
    assert!(until_redis_answers(&l, "k", Duration::from_secs(5)).await);
    let connections = redis
        .info_number("stats", "total_connections_received", "")
        .await;

    redis.pause();
    // Longer than the client's command_timeout (1 s): the silent connection gets replaced.
    let start = Instant::now();
    let errors = l.redis_errors();
    let mut checks = 0u64;
    while start.elapsed() < Duration::from_millis(1500) {
        let t = Instant::now();
        let d = l.check("k").await;
        assert_eq!((d.allowed, d.source), (true, DecisionSource::RedisError));
        assert!(
            t.elapsed() <= config.timeout + SCHEDULING_SLACK,
            "{:?}",
            t.elapsed()
        );
        checks += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(l.redis_errors() - errors, checks);
    redis.resume();

    assert!(
        until_redis_answers(&l, "k", Duration::from_secs(5)).await,
        "answers again after SIGCONT"
    );
    let after = redis
        .info_number("stats", "total_connections_received", "")
        .await;
    // The replacement, plus this test's own INFO connection.
    assert!(after >= connections + 2, "{connections} → {after}");
}

#[tokio::test]
async fn bad_configuration_names_the_field() {
    let client = Client::open("redis://127.0.0.1:1").expect("a client never connects eagerly");
    let err = GlobalLimiter::new(
        client.clone(),
        GlobalLimiterConfig::new("p:", 0, Duration::from_secs(1)),
    )
    .expect_err("requests: 0");
    assert!(
        matches!(
            err,
            Error::InvalidConfig {
                field: "requests",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("`requests`"), "{err}");

    let err = GlobalLimiter::new(
        client.clone(),
        GlobalLimiterConfig::new("p:", 10, Duration::ZERO),
    )
    .expect_err("per: 0");
    assert!(
        matches!(err, Error::InvalidConfig { field: "per", .. }),
        "{err:?}"
    );

    let mut zero_timeout = GlobalLimiterConfig::new("p:", 10, Duration::from_secs(1));
    zero_timeout.timeout = Duration::ZERO;
    let err = GlobalLimiter::new(client.clone(), zero_timeout).expect_err("timeout: 0");
    assert!(
        matches!(
            err,
            Error::InvalidConfig {
                field: "timeout",
                ..
            }
        ),
        "{err:?}"
    );

    let err = GlobalLimiter::new(
        client,
        GlobalLimiterConfig::new("p:", 2_000_000, Duration::from_secs(1)),
    )
    .expect_err("faster than one per µs");
    assert!(
        matches!(
            err,
            Error::InvalidConfig {
                field: "requests",
                ..
            }
        ),
        "{err:?}"
    );
}
