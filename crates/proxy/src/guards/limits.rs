//! Rate limits as the request path checks them: kept in this process, or shared by every
//! gateway through Redis.

use std::sync::Arc;
use std::time::Duration;

use graylane_config::KeySpec;
use graylane_redis::GlobalLimiter;
use graylane_traffic::rate::{KeyedRateLimiter, RateLimiter};

/// A rate limit as the request path checks it.
pub enum Limiter {
    /// One count for all requests.
    Whole(RateLimiter),
    /// A count per key.
    PerKey(KeyedRateLimiter),
    /// Shared by every gateway through Redis.
    Global(Arc<GlobalLimiter>),
}

/// The answer of any limiter, as the `429` needs it.
pub struct LimitAnswer {
    /// The request is admitted.
    pub allowed: bool,
    /// Requests left in the burst.
    pub remaining: u32,
    /// Seconds until the burst is full again.
    pub reset_secs: u64,
    /// For a refused request, seconds until one would be admitted.
    pub retry_after_secs: Option<u64>,
}

impl Limiter {
    /// The answer of a limit kept in this process, at once; a limit shared through Redis hands
    /// back its limiter, to ask with [`check_global`].
    pub fn check_local(&self, key: &[u8], now: u64) -> Result<LimitAnswer, &GlobalLimiter> {
        let d = match self {
            Limiter::Whole(l) => l.check(now),
            Limiter::PerKey(l) => l.check(key, now),
            Limiter::Global(g) => return Err(g),
        };
        Ok(LimitAnswer {
            allowed: d.allowed,
            remaining: d.remaining,
            reset_secs: d.reset_secs(),
            retry_after_secs: d.retry_after_secs(),
        })
    }
}

/// A global limit's answer: one round trip to Redis, within the limiter's timeout.
pub async fn check_global(g: &GlobalLimiter, key: &[u8]) -> LimitAnswer {
    let d = g.check(&String::from_utf8_lossy(key)).await;
    let secs = |t: Duration| t.as_secs() + u64::from(t.subsec_nanos() > 0);
    LimitAnswer {
        allowed: d.allowed,
        remaining: d.remaining,
        reset_secs: secs(d.reset_after),
        retry_after_secs: (!d.allowed).then(|| secs(d.retry_after).max(1)),
    }
}

/// The key a `trusted_only` limit counts an untrusted client under.
static CLIENT_IP: KeySpec = KeySpec::ClientIp;

impl LimitRoute {
    /// The key this request is counted under: the configured one, or the client IP for a
    /// `trusted_only` key sent by a client that is not a trusted hop.
    pub fn key_for(&self, trusted: bool) -> Option<&KeySpec> {
        if self.key_trusted_only && !trusted {
            Some(&CLIENT_IP)
        } else {
            self.key.as_ref()
        }
    }
}

/// A rate limit of a service, as the request path applies it.
pub struct LimitRoute {
    /// Applies to paths under this prefix only.
    pub path_prefix: Option<Box<str>>,
    /// What requests are counted by; `None`: all together.
    pub key: Option<KeySpec>,
    /// The limiter and its state.
    pub limiter: Arc<Limiter>,
    /// `RateLimit-Limit`: the most requests admitted at once (the burst), the same for a local
    /// and a Redis limit.
    pub burst: u32,
    /// `RateLimit-Policy`: `<burst>;w=<seconds to refill the burst>`.
    pub policy: http::HeaderValue,
    /// Send the `RateLimit-*` headers on allowed responses too.
    pub headers_on_allowed: bool,
    /// See [`graylane_config::RateLimit::key_trusted_only`].
    pub key_trusted_only: bool,
    /// `100/s per header:x-user-id`, for the `429` body.
    pub describe: Box<str>,
}
