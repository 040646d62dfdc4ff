//! graylane's traffic-control building blocks: the checks the proxy makes on every request,
//! before and after it talks to an upstream.
//!
//! * [`rate`] — GCRA rate limits, one for a whole service ([`rate::RateLimiter`]) or one per
//!   key such as a user id or a client IP ([`rate::KeyedRateLimiter`]); the answer carries
//!   what a `429` needs (`Retry-After`, `RateLimit-*`).
//! * [`concurrency`] — a cap on requests in flight per service version; over it the proxy
//!   sheds with `503`.
//! * [`breaker`] — a circuit breaker with resilience4j's semantics (count or time window,
//!   minimum calls, failure and slow-call rates, open → half-open → closed).
//! * [`retry`] — Envoy's retry budget, and which requests may be retried at all.
//! * [`outlier`] — Envoy-style outlier ejection of endpoints that fail in a row.
//! * [`health`] — the pure state behind active health checks (the probes live in the proxy).
//!
//! Everything here is a plain data structure: no I/O, no async and no clock reads. Time is
//! passed in as monotonic nanoseconds from an origin the caller picks, so the proxy reads the
//! clock once per request and tests replay any timeline exactly:
//!
//! ```
//! use std::time::{Duration, Instant};
//! use graylane_traffic::rate::RateLimiter;
//!
//! let origin = Instant::now(); // once, at startup
//! let limiter = RateLimiter::new(100, Duration::from_secs(1), 20)?;
//! // per request:
//! let now = origin.elapsed().as_nanos() as u64;
//! assert!(limiter.check(now).allowed);
//! # Ok::<(), graylane_traffic::ConfigError>(())
//! ```
//!
//! Every type is `Send + Sync` and meant to be shared by all the proxy's worker threads. The
//! request path takes no contended lock and does not allocate: state lives in atomics, or (for
//! per-key rate limits) in 64 independently locked shards. Constructors validate their
//! settings and return a [`ConfigError`] naming the offending field; after that nothing panics
//! on any input.

pub mod breaker;
pub mod concurrency;
pub mod health;
pub mod outlier;
pub mod rate;
pub mod retry;

mod error;
mod padded;

pub use error::ConfigError;
