//! The raw model: exactly what the YAML file says, deserialized with serde and nothing more.
//!
//! Every struct rejects unknown keys so a typo is an error rather than a silently ignored
//! setting. Values that need parsing (durations, addresses, weights' precision, regexes) stay
//! strings or plain numbers here; `crate::validate` turns them into the [`crate::model`] and
//! reports every problem with its location.

use std::collections::BTreeMap;

use serde::Deserialize;

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

/// A listener's `tls:`: serve HTTPS (HTTP/2 and HTTP/1.1 by ALPN) with this certificate.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// `cert`: path of the PEM certificate chain, relative to the configuration's folder.
    pub cert: String,
    /// `key`: path of the PEM private key, relative to the configuration's folder.
    pub key: String,
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
    /// `endpoints`: `host:port` addresses (at least one) or a registry selector.
    #[serde(default)]
    pub endpoints: RawEndpoints,
    /// `tag`: an optional label of the version (e.g. a build or image tag); it must be valid as
    /// a header value.
    pub tag: Option<String>,
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

/// A service's `release:`. `strategy` decides which of the other keys apply; validation
/// refuses the keys of another strategy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRelease {
    /// `strategy`: `canary`, `blue_green` or `experiment`.
    pub strategy: String,
    /// `baseline`: canary only; the version traffic returns to when the release stops.
    pub baseline: Option<String>,
    /// `candidate`: canary only; the version being tried.
    pub candidate: Option<String>,
    /// `active`: blue_green only; the version all traffic goes to until `promote`.
    pub active: Option<String>,
    /// `preview`: blue_green only; reached by `force` rules, and by everything after `promote`.
    pub preview: Option<String>,
    /// `keep_previous`: blue_green only; a duration, default `10m`, the previous version is
    /// kept for an instant rollback after a switch.
    pub keep_previous: Option<String>,
    /// `variants`: experiment only; two or more, weights adding up to 100.
    #[serde(default)]
    pub variants: Vec<RawVariant>,
    /// `skip_rollback`: default `false`; `true` pauses instead of aborting on a failed analysis.
    pub skip_rollback: Option<bool>,
    /// `force`: rules any of which sends a request to the candidate (or preview).
    #[serde(default)]
    pub force: Vec<RawRule>,
    /// `bucket_by`: the bucketing key; default `ip`.
    pub bucket_by: Option<RawKey>,
    /// `salt`: mixed into the bucketing hash; defaults to the candidate's name (an experiment's
    /// variant names joined by `,`).
    pub salt: Option<String>,
    /// `sticky`: keep each client's bucket in a signed cookie.
    pub sticky: Option<RawSticky>,
    /// `steps`: canary only; the weights the release moves through, in order.
    #[serde(default)]
    pub steps: Vec<RawStep>,
    /// `analysis`: the automatic judgement of each step.
    pub analysis: Option<RawAnalysis>,
}

/// One entry of an experiment's `variants:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVariant {
    /// `name`: the variant's name, distinct within the experiment.
    pub name: String,
    /// `version`: the service's version this variant is served by; distinct per variant.
    pub version: String,
    /// `weight`: percent of the bucketed traffic, 0 to 100 in steps of 0.001.
    pub weight: f64,
}

/// A key, written `header:X-User-Id` or `{ key: "header:X-User-Id", trusted_only: true }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawKey {
    /// `header:NAME`, `cookie:NAME`, `query:NAME` or `ip`.
    Plain(String),
    /// `{ key, trusted_only }`.
    Full(RawKeyFull),
}

/// The long form of a key: `{ key: "header:X-User-Id", trusted_only: true }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeyFull {
    /// `key`: `header:NAME`, `cookie:NAME`, `query:NAME` or `ip`.
    pub key: String,
    /// `trusted_only`: default `false`; `true` reads the key only from a listener's
    /// `trusted_hops`, from anyone else it counts as missing.
    pub trusted_only: Option<bool>,
}

/// A release's `sticky:`: keep each client's bucket in a signed cookie.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSticky {
    /// `cookie`: the cookie's name.
    pub cookie: String,
    /// `max_age`: a duration sent as the cookie's `Max-Age`; a session cookie when unset.
    pub max_age: Option<String>,
}

/// One entry of a canary's `steps:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    /// `weight`: percent of the traffic on the candidate, 0 to 100 in steps of 0.001.
    pub weight: f64,
    /// `pause`: a duration or `manual`; unset moves on at once.
    pub pause: Option<String>,
}

/// A release's `analysis:`: the checks that judge the candidate against the baseline.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAnalysis {
    /// `interval`: required; a duration between judgements, e.g. `30s`.
    pub interval: String,
    /// `min_requests`: default 100; requests each of candidate and baseline needs at the step
    /// before a check can pass or fail.
    pub min_requests: Option<u64>,
    /// `checks`: what the candidate is judged on.
    #[serde(default)]
    pub checks: Vec<RawCheck>,
    /// `failure_limit`: default 1; failing intervals that fail the release.
    pub failure_limit: Option<u32>,
    /// `failure_mode`: `consecutive` (default) or `total` (at the step).
    pub failure_mode: Option<String>,
    /// `success_needed`: default 1; passing intervals in a row that pass the step.
    pub success_needed: Option<u32>,
    /// `on_failure`: `rollback` (default) or `pause`.
    pub on_failure: Option<String>,
    /// `max_wait_without_data`: a duration without enough data after which the release pauses;
    /// unset holds forever.
    pub max_wait_without_data: Option<String>,
    /// `confidence`: default 0.95; of every interval a verdict rests on.
    pub confidence: Option<f64>,
    /// `error_codes`: default `["5xx"]`; statuses counted as errors (`503`, `5xx`, `500-504`).
    pub error_codes: Option<Vec<String>>,
    /// `metrics_source`: `in_process` (default) or `prometheus` (for `query` checks).
    pub metrics_source: Option<String>,
    /// `prometheus_url`: the Prometheus server `query` checks are sent to.
    pub prometheus_url: Option<String>,
}

/// One entry of `analysis.checks`: either a built-in `metric` with its bounds, or a
/// Prometheus `query`. Which bounds apply depends on the metric; validation refuses the others.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheck {
    /// `metric`: `error_rate`, `latency_pNN` (e.g. `latency_p99`), `throughput`, `event_rate`
    /// or `event_mean`.
    pub metric: Option<String>,
    /// `name`: a `query` check's name in verdicts; defaults to the query.
    pub name: Option<String>,
    /// `query`: PROMQL; `{{service}}`, `{{baseline}}`, `{{candidate}}` are filled in.
    pub query: Option<String>,
    /// `event`: for `event_rate` and `event_mean`, the event name posted to `/api/v1/events`.
    pub event: Option<String>,
    /// `max`: `error_rate`: the highest error rate, a fraction (`0.05` is 5%); `query`: the
    /// highest value.
    pub max: Option<f64>,
    /// `min`: `query`: the lowest value.
    pub min: Option<f64>,
    /// `max_increase`: `error_rate`: how much the candidate's rate may exceed the baseline's,
    /// a fraction.
    pub max_increase: Option<f64>,
    /// `max_ms`: `latency_pNN`: the highest latency, in milliseconds.
    pub max_ms: Option<f64>,
    /// `max_ratio`: `latency_pNN`: the highest candidate / baseline latency ratio.
    pub max_ratio: Option<f64>,
    /// `min_rps`: `throughput`: the fewest requests per second.
    pub min_rps: Option<f64>,
    /// `min_change`: `event_rate` and `event_mean`: the smallest change against the baseline;
    /// negative for the drop tolerated.
    pub min_change: Option<f64>,
}

/// One routing rule. Exactly one of the fields must be set; the struct form (rather than a
/// serde enum) lets a misspelt rule kind get a "did you mean" like any other key.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// `header`: a request header's value matches.
    pub header: Option<RawValueRule>,
    /// `cookie`: a cookie's value matches.
    pub cookie: Option<RawValueRule>,
    /// `query`: a query parameter's decoded value matches.
    pub query: Option<RawValueRule>,
    /// `path`: the normalized request path matches.
    pub path: Option<RawPathRule>,
    /// `method`: the method is one of these.
    pub method: Option<OneOrMany>,
    /// `client_ip`: the client address is in one of these CIDRs or IPs.
    pub client_ip: Option<OneOrMany>,
    /// `semver`: a header's version is inside a range.
    pub semver: Option<RawSemverRule>,
    /// `device`: the User-Agent's class is one of `mobile`, `desktop`, `bot`.
    pub device: Option<OneOrMany>,
    /// `country`: a header holds one of these country codes.
    pub country: Option<RawCountryRule>,
    /// `time`: now is in [`from`, `until`).
    pub time: Option<RawTimeRule>,
    /// `segment`: the request's key is a member of the segment.
    pub segment: Option<RawSegmentRule>,
    /// `all`: every rule of the list matches.
    pub all: Option<Vec<RawRule>>,
    /// `any`: some rule of the list matches.
    pub any: Option<Vec<RawRule>>,
    /// `not`: the rule does not match.
    pub not: Option<Box<RawRule>>,
}

/// A string or a list of strings (`method: GET` or `method: [GET, HEAD]`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// A single string.
    One(String),
    /// A list of strings.
    Many(Vec<String>),
}

impl OneOrMany {
    /// The strings, one or many alike.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// A `header`, `cookie` or `query` rule: `name` and exactly one value matcher.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawValueRule {
    /// `name`: the header, cookie or query parameter.
    pub name: String,
    /// `equals`: the whole value is this.
    pub equals: Option<String>,
    /// `in`: the value is one of these.
    #[serde(rename = "in")]
    pub one_of: Option<Vec<String>>,
    /// `prefix`: the value starts with this.
    pub prefix: Option<String>,
    /// `glob`: the value matches this pattern of `*` and `?`.
    pub glob: Option<String>,
    /// `regex`: the value matches this unanchored Rust regex.
    pub regex: Option<String>,
    /// `exists: true`: the value is present, whatever it is.
    pub exists: Option<bool>,
    /// `absent: true`: the value is not present.
    pub absent: Option<bool>,
    /// Honoured only from a listener's `trusted_hops` (headers only).
    pub trusted_only: Option<bool>,
}

/// A `path` rule: exactly one of `equals`, `prefix`, `glob` or `regex`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPathRule {
    /// `equals`: the path is exactly this.
    pub equals: Option<String>,
    /// `prefix`: the path starts with this.
    pub prefix: Option<String>,
    /// `glob`: the path matches this pattern of `*` and `?`.
    pub glob: Option<String>,
    /// `regex`: the path matches this unanchored Rust regex.
    pub regex: Option<String>,
}

/// A `semver` rule: a header read as a version and tested against a range.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSemverRule {
    /// `header`: the header holding the version (a leading `v` is fine).
    pub header: String,
    /// `range`: e.g. `>=2.1.0 <3.0.0`; comparators comma or space separated.
    pub range: String,
    /// `trusted_only`: default `false`; `true` matches only requests from `trusted_hops`.
    pub trusted_only: Option<bool>,
}

/// A `country` rule: a header holding an ISO 3166-1 country code.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCountryRule {
    /// `header`: the header holding the code; default `CF-IPCountry`.
    pub header: Option<String>,
    /// `equals`: the one country code to match.
    pub equals: Option<String>,
    /// `in`: the country codes to match.
    #[serde(rename = "in")]
    pub one_of: Option<Vec<String>>,
    /// `trusted_only`: default `false`; `true` matches only requests from `trusted_hops`.
    pub trusted_only: Option<bool>,
}

/// A `time` rule: matches from `from` (inclusive) until `until` (exclusive).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeRule {
    /// `from`: an RFC 3339 time (`2026-12-01T08:00:00Z`); unbounded when unset.
    pub from: Option<String>,
    /// `until`: an RFC 3339 time, excluded; unbounded when unset.
    pub until: Option<String>,
}

/// A `segment` rule: the request's key is a member of a named segment.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSegmentRule {
    /// `name`: a segment declared under `segments`.
    pub name: String,
    /// `key`: what is looked up: `header:NAME`, `cookie:NAME`, `query:NAME` or `ip`.
    pub key: String,
    /// `trusted_only`: default `false`; `true` matches only requests from `trusted_hops`.
    pub trusted_only: Option<bool>,
}

/// `traffic_control:`: the policies the data plane enforces per service (and version).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrafficControl {
    /// `rate_limits`: checked first; a refused request gets `429`.
    #[serde(default)]
    pub rate_limits: Vec<RawRateLimit>,
    /// `circuit_breakers`: per version, with their fallbacks.
    #[serde(default)]
    pub circuit_breakers: Vec<RawCircuitBreaker>,
    /// `concurrency_limits`: requests in flight per version.
    #[serde(default)]
    pub concurrency_limits: Vec<RawConcurrencyLimit>,
    /// `retries`: resending failed attempts, within a budget.
    #[serde(default)]
    pub retries: Vec<RawRetry>,
    /// `outlier_detection`: ejecting endpoints that keep failing.
    #[serde(default)]
    pub outlier_detection: Vec<RawOutlierDetection>,
    /// `health_checks`: probing endpoints in and out of rotation.
    #[serde(default)]
    pub health_checks: Vec<RawHealthCheck>,
}

/// One entry of `traffic_control.rate_limits`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    /// `service`: the service's name.
    pub service: String,
    /// `path_prefix`: limit only this route of the service; starts with `/`.
    pub path_prefix: Option<String>,
    /// `key`: count per key (`header:`, `cookie:`, `query:`, `ip`); one count for the service
    /// when unset.
    pub key: Option<RawKey>,
    /// `rate`: `COUNT/UNIT`, e.g. `100/s`, `6000/min`, `10/h`.
    pub rate: String,
    /// `burst`: the most requests admitted at once; default the rate's count, at least 1.
    pub burst: Option<u32>,
    /// `backend`: `local` (default, GCRA per gateway) or `redis` (shared).
    pub backend: Option<String>,
    /// `redis_url`: with `backend: redis`, required; `redis://...`.
    pub redis_url: Option<String>,
    /// `timeout`: with `backend: redis`, a duration, default `20ms`, to wait for Redis.
    pub timeout: Option<String>,
    /// `on_redis_error`: with `backend: redis`, `allow` (default) or `deny` when Redis fails.
    pub on_redis_error: Option<String>,
    /// `headers`: `refused` (default: `RateLimit-*` on the `429` only) or `always`.
    pub headers: Option<String>,
}

/// One entry of `traffic_control.circuit_breakers`: one version's breaker.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCircuitBreaker {
    /// `service`: the service's name.
    pub service: String,
    /// `version`: the version the breaker guards.
    pub version: String,
    /// `failure_rate_threshold`: a fraction in (0, 1], default 0.5: the failure rate that opens
    /// the breaker.
    pub failure_rate_threshold: Option<f64>,
    /// `slow_call_duration`: a duration beyond which a call counts as slow; no slow calls when
    /// unset.
    pub slow_call_duration: Option<String>,
    /// `slow_call_rate_threshold`: a fraction in (0, 1], default 1: the slow-call rate that
    /// opens the breaker.
    pub slow_call_rate_threshold: Option<f64>,
    /// `minimum_calls`: calls in the window before the rates count; default the count window's
    /// size, else 100.
    pub minimum_calls: Option<u32>,
    /// `window`: default `{ kind: count, size: 100 }`.
    pub window: Option<RawWindow>,
    /// `open_for`: a duration, default `60s`, the breaker stays open before half-opening.
    pub open_for: Option<String>,
    /// `half_open_calls`: trial calls while half-open; default 10.
    pub half_open_calls: Option<u32>,
    /// `failure_on`: statuses (`503`, `5xx`, `500-504`), `connect_error`, `timeout`; default
    /// `[5xx, connect_error, timeout]`.
    pub failure_on: Option<Vec<String>>,
    /// `fallback`: where requests go while open; `503` with `Retry-After` when unset.
    pub fallback: Option<RawFallback>,
    /// `fallback_non_idempotent`: default `false`; `true` lets a failed non-idempotent request
    /// that reached the version be resent to the fallback version.
    pub fallback_non_idempotent: Option<bool>,
}

/// `fallback: stable` (a version) or a static response.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawFallback {
    /// Another version of the service, by name.
    Version(String),
    /// A static response.
    Static(RawStaticResponse),
}

/// A static fallback: `fallback: { status, headers, body }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStaticResponse {
    /// `status`: an HTTP status from 200 to 599.
    pub status: u16,
    /// `headers`: header name → value, added to the response.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// `body`: the response body; empty when unset.
    pub body: Option<String>,
}

/// One entry of `traffic_control.concurrency_limits`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConcurrencyLimit {
    /// `service`: the service's name.
    pub service: String,
    /// `version`: the version limited; each version gets the limit when unset.
    pub version: Option<String>,
    /// `max`: requests in flight at once, at least 1; over it `503` (or the breaker's fallback).
    pub max: u32,
}

/// One entry of `traffic_control.retries`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// `service`: the service's name.
    pub service: String,
    /// `attempts`: retries after the first try; default 1, from 1 to 10.
    pub attempts: Option<u32>,
    /// `per_try_timeout`: a duration for each attempt; unset, only the service's request
    /// timeout bounds them.
    pub per_try_timeout: Option<String>,
    /// `retry_on`: statuses, `connect_error`, `timeout`; default `[5xx, connect_error, timeout]`.
    pub retry_on: Option<Vec<String>>,
    /// `budget`: a fraction in (0, 1], default 0.2: retries in flight per request in flight.
    pub budget: Option<f64>,
    /// `min_concurrent`: retries in flight always allowed, whatever the budget; default 3.
    pub min_concurrent: Option<u32>,
}

/// One entry of `traffic_control.outlier_detection`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlierDetection {
    /// `service`: the service's name.
    pub service: String,
    /// `version`: the version watched; every version when unset.
    pub version: Option<String>,
    /// `consecutive_failures`: failed attempts in a row that eject an endpoint; default 5, at
    /// least 1.
    pub consecutive_failures: Option<u32>,
    /// `base_ejection`: a duration, default `30s`, multiplied by the times the endpoint was
    /// ejected.
    pub base_ejection: Option<String>,
    /// `max_ejection`: a duration, default `300s`, capping an ejection; not below `base_ejection`.
    pub max_ejection: Option<String>,
    /// `max_ejection_percent`: 0 to 100, default 50: the most of a version's endpoints ejected
    /// at once.
    pub max_ejection_percent: Option<u8>,
}

/// One entry of `traffic_control.health_checks`: active probes of each endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    /// `service`: the service's name.
    pub service: String,
    /// `version`: the version probed; every version when unset.
    pub version: Option<String>,
    /// `path`: the path probed on each endpoint; starts with `/`.
    pub path: String,
    /// `interval`: a duration between probes; default `10s`.
    pub interval: Option<String>,
    /// `timeout`: a duration after which a probe fails; default `1s`.
    pub timeout: Option<String>,
    /// `healthy_threshold`: good probes that put an endpoint in rotation; default 2.
    pub healthy_threshold: Option<u32>,
    /// `unhealthy_threshold`: bad probes that take it out; default 3.
    pub unhealthy_threshold: Option<u32>,
    /// `expect_status`: a status or range of a good probe (`200`, `2xx`, `200-204`); default `2xx`.
    pub expect_status: Option<String>,
}

/// A breaker's `window:`, e.g. `{ kind: count, size: 20 }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWindow {
    /// `kind`: `count` (the last `size` calls) or `time` (the last `size` seconds).
    pub kind: String,
    /// `size`: calls or seconds, by `kind`; at least 1.
    pub size: u32,
}
