//! Redis segments against a real redis-server.

use std::time::{Duration, Instant};

use graylane_redis::{Client, RedisSegment};
use graylane_testing::redis::RedisServer;
use graylane_testing::wait::time_until;

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
    let took = time_until(Duration::from_secs(5), || segment.contains("alice"))
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
    time_until(Duration::from_secs(2), || {
        segment.contains("a") && segment.contains("b")
    })
    .await
    .expect("added members visible");
    assert_eq!(segment.remove(["a", "zz"]).await.expect("SREM"), 1);
    time_until(Duration::from_secs(2), || !segment.contains("a"))
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
    time_until(Duration::from_secs(5), || {
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
    time_until(Duration::from_secs(5), || segment.contains("alice"))
        .await
        .expect("alice");

    redis.kill();
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(segment.contains("alice"), "last known members still served");
    assert!(!segment.is_stale());

    time_until(Duration::from_secs(3), || segment.is_stale())
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
    time_until(Duration::from_secs(5), || {
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
    time_until(Duration::from_secs(3), || segment.is_stale())
        .await
        .expect("stale once max_staleness passes without a read");

    let redis = RedisServer::start_on(port);
    sadd(&redis, "seg:late", &["alice"]).await;
    time_until(Duration::from_secs(5), || {
        !segment.is_stale() && segment.contains("alice")
    })
    .await
    .expect("fills once Redis is up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_never_read_is_stale_from_the_start() {
    let redis = RedisServer::start();
    let url = redis.url();
    drop(redis);
    // max_staleness is a minute: staleness must not wait for it when nothing was ever read.
    let segment = RedisSegment::start(
        Client::open(&url).expect("a client does not need the server yet"),
        "seg:never",
        Duration::from_millis(50),
        Duration::from_secs(60),
    );
    assert!(segment.is_stale(), "stale before any read");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(segment.is_stale(), "still stale while Redis is down");
}

fn cache_path(test: &str) -> std::path::PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("segment-cache-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir.join("segments").join("vip.members")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_during_a_redis_outage_serves_the_members_read_last() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    let cache = cache_path("restart");
    let start = |url: &str| {
        RedisSegment::start_cached(
            Client::open(url).expect("client"),
            "seg:vip",
            Duration::from_millis(50),
            Duration::from_secs(60),
            cache.clone(),
        )
    };
    let url = redis.url();
    let segment = start(&url);
    sadd(&redis, "seg:vip", &["alice", "bob"]).await;
    time_until(Duration::from_secs(5), || {
        segment.contains("alice") && segment.contains("bob")
    })
    .await
    .expect("alice and bob read");
    time_until(Duration::from_secs(5), || {
        std::fs::read_to_string(&cache).is_ok_and(|t| t.contains("bob"))
    })
    .await
    .expect("the members are kept on disk");

    // The gateway stops, Redis goes down, the gateway starts again.
    drop(segment);
    redis.kill();
    let restarted = start(&url);
    assert!(
        restarted.contains("alice") && restarted.contains("bob"),
        "the members read last are served at once: {restarted:?}"
    );
    assert!(!restarted.contains("carol"));
    assert!(restarted.is_stale(), "but they are not known to be current");

    // Redis back, with other members: they replace the cached ones.
    let redis = RedisServer::start_on(port);
    sadd(&redis, "seg:vip", &["carol"]).await;
    time_until(Duration::from_secs(5), || {
        !restarted.is_stale() && restarted.contains("carol") && !restarted.contains("alice")
    })
    .await
    .expect("fresh members once Redis answers");
    let _ = std::fs::remove_dir_all(cache.parent().unwrap().parent().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_members_older_than_max_staleness_or_of_another_set_are_not_served() {
    let redis = RedisServer::start();
    let url = redis.url();
    drop(redis);
    let cache = cache_path("old");
    std::fs::create_dir_all(cache.parent().unwrap()).unwrap();
    let old = "# graylane segment cache v1 key=\"seg:vip\" read_at_ms=1000\nalice\n";
    std::fs::write(&cache, old).unwrap();
    let segment = RedisSegment::start_cached(
        Client::open(&url).expect("client"),
        "seg:vip",
        Duration::from_millis(50),
        Duration::from_secs(60),
        cache.clone(),
    );
    assert!(!segment.contains("alice"), "read in 1970: too old");
    drop(segment);

    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let other =
        format!("# graylane segment cache v1 key=\"seg:other\" read_at_ms={now_ms}\nalice\n");
    std::fs::write(&cache, other).unwrap();
    let segment = RedisSegment::start_cached(
        Client::open(&url).expect("client"),
        "seg:vip",
        Duration::from_millis(50),
        Duration::from_secs(60),
        cache.clone(),
    );
    assert!(!segment.contains("alice"), "another set's members");
    let _ = std::fs::remove_dir_all(cache.parent().unwrap().parent().unwrap());
}
