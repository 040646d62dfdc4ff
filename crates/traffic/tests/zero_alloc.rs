//! The request path must not allocate: a counting global allocator (per thread, so tests can
//! run in parallel) checks each building block after a warm-up.

#![allow(
    unsafe_code,
    reason = "a global allocator is an unsafe trait; this one only counts and delegates to the system's"
)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;
use std::time::Duration;

use graylane_traffic::breaker::{BreakerConfig, CircuitBreaker, Outcome, Window};
use graylane_traffic::concurrency::ConcurrencyLimit;
use graylane_traffic::health::HealthState;
use graylane_traffic::outlier::{OutlierConfig, OutlierDetector};
use graylane_traffic::rate::{KeyedRateLimiter, RateLimiter};
use graylane_traffic::retry::RetryBudget;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    // `try_with`: the allocator may run while a thread's locals are being torn down.
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: every call is forwarded unchanged to the system allocator; counting has no effect on
// the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` once to warm up, then asserts 1,000 more runs allocate nothing.
fn assert_no_alloc(what: &str, mut f: impl FnMut(u64)) {
    f(0);
    let before = ALLOCATIONS.with(Cell::get);
    for i in 1..=1000 {
        f(i);
    }
    let allocations = ALLOCATIONS.with(Cell::get) - before;
    assert_eq!(allocations, 0, "{what} allocated {allocations} times");
}

const OK: Outcome = Outcome {
    failed: false,
    duration: Duration::from_millis(3),
};
const FAIL: Outcome = Outcome {
    failed: true,
    duration: Duration::from_millis(3),
};

/// The allocator really counts (otherwise every other test here would pass vacuously).
#[test]
fn the_counter_counts() {
    let before = ALLOCATIONS.with(Cell::get);
    black_box(vec![1u8; 10]);
    assert!(ALLOCATIONS.with(Cell::get) > before);
}

/// Everything the proxy does for one allowed request, together.
#[test]
fn request_path() {
    let keys: Vec<Vec<u8>> = (0..256).map(|i| format!("user-{i}").into_bytes()).collect();
    let limiter = KeyedRateLimiter::new(1000, Duration::from_secs(1), 100, 10_000).unwrap();
    for k in &keys {
        limiter.check(k, 0);
    }
    let breaker = CircuitBreaker::new(BreakerConfig::default()).unwrap();
    let limit = ConcurrencyLimit::new(100).unwrap();
    let budget = RetryBudget::default();
    assert_no_alloc("the request path", |i| {
        let now = i * 1_000_000;
        let key = &keys[i as usize % keys.len()];
        assert!(limiter.check(key, now).allowed);
        let _active = budget.active_request();
        let permit = limit.try_acquire().unwrap();
        let token = breaker.try_call(now).unwrap();
        token.record(now, OK);
        drop(black_box(permit));
    });
}

#[test]
fn rate_limiters() {
    let limiter = RateLimiter::new(10, Duration::from_secs(1), 5).unwrap();
    // Mostly refused: the refusal path must be as cheap as the admission path.
    assert_no_alloc("RateLimiter::check", |i| {
        black_box(limiter.check(i * 1_000_000));
    });
    let keyed = KeyedRateLimiter::new(10, Duration::from_secs(1), 5, 1000).unwrap();
    keyed.check(b"k", 0);
    assert_no_alloc("KeyedRateLimiter::check", |i| {
        black_box(keyed.check(b"k", i * 1_000_000));
    });
}

/// New keys at a full table: after the shards have grown to their cap once, evicting and
/// inserting reuses their memory.
#[test]
fn keyed_limiter_churning_new_keys() {
    let keyed = KeyedRateLimiter::new(10, Duration::from_secs(1), 5, 6400).unwrap();
    let mut next = 0u64;
    let mut fresh = |now| {
        next += 1;
        assert!(keyed.check(&next.to_be_bytes(), now).allowed);
    };
    for i in 0..200_000 {
        fresh(i);
    }
    assert_no_alloc("KeyedRateLimiter::check with new keys", |i| {
        fresh(200_000 + i)
    });
    assert!(keyed.keys() <= 6400);
}

#[test]
fn breaker_in_every_state() {
    for window in [Window::Count(20), Window::Time(Duration::from_secs(10))] {
        let breaker = CircuitBreaker::new(BreakerConfig {
            window,
            minimum_calls: 10,
            slow_call_duration: Some(Duration::from_millis(1)),
            open_for: Duration::from_millis(1),
            half_open_calls: 2,
            ..BreakerConfig::default()
        })
        .unwrap();
        // 50 failing calls, then 50 succeeding ones, 100 µs apart: the breaker keeps going
        // through closed, open and half-open.
        assert_no_alloc("the breaker", |i| {
            let now = i * 100_000;
            let outcome = if (i / 50) % 2 == 0 { FAIL } else { OK };
            match breaker.try_call(now) {
                Ok(token) => token.record(now, outcome),
                Err(open) => {
                    black_box(open);
                }
            }
            black_box(breaker.snapshot(now));
        });
        assert!(breaker.transitions() > 3, "{window:?}: {breaker:?}");
    }
}

#[test]
fn endpoints() {
    let detector = OutlierDetector::new(4, OutlierConfig::default()).unwrap();
    let health = HealthState::new(4, 2, 2).unwrap();
    assert_no_alloc("outlier detection and health", |i| {
        let endpoint = i as usize % 4;
        let now = i * 1_000_000_000;
        detector.record(endpoint, now, i % 7 != 0);
        black_box(detector.is_ejected(endpoint, now));
        black_box(detector.healthy_count(now));
        health.report(endpoint, i % 3 != 0);
        black_box(health.is_healthy(endpoint));
    });
}

#[test]
fn retry_budget() {
    let budget = RetryBudget::default();
    assert_no_alloc("the retry budget", |_| {
        let _active = budget.active_request();
        black_box(budget.try_retry());
    });
}
