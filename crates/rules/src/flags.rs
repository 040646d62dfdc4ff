//! Feature flags, and releases read as flags, evaluated for an application's context: what
//! OFREP (`POST /ofrep/v1/evaluate/flags/{key}` on the admin listener) answers.
//!
//! A context is a targeting key and attributes. Flag rules are the same matchers as a
//! release's force rules, and read the context as a request: every attribute with a string,
//! number or boolean value is a header, a cookie and a query parameter of its name (so
//! `header: { name: plan }`, `cookie: { name: plan }` and `segment: { key: "header:plan" }`
//! all read the attribute `plan`; header names ignore case), the attribute `ip` is the
//! client address, `path` the request path, `method` the method and `host` the host. The
//! targeting key is the attribute `targetingKey` too. A context is never a trusted hop.
//!
//! A flag gives, first match wins: its `default` when it is disabled (`DISABLED`); a rule's
//! variant (`TARGETING_MATCH`); the variant whose `rollout` range the context's bucket falls in
//! (`SPLIT`); else its `default` (`DEFAULT`). The bucket is the one releases use
//! ([`crate::bucket`]) with `flags:` in place of the service and the flag's key as the salt:
//! `XXH64("flags:" ‖ 0 ‖ key ‖ 0 ‖ unit) % 100 000`, so each flag buckets on its own and a
//! bigger share only adds units. The unit is the `bucket_by` attribute, else the targeting
//! key.
//!
//! `release.SERVICE` reads the service's release: the version a request from this context
//! would get now (force rules, then the live split), bucketed on the release's `bucket_by`
//! as the context holds it (the attribute of that header, cookie or query name, or `ip`), else
//! on the targeting key.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr};

use graylane_config::{Config, EscapedSlashes, FlagVariant, KeySpec};
use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::bucket::Bucketer;
use crate::decision::Reason;
use crate::matcher::{Matcher, Members};
use crate::request::RequestView;
use crate::table::RoutingTable;

/// Most attributes a context may have: each is a header, a cookie and a query parameter of the
/// request the rules read, and an application's context has a handful.
pub const MAX_ATTRIBUTES: usize = 1_000;

/// The prefix of a release read as a flag: `release.payment`.
pub const RELEASE_PREFIX: &str = "release.";

/// The "service" field of a flag's bucket hash: no service can be named this (`:` is not
/// allowed in a service name), so flags never share buckets with releases.
const FLAG_NAMESPACE: &str = "flags:";

/// The compiled `flags:` of a configuration.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    flags: Box<[CompiledFlag]>,
}

#[derive(Debug, Clone)]
struct CompiledFlag {
    key: Box<str>,
    variants: Box<[FlagVariant]>,
    default: usize,
    /// (rule, variant), in order.
    rules: Box<[(Matcher, usize)]>,
    /// The rollout as bucket ranges: (end, variant), ascending; a bucket belongs to the first
    /// range whose end is above it, and to `default` past the last.
    ranges: Box<[(u32, usize)]>,
    bucket_by: Option<Box<str>>,
    bucketer: Bucketer,
    disabled: bool,
}

/// Why a flag has its value, as OFREP names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagReason {
    /// Rule `rule` of the flag (or force rule `rule` of the release) matched.
    TargetingMatch {
        /// Index into the flag's `rules` (or the release's `force`).
        rule: usize,
    },
    /// The context's bucket fell in a rollout's (or a release's split's) range.
    Split {
        /// The bucket, 0 to 99 999.
        bucket: u32,
    },
    /// Nothing decided: the flag's `default` (or the default version of a service without a
    /// release).
    Default,
    /// The flag is `disabled`: its `default`.
    Disabled,
}

impl FlagReason {
    /// The OFREP word: `TARGETING_MATCH`, `SPLIT`, `DEFAULT` or `DISABLED`.
    pub fn as_str(self) -> &'static str {
        match self {
            FlagReason::TargetingMatch { .. } => "TARGETING_MATCH",
            FlagReason::Split { .. } => "SPLIT",
            FlagReason::Default => "DEFAULT",
            FlagReason::Disabled => "DISABLED",
        }
    }
}

/// What a context gets from a flag.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation<'t> {
    /// The variant's name (a release's: the version's name).
    pub variant: &'t str,
    /// The variant's value (a release's: the version's name as a string).
    pub value: Cow<'t, serde_json::Value>,
    /// Why.
    pub reason: FlagReason,
}

/// Why a flag could not be evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagError {
    /// No flag has this key, and it is not `release.` and a service's name.
    NotFound,
    /// The flag buckets, and the context has neither the bucketing attribute nor a targeting
    /// key.
    TargetingKeyMissing,
}

impl std::fmt::Display for FlagError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FlagError::NotFound => "no such flag",
            FlagError::TargetingKeyMissing => {
                "the flag splits its contexts by bucket, and this context has no targeting key (nor the bucketing attribute)"
            }
        })
    }
}

impl std::error::Error for FlagError {}

/// A context that cannot be read: an attribute a rule reads has a value of the wrong shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidContext(pub String);

impl std::fmt::Display for InvalidContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidContext {}

/// An application's evaluation context, prepared as the request rules read.
#[derive(Debug, Clone)]
pub struct EvalContext {
    targeting_key: Option<String>,
    /// Attributes with a scalar value, as text (`targetingKey` among them).
    attributes: Vec<(String, String)>,
    headers: HeaderMap,
    query: String,
    ip: Option<IpAddr>,
    method: Method,
    path: String,
    host: Option<String>,
}

impl EvalContext {
    /// A context from OFREP's JSON: an object whose `targetingKey` (a string, optional) is the
    /// targeting key and whose other members are attributes. Strings, numbers and booleans are
    /// readable by rules (numbers and booleans as their JSON text); lists, maps and nulls are
    /// not (no rule reads them).
    pub fn from_json(context: &serde_json::Value) -> Result<EvalContext, InvalidContext> {
        let serde_json::Value::Object(members) = context else {
            return Err(InvalidContext(
                "the context must be a JSON object, such as {\"targetingKey\": \"user-1\", \"plan\": \"pro\"}".into(),
            ));
        };
        let targeting_key = match members.get("targetingKey") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(_) => {
                return Err(InvalidContext(
                    "the context's targetingKey must be a string".into(),
                ));
            }
        };
        let attributes = members
            .iter()
            .filter_map(|(name, value)| {
                let text = match value {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Number(n) => n.to_string(),
                    serde_json::Value::Bool(b) => b.to_string(),
                    _ => return None,
                };
                Some((name.clone(), text))
            })
            .collect();
        EvalContext::new(targeting_key, attributes)
    }

    /// A context of `targeting_key` and `attributes` (name, value as text).
    pub fn new(
        targeting_key: Option<String>,
        mut attributes: Vec<(String, String)>,
    ) -> Result<EvalContext, InvalidContext> {
        if attributes.len() > MAX_ATTRIBUTES {
            return Err(InvalidContext(format!(
                "the context has {} attributes; at most {MAX_ATTRIBUTES} are read",
                attributes.len()
            )));
        }
        if let Some(key) = &targeting_key
            && !attributes.iter().any(|(n, _)| n == "targetingKey")
        {
            attributes.push(("targetingKey".into(), key.clone()));
        }
        let get = |name: &str| {
            attributes
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        let ip = match get("ip") {
            None => None,
            Some(text) => Some(text.parse::<IpAddr>().map_err(|_| {
                InvalidContext(format!(
                    "the context's `ip` must be an IP address (client_ip and country rules read it), not {text:?}"
                ))
            })?),
        };
        let method = match get("method") {
            None => Method::GET,
            Some(text) => Method::from_bytes(text.as_bytes()).map_err(|_| {
                InvalidContext(format!(
                    "the context's `method` is not an HTTP method: {text:?}"
                ))
            })?,
        };
        let path = match get("path") {
            None => "/".to_string(),
            Some(text) if text.starts_with('/') => {
                let normal = crate::path::normalize(text, EscapedSlashes::Reject).map_err(|e| {
                    InvalidContext(format!("the context's `path` {text:?}: {}", e.describe()))
                })?;
                crate::path::without_parameters(&normal).into_owned()
            }
            Some(text) => {
                return Err(InvalidContext(format!(
                    "the context's `path` must start with `/`: {text:?}"
                )));
            }
        };
        let host = get("host").map(str::to_ascii_lowercase);
        let mut headers = HeaderMap::new();
        let mut cookies = Vec::new();
        let mut query = String::new();
        for (name, value) in &attributes {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                // Far below the map's limit (see MAX_ATTRIBUTES); never a panic on input.
                let _ = headers.try_append(n, v);
            }
            if is_cookie_name(name) && is_cookie_value(value) {
                cookies.push(format!("{name}={value}"));
            }
            if name.bytes().all(is_unreserved) && !name.is_empty() {
                if !query.is_empty() {
                    query.push('&');
                }
                query.push_str(name);
                query.push('=');
                percent_encode(value, &mut query);
            }
        }
        if !cookies.is_empty()
            && let Ok(v) = HeaderValue::from_str(&cookies.join("; "))
        {
            let _ = headers.try_append(http::header::COOKIE, v);
        }
        Ok(EvalContext {
            targeting_key,
            attributes,
            headers,
            query,
            ip,
            method,
            path,
            host,
        })
    }

    /// The targeting key, if the context has one.
    pub fn targeting_key(&self) -> Option<&str> {
        self.targeting_key.as_deref()
    }

    /// The value of attribute `name` (exact name), as text.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The context as the request rules read, at `now_unix_ms` (for `time` rules).
    fn view(&self, now_unix_ms: i64) -> RequestView<'_> {
        RequestView {
            method: &self.method,
            host: self.host.as_deref(),
            path: &self.path,
            query: (!self.query.is_empty()).then_some(self.query.as_str()),
            headers: &self.headers,
            // Without `ip`, client_ip rules see the unspecified address, which no rule names
            // unless it names every address.
            client_ip: self.ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            now_unix_ms,
            trusted_lane: None,
            trusted: false,
            trusted_hops: &[],
            random: 0,
        }
    }

    /// The unit a release with `bucket_by: spec` buckets this context on: the attribute the
    /// spec names (`ip` for the client address), else the targeting key.
    fn release_unit(&self, spec: &KeySpec) -> Option<Vec<u8>> {
        let named = match spec {
            KeySpec::ClientIp => self.ip.map(|ip| ip.to_canonical().to_string().into_bytes()),
            _ => self.view(0).with_key(spec, <[u8]>::to_vec),
        };
        named.or_else(|| {
            self.targeting_key
                .as_deref()
                .filter(|k| !k.is_empty())
                .map(|k| k.as_bytes().to_vec())
        })
    }
}

impl Flags {
    /// Compiles `config.flags`; `segments` are the members of `config.segments`, by index.
    pub(crate) fn compile(config: &Config, segments: &[Members]) -> Flags {
        let db = config.geoip.as_ref().map(|g| &g.countries);
        let flags = config
            .flags
            .iter()
            .map(|f| {
                let mut end = 0;
                CompiledFlag {
                    key: f.key.as_str().into(),
                    variants: f.variants.as_slice().into(),
                    default: f.default,
                    rules: f
                        .rules
                        .iter()
                        .map(|r| (Matcher::compile(&r.rule, segments, db), r.variant))
                        .collect(),
                    ranges: f
                        .rollout
                        .iter()
                        .map(|s| {
                            end += s.weight.milli_percent();
                            (end, s.variant)
                        })
                        .collect(),
                    bucket_by: f.bucket_by.as_deref().map(Into::into),
                    bucketer: Bucketer::new(FLAG_NAMESPACE, &f.key),
                    disabled: f.disabled,
                }
            })
            .collect();
        Flags { flags }
    }

    /// The keys of the configured flags, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.flags.iter().map(|f| &*f.key)
    }

    fn find(&self, key: &str) -> Option<&CompiledFlag> {
        self.flags.iter().find(|f| &*f.key == key)
    }
}

impl CompiledFlag {
    fn evaluate(&self, ctx: &EvalContext, now_unix_ms: i64) -> Result<Evaluation<'_>, FlagError> {
        let answer = |variant: usize, reason| {
            let v = &self.variants[variant];
            Evaluation {
                variant: &v.name,
                value: Cow::Borrowed(&v.value),
                reason,
            }
        };
        if self.disabled {
            return Ok(answer(self.default, FlagReason::Disabled));
        }
        let req = ctx.view(now_unix_ms);
        if let Some((rule, &(_, variant))) = self
            .rules
            .iter()
            .enumerate()
            .find(|(_, (m, _))| m.matches(&req))
        {
            return Ok(answer(variant, FlagReason::TargetingMatch { rule }));
        }
        if self.ranges.is_empty() {
            return Ok(answer(self.default, FlagReason::Default));
        }
        let unit = match &self.bucket_by {
            Some(attr) => ctx.attribute(attr),
            None => None,
        }
        .or(ctx.targeting_key())
        .filter(|k| !k.is_empty())
        .ok_or(FlagError::TargetingKeyMissing)?;
        let bucket = self.bucketer.bucket(unit.as_bytes());
        Ok(match self.ranges.iter().find(|(end, _)| bucket < *end) {
            Some(&(_, variant)) => answer(variant, FlagReason::Split { bucket }),
            None => answer(self.default, FlagReason::Default),
        })
    }
}

impl RoutingTable {
    /// What `ctx` gets from flag `key` at `now_unix_ms`: a configured flag, or
    /// `release.SERVICE`, the version of the service a request from the context gets now.
    pub fn evaluate_flag(
        &self,
        key: &str,
        ctx: &EvalContext,
        now_unix_ms: i64,
    ) -> Result<Evaluation<'_>, FlagError> {
        if let Some(flag) = self.flags().find(key) {
            return flag.evaluate(ctx, now_unix_ms);
        }
        let service = key
            .strip_prefix(RELEASE_PREFIX)
            .and_then(|name| self.service_index(name))
            .ok_or(FlagError::NotFound)?;
        let req = ctx.view(now_unix_ms);
        let decision = self.decide_context(service, &req, |spec| ctx.release_unit(spec))?;
        let version = self.version_name(service, decision.version);
        let reason = match decision.reason {
            Reason::Forced { rule } => FlagReason::TargetingMatch { rule },
            Reason::Bucket { bucket, .. } | Reason::Sticky { bucket, .. } => {
                FlagReason::Split { bucket }
            }
            Reason::NoRelease | Reason::Lane => FlagReason::Default,
        };
        Ok(Evaluation {
            variant: version,
            value: Cow::Owned(serde_json::Value::String(version.to_string())),
            reason,
        })
    }

    /// Every key [`RoutingTable::evaluate_flag`] answers for in a bulk evaluation: the
    /// configured flags, then `release.SERVICE` for every service with a release.
    pub fn flag_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.flags().keys().map(str::to_string).collect();
        keys.extend(
            self.released_services()
                .map(|name| format!("{RELEASE_PREFIX}{name}")),
        );
        keys
    }
}

/// Cookie names are tokens (RFC 6265); a context attribute with another name is not a cookie.
fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A cookie value with no `;`, `,`, quote, backslash, space or control character.
fn is_cookie_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| (0x21..0x7f).contains(&b) && !b";,\"\\".contains(&b))
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

/// Appends `value` to `out` with every byte but the unreserved ones as `%XX`: the query
/// matcher decodes it back to exactly `value`.
fn percent_encode(value: &str, out: &mut String) {
    use std::fmt::Write;
    for b in value.bytes() {
        if is_unreserved(b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}
