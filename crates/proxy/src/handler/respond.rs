//! The respond phase: the response a client gets, stamped and counted in one place. An
//! upstream's answer carries `X-Graylane-Version` (and `X-Graylane-Fallback` when a fallback
//! gave it) and the sticky cookie; a failed or timed-out exchange becomes the `502`/`504` its
//! kind maps to; every error graylane answers itself is a JSON body written here.

use std::time::Instant;

use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};

use super::Worker;
use crate::body::ProxyBody;
use crate::grpc::{self, Pending, Recorded};
use crate::snapshot::{ServiceRoute, VersionRoute};
use crate::upstream::{UpstreamError, UpstreamErrorKind};

/// On every response that a version gave or that was answered on its behalf: the version.
pub static X_GRAYLANE_VERSION: HeaderName = HeaderName::from_static("x-graylane-version");
/// On a response served by a fallback: the version that served it, or `static`.
pub static X_GRAYLANE_FALLBACK: HeaderName = HeaderName::from_static("x-graylane-fallback");
const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// How the forward phase ended.
pub(super) enum Forwarded {
    /// An exchange with an upstream answers the request (or the deadline passed waiting for
    /// it): [`forwarded`] makes the response.
    Exchanged(Exchanged),
    /// Answered without an upstream response (shed, a static fallback, the client's own
    /// failure), and counted already.
    Answered(Response<ProxyBody>),
}

/// The exchange whose outcome answers the request.
pub(super) struct Exchanged {
    /// The version that took it: a fallback, when `fell_back`.
    pub(super) version: usize,
    pub(super) fell_back: bool,
    /// The upstream's response or failure; `None` when the request's deadline passed first.
    pub(super) result: Option<Result<Response<ProxyBody>, UpstreamError>>,
    pub(super) timing: Timing,
}

/// How the answering exchange's time is counted.
pub(super) enum Timing {
    /// The request's one exchange, sent with no guard: the attempt and the answer both, from
    /// the request's arrival to now.
    Only,
    /// The last of a guarded request's attempts: the attempt from its own start, the answer
    /// from the request's arrival, both to when it ended.
    Attempt { started: Instant, ended: Instant },
}

/// The response to the client, stamped and counted for the version that gave it.
pub(super) fn forwarded(
    forwarded: Forwarded,
    service: &ServiceRoute,
    worker: &Worker,
    started: Instant,
    sticky_cookie: Option<HeaderValue>,
) -> Response<ProxyBody> {
    let exchanged = match forwarded {
        Forwarded::Exchanged(exchanged) => exchanged,
        Forwarded::Answered(response) => return response,
    };
    let version = &service.versions[exchanged.version];
    let mut response = match exchanged.result {
        Some(Ok(resp)) => {
            let (mut parts, body) = resp.into_parts();
            parts
                .headers
                .insert(X_GRAYLANE_VERSION.clone(), version.version_header.clone());
            // The cookie pins a bucket, not a version, so a fallback's answer carries it too.
            if let Some(cookie) = sticky_cookie {
                parts.headers.append(header::SET_COOKIE, cookie);
            }
            Response::from_parts(parts, body)
        }
        Some(Err(e)) => upstream_failure(e.kind, service, version),
        None => upstream_failure(UpstreamErrorKind::Timeout, service, version),
    };
    if exchanged.fell_back {
        response
            .headers_mut()
            .insert(X_GRAYLANE_FALLBACK.clone(), version.fallback_header.clone());
    }
    let status = response.status().as_u16();
    let recorded = match exchanged.timing {
        Timing::Only => Recorded::Served(started.elapsed()),
        Timing::Attempt {
            started: attempt,
            ended,
        } => Recorded::Attempt {
            took: ended - attempt,
            total: ended - started,
        },
    };
    if let ProxyBody::Grpc(body) = response.body_mut() {
        let codes = version
            .upstream
            .as_ref()
            .map_or_else(Default::default, |u| u.grpc_error_codes);
        match body.head_status() {
            Some(code) => {
                let counted = grpc::counted_status(code, codes, status);
                recorded.record(&version.stats, worker.id, counted);
            }
            None => body.defer(Pending {
                stats: std::sync::Arc::clone(&version.stats),
                worker: worker.id,
                codes,
                http: status,
                recorded,
            }),
        }
        return response;
    }
    recorded.record(&version.stats, worker.id, status);
    response
}

/// The status an upstream's response counts as for the breaker, retries and metrics: its own,
/// or for a gRPC response the one its `grpc-status` in the head maps to (see `grpc.rs`).
pub(super) fn judged_status(response: &Response<ProxyBody>, version: &VersionRoute) -> u16 {
    let status = response.status().as_u16();
    match (response.body(), &version.upstream) {
        (ProxyBody::Grpc(body), Some(upstream)) => body.head_status().map_or(status, |code| {
            grpc::counted_status(code, upstream.grpc_error_codes, status)
        }),
        _ => status,
    }
}

/// The `502` or `504` of an exchange that brought no response, naming what failed.
pub(super) fn upstream_failure(
    kind: UpstreamErrorKind,
    service: &ServiceRoute,
    version: &VersionRoute,
) -> Response<ProxyBody> {
    let what = match kind {
        UpstreamErrorKind::ConnectRefused => "the upstream refused the connection",
        UpstreamErrorKind::ConnectTimeout => "connecting to the upstream timed out",
        UpstreamErrorKind::ConnectError => "could not connect to the upstream",
        UpstreamErrorKind::Tls => "the TLS handshake with the upstream failed",
        UpstreamErrorKind::Timeout => "the upstream did not answer in time",
        UpstreamErrorKind::Protocol => "the upstream connection failed",
    };
    let mut resp = json_response(
        kind.status(),
        serde_json::json!({
            "error": what,
            "kind": kind.label(),
            "service": service.name,
            "version": version.name,
        }),
    );
    resp.headers_mut()
        .insert(X_GRAYLANE_VERSION.clone(), version.version_header.clone());
    resp
}

/// The `503` of a version that could take no attempt and has no fallback to go to.
pub(super) fn shed(
    what: &str,
    retry_after: Option<std::time::Duration>,
    service: &ServiceRoute,
    version: &VersionRoute,
) -> Response<ProxyBody> {
    let mut resp = json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        serde_json::json!({
            "error": what,
            "service": service.name,
            "version": version.name,
        }),
    );
    resp.headers_mut()
        .insert(X_GRAYLANE_VERSION.clone(), version.version_header.clone());
    if let Some(after) = retry_after {
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// A version's static fallback page.
pub(super) fn static_response(page: &graylane_config::StaticResponse) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::local(page.body.clone()));
    *resp.status_mut() = page.status;
    for (name, value) in &page.headers {
        resp.headers_mut().append(name.clone(), value.clone());
    }
    resp.headers_mut().insert(
        X_GRAYLANE_FALLBACK.clone(),
        HeaderValue::from_static("static"),
    );
    resp
}

/// The answer to a request whose body the client did not finish sending: `408` when it
/// stopped arriving in time, `400` when it broke off.
pub(super) fn client_body_failure(
    status: StatusCode,
    service: &ServiceRoute,
    version: &VersionRoute,
    worker: &Worker,
    started: Instant,
    peer: std::net::SocketAddr,
) -> Response<ProxyBody> {
    let what = if status == StatusCode::REQUEST_TIMEOUT {
        "the request body did not arrive in time"
    } else {
        "the request body broke off before its end"
    };
    tracing::debug!(service = %service.name, version = %version.name, %peer, "{what}");
    version
        .stats
        .record_response(worker.id, status.as_u16(), started.elapsed());
    refuse(status, what, &format!("{:?}", service.request_timeout))
}

/// The `404` of a request no service matches.
pub(super) fn not_found(path: &str) -> Response<ProxyBody> {
    json_response(
        StatusCode::NOT_FOUND,
        serde_json::json!({ "error": "no service matches this request", "path": path }),
    )
}

/// A request refused before it is routed, for what its head says: a JSON error, and the
/// connection closed after it, since whatever body follows cannot be trusted to be framed as
/// the client meant.
pub(super) fn refuse(status: StatusCode, what: &str, detail: &str) -> Response<ProxyBody> {
    let mut resp = client_failure(status, what, detail);
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// A request graylane refuses because of what the client sent (or failed to send).
pub(super) fn client_failure(status: StatusCode, what: &str, detail: &str) -> Response<ProxyBody> {
    json_response(
        status,
        serde_json::json!({ "error": what, "detail": detail }),
    )
}

/// A JSON body with `status`.
pub(super) fn json_response(status: StatusCode, body: serde_json::Value) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::local(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, JSON);
    resp
}
