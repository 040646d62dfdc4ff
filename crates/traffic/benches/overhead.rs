//! Per-request overhead of traffic control on the allowed path. Goal: ≤ 250 ns for a keyed
//! rate-limit check + breaker `try_call`/`record` + concurrency acquire/release together.
//!
//! `cargo bench -p graylane-traffic -j1 -- --warm-up-time 1 --measurement-time 3`

use std::cell::Cell;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use graylane_traffic::breaker::{BreakerConfig, CircuitBreaker, Outcome, Window};
use graylane_traffic::concurrency::ConcurrencyLimit;
use graylane_traffic::outlier::{OutlierConfig, OutlierDetector};
use graylane_traffic::rate::{KeyedRateLimiter, RateLimiter};
use graylane_traffic::retry::RetryBudget;

const OK: Outcome = Outcome {
    failed: false,
    duration: Duration::from_millis(12),
};

/// 1,000 distinct user keys, cycled, so the keyed limiter works on a realistic table rather
/// than one hot entry.
fn keys() -> Vec<Vec<u8>> {
    (0..1000)
        .map(|i| format!("user-{i:06}").into_bytes())
        .collect()
}

/// A limiter generous enough that every benchmarked request is allowed: 1 per µs per key, and
/// the clock advances 1 µs per request.
fn keyed() -> KeyedRateLimiter {
    KeyedRateLimiter::new(1_000_000, Duration::from_secs(1), 1000, 100_000).unwrap()
}

fn breaker(window: Window) -> CircuitBreaker {
    CircuitBreaker::new(BreakerConfig {
        window,
        slow_call_duration: Some(Duration::from_secs(1)),
        ..BreakerConfig::default()
    })
    .unwrap()
}

/// A fake clock: 1 µs per request.
fn tick(now: &Cell<u64>) -> u64 {
    let t = now.get() + 1_000;
    now.set(t);
    t
}

fn overhead(c: &mut Criterion) {
    let keys = keys();
    let now = Cell::new(0);

    for (name, window) in [
        ("request_path_count_window", Window::Count(100)),
        (
            "request_path_time_window",
            Window::Time(Duration::from_secs(60)),
        ),
    ] {
        let limiter = keyed();
        let breaker = breaker(window);
        let limit = ConcurrencyLimit::new(10_000).unwrap();
        let mut i = 0;
        c.bench_function(name, |b| {
            b.iter(|| {
                let t = tick(&now);
                i = (i + 1) % keys.len();
                let decision = limiter.check(black_box(&keys[i]), t);
                assert!(decision.allowed);
                let permit = limit.try_acquire().expect("below the limit");
                let token = breaker.try_call(t).expect("closed");
                token.record(t, black_box(OK));
                drop(black_box(permit));
            })
        });
    }

    let limiter = keyed();
    let mut i = 0;
    c.bench_function("keyed_rate_limit_check", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            limiter.check(black_box(&keys[i]), tick(&now))
        })
    });

    let limiter = RateLimiter::new(1_000_000, Duration::from_secs(1), 1000).unwrap();
    c.bench_function("rate_limit_check", |b| b.iter(|| limiter.check(tick(&now))));

    for (name, window) in [
        ("breaker_call_count_window", Window::Count(100)),
        (
            "breaker_call_time_window",
            Window::Time(Duration::from_secs(60)),
        ),
    ] {
        let breaker = breaker(window);
        c.bench_function(name, |b| {
            b.iter(|| {
                let t = tick(&now);
                breaker
                    .try_call(t)
                    .expect("closed")
                    .record(t, black_box(OK));
            })
        });
    }

    // Two threads on one breaker (the proxy's case: every worker calls the same service
    // version). Reported per call, so it compares with the single-thread figure above; on a
    // machine with fewer than two idle cores it measures the scheduler more than the breaker.
    let breaker = breaker(Window::Count(100));
    c.bench_function("breaker_call_count_window_2_threads", |b| {
        b.iter_custom(|iters| {
            let start = std::time::Instant::now();
            std::thread::scope(|s| {
                for thread in 0..2u64 {
                    let breaker = &breaker;
                    s.spawn(move || {
                        for i in (thread..iters).step_by(2) {
                            let t = i * 1_000;
                            breaker
                                .try_call(t)
                                .expect("closed")
                                .record(t, black_box(OK));
                        }
                    });
                }
            });
            start.elapsed()
        })
    });

    let limit = ConcurrencyLimit::new(10_000).unwrap();
    c.bench_function("concurrency_acquire_release", |b| {
        b.iter(|| drop(black_box(limit.try_acquire())))
    });

    let budget = RetryBudget::default();
    c.bench_function("retry_budget_active_request", |b| {
        b.iter(|| drop(black_box(budget.active_request())))
    });

    let detector = OutlierDetector::new(8, OutlierConfig::default()).unwrap();
    let mut e = 0;
    c.bench_function("outlier_record_success_and_check", |b| {
        b.iter(|| {
            let t = tick(&now);
            e = (e + 1) % 8;
            detector.record(e, t, true);
            detector.is_ejected(black_box(e), t)
        })
    });
}

criterion_group!(benches, overhead);
criterion_main!(benches);
