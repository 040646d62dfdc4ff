//! The request path, one phase after another, as [`handle`] reads:
//!
//! 1. **refuse** what is malformed, before any routing (refuse.rs);
//! 2. **route**: the path in normal form, the service and version the rule engine decides,
//!    the sticky cookie the decision asks for (route.rs);
//! 3. **limits**: the service's rate limits, the `429` (limits.rs);
//! 4. **read** the start of the body, within the request's deadline (a request asking for a
//!    protocol upgrade, WebSocket, leaves here for its handshake and tunnel: upgrade.rs); a
//!    mirror step's copy to the candidate starts here, in its own task (mirror.rs);
//! 5. **forward**: one exchange with an endpoint (balance.rs) when no guard applies, else
//!    attempts through breakers, concurrency limits, retries and fallbacks (attempts.rs);
//! 6. **respond**: the response stamped, the error statuses and bodies, counted per version
//!    (respond.rs), with the `RateLimit-*` headers;
//! 7. **log**: the access log's line, for every response, out of what the phases left in
//!    [`Facts`] (`access_log/`); and a traced request's spans (`telemetry/`).
//!
//! Everything per version (header values, metric handles) was prepared in the [`Snapshot`];
//! this code reads borrowed request bytes and allocates only on error paths.
//!
//! [`Snapshot`]: crate::snapshot::Snapshot

mod attempts;
mod balance;
mod limits;
pub(crate) mod mirror;
mod refuse;
mod respond;
mod route;
mod upgrade;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use graylane_config::{Listener, PathPolicy, UnderscoreHeaders};
use graylane_rules::path;
use http::header::HeaderValue;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::access_log::{Entry, Facts, Upstream};
use crate::body::{ProxyBody, RequestBody};
use crate::clock::nanos_at;
use crate::deadline::Deadlines;
use crate::snapshot::LocalSnapshot;
use crate::upstream::{self, UpstreamPool};
use attempts::Attempts;
use limits::LimitVerdict;
use respond::{Exchanged, Forwarded, Timing};

pub use respond::{X_GRAYLANE_FALLBACK, X_GRAYLANE_VERSION};
pub(crate) use upgrade::Tunnel;

/// How much of a request body is read before the request is forwarded. A body that ends within
/// this (most API bodies) is checked whole, so a malformed one gets a `400` and never reaches
/// an upstream, and goes upstream with a `Content-Length`; a longer one is streamed from there
/// on, and so is one of unknown length past what has already arrived (see
/// [`RequestBody::read_ahead`]). At most this much is held per request in flight.
const REQUEST_BODY_READ_AHEAD: usize = 64 * 1024;

/// What the request path knows about the client connection.
pub(crate) struct ConnInfo {
    pub(crate) peer: SocketAddr,
    /// The peer's address as an `X-Forwarded-For` entry, formatted once per connection.
    pub(crate) forwarded_for: HeaderValue,
    pub(crate) tls: bool,
    /// The peer is a trusted hop: its `x-graylane-lane` and `trusted_only` keys and rules are
    /// honoured.
    pub(crate) trusted: bool,
    /// The listener it came in on: its `trusted_hops` locate the client behind them (GeoIP).
    pub(crate) listener: Rc<Listener>,
    /// The listener's path normalisation settings.
    pub(crate) paths: PathPolicy,
    /// The listener's policy for header names with `_`.
    pub(crate) underscores: UnderscoreHeaders,
    /// The connection's tunnel once it switched protocols (upgrade.rs).
    pub(crate) tunnel: Tunnel,
}

/// Per-thread state of the request path.
pub(crate) struct Worker {
    pub(crate) id: usize,
    pub(crate) pool: Rc<UpstreamPool>,
    pub(crate) deadlines: Rc<Deadlines>,
}

/// Answers one request: the phases of the request path, in order, then its access log line out
/// of what they left in [`Facts`]. One function, not one per phase: every `async fn` level
/// would move the request into its future and the response out of it again.
pub(crate) async fn handle(
    snapshot: LocalSnapshot,
    worker: Rc<Worker>,
    conn: Rc<ConnInfo>,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let started = Instant::now();
    // Without an access log, this is all it costs: one branch (and the plain stores of facts).
    let entry = match &snapshot.access_log {
        Some(log) if log.sampled() => Some(Entry::begin(&req, conn.peer.ip(), conn.trusted)),
        _ => None,
    };
    let facts = Facts::default();
    // Without traces, the same: one branch.
    if let Some(tracer) = &snapshot.tracer {
        facts
            .trace
            .begin(tracer.sampling, &req, conn.peer.ip(), conn.tls, started);
    }
    let (snapshot, worker, conn, facts) = (&snapshot, &worker, &conn, &facts);
    let response = 'phases: {
        // 1. Refuse what graylane will not forward as it is.
        if let Some(refused) = refuse::refusal(&req, conn) {
            break 'phases refused;
        }

        // 2. Route. Rules and limits see the path in its normal form; it goes upstream in that
        // form too unless the listener keeps the raw one. `None`: the path is normal already.
        let normalized = match path::normalize(req.uri().path(), conn.paths.escaped_slashes) {
            Ok(Cow::Borrowed(_)) => None,
            Ok(Cow::Owned(p)) => Some(p),
            Err(e) => {
                break 'phases respond::refuse(
                    StatusCode::BAD_REQUEST,
                    "the request path is not accepted",
                    e.describe(),
                );
            }
        };
        let forward_path = normalized.as_deref().filter(|_| !conn.paths.forward_raw);
        let matched_path =
            path::without_parameters(normalized.as_deref().unwrap_or(req.uri().path()));
        // One view of the request for the routing decision and the rate limits' keys.
        let view = route::view(&req, conn, &matched_path);
        let Some(decision) = snapshot.table.decide(&view) else {
            break 'phases respond::not_found(req.uri().path());
        };
        facts.decision.set(Some(decision));
        let service = &snapshot.services[decision.service];
        let version = &service.versions[decision.version];
        version.stats.record_decision(worker.id, &decision);

        // 3. Limits.
        let mut limit_headers = None;
        if !service.guards.limits.is_empty() {
            let now = nanos_at(started);
            // A limit shared through Redis may wait on it: that rare path is boxed, so the
            // future of every request stays as small as the local checks need.
            let verdict = if service.guards.limits_global {
                Box::pin(limits::check_rate_limits_global(service, &view, now)).await
            } else {
                limits::check_rate_limits(service, &view, now)
            };
            match verdict {
                LimitVerdict::Refused(refused) => {
                    version
                        .stats
                        .record_response(worker.id, 429, started.elapsed());
                    break 'phases *refused;
                }
                LimitVerdict::Allowed(headers) => limit_headers = headers,
            }
        }
        let sticky_cookie = route::sticky_cookie_to_set(snapshot, service, &decision, conn.tls);
        if upgrade::maybe(&req)
            && let Some(protocols) = upgrade::wanted(&req)
        {
            let upgrade = upgrade::Upgrade {
                worker,
                conn,
                service,
                version: decision.version,
                forward_path,
                started,
                sticky_cookie,
            };
            // Boxed: the rare path must not grow every request's future.
            let response = Box::pin(upgrade.forward(req, protocols)).await;
            break 'phases limits::stamp_limits(response, limit_headers.as_ref());
        }

        // 4. Read the start of the body. One deadline covers the read-ahead and the upstream
        // exchange, counted from when the request arrived; it takes a slot in the worker's table
        // only if something has to wait. Running out while the client is still sending its body
        // is the client's failure (408); afterwards it is the upstream's (504).
        let (parts, body) = req.into_parts();
        let mut deadline = worker
            .deadlines
            .at(started.checked_add(service.request_timeout));
        let read = tokio::select! {
            biased;
            read = RequestBody::read_ahead(body, REQUEST_BODY_READ_AHEAD) => Ok(read),
            () = &mut deadline => Err(()),
        };
        let body = match read {
            Ok(Ok(body)) => body,
            Ok(Err(e)) => {
                // Debug, not warn: a client's bad request is not an operator's problem, and a
                // flood of them must not flood the log.
                tracing::debug!(service = %service.name, peer = %conn.peer, "malformed request body: {e}");
                let response = respond::client_failure(
                    StatusCode::BAD_REQUEST,
                    "the request body is malformed",
                    &e.to_string(),
                );
                version
                    .stats
                    .record_response(worker.id, 400, started.elapsed());
                break 'phases response;
            }
            Err(_) => {
                tracing::debug!(service = %service.name, peer = %conn.peer, timeout = ?service.request_timeout, "request body did not arrive in time");
                let response = respond::client_failure(
                    StatusCode::REQUEST_TIMEOUT,
                    "the request body did not arrive in time",
                    &format!("{:?}", service.request_timeout),
                );
                version
                    .stats
                    .record_response(worker.id, 408, started.elapsed());
                break 'phases response;
            }
        };

        // A mirror step copies a share of the baseline's requests to the candidate.
        if service.mirror.is_some() {
            let copied = mirror::copy(
                snapshot,
                worker,
                conn,
                &decision,
                &parts,
                &body,
                forward_path,
            );
            facts.mirrored.set(copied);
        }

        // 5. Forward: through the version's guards when it has any, else the common case, one
        // exchange with one endpoint and nothing kept to send again.
        let forwarded = if attempts::guarded(service, version) {
            let attempts = Attempts {
                worker,
                conn,
                forward_path,
                snapshot,
                facts,
                service_index: decision.service,
                service,
                started,
            };
            attempts
                .run(decision.version, parts, body, &mut deadline)
                .await
        } else {
            let progress = body.progress();
            let req = Request::from_parts(parts, body);
            let mut forwarding = attempts::forwarding(conn, version, forward_path);
            let endpoint = &version.endpoints[balance::pick_endpoint(service, version)];
            let trace = attempts::traced(snapshot, facts);
            if let Some(trace) = trace {
                trace.attempt(decision.version, false, endpoint.addr);
                forwarding.trace = Some(trace);
            }
            endpoint.in_flight.fetch_add(1, Relaxed);
            let result = tokio::select! {
                biased;
                sent = upstream::exchange(&worker.pool, version.upstream.as_deref(), endpoint.addr, service.connect_timeout, req, &forwarding) => Some(sent),
                () = &mut deadline => None,
            };
            endpoint.in_flight.fetch_sub(1, Relaxed);
            if let Some(trace) = trace {
                trace.attempt_ended(&result);
            }
            let (timed_out, failed) = (result.is_none(), matches!(result, Some(Err(_))));
            match attempts::client_fault(progress.as_deref(), timed_out, failed) {
                Some(fault) => Forwarded::Answered(respond::client_body_failure(
                    fault, service, version, worker, started, conn.peer,
                )),
                None => {
                    if timed_out || failed {
                        attempts::note_failure(&result, worker, service, version, endpoint.addr);
                    }
                    facts.upstream.set(Upstream::Whole);
                    Forwarded::Exchanged(Exchanged {
                        version: decision.version,
                        fell_back: false,
                        result,
                        timing: Timing::Only,
                    })
                }
            }
        };

        // 6. Respond.
        let response = respond::forwarded(forwarded, service, worker, started, sticky_cookie);
        limits::stamp_limits(response, limit_headers.as_ref())
    };
    // 7. Log.
    if let Some(mut entry) = entry
        && let Some(log) = &snapshot.access_log
    {
        entry.finish(snapshot, facts, &response, started);
        log.push(worker.id, entry);
    }
    if let Some(tracer) = &snapshot.tracer
        && let Some(record) = facts.trace.finish(snapshot, facts, &response)
    {
        tracer.push(worker.id, record);
    }
    response
}

/// The `X-Forwarded-For` entry for a client address.
pub(crate) fn forwarded_for(peer: SocketAddr) -> HeaderValue {
    HeaderValue::from_str(&peer.ip().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}
