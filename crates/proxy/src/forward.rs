//! The request head an upstream receives: the client's headers minus the hop-by-hop ones (and
//! those its `Connection` header names) and minus the ones the gateway owns, then the
//! gateway's own — `X-Graylane-Lane`, `X-Forwarded-For`, `X-Forwarded-Proto`, `Via`, a
//! `traceparent` when the client sent no valid one, and `Host` from the request target's
//! authority when it has one.
//!
//! Framing is the gateway's decision alone: the client's `Content-Length` and
//! `Transfer-Encoding` never reach the upstream (the head's framing line is written by
//! `upstream::codec::encode_head` from the body graylane actually sends), and a `Connection`
//! header can nominate only the client's own extension headers — never `Host`, a framing header
//! or one the gateway writes (the list of hop-by-hop fields and the `Connection` parser, shared
//! with the response side, are in `hop_by_hop.rs`).
//!
//! Header names with `_` are dropped when they would read as one of the gateway's headers once
//! a framework turns `_` into `-` (`X_Graylane_Lane`), and the rest follow the listener's
//! `headers_with_underscores`.
//!
//! The gateway's headers are written as bytes straight into the upstream request head while the
//! client's headers are copied, rather than inserted into the request's `HeaderMap` first: each
//! insert hashes a name and may grow the map, and on a small GET that bookkeeping cost more than
//! the rest of building the head.

use graylane_config::UnderscoreHeaders;
use http::Uri;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::hop_by_hop;
use crate::rng::fastrand_u64;
use crate::telemetry::TraceCell;

/// `x-graylane-lane`: the version a request was routed to, sent to every upstream; honoured
/// from a listener's `trusted_hops` (so one decision holds across every hop) and stripped from
/// anyone else.
pub static X_GRAYLANE_LANE: HeaderName = HeaderName::from_static("x-graylane-lane");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
const VIA_VALUE: &[u8] = b"1.1 graylane";

/// What the gateway adds to a request on its way to an upstream.
pub(crate) struct Forwarding<'a> {
    /// The lane the request is on (the version's); replaces any the client sent: from a trusted
    /// hop it has already been honoured by the decision, from anyone else it must not reach
    /// the upstream.
    pub lane: &'a HeaderValue,
    /// The client's address as an `X-Forwarded-For` entry.
    pub forwarded_for: &'a HeaderValue,
    /// The client connection is TLS (`X-Forwarded-Proto: https`).
    pub tls: bool,
    /// The path to send instead of the request target's (its normal form), if they differ.
    pub path: Option<&'a str>,
    /// The listener's policy for header names with `_`.
    pub underscores: UnderscoreHeaders,
    /// The client is a trusted hop: its forwarding details (`Forwarded`, `X-Forwarded-Host`,
    /// …) are passed on.
    pub trusted: bool,
    /// A mirror step's copy (`X-Graylane-Mirror: 1`), whose answer nobody sees.
    pub mirror: bool,
    /// The request's trace when it is traced: the `traceparent` sent is then its trace id with
    /// the attempt's client span as parent, in place of the client's or a new one.
    pub trace: Option<&'a TraceCell>,
}

impl Forwarding<'_> {
    /// Writes the header lines of the request head (`name: value\r\n` each) into `out`, all
    /// but the framing line. Returns whether the client framed its body with a
    /// `Content-Length` (which is not written here).
    pub(crate) fn write_headers(&self, uri: &Uri, headers: &HeaderMap, out: &mut Vec<u8>) -> bool {
        // A `Connection` header and trace context are rare on requests that reach a proxy: one
        // pass over the names finds whether either is there, and only then is it looked up.
        // The same pass answers the framing question, so the encoder need not look it up.
        let (mut has_connection, mut has_trace, mut has_length) = (false, false, false);
        for name in headers.keys() {
            has_connection |= name == header::CONNECTION;
            has_trace |= name == TRACEPARENT;
            has_length |= name == header::CONTENT_LENGTH;
        }
        let connection = has_connection.then(|| headers.get_all(header::CONNECTION));
        // An authority in the target (absolute form, or HTTP/2's `:authority`) replaces any
        // `Host` (RFC 9112 §3.2.2): routing used it, so the upstream must get the same host.
        let authority = uri.authority();
        let trace = if has_trace {
            incoming_trace(headers)
        } else {
            Trace::Absent
        };
        let mut forwarded_for = false;
        for (name, value) in headers {
            if name == TRACEPARENT {
                if let Trace::Valid(ids) = trace
                    && self.trace.is_none()
                {
                    // A later version's extra fields are dropped: version 00 is what this hop
                    // speaks (W3C Trace Context §4.3).
                    out.extend_from_slice(b"traceparent: 00");
                    out.extend_from_slice(ids);
                    out.extend_from_slice(b"\r\n");
                }
                continue;
            }
            let keep = if name == header::HOST {
                authority.is_none()
            } else if name == TRACESTATE {
                matches!(trace, Trace::Valid(_)) && value.len() <= MAX_TRACESTATE
            } else if name == X_FORWARDED_FOR {
                forwarded_for = true;
                false
            } else {
                !(hop_by_hop::is_hop_by_hop(name)
                    || name == header::CONTENT_LENGTH
                    || name == X_FORWARDED_PROTO
                    || name.as_str().starts_with(GRAYLANE_PREFIX)
                    || (!self.trusted && is_forwarding_detail(name))
                    || (name.as_str().contains('_') && !self.underscore_allowed(name))
                    || connection
                        .as_ref()
                        .is_some_and(|c| hop_by_hop::nominates(c, name)))
            };
            if keep {
                line(out, name.as_str().as_bytes(), value.as_bytes());
            }
        }
        if let Some(authority) = authority {
            line(out, b"host", authority.as_str().as_bytes());
        }
        line(out, b"x-graylane-lane", self.lane.as_bytes());
        if self.mirror {
            line(out, b"x-graylane-mirror", b"1");
        }
        out.extend_from_slice(b"x-forwarded-for: ");
        if forwarded_for {
            for previous in &headers.get_all(&X_FORWARDED_FOR) {
                out.extend_from_slice(previous.as_bytes());
                out.extend_from_slice(b", ");
            }
        }
        out.extend_from_slice(self.forwarded_for.as_bytes());
        out.extend_from_slice(b"\r\n");
        let proto: &[u8] = if self.tls { b"https" } else { b"http" };
        line(out, b"x-forwarded-proto", proto);
        // After any `Via` the client sent: the list stays in the order of the hops.
        line(out, b"via", VIA_VALUE);
        match self.trace {
            Some(traced) => traced.write_traceparent(out),
            None if !matches!(trace, Trace::Valid(_)) => {
                line(out, b"traceparent", &new_traceparent());
            }
            None => {}
        }
        has_length
    }

    /// Whether a client header whose name has an `_` may go upstream.
    fn underscore_allowed(&self, name: &HeaderName) -> bool {
        self.underscores == UnderscoreHeaders::Allow && !reads_as_gateway_header(name.as_str())
    }
}

/// Whether `name`, with each `_` read as `-` (as CGI-style frameworks do), is a header the
/// gateway writes or decides on.
pub(crate) fn reads_as_gateway_header(name: &str) -> bool {
    const OWNED: [&str; 10] = [
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "via",
        "traceparent",
        "tracestate",
    ];
    let same = |a: &str, b: &str| {
        a.len() == b.len()
            && a.bytes()
                .zip(b.bytes())
                .all(|(x, y)| x.to_ascii_lowercase() == y || (x == b'_' && y == b'-'))
    };
    let prefix = "x-graylane-";
    OWNED.iter().any(|owned| same(name, owned))
        || name.get(..prefix.len()).is_some_and(|p| same(p, prefix))
}

/// The client's W3C trace context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trace<'a> {
    /// None: a new trace is started, and a `tracestate` alone is dropped.
    Absent,
    /// One well-formed `traceparent`: `-traceid-parentid-flags` of it, forwarded as version
    /// 00, with its `tracestate` (up to [`MAX_TRACESTATE`] bytes).
    Valid(&'a [u8]),
    /// Malformed or repeated: dropped with its `tracestate`, and a new trace is started (W3C
    /// Trace Context §4.3), so a client cannot make every hop log garbage or a chosen id.
    Invalid,
}

/// Longest `tracestate` passed on: W3C Trace Context §3.3.1.5 lets a hop drop one longer than
/// 512 characters, and a client should not be able to make every hop log kilobytes.
const MAX_TRACESTATE: usize = 512;

/// The prefix of graylane's own headers: a client's never reach an upstream (the lane is
/// written afresh), an upstream's never reach a client (graylane stamps its own).
pub(crate) const GRAYLANE_PREFIX: &str = "x-graylane-";

/// Headers that tell an upstream about the client's connection besides `X-Forwarded-For`
/// and `X-Forwarded-Proto` (which graylane writes): believed only from a trusted hop, since an
/// upstream that honours `X-Forwarded-Host` would see a host graylane did not route on.
fn is_forwarding_detail(name: &HeaderName) -> bool {
    const DETAILS: [&str; 4] = [
        "forwarded",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-real-ip",
    ];
    DETAILS.contains(&name.as_str())
}

pub(crate) fn incoming_trace(headers: &HeaderMap) -> Trace<'_> {
    let mut values = headers.get_all(&TRACEPARENT).iter();
    match (values.next(), values.next()) {
        (None, _) => Trace::Absent,
        (Some(v), None) if valid_traceparent(v.as_bytes()) => Trace::Valid(&v.as_bytes()[2..55]),
        _ => Trace::Invalid,
    }
}

/// `version-traceid-parentid-flags`, lower-case hex, W3C Trace Context §3.2: version `ff` and
/// all-zero ids are invalid; a later version may append fields after a `-`.
fn valid_traceparent(v: &[u8]) -> bool {
    let hex = |s: &[u8]| s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let zero = |s: &[u8]| s.iter().all(|&b| b == b'0');
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return false;
    }
    let (version, trace, parent, flags) = (&v[..2], &v[3..35], &v[36..52], &v[53..55]);
    let fields_ok = hex(version) && hex(trace) && hex(parent) && hex(flags);
    let length_ok = if version == b"00" {
        v.len() == 55
    } else {
        v.len() == 55 || v[55] == b'-'
    };
    fields_ok && version != b"ff" && !zero(trace) && !zero(parent) && length_ok
}

fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A W3C `traceparent` with fresh random trace and span ids, sampled:
/// `00-<32 hex trace id>-<16 hex span id>-01`, written a byte (two hex digits) at a time from a
/// table: most requests arrive without one, and digit by digit this cost more than routing.
pub(crate) fn new_traceparent() -> [u8; 55] {
    const PAIRS: [[u8; 2]; 256] = {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut t = [[0u8; 2]; 256];
        let mut b = 0;
        while b < 256 {
            t[b] = [HEX[b >> 4], HEX[b & 0xf]];
            b += 1;
        }
        t
    };
    fn put(out: &mut [u8], word: u64) {
        for (pair, byte) in out.chunks_exact_mut(2).zip(word.to_be_bytes()) {
            pair.copy_from_slice(&PAIRS[usize::from(byte)]);
        }
    }
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-01";
    put(&mut out[3..19], fastrand_u64());
    put(&mut out[19..35], fastrand_u64());
    put(&mut out[36..52], fastrand_u64());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_has_the_w3c_shape() {
        let a = new_traceparent();
        let b = new_traceparent();
        assert_ne!(a, b);
        let text = std::str::from_utf8(&a).unwrap();
        let parts: Vec<&str> = text.split('-').collect();
        assert_eq!(parts.len(), 4, "{text}");
        assert_eq!((parts[0], parts[3]), ("00", "01"));
        assert_eq!((parts[1].len(), parts[2].len()), (32, 16));
        assert!(
            parts[1]
                .bytes()
                .chain(parts[2].bytes())
                .all(|b| b.is_ascii_hexdigit())
        );
        assert_ne!(parts[1], "0".repeat(32), "an all-zero trace id is invalid");
    }

    fn head(uri: &str, headers: &[(&str, &str)], tls: bool) -> String {
        head_with(uri, headers, tls, UnderscoreHeaders::Drop)
    }

    fn head_with(
        uri: &str,
        headers: &[(&str, &str)],
        tls: bool,
        underscores: UnderscoreHeaders,
    ) -> String {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let forwarding = Forwarding {
            lane: &HeaderValue::from_static("canary"),
            forwarded_for: &HeaderValue::from_static("10.0.0.7"),
            tls,
            path: None,
            underscores,
            trusted: false,
            mirror: false,
            trace: None,
        };
        let mut out = Vec::new();
        forwarding.write_headers(&uri.parse().unwrap(), &map, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_gateway_headers_replace_the_clients_and_hop_by_hop_ones_stay_behind() {
        let text = head(
            "/orders",
            &[
                ("host", "shop.example"),
                ("x-graylane-lane", "forged"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-for", "192.0.2.1"),
                ("x-forwarded-for", "198.51.100.2"),
                ("connection", "keep-alive, x-secret-hop"),
                ("x-secret-hop", "1"),
                ("keep-alive", "timeout=5"),
                ("te", "trailers"),
                ("via", "1.1 edge"),
                (
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ),
                ("x-user-id", "u-1"),
            ],
            false,
        );
        assert_eq!(
            text,
            "host: shop.example\r\n\
             via: 1.1 edge\r\n\
             traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\
             x-user-id: u-1\r\n\
             x-graylane-lane: canary\r\n\
             x-forwarded-for: 192.0.2.1, 198.51.100.2, 10.0.0.7\r\n\
             x-forwarded-proto: http\r\n\
             via: 1.1 graylane\r\n"
        );
    }

    #[test]
    fn an_http2_authority_becomes_the_host_and_a_trace_is_started() {
        let text = head("https://shop.example/orders", &[("x-user-id", "u-1")], true);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "x-user-id: u-1");
        assert_eq!(lines[1], "host: shop.example");
        assert_eq!(lines[2], "x-graylane-lane: canary");
        assert_eq!(lines[3], "x-forwarded-for: 10.0.0.7");
        assert_eq!(lines[4], "x-forwarded-proto: https");
        assert_eq!(lines[5], "via: 1.1 graylane");
        assert!(lines[6].starts_with("traceparent: 00-"), "{text}");
        assert_eq!(lines.len(), 7);
    }

    #[test]
    fn connection_cannot_nominate_framing_host_or_the_gateways_headers() {
        for nominated in [
            "content-length",
            "Content-Length",
            "close, content-length",
            "transfer-encoding",
            "host",
            "x-forwarded-for",
            "x-graylane-lane",
            "traceparent",
            "via",
        ] {
            let text = head(
                "/orders",
                &[
                    ("host", "shop.example"),
                    ("content-length", "40"),
                    ("connection", nominated),
                    ("via", "1.1 edge"),
                    (
                        "traceparent",
                        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                    ),
                ],
                false,
            );
            assert!(
                text.contains("host: shop.example\r\n"),
                "{nominated}: {text}"
            );
            assert!(text.contains("via: 1.1 edge\r\n"), "{nominated}: {text}");
            assert!(
                text.contains("traceparent: 00-0af7651916cd43dd8448eb211c80319c"),
                "{nominated}: {text}"
            );
            assert!(
                text.contains("x-graylane-lane: canary\r\n"),
                "{nominated}: {text}"
            );
            assert!(
                !text.to_ascii_lowercase().contains("content-length"),
                "the framing line is the gateway's, written apart: {text}"
            );
        }
    }

    #[test]
    fn an_authority_in_the_target_replaces_the_host_header() {
        let text = head(
            "http://a.example/orders",
            &[("host", "b.example"), ("x-user-id", "u-1")],
            false,
        );
        assert!(text.contains("host: a.example\r\n"), "{text}");
        assert!(!text.contains("b.example"), "{text}");
    }

    #[test]
    fn underscore_names_never_pass_as_the_gateways_headers() {
        let sent = [
            ("x_graylane_lane", "forged"),
            ("X_Forwarded_For", "1.2.3.4"),
            ("x_user_id", "u-1"),
            ("x-user-id", "u-2"),
        ];
        let dropped = head_with("/", &sent, false, UnderscoreHeaders::Drop);
        assert!(!dropped.contains('_'), "{dropped}");
        assert!(dropped.contains("x-user-id: u-2\r\n"), "{dropped}");
        let allowed = head_with("/", &sent, false, UnderscoreHeaders::Allow);
        assert!(allowed.contains("x_user_id: u-1\r\n"), "{allowed}");
        assert!(!allowed.contains("forged"), "{allowed}");
        assert!(!allowed.contains("1.2.3.4"), "{allowed}");
        assert!(reads_as_gateway_header("X_GRAYLANE_anything"));
        assert!(reads_as_gateway_header("content_length"));
        assert!(!reads_as_gateway_header("x_graylan"));
    }

    #[test]
    fn an_invalid_or_repeated_traceparent_starts_a_new_trace() {
        let good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        for bad in [
            "garbage",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            let text = head(
                "/",
                &[("traceparent", bad), ("tracestate", "vendor=forged")],
                false,
            );
            assert!(!text.contains(bad), "{bad}: {text}");
            assert!(!text.contains("vendor=forged"), "{bad}: {text}");
            assert_eq!(text.matches("traceparent: 00-").count(), 1, "{text}");
        }
        let twice = head("/", &[("traceparent", good), ("traceparent", good)], false);
        assert!(!twice.contains(good), "{twice}");
        let kept = head("/", &[("traceparent", good), ("tracestate", "v=1")], false);
        assert!(
            kept.contains(good) && kept.contains("tracestate: v=1"),
            "{kept}"
        );
        assert!(valid_traceparent(
            b"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-later"
        ));
    }
}
