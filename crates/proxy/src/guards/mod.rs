//! Traffic control as the request path applies it ("guards" on a request): rate limits
//! (`429`), per-version circuit breakers, concurrency limits and fallbacks, retries within a
//! budget, and the endpoints that outlier ejection and health checks leave in rotation.
//!
//! The policies come from `traffic_control` and are compiled into each [`Snapshot`]
//! (compile.rs) as the [`ServiceGuards`] and [`VersionGuards`] the request path reads; their
//! *state* (tokens, breaker windows, ejections) lives in [`GuardState`] (state.rs), which the
//! gateway keeps across snapshots, so a weight change or a reload that leaves a policy as it
//! was keeps its state. Rate limits are in limits.rs, the thread that runs the Redis clients in
//! runtime.rs, and the breakers' metrics in collector.rs.
//!
//! [`Snapshot`]: crate::snapshot::Snapshot

mod collector;
mod compile;
mod limits;
mod runtime;
mod state;

use std::sync::Arc;
use std::time::Duration;

use graylane_config::{FailureKinds, HealthCheck, StaticResponse};
use graylane_traffic::breaker::CircuitBreaker;
use graylane_traffic::concurrency::ConcurrencyLimit;
use graylane_traffic::health::HealthState;
use graylane_traffic::outlier::OutlierDetector;
use graylane_traffic::retry::RetryBudget;

pub use collector::BreakerCollector;
pub use compile::compile;
pub use limits::{LimitAnswer, LimitRoute, Limiter, check_global};
pub use state::GuardState;

use crate::upstream::UpstreamErrorKind;

/// A service's guards: the policies every request to it passes.
#[derive(Default)]
pub struct ServiceGuards {
    /// Its rate limits, in the configuration's order.
    pub limits: Vec<LimitRoute>,
    /// Some limit is shared through Redis, so checking the limits may wait.
    pub limits_global: bool,
    /// How failed attempts are sent again.
    pub retry: Option<RetryPolicy>,
}

/// A service's retries.
pub struct RetryPolicy {
    /// Retries at most, after the first attempt.
    pub attempts: u32,
    /// The time one attempt may take, within the request's.
    pub per_try_timeout: Option<Duration>,
    /// The outcomes that are retried.
    pub retry_on: FailureKinds,
    /// Retries in flight, bounded by a share of the requests.
    pub budget: Arc<RetryBudget>,
}

/// A version's guards: the policies each attempt sent to it passes.
#[derive(Default)]
pub struct VersionGuards {
    /// Its circuit breaker.
    pub breaker: Option<CircuitBreaker>,
    /// The outcomes the breaker and outlier ejection count as failures.
    pub failure_on: FailureKinds,
    /// Where its traffic goes when it cannot take it.
    pub fallback: Option<FallbackRoute>,
    /// See [`graylane_config::CircuitBreaker::fallback_non_idempotent`].
    pub fallback_non_idempotent: bool,
    /// Attempts in flight at most.
    pub concurrency: Option<Arc<ConcurrencyLimit>>,
    /// Ejection of its failing endpoints.
    pub outlier: Option<Arc<OutlierDetector>>,
    /// Its endpoints' health, as the active checks found it.
    pub health: Option<Arc<HealthState>>,
    /// How the health prober checks this version's endpoints.
    pub probe: Option<HealthCheck>,
}

/// A version's fallback.
pub enum FallbackRoute {
    /// Another version of the service, by index.
    Version(usize),
    /// A fixed response.
    Static(StaticResponse),
}

impl VersionGuards {
    /// Whether the request path has anything to do for this version beyond forwarding.
    pub fn is_active(&self) -> bool {
        self.breaker.is_some()
            || self.fallback.is_some()
            || self.concurrency.is_some()
            || self.outlier.is_some()
            || self.health.is_some()
    }

    /// Whether endpoint `i` may take traffic now: not ejected, and healthy when checked.
    pub fn endpoint_usable(&self, i: usize, now: u64) -> bool {
        self.outlier.as_ref().is_none_or(|o| !o.is_ejected(i, now))
            && self.health.as_ref().is_none_or(|h| h.is_healthy(i))
    }
}

/// How one attempt ended, as failure rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The upstream answered with this status.
    Status(u16),
    /// No response came back.
    Error(UpstreamErrorKind),
}

impl AttemptOutcome {
    /// Whether `kinds` counts this as a failure.
    pub fn fails(self, kinds: &FailureKinds) -> bool {
        match self {
            AttemptOutcome::Status(s) => kinds.statuses.iter().any(|r| r.contains(s)),
            AttemptOutcome::Error(
                UpstreamErrorKind::ConnectRefused
                | UpstreamErrorKind::ConnectError
                | UpstreamErrorKind::ConnectTimeout
                | UpstreamErrorKind::Tls,
            ) => kinds.connect_errors,
            AttemptOutcome::Error(UpstreamErrorKind::Timeout) => kinds.timeouts,
            // A broken exchange is a failure whatever the rules say: nothing usable came back.
            AttemptOutcome::Error(UpstreamErrorKind::Protocol) => true,
        }
    }

    /// The status the attempt is counted under in the metrics.
    pub fn status_or(self, default: u16) -> u16 {
        match self {
            AttemptOutcome::Status(s) => s,
            AttemptOutcome::Error(_) => default,
        }
    }

    /// Whether the request may have reached the upstream (a retry of a non-idempotent request
    /// is safe only when it cannot have).
    pub fn reached_upstream(self) -> bool {
        !matches!(
            self,
            AttemptOutcome::Error(
                UpstreamErrorKind::ConnectRefused
                    | UpstreamErrorKind::ConnectError
                    | UpstreamErrorKind::ConnectTimeout
                    | UpstreamErrorKind::Tls
            )
        )
    }
}
