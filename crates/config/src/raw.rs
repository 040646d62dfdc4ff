//! The raw model: exactly what the YAML file says, deserialized with serde and nothing more.
//!
//! Every struct rejects unknown keys so a typo is an error rather than a silently ignored
//! setting. Values that need parsing (durations, addresses, weights' precision, regexes) stay
//! strings or plain numbers here; [`crate::validate`] turns them into the [`crate::model`] and
//! reports every problem with its location.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub listeners: Vec<RawListener>,
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub segments: BTreeMap<String, RawSegment>,
    #[serde(default)]
    pub services: Vec<RawService>,
    pub traffic_control: Option<RawTrafficControl>,
    pub upstream: Option<RawUpstream>,
    #[serde(default)]
    pub webhooks: Vec<RawWebhook>,
    pub audit: Option<RawAudit>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    pub max_entries: Option<u64>,
    pub max_age: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    pub url: String,
    pub timeout: Option<String>,
    pub retries: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub bind: String,
    pub tls: Option<RawTls>,
    #[serde(default)]
    pub trusted_hops: Vec<String>,
    pub header_read_timeout: Option<String>,
    pub max_connections: Option<usize>,
    pub paths: Option<RawPaths>,
    pub headers_with_underscores: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPaths {
    pub forward: Option<String>,
    pub escaped_slashes: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub bind: String,
    pub token_env: Option<String>,
    #[serde(default)]
    pub tokens: Vec<RawToken>,
    pub header_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub request_timeout: Option<String>,
    pub max_connections: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawToken {
    pub name: String,
    pub env: String,
    pub role: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSegment {
    pub values: Option<Vec<String>>,
    pub file: Option<String>,
    /// `redis`: members are a Redis set (`url`, `key`), refreshed in the background.
    pub source: Option<String>,
    pub url: Option<String>,
    pub key: Option<String>,
    pub refresh: Option<String>,
    pub max_staleness: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub connect_timeout: Option<String>,
    pub request_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_idle_per_endpoint: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub name: String,
    #[serde(rename = "match", default)]
    pub matcher: RawServiceMatch,
    #[serde(default)]
    pub versions: BTreeMap<String, RawVersion>,
    pub default_version: Option<String>,
    pub load_balancing: Option<String>,
    pub timeouts: Option<RawTimeouts>,
    pub release: Option<RawRelease>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServiceMatch {
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub methods: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVersion {
    #[serde(default)]
    pub endpoints: RawEndpoints,
    pub tag: Option<String>,
}

/// A version's endpoints: a list of `host:port`, or a selector of instances in the service
/// registry (`{ registry: payment, labels: { version: canary } }`).
#[derive(Debug)]
pub enum RawEndpoints {
    List(Vec<String>),
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

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegistrySelector {
    pub registry: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub connect: Option<String>,
    pub request: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRelease {
    pub strategy: String,
    pub baseline: Option<String>,
    pub candidate: Option<String>,
    pub active: Option<String>,
    pub preview: Option<String>,
    pub keep_previous: Option<String>,
    #[serde(default)]
    pub variants: Vec<RawVariant>,
    pub skip_rollback: Option<bool>,
    #[serde(default)]
    pub force: Vec<RawRule>,
    pub bucket_by: Option<RawKey>,
    pub salt: Option<String>,
    pub sticky: Option<RawSticky>,
    #[serde(default)]
    pub steps: Vec<RawStep>,
    pub analysis: Option<RawAnalysis>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVariant {
    pub name: String,
    pub version: String,
    pub weight: f64,
}

/// A key, written `header:X-User-Id` or `{ key: "header:X-User-Id", trusted_only: true }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawKey {
    Plain(String),
    Full(RawKeyFull),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeyFull {
    pub key: String,
    pub trusted_only: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSticky {
    pub cookie: String,
    pub max_age: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    pub weight: f64,
    pub pause: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAnalysis {
    pub interval: String,
    pub min_requests: Option<u64>,
    #[serde(default)]
    pub checks: Vec<RawCheck>,
    pub failure_limit: Option<u32>,
    pub failure_mode: Option<String>,
    pub success_needed: Option<u32>,
    pub on_failure: Option<String>,
    pub max_wait_without_data: Option<String>,
    pub confidence: Option<f64>,
    pub error_codes: Option<Vec<String>>,
    pub metrics_source: Option<String>,
    pub prometheus_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheck {
    pub metric: Option<String>,
    pub name: Option<String>,
    pub query: Option<String>,
    pub event: Option<String>,
    pub max: Option<f64>,
    pub min: Option<f64>,
    pub max_increase: Option<f64>,
    pub max_ms: Option<f64>,
    pub max_ratio: Option<f64>,
    pub min_rps: Option<f64>,
    pub min_change: Option<f64>,
}

/// One routing rule. Exactly one of the fields must be set; the struct form (rather than a
/// serde enum) lets a misspelt rule kind get a "did you mean" like any other key.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub header: Option<RawValueRule>,
    pub cookie: Option<RawValueRule>,
    pub query: Option<RawValueRule>,
    pub path: Option<RawPathRule>,
    pub method: Option<OneOrMany>,
    pub client_ip: Option<OneOrMany>,
    pub semver: Option<RawSemverRule>,
    pub device: Option<OneOrMany>,
    pub country: Option<RawCountryRule>,
    pub time: Option<RawTimeRule>,
    pub segment: Option<RawSegmentRule>,
    pub all: Option<Vec<RawRule>>,
    pub any: Option<Vec<RawRule>>,
    pub not: Option<Box<RawRule>>,
}

/// A string or a list of strings (`method: GET` or `method: [GET, HEAD]`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawValueRule {
    pub name: String,
    pub equals: Option<String>,
    #[serde(rename = "in")]
    pub one_of: Option<Vec<String>>,
    pub prefix: Option<String>,
    pub glob: Option<String>,
    pub regex: Option<String>,
    pub exists: Option<bool>,
    pub absent: Option<bool>,
    /// Honoured only from a listener's `trusted_hops` (headers only).
    pub trusted_only: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPathRule {
    pub equals: Option<String>,
    pub prefix: Option<String>,
    pub glob: Option<String>,
    pub regex: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSemverRule {
    pub header: String,
    pub range: String,
    pub trusted_only: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCountryRule {
    pub header: Option<String>,
    pub equals: Option<String>,
    #[serde(rename = "in")]
    pub one_of: Option<Vec<String>>,
    pub trusted_only: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeRule {
    pub from: Option<String>,
    pub until: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSegmentRule {
    pub name: String,
    pub key: String,
    pub trusted_only: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrafficControl {
    #[serde(default)]
    pub rate_limits: Vec<RawRateLimit>,
    #[serde(default)]
    pub circuit_breakers: Vec<RawCircuitBreaker>,
    #[serde(default)]
    pub concurrency_limits: Vec<RawConcurrencyLimit>,
    #[serde(default)]
    pub retries: Vec<RawRetry>,
    #[serde(default)]
    pub outlier_detection: Vec<RawOutlierDetection>,
    #[serde(default)]
    pub health_checks: Vec<RawHealthCheck>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub service: String,
    pub path_prefix: Option<String>,
    pub key: Option<RawKey>,
    pub rate: String,
    pub burst: Option<u32>,
    pub backend: Option<String>,
    pub redis_url: Option<String>,
    pub timeout: Option<String>,
    pub on_redis_error: Option<String>,
    pub headers: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCircuitBreaker {
    pub service: String,
    pub version: String,
    pub failure_rate_threshold: Option<f64>,
    pub slow_call_duration: Option<String>,
    pub slow_call_rate_threshold: Option<f64>,
    pub minimum_calls: Option<u32>,
    pub window: Option<RawWindow>,
    pub open_for: Option<String>,
    pub half_open_calls: Option<u32>,
    pub failure_on: Option<Vec<String>>,
    pub fallback: Option<RawFallback>,
    pub fallback_non_idempotent: Option<bool>,
}

/// `fallback: stable` (a version) or a static response.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawFallback {
    Version(String),
    Static(RawStaticResponse),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStaticResponse {
    pub status: u16,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub body: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConcurrencyLimit {
    pub service: String,
    pub version: Option<String>,
    pub max: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub service: String,
    pub attempts: Option<u32>,
    pub per_try_timeout: Option<String>,
    pub retry_on: Option<Vec<String>>,
    pub budget: Option<f64>,
    pub min_concurrent: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlierDetection {
    pub service: String,
    pub version: Option<String>,
    pub consecutive_failures: Option<u32>,
    pub base_ejection: Option<String>,
    pub max_ejection: Option<String>,
    pub max_ejection_percent: Option<u8>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub service: String,
    pub version: Option<String>,
    pub path: String,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub healthy_threshold: Option<u32>,
    pub unhealthy_threshold: Option<u32>,
    pub expect_status: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWindow {
    pub kind: String,
    pub size: u32,
}
