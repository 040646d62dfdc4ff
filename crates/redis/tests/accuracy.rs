//! The accuracy of a global limit shared by two limiters, against a real redis-server. In a
//! binary of its own so that no other test competes with it for the CPU.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use graylane_redis::{Client, DecisionSource, GlobalLimiter, GlobalLimiterConfig};
use graylane_testing::redis::RedisServer;

/// Each gateway calls `check` in a loop, as a busy gateway does, except that when the limit is
/// far off (`retry_after` more than `SPIN`) it sleeps until `SPIN` before it: the calls in between
/// are answered by the over-limit cache, and the first one after it expires goes to Redis. A
/// thread that slept wakes on time on a busy machine, where one that spins all the time is
/// descheduled for milliseconds — and with `burst: 0` a slot claimed late is time lost.
const SPIN: Duration = Duration::from_millis(1);

struct Tally {
    allowed: u64,
    denied_by_redis: u64,
    denied_locally: u64,
    errors: u64,
}

/// One gateway: its own thread, runtime, connection and limiter, calling for `run_for` once both
/// are ready.
fn gateway(url: String, ready: Arc<Barrier>, run_for: Duration) -> Tally {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut config = GlobalLimiterConfig::new("rl:shared:", 100, Duration::from_secs(1));
    // Not what is tested here, and 20 ms is short for a debug build on a busy shared machine.
    config.timeout = Duration::from_secs(1);
    let limiter = runtime.block_on(async {
        let client = Client::open(&url).expect("client");
        GlobalLimiter::new(client, config).expect("limiter")
    });
    // Connected before the clock starts.
    let deadline = Instant::now() + Duration::from_secs(5);
    while runtime.block_on(limiter.check("warm-up")).source != DecisionSource::Redis {
        assert!(Instant::now() < deadline, "Redis answers within 5 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    ready.wait();

    let end = Instant::now() + run_for;
    let mut tally = Tally {
        allowed: 0,
        denied_by_redis: 0,
        denied_locally: 0,
        errors: 0,
    };
    while Instant::now() < end {
        let sent = Instant::now();
        let d = runtime.block_on(limiter.check("tenant-1"));
        match (d.allowed, d.source) {
            (true, DecisionSource::Redis) => tally.allowed += 1,
            (false, DecisionSource::Redis) => tally.denied_by_redis += 1,
            (false, DecisionSource::LocalCache) => tally.denied_locally += 1,
            _ => tally.errors += 1,
        }
        if !d.allowed && d.retry_after > SPIN {
            let wake = (sent + d.retry_after - SPIN).min(end);
            std::thread::sleep(wake.saturating_duration_since(Instant::now()));
        }
    }
    tally.errors += limiter.redis_errors();
    tally
}

#[test]
fn the_limit_is_shared_by_two_limiters() {
    let redis = RedisServer::start();
    let run_for = Duration::from_secs(3);
    let ready = Arc::new(Barrier::new(2));
    // Two limiters with their own connections: two gateway processes sharing one Redis.
    let gateways: Vec<_> = (0..2)
        .map(|_| {
            let (url, ready) = (redis.url(), Arc::clone(&ready));
            std::thread::spawn(move || gateway(url, ready, run_for))
        })
        .collect();
    let tallies: Vec<Tally> = gateways
        .into_iter()
        .map(|g| g.join().expect("gateway"))
        .collect();

    let allowed: u64 = tallies.iter().map(|t| t.allowed).sum();
    let report = format!(
        "allowed {allowed} in {run_for:?} (by gateway {:?}), denied by Redis {}, denied locally {}",
        tallies.iter().map(|t| t.allowed).collect::<Vec<_>>(),
        tallies.iter().map(|t| t.denied_by_redis).sum::<u64>(),
        tallies.iter().map(|t| t.denied_locally).sum::<u64>(),
    );
    // 100/s for 3 s, ±5 %; one gateway alone would not get more, two do not get twice as much.
    assert!((285..=315).contains(&allowed), "{report}");
    assert!(
        tallies.iter().all(|t| t.allowed >= 30),
        "both gateways got a share: {report}"
    );
    assert!(
        tallies.iter().all(|t| t.errors == 0),
        "no Redis errors: {report}"
    );
}
