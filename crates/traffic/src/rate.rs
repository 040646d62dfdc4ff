//! Rate limits with GCRA, the generic cell rate algorithm (a leaky bucket kept as a single
//! timestamp).
//!
//! A limit of `requests` per `per` with a `burst` admits up to `burst` requests at once and then
//! one every `per / requests` (the *emission interval*). GCRA stores only the *theoretical
//! arrival time* (TAT): when the bucket would be empty again if nothing else arrived. A request
//! at `now` is admitted when `max(TAT, now) + interval − now ≤ burst × interval`, and moves TAT
//! forward by one interval. That makes a limiter one `AtomicU64` ([`RateLimiter`]) or one `u64`
//! per key ([`KeyedRateLimiter`]), with no refill timer, and the answer is exact at any time
//! resolution.
//!
//! A [`Decision`] carries what a response needs: `429` with `Retry-After` when refused, and the
//! IETF `RateLimit-Limit` / `RateLimit-Remaining` / `RateLimit-Reset` fields either way.
//!
//! ```
//! use std::time::Duration;
//! use graylane_traffic::rate::KeyedRateLimiter;
//!
//! // 2 requests per second per user, bursts of 2, at most 10,000 users tracked.
//! let limiter = KeyedRateLimiter::new(2, Duration::from_secs(1), 2, 10_000)?;
//! let t0 = 0;
//! assert!(limiter.check(b"user-1", t0).allowed);
//! assert!(limiter.check(b"user-1", t0).allowed);
//! let refused = limiter.check(b"user-1", t0);
//! assert!(!refused.allowed);
//! assert_eq!(refused.retry_after, Some(Duration::from_millis(500)));
//! assert_eq!(refused.retry_after_secs(), Some(1)); // `Retry-After: 1`
//! // Other keys have their own budget.
//! assert!(limiter.check(b"user-2", t0).allowed);
//! # Ok::<(), graylane_traffic::ConfigError>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::ConfigError;
use crate::padded::Padded;

/// The answer to one rate-limit check.
///
/// Header mapping (IETF `draft-ietf-httpapi-ratelimit-headers`):
/// `RateLimit-Limit: {limit}`, `RateLimit-Remaining: {remaining}`,
/// `RateLimit-Reset: {reset_secs()}`, and on refusal `429` with
/// `Retry-After: {retry_after_secs()}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request is admitted; `false` answers `429`.
    pub allowed: bool,
    /// The burst: the most requests admitted at once, which `remaining` counts down from.
    pub limit: u32,
    /// Requests that would still be admitted right now, after this one.
    pub remaining: u32,
    /// Time until the full burst is available again.
    pub reset_after: Duration,
    /// When refused: the earliest time a request can be admitted. `None` when allowed.
    pub retry_after: Option<Duration>,
}

impl Decision {
    /// `reset_after` in whole seconds, rounded up (a client told `0` would come back too soon).
    pub fn reset_secs(&self) -> u64 {
        ceil_secs(self.reset_after)
    }

    /// `retry_after` in whole seconds, rounded up, for `Retry-After`.
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after.map(ceil_secs)
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The fixed parameters of one limit, shared by both limiters.
#[derive(Debug, Clone, Copy)]
struct Gcra {
    /// Nanoseconds between two requests at the sustained rate.
    interval: u64,
    /// `burst × interval`: how far TAT may run ahead of now.
    tolerance: u64,
    burst: u32,
}

impl Gcra {
    fn new(requests: u32, per: Duration, burst: u32) -> Result<Gcra, ConfigError> {
        if requests == 0 {
            return Err(ConfigError::new(
                "rate",
                format!("0 requests per {per:?} — a limit must allow at least one request"),
            ));
        }
        if per.is_zero() {
            return Err(ConfigError::new(
                "rate",
                format!("{requests} requests per 0s — the period must be longer than zero"),
            ));
        }
        if burst == 0 {
            return Err(ConfigError::new(
                "burst",
                "0 — a burst must admit at least one request",
            ));
        }
        // Truncating to whole nanoseconds admits at most one extra request per ~10⁹ intervals.
        let interval = per.as_nanos() / u128::from(requests);
        let Ok(interval) = u64::try_from(interval) else {
            return Err(ConfigError::new(
                "rate",
                format!("{requests} per {per:?} is less than one request per 584 years"),
            ));
        };
        if interval == 0 {
            return Err(ConfigError::new(
                "rate",
                format!("{requests} requests per {per:?} is more than one per nanosecond"),
            ));
        }
        let Some(tolerance) = interval.checked_mul(u64::from(burst)) else {
            return Err(ConfigError::new(
                "burst",
                format!("{burst} at {requests} per {per:?} takes longer than 584 years to refill"),
            ));
        };
        Ok(Gcra {
            interval,
            tolerance,
            burst,
        })
    }

    /// Decides a request at `now` against `tat`; returns the new TAT when it is admitted.
    fn step(&self, tat: u64, now: u64) -> (Decision, Option<u64>) {
        // `max`: an idle limiter does not bank credit beyond the burst, and a `now` slightly
        // behind another thread's (clocks read on different cores) is harmless.
        let new_tat = tat.max(now).saturating_add(self.interval);
        let ahead = new_tat.saturating_sub(now);
        if ahead > self.tolerance {
            let refused = Decision {
                allowed: false,
                limit: self.burst,
                remaining: 0,
                reset_after: Duration::from_nanos(tat.saturating_sub(now)),
                retry_after: Some(Duration::from_nanos(ahead - self.tolerance)),
            };
            return (refused, None);
        }
        let remaining = (self.tolerance - ahead) / self.interval;
        let allowed = Decision {
            allowed: true,
            limit: self.burst,
            remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
            reset_after: Duration::from_nanos(ahead),
            retry_after: None,
        };
        (allowed, Some(new_tat))
    }
}

/// One rate limit shared by every request it covers (e.g. a whole service).
///
/// Thread safety: the state is one `AtomicU64` updated with compare-and-swap, so concurrent
/// checks never over-admit and never block each other.
#[derive(Debug)]
pub struct RateLimiter {
    gcra: Gcra,
    tat: AtomicU64,
}

impl RateLimiter {
    /// `requests` per `per`, admitting up to `burst` at once. Errors name the field: zero
    /// requests, a zero period, a zero burst, or a rate finer than one request per nanosecond.
    pub fn new(requests: u32, per: Duration, burst: u32) -> Result<RateLimiter, ConfigError> {
        Ok(RateLimiter {
            gcra: Gcra::new(requests, per, burst)?,
            tat: AtomicU64::new(0),
        })
    }

    /// Checks (and, when allowed, counts) one request at `now_nanos`.
    pub fn check(&self, now_nanos: u64) -> Decision {
        // Relaxed: TAT is the only shared state and CAS orders all updates to it.
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let (decision, next) = self.gcra.step(tat, now_nanos);
            let Some(next) = next else {
                return decision;
            };
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return decision,
                Err(current) => tat = current,
            }
        }
    }
}

const SHARDS: usize = 64;
/// A shard sweeps idle keys once at least this many keys, and at least half of its keys, arrived
/// since its last sweep — so a sweep's cost is spread over the inserts that made it necessary.
const SWEEP_MIN: usize = 64;

/// One rate limit per key — a user id, an API key, the bytes of a client IP.
///
/// Keys are hashed (64-bit foldhash, seeded per limiter so clients cannot aim collisions) into
/// 64 shards, each a mutex around a map from key hash to TAT. A check locks one shard for a
/// hash-map lookup; with 64 shards, 2–16 cores rarely meet on the same lock. Two keys whose
/// 64-bit hashes collide would share a budget; at a million keys the odds of any collision are
/// about 1 in 37 million.
///
/// Memory is bounded two ways:
///
/// * **Idle keys are forgotten.** A key whose TAT has passed has its whole burst back, exactly
///   like a key never seen, so dropping it changes no answer. Each shard sweeps such keys every
///   few inserts (amortised: a sweep visits at most twice as many keys as arrived since the last).
/// * **At most `max_keys` are tracked** (rounded up to a multiple of 64: each shard holds an
///   equal share). A new key arriving at a full shard first sweeps idle keys; if that frees too
///   little, the shard forgets its *least indebted* active keys — those closest to a full
///   refill — until an eighth of it is free. A forgotten key that comes back starts with a full
///   burst: when every tracked key is active, the cap costs some leniency for the keys that were
///   nearly refilled anyway, but a new client is never refused because others filled the table.
///
/// Hash maps keep their capacity, so once a shard has grown to its working size the request
/// path does not allocate.
pub struct KeyedRateLimiter {
    gcra: Gcra,
    hasher: foldhash::fast::RandomState,
    shard_cap: usize,
    shards: Box<[Padded<Mutex<Shard>>]>,
}

struct Shard {
    /// Key hash → TAT. The map rehashes the key hash: its top bits chose the shard, so they are
    /// the same for every key here and would make poor hash-table bits on their own.
    tats: HashMap<u64, u64, foldhash::fast::RandomState>,
    inserts: usize,
    /// TATs copied out to find the eviction threshold when the shard is full.
    scratch: Vec<u64>,
}

impl KeyedRateLimiter {
    /// `requests` per `per` for each key, admitting up to `burst` at once, tracking at most
    /// `max_keys` keys (see the type's docs for what happens when they are all active).
    pub fn new(
        requests: u32,
        per: Duration,
        burst: u32,
        max_keys: usize,
    ) -> Result<KeyedRateLimiter, ConfigError> {
        let gcra = Gcra::new(requests, per, burst)?;
        if max_keys == 0 {
            return Err(ConfigError::new(
                "max_keys",
                "0 — a keyed limiter must be able to track at least one key",
            ));
        }
        let shards = (0..SHARDS)
            .map(|_| {
                Padded(Mutex::new(Shard {
                    tats: HashMap::default(),
                    inserts: 0,
                    scratch: Vec::new(),
                }))
            })
            .collect();
        Ok(KeyedRateLimiter {
            gcra,
            hasher: foldhash::fast::RandomState::default(),
            shard_cap: max_keys.div_ceil(SHARDS),
            shards,
        })
    }

    /// Checks (and, when allowed, counts) one request for `key` at `now_nanos`.
    pub fn check(&self, key: &[u8], now_nanos: u64) -> Decision {
        let hash = self.hasher.hash_one(key);
        let mut shard = self.shard(hash);
        if let Some(tat) = shard.tats.get_mut(&hash) {
            let (decision, next) = self.gcra.step(*tat, now_nanos);
            if let Some(next) = next {
                *tat = next;
            }
            return decision;
        }
        // An unknown key has its full burst (burst ≥ 1), so this is always admitted.
        let (decision, next) = self.gcra.step(0, now_nanos);
        if let Some(next) = next {
            shard.insert(hash, next, now_nanos, self.shard_cap);
        }
        decision
    }

    /// Keys tracked right now, for metrics. Locks each shard in turn.
    pub fn keys(&self) -> usize {
        self.shards.iter().map(|s| lock(s).tats.len()).sum()
    }

    /// The most keys ever tracked: `max_keys` rounded up to a multiple of 64.
    pub fn max_keys(&self) -> usize {
        self.shard_cap.saturating_mul(SHARDS)
    }

    fn shard(&self, hash: u64) -> MutexGuard<'_, Shard> {
        // Top 6 bits: independent of the low bits the shard's own map rehashes anyway.
        lock(&self.shards[(hash >> 58) as usize])
    }
}

impl fmt::Debug for KeyedRateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRateLimiter")
            .field("gcra", &self.gcra)
            .field("keys", &self.keys())
            .field("max_keys", &self.max_keys())
            .finish()
    }
}

/// A poisoned shard holds plain numbers that no panic can leave half-written, so keep using it.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shard {
    fn insert(&mut self, hash: u64, tat: u64, now: u64, cap: usize) {
        if self.tats.len() >= cap {
            self.make_room(now, cap);
        } else if self.inserts >= SWEEP_MIN && 2 * self.inserts >= self.tats.len() {
            // At least half the keys arrived since the last sweep: the sweep's cost is covered.
            self.sweep_idle(now);
        }
        self.tats.insert(hash, tat);
        self.inserts += 1;
    }

    /// Drops keys whose TAT has passed: they have their full burst back, like unknown keys.
    fn sweep_idle(&mut self, now: u64) {
        self.tats.retain(|_, tat| *tat > now);
        self.inserts = 0;
    }

    /// Frees an eighth of a full shard (at least one slot): idle keys first, then the active
    /// keys with the least outstanding debt (TAT closest to now). One selection and one pass,
    /// O(shard), for cap/8 inserts, so the cost stays amortised O(1) per insert even when a
    /// flood of new keys keeps the shard full. `scratch` keeps its capacity between calls.
    fn make_room(&mut self, now: u64, cap: usize) {
        self.sweep_idle(now);
        let keep = cap - (cap / 8).max(1);
        let Some(excess) = self.tats.len().checked_sub(keep).filter(|&e| e > 0) else {
            return;
        };
        self.scratch.clear();
        self.scratch.extend(self.tats.values().copied());
        let threshold = *self.scratch.select_nth_unstable(excess - 1).1;
        let below = self.scratch.iter().filter(|&&t| t < threshold).count();
        // Remove everything below the threshold and just enough keys at it (ties are rare at
        // nanosecond resolution, but must not empty the shard).
        let mut at_threshold = excess - below;
        self.tats.retain(|_, tat| {
            if *tat == threshold && at_threshold > 0 {
                at_threshold -= 1;
                return false;
            }
            *tat >= threshold
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn burst_then_steady_rate() {
        let l = RateLimiter::new(10, Duration::from_secs(1), 3).unwrap();
        let first = l.check(0);
        assert_eq!((first.allowed, first.limit, first.remaining), (true, 3, 2));
        assert_eq!(first.reset_after, Duration::from_millis(100));
        assert_eq!(l.check(0).remaining, 1);
        let last = l.check(0);
        assert_eq!((last.allowed, last.remaining), (true, 0));
        assert_eq!(last.reset_after, Duration::from_millis(300));
        let refused = l.check(50 * MS);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, Some(Duration::from_millis(50)));
        assert_eq!(refused.reset_after, Duration::from_millis(250));
        assert!(l.check(100 * MS).allowed);
        assert!(!l.check(100 * MS).allowed);
    }

    #[test]
    fn idle_time_refills_only_up_to_the_burst() {
        let l = RateLimiter::new(10, Duration::from_secs(1), 2).unwrap();
        assert!(l.check(0).allowed);
        let later = 3_600_000 * MS;
        assert!(l.check(later).allowed);
        assert!(l.check(later).allowed);
        assert!(!l.check(later).allowed);
    }

    #[test]
    fn seconds_round_up() {
        let d = Decision {
            allowed: false,
            limit: 1,
            remaining: 0,
            reset_after: Duration::from_millis(1),
            retry_after: Some(Duration::from_millis(1001)),
        };
        assert_eq!(d.reset_secs(), 1);
        assert_eq!(d.retry_after_secs(), Some(2));
        let exact = Decision {
            reset_after: Duration::from_secs(3),
            ..d
        };
        assert_eq!(exact.reset_secs(), 3);
    }

    #[test]
    fn idle_keys_are_swept() {
        let l = KeyedRateLimiter::new(10, Duration::from_secs(1), 1, 100_000).unwrap();
        for i in 0..10_000u32 {
            l.check(&i.to_be_bytes(), 0);
        }
        assert_eq!(l.keys(), 10_000);
        // One interval later every key is refilled; new inserts sweep the old ones away.
        for i in 10_000..20_000u32 {
            l.check(&i.to_be_bytes(), 200 * MS);
        }
        assert!(l.keys() < 12_000, "{} keys tracked", l.keys());
    }

    #[test]
    fn cap_holds_with_every_key_active() {
        let l = KeyedRateLimiter::new(1, Duration::from_secs(60), 5, 640).unwrap();
        assert_eq!(l.max_keys(), 640);
        for i in 0..100_000u32 {
            assert!(l.check(&i.to_be_bytes(), u64::from(i)).allowed);
            assert!(l.keys() <= 640);
        }
        assert!(l.keys() > 500, "{} keys tracked", l.keys());
    }

    #[test]
    fn a_full_shard_forgets_the_least_indebted_key_first() {
        // One key per shard; two keys hashing to the same shard compete for its slot.
        let l = KeyedRateLimiter::new(1, Duration::from_secs(1), 10, 1).unwrap();
        let shard_of = |k: &[u8]| l.hasher.hash_one(k) >> 58;
        let a = b"a".as_slice();
        let b = (0u32..)
            .map(|i| i.to_be_bytes())
            .find(|k| shard_of(k) == shard_of(a))
            .unwrap();
        for _ in 0..10 {
            assert!(l.check(a, 0).allowed);
        }
        assert!(!l.check(a, 0).allowed);
        // `b` evicts `a` (the only key), so `a` comes back with a full burst: the documented
        // leniency of the cap.
        assert!(l.check(&b, 0).allowed);
        assert!(l.check(a, 0).allowed);
    }

    #[test]
    fn rejects_empty_limits() {
        let err = RateLimiter::new(0, Duration::from_secs(1), 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "rate: 0 requests per 1s — a limit must allow at least one request"
        );
        assert_eq!(err.field(), "rate");
        let err = RateLimiter::new(1, Duration::ZERO, 1).unwrap_err();
        assert_eq!(err.field(), "rate");
        let err = RateLimiter::new(1, Duration::from_secs(1), 0).unwrap_err();
        assert_eq!(err.field(), "burst");
        let err = RateLimiter::new(u32::MAX, Duration::from_secs(1), 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "rate: 4294967295 requests per 1s is more than one per nanosecond"
        );
        let err = RateLimiter::new(1, Duration::from_secs(u64::MAX / 4), 1).unwrap_err();
        assert_eq!(err.field(), "rate");
        let century = Duration::from_secs(100 * 365 * 86_400);
        let err = RateLimiter::new(1, century, 10).unwrap_err();
        assert_eq!(err.field(), "burst");
        let err = KeyedRateLimiter::new(1, Duration::from_secs(1), 1, 0).unwrap_err();
        assert_eq!(err.field(), "max_keys");
    }

    #[test]
    fn extreme_times_do_not_panic() {
        let century = Duration::from_secs(100 * 365 * 86_400);
        let l = RateLimiter::new(1, century, 1).unwrap();
        assert!(l.check(u64::MAX).allowed);
        assert!(!l.check(0).allowed);
        let k = KeyedRateLimiter::new(1, Duration::from_secs(1), 1, 1).unwrap();
        assert!(k.check(b"x", u64::MAX).allowed);
        k.check(b"x", 0);
        let unbounded = KeyedRateLimiter::new(1, Duration::from_secs(1), 1, usize::MAX).unwrap();
        assert_eq!(unbounded.max_keys(), usize::MAX);
    }
}
