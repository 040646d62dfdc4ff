//! The validated model: every value parsed, every name resolved to an index, every regex
//! compiled. Code above this crate never sees a string it still has to check.
//!
//! This file holds the configuration's frame (listeners, admin, segments, services and their
//! versions); `release.rs` the releases and their analysis, `rules.rs` the routing rules,
//! `flags.rs` the feature flags, and `traffic.rs` the traffic-control settings. Every type is re-exported here, so users name
//! them `model::Release`, `model::Rule`, ...

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

mod access_log;
mod dns;
mod flags;
mod release;
mod rules;
mod telemetry;
mod traffic;
mod upstream;

pub use access_log::{AccessLog, AccessLogFormat, AccessLogPath};
pub use dns::{DnsName, DnsSettings, VersionDns};
pub use flags::{Flag, FlagRule, FlagShare, FlagVariant};

pub use release::{
    Adaptive, Analysis, Check, FailureMode, Gate, GateKind, OnFailure, Pause, Release, StatusRange,
    Step, Sticky, Strategy, Variant, Weight,
};
pub use rules::{DeviceClass, KeySpec, PathMatch, Rule, ValueMatch};
pub use telemetry::{HeaderSource, Otlp, OtlpClientPem, OtlpProtocol, OtlpTls, Telemetry};
pub use traffic::{
    BreakerWindow, CircuitBreaker, ConcurrencyLimit, FailureKinds, Fallback, HealthCheck,
    LimitBackend, OnRedisError, OutlierDetection, RateLimit, Retry, StaticResponse, TrafficControl,
};
pub use upstream::{
    ClientIdentity, GRPC_CODE_NAMES, GrpcErrorCodes, UpstreamProtocol, UpstreamTls,
};

/// A whole, valid configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The proxy listeners, in file order; at least one.
    pub listeners: Vec<Listener>,
    /// The admin listener and its tokens; `None`: no admin listener.
    pub admin: Option<Admin>,
    /// The segments, sorted by name; `Rule::Segment` holds an index into this.
    pub segments: Vec<Segment>,
    /// The services, in file order (routing's last tie-break); every service index in the
    /// model points into this.
    pub services: Vec<Service>,
    /// Connection defaults (`upstream:`); each service's timeouts are already resolved from them
    /// into its [`Service`].
    pub upstream: UpstreamSettings,
    /// Rate limits, breakers, retries and the other policies; empty when the file has none.
    pub traffic_control: TrafficControl,
    /// Receivers of release transitions and applied configurations.
    pub webhooks: Vec<Webhook>,
    /// How much of the audit log is kept.
    pub audit: AuditRetention,
    /// How endpoints given as DNS names are resolved (`dns:`).
    pub dns: DnsSettings,
    /// The GeoIP database `country` rules look the client address up in; `None`: they read
    /// only their header.
    pub geoip: Option<GeoIp>,
    /// The per-request log (`access_log:`); `None`: none is written.
    pub access_log: Option<AccessLog>,
    /// Trace export (`telemetry:`); `None`: no spans are recorded.
    pub telemetry: Option<Telemetry>,
    /// The feature flags (`flags:`), sorted by key.
    pub flags: Vec<Flag>,
}

/// `geoip:`: the MaxMind database `country` rules look the client address up in.
#[derive(Debug, Clone)]
pub struct GeoIp {
    /// `database`, resolved against the configuration's folder; re-read when it changes.
    pub database: PathBuf,
    /// The database as read when the configuration was loaded.
    pub countries: std::sync::Arc<crate::CountryDb>,
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
    /// `max_entries` when `audit:` does not set it.
    pub const DEFAULT_MAX_ENTRIES: u64 = 100_000;
}

impl Config {
    /// The service called `name`, if any.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The flag whose key is `key`, if any.
    pub fn flag(&self, key: &str) -> Option<&Flag> {
        self.flags.iter().find(|f| f.key == key)
    }
}

/// A proxy listener (`listeners[]`).
#[derive(Debug, Clone)]
pub struct Listener {
    /// The address clients connect to.
    pub bind: SocketAddr,
    /// Serve HTTPS with this certificate; `None`: plain HTTP.
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
    /// What happens to `%2F`, `%5C` and `\` in a path.
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
    /// `header_read_timeout` when unset: 10 s.
    pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
    /// `max_connections` when unset: 10 000.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
}

/// A listener's certificates: one, or several chosen by the name the client asks for (SNI).
#[derive(Debug, Clone)]
pub struct Tls {
    /// In configuration order; `tls: { cert, key }` is a list of one. Never empty.
    pub certificates: Vec<TlsCertificate>,
    /// The one served to a client that sends no name, or one no certificate covers: the one
    /// marked `default: true`, else the first.
    pub default: usize,
}

/// One certificate of a listener, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsCertificate {
    /// The certificate chain, resolved against the configuration file's folder.
    pub cert: PathBuf,
    /// The private key, resolved against the configuration file's folder.
    pub key: PathBuf,
    /// Where it is written, e.g. `listeners[0].tls.certificates[1]`: errors found when the
    /// files are read again name it.
    pub at: String,
}

/// The admin listener (`admin:`): `/metrics`, the health probes and the admin API.
#[derive(Debug, Clone)]
pub struct Admin {
    /// The address of the admin listener.
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
    /// `header_read_timeout` when unset: 10 s.
    pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
    /// `idle_timeout` when unset: 60 s.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// `request_timeout` when unset: 60 s.
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
    /// Operators, scrapers and dashboards: far fewer clients than the proxy listeners see.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
}

/// An admin API token: its secret is read from an environment variable at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    /// Who the token is: recorded as the author of what it does.
    pub name: String,
    /// The environment variable that holds the token; the file never holds the token itself.
    pub env: String,
    /// What the token may do.
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
    /// The role as written in the file and shown by the API: `viewer`, `operator`, `admin`.
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
    /// The `http://` URL each event is `POST`ed to as JSON.
    pub url: http::Uri,
    /// Per attempt.
    pub timeout: Duration,
    /// Attempts after the first.
    pub retries: u32,
}

impl Webhook {
    /// `timeout` when unset: 2 s.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
    /// `retries` when unset: 3.
    pub const DEFAULT_RETRIES: u32 = 3;
}

/// A named list of keys that `segment` rules test membership of.
#[derive(Debug, Clone)]
pub struct Segment {
    /// The segment's name, as `segment` rules name it.
    pub name: String,
    /// The members as last read: the inline list, the file's lines, or (for Redis) empty
    /// until the first refresh.
    pub members: Vec<String>,
    /// Where the members come from, and so how they are refreshed.
    pub source: SegmentSource,
}

/// Where a segment's members come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentSource {
    /// `values:` in the file; they change only with the configuration.
    Static,
    /// `file:`, resolved against the configuration's folder; re-read when it changes.
    File(PathBuf),
    /// A Redis set, read through a local cache refreshed in the background; `members` is empty
    /// until the first refresh.
    Redis {
        /// The Redis server, `redis://...`, already checked to be one the client reads.
        url: String,
        /// The Redis set that holds the members.
        key: String,
        /// Time between two reads of the set.
        refresh: Duration,
        /// After this long without a successful refresh the segment counts as empty.
        max_staleness: Duration,
    },
}

/// Connection settings for every service (`upstream:`), with their defaults.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// Connecting to an endpoint; default 1 s, then `504`.
    pub connect_timeout: Duration,
    /// From a request's arrival to the upstream's response headers; default 30 s.
    pub request_timeout: Duration,
    /// A pooled keep-alive connection unused this long is closed; default 60 s.
    pub idle_timeout: Duration,
    /// Pooled connections kept per endpoint and worker; default 256.
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

/// A service: the requests it takes, its versions and its release.
#[derive(Debug, Clone)]
pub struct Service {
    /// Unique among the services; the API and metrics name it so.
    pub name: String,
    /// Which requests belong to the service.
    pub matcher: ServiceMatch,
    /// The versions, sorted by name; every version index points into this.
    pub versions: Vec<Version>,
    /// Index into `versions` of the version that gets traffic nothing else claims.
    pub default_version: usize,
    /// How an endpoint of a version is chosen.
    pub load_balancing: LoadBalancing,
    /// The service's `timeouts.connect`, else `upstream.connect_timeout`.
    pub connect_timeout: Duration,
    /// The service's `timeouts.request`, else `upstream.request_timeout`.
    pub request_timeout: Duration,
    /// The configured release; `None`: all traffic goes to `default_version`.
    pub release: Option<Release>,
    /// The `grpc-status` codes that count as the service's errors (`grpc.error_codes`).
    pub grpc_error_codes: GrpcErrorCodes,
}

impl Service {
    /// Index of the version called `name`.
    pub fn version_index(&self, name: &str) -> Option<usize> {
        self.versions.iter().position(|v| v.name == name)
    }
}

/// Which requests a service takes (`match:`).
#[derive(Debug, Clone)]
pub struct ServiceMatch {
    /// Lower-case host without port; `None` matches any host.
    pub host: Option<String>,
    /// Starts with `/`; default `/`. The longest matching prefix wins.
    pub path_prefix: String,
    /// Empty means every method.
    pub methods: Vec<http::Method>,
}

/// A version of a service and where its requests go.
#[derive(Debug, Clone)]
pub struct Version {
    /// Unique within the service; letters, digits, `-`, `_`, `.` (it travels in headers and
    /// cookies).
    pub name: String,
    /// Where the version's requests go. For a version that follows the registry, or has
    /// endpoints given as DNS names, this starts with only the fixed addresses and is filled in
    /// at run time ([`crate::resolve_registry`], [`crate::resolve_dns`]).
    pub endpoints: Vec<SocketAddr>,
    /// An optional label of the version, valid as a header value.
    pub tag: Option<String>,
    /// `endpoints: { registry: NAME, labels: {...} }`: the endpoints are the registered
    /// instances this selects.
    pub registry: Option<RegistrySelector>,
    /// Endpoints given as DNS names, re-resolved at run time; `None` when every endpoint is an
    /// address.
    pub dns: Option<VersionDns>,
    /// The protocol the endpoints' scheme names (`http://` when they name none).
    pub protocol: UpstreamProtocol,
    /// `tls:` of `https://` endpoints; `None` for the other schemes.
    pub tls: Option<UpstreamTls>,
}

/// Selects instances of a service in the registry: those registered under `service` whose
/// labels include every one of `labels` (the same value for each key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrySelector {
    /// The registry service name the instances registered under.
    pub service: String,
    /// Labels an instance must have, each with the same value; empty selects every instance.
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

/// How a request picks an endpoint of a version (`load_balancing:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadBalancing {
    /// `round_robin` (the default): each endpoint in turn.
    RoundRobin,
    /// `least_request`: the less busy of two endpoints picked at random.
    LeastRequest,
}
