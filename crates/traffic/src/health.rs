//! The state behind active health checks: per endpoint, whether it is healthy, after how many
//! consecutive probe results it flips. The probing itself (timers, connections, HTTP) lives in
//! the proxy; it calls [`HealthState::report`] with each result, and the request path reads
//! [`HealthState::is_healthy`] with a single atomic load.
//!
//! Semantics follow Envoy: an endpoint starts *unhealthy* until its first check passes, and that
//! first success marks it healthy at once (the threshold only applies to later recoveries) —
//! so a new endpoint gets traffic after one good probe, not `healthy_threshold` of them. After
//! that a healthy endpoint needs `unhealthy_threshold` consecutive failures to go unhealthy and
//! an unhealthy one `healthy_threshold` consecutive successes to come back. The proxy should
//! run a first round of probes before serving, or — like Envoy's panic threshold — use all
//! endpoints when none is healthy.
//!
//! ```
//! use graylane_traffic::health::HealthState;
//!
//! let health = HealthState::new(2, 2, 3)?; // 2 endpoints; 2 successes up, 3 failures down
//! assert!(!health.is_healthy(0)); // not checked yet
//! assert_eq!(health.report(0, true), Some(true)); // first success: healthy at once
//! assert_eq!(health.report(0, false), None);
//! assert_eq!(health.report(0, false), None);
//! assert_eq!(health.report(0, false), Some(false)); // third failure in a row
//! assert_eq!(health.healthy_count(), 0);
//! # Ok::<(), graylane_traffic::ConfigError>(())
//! ```

use std::sync::atomic::{AtomicU64, Ordering};

use crate::ConfigError;

/// Health of a fixed set of endpoints, indexed `0..endpoints`.
///
/// Thread safety: one `AtomicU64` per endpoint holds its health, whether it was ever checked,
/// and the current streak; reports update it with compare-and-swap, reads are plain loads.
#[derive(Debug)]
pub struct HealthState {
    healthy_threshold: u32,
    unhealthy_threshold: u32,
    endpoints: Box<[AtomicU64]>,
}

const HEALTHY: u64 = 1 << 63;
const CHECKED: u64 = 1 << 62;
/// Low bits: consecutive results pointing the other way from the current health.
const STREAK: u64 = u32::MAX as u64;

impl HealthState {
    /// `endpoints` endpoints, all unchecked (so not healthy); both thresholds at least 1.
    pub fn new(
        endpoints: usize,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) -> Result<HealthState, ConfigError> {
        if endpoints == 0 {
            return Err(ConfigError::new(
                "endpoints",
                "0 — health state needs at least one endpoint",
            ));
        }
        for (field, value) in [
            ("healthy_threshold", healthy_threshold),
            ("unhealthy_threshold", unhealthy_threshold),
        ] {
            if value == 0 {
                return Err(ConfigError::new(
                    field,
                    "0 — at least one check result must decide",
                ));
            }
        }
        Ok(HealthState {
            healthy_threshold,
            unhealthy_threshold,
            endpoints: (0..endpoints).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// Records one probe result for `endpoint`. Returns `Some(healthy)` when this result flipped
    /// the endpoint's health, `None` when it did not (or the index is out of range).
    pub fn report(&self, endpoint: usize, ok: bool) -> Option<bool> {
        let slot = self.endpoints.get(endpoint)?;
        // Relaxed: each word is self-contained; CAS orders the updates to it.
        let mut current = slot.load(Ordering::Relaxed);
        loop {
            let next = self.next(current, ok);
            match slot.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    let was = current & HEALTHY != 0;
                    let is = next & HEALTHY != 0;
                    return (was != is).then_some(is);
                }
                Err(actual) => current = actual,
            }
        }
    }

    fn next(&self, current: u64, ok: bool) -> u64 {
        let healthy = current & HEALTHY != 0;
        if current & CHECKED == 0 {
            // Envoy: the first success marks a new endpoint healthy straight away.
            return CHECKED | if ok { HEALTHY } else { 0 };
        }
        if ok == healthy {
            // A result agreeing with the current health breaks any streak against it.
            return current & !STREAK;
        }
        let streak = (current & STREAK) + 1;
        let threshold = if healthy {
            self.unhealthy_threshold
        } else {
            self.healthy_threshold
        };
        if streak >= u64::from(threshold) {
            CHECKED | if ok { HEALTHY } else { 0 }
        } else {
            (current & !STREAK) | streak
        }
    }

    /// Whether `endpoint` is healthy; `false` for an unchecked endpoint or an index out of range.
    pub fn is_healthy(&self, endpoint: usize) -> bool {
        self.endpoints
            .get(endpoint)
            .is_some_and(|s| s.load(Ordering::Relaxed) & HEALTHY != 0)
    }

    /// Endpoints healthy right now.
    pub fn healthy_count(&self) -> usize {
        self.endpoints
            .iter()
            .filter(|s| s.load(Ordering::Relaxed) & HEALTHY != 0)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_failure_keeps_a_new_endpoint_out() {
        let h = HealthState::new(1, 3, 2).unwrap();
        assert_eq!(h.report(0, false), None);
        assert!(!h.is_healthy(0));
        // Checked and unhealthy now: recovery needs the full healthy threshold.
        assert_eq!(h.report(0, true), None);
        assert_eq!(h.report(0, true), None);
        assert_eq!(h.report(0, true), Some(true));
    }

    #[test]
    fn streaks_must_be_consecutive() {
        let h = HealthState::new(1, 2, 2).unwrap();
        h.report(0, true);
        for _ in 0..10 {
            assert_eq!(h.report(0, false), None);
            assert_eq!(h.report(0, true), None);
        }
        assert!(h.is_healthy(0));
        assert_eq!(h.report(0, false), None);
        assert_eq!(h.report(0, false), Some(false));
        assert_eq!(h.report(0, true), None);
        assert_eq!(h.report(0, false), None);
        assert_eq!(h.report(0, true), None);
        assert_eq!(h.report(0, true), Some(true));
    }

    #[test]
    fn thresholds_of_one_flip_immediately() {
        let h = HealthState::new(3, 1, 1).unwrap();
        h.report(1, true);
        assert_eq!(h.report(1, false), Some(false));
        assert_eq!(h.report(1, true), Some(true));
        assert_eq!(h.healthy_count(), 1);
    }

    #[test]
    fn out_of_range_is_ignored() {
        let h = HealthState::new(1, 1, 1).unwrap();
        assert_eq!(h.report(5, true), None);
        assert!(!h.is_healthy(5));
    }

    #[test]
    fn invalid_settings_are_refused() {
        assert_eq!(HealthState::new(0, 1, 1).unwrap_err().field(), "endpoints");
        assert_eq!(
            HealthState::new(1, 0, 1).unwrap_err().field(),
            "healthy_threshold"
        );
        assert_eq!(
            HealthState::new(1, 1, 0).unwrap_err().field(),
            "unhealthy_threshold"
        );
    }
}
