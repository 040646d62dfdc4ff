//! Compiled rules: each [`graylane_config::Rule`] becomes a [`Matcher`] once, when the routing
//! table is built, so evaluating it per request is a handful of comparisons with no allocation.
//!
//! Compilation picks the cheapest test that is equivalent to what the user wrote: a glob without
//! wildcards is an equality, `canary-*` a prefix check, `*-beta` a suffix check; large `in` lists
//! become hash sets; segments are shared hash sets. Device classes come from User-Agent marker
//! words found with SIMD substring search.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock};

use graylane_config::{CountryDb, DeviceClass, KeySpec, PathMatch, Rule, ValueMatch};
use http::{HeaderName, Method};
use ipnet::IpNet;
use memchr::memmem;

use crate::request::{RequestView, with_decoded};

/// Hash sets probed per request. foldhash is several times faster than the default SipHash on
/// short keys; its per-process seed still keeps a request from choosing which keys collide,
/// and the sets' contents come from the configuration, not from requests.
pub(crate) type FastSet<T> = HashSet<T, foldhash::fast::RandomState>;

/// Members of a segment, shared by every rule that names it: the set the configuration lists,
/// or one kept current elsewhere (a Redis segment refreshed in the background).
#[derive(Debug, Clone)]
pub(crate) enum Members {
    Fixed(Arc<FastSet<Box<str>>>),
    Live(Arc<dyn LiveSegment>),
}

impl Default for Members {
    fn default() -> Self {
        Members::Fixed(Arc::default())
    }
}

impl Members {
    fn contains(&self, member: &str) -> bool {
        match self {
            Members::Fixed(set) => set.contains(member),
            Members::Live(live) => live.contains(member),
        }
    }
}

/// A segment whose members change while the routing table is in use, such as a Redis set
/// mirrored by a background refresh. `contains` runs on the request path: it must not block,
/// do I/O or allocate.
pub trait LiveSegment: Send + Sync + std::fmt::Debug {
    /// Whether `member` is in the segment's current members.
    fn contains(&self, member: &str) -> bool;
}

/// `in` lists up to this long are scanned; longer ones are hashed.
const IN_LIST_SCAN_MAX: usize = 8;

#[derive(Debug, Clone)]
pub(crate) enum Matcher {
    Header {
        name: HeaderName,
        value: ValueMatcher,
    },
    Cookie {
        name: Box<str>,
        value: ValueMatcher,
    },
    Query {
        name: Box<str>,
        value: ValueMatcher,
    },
    Path(StrMatcher),
    Method(Box<[Method]>),
    ClientIp(Box<[IpNet]>),
    Semver {
        header: HeaderName,
        range: semver::VersionReq,
    },
    Device(DeviceSet),
    Country {
        header: HeaderName,
        codes: Box<[Box<str>]>,
        /// The `geoip:` database, asked first; `header` is the fallback.
        db: Option<Arc<CountryDb>>,
    },
    Time {
        from: Option<i64>,
        until: Option<i64>,
    },
    Segment {
        members: Members,
        key: KeySpec,
    },
    All(Box<[Matcher]>),
    Any(Box<[Matcher]>),
    Not(Box<Matcher>),
    TrustedOnly(Box<Matcher>),
}

/// How the values of a header, cookie or query parameter are tested.
#[derive(Debug, Clone)]
pub(crate) enum ValueMatcher {
    /// Some value passes the string test (a name sent several times matches if any value does).
    Value(StrMatcher),
    /// The name is present, whatever its value.
    Exists,
    /// The name is not present at all.
    Absent,
}

/// A test on one string value.
#[derive(Debug, Clone)]
pub(crate) enum StrMatcher {
    Equals(Box<str>),
    InList(Box<[Box<str>]>),
    InSet(FastSet<Box<str>>),
    Prefix(Box<str>),
    Suffix(Box<str>),
    Contains(Box<str>),
    /// The glob `*`: every value, even the empty one.
    AnyValue,
    Glob(Box<str>),
    Regex(regex::Regex),
}

impl Matcher {
    /// Compiles `rule`; `segments` are the members of `config.segments`, by index, and `db`
    /// is the `geoip:` database `country` rules ask before their header.
    pub(crate) fn compile(
        rule: &Rule,
        segments: &[Members],
        db: Option<&Arc<CountryDb>>,
    ) -> Matcher {
        match rule {
            Rule::Header { name, matcher } => Matcher::Header {
                name: name.clone(),
                value: ValueMatcher::compile(matcher),
            },
            Rule::Cookie { name, matcher } => Matcher::Cookie {
                name: name.as_str().into(),
                value: ValueMatcher::compile(matcher),
            },
            Rule::Query { name, matcher } => Matcher::Query {
                name: name.as_str().into(),
                value: ValueMatcher::compile(matcher),
            },
            Rule::Path(p) => Matcher::Path(match p {
                PathMatch::Equals(s) => StrMatcher::Equals(s.as_str().into()),
                PathMatch::Prefix(s) => StrMatcher::Prefix(s.as_str().into()),
                PathMatch::Glob(g) => StrMatcher::glob(g),
                PathMatch::Regex(r) => StrMatcher::Regex(r.clone()),
            }),
            Rule::Method(methods) => Matcher::Method(methods.as_slice().into()),
            Rule::ClientIp(nets) => Matcher::ClientIp(nets.as_slice().into()),
            Rule::Semver { header, range, .. } => Matcher::Semver {
                header: header.clone(),
                range: range.clone(),
            },
            Rule::Device(classes) => {
                // Build the searchers now, so the first request's `decide` does not allocate.
                LazyLock::force(&CLASSIFIER);
                Matcher::Device(DeviceSet::of(classes))
            }
            Rule::Country { header, codes } => Matcher::Country {
                header: header.clone(),
                codes: codes.iter().map(|c| c.as_str().into()).collect(),
                db: db.cloned(),
            },
            Rule::Time { from, until } => Matcher::Time {
                from: *from,
                until: *until,
            },
            Rule::Segment { segment, key } => Matcher::Segment {
                // The config resolved the name to an index, so it is in range; an empty set is
                // the safe reading should it not be.
                members: segments.get(*segment).cloned().unwrap_or_default(),
                key: key.clone(),
            },
            Rule::All(rules) => Matcher::All(
                rules
                    .iter()
                    .map(|r| Self::compile(r, segments, db))
                    .collect(),
            ),
            Rule::Any(rules) => Matcher::Any(
                rules
                    .iter()
                    .map(|r| Self::compile(r, segments, db))
                    .collect(),
            ),
            Rule::Not(rule) => Matcher::Not(Box::new(Self::compile(rule, segments, db))),
            Rule::TrustedOnly(rule) => {
                Matcher::TrustedOnly(Box::new(Self::compile(rule, segments, db)))
            }
        }
    }

    pub(crate) fn matches(&self, req: &RequestView<'_>) -> bool {
        match self {
            Matcher::Header { name, value } => value.matches(req.header_values(name)),
            Matcher::Cookie { name, value } => value.matches(req.cookie_values(name)),
            Matcher::Query { name, value } => match value {
                ValueMatcher::Value(m) => req
                    .query_values(name)
                    .any(|raw| with_decoded(raw, |bytes| m.matches_bytes(bytes))),
                ValueMatcher::Exists => req.query_values(name).next().is_some(),
                ValueMatcher::Absent => req.query_values(name).next().is_none(),
            },
            Matcher::Path(m) => m.matches(req.path),
            Matcher::Method(methods) => methods.contains(req.method),
            Matcher::ClientIp(nets) => {
                let ip = req.ip();
                nets.iter().any(|net| net.contains(&ip))
            }
            Matcher::Semver { header, range } => req
                .header_values(header)
                .any(|v| parse_version(v).is_some_and(|v| range.matches(&v))),
            Matcher::Device(set) => req
                .headers
                .get(http::header::USER_AGENT)
                .and_then(|ua| std::str::from_utf8(ua.as_bytes()).ok())
                .is_some_and(|ua| set.contains(classify(ua))),
            // The database's answer wins; without one (no database, an address it has no
            // country for) the header decides, and with neither the rule does not match.
            Matcher::Country { header, codes, db } => {
                match db.as_deref().and_then(|db| req.country_from(db)) {
                    Some(code) => codes.iter().any(|c| c.eq_ignore_ascii_case(code)),
                    None => req.header_values(header).any(|v| {
                        let v = v.trim_ascii();
                        codes.iter().any(|c| c.as_bytes().eq_ignore_ascii_case(v))
                    }),
                }
            }
            Matcher::Time { from, until } => {
                from.is_none_or(|f| req.now_unix_ms >= f)
                    && until.is_none_or(|u| req.now_unix_ms < u)
            }
            Matcher::Segment { members, key } => req
                .with_key(key, |k| {
                    std::str::from_utf8(k).is_ok_and(|k| members.contains(k))
                })
                .unwrap_or(false),
            Matcher::All(ms) => ms.iter().all(|m| m.matches(req)),
            Matcher::Any(ms) => ms.iter().any(|m| m.matches(req)),
            Matcher::Not(m) => !m.matches(req),
            Matcher::TrustedOnly(m) => req.trusted && m.matches(req),
        }
    }
}

impl ValueMatcher {
    fn compile(m: &ValueMatch) -> ValueMatcher {
        let value = match m {
            ValueMatch::Exists => return ValueMatcher::Exists,
            ValueMatch::Absent => return ValueMatcher::Absent,
            ValueMatch::Equals(s) => StrMatcher::Equals(s.as_str().into()),
            ValueMatch::In(list) if list.len() <= IN_LIST_SCAN_MAX => {
                StrMatcher::InList(list.iter().map(|s| s.as_str().into()).collect())
            }
            ValueMatch::In(list) => {
                StrMatcher::InSet(list.iter().map(|s| s.as_str().into()).collect())
            }
            ValueMatch::Prefix(p) => StrMatcher::Prefix(p.as_str().into()),
            ValueMatch::Glob(g) => StrMatcher::glob(g),
            ValueMatch::Regex(r) => StrMatcher::Regex(r.clone()),
        };
        ValueMatcher::Value(value)
    }

    fn matches<'v>(&self, mut values: impl Iterator<Item = &'v [u8]>) -> bool {
        match self {
            ValueMatcher::Value(m) => values.any(|v| m.matches_bytes(v)),
            ValueMatcher::Exists => values.next().is_some(),
            ValueMatcher::Absent => values.next().is_none(),
        }
    }
}

impl StrMatcher {
    /// The cheapest matcher equivalent to glob `pattern`.
    fn glob(pattern: &str) -> StrMatcher {
        let wild = |c: char| c == '*' || c == '?';
        if !pattern.contains(wild) {
            return StrMatcher::Equals(pattern.into());
        }
        if pattern.bytes().all(|b| b == b'*') {
            return StrMatcher::AnyValue;
        }
        let inner = |s: &str| !s.is_empty() && !s.contains(wild);
        if let Some(p) = pattern.strip_suffix('*').filter(|p| inner(p)) {
            return StrMatcher::Prefix(p.into());
        }
        if let Some(s) = pattern.strip_prefix('*').filter(|s| inner(s)) {
            return StrMatcher::Suffix(s.into());
        }
        if let Some(c) = pattern
            .strip_prefix('*')
            .and_then(|p| p.strip_suffix('*'))
            .filter(|c| inner(c))
        {
            return StrMatcher::Contains(c.into());
        }
        StrMatcher::Glob(pattern.into())
    }

    /// Values that are not UTF-8 never match a string test.
    fn matches_bytes(&self, value: &[u8]) -> bool {
        std::str::from_utf8(value).is_ok_and(|s| self.matches(s))
    }

    fn matches(&self, s: &str) -> bool {
        match self {
            StrMatcher::Equals(e) => s == &**e,
            StrMatcher::InList(list) => list.iter().any(|e| s == &**e),
            StrMatcher::InSet(set) => set.contains(s),
            StrMatcher::Prefix(p) => s.starts_with(&**p),
            StrMatcher::Suffix(x) => s.ends_with(&**x),
            StrMatcher::Contains(c) => s.contains(&**c),
            StrMatcher::AnyValue => true,
            StrMatcher::Glob(g) => glob_match(g.as_bytes(), s),
            StrMatcher::Regex(r) => r.is_match(s),
        }
    }
}

/// Whether `text` matches `pattern`, where `*` is any run of characters (even none) and `?` is
/// exactly one character; everything else is literal.
///
/// Iterative backtracking to the most recent `*` only: that is enough, because a later `*` can
/// absorb whatever an earlier one would have, so the match runs in O(len(pattern) × len(text))
/// at worst and without recursion or allocation. It works on bytes but steps over whole UTF-8
/// characters for `?` and when backtracking, so `?` matches `é` as one character.
pub(crate) fn glob_match(pattern: &[u8], text: &str) -> bool {
    let text = text.as_bytes();
    let (mut p, mut t) = (0, 0);
    // (pattern position just after the last `*`, text position that `*` would resume from)
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                p += 1;
                star = Some((p, t));
                continue;
            }
            Some(b'?') => {
                p += 1;
                t += utf8_width(text[t]);
                continue;
            }
            Some(&c) if c == text[t] => {
                p += 1;
                t += 1;
                continue;
            }
            _ => {}
        }
        let Some((after_star, from)) = star else {
            return false;
        };
        let resume = from + utf8_width(text[from]);
        star = Some((after_star, resume));
        p = after_star;
        t = resume;
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// Length of the UTF-8 character starting with `lead` (1 for anything unexpected, so a
/// caller always advances).
fn utf8_width(lead: u8) -> usize {
    match lead {
        0xf0..=0xff => 4,
        0xe0..=0xef => 3,
        0xc0..=0xdf => 2,
        _ => 1,
    }
}

/// A header value as a semantic version; a leading `v` is tolerated (`v2.1.0`).
fn parse_version(value: &[u8]) -> Option<semver::Version> {
    let s = std::str::from_utf8(value).ok()?.trim();
    let s = s.strip_prefix(['v', 'V']).unwrap_or(s);
    semver::Version::parse(s).ok()
}

/// A set of device classes as a bit mask.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DeviceSet(u8);

impl DeviceSet {
    fn of(classes: &[DeviceClass]) -> DeviceSet {
        DeviceSet(classes.iter().fold(0, |m, &c| m | Self::bit(c)))
    }

    fn bit(c: DeviceClass) -> u8 {
        match c {
            DeviceClass::Mobile => 1,
            DeviceClass::Desktop => 2,
            DeviceClass::Bot => 4,
        }
    }

    fn contains(self, c: DeviceClass) -> bool {
        self.0 & Self::bit(c) != 0
    }
}

/// Substrings (lower case) that mark crawlers and automation, matched ignoring ASCII case.
const BOT_MARKERS: [&str; 6] = [
    "bot",
    "crawl",
    "spider",
    "slurp",
    "facebookexternalhit",
    "headless",
];
/// Substrings that mark phones and tablets, matched as written (they are product tokens).
const MOBILE_MARKERS: [&str; 5] = ["Mobi", "Android", "iPhone", "iPad", "iPod"];

/// Substring searchers for the markers, built once per process: SIMD `memmem` scans a
/// 100–200 byte User-Agent per marker in a few nanoseconds, where checking every marker at
/// every position costs hundreds.
struct Classifier {
    bots: [memmem::Finder<'static>; BOT_MARKERS.len()],
    mobiles: [memmem::Finder<'static>; MOBILE_MARKERS.len()],
}

static CLASSIFIER: LazyLock<Classifier> = LazyLock::new(|| Classifier {
    bots: BOT_MARKERS.map(memmem::Finder::new),
    mobiles: MOBILE_MARKERS.map(memmem::Finder::new),
});

/// The device class of a User-Agent: bot markers win (Googlebot's UA also says "Android"
/// and "Mobile"), then mobile markers, else desktop.
pub(crate) fn classify(ua: &str) -> DeviceClass {
    let c = &*CLASSIFIER;
    let ua = ua.as_bytes();
    if contains_any_ignore_ascii_case(ua, &c.bots) {
        DeviceClass::Bot
    } else if c.mobiles.iter().any(|f| f.find(ua).is_some()) {
        DeviceClass::Mobile
    } else {
        DeviceClass::Desktop
    }
}

/// Whether `hay` contains any of the lower-case `needles`, ignoring ASCII case: `hay` is
/// lowered into a stack buffer one window at a time, the windows overlapping by enough that a
/// needle straddling two of them is still seen whole.
fn contains_any_ignore_ascii_case(hay: &[u8], needles: &[memmem::Finder<'static>]) -> bool {
    const WINDOW: usize = 256;
    let overlap = needles
        .iter()
        .map(|f| f.needle().len())
        .max()
        .unwrap_or(0)
        .saturating_sub(1);
    let mut lowered = [0u8; WINDOW];
    let mut start = 0;
    loop {
        let end = hay.len().min(start + WINDOW);
        let window = &mut lowered[..end - start];
        for (dst, src) in window.iter_mut().zip(&hay[start..end]) {
            *dst = src.to_ascii_lowercase();
        }
        if needles.iter().any(|f| f.find(window).is_some()) {
            return true;
        }
        if end == hay.len() {
            return false;
        }
        start = end - overlap;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_compiles_to_cheap_checks() {
        assert!(matches!(StrMatcher::glob("canary"), StrMatcher::Equals(s) if &*s == "canary"));
        assert!(matches!(StrMatcher::glob("canary-*"), StrMatcher::Prefix(s) if &*s == "canary-"));
        assert!(matches!(StrMatcher::glob("*-beta"), StrMatcher::Suffix(s) if &*s == "-beta"));
        assert!(matches!(StrMatcher::glob("*beta*"), StrMatcher::Contains(s) if &*s == "beta"));
        assert!(matches!(StrMatcher::glob("*"), StrMatcher::AnyValue));
        assert!(matches!(StrMatcher::glob("**"), StrMatcher::AnyValue));
        assert!(matches!(StrMatcher::glob("a*b"), StrMatcher::Glob(_)));
        assert!(matches!(StrMatcher::glob("canary-?"), StrMatcher::Glob(_)));
        assert!(matches!(StrMatcher::glob("*a?*"), StrMatcher::Glob(_)));
    }

    #[test]
    fn glob_semantics() {
        let yes = [
            ("a*b", "ab"),
            ("a*b", "axxxb"),
            ("a*b", "abab"),
            ("a?c", "abc"),
            ("a?c", "aéc"),
            ("*.example.*", "www.example.com"),
            ("*a*b*c*", "xxaxxbxxcxx"),
            ("v?.*.*", "v2.10.3"),
            ("é*", "été"),
            ("*?", "x"),
            ("a**b", "ab"),
            ("", ""),
        ];
        let no = [
            ("a*b", "abc"),
            ("a?c", "ac"),
            ("a?c", "aééc"),
            ("*a*b*c*", "xxcxxbxxaxx"),
            ("?", ""),
            ("*?", ""),
            ("", "x"),
            ("abc", "ab"),
            ("ab", "abc"),
        ];
        for (p, t) in yes {
            assert!(glob_match(p.as_bytes(), t), "{p} should match {t}");
            assert!(
                StrMatcher::glob(p).matches(t),
                "{p} (compiled) should match {t}"
            );
        }
        for (p, t) in no {
            assert!(!glob_match(p.as_bytes(), t), "{p} should not match {t}");
            assert!(
                !StrMatcher::glob(p).matches(t),
                "{p} (compiled) should not match {t}"
            );
        }
    }

    /// A pathological pattern must stay polynomial: this is instant with the single-star
    /// backtracking and astronomically slow with naive recursion.
    #[test]
    fn glob_no_exponential_blowup() {
        let pattern = "*a".repeat(30) + "b";
        let text = "a".repeat(5_000);
        assert!(!glob_match(pattern.as_bytes(), &text));
    }

    #[test]
    fn device_classes() {
        let cases = [
            (
                "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
                DeviceClass::Bot,
            ),
            (
                "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) Mobile Safari/537.36 (compatible; GoogleBot/2.1)",
                DeviceClass::Bot,
            ),
            (
                "Mozilla/5.0 (X11; Linux x86_64) HeadlessChrome/120.0",
                DeviceClass::Bot,
            ),
            ("facebookexternalhit/1.1", DeviceClass::Bot),
            ("Mozilla/5.0 (compatible; Yahoo! Slurp)", DeviceClass::Bot),
            ("Baiduspider-image", DeviceClass::Bot),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148",
                DeviceClass::Mobile,
            ),
            (
                "Mozilla/5.0 (Linux; Android 14; Pixel 8)",
                DeviceClass::Mobile,
            ),
            (
                "Mozilla/5.0 (iPad; CPU OS 17_0 like Mac OS X)",
                DeviceClass::Mobile,
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Firefox/121.0",
                DeviceClass::Desktop,
            ),
            ("curl/8.5.0", DeviceClass::Desktop),
        ];
        for (ua, class) in cases {
            assert_eq!(classify(ua), class, "{ua}");
        }
    }

    #[test]
    fn markers_and_case() {
        assert_eq!(classify("xxBoTxx"), DeviceClass::Bot);
        assert_eq!(classify("ÉtéSPIDER"), DeviceClass::Bot);
        assert_eq!(classify("(iPod touch)"), DeviceClass::Mobile);
        assert_eq!(classify("(ipod touch)"), DeviceClass::Desktop);
        assert_eq!(classify("iPo"), DeviceClass::Desktop);
        assert_eq!(classify(""), DeviceClass::Desktop);
    }

    /// Long User-Agents are lowered in overlapping windows; a marker anywhere, including
    /// across a window boundary, is found.
    #[test]
    fn markers_in_long_user_agents() {
        for at in [0, 200, 240, 250, 255, 256, 300, 490, 1000] {
            let mut ua = "x".repeat(at);
            ua.push_str("FacebookExternalHit");
            ua.push_str(&"y".repeat(20));
            assert_eq!(classify(&ua), DeviceClass::Bot, "marker at {at}");
        }
        assert_eq!(classify(&"z".repeat(2000)), DeviceClass::Desktop);
    }

    #[test]
    fn versions_parse_leniently() {
        assert_eq!(
            parse_version(b"v2.1.0"),
            Some(semver::Version::new(2, 1, 0))
        );
        assert_eq!(
            parse_version(b" 2.1.0 "),
            Some(semver::Version::new(2, 1, 0))
        );
        assert_eq!(parse_version(b"2.1"), None);
        assert_eq!(parse_version(b"\xff2.1.0"), None);
        assert_eq!(parse_version(b""), None);
    }
}
