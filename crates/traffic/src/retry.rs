//! Retries: Envoy's retry budget, and which requests may be retried at all.
//!
//! A fixed retry count multiplies load exactly when an upstream is struggling (three retries
//! turn an outage into four times the traffic). A *budget* instead caps retries in flight at a
//! fraction of the requests in flight — `max(min_concurrent, ratio × active)`, Envoy's
//! `retry_budget { budget_percent: 20%, min_retry_concurrency: 3 }` by default — so retries
//! smooth over a few failures but cannot snowball.
//!
//! ```
//! use graylane_traffic::retry::{RetryBudget, is_retryable};
//!
//! let budget = RetryBudget::default(); // 20% of active requests, at least 3
//! let request = budget.active_request(); // held for the whole request, retries included
//! // …the first attempt failed before any response byte was used…
//! if is_retryable(&http::Method::GET, true, false) {
//!     if let Some(_retry) = budget.try_retry() {
//!         // send the retry; `_retry` is released when it ends
//!     }
//! }
//! drop(request);
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::Method;

use crate::ConfigError;

/// Whether a failed attempt may be sent again.
///
/// * Never once part of a streamed request body has gone out: there is nothing to replay.
/// * Always when the request never reached the upstream (connect failure, refused stream): the
///   upstream cannot have acted on it, whatever the method.
/// * Otherwise only for idempotent methods (RFC 9110 §9.2.2): `GET`, `HEAD`, `OPTIONS`,
///   `TRACE`, `PUT`, `DELETE`. A `POST` that timed out may have charged the card.
pub fn is_retryable(method: &Method, reached_upstream: bool, body_already_streamed: bool) -> bool {
    if body_already_streamed {
        return false;
    }
    !reached_upstream
        || matches!(
            *method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        )
}

/// A retry budget shared by the requests to one upstream. Cloning it gives another handle to
/// the same budget.
///
/// Thread safety: two atomic counters. A retry is admitted with a compare-and-swap on the retry
/// counter, so concurrent retries never pass the cap computed from the active count they read;
/// that count may move while they decide, which shifts the cap by a request or two at most.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    ratio: f64,
    min_concurrent: u32,
    active: AtomicU64,
    retries: AtomicU64,
}

/// Counts one request as active while it lives (see [`RetryBudget::active_request`]).
#[derive(Debug)]
#[must_use = "the request stops counting as active when the guard is dropped"]
pub struct ActiveRequest {
    inner: Arc<Inner>,
}

/// One retry in flight; released when dropped.
#[derive(Debug)]
#[must_use = "the retry stops counting as in flight when the guard is dropped"]
pub struct RetryGuard {
    inner: Arc<Inner>,
}

impl Default for RetryBudget {
    /// Envoy's defaults: 20% of active requests, at least 3 concurrent retries.
    fn default() -> Self {
        RetryBudget::with(0.2, 3)
    }
}

impl RetryBudget {
    /// Retries in flight may reach `max(min_concurrent, ⌊ratio × active requests⌋)`.
    /// `ratio` must be in [0, 1]; a budget that could never admit a retry (`0` and `0`) is
    /// refused — leave retries off instead.
    pub fn new(ratio: f64, min_concurrent: u32) -> Result<RetryBudget, ConfigError> {
        if !(0.0..=1.0).contains(&ratio) {
            return Err(ConfigError::new(
                "ratio",
                format!(
                    "{ratio} must be a fraction in [0, 1], e.g. 0.2 for 20% of active requests"
                ),
            ));
        }
        if ratio == 0.0 && min_concurrent == 0 {
            return Err(ConfigError::new(
                "min_concurrent",
                "0 with a ratio of 0 — the budget would never allow a retry",
            ));
        }
        Ok(RetryBudget::with(ratio, min_concurrent))
    }

    fn with(ratio: f64, min_concurrent: u32) -> RetryBudget {
        RetryBudget {
            inner: Arc::new(Inner {
                ratio,
                min_concurrent,
                active: AtomicU64::new(0),
                retries: AtomicU64::new(0),
            }),
        }
    }

    /// Counts a request as active until the guard is dropped. Take it once per downstream
    /// request and hold it across that request's retries, so the budget grows with real load
    /// and not with the retries themselves.
    pub fn active_request(&self) -> ActiveRequest {
        // Relaxed: the counters guard no other memory.
        self.inner.active.fetch_add(1, Ordering::Relaxed);
        ActiveRequest {
            inner: Arc::clone(&self.inner),
        }
    }

    /// A retry slot, or `None` when the budget is spent.
    pub fn try_retry(&self) -> Option<RetryGuard> {
        let active = self.inner.active.load(Ordering::Relaxed);
        // `as` saturates; truncation matches Envoy's integer budget.
        let budget =
            ((self.inner.ratio * active as f64) as u64).max(u64::from(self.inner.min_concurrent));
        let retries = &self.inner.retries;
        let mut current = retries.load(Ordering::Relaxed);
        loop {
            if current >= budget {
                return None;
            }
            match retries.compare_exchange_weak(
                current,
                current + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(RetryGuard {
                        inner: Arc::clone(&self.inner),
                    });
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// Requests counted as active right now.
    pub fn active_requests(&self) -> u64 {
        self.inner.active.load(Ordering::Relaxed)
    }

    /// Retries in flight right now.
    pub fn active_retries(&self) -> u64 {
        self.inner.retries.load(Ordering::Relaxed)
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.inner.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for RetryGuard {
    fn drop(&mut self) {
        self.inner.retries.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimum_applies_at_low_load() {
        let budget = RetryBudget::default();
        let _r = budget.active_request();
        let held: Vec<_> = (0..3).map(|_| budget.try_retry().unwrap()).collect();
        assert!(budget.try_retry().is_none());
        assert_eq!(budget.active_retries(), 3);
        drop(held);
        assert!(budget.try_retry().is_some());
    }

    #[test]
    fn ratio_applies_at_high_load() {
        let budget = RetryBudget::new(0.2, 3).unwrap();
        let active: Vec<_> = (0..100).map(|_| budget.active_request()).collect();
        let held: Vec<_> = std::iter::from_fn(|| budget.try_retry())
            .take(1000)
            .collect();
        assert_eq!(held.len(), 20);
        assert_eq!(budget.active_requests(), 100);
        drop(active);
        drop(held);
        assert_eq!((budget.active_requests(), budget.active_retries()), (0, 0));
    }

    #[test]
    fn ratio_only_budget() {
        let budget = RetryBudget::new(0.5, 0).unwrap();
        assert!(budget.try_retry().is_none());
        let _a = (budget.active_request(), budget.active_request());
        let _r = budget.try_retry().unwrap();
        assert!(budget.try_retry().is_none());
    }

    #[test]
    fn invalid_budgets_are_refused() {
        assert_eq!(RetryBudget::new(1.5, 3).unwrap_err().field(), "ratio");
        assert_eq!(RetryBudget::new(f64::NAN, 3).unwrap_err().field(), "ratio");
        assert_eq!(RetryBudget::new(-0.1, 3).unwrap_err().field(), "ratio");
        assert_eq!(
            RetryBudget::new(0.0, 0).unwrap_err().field(),
            "min_concurrent"
        );
    }

    #[test]
    fn retryable_requests() {
        for m in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::TRACE,
            Method::PUT,
            Method::DELETE,
        ] {
            assert!(is_retryable(&m, true, false), "{m}");
            assert!(!is_retryable(&m, true, true), "{m}");
        }
        for m in [Method::POST, Method::PATCH, Method::CONNECT] {
            assert!(!is_retryable(&m, true, false), "{m}");
            assert!(is_retryable(&m, false, false), "{m}");
            assert!(!is_retryable(&m, false, true), "{m}");
        }
        let custom = Method::from_bytes(b"PURGE").unwrap();
        assert!(!is_retryable(&custom, true, false));
    }
}
