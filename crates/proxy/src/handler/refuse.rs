//! The first phase: requests refused for what their head says, before any routing (`Host`
//! and authority, transfer codings, header names with `_`).

use http::header;
use http::{Request, Response, StatusCode};

use graylane_config::UnderscoreHeaders;

use super::ConnInfo;
use super::respond::refuse;
use crate::body::ProxyBody;

/// Refuses a request whose head graylane will not forward as it is: `Host` missing from an
/// HTTP/1.1 request, repeated or malformed (RFC 9112 §3.2), a transfer coding other than
/// `chunked` (`501`, as nginx answers: decoding it would silently drop the coding, passing it on
/// would leave the upstream to guess the framing), or, where the listener says so, a header
/// name with `_`.
pub(super) fn refusal<B>(req: &Request<B>, conn: &ConnInfo) -> Option<Response<ProxyBody>> {
    let headers = req.headers();
    // One pass over the few headers a request has, instead of a hashed look-up for each name
    // asked about.
    let (mut host, mut hosts, mut transfer_coding, mut underscore) = (None, 0, false, None);
    for (name, value) in headers {
        if name == header::HOST {
            hosts += 1;
            host = Some(value);
        } else if name == header::TRANSFER_ENCODING {
            transfer_coding = true;
        } else if conn.underscores == UnderscoreHeaders::Reject
            && underscore.is_none()
            && name.as_str().contains('_')
        {
            underscore = Some(name);
        }
    }
    match (host, hosts > 1) {
        (_, true) => {
            return Some(refuse(
                StatusCode::BAD_REQUEST,
                "the request has more than one Host header",
                "send exactly one Host header",
            ));
        }
        (None, _) if req.version() == http::Version::HTTP_11 => {
            return Some(refuse(
                StatusCode::BAD_REQUEST,
                "the HTTP/1.1 request has no Host header",
                "HTTP/1.1 requires a Host header (RFC 9112 §3.2)",
            ));
        }
        (Some(host), _) if !valid_host(host.as_bytes()) => {
            return Some(refuse(
                StatusCode::BAD_REQUEST,
                "the Host header is not a valid host",
                "a host name or address, optionally with :port",
            ));
        }
        _ => {}
    }
    // An absolute-form target or an HTTP/2 `:authority` stands in for `Host`: the same rules,
    // and no userinfo (`http://internal.example:80@a/` must not name two hosts at once).
    if let Some(authority) = req.uri().authority()
        && !valid_host(authority.as_str().as_bytes())
    {
        return Some(refuse(
            StatusCode::BAD_REQUEST,
            "the request target's authority is not a valid host",
            "a host name or address, optionally with :port, and no user name",
        ));
    }
    if req
        .uri()
        .scheme_str()
        .is_some_and(|s| !s.eq_ignore_ascii_case("http") && !s.eq_ignore_ascii_case("https"))
    {
        return Some(refuse(
            StatusCode::BAD_REQUEST,
            "the request target's scheme is not http or https",
            "send an origin-form target, or an http:// or https:// one",
        ));
    }
    if transfer_coding && req.version() <= http::Version::HTTP_11 {
        let mut codings = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii);
        let only_chunked = matches!(
            (codings.next(), codings.next()),
            (Some(c), None) if c.eq_ignore_ascii_case(b"chunked")
        );
        if !only_chunked {
            return Some(refuse(
                StatusCode::NOT_IMPLEMENTED,
                "the request's transfer coding is not supported",
                "Transfer-Encoding may only be `chunked`",
            ));
        }
    }
    if let Some(name) = underscore {
        return Some(refuse(
            StatusCode::BAD_REQUEST,
            "a request header name contains an underscore",
            name.as_str(),
        ));
    }
    None
}

/// A `Host` (or a target's authority): a registered name or IPv4 address of letters, digits,
/// `-`, `.`, `_` and `~`, or a bracketed IPv6 literal, with an optional numeric port. Nothing
/// else — no userinfo, no `%`, `,` or `;` — so no upstream can read another host in it than
/// the one graylane routed on. Checked with a table: this runs on every request.
fn valid_host(host: &[u8]) -> bool {
    const NAME: [bool; 256] = {
        let mut t = [false; 256];
        let mut b = 0;
        while b < 256 {
            let c = b as u8;
            t[b] = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~');
            b += 1;
        }
        t
    };
    let (literal_ok, rest) = match host.split_first() {
        None => return false,
        Some((b'[', after)) => match after.iter().position(|&b| b == b']') {
            Some(end) => (
                end > 0
                    && after[..end]
                        .iter()
                        .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.'),
                &after[end + 1..],
            ),
            None => return false,
        },
        Some(_) => {
            let end = host
                .iter()
                .position(|&b| !NAME[usize::from(b)])
                .unwrap_or(host.len());
            (end > 0, &host[end..])
        }
    };
    literal_ok
        && match rest.split_first() {
            None => true,
            Some((b':', digits)) => {
                !digits.is_empty() && digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit)
            }
            Some(_) => false,
        }
}
