//! Every type the proxy shares between worker threads must be `Send + Sync`. The guards a
//! request carries into its response body (a concurrency permit, the retry budget's guards)
//! must own their limiter: they outlive the handle they came from, on another thread, and still
//! give their slot back when dropped. The breaker's `CallToken` borrows its breaker: it lives
//! within one attempt only.

use graylane_traffic::breaker::CircuitBreaker;
use graylane_traffic::concurrency::ConcurrencyLimit;
use graylane_traffic::health::HealthState;
use graylane_traffic::outlier::OutlierDetector;
use graylane_traffic::rate::{KeyedRateLimiter, RateLimiter};
use graylane_traffic::retry::RetryBudget;

fn shared<T: Send + Sync>() {}

#[test]
fn shared_between_threads() {
    shared::<RateLimiter>();
    shared::<KeyedRateLimiter>();
    shared::<ConcurrencyLimit>();
    shared::<CircuitBreaker>();
    shared::<RetryBudget>();
    shared::<OutlierDetector>();
    shared::<HealthState>();
}

/// Drops `guard` on another thread, as a response body finished by another task would.
fn drop_elsewhere<T: Send + 'static>(guard: T) {
    std::thread::spawn(move || drop(guard)).join().unwrap();
}

#[test]
fn a_permit_outlives_its_limit_handle_and_still_frees_its_slot() {
    let limit = ConcurrencyLimit::new(1).unwrap();
    let other_handle = limit.clone();
    let permit = limit.try_acquire().unwrap();
    drop(limit);
    assert!(
        other_handle.try_acquire().is_none(),
        "the one slot is taken"
    );
    drop_elsewhere(permit);
    assert_eq!(other_handle.in_flight(), 0);
    assert!(other_handle.try_acquire().is_some());
}

#[test]
fn retry_guards_outlive_their_budget_handle_and_still_count_down() {
    let budget = RetryBudget::new(0.0, 1).unwrap();
    let other_handle = budget.clone();
    let active = budget.active_request();
    let retry = budget.try_retry().unwrap();
    drop(budget);
    assert_eq!(
        (
            other_handle.active_requests(),
            other_handle.active_retries()
        ),
        (1, 1)
    );
    assert!(
        other_handle.try_retry().is_none(),
        "the one retry is in flight"
    );
    drop_elsewhere(retry);
    drop_elsewhere(active);
    assert_eq!(
        (
            other_handle.active_requests(),
            other_handle.active_retries()
        ),
        (0, 0)
    );
    assert!(other_handle.try_retry().is_some());
}
