//! The monotonic clock that traffic-control state (limiter tokens, breaker windows, ejections)
//! runs on, in nanoseconds: the `graylane-traffic` structures never read the clock themselves.

use std::time::Instant;

/// The monotonic clock the traffic-control state runs on, at an instant the caller already
/// read (so the request path reads the clock once for several uses): nanoseconds since the
/// process's first use of it.
pub(crate) fn nanos_at(t: Instant) -> u64 {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    u64::try_from(t.saturating_duration_since(origin).as_nanos()).unwrap_or(u64::MAX)
}
