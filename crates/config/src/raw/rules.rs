//! Routing rules' keys: header, cookie, query, path, semver, country, time and segment rules.

use serde::Deserialize;

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
