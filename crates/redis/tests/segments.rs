//! Redis segments against a real redis-server.

mod support;

use std::time::{Duration, Instant};

use graylane_redis::{Client, RedisSegment};
use support::{RedisServer, eventually};

async fn sadd(redis: &RedisServer, key: &str, members: &[&str]) {
    let _: u64 = redis::cmd("SADD")
        .arg(key)
        .arg(members)
        .query_async(&mut redis.conn().await)
        .await
        .expect("SADD");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_picks_up_members_added_elsewhere() {
    let redis = RedisServer::start();
    let refresh = Duration::from_millis(200);
    let segment = RedisSegment::start(
        Client::open(&redis.url()).expect("client"),
        "seg:beta",
        refresh,
        Duration::from_secs(60),
    );
    sadd(&redis, "seg:beta", &["alice"]).await;
    let took = eventually(Duration::from_secs(5), || segment.contains("alice"))
        .await
        .expect("alice shows up");
    assert!(
        took <= refresh + Duration::from_millis(250),
        "within one refresh interval, took {took:?}"
    );
    assert!(!segment.contains("bob"));
    assert!(!segment.is_stale());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_and_remove_are_seen_at_once_here() {
    let redis = RedisServer::start();
    let segment = RedisSegment::start(
        Client::open(&redis.url()).expect("client"),
        "seg:admin",
        Duration::from_secs(30),
        Duration::from_secs(60),
    );
    assert_eq!(segment.add(["a", "b"]).await.expect("SADD"), 2);
    assert_eq!(segment.add(["b"]).await.expect("SADD"), 0);
    assert_eq!(segment.add(Vec::<String>::new()).await.expect("nothing"), 0);
    // The refresh interval is 30 s: only the immediate refresh can show them.
    eventually(Duration::from_secs(2), || {
        segment.contains("a") && segment.contains("b")
    })
    .await
    .expect("added members visible");
    assert_eq!(segment.remove(["a", "zz"]).await.expect("SREM"), 1);
    eventually(Duration::from_secs(2), || !segment.contains("a"))
        .await
        .expect("removed member gone");
    assert!(segment.contains("b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_sets_are_read_in_pages() {
    let redis = RedisServer::start();
    let members: Vec<String> = (0..5000).map(|i| format!("user-{i}")).collect();
    for chunk in members.chunks(1000) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        sadd(&redis, "seg:big", &refs).await;
    }
    let segment = RedisSegment::start(
        Client::open(&redis.url()).expect("client"),
        "seg:big",
        Duration::from_millis(100),
        Duration::from_secs(60),
    );
    eventually(Duration::from_secs(5), || {
        members.iter().all(|m| segment.contains(m))
    })
    .await
    .expect("all 5000 members");
    assert!(
        redis
            .info_number("commandstats", "cmdstat_sscan", "calls")
            .await
            >= 5,
        "SSCAN pages"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_serves_members_until_stale_then_empty_then_recovers() {
    let mut redis = RedisServer::start();
    let refresh = Duration::from_millis(100);
    let max_staleness = Duration::from_secs(1);
    let segment = RedisSegment::start(
        Client::open(&redis.url()).expect("client"),
        "seg:vip",
        refresh,
        max_staleness,
    );
    sadd(&redis, "seg:vip", &["alice"]).await;
    eventually(Duration::from_secs(5), || segment.contains("alice"))
        .await
        .expect("alice");

    redis.kill();
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(segment.contains("alice"), "last known members still served");
    assert!(!segment.is_stale());

    eventually(Duration::from_secs(3), || segment.is_stale())
        .await
        .expect("stale");
    let stale_after = killed.elapsed();
    // The deadline is max_staleness after the last successful read, at most one refresh (plus
    // the read itself) before the kill.
    assert!(
        stale_after >= max_staleness - refresh - Duration::from_millis(100)
            && stale_after <= max_staleness + Duration::from_millis(400),
        "stale after {stale_after:?}"
    );
    assert!(!segment.contains("alice"), "a stale segment is empty");

    // Back on the same port, empty (nothing is saved): the members are written again.
    redis.restart();
    sadd(&redis, "seg:vip", &["alice"]).await;
    eventually(Duration::from_secs(5), || {
        !segment.is_stale() && segment.contains("alice")
    })
    .await
    .expect("recovers by itself");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_started_while_redis_is_down_is_empty_then_fills() {
    let redis = RedisServer::start();
    let port = redis.port;
    let url = redis.url();
    drop(redis);
    let segment = RedisSegment::start(
        Client::open(&url).expect("a client does not need the server yet"),
        "seg:late",
        Duration::from_millis(100),
        Duration::from_millis(300),
    );
    assert!(!segment.contains("alice"));
    eventually(Duration::from_secs(3), || segment.is_stale())
        .await
        .expect("stale once max_staleness passes without a read");

    let redis = RedisServer::start_on(port);
    sadd(&redis, "seg:late", &["alice"]).await;
    eventually(Duration::from_secs(5), || {
        !segment.is_stale() && segment.contains("alice")
    })
    .await
    .expect("fills once Redis is up");
}
