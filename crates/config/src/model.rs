//! The validated model: every value parsed, every name resolved to an index, every regex
//! compiled. Code above this crate never sees a string it still has to check.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;

/// A whole, valid configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listeners: Vec<Listener>,
    pub admin: Option<Admin>,
    pub segments: Vec<Segment>,
    pub services: Vec<Service>,
    pub upstream: UpstreamSettings,
    pub traffic_control: TrafficControl,
    pub webhooks: Vec<Webhook>,
    pub audit: AuditRetention,
}

/// How much of the audit log the store keeps (`audit:`); older entries are pruned as new ones
/// are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditRetention {
    /// Entries kept per environment; 0 keeps every entry.
    pub max_entries: u64,
    /// Entries older than this (than the newest entry) are pruned; `None` keeps them by age.
    pub max_age: Option<Duration>,
}

impl Default for AuditRetention {
    fn default() -> Self {
        AuditRetention {
            max_entries: AuditRetention::DEFAULT_MAX_ENTRIES,
            max_age: None,
        }
    }
}

impl AuditRetention {
    pub const DEFAULT_MAX_ENTRIES: u64 = 100_000;
}

impl Config {
    /// The service called `name`, if any.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub bind: SocketAddr,
    pub tls: Option<Tls>,
    /// Peers whose `x-graylane-lane` header is believed. Everyone else's is stripped.
    pub trusted_hops: Vec<IpNet>,
    /// How long a client may take to send a request's headers (slowloris protection). An
    /// HTTP/1.1 keep-alive connection idle this long between requests is closed too.
    pub header_read_timeout: Duration,
    /// Open client connections the listener serves at once, across all workers; one more is
    /// accepted and closed at once.
    pub max_connections: usize,
    /// How request paths are normalised for matching and what the upstream receives.
    pub paths: PathPolicy,
    /// What happens to request header names with an underscore.
    pub headers_with_underscores: UnderscoreHeaders,
}

/// Request paths are always matched in their normal form (RFC 3986 §6.2.2: unreserved
/// characters decoded, dot segments removed, repeated slashes merged), so `//`, `/./`, `/x/../`
/// or `%63` cannot get around a path-scoped rule or limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PathPolicy {
    /// Send the upstream the path as the client wrote it instead of its normal form.
    pub forward_raw: bool,
    pub escaped_slashes: EscapedSlashes,
}

/// What to do with `%2F` and `%5C` (and a raw `\`) in a path: an upstream that decodes them
/// before routing sees another path than the one graylane matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EscapedSlashes {
    /// `400`: the safe default, as Spring's firewall does.
    #[default]
    Reject,
    /// Forward them as they are: for upstreams known not to decode them.
    Keep,
}

/// Header names with `_` are read as `-` by many frameworks (CGI, PHP, Django, Rails), so
/// `X_Graylane_Lane` would reach them as the lane header. Names that would normalise to one
/// graylane owns are always dropped; this decides about the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnderscoreHeaders {
    /// Dropped before the request goes upstream, as nginx does by default.
    #[default]
    Drop,
    /// The request is refused with `400`.
    Reject,
    /// Forwarded (except the look-alikes of graylane's own headers).
    Allow,
}

impl Listener {
    pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
}

#[derive(Debug, Clone)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Admin {
    pub bind: SocketAddr,
    /// API tokens, by the environment variable that holds each (`token_env` is one named
    /// `admin` with the admin role).
    pub tokens: Vec<ApiToken>,
    /// How long a client may take to send a request's headers, and to send its first request.
    pub header_read_timeout: Duration,
    /// A connection that neither sends nor receives a byte for this long is closed.
    pub idle_timeout: Duration,
    /// The most one request may take, its body included: a body trickled in faster than the
    /// idle timeout still ends here.
    pub request_timeout: Duration,
    /// Open connections served at once; one more is accepted and closed at once.
    pub max_connections: usize,
}

impl Admin {
    pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
    /// Operators, scrapers and dashboards: far fewer clients than the proxy listeners see.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    /// Who the token is: recorded as the author of what it does.
    pub name: String,
    pub env: String,
    pub role: Role,
}

/// What an admin API token may do; each role may do everything the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Read anything.
    Viewer,
    /// Also drive releases.
    Operator,
    /// Also change the configuration.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

/// Where release transitions are announced.
#[derive(Debug, Clone)]
pub struct Webhook {
    pub url: http::Uri,
    /// Per attempt.
    pub timeout: Duration,
    /// Attempts after the first.
    pub retries: u32,
}

impl Webhook {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
    pub const DEFAULT_RETRIES: u32 = 3;
}

#[derive(Debug, Clone)]
pub struct Segment {
    pub name: String,
    pub members: Vec<String>,
    pub source: SegmentSource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentSource {
    Static,
    File(PathBuf),
    /// A Redis set, read through a local cache refreshed in the background; `members` is empty
    /// until the first refresh.
    Redis {
        url: String,
        key: String,
        refresh: Duration,
        /// After this long without a successful refresh the segment counts as empty.
        max_staleness: Duration,
    },
}

#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle_per_endpoint: usize,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        UpstreamSettings {
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_idle_per_endpoint: 256,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    pub matcher: ServiceMatch,
    pub versions: Vec<Version>,
    /// Index into `versions` of the version that gets traffic nothing else claims.
    pub default_version: usize,
    pub load_balancing: LoadBalancing,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub release: Option<Release>,
}

impl Service {
    /// Index of the version called `name`.
    pub fn version_index(&self, name: &str) -> Option<usize> {
        self.versions.iter().position(|v| v.name == name)
    }
}

#[derive(Debug, Clone)]
pub struct ServiceMatch {
    /// Lower-case host without port; `None` matches any host.
    pub host: Option<String>,
    pub path_prefix: String,
    /// Empty means every method.
    pub methods: Vec<http::Method>,
}

#[derive(Debug, Clone)]
pub struct Version {
    pub name: String,
    /// Where the version's requests go. For a version that follows the registry this starts
    /// empty and is filled in at run time ([`crate::resolve_registry`]).
    pub endpoints: Vec<SocketAddr>,
    pub tag: Option<String>,
    /// `endpoints: { registry: NAME, labels: {...} }`: the endpoints are the registered
    /// instances this selects.
    pub registry: Option<RegistrySelector>,
}

/// Selects instances of a service in the registry: those registered under `service` whose
/// labels include every one of `labels` (the same value for each key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrySelector {
    pub service: String,
    pub labels: BTreeMap<String, String>,
}

impl RegistrySelector {
    /// Whether an instance with `labels` is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels
            .iter()
            .all(|(k, v)| labels.get(k).is_some_and(|have| have == v))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadBalancing {
    RoundRobin,
    LeastRequest,
}

/// A traffic share in thousandths of a percent: `Weight(5_000)` is 5%, `Weight(100_000)` is all.
/// It is also the bucket threshold: a key whose bucket is below it goes to the candidate.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct Weight(u32);

impl Weight {
    pub const ZERO: Weight = Weight(0);
    pub const FULL: Weight = Weight(100_000);

    /// A weight from a percentage; `None` outside 0–100 or finer than 0.001%.
    pub fn from_percent(percent: f64) -> Option<Weight> {
        if !(0.0..=100.0).contains(&percent) {
            return None;
        }
        let scaled = percent * 1000.0;
        let rounded = scaled.round();
        if (scaled - rounded).abs() > 1e-6 {
            return None;
        }
        Some(Weight(rounded as u32))
    }

    /// A weight from thousandths of a percent, clamped to 100%.
    pub fn from_milli_percent(milli: u32) -> Weight {
        Weight(milli.min(100_000))
    }

    pub fn milli_percent(self) -> u32 {
        self.0
    }

    pub fn percent(self) -> f64 {
        f64::from(self.0) / 1000.0
    }
}

impl std::fmt::Display for Weight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}%", self.percent())
    }
}

/// A release. `baseline` is the version traffic returns to when the release stops (a blue-green
/// release's `active`, an experiment's first variant); `candidate` is the one being tried (a
/// blue-green release's `preview`, an experiment's second variant).
#[derive(Debug, Clone)]
pub struct Release {
    pub strategy: Strategy,
    pub baseline: usize,
    pub candidate: usize,
    /// Any matching rule sends the request to the candidate whatever the weight.
    pub force: Vec<Rule>,
    pub bucket_by: KeySpec,
    /// `bucket_by` is read only from a listener's `trusted_hops`; anyone else's request counts
    /// as lacking the key.
    pub bucket_by_trusted_only: bool,
    /// Mixed into the bucketing hash; defaults to the candidate's name so each new candidate
    /// draws a fresh set of users.
    pub salt: String,
    pub sticky: Option<Sticky>,
    /// Canary steps; empty for the other strategies.
    pub steps: Vec<Step>,
    pub analysis: Option<Analysis>,
    /// A failed analysis pauses the release instead of rolling it back (for changes that
    /// cannot be reversed, such as a schema migration).
    pub skip_rollback: bool,
}

impl Release {
    /// The weight in effect when a release starts: its first step's.
    pub fn initial_weight(&self) -> Weight {
        self.steps.first().map_or(Weight::ZERO, |s| s.weight)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    Canary,
    BlueGreen {
        /// How long the previous active version stays routable after a promotion, so a
        /// rollback is an instant switch back.
        keep_previous: Duration,
    },
    Experiment {
        variants: Vec<Variant>,
    },
}

impl Strategy {
    pub const DEFAULT_KEEP_PREVIOUS: Duration = Duration::from_secs(600);

    pub fn as_str(&self) -> &'static str {
        match self {
            Strategy::Canary => "canary",
            Strategy::BlueGreen { .. } => "blue_green",
            Strategy::Experiment { .. } => "experiment",
        }
    }
}

/// One arm of an experiment: a version and its share of the bucketed traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variant {
    pub name: String,
    pub version: usize,
    pub weight: Weight,
}

#[derive(Debug, Clone)]
pub struct Sticky {
    pub cookie: String,
    pub max_age: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub weight: Weight,
    pub pause: Pause,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    /// No pause: the next step follows at once.
    None,
    /// Wait for a person to promote.
    Manual,
    For(Duration),
}

#[derive(Debug, Clone)]
pub struct Analysis {
    /// How often the checks are judged.
    pub interval: Duration,
    /// Requests each of candidate and baseline needs at the step before a check can pass or
    /// fail; below it the step is held.
    pub min_requests: u64,
    pub checks: Vec<Check>,
    pub failure_limit: u32,
    pub failure_mode: FailureMode,
    /// Consecutive passing intervals at a step that promote to the next step.
    pub success_needed: u32,
    pub on_failure: OnFailure,
    /// Without enough data for this long at a step, the release pauses and says why.
    pub max_wait_without_data: Option<Duration>,
    /// Confidence of every interval a verdict rests on, e.g. 0.95.
    pub confidence: f64,
    /// Response statuses that count as errors (`5xx` by default); a request that got no
    /// upstream response always counts.
    pub error_codes: Vec<StatusRange>,
    /// Where `query` checks are sent.
    pub prometheus_url: Option<http::Uri>,
}

/// Statuses from `from` to `to`, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRange {
    pub from: u16,
    pub to: u16,
}

impl StatusRange {
    pub fn contains(self, status: u16) -> bool {
        (self.from..=self.to).contains(&status)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureMode {
    /// `failure_limit` failing intervals in a row.
    Consecutive,
    /// `failure_limit` failing intervals at the step in all.
    Total,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    ErrorRate {
        max: Option<f64>,
        max_increase: Option<f64>,
    },
    Latency {
        /// The percentile, e.g. 99.0 for `latency_p99`.
        percentile: f64,
        max_ms: Option<f64>,
        max_ratio: Option<f64>,
    },
    Throughput {
        min_rps: f64,
    },
    /// A PromQL query whose value must stay within bounds; `{{service}}`, `{{baseline}}` and
    /// `{{candidate}}` are replaced before it is sent.
    Query {
        name: String,
        query: String,
        max: Option<f64>,
        min: Option<f64>,
    },
    /// Business events per exposed user, candidate vs baseline.
    EventRate {
        event: String,
        min_change: f64,
    },
    /// The mean value of business events, candidate vs baseline.
    EventMean {
        event: String,
        min_change: f64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    Rollback,
    Pause,
}

/// Where a request's key comes from, written `header:NAME`, `cookie:NAME`, `query:NAME` or `ip`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySpec {
    Header(HeaderName),
    Cookie(String),
    Query(String),
    ClientIp,
}

impl std::fmt::Display for KeySpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySpec::Header(h) => write!(f, "header:{h}"),
            KeySpec::Cookie(c) => write!(f, "cookie:{c}"),
            KeySpec::Query(q) => write!(f, "query:{q}"),
            KeySpec::ClientIp => f.write_str("ip"),
        }
    }
}

/// A validated routing rule.
#[derive(Debug, Clone)]
pub enum Rule {
    Header {
        name: HeaderName,
        matcher: ValueMatch,
    },
    Cookie {
        name: String,
        matcher: ValueMatch,
    },
    Query {
        name: String,
        matcher: ValueMatch,
    },
    Path(PathMatch),
    Method(Vec<http::Method>),
    ClientIp(Vec<IpNet>),
    Semver {
        header: HeaderName,
        range: semver::VersionReq,
        /// The range as the user wrote it, for explanations.
        written: String,
    },
    Device(Vec<DeviceClass>),
    Country {
        header: HeaderName,
        /// Upper-case ISO 3166-1 alpha-2 codes.
        codes: Vec<String>,
    },
    /// Active from `from` (inclusive) until `until` (exclusive), as Unix milliseconds.
    Time {
        from: Option<i64>,
        until: Option<i64>,
    },
    Segment {
        /// Index into [`Config::segments`].
        segment: usize,
        key: KeySpec,
    },
    All(Vec<Rule>),
    Any(Vec<Rule>),
    Not(Box<Rule>),
    /// The rule (one reading a header, written with `trusted_only: true`) matches only a
    /// request from a listener's `trusted_hops`: anyone else could send that header.
    TrustedOnly(Box<Rule>),
}

/// How a header, cookie or query value is tested.
#[derive(Debug, Clone)]
pub enum ValueMatch {
    Equals(String),
    In(Vec<String>),
    Prefix(String),
    Glob(String),
    Regex(regex::Regex),
    Exists,
    Absent,
}

#[derive(Debug, Clone)]
pub enum PathMatch {
    Equals(String),
    Prefix(String),
    Glob(String),
    Regex(regex::Regex),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceClass {
    Mobile,
    Desktop,
    Bot,
}

impl DeviceClass {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceClass::Mobile => "mobile",
            DeviceClass::Desktop => "desktop",
            DeviceClass::Bot => "bot",
        }
    }
}

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
