//! Traffic control: rate and concurrency limits, circuit breakers, fallbacks, retries, outlier
//! detection and health checks.

use std::time::Duration;

use http::HeaderName;

use super::{KeySpec, StatusRange};

/// Traffic-control settings, validated; enforced by the data plane.
#[derive(Debug, Clone, Default)]
pub struct TrafficControl {
    /// Rate limits, checked before anything else.
    pub rate_limits: Vec<RateLimit>,
    /// Circuit breakers, one per service version at most.
    pub circuit_breakers: Vec<CircuitBreaker>,
    /// Limits on requests in flight.
    pub concurrency_limits: Vec<ConcurrencyLimit>,
    /// Retry policies.
    pub retries: Vec<Retry>,
    /// Ejection of endpoints that keep failing.
    pub outlier_detection: Vec<OutlierDetection>,
    /// Active probes of endpoints.
    pub health_checks: Vec<HealthCheck>,
}

/// A rate limit (`rate_limits[]`): `requests` per `per`, admitting up to `burst` at once.
#[derive(Debug, Clone)]
pub struct RateLimit {
    /// Index into [`Config::services`](super::Config::services).
    pub service: usize,
    /// Only requests under this path prefix (a route of the service); `None`: all of them.
    pub path_prefix: Option<String>,
    /// `None`: one limit for the whole service (or route).
    pub key: Option<KeySpec>,
    /// Requests allowed per `per`.
    pub requests: u32,
    /// The period `requests` are counted over: a second, a minute or an hour.
    pub per: Duration,
    /// The most requests admitted at once (a full bucket); at least 1, default `requests`.
    pub burst: u32,
    /// Where the count is kept.
    pub backend: LimitBackend,
    /// `RateLimit-*` headers on allowed responses too, not only on the `429`.
    pub headers_on_allowed: bool,
    /// The key counts only from a trusted hop; anyone else is limited by client IP, so a
    /// client cannot get a fresh allowance by sending another user id.
    pub key_trusted_only: bool,
}

/// Where a rate limit's count is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitBackend {
    /// Each gateway counts for itself (GCRA).
    Local,
    /// Shared by every gateway through Redis.
    Redis {
        /// The Redis server, `redis://...`.
        url: String,
        /// How long a request waits for Redis before `on_error` applies.
        timeout: Duration,
        /// What a request gets when Redis cannot answer in time.
        on_error: OnRedisError,
    },
}

/// What a Redis-backed rate limit does when Redis fails or is slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRedisError {
    /// Admit the request (the default): the limit fails open.
    Allow,
    /// Refuse it with `429`: the limit fails closed.
    Deny,
}

/// A circuit breaker on one version (`circuit_breakers[]`), as resilience4j's.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    /// Index into [`Config::services`](super::Config::services).
    pub service: usize,
    /// Index into the service's `versions` of the version guarded.
    pub version: usize,
    /// The failure rate that opens the breaker, a fraction in (0, 1]; default 0.5.
    pub failure_rate_threshold: f64,
    /// A call slower than this counts as slow; `None`: none does.
    pub slow_call_duration: Option<Duration>,
    /// The slow-call rate that opens the breaker, a fraction in (0, 1]; default 1.
    pub slow_call_rate_threshold: f64,
    /// Calls in the window before the rates are judged; default the count window's size, else
    /// 100.
    pub minimum_calls: u32,
    /// The calls the rates are computed over; default the last 100.
    pub window: BreakerWindow,
    /// How long the breaker stays open before it half-opens; default 60 s.
    pub open_for: Duration,
    /// Trial calls let through while half-open, which decide whether it closes; at least 1,
    /// default 10.
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

/// The sliding window a breaker's rates are computed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerWindow {
    /// The last this many calls.
    Count(u32),
    /// The calls of the last this long (whole seconds).
    Time(Duration),
}

/// Outcomes that count as failures (for breakers) or are retried (for retries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureKinds {
    /// Upstream statuses that count.
    pub statuses: Vec<StatusRange>,
    /// A failure to connect to the endpoint counts.
    pub connect_errors: bool,
    /// An attempt that timed out counts.
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

/// Where a request goes when its version's breaker is open or its attempt failed.
#[derive(Debug, Clone)]
pub enum Fallback {
    /// Another version of the service (index), e.g. the stable one.
    Version(usize),
    /// A fixed response, served without any upstream.
    Static(StaticResponse),
}

/// A static fallback response.
#[derive(Debug, Clone)]
pub struct StaticResponse {
    /// The status, 200 to 599.
    pub status: http::StatusCode,
    /// Headers added to the response, in the file's order.
    pub headers: Vec<(HeaderName, http::HeaderValue)>,
    /// The body; empty when the file sets none.
    pub body: String,
}

/// A limit on requests in flight (`concurrency_limits[]`); over it, `503` or the breaker's
/// fallback.
#[derive(Debug, Clone)]
pub struct ConcurrencyLimit {
    /// Index into [`Config::services`](super::Config::services).
    pub service: usize,
    /// `None`: each version of the service has this limit.
    pub version: Option<usize>,
    /// Requests in flight at once; at least 1.
    pub max: u32,
}

/// A retry policy (`retries[]`), for a whole service.
#[derive(Debug, Clone)]
pub struct Retry {
    /// Index into [`Config::services`](super::Config::services).
    pub service: usize,
    /// Tries after the first.
    pub attempts: u32,
    /// The most one attempt may take; `None`: only the service's request timeout applies.
    pub per_try_timeout: Option<Duration>,
    /// The outcomes that are retried.
    pub retry_on: FailureKinds,
    /// Retries in flight may be at most this share of the requests in flight (Envoy's budget).
    pub budget: f64,
    /// ...but at least this many.
    pub min_concurrent: u32,
}

/// Ejection of failing endpoints (`outlier_detection[]`).
#[derive(Debug, Clone)]
pub struct OutlierDetection {
    /// Index into [`Config::services`](super::Config::services).
    pub service: usize,
    /// Index into the service's `versions`; `None`: each version.
    pub version: Option<usize>,
    /// Failed attempts in a row that eject an endpoint; at least 1, default 5.
    pub consecutive_failures: u32,
    /// An ejection lasts this × the times the endpoint was ejected; default 30 s.
    pub base_ejection: Duration,
    /// The longest ejection; not shorter than `base_ejection`, default 300 s.
    pub max_ejection: Duration,
    /// The most of a version's endpoints ejected at once, in percent (0 to 100); default 50.
    pub max_ejection_percent: u8,
}

/// Active health checks (`health_checks[]`): probes of each endpoint.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    /// Index into [`Config::services`](super::Config::services).
    pub service: usize,
    /// Index into the service's `versions`; `None`: each version.
    pub version: Option<usize>,
    /// The path probed; starts with `/`.
    pub path: String,
    /// Time between two probes of an endpoint; default 10 s.
    pub interval: Duration,
    /// A probe without an answer after this long fails; default 1 s.
    pub timeout: Duration,
    /// Good probes in a row that put an unhealthy endpoint back in rotation; default 2. A new
    /// endpoint needs only one.
    pub healthy_threshold: u32,
    /// Bad probes in a row that take a healthy endpoint out of rotation; default 3.
    pub unhealthy_threshold: u32,
    /// The statuses of a good probe; default 200 to 299.
    pub expect: StatusRange,
}
