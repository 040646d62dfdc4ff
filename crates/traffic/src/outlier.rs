//! Outlier ejection (passive health checking), after Envoy's `consecutive_5xx` detector: an
//! endpoint whose requests fail `consecutive_failures` times in a row is taken out of the load
//! balancer for a while, then put back automatically.
//!
//! * Ejection time is `base_ejection × times ejected`, capped at `max_ejection`, so an
//!   endpoint that keeps failing stays out longer each time. Envoy lowers that multiplier by
//!   one for every detection interval the endpoint stays in; with no timer here the same decay
//!   is applied lazily, one step per `base_ejection` spent back in the pool.
//! * At most `max_ejection_percent` of the endpoints are ejected at once, and never all of
//!   them: a version is never emptied by its own detector. Like Envoy, one endpoint may still be
//!   ejected when the percentage rounds down to zero — as long as another one stays.
//! * Results that arrive for an endpoint while it is ejected (requests sent before the
//!   ejection) are ignored, and its failure count starts from zero when it returns.
//!
//! ```
//! use std::time::Duration;
//! use graylane_traffic::outlier::{OutlierConfig, OutlierDetector};
//!
//! let detector = OutlierDetector::new(3, OutlierConfig::default())?; // 5 failures, 30s, 50%
//! let now = 0;
//! for _ in 0..5 {
//!     detector.record(1, now, false);
//! }
//! assert!(detector.is_ejected(1, now));
//! assert_eq!(detector.healthy_count(now), 2);
//! let later = Duration::from_secs(30).as_nanos() as u64;
//! assert!(!detector.is_ejected(1, later));
//! # Ok::<(), graylane_traffic::ConfigError>(())
//! ```

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::ConfigError;

/// Outlier detection settings; [`Default`] is 5 failures, 30s, 300s, 50%.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierConfig {
    /// Failures in a row that eject an endpoint.
    pub consecutive_failures: u32,
    /// Ejection time of a first ejection.
    pub base_ejection: Duration,
    /// Cap on the ejection time, however often an endpoint was ejected.
    pub max_ejection: Duration,
    /// Most endpoints ejected at once, in percent of the set (1–100; never all of them).
    pub max_ejection_percent: u8,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }
}

/// Outlier detection for one endpoint set (the endpoints of a service version), indexed
/// `0..endpoints`.
///
/// Thread safety: each endpoint is a few atomics. [`is_ejected`](Self::is_ejected) is one
/// load; recording a success is a load (and a store only if failures were counted); a failure
/// is one atomic add. Only a failure that reaches the threshold takes the detector's mutex, so
/// that two endpoints ejected at the same moment cannot both slip under the percentage cap —
/// that is the slow path of an already failing request, and rare.
#[derive(Debug)]
pub struct OutlierDetector {
    threshold: u32,
    base: u64,
    max: u64,
    max_ejected: usize,
    endpoints: Box<[Endpoint]>,
    ejecting: Mutex<()>,
}

#[derive(Debug, Default)]
struct Endpoint {
    failures: AtomicU32,
    /// End of the current or last ejection, in caller nanoseconds; 0 = never ejected.
    ejected_until: AtomicU64,
    /// The ejection-time multiplier: ejections, less the decay earned since.
    ejections: AtomicU64,
}

impl OutlierDetector {
    /// A detector for `endpoints` endpoints. Errors name the field: no endpoints, a zero
    /// threshold or ejection time, `max_ejection` shorter than `base_ejection`, or a percentage
    /// outside 1–100.
    pub fn new(endpoints: usize, config: OutlierConfig) -> Result<OutlierDetector, ConfigError> {
        if endpoints == 0 {
            return Err(ConfigError::new(
                "endpoints",
                "0 — outlier detection needs at least one endpoint",
            ));
        }
        if config.consecutive_failures == 0 {
            return Err(ConfigError::new(
                "consecutive_failures",
                "0 — an endpoint must fail at least once to be ejected",
            ));
        }
        if config.base_ejection.is_zero() {
            return Err(ConfigError::new(
                "base_ejection",
                "0s — an ejection must last some time",
            ));
        }
        if config.max_ejection < config.base_ejection {
            return Err(ConfigError::new(
                "max_ejection",
                format!(
                    "{:?} is shorter than base_ejection {:?}",
                    config.max_ejection, config.base_ejection
                ),
            ));
        }
        let percent = config.max_ejection_percent;
        if !(1..=100).contains(&percent) {
            return Err(ConfigError::new(
                "max_ejection_percent",
                format!("{percent} must be 1–100 (leave outlier detection off to never eject)"),
            ));
        }
        let max_ejected = if endpoints < 2 {
            0
        } else {
            // ⌊endpoints × percent / 100⌋ without the product overflowing.
            let percent = usize::from(percent);
            (endpoints / 100 * percent + endpoints % 100 * percent / 100).clamp(1, endpoints - 1)
        };
        Ok(OutlierDetector {
            threshold: config.consecutive_failures,
            base: nanos(config.base_ejection),
            max: nanos(config.max_ejection),
            max_ejected,
            endpoints: (0..endpoints).map(|_| Endpoint::default()).collect(),
            ejecting: Mutex::new(()),
        })
    }

    /// Records the result of a request to `endpoint` at `now_nanos`. Returns `true` when this
    /// failure ejected the endpoint. Out-of-range indexes are ignored.
    pub fn record(&self, endpoint: usize, now_nanos: u64, success: bool) -> bool {
        let Some(ep) = self.endpoints.get(endpoint) else {
            return false;
        };
        // Relaxed throughout: each atomic is self-contained, and ejections are serialised by
        // the mutex, whose lock and unlock order everything written under it.
        if now_nanos < ep.ejected_until.load(Ordering::Relaxed) {
            return false;
        }
        if success {
            // Load first: most requests succeed, and a store would pull the cache line away
            // from every other core reading it.
            if ep.failures.load(Ordering::Relaxed) != 0 {
                ep.failures.store(0, Ordering::Relaxed);
            }
            return false;
        }
        let failures = ep
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        failures >= self.threshold && self.try_eject(ep, now_nanos)
    }

    fn try_eject(&self, ep: &Endpoint, now: u64) -> bool {
        let _guard = self.ejecting.lock().unwrap_or_else(PoisonError::into_inner);
        let last_end = ep.ejected_until.load(Ordering::Relaxed);
        // Another thread may have ejected it while this one waited for the lock.
        if now < last_end || ep.failures.load(Ordering::Relaxed) < self.threshold {
            return false;
        }
        let ejected = self
            .endpoints
            .iter()
            .filter(|e| now < e.ejected_until.load(Ordering::Relaxed))
            .count();
        if ejected >= self.max_ejected {
            // Stays in; its failures keep counting, so the next one tries again.
            return false;
        }
        let decay = if last_end == 0 {
            0
        } else {
            now.saturating_sub(last_end) / self.base
        };
        let multiplier = ep
            .ejections
            .load(Ordering::Relaxed)
            .saturating_sub(decay)
            .saturating_add(1);
        ep.ejections.store(multiplier, Ordering::Relaxed);
        let duration = self.base.saturating_mul(multiplier).min(self.max);
        ep.ejected_until
            .store(now.saturating_add(duration).max(1), Ordering::Relaxed);
        ep.failures.store(0, Ordering::Relaxed);
        true
    }

    /// Whether `endpoint` is ejected at `now_nanos` (`false` for an index out of range).
    pub fn is_ejected(&self, endpoint: usize, now_nanos: u64) -> bool {
        self.endpoints
            .get(endpoint)
            .is_some_and(|ep| now_nanos < ep.ejected_until.load(Ordering::Relaxed))
    }

    /// Endpoints not ejected at `now_nanos`; never 0.
    pub fn healthy_count(&self, now_nanos: u64) -> usize {
        self.endpoints
            .iter()
            .filter(|ep| now_nanos >= ep.ejected_until.load(Ordering::Relaxed))
            .count()
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn fail(d: &OutlierDetector, endpoint: usize, now: u64, times: u32) -> bool {
        (0..times).fold(false, |ejected, _| d.record(endpoint, now, false) | ejected)
    }

    #[test]
    fn success_resets_the_count() {
        let d = OutlierDetector::new(4, OutlierConfig::default()).unwrap();
        assert!(!fail(&d, 0, 0, 4));
        d.record(0, 0, true);
        assert!(!fail(&d, 0, 0, 4));
        assert!(!d.is_ejected(0, 0));
        assert!(d.record(0, 0, false));
        assert!(d.is_ejected(0, 0));
    }

    #[test]
    fn ejection_time_grows_and_is_capped() {
        let cfg = OutlierConfig {
            consecutive_failures: 1,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(25),
            max_ejection_percent: 100,
        };
        let d = OutlierDetector::new(2, cfg).unwrap();
        assert!(d.record(0, 0, false));
        assert!(d.is_ejected(0, 10 * S - 1));
        assert!(!d.is_ejected(0, 10 * S));
        // Back at 10s, fails again at once: 2 × 10s.
        assert!(d.record(0, 10 * S, false));
        assert!(d.is_ejected(0, 30 * S - 1));
        assert!(!d.is_ejected(0, 30 * S));
        // Third time: 3 × 10s, capped at 25s.
        assert!(d.record(0, 30 * S, false));
        assert!(d.is_ejected(0, 55 * S - 1));
        assert!(!d.is_ejected(0, 55 * S));
    }

    #[test]
    fn multiplier_decays_while_the_endpoint_stays_in() {
        let cfg = OutlierConfig {
            consecutive_failures: 1,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 100,
        };
        let d = OutlierDetector::new(2, cfg).unwrap();
        d.record(0, 0, false); // ×1 until 10s
        d.record(0, 10 * S, false); // ×2 until 30s
        // 25s back in the pool earns two steps of decay: ×2 → ×0, so the next is ×1.
        assert!(d.record(0, 55 * S, false));
        assert!(d.is_ejected(0, 65 * S - 1));
        assert!(!d.is_ejected(0, 65 * S));
    }

    #[test]
    fn never_ejects_beyond_the_percentage_or_everything() {
        let d = OutlierDetector::new(4, OutlierConfig::default()).unwrap();
        assert!(fail(&d, 0, 0, 5));
        assert!(fail(&d, 1, 0, 5));
        assert!(!fail(&d, 2, 0, 5)); // 50% of 4 already out
        assert_eq!(d.healthy_count(0), 2);
        // Once one comes back, the next failure of the capped endpoint ejects it.
        let back = 30 * S;
        assert!(!d.is_ejected(0, back));
        assert!(d.record(2, back, false));
        assert!(d.is_ejected(2, back));

        let all = OutlierConfig {
            max_ejection_percent: 100,
            ..OutlierConfig::default()
        };
        let d = OutlierDetector::new(3, all).unwrap();
        for e in 0..3 {
            fail(&d, e, 0, 5);
        }
        assert_eq!(d.healthy_count(0), 1);

        let single = OutlierDetector::new(1, all).unwrap();
        assert!(!fail(&single, 0, 0, 50));
        assert_eq!(single.healthy_count(0), 1);

        // 10% of 3 rounds down to 0, but one may go as long as two stay.
        let low = OutlierConfig {
            max_ejection_percent: 10,
            ..OutlierConfig::default()
        };
        let d = OutlierDetector::new(3, low).unwrap();
        assert!(fail(&d, 0, 0, 5));
        assert!(!fail(&d, 1, 0, 5));
    }

    #[test]
    fn percentage_of_a_larger_set() {
        let cfg = OutlierConfig {
            max_ejection_percent: 30,
            ..OutlierConfig::default()
        };
        let d = OutlierDetector::new(250, cfg).unwrap();
        let ejected = (0..250).filter(|&e| fail(&d, e, 0, 5)).count();
        assert_eq!(ejected, 75);
        assert_eq!(d.healthy_count(0), 175);
    }

    #[test]
    fn results_while_ejected_are_ignored() {
        let d = OutlierDetector::new(2, OutlierConfig::default()).unwrap();
        fail(&d, 0, 0, 5);
        fail(&d, 0, S, 100);
        let back = 30 * S;
        assert!(!fail(&d, 0, back, 4));
        assert!(d.record(0, back, false));
    }

    #[test]
    fn out_of_range_is_ignored() {
        let d = OutlierDetector::new(1, OutlierConfig::default()).unwrap();
        assert!(!d.record(9, 0, false));
        assert!(!d.is_ejected(9, 0));
    }

    #[test]
    fn invalid_settings_are_refused() {
        let cfg = OutlierConfig::default();
        let field = |n, c| OutlierDetector::new(n, c).unwrap_err().field();
        assert_eq!(field(0, cfg), "endpoints");
        let zero = OutlierConfig {
            consecutive_failures: 0,
            ..cfg
        };
        assert_eq!(field(2, zero), "consecutive_failures");
        let zero = OutlierConfig {
            base_ejection: Duration::ZERO,
            ..cfg
        };
        assert_eq!(field(2, zero), "base_ejection");
        let short = OutlierConfig {
            max_ejection: Duration::from_secs(1),
            ..cfg
        };
        assert_eq!(
            OutlierDetector::new(2, short).unwrap_err().to_string(),
            "max_ejection: 1s is shorter than base_ejection 30s"
        );
        for p in [0, 101] {
            let pct = OutlierConfig {
                max_ejection_percent: p,
                ..cfg
            };
            assert_eq!(field(2, pct), "max_ejection_percent");
        }
    }
}
