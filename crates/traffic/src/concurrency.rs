//! A cap on requests in flight, per service version — Envoy's `max_requests` circuit breaker
//! threshold, resilience4j's semaphore bulkhead. When it is full the proxy sheds the request
//! with `503` at once instead of queueing it behind a version that is already saturated.
//!
//! ```
//! use graylane_traffic::concurrency::ConcurrencyLimit;
//!
//! let limit = ConcurrencyLimit::new(2)?;
//! let a = limit.try_acquire().expect("below the limit");
//! let _b = limit.try_acquire().expect("below the limit");
//! assert!(limit.try_acquire().is_none()); // full: shed with 503
//! drop(a); // the response finished
//! assert!(limit.try_acquire().is_some());
//! # Ok::<(), graylane_traffic::ConfigError>(())
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::ConfigError;

/// A limit on concurrent requests. Cloning it gives another handle to the same limit.
///
/// Thread safety: one `AtomicU32` counts permits; acquiring is a compare-and-swap that never
/// lets the count pass `max` (an add-then-undo would briefly overshoot and make a racing
/// request fail spuriously).
#[derive(Debug, Clone)]
pub struct ConcurrencyLimit {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    max: u32,
    in_flight: AtomicU32,
}

/// One request's place under the limit; released when dropped. It owns a handle to the limit
/// (no borrow), so the proxy can keep it inside a response body until the last byte is sent.
#[derive(Debug)]
#[must_use = "the permit is released as soon as it is dropped"]
pub struct Permit {
    inner: Arc<Inner>,
}

impl ConcurrencyLimit {
    /// At most `max` requests at once; `0` is refused (it would shed everything).
    pub fn new(max: u32) -> Result<ConcurrencyLimit, ConfigError> {
        if max == 0 {
            return Err(ConfigError::new(
                "max",
                "0 concurrent requests — a limit must allow at least one",
            ));
        }
        Ok(ConcurrencyLimit {
            inner: Arc::new(Inner {
                max,
                in_flight: AtomicU32::new(0),
            }),
        })
    }

    /// A permit, or `None` when `max` requests are already in flight.
    pub fn try_acquire(&self) -> Option<Permit> {
        let counter = &self.inner.in_flight;
        // Relaxed: the counter guards no other memory; it only has to be exact.
        let mut current = counter.load(Ordering::Relaxed);
        loop {
            if current >= self.inner.max {
                return None;
            }
            match counter.compare_exchange_weak(
                current,
                current + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(Permit {
                        inner: Arc::clone(&self.inner),
                    });
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// Requests holding a permit right now (for a gauge).
    pub fn in_flight(&self) -> u32 {
        self.inner.in_flight.load(Ordering::Relaxed)
    }

    /// The configured limit.
    pub fn max(&self) -> u32 {
        self.inner.max
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.inner.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_exceeds_max_across_threads() {
        let limit = ConcurrencyLimit::new(3).unwrap();
        let peak = AtomicU32::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..20_000 {
                        if let Some(p) = limit.try_acquire() {
                            peak.fetch_max(limit.in_flight(), Ordering::Relaxed);
                            drop(p);
                        }
                    }
                });
            }
        });
        assert!(peak.load(Ordering::Relaxed) <= 3);
        assert_eq!(limit.in_flight(), 0);
    }

    #[test]
    fn clones_share_the_limit() {
        let a = ConcurrencyLimit::new(1).unwrap();
        let b = a.clone();
        let p = a.try_acquire().unwrap();
        assert!(b.try_acquire().is_none());
        assert_eq!((b.in_flight(), b.max()), (1, 1));
        drop(p);
        assert!(b.try_acquire().is_some());
    }

    #[test]
    fn zero_is_refused() {
        let err = ConcurrencyLimit::new(0).unwrap_err();
        assert_eq!(err.field(), "max");
    }
}
