//! The routing phase's inputs and by-products: the request as the rule engine sees it (host,
//! path in normal form, clock, random draw, the trusted hops a GeoIP lookup looks behind) and
//! the sticky cookie a decision asks for.

use std::time::{SystemTime, UNIX_EPOCH};

use graylane_rules::{Decision, RequestView};
use http::Request;
use http::header::{self, HeaderValue};

use super::ConnInfo;
use crate::forward::X_GRAYLANE_LANE;
use crate::rng::fastrand_u64;
use crate::snapshot::{LocalSnapshot, ServiceRoute};

/// The request as the rule engine and the rate limits' keys see it, with `path` in normal form.
pub(super) fn view<'a, B>(
    req: &'a Request<B>,
    conn: &'a ConnInfo,
    path: &'a str,
) -> RequestView<'a> {
    let lane = if conn.trusted {
        req.headers()
            .get(&X_GRAYLANE_LANE)
            .and_then(|v| v.to_str().ok())
    } else {
        None
    };
    RequestView {
        method: req.method(),
        host: request_host(req),
        path,
        query: req.uri().query(),
        headers: req.headers(),
        client_ip: conn.peer.ip(),
        now_unix_ms: now_unix_ms(),
        trusted_lane: lane,
        trusted: conn.trusted,
        trusted_hops: &conn.listener.trusted_hops,
        // Only the low bits matter: the engine takes it modulo 100,000.
        random: fastrand_u64() as u32,
    }
}

fn request_host<B>(req: &Request<B>) -> Option<&str> {
    let raw = match req.uri().host() {
        Some(h) => h,
        None => req.headers().get(header::HOST)?.to_str().ok()?,
    };
    // Strip a port, but not the colons of a bracketed IPv6 literal.
    Some(match raw.rfind(':') {
        Some(i) if !raw[i..].contains(']') => &raw[..i],
        _ => raw,
    })
}

fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The `Set-Cookie` pinning the decision's bucket, when the rule engine asks for one (a
/// bucketed request to a sticky release without a valid cookie carrying that bucket; forced
/// and lane traffic is test traffic and is never pinned). Its value differs per client, so it
/// is built here: one allocation, only for requests that get the cookie. `Secure` on a TLS
/// listener.
pub(super) fn sticky_cookie_to_set(
    snapshot: &LocalSnapshot,
    service: &ServiceRoute,
    decision: &Decision,
    tls: bool,
) -> Option<HeaderValue> {
    let cookie = service.sticky.as_ref()?;
    let value = snapshot
        .table
        .sticky_value(decision.service, decision.pin?)?;
    const SECURE: &[u8] = b"; Secure";
    let mut out = Vec::with_capacity(
        cookie.name.len() + value.as_bytes().len() + cookie.attributes.len() + SECURE.len(),
    );
    out.extend_from_slice(&cookie.name);
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(&cookie.attributes);
    if tls {
        out.extend_from_slice(SECURE);
    }
    HeaderValue::from_maybe_shared(bytes::Bytes::from(out)).ok()
}
