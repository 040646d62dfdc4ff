//! The request head an upstream receives: the client's headers minus the hop-by-hop ones (and
//! those its `Connection` header names) and minus the ones the gateway owns, then the
//! gateway's own — `X-Graylane-Lane`, `X-Forwarded-For`, `X-Forwarded-Proto`, `Via`, a
//! `traceparent` when the client sent none, and `Host` for an HTTP/2 client that sent only an
//! authority.
//!
//! They are written as bytes straight into the upstream request head while the client's
//! headers are copied, rather than inserted into the request's `HeaderMap` first: each insert
//! hashes a name and may grow the map, and on a small GET that bookkeeping cost more than the
//! rest of building the head.

use http::Uri;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub static X_GRAYLANE_LANE: HeaderName = HeaderName::from_static("x-graylane-lane");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const VIA_VALUE: &[u8] = b"1.1 graylane";

/// What the gateway adds to a request on its way to an upstream.
pub struct Forwarding<'a> {
    /// The lane the request is on (the version's); replaces any the client sent: from a trusted
    /// hop it has already been honoured by the decision, from anyone else it must not reach
    /// the upstream.
    pub lane: &'a HeaderValue,
    /// The client's address as an `X-Forwarded-For` entry.
    pub forwarded_for: &'a HeaderValue,
    /// The client connection is TLS (`X-Forwarded-Proto: https`).
    pub tls: bool,
}

impl Forwarding<'_> {
    /// Writes the header lines of the request head (`name: value\r\n` each) into `out`.
    pub fn write_headers(&self, uri: &Uri, headers: &HeaderMap, out: &mut Vec<u8>) {
        // A `Connection` header is rare on requests that reach a proxy; only then is every
        // name also checked against the ones it lists.
        let connection = headers
            .keys()
            .any(|k| k == header::CONNECTION)
            .then(|| headers.get_all(header::CONNECTION));
        let listed = |name: &HeaderName| {
            connection.as_ref().is_some_and(|values| {
                values.iter().any(|v| {
                    v.to_str().is_ok_and(|list| {
                        list.split(',')
                            .any(|token| token.trim().eq_ignore_ascii_case(name.as_str()))
                    })
                })
            })
        };
        let (mut host, mut traceparent, mut forwarded_for) = (false, false, false);
        for (name, value) in headers {
            if name == header::HOST {
                host = true;
            } else if name == TRACEPARENT {
                traceparent = true;
            } else if name == X_FORWARDED_FOR {
                forwarded_for = true;
                continue;
            } else if is_hop_by_hop(name) || name == X_GRAYLANE_LANE || name == X_FORWARDED_PROTO {
                continue;
            }
            if connection.is_some() && listed(name) {
                continue;
            }
            line(out, name.as_str().as_bytes(), value.as_bytes());
        }
        if !host && let Some(authority) = uri.authority() {
            line(out, b"host", authority.as_str().as_bytes());
        }
        line(out, b"x-graylane-lane", self.lane.as_bytes());
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
        if !traceparent {
            line(out, b"traceparent", &new_traceparent());
        }
    }
}

fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::PROXY_AUTHORIZATION
}

/// A W3C `traceparent` with fresh random trace and span ids, sampled:
/// `00-<32 hex trace id>-<16 hex span id>-01`, written without a formatting pass.
fn new_traceparent() -> [u8; 55] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-01";
    let ids = [fastrand_u64(), fastrand_u64(), fastrand_u64()];
    let (trace, span) = out[3..52].split_at_mut(32);
    let digits = trace.iter_mut().chain(span[1..].iter_mut());
    for (i, d) in digits.enumerate() {
        let word = ids[i / 16];
        let shift = 60 - 4 * (i % 16);
        *d = HEX[((word >> shift) & 0xf) as usize];
    }
    out
}

/// A per-thread xorshift generator seeded from the clock and thread; ids (and the picks of
/// least-request balancing) need to be spread, not secret.
pub fn fastrand_u64() -> u64 {
    use std::cell::Cell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let t = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
            let here = &t as *const u64 as u64;
            (t ^ here.rotate_left(32)) | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
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
}
