//! The raw model: exactly what the YAML file says, deserialized with serde and nothing more.
//!
//! Every struct rejects unknown keys so a typo is an error rather than a silently ignored
//! setting. Values that need parsing (durations, addresses, weights' precision, regexes) stay
//! strings or plain numbers here; `crate::validate` turns them into the [`crate::model`] and
//! reports every problem with its location.
//!
//! Split as the validated model is: this file holds the frame (listeners, admin, segments,
//! services, versions); `release.rs`, `rules.rs`, `flags.rs` and `traffic.rs` the sections of
//! those names.

use std::collections::BTreeMap;

use serde::Deserialize;

mod dns;
mod flags;
mod release;
mod rules;
mod traffic;
mod upstream;

pub use dns::{RawDns, RawDnsRefresh};
pub use flags::{RawFlag, RawFlagRule};

pub use release::{
    RawAdaptive, RawAnalysis, RawCheck, RawGate, RawKey, RawKeyFull, RawRelease, RawStep, RawSteps,
    RawSticky, RawVariant,
};
pub use rules::{
    OneOrMany, RawCountryRule, RawPathRule, RawRule, RawSegmentRule, RawSemverRule, RawTimeRule,
    RawValueRule,
};
pub use traffic::{
    RawCircuitBreaker, RawConcurrencyLimit, RawFallback, RawHealthCheck, RawOutlierDetection,
    RawRateLimit, RawRetry, RawStaticResponse, RawTrafficControl, RawWindow,
};
pub use upstream::{RawGrpc, RawGrpcCode, RawUpstreamTls};

/// The whole file, as written: the top-level keys of `graylane.yaml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `listeners`: where clients connect; at least one is required.
    #[serde(default)]
    pub listeners: Vec<RawListener>,
    /// `admin`: the admin listener; without it there is none.
    pub admin: Option<RawAdmin>,
    /// `segments`: named key lists, by name.
    #[serde(default)]
    pub segments: BTreeMap<String, RawSegment>,
    /// `services`: the upstream services, in file order (the last tie-break of routing).
    #[serde(default)]
    pub services: Vec<RawService>,
    /// `traffic_control`: rate limits, breakers, retries and the other policies.
    pub traffic_control: Option<RawTrafficControl>,
    /// `upstream`: connection defaults for every service.
    pub upstream: Option<RawUpstream>,
    /// `webhooks`: receivers of release transitions and applied configurations.
    #[serde(default)]
    pub webhooks: Vec<RawWebhook>,
    /// `audit`: audit log retention; default 100000 entries, no age limit.
    pub audit: Option<RawAudit>,
    /// `dns`: name servers, timeout and refresh of endpoints given as DNS names.
    pub dns: Option<RawDns>,
    /// `geoip`: the MaxMind database `country` rules look the client address up in.
    pub geoip: Option<RawGeoIp>,
    /// `access_log`: one line per request; without it nothing is logged per request.
    pub access_log: Option<RawAccessLog>,
    /// `telemetry`: OpenTelemetry trace export; without it no spans are recorded.
    pub telemetry: Option<RawTelemetry>,
    /// `flags`: feature flags by key, evaluated over OFREP on the admin listener.
    #[serde(default)]
    pub flags: BTreeMap<String, RawFlag>,
}

/// `access_log:`: the format, destination and sampled share of the per-request log.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    /// `format`: `json` (default) or `combined`.
    pub format: Option<String>,
    /// `path`: `stdout` (default) or a file, relative to the configuration's folder.
    pub path: Option<String>,
    /// `sample`: the share of requests logged, above 0 and at most 1 (default).
    pub sample: Option<f64>,
}

/// `telemetry:`: what is exported about requests.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    /// `otlp`: an OTLP collector traces go to.
    pub otlp: Option<RawOtlp>,
}

/// `telemetry.otlp:`: the collector, its protocol, and which requests are exported.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOtlp {
    /// `endpoint`: the collector's `http://` or `https://` base URL.
    pub endpoint: String,
    /// `protocol`: `http/protobuf` (default) or `grpc`.
    pub protocol: Option<String>,
    /// `sample`: the share of new traces exported, 0 to 1 (default 1).
    pub sample: Option<f64>,
    /// `always_on_error`: export failed requests even when not sampled (default false).
    pub always_on_error: Option<bool>,
    /// `headers`: sent with every export; a value is text or `{ env: NAME }`.
    #[serde(default)]
    pub headers: BTreeMap<String, RawHeaderValue>,
    /// `service_name`: the `service.name` resource attribute (default `graylane`).
    pub service_name: Option<String>,
    /// `tls`: how an `https://` collector is verified (`ca`, `server_name`) and what graylane
    /// presents (`client_cert`, `client_key`); default Mozilla's roots.
    pub tls: Option<RawUpstreamTls>,
}

/// A `telemetry.otlp.headers` value: the text, or the environment variable that holds it.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawHeaderValue {
    /// The value itself.
    Text(String),
    /// `{ env: NAME }`: read from the environment when the exporter starts.
    Env {
        /// The variable's name.
        env: String,
    },
}

/// `geoip:`: where `country` rules find the client's country.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGeoIp {
    /// `database`: a MaxMind DB file (`.mmdb`), relative to the configuration's folder.
    pub database: String,
}

/// `audit:`: how much of the audit log the store keeps per environment.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// `max_entries`: entries kept per environment; default 100000, `0` keeps every entry.
    pub max_entries: Option<u64>,
    /// `max_age`: a duration (`90d`); entries this much older than the newest are pruned.
    pub max_age: Option<String>,
}

/// One entry of `webhooks:`: a URL that every release transition and applied
/// configuration is `POST`ed to as JSON.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    /// `url`: a plain `http://` URL.
    pub url: String,
    /// `timeout`: a duration per attempt; default `2s`.
    pub timeout: Option<String>,
    /// `retries`: attempts after the first; default 3, with backoff from 200ms.
    pub retries: Option<u32>,
}

/// One entry of `listeners:`: an address clients connect to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    /// `bind`: `IP:port`, e.g. `0.0.0.0:8080` or `[::1]:8080`.
    pub bind: String,
    /// `tls`: certificate and key; without it the listener speaks plain HTTP.
    pub tls: Option<RawTls>,
    /// `trusted_hops`: CIDRs or IPs whose `x-graylane-lane` header, `trusted_only` keys and
    /// rules count.
    #[serde(default)]
    pub trusted_hops: Vec<String>,
    /// `header_read_timeout`: a duration, default `10s`, for a client to send a request's
    /// headers (and its first request, and between keep-alive requests).
    pub header_read_timeout: Option<String>,
    /// `max_connections`: client connections served at once across workers; default 10000,
    /// at least 1.
    pub max_connections: Option<usize>,
    /// `paths`: path forwarding and escaped slashes; defaults `normalized` and `reject`.
    pub paths: Option<RawPaths>,
    /// `headers_with_underscores`: `drop` (default), `reject` or `allow`.
    pub headers_with_underscores: Option<String>,
}

/// A listener's `paths:`: how request paths are forwarded and which escapes are refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPaths {
    /// `forward`: `normalized` (default) or `raw` (the path as the client wrote it).
    pub forward: Option<String>,
    /// `escaped_slashes`: `reject` (default, `400`) or `keep` for `%2F`, `%5C` and `\`.
    pub escaped_slashes: Option<String>,
}

/// A listener's `tls:`: serve HTTPS (HTTP/2 and HTTP/1.1 by ALPN) with one certificate
/// (`cert` and `key`) or several chosen by SNI (`certificates`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// `cert`: path of the PEM certificate chain, relative to the configuration's folder.
    pub cert: Option<String>,
    /// `key`: path of the PEM private key, relative to the configuration's folder.
    pub key: Option<String>,
    /// `certificates`: several certificates; each serves the names of its subject alternative
    /// names, and the first (or the one with `default: true`) serves the rest.
    pub certificates: Option<Vec<RawCertificate>>,
}

/// One entry of a listener's `tls.certificates`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    /// `cert`: path of the PEM certificate chain, relative to the configuration's folder.
    pub cert: String,
    /// `key`: path of the PEM private key, relative to the configuration's folder.
    pub key: String,
    /// `default`: serve this one when the client's name matches none (instead of the first).
    pub default: Option<bool>,
}

/// `admin:`: the listener of `/metrics`, the health probes and the admin API.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// `bind`: `IP:port` of the admin listener.
    pub bind: String,
    /// `token_env`: shorthand for a token named `admin` with role `admin`, read from this
    /// environment variable.
    pub token_env: Option<String>,
    /// `tokens`: API tokens with their names and roles.
    #[serde(default)]
    pub tokens: Vec<RawToken>,
    /// `header_read_timeout`: a duration, default `10s`, to send a request's headers, or a
    /// request at all on a new or keep-alive connection.
    pub header_read_timeout: Option<String>,
    /// `idle_timeout`: a duration, default `60s`, after which a connection that moves no byte
    /// is closed.
    pub idle_timeout: Option<String>,
    /// `request_timeout`: a duration, default `60s`: the most one request may take, body
    /// included (`408` after it).
    pub request_timeout: Option<String>,
    /// `max_connections`: connections served at once; default 256, at least 1.
    pub max_connections: Option<usize>,
}

/// One entry of `admin.tokens`: an admin API token kept in an environment variable.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawToken {
    /// `name`: recorded as the author of what the token does; letters, digits, `-`, `_`, `.`.
    pub name: String,
    /// `env`: the environment variable holding the token (never the token itself); unset or
    /// empty at start skips the token with a warning.
    pub env: String,
    /// `role`: `viewer`, `operator` or `admin`.
    pub role: String,
}

/// One entry of `segments:`: a named list of keys for `segment` rules. Exactly one of
/// `values`, `file` or `source: redis` (with `url` and `key`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSegment {
    /// `values`: the members, inline.
    pub values: Option<Vec<String>>,
    /// `file`: a file with one member per line (blank lines and `#` comments skipped),
    /// relative to the configuration's folder; re-read when it changes.
    pub file: Option<String>,
    /// `redis`: members are a Redis set (`url`, `key`), refreshed in the background.
    pub source: Option<String>,
    /// `url`: with `source: redis`, `redis://[user][:password@]host[:port][/db]`.
    pub url: Option<String>,
    /// `key`: with `source: redis`, the Redis set holding the members; not empty.
    pub key: Option<String>,
    /// `refresh`: with `source: redis`, a duration between reads of the set; default `5s`.
    pub refresh: Option<String>,
    /// `max_staleness`: with `source: redis`, how long, default `5m`, the last members keep
    /// serving while Redis cannot be read; after it the segment counts as empty.
    pub max_staleness: Option<String>,
}

/// `upstream:`: connection defaults for every service.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// `connect_timeout`: a duration, default `1s`, to connect to an endpoint (`504` after it).
    pub connect_timeout: Option<String>,
    /// `request_timeout`: a duration, default `30s`, from the request's arrival to the
    /// upstream's response headers.
    pub request_timeout: Option<String>,
    /// `idle_timeout`: a duration, default `60s`, after which an unused pooled connection is
    /// closed.
    pub idle_timeout: Option<String>,
    /// `max_idle_per_endpoint`: pooled connections kept per endpoint and worker; default 256.
    pub max_idle_per_endpoint: Option<usize>,
}

/// One entry of `services:`: the requests it matches, its versions and its release.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    /// `name`: unique; letters, digits, `-`, `_`, `.`.
    pub name: String,
    /// `match`: host, path prefix and methods of the service's requests.
    #[serde(rename = "match", default)]
    pub matcher: RawServiceMatch,
    /// `versions`: version name → endpoints and tag; names are letters, digits, `-`, `_`, `.`.
    #[serde(default)]
    pub versions: BTreeMap<String, RawVersion>,
    /// `default_version`: the version for traffic no release claims; defaults to the release's
    /// baseline, else `stable`, else the only version.
    pub default_version: Option<String>,
    /// `load_balancing`: `round_robin` (default) or `least_request`.
    pub load_balancing: Option<String>,
    /// `timeouts`: `{ connect, request }`, overriding `upstream`.
    pub timeouts: Option<RawTimeouts>,
    /// `release`: how traffic moves from one version to another; without it everything goes to
    /// `default_version`.
    pub release: Option<RawRelease>,
    /// `dns`: `{ refresh }` for the versions' endpoints given as DNS names.
    pub dns: Option<RawDnsRefresh>,
    /// `grpc`: `{ error_codes }`, the `grpc-status` codes that count as errors.
    pub grpc: Option<RawGrpc>,
}

/// A service's `match:`: which requests belong to it; an empty match takes every request.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServiceMatch {
    /// `host`: the `Host` to match (any host when unset).
    pub host: Option<String>,
    /// `path_prefix`: default `/`; the longest matching prefix wins.
    pub path_prefix: Option<String>,
    /// `methods`: e.g. `[GET, POST]`; every method when unset.
    pub methods: Option<Vec<String>>,
}

/// One value of a service's `versions:` map (the key is the version's name).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVersion {
    /// `endpoints`: `host:port` addresses (at least one; a host name is re-resolved), each
    /// optionally with a scheme (`http://`, `h2c://`, `https://`; one for all), or a registry
    /// selector.
    #[serde(default)]
    pub endpoints: RawEndpoints,
    /// `dns`: `{ refresh }` for the endpoints given as DNS names, overriding the service's.
    pub dns: Option<RawDnsRefresh>,
    /// `tag`: an optional label of the version (e.g. a build or image tag); it must be valid as
    /// a header value.
    pub tag: Option<String>,
    /// `tls`: `{ ca, server_name, client_cert, client_key }` for `https://` endpoints.
    pub tls: Option<RawUpstreamTls>,
}

/// A version's endpoints: a list of `host:port`, or a selector of instances in the service
/// registry (`{ registry: payment, labels: { version: canary } }`).
#[derive(Debug)]
pub enum RawEndpoints {
    /// `["host:port", ...]`: fixed addresses.
    List(Vec<String>),
    /// `{ registry, labels }`: the registered instances the selector picks.
    Registry(RawRegistrySelector),
}

impl Default for RawEndpoints {
    fn default() -> Self {
        RawEndpoints::List(Vec::new())
    }
}

/// Dispatches on the YAML node's shape rather than through `#[serde(untagged)]`: an untagged
/// enum reports only "data did not match any variant", where this keeps the selector's own
/// errors (an unknown key, with its path and a "did you mean").
impl<'de> Deserialize<'de> for RawEndpoints {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Shape;
        impl<'de> serde::de::Visitor<'de> for Shape {
            type Value = RawEndpoints;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "a list of `host:port` or a registry selector `{ registry: NAME, labels: { KEY: VALUE } }`",
                )
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<RawEndpoints, A::Error> {
                Vec::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(RawEndpoints::List)
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawEndpoints, A::Error> {
                RawRegistrySelector::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawEndpoints::Registry)
            }
        }
        deserializer.deserialize_any(Shape)
    }
}

/// `endpoints: { registry, labels }`: the instances of a registered service (fleet mode).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegistrySelector {
    /// `registry`: the registry service name; letters, digits, `-`, `_`, `.`.
    pub registry: String,
    /// `labels`: label → value; an instance is selected when it has every one of them.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A service's `timeouts:`, overriding `upstream`'s for that service.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    /// `connect`: a duration replacing `upstream.connect_timeout`.
    pub connect: Option<String>,
    /// `request`: a duration replacing `upstream.request_timeout`.
    pub request: Option<String>,
}
