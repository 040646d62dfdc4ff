//! Routing rules and the request keys and values they test.

use http::HeaderName;
use ipnet::IpNet;

/// Where a request's key comes from, written `header:NAME`, `cookie:NAME`, `query:NAME` or `ip`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySpec {
    /// `header:NAME`: the request header's value.
    Header(HeaderName),
    /// `cookie:NAME`: the cookie's value.
    Cookie(String),
    /// `query:NAME`: the query parameter's decoded value.
    Query(String),
    /// `ip`: the client's address.
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
    /// `header`: a value of the header matches.
    Header {
        /// The header's name.
        name: HeaderName,
        /// The test a value of the header must pass.
        matcher: ValueMatch,
    },
    /// `cookie`: the cookie's value matches.
    Cookie {
        /// The cookie's name.
        name: String,
        /// The test the cookie's value must pass.
        matcher: ValueMatch,
    },
    /// `query`: the query parameter's decoded value matches.
    Query {
        /// The query parameter's name.
        name: String,
        /// The test the parameter's value must pass.
        matcher: ValueMatch,
    },
    /// `path`: the request's normalized path matches.
    Path(PathMatch),
    /// `method`: the request's method is one of these.
    Method(Vec<http::Method>),
    /// `client_ip`: the client address is in one of these networks.
    ClientIp(Vec<IpNet>),
    /// `semver`: the header parses as a version inside the range.
    Semver {
        /// The header holding the version.
        header: HeaderName,
        /// The range the version must be in.
        range: semver::VersionReq,
        /// The range as the user wrote it, for explanations.
        written: String,
    },
    /// `device`: the User-Agent's class is one of these.
    Device(Vec<DeviceClass>),
    /// `country`: the header holds one of the codes.
    Country {
        /// The header holding the code (`CF-IPCountry` unless the file says otherwise).
        header: HeaderName,
        /// Upper-case ISO 3166-1 alpha-2 codes.
        codes: Vec<String>,
    },
    /// Active from `from` (inclusive) until `until` (exclusive), as Unix milliseconds.
    Time {
        /// The first millisecond the rule matches; `None`: since always.
        from: Option<i64>,
        /// The first millisecond it no longer matches; `None`: forever.
        until: Option<i64>,
    },
    /// `segment`: the request's key is a member of the segment.
    Segment {
        /// Index into [`Config::segments`](super::Config::segments).
        segment: usize,
        /// Where the value looked up in the segment comes from.
        key: KeySpec,
    },
    /// `all`: every one of the rules matches.
    All(Vec<Rule>),
    /// `any`: at least one of the rules matches.
    Any(Vec<Rule>),
    /// `not`: the rule does not match.
    Not(Box<Rule>),
    /// The rule (one reading a header, written with `trusted_only: true`) matches only a
    /// request from a listener's `trusted_hops`: anyone else could send that header.
    TrustedOnly(Box<Rule>),
}

/// How a header, cookie or query value is tested.
#[derive(Debug, Clone)]
pub enum ValueMatch {
    /// `equals`: the whole value is this.
    Equals(String),
    /// `in`: the value is one of these.
    In(Vec<String>),
    /// `prefix`: the value starts with this.
    Prefix(String),
    /// `glob`: the value matches this pattern, where `*` is any run and `?` any one character.
    Glob(String),
    /// `regex`: the regex matches somewhere in the value (unanchored).
    Regex(regex::Regex),
    /// `exists: true`: the value is present.
    Exists,
    /// `absent: true`: the value is not present.
    Absent,
}

/// How a `path` rule tests the request's normalized path.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// `equals`: the path is exactly this.
    Equals(String),
    /// `prefix`: the path starts with this.
    Prefix(String),
    /// `glob`: the path matches this pattern of `*` and `?`.
    Glob(String),
    /// `regex`: the regex matches somewhere in the path (unanchored).
    Regex(regex::Regex),
}

/// A client's class, from its User-Agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceClass {
    /// `mobile`: Mobi, Android, iPhone, iPad or iPod in the User-Agent.
    Mobile,
    /// `desktop`: any User-Agent that is neither a bot nor mobile.
    Desktop,
    /// `bot`: bot, crawl, spider, slurp, headless and the like in the User-Agent.
    Bot,
}

impl DeviceClass {
    /// The class as written in the file: `mobile`, `desktop`, `bot`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceClass::Mobile => "mobile",
            DeviceClass::Desktop => "desktop",
            DeviceClass::Bot => "bot",
        }
    }
}
