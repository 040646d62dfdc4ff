//! graylane's Redis integrations, used on the proxy's request path and therefore never blocking
//! it:
//!
//! - [`global`]: rate limits shared by every gateway through Redis — one atomic Lua script (GCRA)
//!   per check, bounded by a short timeout, with a local cache of keys known to be over their
//!   limit and an `on_error` policy for when Redis cannot answer.
//! - [`segments`]: segment membership read from a Redis set through a local copy that a
//!   background task refreshes; lookups are synchronous and lock-free.
//! - [`Client`]: the shared connection — `redis://` URL parsing, reconnects, a time limit on every
//!   call, and fail-fast backoff after a connection error.
//!
//! Everything here runs on Tokio: create clients inside a runtime.

mod client;
mod error;
pub mod global;
pub mod segments;

pub use client::{Client, ClientOptions};
pub use error::Error;
pub use global::{DecisionSource, GlobalDecision, GlobalLimiter, GlobalLimiterConfig, OnError};
pub use segments::RedisSegment;
