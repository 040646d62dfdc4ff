//! Traffic control as the request path applies it: rate limits (`429`), per-version circuit
//! breakers, concurrency limits and fallbacks, retries within a budget, and the endpoints that
//! outlier ejection and health checks leave in rotation.
//!
//! The policies come from `traffic_control` and are compiled into each [`Snapshot`]; their
//! *state* (tokens, breaker windows, ejections) lives in [`ControlState`], which the gateway
//! keeps across snapshots, so a weight change or a reload that leaves a policy as it was keeps
//! its state.
//!
//! [`Snapshot`]: crate::snapshot::Snapshot

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use graylane_config::{
    Config, FailureKinds, Fallback, HealthCheck, KeySpec, LimitBackend, Segment, SegmentSource,
    StaticResponse, TrafficControl,
};
use graylane_redis::{Client, GlobalLimiter, GlobalLimiterConfig, OnError, RedisSegment};
use graylane_traffic::breaker::{BreakerConfig, CircuitBreaker, Window};
use graylane_traffic::concurrency::ConcurrencyLimit;
use graylane_traffic::health::HealthState;
use graylane_traffic::outlier::{OutlierConfig, OutlierDetector};
use graylane_traffic::rate::{KeyedRateLimiter, RateLimiter};
use graylane_traffic::retry::RetryBudget;

use crate::metrics::UpstreamErrorKind;

/// Keys tracked per keyed limit before idle ones are evicted.
const MAX_KEYS: usize = 100_000;

/// The monotonic clock the traffic-control state runs on: nanoseconds since the process's
/// first use of it.
pub fn now_nanos() -> u64 {
    nanos_at(Instant::now())
}

/// [`now_nanos`] at an instant the caller already read, so the request path reads the clock
/// once for several uses.
pub fn nanos_at(t: Instant) -> u64 {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    u64::try_from(t.saturating_duration_since(origin).as_nanos()).unwrap_or(u64::MAX)
}

/// Stateful parts of the policies, by what they were built from; the gateway keeps one for its
/// whole life so that state survives snapshot rebuilds.
#[derive(Default)]
pub struct ControlState {
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

/// A thread running a Tokio runtime for the Redis integrations (connections, segment
/// refreshes), so they work whatever thread builds a snapshot. Stops when dropped.
struct RedisRuntime {
    handle: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl RedisRuntime {
    fn start() -> std::io::Result<RedisRuntime> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("graylane-redis".to_string())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        Ok(RedisRuntime {
            handle,
            _stop: stop,
        })
    }
}

#[derive(Clone)]
enum Part {
    Limiter(Arc<Limiter>),
    Breaker(CircuitBreaker),
    Concurrency(Arc<ConcurrencyLimit>),
    Budget(Arc<RetryBudget>),
    Outlier(Arc<OutlierDetector>),
    Health(Arc<HealthState>),
    Segment(Arc<RedisSegment>),
}

impl ControlState {
    /// State whose Redis segments keep their members in files under `dir`.
    pub fn with_segment_cache(dir: Option<PathBuf>) -> ControlState {
        ControlState {
            segment_cache: dir,
            ..ControlState::default()
        }
    }

    /// The part built from `key`, created with `make` the first time (or after a change).
    fn part(&self, key: String, make: impl FnOnce() -> Option<Part>) -> Option<Part> {
        let mut parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = parts.get(&key) {
            return Some(p.clone());
        }
        let p = make()?;
        parts.insert(key, p.clone());
        Some(p)
    }

    /// Runs `make` with the Redis runtime entered (Redis clients must be created in one).
    fn in_redis<T>(&self, make: impl FnOnce() -> T) -> Option<T> {
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
    fn redis_errors(&self) -> u64 {
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
    fn stale_segments<'c>(&self, config: &'c Config) -> Vec<(&'c str, bool)> {
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

/// A rate limit as the request path checks it.
pub enum Limiter {
    Whole(RateLimiter),
    PerKey(KeyedRateLimiter),
    /// Shared by every gateway through Redis.
    Global(Arc<GlobalLimiter>),
}

/// The answer of any limiter, as the `429` needs it.
pub struct LimitAnswer {
    pub allowed: bool,
    pub remaining: u32,
    pub reset_secs: u64,
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

pub struct LimitRoute {
    pub path_prefix: Option<Box<str>>,
    pub key: Option<KeySpec>,
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

/// A service's policies.
#[derive(Default)]
pub struct ServiceControl {
    pub limits: Vec<LimitRoute>,
    /// Some limit is shared through Redis, so checking the limits may wait.
    pub limits_global: bool,
    pub retry: Option<RetryPolicy>,
}

pub struct RetryPolicy {
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub retry_on: FailureKinds,
    pub budget: Arc<RetryBudget>,
}

/// A version's policies.
#[derive(Default)]
pub struct VersionControl {
    pub breaker: Option<CircuitBreaker>,
    pub failure_on: FailureKinds,
    pub fallback: Option<FallbackRoute>,
    /// See [`graylane_config::CircuitBreaker::fallback_non_idempotent`].
    pub fallback_non_idempotent: bool,
    pub concurrency: Option<Arc<ConcurrencyLimit>>,
    pub outlier: Option<Arc<OutlierDetector>>,
    pub health: Option<Arc<HealthState>>,
    /// How the health prober checks this version's endpoints.
    pub probe: Option<HealthCheck>,
}

pub enum FallbackRoute {
    Version(usize),
    Static(StaticResponse),
}

impl VersionControl {
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
    Status(u16),
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
                | UpstreamErrorKind::ConnectTimeout,
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
            )
        )
    }
}

/// Compiles the policies of `config`: per service, then per version of each service.
pub fn compile(
    config: &Config,
    state: &ControlState,
) -> (Vec<ServiceControl>, Vec<Vec<VersionControl>>) {
    let tc: &TrafficControl = &config.traffic_control;
    let mut used = Vec::new();
    let mut services: Vec<ServiceControl> = config
        .services
        .iter()
        .map(|_| ServiceControl::default())
        .collect();
    let mut versions: Vec<Vec<VersionControl>> = config
        .services
        .iter()
        .map(|s| {
            s.versions
                .iter()
                .map(|_| VersionControl::default())
                .collect()
        })
        .collect();
    let name = |s: usize| config.services[s].name.as_str();
    let vname = |s: usize, v: usize| config.services[s].versions[v].name.as_str();

    // State is keyed by names and the settings that shape it, never by positions in the file:
    // adding a service or a limit before this one, or editing a fallback page, keeps every
    // limiter's and breaker's state (and its counters) as it was.
    let mut limit_ids: Vec<String> = Vec::new();
    for rl in &tc.rate_limits {
        let route = rl.path_prefix.as_deref().unwrap_or("*");
        let per_key = rl
            .key
            .as_ref()
            .map_or_else(|| "-".to_string(), |k| k.to_string());
        let id = format!("{}:{route}:{per_key}", name(rl.service));
        // Two limits alike in all this are told apart by their order among themselves.
        let nth = limit_ids.iter().filter(|other| **other == id).count();
        limit_ids.push(id.clone());
        let id = if nth == 0 { id } else { format!("{id}#{nth}") };
        let key = format!(
            "limit:{id}:{}/{:?}:{}:{:?}",
            rl.requests, rl.per, rl.burst, rl.backend
        );
        used.push(key.clone());
        let part = state.part(key, || {
            if let LimitBackend::Redis {
                url,
                timeout,
                on_error,
            } = &rl.backend
            {
                let config = GlobalLimiterConfig {
                    key_prefix: format!("graylane:ratelimit:{id}:"),
                    requests: rl.requests,
                    per: rl.per,
                    // Redis's burst is on top of the steady rate; the configuration's is the
                    // whole bucket.
                    burst: rl.burst.saturating_sub(1),
                    timeout: *timeout,
                    on_error: match on_error {
                        graylane_config::OnRedisError::Allow => OnError::Allow,
                        graylane_config::OnRedisError::Deny => OnError::Deny,
                    },
                };
                let made = state.in_redis(|| {
                    Client::open(url).and_then(|client| GlobalLimiter::new(client, config))
                })?;
                return match made {
                    Ok(g) => Some(Part::Limiter(Arc::new(Limiter::Global(Arc::new(g))))),
                    Err(e) => {
                        tracing::error!(service = name(rl.service), "rate limit not applied: {e}");
                        None
                    }
                };
            }
            let limiter = match rl.key {
                Some(_) => KeyedRateLimiter::new(rl.requests, rl.per, rl.burst, MAX_KEYS)
                    .map(Limiter::PerKey),
                None => RateLimiter::new(rl.requests, rl.per, rl.burst).map(Limiter::Whole),
            };
            match limiter {
                Ok(l) => Some(Part::Limiter(Arc::new(l))),
                Err(e) => {
                    tracing::error!(service = name(rl.service), "rate limit not applied: {e}");
                    None
                }
            }
        });
        if let Some(Part::Limiter(limiter)) = part {
            let per_key = rl
                .key
                .as_ref()
                .map_or_else(String::new, |k| format!(" per {k}"));
            let service = &mut services[rl.service];
            service.limits_global |= matches!(*limiter, Limiter::Global(_));
            let refill = rl.per.as_secs_f64() * f64::from(rl.burst) / f64::from(rl.requests);
            let policy = format!("{};w={}", rl.burst, refill.ceil().max(1.0) as u64);
            service.limits.push(LimitRoute {
                path_prefix: rl.path_prefix.as_deref().map(Into::into),
                key: rl.key.clone(),
                limiter,
                burst: rl.burst,
                policy: http::HeaderValue::try_from(policy)
                    .unwrap_or_else(|_| http::HeaderValue::from_static("0")),
                headers_on_allowed: rl.headers_on_allowed,
                key_trusted_only: rl.key_trusted_only,
                describe: format!(
                    "{} requests per {}{per_key} (burst {})",
                    rl.requests,
                    humantime::format_duration(rl.per),
                    rl.burst
                )
                .into(),
            });
        }
    }

    for cb in &tc.circuit_breakers {
        let v = &mut versions[cb.service][cb.version];
        v.failure_on = cb.failure_on.clone();
        v.fallback = cb.fallback.as_ref().map(|f| match f {
            Fallback::Version(i) => FallbackRoute::Version(*i),
            Fallback::Static(r) => FallbackRoute::Static(r.clone()),
        });
        v.fallback_non_idempotent = cb.fallback_non_idempotent;
        let key = format!(
            "breaker:{}:{}:{:?}:{}:{}:{:?}:{}:{:?}:{}",
            name(cb.service),
            vname(cb.service, cb.version),
            cb.window,
            cb.minimum_calls,
            cb.failure_rate_threshold,
            cb.slow_call_duration,
            cb.slow_call_rate_threshold,
            cb.open_for,
            cb.half_open_calls,
        );
        used.push(key.clone());
        let config = BreakerConfig {
            window: match cb.window {
                graylane_config::BreakerWindow::Count(n) => Window::Count(n),
                graylane_config::BreakerWindow::Time(d) => Window::Time(d),
            },
            minimum_calls: cb.minimum_calls,
            failure_rate_threshold: cb.failure_rate_threshold,
            slow_call_duration: cb.slow_call_duration,
            slow_call_rate_threshold: cb.slow_call_rate_threshold,
            open_for: cb.open_for,
            half_open_calls: cb.half_open_calls,
        };
        let part = state.part(key, || match CircuitBreaker::new(config) {
            Ok(b) => Some(Part::Breaker(b)),
            Err(e) => {
                tracing::error!(
                    service = name(cb.service),
                    "circuit breaker not applied: {e}"
                );
                None
            }
        });
        if let Some(Part::Breaker(b)) = part {
            v.breaker = Some(b);
        }
    }

    for cl in &tc.concurrency_limits {
        let targets: Vec<usize> = match cl.version {
            Some(v) => vec![v],
            None => (0..config.services[cl.service].versions.len()).collect(),
        };
        for v in targets {
            let key = format!(
                "concurrency:{}:{}:{}",
                name(cl.service),
                vname(cl.service, v),
                cl.max
            );
            used.push(key.clone());
            if let Some(Part::Concurrency(c)) = state.part(key, || {
                ConcurrencyLimit::new(cl.max)
                    .ok()
                    .map(|c| Part::Concurrency(Arc::new(c)))
            }) {
                versions[cl.service][v].concurrency = Some(c);
            }
        }
    }

    for r in &tc.retries {
        let key = format!(
            "budget:{}:{}:{}",
            name(r.service),
            r.budget,
            r.min_concurrent
        );
        used.push(key.clone());
        if let Some(Part::Budget(budget)) = state.part(key, || {
            RetryBudget::new(r.budget, r.min_concurrent)
                .ok()
                .map(|b| Part::Budget(Arc::new(b)))
        }) {
            services[r.service].retry = Some(RetryPolicy {
                attempts: r.attempts,
                per_try_timeout: r.per_try_timeout,
                retry_on: r.retry_on.clone(),
                budget,
            });
        }
    }

    for od in &tc.outlier_detection {
        let targets: Vec<usize> = match od.version {
            Some(v) => vec![v],
            None => (0..config.services[od.service].versions.len()).collect(),
        };
        for v in targets {
            let endpoints = &config.services[od.service].versions[v].endpoints;
            // Keyed on the addresses, not their count: when registry instances come and go,
            // an ejection must not pass to the instance that took a departed one's index.
            let key = format!(
                "outlier:{}:{}:{endpoints:?}:{}:{:?}:{:?}:{}",
                name(od.service),
                vname(od.service, v),
                od.consecutive_failures,
                od.base_ejection,
                od.max_ejection,
                od.max_ejection_percent,
            );
            used.push(key.clone());
            let detector = OutlierConfig {
                consecutive_failures: od.consecutive_failures,
                base_ejection: od.base_ejection,
                max_ejection: od.max_ejection,
                max_ejection_percent: od.max_ejection_percent,
            };
            if let Some(Part::Outlier(o)) = state.part(key, || {
                OutlierDetector::new(endpoints.len(), detector)
                    .ok()
                    .map(|o| Part::Outlier(Arc::new(o)))
            }) {
                versions[od.service][v].outlier = Some(o);
            }
        }
    }

    for hc in &tc.health_checks {
        let targets: Vec<usize> = match hc.version {
            Some(v) => vec![v],
            None => (0..config.services[hc.service].versions.len()).collect(),
        };
        for v in targets {
            let endpoints = config.services[hc.service].versions[v].endpoints.len();
            let key = format!(
                "health:{}:{}:{:?}:{}:{:?}:{:?}:{}:{}:{:?}",
                name(hc.service),
                vname(hc.service, v),
                config.services[hc.service].versions[v].endpoints,
                hc.path,
                hc.interval,
                hc.timeout,
                hc.healthy_threshold,
                hc.unhealthy_threshold,
                hc.expect,
            );
            used.push(key.clone());
            if let Some(Part::Health(h)) = state.part(key, || {
                HealthState::new(endpoints, hc.healthy_threshold, hc.unhealthy_threshold)
                    .ok()
                    .map(|h| Part::Health(Arc::new(h)))
            }) {
                versions[hc.service][v].health = Some(h);
                versions[hc.service][v].probe = Some(hc.clone());
            }
        }
    }
    state.retain_for(&used);
    (services, versions)
}

/// Exports traffic-control state at scrape time: every version's circuit breaker
/// (`graylane_circuit_state{service,version,state}`, 1 for the current state, and
/// `graylane_circuit_transitions_total{service,version}`), Redis errors of the global rate
/// limits (`graylane_ratelimit_redis_errors_total`) and stale Redis segments
/// (`graylane_segment_stale{segment}`).
pub struct BreakerCollector(
    pub Arc<arc_swap::ArcSwap<crate::snapshot::Snapshot>>,
    pub Arc<ControlState>,
);

impl std::fmt::Debug for BreakerCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BreakerCollector")
    }
}

impl prometheus_client::collector::Collector for BreakerCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use graylane_traffic::breaker::State;
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::MetricType;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let snapshot = self.0.load_full();
        let breakers: Vec<(&str, &str, &CircuitBreaker)> = snapshot
            .services
            .iter()
            .flat_map(|s| {
                s.versions.iter().filter_map(move |v| {
                    Some((
                        s.name.as_str(),
                        v.name.as_str(),
                        v.control.breaker.as_ref()?,
                    ))
                })
            })
            .collect();
        {
            let mut state = encoder.encode_descriptor(
                "graylane_circuit_state",
                "1 for a version's current circuit-breaker state, 0 for the others",
                None,
                MetricType::Gauge,
            )?;
            for (service, version, b) in &breakers {
                let now = b.state();
                for s in [State::Closed, State::Open, State::HalfOpen] {
                    let labels = [
                        ("service", *service),
                        ("version", *version),
                        ("state", s.as_str()),
                    ];
                    ConstGauge::new(i64::from(now == s)).encode(state.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut transitions = encoder.encode_descriptor(
                "graylane_circuit_transitions",
                "Circuit-breaker state changes of a version",
                None,
                MetricType::Counter,
            )?;
            for (service, version, b) in &breakers {
                let labels = [("service", *service), ("version", *version)];
                ConstCounter::new(b.transitions()).encode(transitions.encode_family(&labels)?)?;
            }
        }
        let errors = self.1.redis_errors();
        let stale = self.1.stale_segments(&snapshot.config);
        let redis_errors = encoder.encode_descriptor(
            "graylane_ratelimit_redis_errors",
            "Global rate-limit checks Redis could not answer (on_redis_error applied)",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(errors).encode(redis_errors)?;
        let mut stale_gauge = encoder.encode_descriptor(
            "graylane_segment_stale",
            "1 while a Redis segment's members are not known to be current: not read since the start (the members cached in the data dir are served), or not for max_staleness (it counts as empty)",
            None,
            MetricType::Gauge,
        )?;
        for (name, is_stale) in &stale {
            let labels = [("segment", *name)];
            ConstGauge::new(i64::from(*is_stale)).encode(stale_gauge.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
