//! Routing rules and the request keys and values they test.

use http::HeaderName;
use ipnet::IpNet;

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
