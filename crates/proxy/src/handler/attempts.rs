//! The forward phase of a guarded request: each attempt passes the version's breaker and
//! concurrency limit, goes to a usable endpoint, and its outcome feeds the breaker and outlier
//! ejection; a failed attempt is retried (within the retry policy and budget), then falls back
//! (another version, or a static response) when the version says so. The pieces every
//! exchange shares, guarded or not, are here too: the upstream's view of the request, a failed
//! exchange counted and logged, and a client's failure told from the upstream's.

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use http::{Request, Response, StatusCode};

use super::balance::pick_usable_endpoint;
use super::respond::{
    self, Exchanged, Forwarded, Timing, client_body_failure, static_response, upstream_failure,
};
use super::{ConnInfo, Worker};
use crate::access_log::{Facts, Upstream};
use crate::body::{ClientBody, ProxyBody, RequestBody};
use crate::clock::nanos_at;
use crate::deadline::Deadline;
use crate::forward::Forwarding;
use crate::grpc::LaterGuards;
use crate::guards::{AttemptOutcome, FallbackRoute};
use crate::metrics::Event;
use crate::snapshot::{ServiceRoute, Snapshot, VersionRoute};
use crate::telemetry::TraceCell;
use crate::upstream::{self, UpstreamError, UpstreamErrorKind};

/// Whether a request to `version` goes through [`Attempts`]: the service retries, or the
/// version has a guard. A version with no endpoints (a registry selector nothing matches yet)
/// does too: its answer is the one for "no endpoint is healthy", fallbacks included.
pub(super) fn guarded(service: &ServiceRoute, version: &VersionRoute) -> bool {
    service.guards.retry.is_some() || version.guards.is_active() || version.endpoints.is_empty()
}

/// The request path of a service with traffic control: each attempt passes the version's
/// breaker and concurrency limit, goes to a usable endpoint, and its outcome feeds the breaker
/// and outlier ejection; a failed attempt is retried (within the retry policy and budget), then
/// falls back (another version, or a static response) when the version says so.
pub(super) struct Attempts<'a> {
    pub(super) worker: &'a Worker,
    pub(super) conn: &'a ConnInfo,
    pub(super) forward_path: Option<&'a str>,
    /// The snapshot `service` is of, and its index there: a gRPC response judged when its
    /// body ends keeps them to reach the version's guards.
    pub(super) snapshot: &'a Arc<Snapshot>,
    pub(super) service_index: usize,
    pub(super) service: &'a ServiceRoute,
    pub(super) started: Instant,
    /// Which version answered, after how many retries, and the answering attempt's time.
    pub(super) facts: &'a Facts,
}

/// Why a version could not take an attempt.
enum Unavailable {
    Open(std::time::Duration),
    Full,
    NoEndpoint,
}

impl Attempts<'_> {
    /// Makes the attempts, from the version the request was routed to.
    pub(super) async fn run(
        self,
        first: usize,
        parts: http::request::Parts,
        body: RequestBody,
        deadline: &mut Deadline,
    ) -> Forwarded {
        let service = self.service;
        let retry = service.guards.retry.as_ref();
        let _active = retry.map(|r| r.budget.active_request());
        // A body read whole can be sent again; a streamed one only once.
        let replay = match &body {
            RequestBody::Whole(b) => Some(b.clone()),
            RequestBody::Streaming { .. } => None,
        };
        let progress = body.progress();
        let mut streamed = Some(body);
        let mut parts = Some(parts);
        let mut current = first;
        let mut fell_back = false;
        let mut retries = 0;
        // The retry in flight, counted against the budget until the next attempt ends.
        let mut _retry_in_flight = None;
        loop {
            self.facts.answered_by.set(Some(current));
            self.facts.fallback.set(fell_back);
            self.facts.retries.set(retries);
            let version = &service.versions[current];
            let ctl = &version.guards;
            let attempt_started = Instant::now();
            let now = nanos_at(attempt_started);
            let token = match ctl.breaker.as_ref().map(|b| b.try_call(now)) {
                Some(Ok(t)) => Some(t),
                Some(Err(open)) => {
                    match self.unavailable(
                        current,
                        &mut fell_back,
                        Unavailable::Open(open.retry_after),
                    ) {
                        Ok(next) => {
                            current = next;
                            continue;
                        }
                        Err(resp) => return Forwarded::Answered(*resp),
                    }
                }
                None => None,
            };
            let permit = match ctl.concurrency.as_ref().map(|c| c.try_acquire()) {
                Some(None) => {
                    drop(token);
                    match self.unavailable(current, &mut fell_back, Unavailable::Full) {
                        Ok(next) => {
                            current = next;
                            continue;
                        }
                        Err(resp) => return Forwarded::Answered(*resp),
                    }
                }
                Some(Some(p)) => Some(p),
                None => None,
            };
            let Some(endpoint) =
                pick_usable_endpoint(service, version, now, fell_back || ctl.fallback.is_none())
            else {
                drop(token);
                drop(permit);
                match self.unavailable(current, &mut fell_back, Unavailable::NoEndpoint) {
                    Ok(next) => {
                        current = next;
                        continue;
                    }
                    Err(resp) => return Forwarded::Answered(*resp),
                }
            };
            // The request head is copied only while another attempt may follow this one.
            let may_resend = replay.is_some()
                && (retry.is_some()
                    || (!fell_back && matches!(ctl.fallback, Some(FallbackRoute::Version(_)))));
            let body = match &replay {
                Some(bytes) => Some(RequestBody::Whole(bytes.clone())),
                None => streamed.take(),
            };
            let req = match (may_resend, parts.as_ref(), body) {
                (true, Some(head), Some(body)) => {
                    let mut req = Request::new(body);
                    *req.method_mut() = head.method.clone();
                    *req.uri_mut() = head.uri.clone();
                    *req.version_mut() = head.version;
                    *req.headers_mut() = head.headers.clone();
                    req
                }
                (false, Some(_), Some(body)) => match parts.take() {
                    Some(head) => Request::from_parts(head, body),
                    None => return Forwarded::Answered(self.give_up(current)),
                },
                _ => return Forwarded::Answered(self.give_up(current)),
            };
            let addr = version.endpoints[endpoint].addr;
            version.endpoints[endpoint].in_flight.fetch_add(1, Relaxed);
            let mut forwarding = forwarding(self.conn, version, self.forward_path);
            let trace = traced(self.snapshot, self.facts);
            if let Some(trace) = trace {
                trace.attempt(current, fell_back, addr);
                forwarding.trace = Some(trace);
            }
            let send = upstream::exchange(
                &self.worker.pool,
                version.upstream.as_deref(),
                addr,
                service.connect_timeout,
                req,
                &forwarding,
            );
            // Without a per-try timeout the send is awaited as is: wrapping it would move the
            // whole send future once more on every request.
            let mut result = match retry.and_then(|r| r.per_try_timeout) {
                None => tokio::select! {
                    biased;
                    sent = send => Some(sent),
                    () = &mut *deadline => None,
                },
                Some(per_try) => tokio::select! {
                    biased;
                    sent = tokio::time::timeout(per_try, send) => {
                        Some(sent.unwrap_or(Err(UpstreamError::timeout())))
                    }
                    () = &mut *deadline => None,
                },
            };
            version.endpoints[endpoint].in_flight.fetch_sub(1, Relaxed);
            if let Some(trace) = trace {
                trace.attempt_ended(&result);
            }
            let timed_out = result.is_none();
            let failed = matches!(result, Some(Err(_)));
            if let Some(fault) = client_fault(progress.as_deref(), timed_out, failed) {
                // Not the version's failure: the breaker's call and the endpoint's record are
                // left out (dropping the token counts nothing).
                drop(token);
                drop(permit);
                return Forwarded::Answered(client_body_failure(
                    fault,
                    service,
                    version,
                    self.worker,
                    self.started,
                    self.conn.peer,
                ));
            }
            let outcome = match &result {
                Some(Ok(resp)) => AttemptOutcome::Status(respond::judged_status(resp, version)),
                Some(Err(e)) => AttemptOutcome::Error(e.kind),
                None => AttemptOutcome::Error(UpstreamErrorKind::Timeout),
            };
            let failed = outcome.fails(&ctl.failure_on);
            let ended = Instant::now();
            let took = ended - attempt_started;
            self.facts.upstream.set(Upstream::Took(took));
            // A gRPC response whose status comes in its trailers is judged when they arrive:
            // its breaker call and endpoint record are left to its body (the token dropped
            // here counts nothing).
            let judged_later = !failed
                && (token.is_some() || ctl.outlier.is_some())
                && self.judge_later(&mut result, current, endpoint, took);
            if let Some(t) = token.filter(|_| !judged_later) {
                t.record(
                    nanos_at(ended),
                    graylane_traffic::breaker::Outcome {
                        failed,
                        duration: took,
                    },
                );
            }
            if let Some(o) = &ctl.outlier
                && !judged_later
                && o.record(endpoint, nanos_at(ended), !failed)
            {
                version.stats.record_event(self.worker.id, Event::Ejection);
            }
            drop(permit);
            if !matches!(result, Some(Ok(_))) {
                note_failure(&result, self.worker, service, version, addr);
            }
            let out_of_time = result.is_none();
            if !failed || out_of_time {
                return answered_by(current, fell_back, result, attempt_started, ended);
            }
            // Failed: retry within the policy, else fall back, else answer with the failure.
            let retryable = replay.is_some()
                && retry.is_some_and(|r| {
                    retries < r.attempts
                        && outcome.fails(&r.retry_on)
                        && parts
                            .as_ref()
                            .is_some_and(|head| may_send_again(head, outcome))
                });
            if retryable {
                // This request's previous retry (if any) has ended: it no longer counts.
                _retry_in_flight = None;
            }
            if retryable {
                if let Some(guard) = retry.and_then(|r| r.budget.try_retry()) {
                    retries += 1;
                    _retry_in_flight = Some(guard);
                    let stats = &version.stats;
                    stats.record_attempt(self.worker.id, outcome.status_or(502), took);
                    stats.record_event(self.worker.id, Event::Retry);
                    continue;
                }
                version
                    .stats
                    .record_event(self.worker.id, Event::RetryBudgetExhausted);
            }
            // Sending the request to another version is a retry too: one the upstream may have
            // acted on is sent again only when that is harmless (or allowed by the breaker).
            let may_replay = replay.is_some()
                && (ctl.fallback_non_idempotent
                    || parts
                        .as_ref()
                        .is_some_and(|head| may_send_again(head, outcome)));
            match (&ctl.fallback, fell_back) {
                (Some(FallbackRoute::Version(v)), false) if may_replay && *v != current => {
                    let stats = &version.stats;
                    stats.record_attempt(self.worker.id, outcome.status_or(502), took);
                    stats.record_event(self.worker.id, Event::Fallback);
                    fell_back = true;
                    current = *v;
                }
                (Some(FallbackRoute::Static(page)), false) => {
                    let stats = &version.stats;
                    stats.record_attempt(self.worker.id, outcome.status_or(502), took);
                    return Forwarded::Answered(self.static_fallback(version, page));
                }
                _ => return answered_by(current, fell_back, result, attempt_started, ended),
            }
        }
    }

    /// Leaves the guards' judgement of a gRPC response whose status is still to come to its
    /// body; whether it was one.
    #[cold]
    fn judge_later(
        &self,
        result: &mut Option<Result<Response<ProxyBody>, UpstreamError>>,
        version: usize,
        endpoint: usize,
        took: std::time::Duration,
    ) -> bool {
        let Some(Ok(resp)) = result else {
            return false;
        };
        let http = resp.status().as_u16();
        match resp.body_mut() {
            ProxyBody::Grpc(body) if body.head_status().is_none() => {
                body.judge_guards_later(LaterGuards {
                    snapshot: Arc::clone(self.snapshot),
                    service: self.service_index,
                    version,
                    endpoint,
                    worker: self.worker.id,
                    http,
                    took,
                });
                true
            }
            _ => false,
        }
    }

    /// The version can take no attempt: fall back if it says so, else answer `503`.
    fn unavailable(
        &self,
        current: usize,
        fell_back: &mut bool,
        why: Unavailable,
    ) -> Result<usize, Box<Response<ProxyBody>>> {
        let version = &self.service.versions[current];
        let shed = match why {
            Unavailable::Open(_) => Event::ShedBreakerOpen,
            Unavailable::Full => Event::ShedConcurrency,
            Unavailable::NoEndpoint => Event::ShedNoEndpoint,
        };
        version.stats.record_event(self.worker.id, shed);
        match (&version.guards.fallback, *fell_back) {
            (Some(FallbackRoute::Version(v)), false) if *v != current => {
                version.stats.record_event(self.worker.id, Event::Fallback);
                *fell_back = true;
                Ok(*v)
            }
            (Some(FallbackRoute::Static(page)), false) => {
                Err(Box::new(self.static_fallback(version, page)))
            }
            _ => {
                let (what, retry_after) = match why {
                    Unavailable::Open(after) => {
                        ("the version's circuit breaker is open", Some(after))
                    }
                    Unavailable::Full => ("the version is at its concurrency limit", None),
                    Unavailable::NoEndpoint => ("no endpoint of the version is healthy", None),
                };
                let resp = respond::shed(what, retry_after, self.service, version);
                version
                    .stats
                    .record_response(self.worker.id, 503, self.started.elapsed());
                Err(Box::new(resp))
            }
        }
    }

    /// The version's static fallback page, counted as its answer.
    fn static_fallback(
        &self,
        version: &VersionRoute,
        page: &graylane_config::StaticResponse,
    ) -> Response<ProxyBody> {
        self.facts.fallback.set(true);
        let stats = &version.stats;
        stats.record_event(self.worker.id, Event::Fallback);
        stats.record_response(self.worker.id, page.status.as_u16(), self.started.elapsed());
        static_response(page)
    }

    /// The `502` of a request whose head is gone when an attempt needs it (never expected).
    fn give_up(&self, current: usize) -> Response<ProxyBody> {
        let version = &self.service.versions[current];
        let resp = upstream_failure(UpstreamErrorKind::Protocol, self.service, version);
        version
            .stats
            .record_response(self.worker.id, 502, self.started.elapsed());
        resp
    }
}

/// Whether a failed attempt may be sent again, as a retry or to a fallback version: it never
/// reached the upstream, or its method is idempotent — the method a framework will act on,
/// so a `GET` carrying `X-HTTP-Method-Override: POST` (or `X-HTTP-Method`,
/// `X-Method-Override`) counts as the `POST` it will be served as.
fn may_send_again(head: &http::request::Parts, outcome: AttemptOutcome) -> bool {
    const OVERRIDES: [&str; 3] = [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ];
    let overridden = OVERRIDES.iter().any(|name| {
        head.headers.get(*name).is_some_and(|v| {
            http::Method::from_bytes(v.as_bytes()).map_or(true, |m| !m.is_idempotent())
        })
    });
    let method = if overridden {
        &http::Method::POST
    } else {
        &head.method
    };
    graylane_traffic::retry::is_retryable(method, outcome.reached_upstream(), false)
}

/// The attempt that answers the request, ended at `ended`.
fn answered_by(
    version: usize,
    fell_back: bool,
    result: Option<Result<Response<ProxyBody>, UpstreamError>>,
    started: Instant,
    ended: Instant,
) -> Forwarded {
    Forwarded::Exchanged(Exchanged {
        version,
        fell_back,
        result,
        timing: Timing::Attempt { started, ended },
    })
}

/// Counts and logs an exchange that brought no response: the upstream's failure, or the
/// request's deadline passing first (a timeout). Call it only for an exchange that brought no
/// response: out of line, so the common case pays one branch for it.
#[cold]
#[inline(never)]
pub(super) fn note_failure(
    result: &Option<Result<Response<ProxyBody>, UpstreamError>>,
    worker: &Worker,
    service: &ServiceRoute,
    version: &VersionRoute,
    addr: SocketAddr,
) {
    match result {
        Some(Ok(_)) => {}
        Some(Err(e)) => {
            version.stats.record_upstream_error(worker.id, e.kind);
            tracing::warn!(service = %service.name, version = %version.name, upstream = %addr, kind = e.kind.label(), "{}", e.detail);
        }
        None => {
            version
                .stats
                .record_upstream_error(worker.id, UpstreamErrorKind::Timeout);
            tracing::warn!(service = %service.name, version = %version.name, upstream = %addr, timeout = ?service.request_timeout, "upstream did not answer in time");
        }
    }
}

/// Whether a failed exchange was the client's doing rather than the upstream's: its streamed
/// body stopped arriving before the request's time ran out (`408`), or its connection broke
/// off mid-body (`400`). Such a failure is not the version's: it must not count as an upstream
/// error, or a client could push a canary into rollback by sending slowly.
pub(super) fn client_fault(
    progress: Option<&Cell<ClientBody>>,
    timed_out: bool,
    failed: bool,
) -> Option<StatusCode> {
    match progress.map(Cell::get)? {
        ClientBody::Receiving if timed_out => Some(StatusCode::REQUEST_TIMEOUT),
        ClientBody::Failed if timed_out || failed => Some(StatusCode::BAD_REQUEST),
        _ => None,
    }
}

/// What the upstream is told about the request and its client.
pub(super) fn forwarding<'a>(
    conn: &'a ConnInfo,
    version: &'a VersionRoute,
    path: Option<&'a str>,
) -> Forwarding<'a> {
    Forwarding {
        lane: &version.lane_header,
        forwarded_for: &conn.forwarded_for,
        tls: conn.tls,
        path,
        underscores: conn.underscores,
        trusted: conn.trusted,
        mirror: false,
        trace: None,
    }
}

/// The request's trace, when traces are on and the request is traced.
#[inline]
pub(super) fn traced<'a>(snapshot: &Snapshot, facts: &'a Facts) -> Option<&'a TraceCell> {
    snapshot.tracer.as_ref()?;
    facts.trace.active()
}
