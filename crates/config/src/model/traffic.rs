//! Traffic control: rate and concurrency limits, circuit breakers, fallbacks, retries, outlier
//! detection and health checks.

use std::time::Duration;

use http::HeaderName;

use super::{KeySpec, StatusRange};

/// Traffic-control settings, validated; enforced by the data plane.
#[derive(Debug, Clone, Default)]
pub struct TrafficControl {
    pub rate_limits: Vec<RateLimit>,
    pub circuit_breakers: Vec<CircuitBreaker>,
    pub concurrency_limits: Vec<ConcurrencyLimit>,
    pub retries: Vec<Retry>,
    pub outlier_detection: Vec<OutlierDetection>,
    pub health_checks: Vec<HealthCheck>,
}

#[derive(Debug, Clone)]
pub struct RateLimit {
    pub service: usize,
    /// Only requests under this path prefix (a route of the service); `None`: all of them.
    pub path_prefix: Option<String>,
    /// `None`: one limit for the whole service (or route).
    pub key: Option<KeySpec>,
    /// Requests allowed per `per`.
    pub requests: u32,
    pub per: Duration,
    pub burst: u32,
    pub backend: LimitBackend,
    /// `RateLimit-*` headers on allowed responses too, not only on the `429`.
    pub headers_on_allowed: bool,
    /// The key counts only from a trusted hop; anyone else is limited by client IP, so a
    /// client cannot get a fresh allowance by sending another user id.
    pub key_trusted_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitBackend {
    /// Each gateway counts for itself (GCRA).
    Local,
    /// Shared by every gateway through Redis.
    Redis {
        url: String,
        /// How long a request waits for Redis before `on_error` applies.
        timeout: Duration,
        on_error: OnRedisError,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRedisError {
    Allow,
    Deny,
}

#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    pub service: usize,
    pub version: usize,
    pub failure_rate_threshold: f64,
    pub slow_call_duration: Option<Duration>,
    pub slow_call_rate_threshold: f64,
    pub minimum_calls: u32,
    pub window: BreakerWindow,
    pub open_for: Duration,
    pub half_open_calls: u32,
    /// What counts as a failed call.
    pub failure_on: FailureKinds,
    /// Where the traffic goes while the breaker is open (or when the version's attempt fails).
    pub fallback: Option<Fallback>,
    /// A failed attempt of a non-idempotent request (`POST`, `PATCH`) that reached the version
    /// may be sent again to the fallback version. Off by default: the first upstream may have
    /// acted on it (a double payment).
    pub fallback_non_idempotent: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerWindow {
    Count(u32),
    Time(Duration),
}

/// Outcomes that count as failures (for breakers) or are retried (for retries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureKinds {
    pub statuses: Vec<StatusRange>,
    pub connect_errors: bool,
    pub timeouts: bool,
}

impl Default for FailureKinds {
    /// 5xx, connection failures and timeouts.
    fn default() -> Self {
        FailureKinds {
            statuses: vec![StatusRange { from: 500, to: 599 }],
            connect_errors: true,
            timeouts: true,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Fallback {
    /// Another version of the service (index), e.g. the stable one.
    Version(usize),
    Static(StaticResponse),
}

#[derive(Debug, Clone)]
pub struct StaticResponse {
    pub status: http::StatusCode,
    pub headers: Vec<(HeaderName, http::HeaderValue)>,
    pub body: String,
}

#[derive(Debug, Clone)]
pub struct ConcurrencyLimit {
    pub service: usize,
    /// `None`: each version of the service has this limit.
    pub version: Option<usize>,
    pub max: u32,
}

#[derive(Debug, Clone)]
pub struct Retry {
    pub service: usize,
    /// Tries after the first.
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub retry_on: FailureKinds,
    /// Retries in flight may be at most this share of the requests in flight (Envoy's budget).
    pub budget: f64,
    /// ...but at least this many.
    pub min_concurrent: u32,
}

#[derive(Debug, Clone)]
pub struct OutlierDetection {
    pub service: usize,
    pub version: Option<usize>,
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    pub max_ejection_percent: u8,
}

#[derive(Debug, Clone)]
pub struct HealthCheck {
    pub service: usize,
    pub version: Option<usize>,
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub expect: StatusRange,
}
