//! The state of the traffic-control policies (limiter tokens, breaker windows, ejections,
//! Redis segment mirrors), kept by what each was built from so it outlives snapshot rebuilds.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use graylane_config::{Config, Segment, SegmentSource};
use graylane_redis::{Client, RedisSegment};
use graylane_traffic::breaker::CircuitBreaker;
use graylane_traffic::concurrency::ConcurrencyLimit;
use graylane_traffic::health::HealthState;
use graylane_traffic::outlier::OutlierDetector;
use graylane_traffic::retry::RetryBudget;

use super::limits::Limiter;
use super::runtime::RedisRuntime;

/// Stateful parts of the policies, by what they were built from; the gateway keeps one for its
/// whole life so that state survives snapshot rebuilds.
#[derive(Default)]
pub struct GuardState {
    parts: Mutex<HashMap<String, Part>>,
    /// Where Redis clients run their connections and refreshers; started on first use.
    redis: Mutex<Option<RedisRuntime>>,
    /// Where Redis segments keep the members they last read, for a restart during an outage.
    segment_cache: Option<PathBuf>,
}

/// The cache file of the Redis set `key` at `url`: readable, and unique per set (a hash of both,
/// since keys hold characters a file name cannot).
fn cache_file_name(url: &str, key: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = foldhash::fast::FixedState::with_seed(0).build_hasher();
    h.write(url.as_bytes());
    h.write_u8(0);
    h.write(key.as_bytes());
    let readable: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    format!("{readable}-{:016x}.members", h.finish())
}

#[derive(Clone)]
pub(super) enum Part {
    Limiter(Arc<Limiter>),
    Breaker(CircuitBreaker),
    Concurrency(Arc<ConcurrencyLimit>),
    Budget(Arc<RetryBudget>),
    Outlier(Arc<OutlierDetector>),
    Health(Arc<HealthState>),
    Segment(Arc<RedisSegment>),
}

impl GuardState {
    /// State whose Redis segments keep their members in files under `dir`.
    pub fn with_segment_cache(dir: Option<PathBuf>) -> GuardState {
        GuardState {
            segment_cache: dir,
            ..GuardState::default()
        }
    }

    /// The part built from `key`, created with `make` the first time (or after a change).
    pub(super) fn part(&self, key: String, make: impl FnOnce() -> Option<Part>) -> Option<Part> {
        let mut parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = parts.get(&key) {
            return Some(p.clone());
        }
        let p = make()?;
        parts.insert(key, p.clone());
        Some(p)
    }

    /// Runs `make` with the Redis runtime entered (Redis clients must be created in one).
    pub(super) fn in_redis<T>(&self, make: impl FnOnce() -> T) -> Option<T> {
        let mut redis = self.redis.lock().unwrap_or_else(|e| e.into_inner());
        if redis.is_none() {
            match RedisRuntime::start() {
                Ok(r) => *redis = Some(r),
                Err(e) => {
                    tracing::error!("cannot start the Redis runtime: {e}");
                    return None;
                }
            }
        }
        let _entered = redis.as_ref()?.handle.enter();
        Some(make())
    }

    /// The mirror of `segment` when its members live in Redis (started the first time it is
    /// asked for); `None` for a segment listed in the configuration, or when Redis cannot be
    /// set up.
    pub fn mirror_of(&self, segment: &Segment) -> Option<Arc<RedisSegment>> {
        let SegmentSource::Redis {
            url,
            key,
            refresh,
            max_staleness,
        } = &segment.source
        else {
            return None;
        };
        self.segment(url, key, *refresh, *max_staleness)
    }

    fn segment(
        &self,
        url: &str,
        key: &str,
        refresh: Duration,
        max_staleness: Duration,
    ) -> Option<Arc<RedisSegment>> {
        let part = self.part(segment_id(url, key, refresh, max_staleness), || {
            self.in_redis(|| match Client::open(url) {
                Ok(client) => Some(Part::Segment(Arc::new(match &self.segment_cache {
                    Some(dir) => RedisSegment::start_cached(
                        client,
                        key,
                        refresh,
                        max_staleness,
                        dir.join(cache_file_name(url, key)),
                    ),
                    None => RedisSegment::start(client, key, refresh, max_staleness),
                }))),
                Err(e) => {
                    tracing::error!("Redis segment `{key}` unavailable: {e}");
                    None
                }
            })
            .flatten()
        });
        match part {
            Some(Part::Segment(s)) => Some(s),
            _ => None,
        }
    }

    /// Forgets the parts no policy of `config` uses any more.
    pub fn retain_for(&self, keys: &[String]) {
        let mut parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        parts.retain(|k, _| k.starts_with("segment:") || keys.contains(k));
    }

    /// Redis errors of the global limits, for metrics.
    pub(super) fn redis_errors(&self) -> u64 {
        let parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        parts
            .values()
            .map(|part| match part {
                Part::Limiter(l) => match &**l {
                    Limiter::Global(g) => g.redis_errors(),
                    _ => 0,
                },
                _ => 0,
            })
            .sum()
    }

    /// Whether each Redis segment of `config` that has a mirror is stale, by segment name (the
    /// mirror's own key holds the URL, password included).
    pub(super) fn stale_segments<'c>(&self, config: &'c Config) -> Vec<(&'c str, bool)> {
        let parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        config
            .segments
            .iter()
            .filter_map(|segment| {
                let SegmentSource::Redis {
                    url,
                    key,
                    refresh,
                    max_staleness,
                } = &segment.source
                else {
                    return None;
                };
                match parts.get(&segment_id(url, key, *refresh, *max_staleness))? {
                    Part::Segment(s) => Some((segment.name.as_str(), s.is_stale())),
                    _ => None,
                }
            })
            .collect()
    }
}

/// The key of a Redis segment's mirror: segments with the same source share one.
fn segment_id(url: &str, key: &str, refresh: Duration, max_staleness: Duration) -> String {
    format!("segment:{url}:{key}:{refresh:?}:{max_staleness:?}")
}
