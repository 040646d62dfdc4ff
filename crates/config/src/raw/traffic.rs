//! `traffic_control` keys: rate and concurrency limits, circuit breakers, fallbacks, retries,
//! outlier detection and health checks.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::RawKey;

/// `traffic_control:`: the policies the data plane enforces per service (and version).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrafficControl {
    /// `rate_limits`: checked first; a refused request gets `429`.
    #[serde(default)]
    pub rate_limits: Vec<RawRateLimit>,
    /// `circuit_breakers`: per version, with their fallbacks.
    #[serde(default)]
    pub circuit_breakers: Vec<RawCircuitBreaker>,
    /// `concurrency_limits`: requests in flight per version.
    #[serde(default)]
    pub concurrency_limits: Vec<RawConcurrencyLimit>,
    /// `retries`: resending failed attempts, within a budget.
    #[serde(default)]
    pub retries: Vec<RawRetry>,
    /// `outlier_detection`: ejecting endpoints that keep failing.
    #[serde(default)]
    pub outlier_detection: Vec<RawOutlierDetection>,
    /// `health_checks`: probing endpoints in and out of rotation.
    #[serde(default)]
    pub health_checks: Vec<RawHealthCheck>,
}

/// One entry of `traffic_control.rate_limits`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    /// `service`: the service's name.
    pub service: String,
    /// `path_prefix`: limit only this route of the service; starts with `/`.
    pub path_prefix: Option<String>,
    /// `key`: count per key (`header:`, `cookie:`, `query:`, `ip`); one count for the service
    /// when unset.
    pub key: Option<RawKey>,
    /// `rate`: `COUNT/UNIT`, e.g. `100/s`, `6000/min`, `10/h`.
    pub rate: String,
    /// `burst`: the most requests admitted at once; default the rate's count, at least 1.
    pub burst: Option<u32>,
    /// `backend`: `local` (default, GCRA per gateway) or `redis` (shared).
    pub backend: Option<String>,
    /// `redis_url`: with `backend: redis`, required; `redis://...`.
    pub redis_url: Option<String>,
    /// `timeout`: with `backend: redis`, a duration, default `20ms`, to wait for Redis.
    pub timeout: Option<String>,
    /// `on_redis_error`: with `backend: redis`, `allow` (default) or `deny` when Redis fails.
    pub on_redis_error: Option<String>,
    /// `headers`: `refused` (default: `RateLimit-*` on the `429` only) or `always`.
    pub headers: Option<String>,
}

/// One entry of `traffic_control.circuit_breakers`: one version's breaker.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCircuitBreaker {
    /// `service`: the service's name.
    pub service: String,
    /// `version`: the version the breaker guards.
    pub version: String,
    /// `failure_rate_threshold`: a fraction in (0, 1], default 0.5: the failure rate that opens
    /// the breaker.
    pub failure_rate_threshold: Option<f64>,
    /// `slow_call_duration`: a duration beyond which a call counts as slow; no slow calls when
    /// unset.
    pub slow_call_duration: Option<String>,
    /// `slow_call_rate_threshold`: a fraction in (0, 1], default 1: the slow-call rate that
    /// opens the breaker.
    pub slow_call_rate_threshold: Option<f64>,
    /// `minimum_calls`: calls in the window before the rates count; default the count window's
    /// size, else 100.
    pub minimum_calls: Option<u32>,
    /// `window`: default `{ kind: count, size: 100 }`.
    pub window: Option<RawWindow>,
    /// `open_for`: a duration, default `60s`, the breaker stays open before half-opening.
    pub open_for: Option<String>,
    /// `half_open_calls`: trial calls while half-open; default 10.
    pub half_open_calls: Option<u32>,
    /// `failure_on`: statuses (`503`, `5xx`, `500-504`), `connect_error`, `timeout`; default
    /// `[5xx, connect_error, timeout]`.
    pub failure_on: Option<Vec<String>>,
    /// `fallback`: where requests go while open; `503` with `Retry-After` when unset.
    pub fallback: Option<RawFallback>,
    /// `fallback_non_idempotent`: default `false`; `true` lets a failed non-idempotent request
    /// that reached the version be resent to the fallback version.
    pub fallback_non_idempotent: Option<bool>,
}

/// `fallback: stable` (a version) or a static response.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawFallback {
    /// Another version of the service, by name.
    Version(String),
    /// A static response.
    Static(RawStaticResponse),
}

/// A static fallback: `fallback: { status, headers, body }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStaticResponse {
    /// `status`: an HTTP status from 200 to 599.
    pub status: u16,
    /// `headers`: header name → value, added to the response.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// `body`: the response body; empty when unset.
    pub body: Option<String>,
}

/// One entry of `traffic_control.concurrency_limits`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConcurrencyLimit {
    /// `service`: the service's name.
    pub service: String,
    /// `version`: the version limited; each version gets the limit when unset.
    pub version: Option<String>,
    /// `max`: requests in flight at once, at least 1; over it `503` (or the breaker's fallback).
    pub max: u32,
}

/// One entry of `traffic_control.retries`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// `service`: the service's name.
    pub service: String,
    /// `attempts`: retries after the first try; default 1, from 1 to 10.
    pub attempts: Option<u32>,
    /// `per_try_timeout`: a duration for each attempt; unset, only the service's request
    /// timeout bounds them.
    pub per_try_timeout: Option<String>,
    /// `retry_on`: statuses, `connect_error`, `timeout`; default `[5xx, connect_error, timeout]`.
    pub retry_on: Option<Vec<String>>,
    /// `budget`: a fraction in (0, 1], default 0.2: retries in flight per request in flight.
    pub budget: Option<f64>,
    /// `min_concurrent`: retries in flight always allowed, whatever the budget; default 3.
    pub min_concurrent: Option<u32>,
}

/// One entry of `traffic_control.outlier_detection`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlierDetection {
    /// `service`: the service's name.
    pub service: String,
    /// `version`: the version watched; every version when unset.
    pub version: Option<String>,
    /// `consecutive_failures`: failed attempts in a row that eject an endpoint; default 5, at
    /// least 1.
    pub consecutive_failures: Option<u32>,
    /// `base_ejection`: a duration, default `30s`, multiplied by the times the endpoint was
    /// ejected.
    pub base_ejection: Option<String>,
    /// `max_ejection`: a duration, default `300s`, capping an ejection; not below `base_ejection`.
    pub max_ejection: Option<String>,
    /// `max_ejection_percent`: 0 to 100, default 50: the most of a version's endpoints ejected
    /// at once.
    pub max_ejection_percent: Option<u8>,
}

/// One entry of `traffic_control.health_checks`: active probes of each endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    /// `service`: the service's name.
    pub service: String,
    /// `version`: the version probed; every version when unset.
    pub version: Option<String>,
    /// `path`: the path probed on each endpoint; starts with `/`.
    pub path: String,
    /// `interval`: a duration between probes; default `10s`.
    pub interval: Option<String>,
    /// `timeout`: a duration after which a probe fails; default `1s`.
    pub timeout: Option<String>,
    /// `healthy_threshold`: good probes that put an endpoint in rotation; default 2.
    pub healthy_threshold: Option<u32>,
    /// `unhealthy_threshold`: bad probes that take it out; default 3.
    pub unhealthy_threshold: Option<u32>,
    /// `expect_status`: a status or range of a good probe (`200`, `2xx`, `200-204`); default `2xx`.
    pub expect_status: Option<String>,
}

/// A breaker's `window:`, e.g. `{ kind: count, size: 20 }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWindow {
    /// `kind`: `count` (the last `size` calls) or `time` (the last `size` seconds).
    pub kind: String,
    /// `size`: calls or seconds, by `kind`; at least 1.
    pub size: u32,
}
