//! The request path: pick a service and version, forward to one of its endpoints, stamp the
//! response. Everything per version (header values, metric handles) was prepared in the
//! [`Snapshot`]; this code reads borrowed request bytes and allocates only on error paths.

use std::borrow::Cow;
use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use graylane_config::{LoadBalancing, PathPolicy, UnderscoreHeaders};
use graylane_rules::{Decision, RequestView, path};
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::body::{ClientBody, ProxyBody, RequestBody};
use crate::control::{self, AttemptOutcome, FallbackRoute};
use crate::deadline::{Deadline, Deadlines};
use crate::forward::{self, Forwarding, X_GRAYLANE_LANE};
use crate::metrics::{Event, UpstreamErrorKind};
use crate::snapshot::{LocalSnapshot, ServiceRoute, VersionRoute};
use crate::upstream::UpstreamPool;

pub static X_GRAYLANE_VERSION: HeaderName = HeaderName::from_static("x-graylane-version");
/// On a response served by a fallback: the version that served it, or `static`.
pub static X_GRAYLANE_FALLBACK: HeaderName = HeaderName::from_static("x-graylane-fallback");
static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// How much of a request body is read before the request is forwarded. A body that ends within
/// this (most API bodies) is checked whole, so a malformed one gets a `400` and never reaches
/// an upstream, and goes upstream with a `Content-Length`; a longer one is streamed from there
/// on. At most this much is held per request in flight.
const REQUEST_BODY_READ_AHEAD: usize = 64 * 1024;

/// What the request path knows about the client connection.
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The peer's address as an `X-Forwarded-For` entry, formatted once per connection.
    pub forwarded_for: HeaderValue,
    pub tls: bool,
    /// The peer is a trusted hop: its `x-graylane-lane` and `trusted_only` keys and rules are
    /// honoured.
    pub trusted: bool,
    /// The listener's path normalisation settings.
    pub paths: PathPolicy,
    /// The listener's policy for header names with `_`.
    pub underscores: UnderscoreHeaders,
}

/// Per-thread state of the request path.
pub struct Worker {
    pub id: usize,
    pub pool: Rc<UpstreamPool>,
    pub deadlines: Rc<Deadlines>,
}

pub async fn handle(
    snapshot: LocalSnapshot,
    worker: Rc<Worker>,
    conn: Rc<ConnInfo>,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let started = Instant::now();
    if let Some(refused) = refusal(&req, &conn) {
        return refused;
    }
    // Rules and limits see the path in its normal form; it goes upstream in that form too
    // unless the listener keeps the raw one. `None`: the path is normal already.
    let normalized = match path::normalize(req.uri().path(), conn.paths.escaped_slashes) {
        Ok(Cow::Borrowed(_)) => None,
        Ok(Cow::Owned(p)) => Some(p),
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "the request path is not accepted",
                e.describe(),
            );
        }
    };
    let forward_path = normalized.as_deref().filter(|_| !conn.paths.forward_raw);
    let matched_path = path::without_parameters(normalized.as_deref().unwrap_or(req.uri().path()));
    let lane = if conn.trusted {
        req.headers()
            .get(&X_GRAYLANE_LANE)
            .and_then(|v| v.to_str().ok())
    } else {
        None
    };
    // One view of the request for the routing decision and the rate limits' keys.
    let view = RequestView {
        method: req.method(),
        host: request_host(&req),
        path: &matched_path,
        query: req.uri().query(),
        headers: req.headers(),
        client_ip: conn.peer.ip(),
        now_unix_ms: now_unix_ms(),
        trusted_lane: lane,
        trusted: conn.trusted,
        // Only the low bits matter: the engine takes it modulo 100,000.
        random: forward::fastrand_u64() as u32,
    };
    let Some(decision) = snapshot.table.decide(&view) else {
        return not_found(req.uri().path());
    };
    let service = &snapshot.services[decision.service];
    let version = &service.versions[decision.version];
    version.stats.record_decision(worker.id, &decision);
    let mut limit_headers = None;
    if !service.control.limits.is_empty() {
        let now = control::nanos_at(started);
        // A limit shared through Redis may wait on it: that rare path is boxed, so the
        // future of every request stays as small as the local checks need.
        let verdict = if service.control.limits_global {
            Box::pin(check_rate_limits_global(service, &view, now)).await
        } else {
            check_rate_limits(service, &view, now)
        };
        match verdict {
            LimitVerdict::Refused(refused) => {
                version
                    .stats
                    .record_response(worker.id, 429, started.elapsed());
                return *refused;
            }
            LimitVerdict::Allowed(headers) => limit_headers = headers,
        }
    }

    let sticky_cookie = sticky_cookie_to_set(&snapshot, service, &decision, conn.tls);
    let (parts, body) = req.into_parts();
    // One deadline covers the read-ahead and the upstream exchange, counted from when the
    // request arrived; it takes a slot in the worker's table only if something has to wait.
    // Running out while the client is still sending its body is the client's failure (408);
    // afterwards it is the upstream's (504).
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
            let response = client_failure(
                StatusCode::BAD_REQUEST,
                "the request body is malformed",
                &e.to_string(),
            );
            version
                .stats
                .record_response(worker.id, 400, started.elapsed());
            return response;
        }
        Err(_) => {
            tracing::debug!(service = %service.name, peer = %conn.peer, timeout = ?service.request_timeout, "request body did not arrive in time");
            let response = client_failure(
                StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive in time",
                &format!("{:?}", service.request_timeout),
            );
            version
                .stats
                .record_response(worker.id, 408, started.elapsed());
            return response;
        }
    };
    // A version with no endpoints (a registry selector nothing matches yet) takes the
    // attempt path too: its answer is the one for "no endpoint is healthy", fallbacks included.
    if service.control.retry.is_some()
        || version.control.is_active()
        || version.endpoints.is_empty()
    {
        let attempt = Attempts {
            worker: &worker,
            conn: &conn,
            forward_path,
            service,
            started,
            sticky_cookie,
        };
        let response = attempt
            .run(decision.version, parts, body, &mut deadline)
            .await;
        return stamp_limits(response, limit_headers.as_ref());
    }
    let progress = body.progress();
    let req = Request::from_parts(parts, body);
    let forwarding = forwarding(&conn, version, forward_path);

    let endpoint = pick_endpoint(service, version);
    let addr = version.endpoints[endpoint].addr;
    version.endpoints[endpoint].in_flight.fetch_add(1, Relaxed);
    let result = tokio::select! {
        biased;
        sent = worker.pool.send(addr, service.connect_timeout, req, &forwarding) => Ok(sent),
        () = &mut deadline => Err(()),
    };
    version.endpoints[endpoint].in_flight.fetch_sub(1, Relaxed);
    let (timed_out, failed) = (result.is_err(), matches!(result, Ok(Err(_))));
    if let Some(fault) = client_fault(progress.as_deref(), timed_out, failed) {
        return client_body_failure(fault, service, version, &worker, started, &conn);
    }

    let response = match result {
        Ok(Ok(resp)) => {
            let (mut parts, body) = resp.into_parts();
            parts
                .headers
                .insert(X_GRAYLANE_VERSION.clone(), version.version_header.clone());
            if let Some(cookie) = sticky_cookie {
                parts.headers.append(header::SET_COOKIE, cookie);
            }
            Response::from_parts(parts, ProxyBody::Upstream(body))
        }
        Ok(Err(e)) => {
            version.stats.record_upstream_error(worker.id, e.kind);
            let status = match e.kind {
                UpstreamErrorKind::ConnectTimeout | UpstreamErrorKind::Timeout => {
                    StatusCode::GATEWAY_TIMEOUT
                }
                _ => StatusCode::BAD_GATEWAY,
            };
            tracing::warn!(service = %service.name, version = %version.name, upstream = %addr, kind = e.kind.label(), "{}", e.detail);
            upstream_failure(status, e.kind, service, version)
        }
        Err(_) => {
            version
                .stats
                .record_upstream_error(worker.id, UpstreamErrorKind::Timeout);
            tracing::warn!(service = %service.name, version = %version.name, upstream = %addr, timeout = ?service.request_timeout, "upstream did not answer in time");
            upstream_failure(
                StatusCode::GATEWAY_TIMEOUT,
                UpstreamErrorKind::Timeout,
                service,
                version,
            )
        }
    };
    version
        .stats
        .record_served(worker.id, response.status().as_u16(), started.elapsed());
    stamp_limits(response, limit_headers.as_ref())
}

/// Whether a failed exchange was the client's doing rather than the upstream's: its streamed
/// body stopped arriving before the request's time ran out (`408`), or its connection broke
/// off mid-body (`400`). Such a failure is not the version's: it must not count as an upstream
/// error, or a client could push a canary into rollback by sending slowly.
fn client_fault(
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

/// The answer to a request whose body the client did not finish sending.
fn client_body_failure(
    status: StatusCode,
    service: &ServiceRoute,
    version: &VersionRoute,
    worker: &Worker,
    started: Instant,
    conn: &ConnInfo,
) -> Response<ProxyBody> {
    let what = if status == StatusCode::REQUEST_TIMEOUT {
        "the request body did not arrive in time"
    } else {
        "the request body broke off before its end"
    };
    tracing::debug!(service = %service.name, version = %version.name, peer = %conn.peer, "{what}");
    version
        .stats
        .record_response(worker.id, status.as_u16(), started.elapsed());
    refuse(status, what, &format!("{:?}", service.request_timeout))
}

/// What the rate limits said of a request: refused (the `429`), or allowed, with the
/// `RateLimit-*` values to send when a limit that applies asks for them on allowed responses.
enum LimitVerdict {
    Refused(Box<Response<ProxyBody>>),
    Allowed(Option<LimitHeaders>),
}

/// The `RateLimit-*` values of one limit's answer.
struct LimitHeaders {
    limit: u32,
    remaining: u32,
    reset_secs: u64,
    policy: HeaderValue,
}

impl LimitHeaders {
    fn of(limit: &control::LimitRoute, answer: &control::LimitAnswer) -> LimitHeaders {
        LimitHeaders {
            limit: limit.burst,
            remaining: answer.remaining.min(limit.burst),
            reset_secs: answer.reset_secs,
            policy: limit.policy.clone(),
        }
    }

    /// Of two limits' values, the one a client has to mind: the fewer requests left.
    fn tighter(current: Option<LimitHeaders>, new: LimitHeaders) -> Option<LimitHeaders> {
        Some(match current {
            Some(c) if c.remaining <= new.remaining => c,
            _ => new,
        })
    }

    fn stamp(&self, headers: &mut http::HeaderMap) {
        headers.insert(RATELIMIT_LIMIT.clone(), HeaderValue::from(self.limit));
        headers.insert(
            RATELIMIT_REMAINING.clone(),
            HeaderValue::from(self.remaining),
        );
        headers.insert(RATELIMIT_RESET.clone(), HeaderValue::from(self.reset_secs));
        headers.insert(RATELIMIT_POLICY.clone(), self.policy.clone());
    }
}

/// Adds the `RateLimit-*` headers to an allowed request's response, when a limit asked for them.
fn stamp_limits(
    mut response: Response<ProxyBody>,
    limits: Option<&LimitHeaders>,
) -> Response<ProxyBody> {
    if let Some(limits) = limits {
        limits.stamp(response.headers_mut());
    }
    response
}

/// Checks the service's rate limits that apply to this request (all kept in this process).
fn check_rate_limits(service: &ServiceRoute, view: &RequestView<'_>, now: u64) -> LimitVerdict {
    let mut headers = None;
    for limit in applicable_limits(service, view.path) {
        let answer = view.with_policy_key(limit.key_for(view.trusted), |key| {
            limit.limiter.check_local(key, now)
        });
        if let Ok(answer) = answer {
            if !answer.allowed {
                return LimitVerdict::Refused(Box::new(too_many_requests(service, limit, &answer)));
            }
            if limit.headers_on_allowed {
                headers = LimitHeaders::tighter(headers, LimitHeaders::of(limit, &answer));
            }
        }
    }
    LimitVerdict::Allowed(headers)
}

/// [`check_rate_limits`] for a service with a limit shared through Redis.
async fn check_rate_limits_global(
    service: &ServiceRoute,
    view: &RequestView<'_>,
    now: u64,
) -> LimitVerdict {
    let mut headers = None;
    for limit in applicable_limits(service, view.path) {
        let answer = match view.with_policy_key(limit.key_for(view.trusted), |key| {
            limit
                .limiter
                .check_local(key, now)
                .map_err(|g| (g, KeyBuf::from_slice(key)))
        }) {
            Ok(answer) => answer,
            // The key is copied out of the request view for the wait on Redis.
            Err((global, key)) => control::check_global(global, key.as_slice()).await,
        };
        if !answer.allowed {
            return LimitVerdict::Refused(Box::new(too_many_requests(service, limit, &answer)));
        }
        if limit.headers_on_allowed {
            headers = LimitHeaders::tighter(headers, LimitHeaders::of(limit, &answer));
        }
    }
    LimitVerdict::Allowed(headers)
}

fn applicable_limits<'a>(
    service: &'a ServiceRoute,
    path: &'a str,
) -> impl Iterator<Item = &'a control::LimitRoute> {
    service.control.limits.iter().filter(move |limit| {
        limit
            .path_prefix
            .as_deref()
            .is_none_or(|p| path.starts_with(p))
    })
}

/// The `429` of a refused request: the `RateLimit-*` headers (the same meaning for a local and
/// a Redis limit: the burst, what is left of it, seconds until it is full again, and the
/// policy), `Retry-After` and a JSON body naming the limit.
fn too_many_requests(
    service: &ServiceRoute,
    limit: &control::LimitRoute,
    answer: &control::LimitAnswer,
) -> Response<ProxyBody> {
    let mut resp = json_response(
        StatusCode::TOO_MANY_REQUESTS,
        serde_json::json!({
            "error": "rate limit exceeded",
            "service": service.name,
            "limit": &*limit.describe,
            "retry_after_s": answer.retry_after_secs,
        }),
    );
    let headers = resp.headers_mut();
    LimitHeaders::of(limit, answer).stamp(headers);
    if let Some(after) = answer.retry_after_secs {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(after));
    }
    resp
}

/// A rate-limit key copied out of the request: on the stack up to 64 bytes (user ids, IPs), on
/// the heap beyond.
enum KeyBuf {
    Inline([u8; 64], usize),
    Heap(Vec<u8>),
}

impl KeyBuf {
    fn from_slice(key: &[u8]) -> KeyBuf {
        if key.len() <= 64 {
            let mut buf = [0u8; 64];
            buf[..key.len()].copy_from_slice(key);
            KeyBuf::Inline(buf, key.len())
        } else {
            KeyBuf::Heap(key.to_vec())
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            KeyBuf::Inline(buf, len) => &buf[..*len],
            KeyBuf::Heap(v) => v,
        }
    }
}

/// The request path of a service with traffic control: each attempt passes the version's
/// breaker and concurrency limit, goes to a usable endpoint, and its outcome feeds the breaker
/// and outlier ejection; a failed attempt is retried (within the retry policy and budget), then
/// falls back (another version, or a static response) when the version says so.
struct Attempts<'a> {
    worker: &'a Worker,
    conn: &'a ConnInfo,
    forward_path: Option<&'a str>,
    service: &'a ServiceRoute,
    started: Instant,
    sticky_cookie: Option<HeaderValue>,
}

/// Why a version could not take an attempt.
enum Unavailable {
    Open(std::time::Duration),
    Full,
    NoEndpoint,
}

impl Attempts<'_> {
    async fn run(
        self,
        first: usize,
        parts: http::request::Parts,
        body: RequestBody,
        deadline: &mut Deadline,
    ) -> Response<ProxyBody> {
        let service = self.service;
        let retry = service.control.retry.as_ref();
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
            let version = &service.versions[current];
            let ctl = &version.control;
            let attempt_started = Instant::now();
            let now = control::nanos_at(attempt_started);
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
                        Err(resp) => return *resp,
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
                        Err(resp) => return *resp,
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
                    Err(resp) => return *resp,
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
                    None => return self.give_up(current, UpstreamErrorKind::Protocol),
                },
                _ => return self.give_up(current, UpstreamErrorKind::Protocol),
            };
            let addr = version.endpoints[endpoint].addr;
            version.endpoints[endpoint].in_flight.fetch_add(1, Relaxed);
            let forwarding = forwarding(self.conn, version, self.forward_path);
            let send = self
                .worker
                .pool
                .send(addr, service.connect_timeout, req, &forwarding);
            // Without a per-try timeout the send is awaited as is: wrapping it would move the
            // whole send future once more on every request.
            let result = match retry.and_then(|r| r.per_try_timeout) {
                None => tokio::select! {
                    biased;
                    sent = send => Some(sent),
                    () = &mut *deadline => None,
                },
                Some(per_try) => tokio::select! {
                    biased;
                    sent = tokio::time::timeout(per_try, send) => {
                        Some(sent.unwrap_or(Err(crate::upstream::UpstreamError::timeout())))
                    }
                    () = &mut *deadline => None,
                },
            };
            version.endpoints[endpoint].in_flight.fetch_sub(1, Relaxed);
            let timed_out = result.is_none();
            let failed = matches!(result, Some(Err(_)));
            if let Some(fault) = client_fault(progress.as_deref(), timed_out, failed) {
                // Not the version's failure: the breaker's call and the endpoint's record are
                // left out (dropping the token counts nothing).
                drop(token);
                drop(permit);
                return client_body_failure(
                    fault,
                    service,
                    version,
                    self.worker,
                    self.started,
                    self.conn,
                );
            }
            let outcome = match &result {
                Some(Ok(resp)) => AttemptOutcome::Status(resp.status().as_u16()),
                Some(Err(e)) => AttemptOutcome::Error(e.kind),
                None => AttemptOutcome::Error(UpstreamErrorKind::Timeout),
            };
            let failed = outcome.fails(&ctl.failure_on);
            let ended = Instant::now();
            let took = ended - attempt_started;
            if let Some(t) = token {
                t.record(
                    control::nanos_at(ended),
                    graylane_traffic::breaker::Outcome {
                        failed,
                        duration: took,
                    },
                );
            }
            if let Some(o) = &ctl.outlier
                && o.record(endpoint, control::nanos_at(ended), !failed)
            {
                version.stats.record_event(self.worker.id, Event::Ejection);
            }
            drop(permit);
            if let Some(Err(e)) = &result {
                version.stats.record_upstream_error(self.worker.id, e.kind);
                tracing::warn!(service = %service.name, version = %version.name, upstream = %addr, kind = e.kind.label(), "{}", e.detail);
            }
            let out_of_time = result.is_none();
            if !failed || out_of_time {
                return self.finish(current, fell_back, result, ended, took);
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
                    return self.static_fallback(version, page);
                }
                _ => return self.finish(current, fell_back, result, ended, took),
            }
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
        match (&version.control.fallback, *fell_back) {
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
                let mut resp = json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({
                        "error": what,
                        "service": self.service.name,
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
        let stats = &version.stats;
        stats.record_event(self.worker.id, Event::Fallback);
        stats.record_response(self.worker.id, page.status.as_u16(), self.started.elapsed());
        static_response(page)
    }

    fn give_up(&self, current: usize, kind: UpstreamErrorKind) -> Response<ProxyBody> {
        let version = &self.service.versions[current];
        let resp = upstream_failure(StatusCode::BAD_GATEWAY, kind, self.service, version);
        version
            .stats
            .record_response(self.worker.id, 502, self.started.elapsed());
        resp
    }

    /// The attempt's answer to the client, stamped with the version that served it (and the
    /// fallback header when it was not the one chosen).
    fn finish(
        self,
        current: usize,
        fell_back: bool,
        result: Option<
            Result<Response<crate::upstream::UpstreamBody>, crate::upstream::UpstreamError>,
        >,
        ended: Instant,
        took: std::time::Duration,
    ) -> Response<ProxyBody> {
        let version = &self.service.versions[current];
        let mut response = match result {
            Some(Ok(resp)) => {
                let (mut parts, body) = resp.into_parts();
                parts
                    .headers
                    .insert(X_GRAYLANE_VERSION.clone(), version.version_header.clone());
                // The cookie pins a bucket, not a version, so a fallback's answer carries it too.
                if let Some(cookie) = self.sticky_cookie {
                    parts.headers.append(header::SET_COOKIE, cookie);
                }
                Response::from_parts(parts, ProxyBody::Upstream(body))
            }
            Some(Err(e)) => {
                let status = match e.kind {
                    UpstreamErrorKind::ConnectTimeout | UpstreamErrorKind::Timeout => {
                        StatusCode::GATEWAY_TIMEOUT
                    }
                    _ => StatusCode::BAD_GATEWAY,
                };
                upstream_failure(status, e.kind, self.service, version)
            }
            None => {
                version
                    .stats
                    .record_upstream_error(self.worker.id, UpstreamErrorKind::Timeout);
                upstream_failure(
                    StatusCode::GATEWAY_TIMEOUT,
                    UpstreamErrorKind::Timeout,
                    self.service,
                    version,
                )
            }
        };
        if fell_back {
            response
                .headers_mut()
                .insert(X_GRAYLANE_FALLBACK.clone(), version.fallback_header.clone());
        }
        let status = response.status().as_u16();
        version.stats.record_attempt(self.worker.id, status, took);
        version
            .stats
            .record_response(self.worker.id, status, ended - self.started);
        response
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

fn static_response(page: &graylane_config::StaticResponse) -> Response<ProxyBody> {
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

/// An endpoint that outlier ejection and health checks leave in rotation. When none is left
/// and `panic` is set (no fallback to go to), every endpoint is used, as Envoy's panic mode
/// does: sending somewhere beats refusing everything. `None` for a version without endpoints.
fn pick_usable_endpoint(
    service: &ServiceRoute,
    version: &VersionRoute,
    now: u64,
    panic: bool,
) -> Option<usize> {
    if version.endpoints.is_empty() {
        return None;
    }
    let ctl = &version.control;
    let first = pick_endpoint(service, version);
    if ctl.endpoint_usable(first, now) {
        return Some(first);
    }
    let n = version.endpoints.len();
    (1..n)
        .map(|step| (first + step) % n)
        .find(|&i| ctl.endpoint_usable(i, now))
        .or(panic.then_some(first))
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
fn sticky_cookie_to_set(
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

fn forwarding<'a>(
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
    }
}

/// Refuses a request whose head graylane will not forward as it is: `Host` missing from an
/// HTTP/1.1 request, repeated or malformed (RFC 9112 §3.2), a transfer coding other than
/// `chunked` (`501`, as nginx answers: decoding it would silently drop the coding, passing it on
/// would leave the upstream to guess the framing), or, where the listener says so, a header
/// name with `_`.
fn refusal<B>(req: &Request<B>, conn: &ConnInfo) -> Option<Response<ProxyBody>> {
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

/// A request refused before it is routed, for what its head says: a JSON error, and the
/// connection closed after it, since whatever body follows cannot be trusted to be framed as
/// the client meant.
fn refuse(status: StatusCode, what: &str, detail: &str) -> Response<ProxyBody> {
    let mut resp = client_failure(status, what, detail);
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// The `X-Forwarded-For` entry for a client address.
pub fn forwarded_for(peer: SocketAddr) -> HeaderValue {
    HeaderValue::from_str(&peer.ip().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

fn pick_endpoint(service: &ServiceRoute, version: &VersionRoute) -> usize {
    let n = version.endpoints.len();
    if n <= 1 {
        return 0;
    }
    match service.load_balancing {
        LoadBalancing::RoundRobin => version.next.fetch_add(1, Relaxed) % n,
        LoadBalancing::LeastRequest => {
            // Power of two choices: as good as scanning every endpoint, at constant cost.
            let a = (forward::fastrand_u64() % n as u64) as usize;
            let b = (forward::fastrand_u64() % n as u64) as usize;
            let load = |i: usize| version.endpoints[i].in_flight.load(Relaxed);
            if load(a) <= load(b) { a } else { b }
        }
    }
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::local(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, JSON);
    resp
}

fn not_found(path: &str) -> Response<ProxyBody> {
    json_response(
        StatusCode::NOT_FOUND,
        serde_json::json!({ "error": "no service matches this request", "path": path }),
    )
}

/// A request graylane refuses because of what the client sent (or failed to send).
fn client_failure(status: StatusCode, what: &str, detail: &str) -> Response<ProxyBody> {
    json_response(
        status,
        serde_json::json!({ "error": what, "detail": detail }),
    )
}

fn upstream_failure(
    status: StatusCode,
    kind: UpstreamErrorKind,
    service: &ServiceRoute,
    version: &VersionRoute,
) -> Response<ProxyBody> {
    let what = match kind {
        UpstreamErrorKind::ConnectRefused => "the upstream refused the connection",
        UpstreamErrorKind::ConnectTimeout => "connecting to the upstream timed out",
        UpstreamErrorKind::ConnectError => "could not connect to the upstream",
        UpstreamErrorKind::Timeout => "the upstream did not answer in time",
        UpstreamErrorKind::Protocol => "the upstream connection failed",
    };
    let mut resp = json_response(
        status,
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
