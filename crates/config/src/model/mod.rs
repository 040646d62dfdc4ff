//! The validated model: every value parsed, every name resolved to an index, every regex
//! compiled. Code above this crate never sees a string it still has to check.
//!
//! This file holds the configuration's frame (listeners, admin, segments, services and their
//! versions); `release.rs` the releases and their analysis, `rules.rs` the routing rules, and
//! `traffic.rs` the traffic-control settings. Every type is re-exported here, so users name
//! them `model::Release`, `model::Rule`, ...

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

mod release;
mod rules;
mod traffic;

pub use release::{
    Analysis, Check, FailureMode, OnFailure, Pause, Release, StatusRange, Step, Sticky, Strategy,
    Variant, Weight,
};
pub use rules::{DeviceClass, KeySpec, PathMatch, Rule, ValueMatch};
pub use traffic::{
    BreakerWindow, CircuitBreaker, ConcurrencyLimit, FailureKinds, Fallback, HealthCheck,
    LimitBackend, OnRedisError, OutlierDetection, RateLimit, Retry, StaticResponse, TrafficControl,
};

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
