//! The borrowed view of a request that rules look at, and the allocation-free parsing of the
//! parts that arrive packed: cookies, query parameters, keys.
//!
//! Everything here works on the raw bytes the proxy already holds; nothing is copied to the heap.
//! Malformed input (non-UTF-8 bytes, cookies without `=`, stray `%`) is tolerated and simply
//! fails to match.

use std::fmt::Write as _;
use std::net::IpAddr;

use graylane_config::{CountryDb, KeySpec};
use http::HeaderName;
use ipnet::IpNet;

/// How many `X-Forwarded-For` entries are walked looking for the client behind trusted hops:
/// a chain longer than this gets no country from the database (its header still counts).
const MAX_FORWARDED_HOPS: usize = 16;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// What the rule engine sees of a request. The proxy builds one per request from data it already
/// has; every field is borrowed.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// The request's method.
    pub method: &'a http::Method,
    /// Host header / URI authority with the port already stripped; compared case-insensitively.
    pub host: Option<&'a str>,
    /// The path, without the query.
    pub path: &'a str,
    /// The raw query string, without the `?`.
    pub query: Option<&'a str>,
    /// The request's headers, as the client sent them.
    pub headers: &'a http::HeaderMap,
    /// The address of the client (the peer of the connection).
    pub client_ip: IpAddr,
    /// The time `time` rules compare with, in Unix milliseconds.
    pub now_unix_ms: i64,
    /// Value of `x-graylane-lane` from a TRUSTED hop (the proxy passes None otherwise).
    pub trusted_lane: Option<&'a str>,
    /// The request comes from a listener's `trusted_hops`: rules and keys written with
    /// `trusted_only: true` are honoured.
    pub trusted: bool,
    /// The listener's `trusted_hops`. When `trusted`, the address a `country` rule looks up in
    /// the GeoIP database is the right-most `X-Forwarded-For` entry outside them.
    pub trusted_hops: &'a [IpNet],
    /// A random number the caller draws per request: the bucket (modulo 100,000) of a client
    /// new to a sticky release that lacks the `bucket_by` key. The engine itself draws nothing.
    pub random: u32,
}

impl<'a> RequestView<'a> {
    /// Every value of header `name`, in order; a header sent several times yields each one.
    pub(crate) fn header_values(
        &self,
        name: &HeaderName,
    ) -> impl Iterator<Item = &'a [u8]> + use<'a> {
        self.headers
            .get_all(name)
            .into_iter()
            .map(http::HeaderValue::as_bytes)
    }

    /// Every value of cookie `name` across all `cookie` headers (HTTP/2 may split them).
    pub(crate) fn cookie_values<'n>(&self, name: &'n str) -> CookieValues<'a, 'n> {
        CookieValues {
            headers: self.headers.get_all(http::header::COOKIE).into_iter(),
            rest: &[],
            name: name.as_bytes(),
        }
    }

    /// Every raw (still percent-encoded) value of query parameter `name`; `?flag` yields `""`.
    pub(crate) fn query_values<'n>(
        &self,
        name: &'n str,
    ) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
        self.query.unwrap_or("").split('&').filter_map(move |pair| {
            let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
            (n == name).then_some(v)
        })
    }

    /// The client IP as rules and keys see it: an IPv4-mapped IPv6 address (what a dual-stack
    /// listener reports for IPv4 peers) is its IPv4 address.
    pub(crate) fn ip(&self) -> IpAddr {
        self.client_ip.to_canonical()
    }

    /// The address a `country` rule looks up in the GeoIP database: the peer's, or, when the
    /// peer is a trusted hop that sent `X-Forwarded-For`, the right-most entry that is not a
    /// trusted hop itself (the one the first trusted hop saw connect; anything left of it the
    /// client wrote). Every entry trusted: the left-most. `None` when an entry to be read is
    /// not an address or the chain is longer than [`MAX_FORWARDED_HOPS`]: the client is then
    /// unknown, and the rule falls back to its header.
    pub fn geo_ip(&self) -> Option<IpAddr> {
        if !self.trusted {
            return Some(self.ip());
        }
        let mut last = None;
        let entries = self
            .headers
            .get_all(&X_FORWARDED_FOR)
            .into_iter()
            .rev()
            .flat_map(|v| v.as_bytes().rsplit(|b| *b == b','));
        for (i, entry) in entries.enumerate() {
            if i == MAX_FORWARDED_HOPS {
                return None;
            }
            let ip = std::str::from_utf8(entry.trim_ascii())
                .ok()?
                .parse::<IpAddr>()
                .ok()?
                .to_canonical();
            if !self.trusted_hops.iter().any(|net| net.contains(&ip)) {
                return Some(ip);
            }
            last = Some(ip);
        }
        Some(last.unwrap_or_else(|| self.ip()))
    }

    /// The country `db` has for [`RequestView::geo_ip`], if any.
    pub(crate) fn country_from<'d>(&self, db: &'d CountryDb) -> Option<&'d str> {
        db.country(self.geo_ip()?)
    }

    /// Calls `f` with the key a per-key policy (a rate limit) counts this request under: the
    /// value `spec` names, the client IP when the request lacks it (as bucketing does), or an
    /// empty key for a policy without one.
    pub fn with_policy_key<R>(&self, spec: Option<&KeySpec>, f: impl FnOnce(&[u8]) -> R) -> R {
        match spec {
            None => f(b""),
            Some(spec) => match self.try_key(spec, f) {
                Ok(r) => r,
                Err(f) => with_ip_text(self.ip(), f),
            },
        }
    }

    /// Calls `f` with the key `spec` names, or returns `None` when the request lacks it. An empty
    /// value counts as missing: hashing it would put every such request in one bucket.
    pub(crate) fn with_key<R>(&self, spec: &KeySpec, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        self.try_key(spec, f).ok()
    }

    /// [`RequestView::with_key`] that hands `f` back when the key is missing.
    fn try_key<R, F: FnOnce(&[u8]) -> R>(&self, spec: &KeySpec, f: F) -> Result<R, F> {
        let value = match spec {
            KeySpec::Header(name) => self.header_values(name).find(|v| !v.is_empty()),
            KeySpec::Cookie(name) => self.cookie_values(name).find(|v| !v.is_empty()),
            KeySpec::Query(name) => {
                return match self.query_values(name).find(|v| !v.is_empty()) {
                    Some(raw) => Ok(with_decoded(raw, f)),
                    None => Err(f),
                };
            }
            KeySpec::ClientIp => return Ok(with_ip_text(self.ip(), f)),
        };
        match value {
            Some(v) => Ok(f(v)),
            None => Err(f),
        }
    }
}

/// The values of one cookie name, found by walking the `cookie` headers' `name=value` pairs.
/// Pairs are split with `memchr`, since real cookie headers run to kilobytes of analytics
/// cookies and this runs on every request of a release with a sticky cookie.
pub(crate) struct CookieValues<'a, 'n> {
    headers: http::header::ValueIter<'a, http::HeaderValue>,
    /// The unread part of the current header.
    rest: &'a [u8],
    name: &'n [u8],
}

impl<'a> Iterator for CookieValues<'a, '_> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        loop {
            if self.rest.is_empty() {
                self.rest = self.headers.next()?.as_bytes();
                continue;
            }
            let (pair, rest) = match memchr::memchr(b';', self.rest) {
                Some(end) => (&self.rest[..end], &self.rest[end + 1..]),
                None => (self.rest, &[][..]),
            };
            self.rest = rest;
            // A pair without `=` has no name (RFC 6265bis) and so never matches one.
            if let Some(eq) = memchr::memchr(b'=', pair)
                && pair[..eq].trim_ascii() == self.name
            {
                return Some(unquote(pair[eq + 1..].trim_ascii()));
            }
        }
    }
}

/// RFC 6265 allows a cookie value in double quotes; the quotes are not part of the value.
fn unquote(v: &[u8]) -> &[u8] {
    match v {
        [b'"', inner @ .., b'"'] => inner,
        _ => v,
    }
}

/// Longest query value decoded on the stack; longer ones (rare) are decoded on the heap.
const DECODE_STACK: usize = 256;

/// Calls `f` with the form-decoded bytes of `raw` (`%XX` → byte, `+` → space). Values without
/// `%` or `+` are passed as they are. A `%` not followed by two hex digits stays literal, as
/// browsers and most servers treat it.
pub(crate) fn with_decoded<R>(raw: &str, f: impl FnOnce(&[u8]) -> R) -> R {
    let bytes = raw.as_bytes();
    if !bytes.iter().any(|&b| b == b'%' || b == b'+') {
        return f(bytes);
    }
    if bytes.len() <= DECODE_STACK {
        let mut buf = [0u8; DECODE_STACK];
        let n = decode_into(bytes, &mut buf);
        f(&buf[..n])
    } else {
        let mut buf = vec![0u8; bytes.len()];
        let n = decode_into(bytes, &mut buf);
        f(&buf[..n])
    }
}

/// Decodes `src` into `dst` (at least `src.len()` long: decoding never grows) and returns the
/// decoded length.
fn decode_into(src: &[u8], dst: &mut [u8]) -> usize {
    let (mut i, mut n) = (0, 0);
    while i < src.len() {
        let b = match src[i] {
            b'+' => b' ',
            b'%' => match (src.get(i + 1).and_then(hex), src.get(i + 2).and_then(hex)) {
                (Some(hi), Some(lo)) => {
                    i += 2;
                    hi << 4 | lo
                }
                _ => b'%',
            },
            b => b,
        };
        dst[n] = b;
        n += 1;
        i += 1;
    }
    n
}

fn hex(b: &u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// A fixed buffer that `fmt::Write` can fill, for formatting short values without the heap.
struct StackText {
    buf: [u8; 64],
    len: usize,
}

impl std::fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let dst = self.buf.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Calls `f` with the textual form of `ip` (`203.0.113.7`, `2001:db8::1`), formatted on the
/// stack. The longest form, an IPv6 address with an embedded IPv4 one, is 45 bytes, so the
/// 64-byte buffer always suffices.
pub(crate) fn with_ip_text<R>(ip: IpAddr, f: impl FnOnce(&[u8]) -> R) -> R {
    let mut text = StackText {
        buf: [0; 64],
        len: 0,
    };
    // Cannot fail (see above); were it to, the key would be a truncated address, not a panic.
    let _ = write!(text, "{ip}");
    f(&text.buf[..text.len])
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue, Method};

    fn view<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> RequestView<'a> {
        RequestView {
            method: &Method::GET,
            host: None,
            path: "/",
            query,
            headers,
            client_ip: "10.0.0.1".parse().unwrap(),
            now_unix_ms: 0,
            trusted_lane: None,
            trusted: false,
            trusted_hops: &[],
            random: 0,
        }
    }

    /// The address a trusted hop's request (from 10.0.0.1) is looked up as, given its
    /// `X-Forwarded-For` headers and hops 10.0.0.0/8 trusted.
    fn geo_ip_behind_trusted_hops(forwarded_for: &[&str]) -> Option<IpAddr> {
        let mut headers = HeaderMap::new();
        for v in forwarded_for {
            headers.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        let hops = ["10.0.0.0/8".parse().unwrap()];
        let mut v = view(&headers, None);
        v.trusted = true;
        v.trusted_hops = &hops;
        v.geo_ip()
    }

    #[test]
    fn geo_ip_is_the_right_most_forwarded_address_that_is_not_a_trusted_hop() {
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert_eq!(geo_ip_behind_trusted_hops(&[]), ip("10.0.0.1"));
        assert_eq!(
            geo_ip_behind_trusted_hops(&["203.0.113.9"]),
            ip("203.0.113.9")
        );
        // The left-most entry is whatever the client wrote; the hop appended the real one.
        assert_eq!(
            geo_ip_behind_trusted_hops(&["192.0.2.66, 203.0.113.9, 10.1.2.3"]),
            ip("203.0.113.9")
        );
        // Several headers read as one list, in order.
        assert_eq!(
            geo_ip_behind_trusted_hops(&["192.0.2.66", "203.0.113.9 ,10.1.2.3"]),
            ip("203.0.113.9")
        );
        assert_eq!(
            geo_ip_behind_trusted_hops(&["10.9.9.9, 10.1.2.3"]),
            ip("10.9.9.9")
        );
        assert_eq!(
            geo_ip_behind_trusted_hops(&["::ffff:203.0.113.9"]),
            ip("203.0.113.9")
        );
        // An entry that is not an address where the client should be: unknown.
        assert_eq!(geo_ip_behind_trusted_hops(&["unknown, 10.1.2.3"]), None);
        assert_eq!(geo_ip_behind_trusted_hops(&["203.0.113.9:4711"]), None);
        // Junk left of the client's entry is never read.
        assert_eq!(
            geo_ip_behind_trusted_hops(&["junk, 203.0.113.9"]),
            ip("203.0.113.9")
        );
        let long = vec!["10.0.0.2"; MAX_FORWARDED_HOPS + 1].join(",");
        assert_eq!(geo_ip_behind_trusted_hops(&[&long]), None);
    }

    #[test]
    fn geo_ip_of_an_untrusted_peer_ignores_x_forwarded_for() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        assert_eq!(
            view(&headers, None).geo_ip(),
            Some("10.0.0.1".parse().unwrap())
        );
    }

    fn decoded(raw: &str) -> Vec<u8> {
        with_decoded(raw, <[u8]>::to_vec)
    }

    #[test]
    fn cookies_across_several_headers() {
        let mut h = HeaderMap::new();
        h.append("cookie", HeaderValue::from_static("a=1; b=2"));
        h.append("cookie", HeaderValue::from_static("c=3;b=\"4\""));
        let v = view(&h, None);
        let b: Vec<_> = v.cookie_values("b").collect();
        assert_eq!(b, vec![&b"2"[..], &b"4"[..]]);
        assert_eq!(v.cookie_values("c").collect::<Vec<_>>(), vec![&b"3"[..]]);
        assert_eq!(v.cookie_values("d").count(), 0);
    }

    #[test]
    fn garbage_cookies_are_skipped() {
        let mut h = HeaderMap::new();
        h.append(
            "cookie",
            HeaderValue::from_bytes(b";;=;novalue; ;x=\xff\xfe;==;y==z;\"").unwrap(),
        );
        let v = view(&h, None);
        assert_eq!(v.cookie_values("novalue").count(), 0);
        assert_eq!(
            v.cookie_values("x").collect::<Vec<_>>(),
            vec![&b"\xff\xfe"[..]]
        );
        assert_eq!(v.cookie_values("y").collect::<Vec<_>>(), vec![&b"=z"[..]]);
        assert_eq!(
            v.cookie_values("").collect::<Vec<_>>(),
            vec![&b""[..], &b"="[..]]
        );
    }

    #[test]
    fn query_values_are_raw_and_repeatable() {
        let h = HeaderMap::new();
        let v = view(&h, Some("a=1&flag&a=x%20y&b="));
        assert_eq!(v.query_values("a").collect::<Vec<_>>(), vec!["1", "x%20y"]);
        assert_eq!(v.query_values("flag").collect::<Vec<_>>(), vec![""]);
        assert_eq!(v.query_values("b").collect::<Vec<_>>(), vec![""]);
        assert_eq!(v.query_values("c").count(), 0);
        assert_eq!(view(&h, None).query_values("a").count(), 0);
    }

    #[test]
    fn form_decoding() {
        assert_eq!(decoded("plain"), b"plain");
        assert_eq!(decoded("a+b%20c"), b"a b c");
        assert_eq!(decoded("%E2%9C%93"), "✓".as_bytes());
        assert_eq!(decoded("100%"), b"100%");
        assert_eq!(decoded("%zz%4"), b"%zz%4");
        let long = "%41".repeat(200);
        assert_eq!(decoded(&long), "A".repeat(200).as_bytes());
    }

    #[test]
    fn keys() {
        let mut h = HeaderMap::new();
        h.append("x-user-id", HeaderValue::from_static(""));
        h.append("x-user-id", HeaderValue::from_static("u-1"));
        h.append("cookie", HeaderValue::from_static("uid=; uid=c-2"));
        let v = view(&h, Some("u=&u=a%2Bb"));
        let key = |spec: KeySpec| v.with_key(&spec, <[u8]>::to_vec);
        assert_eq!(
            key(KeySpec::Header(HeaderName::from_static("x-user-id"))),
            Some(b"u-1".to_vec())
        );
        assert_eq!(
            key(KeySpec::Header(HeaderName::from_static("x-other"))),
            None
        );
        assert_eq!(key(KeySpec::Cookie("uid".into())), Some(b"c-2".to_vec()));
        assert_eq!(key(KeySpec::Query("u".into())), Some(b"a+b".to_vec()));
        assert_eq!(key(KeySpec::Query("missing".into())), None);
        assert_eq!(key(KeySpec::ClientIp), Some(b"10.0.0.1".to_vec()));
    }

    #[test]
    fn ip_text() {
        let text = |s: &str| with_ip_text(s.parse().unwrap(), |b| String::from_utf8(b.to_vec()));
        assert_eq!(text("203.0.113.7").unwrap(), "203.0.113.7");
        assert_eq!(text("2001:db8::1").unwrap(), "2001:db8::1");
        let longest = "ffff:ffff:ffff:ffff:ffff:fffe:255.255.255.255";
        assert_eq!(
            text(longest).unwrap(),
            longest.parse::<IpAddr>().unwrap().to_string()
        );
        let mut h = HeaderMap::new();
        h.insert("x", HeaderValue::from_static("1"));
        let mut v = view(&h, None);
        v.client_ip = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(
            v.with_key(&KeySpec::ClientIp, <[u8]>::to_vec),
            Some(b"192.0.2.1".to_vec())
        );
    }
}
