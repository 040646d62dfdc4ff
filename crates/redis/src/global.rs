//! Global rate limits: one limit shared by every gateway process that points at the same Redis
//! and key prefix.
//!
//! # Algorithm: GCRA in Redis, with a grace for late arrivals
//!
//! Each key holds one number, its *theoretical arrival time* (TAT): when the next request is due,
//! in microseconds on the Redis server's clock. With the emission interval `T = per / requests`
//! and the tolerance `tau = burst * T`, a request at `now` is allowed when `TAT - tau <= now`, and
//! then moves `TAT` on by `T`. The whole step (read `TIME`, `GET`, compare, `SET … PX`) is one Lua
//! script ([`GCRA_SCRIPT`]), so concurrent gateways can never both take the same slot. It is sent
//! with `EVALSHA` and, when Redis does not know the script (`NOSCRIPT`: first use, or after a
//! restart or `SCRIPT FLUSH`), once more with `EVAL`, which also caches it.
//!
//! Textbook GCRA moves `TAT` to `max(TAT, now) + T`: a slot taken late pushes the whole schedule
//! back, so with `burst: 0` the rate achieved is `1 / (T + mean lateness)` — 100/s configured,
//! requests arriving every millisecond or so, about 91/s allowed. Here a `TAT` that lies in the
//! past by less than `T` is kept instead (the late request takes the slot that opened then, the
//! schedule does not slip); one further in the past means the key was idle, and it starts afresh
//! from `now`, without credit.
//!
//! Semantics: a sustained rate of `requests` per `per`; after an idle period up to `burst + 1`
//! requests at once (`burst` is the allowance *on top of* the steady rate: `burst: 0` spaces
//! requests `T` apart). A key left alone expires from Redis one interval after it is back to full.
//!
//! Accuracy: time is the Redis server's alone, so clock skew between gateways does not matter.
//! Over any window of length `w` at most `w / T + burst + 2` requests are allowed (textbook GCRA:
//! `+ 1`; the one extra is a late request followed by one on time). Under sustained demand the
//! long-run rate is exactly `requests` per `per` as long as each slot is claimed within `T` of
//! opening. `T` is rounded to whole microseconds: a relative rate error of at most `0.5 µs / T`
//! (0.005 % at 100/s).
//!
//! # The request path
//!
//! [`GlobalLimiter::check`] is one round trip, bounded by `timeout` (default 20 ms). A key that
//! Redis has just denied is remembered locally until the moment it could be allowed again, and
//! checks for it are denied from that cache without a round trip. A Redis error or timeout
//! answers per [`OnError`] and is counted ([`GlobalLimiter::redis_errors`]).

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use foldhash::fast::RandomState;
use redis::{ErrorKind, ServerErrorKind};
use tracing::{info, warn};

use crate::{Client, Error};

/// The Lua script run for every check; see the module documentation.
pub const GCRA_SCRIPT: &str = include_str!("gcra.lua");

/// Times handed to Lua stay far below 2^53 µs so that its doubles hold them exactly.
const MAX_SPAN_US: u128 = 1 << 50;

/// Keys over their limit are remembered in this many independently locked shards…
const CACHE_SHARDS: usize = 16;
/// …of at most this many keys each (65 536 in all; see [`OverLimitCache::insert`] for a full one).
const CACHE_KEYS_PER_SHARD: usize = 4096;

/// What a check answers when Redis cannot be asked (error, timeout, or backing off after one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnError {
    /// Let the request through: an outage of Redis does not become an outage of the service.
    #[default]
    Allow,
    /// Reject the request.
    Deny,
}

/// A global limit; see the module documentation for the meaning of `requests`, `per` and `burst`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalLimiterConfig {
    /// Prepended to every checked key to make the Redis key (`{key_prefix}{key}`): give each
    /// limit its own, e.g. `graylane:rl:checkout:`.
    pub key_prefix: String,
    /// Requests allowed per `per`; at least 1.
    pub requests: u32,
    /// The period `requests` are counted over: at least a microsecond per request, at most
    /// about 35 years.
    pub per: Duration,
    /// Requests allowed at once on top of the steady rate.
    pub burst: u32,
    /// How long a check waits for Redis before `on_error` applies. Default 20 ms.
    pub timeout: Duration,
    /// Whether a check Redis cannot answer in time is allowed or denied.
    pub on_error: OnError,
}

impl GlobalLimiterConfig {
    /// `timeout` by default: 20 ms, so an unreachable Redis adds little to a request.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(20);

    /// `requests` per `per` under `key_prefix`, no burst, the default timeout, allow on error.
    pub fn new(key_prefix: impl Into<String>, requests: u32, per: Duration) -> Self {
        GlobalLimiterConfig {
            key_prefix: key_prefix.into(),
            requests,
            per,
            burst: 0,
            timeout: Self::DEFAULT_TIMEOUT,
            on_error: OnError::Allow,
        }
    }
}

/// Who answered a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionSource {
    /// The script, in Redis.
    Redis,
    /// The local cache of keys known to be over their limit: no round trip.
    LocalCache,
    /// Redis could not be asked; `allowed` is the configured [`OnError`].
    RedisError,
}

/// The answer to one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlobalDecision {
    /// Whether the request is admitted.
    pub allowed: bool,
    /// The configured `requests` (per `per`).
    pub limit: u32,
    /// Requests that would still be allowed right now; 0 when denied or unknown.
    pub remaining: u32,
    /// Time until the limit is back to full; zero when unknown (`RedisError`).
    pub reset_after: Duration,
    /// For a denied request, time until one would be allowed (for `Retry-After`); zero when
    /// allowed or unknown.
    pub retry_after: Duration,
    /// Who answered: Redis, the local over-limit cache, or the `on_error` setting.
    pub source: DecisionSource,
}

/// A rate limit shared through Redis by many gateway processes. Share it with an `Arc`.
pub struct GlobalLimiter {
    client: Client,
    key_prefix: String,
    limit: u32,
    interval_us: u64,
    tolerance_us: u64,
    timeout: Duration,
    on_error: OnError,
    script_sha: String,
    over_limit: OverLimitCache,
    errors: AtomicU64,
    /// Whether the last call to Redis failed: errors are logged when they start and when they
    /// end, not once per request.
    failing: AtomicBool,
}

impl std::fmt::Debug for GlobalLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlobalLimiter")
            .field("redis", &self.client.url())
            .field("key_prefix", &self.key_prefix)
            .field("limit", &self.limit)
            .field("interval_us", &self.interval_us)
            .field("tolerance_us", &self.tolerance_us)
            .field("timeout", &self.timeout)
            .field("on_error", &self.on_error)
            .field("redis_errors", &self.redis_errors())
            .finish_non_exhaustive()
    }
}

impl GlobalLimiter {
    /// Checks the configuration; errors name the offending field. Does not contact Redis.
    pub fn new(client: Client, config: GlobalLimiterConfig) -> Result<GlobalLimiter, Error> {
        let invalid = |field, reason: &str| Error::InvalidConfig {
            field,
            reason: reason.to_string(),
        };
        if config.requests == 0 {
            return Err(invalid("requests", "must be at least 1"));
        }
        let per_us = config.per.as_micros();
        if per_us == 0 {
            return Err(invalid("per", "must be at least one microsecond"));
        }
        if per_us > MAX_SPAN_US {
            return Err(invalid("per", "is too long (at most about 35 years)"));
        }
        if config.timeout.is_zero() {
            return Err(invalid("timeout", "must be longer than zero"));
        }
        let requests = u128::from(config.requests);
        if per_us < requests {
            return Err(invalid(
                "requests",
                "is more than one per microsecond of `per`: use a longer `per`",
            ));
        }
        let interval_us = (per_us + requests / 2) / requests;
        let tolerance_us = interval_us * u128::from(config.burst);
        if tolerance_us > MAX_SPAN_US {
            return Err(invalid("burst", "is too large for this rate"));
        }
        // Both are at most 2^50 (checked above), so they fit.
        let (Ok(interval_us), Ok(tolerance_us)) =
            (u64::try_from(interval_us), u64::try_from(tolerance_us))
        else {
            return Err(invalid("per", "is too long"));
        };
        Ok(GlobalLimiter {
            client,
            key_prefix: config.key_prefix,
            limit: config.requests,
            interval_us,
            tolerance_us,
            timeout: config.timeout,
            on_error: config.on_error,
            script_sha: redis::Script::new(GCRA_SCRIPT).get_hash().to_string(),
            over_limit: OverLimitCache::new(),
            errors: AtomicU64::new(0),
            failing: AtomicBool::new(false),
        })
    }

    /// Counts one request against `key` and says whether it may pass.
    ///
    /// Takes at most `timeout` (plus scheduling), never fails, and is cancel-safe: dropping the
    /// future leaves the limiter consistent. A check that is dropped, or times out, after its
    /// script reached Redis may still have been counted there — as any request that Redis
    /// received.
    pub async fn check(&self, key: &str) -> GlobalDecision {
        let sent = Instant::now();
        if let Some(entry) = self.over_limit.get(key, sent) {
            return GlobalDecision {
                allowed: false,
                limit: self.limit,
                remaining: 0,
                reset_after: entry.reset_at.saturating_duration_since(sent),
                retry_after: entry.until.saturating_duration_since(sent),
                source: DecisionSource::LocalCache,
            };
        }
        match self.run_script(key, sent).await {
            Ok(reply) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    info!(redis = %self.client.url(), "global rate limit: Redis answers again");
                }
                if !reply.allowed {
                    // Until the moment a request *sent now* would reach Redis as the next slot
                    // opens: measured from the send time, the reply's trip back is not lost.
                    self.over_limit.insert(
                        key,
                        CacheEntry {
                            until: sent + reply.retry_after,
                            reset_at: sent + reply.reset_after,
                        },
                        Instant::now(),
                    );
                }
                GlobalDecision {
                    allowed: reply.allowed,
                    limit: self.limit,
                    remaining: reply.remaining,
                    reset_after: reply.reset_after,
                    retry_after: reply.retry_after,
                    source: DecisionSource::Redis,
                }
            }
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    warn!(
                        error = %e,
                        on_error = ?self.on_error,
                        "global rate limit: Redis failed; answering per on_error until it is back"
                    );
                }
                GlobalDecision {
                    allowed: self.on_error == OnError::Allow,
                    limit: self.limit,
                    remaining: 0,
                    reset_after: Duration::ZERO,
                    retry_after: Duration::ZERO,
                    source: DecisionSource::RedisError,
                }
            }
        }
    }

    /// Checks that could not ask Redis (errors, timeouts, and checks failed fast while the
    /// client backs off), since the limiter was created: `graylane_ratelimit_redis_errors_total`.
    pub fn redis_errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// `EVALSHA`, then `EVAL` if Redis does not have the script; both within one `timeout`.
    async fn run_script(&self, key: &str, start: Instant) -> Result<ScriptReply, Error> {
        let redis_key = format!("{}{key}", self.key_prefix);
        let invocation = |command: &str, script: &str| {
            let mut cmd = redis::cmd(command);
            cmd.arg(script)
                .arg(1)
                .arg(&redis_key)
                .arg(self.interval_us)
                .arg(self.tolerance_us);
            cmd
        };
        let reply: Vec<i64> = match self
            .client
            .query(&invocation("EVALSHA", &self.script_sha), self.timeout)
            .await
        {
            Err(Error::Redis { source, .. })
                if source.kind() == ErrorKind::Server(ServerErrorKind::NoScript) =>
            {
                let left = self.timeout.saturating_sub(start.elapsed());
                if left.is_zero() {
                    return Err(Error::Timeout {
                        url: self.client.url().to_string(),
                        timeout: self.timeout,
                    });
                }
                self.client
                    .query(&invocation("EVAL", GCRA_SCRIPT), left)
                    .await?
            }
            other => other?,
        };
        ScriptReply::parse(&reply).ok_or_else(|| Error::UnexpectedReply {
            url: self.client.url().to_string(),
            command: "the rate limit script",
            detail: format!("{reply:?}"),
        })
    }
}

struct ScriptReply {
    allowed: bool,
    remaining: u32,
    reset_after: Duration,
    retry_after: Duration,
}

impl ScriptReply {
    fn parse(reply: &[i64]) -> Option<ScriptReply> {
        let &[allowed, remaining, reset_after_us, retry_after_us] = reply else {
            return None;
        };
        let micros = |us: i64| Duration::from_micros(u64::try_from(us).unwrap_or(0));
        Some(ScriptReply {
            allowed: allowed == 1,
            remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
            reset_after: micros(reset_after_us),
            retry_after: micros(retry_after_us),
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct CacheEntry {
    /// Denied locally until then.
    until: Instant,
    reset_at: Instant,
}

/// Keys that Redis denied, until they could be allowed again.
struct OverLimitCache {
    shards: Vec<Mutex<Shard>>,
    hasher: RandomState,
}

#[derive(Default)]
struct Shard {
    keys: foldhash::HashMap<Box<str>, CacheEntry>,
    /// A full shard drops its expired keys at most once per [`SWEEP_EVERY`].
    next_sweep: Option<Instant>,
}

const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl OverLimitCache {
    fn new() -> Self {
        OverLimitCache {
            shards: (0..CACHE_SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::default(),
        }
    }

    fn shard(&self, key: &str) -> std::sync::MutexGuard<'_, Shard> {
        let index = (self.hasher.hash_one(key) % CACHE_SHARDS as u64) as usize;
        // A poisoned shard still holds plain data; no code here panics while holding it.
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The entry for `key` if it still denies at `now`; an expired one is dropped.
    fn get(&self, key: &str, now: Instant) -> Option<CacheEntry> {
        let mut shard = self.shard(key);
        match shard.keys.get(key) {
            Some(entry) if now < entry.until => Some(*entry),
            Some(_) => {
                shard.keys.remove(key);
                None
            }
            None => None,
        }
    }

    /// Remembers `key`. A full shard first drops its expired keys (at most once per
    /// [`SWEEP_EVERY`], so that a shard full of live keys costs no scan per insert), then, if
    /// still full, an arbitrary key: that key's next check just goes to Redis.
    fn insert(&self, key: &str, entry: CacheEntry, now: Instant) {
        if entry.until <= now {
            return;
        }
        let mut shard = self.shard(key);
        if shard.keys.len() >= CACHE_KEYS_PER_SHARD && !shard.keys.contains_key(key) {
            if shard.next_sweep.is_none_or(|t| now >= t) {
                shard.keys.retain(|_, e| now < e.until);
                shard.next_sweep = Some(now + SWEEP_EVERY);
            }
            if shard.keys.len() >= CACHE_KEYS_PER_SHARD
                && let Some(victim) = shard.keys.keys().next().cloned()
            {
                shard.keys.remove(&victim);
            }
        }
        shard.keys.insert(key.into(), entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_expires_and_stays_bounded() {
        let cache = OverLimitCache::new();
        let now = Instant::now();
        let entry = CacheEntry {
            until: now + Duration::from_secs(1),
            reset_at: now + Duration::from_secs(2),
        };
        cache.insert("a", entry, now);
        assert!(cache.get("a", now).is_some());
        assert!(cache.get("a", now + Duration::from_secs(1)).is_none());
        assert!(cache.get("a", now).is_none(), "an expired entry is dropped");

        let many = CACHE_SHARDS * CACHE_KEYS_PER_SHARD * 2;
        for i in 0..many {
            cache.insert(&i.to_string(), entry, now);
        }
        let total: usize = cache
            .shards
            .iter()
            .map(|s| s.lock().map(|m| m.keys.len()).unwrap_or(0))
            .sum();
        assert!(total <= CACHE_SHARDS * CACHE_KEYS_PER_SHARD);
        // A full shard evicts some key to take a new one.
        assert!(cache.get(&(many - 1).to_string(), now).is_some());
        // Once those have expired, a full shard sweeps them.
        let later = now + Duration::from_secs(5);
        let fresh = CacheEntry {
            until: later + Duration::from_secs(1),
            reset_at: later + Duration::from_secs(1),
        };
        cache.insert("new", fresh, later);
        assert!(cache.get("new", later).is_some());
    }

    #[test]
    fn script_reply_shape() {
        let r = ScriptReply::parse(&[0, 0, 30_000, 10_000]).expect("four integers");
        assert!(!r.allowed);
        assert_eq!(r.retry_after, Duration::from_millis(10));
        assert_eq!(r.reset_after, Duration::from_millis(30));
        assert!(ScriptReply::parse(&[1, 2]).is_none());
    }
}
