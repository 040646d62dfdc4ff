//! Load balancing: the endpoint of a version an attempt goes to.

use std::sync::atomic::Ordering::Relaxed;

use graylane_config::LoadBalancing;

use crate::rng::fastrand_u64;
use crate::snapshot::{ServiceRoute, VersionRoute};

pub(super) fn pick_endpoint(service: &ServiceRoute, version: &VersionRoute) -> usize {
    let n = version.endpoints.len();
    if n <= 1 {
        return 0;
    }
    match service.load_balancing {
        LoadBalancing::RoundRobin => version.next.fetch_add(1, Relaxed) % n,
        LoadBalancing::LeastRequest => {
            // Power of two choices: as good as scanning every endpoint, at constant cost.
            let a = (fastrand_u64() % n as u64) as usize;
            let b = (fastrand_u64() % n as u64) as usize;
            let load = |i: usize| version.endpoints[i].in_flight.load(Relaxed);
            if load(a) <= load(b) { a } else { b }
        }
    }
}

/// An endpoint that outlier ejection and health checks leave in rotation. When none is left
/// and `panic` is set (no fallback to go to), every endpoint is used, as Envoy's panic mode
/// does: sending somewhere beats refusing everything. `None` for a version without endpoints.
pub(super) fn pick_usable_endpoint(
    service: &ServiceRoute,
    version: &VersionRoute,
    now: u64,
    panic: bool,
) -> Option<usize> {
    if version.endpoints.is_empty() {
        return None;
    }
    let ctl = &version.guards;
    let first = pick_endpoint(service, version);
    if ctl.endpoint_usable(first, now) {
        return Some(first);
    }
    let n = version.endpoints.len();
    (1..n)
        .map(|step| (first + step) % n)
        .find(|&i| ctl.endpoint_usable(i, now))
        .or(panic.then_some(first))
}
