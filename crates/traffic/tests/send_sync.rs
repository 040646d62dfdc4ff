//! Every type the proxy shares between worker threads, or moves into a response body, must be
//! `Send + Sync` (guards and tokens: `Send + 'static`, owning their limiter).

use graylane_traffic::breaker::{CallToken, CircuitBreaker};
use graylane_traffic::concurrency::{ConcurrencyLimit, Permit};
use graylane_traffic::health::HealthState;
use graylane_traffic::outlier::OutlierDetector;
use graylane_traffic::rate::{KeyedRateLimiter, RateLimiter};
use graylane_traffic::retry::{ActiveRequest, RetryBudget, RetryGuard};

fn shared<T: Send + Sync>() {}
fn movable<T: Send + 'static>() {}

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

#[test]
fn guards_outlive_the_handler() {
    movable::<Permit>();
    movable::<CallToken>();
    movable::<ActiveRequest>();
    movable::<RetryGuard>();
}
