//! Rate-limit accuracy on a simulated clock, and exactness under concurrency.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use graylane_traffic::rate::{KeyedRateLimiter, RateLimiter};

const MS: u64 = 1_000_000;

/// 100/s with a burst of 20 over 10 s of a steady 1000 req/s: 100 × 10 + 20 allowed, ±5%.
#[test]
fn steady_overload_admits_rate_times_time_plus_burst() {
    let limiter = RateLimiter::new(100, Duration::from_secs(1), 20).unwrap();
    let allowed = (0..10_000u64)
        .filter(|i| limiter.check(i * MS).allowed)
        .count();
    let expected = 100.0 * 10.0 + 20.0;
    let error = (allowed as f64 - expected).abs() / expected;
    assert!(error <= 0.05, "allowed {allowed}, expected {expected}");
    // GCRA is exact here: the burst at t=0, then one every 10 ms from 10 ms to 9990 ms.
    assert_eq!(allowed, 1019);
}

#[test]
fn keyed_limits_are_independent_and_accurate() {
    let limiter = KeyedRateLimiter::new(100, Duration::from_secs(1), 20, 10_000).unwrap();
    let users: Vec<String> = (0..50).map(|u| format!("user-{u}")).collect();
    let mut allowed = vec![0u32; users.len()];
    for i in 0..10_000u64 {
        for (u, user) in users.iter().enumerate() {
            if limiter.check(user.as_bytes(), i * MS).allowed {
                allowed[u] += 1;
            }
        }
    }
    assert!(allowed.iter().all(|&a| a == 1019), "{allowed:?}");
    assert_eq!(limiter.keys(), 50);
}

#[test]
fn concurrent_checks_never_over_admit() {
    let limiter = RateLimiter::new(10, Duration::from_secs(1), 100).unwrap();
    let keyed = KeyedRateLimiter::new(10, Duration::from_secs(1), 100, 1000).unwrap();
    let allowed = AtomicU32::new(0);
    let keyed_allowed = AtomicU32::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..10_000 {
                    if limiter.check(0).allowed {
                        allowed.fetch_add(1, Ordering::Relaxed);
                    }
                    if keyed.check(b"203.0.113.7", 0).allowed {
                        keyed_allowed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(allowed.load(Ordering::Relaxed), 100);
    assert_eq!(keyed_allowed.load(Ordering::Relaxed), 100);
}

#[test]
fn headers_for_a_refused_request() {
    let limiter = RateLimiter::new(6000, Duration::from_secs(60), 5).unwrap();
    for _ in 0..5 {
        assert!(limiter.check(0).allowed);
    }
    let d = limiter.check(3 * MS);
    assert!(!d.allowed);
    assert_eq!((d.limit, d.remaining), (5, 0));
    assert_eq!(d.retry_after, Some(Duration::from_millis(7)));
    assert_eq!(d.retry_after_secs(), Some(1));
    assert_eq!(d.reset_after, Duration::from_millis(47));
    assert_eq!(d.reset_secs(), 1);
}
