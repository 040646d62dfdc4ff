//! Mirror (shadow) steps: a copy of a share of the baseline's requests goes to the candidate,
//! marked `X-Graylane-Mirror: 1`, and its answer is read to the end and thrown away. The user
//! is answered by the baseline alone; the candidate's exchanges are counted in its stats as any
//! attempt is, so the analysis judges it on traffic no user saw.
//!
//! A copy is its own local task: the user's request never waits for it. Copies are chosen by
//! the request's bucket (the lowest buckets, the users a canary's first weighted step moves),
//! so the same users are copied for the whole step. Only a body read whole within the
//! read-ahead can be sent twice; a streamed one is not copied (counted `skipped`). At most
//! [`MAX_IN_FLIGHT`] copies per worker wait on the candidate; past that a copy is dropped
//! (counted `dropped`), so a slow or dead candidate costs memory and sockets only up to that
//! bound. Each copy has the service's request timeout, head and body together.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use graylane_config::{Service, Weight};
use graylane_rules::{Decision, Reason, Routing};
use http::{Method, Request};
use http_body_util::BodyExt;

use super::{ConnInfo, Worker, attempts, balance};
use crate::body::RequestBody;
use crate::metrics::Event;
use crate::snapshot::LocalSnapshot;
use crate::upstream::{self, UpstreamErrorKind};

/// Copies waiting on the candidate per worker thread; more are dropped.
pub(crate) const MAX_IN_FLIGHT: usize = 64;

thread_local! {
    /// Copies in flight on this worker (workers are threads, each with its own runtime).
    static IN_FLIGHT: Cell<usize> = const { Cell::new(0) };
}

/// A service's mirror step in effect, prepared in the snapshot; absent for every other
/// service, so the request path checks one `Option` and nothing else.
#[derive(Debug)]
pub(crate) struct Mirror {
    /// Requests whose bucket is below this (thousandths of a percent) are copied.
    share: u32,
    baseline: usize,
    candidate: usize,
    methods: Box<[Method]>,
}

impl Mirror {
    /// The mirror of `service`'s release under `routing` (the configured start when `None`);
    /// `None` when nothing is copied.
    pub(crate) fn prepare(service: &Service, routing: Option<&Routing>) -> Option<Box<Mirror>> {
        let release = service.release.as_ref()?;
        let share = match routing {
            Some(r) => r.mirror,
            None => release.initial_mirror()?,
        };
        if share == Weight::ZERO {
            return None;
        }
        Some(Box::new(Mirror {
            share: share.milli_percent(),
            baseline: release.baseline,
            candidate: release.candidate,
            methods: release.mirror_methods.clone().into(),
        }))
    }

    /// Whether the request decided as `decision` with `method` is one of the copied.
    fn selects(&self, decision: &Decision, method: &Method) -> bool {
        let bucket = match decision.reason {
            Reason::Bucket { bucket, .. } | Reason::Sticky { bucket, .. } => bucket,
            // Forced or on a lane: the request already went where it was sent on purpose.
            _ => return false,
        };
        decision.version == self.baseline && bucket < self.share && self.methods.contains(method)
    }
}

/// Starts a copy of the request to the candidate when the service's mirror step selects it;
/// whether it did. Never waits: the copy runs in its own task on this worker.
pub(super) fn copy(
    snapshot: &LocalSnapshot,
    worker: &Rc<Worker>,
    conn: &Rc<ConnInfo>,
    decision: &Decision,
    parts: &http::request::Parts,
    body: &RequestBody,
    forward_path: Option<&str>,
) -> bool {
    let service = &snapshot.services[decision.service];
    let Some(mirror) = service.mirror.as_deref() else {
        return false;
    };
    if !mirror.selects(decision, &parts.method) {
        return false;
    }
    let Some(candidate) = service
        .versions
        .get(mirror.candidate)
        .filter(|v| !v.endpoints.is_empty())
    else {
        return false;
    };
    let stats = &candidate.stats;
    let RequestBody::Whole(bytes) = body else {
        stats.record_event(worker.id, Event::MirrorSkipped);
        return false;
    };
    let Some(slot) = Slot::take() else {
        stats.record_event(worker.id, Event::MirrorDropped);
        return false;
    };
    stats.record_event(worker.id, Event::MirrorSent);
    let mut req = Request::new(RequestBody::Whole(bytes.clone()));
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    let (snapshot, worker, conn) = (Rc::clone(snapshot), Rc::clone(worker), Rc::clone(conn));
    let path = forward_path.map(str::to_owned);
    let (service_index, version_index) = (decision.service, mirror.candidate);
    tokio::task::spawn_local(async move {
        let _slot = slot;
        let service = &snapshot.services[service_index];
        let version = &service.versions[version_index];
        let mut forwarding = attempts::forwarding(&conn, version, path.as_deref());
        forwarding.mirror = true;
        let endpoint = &version.endpoints[balance::pick_endpoint(service, version)];
        let started = Instant::now();
        let deadline = tokio::time::Instant::from_std(started) + service.request_timeout;
        endpoint.in_flight.fetch_add(1, Relaxed);
        let sent = tokio::time::timeout_at(
            deadline,
            upstream::exchange(
                &worker.pool,
                version.upstream.as_deref(),
                endpoint.addr,
                service.connect_timeout,
                req,
                &forwarding,
            ),
        )
        .await;
        match sent {
            Ok(Ok(response)) => {
                version.stats.record_attempt(
                    worker.id,
                    response.status().as_u16(),
                    started.elapsed(),
                );
                // Read to the end, so the connection can serve again; what it says is nobody's.
                let mut body = response.into_body();
                let _ = tokio::time::timeout_at(deadline, async {
                    while let Some(Ok(_)) = body.frame().await {}
                })
                .await;
            }
            Ok(Err(e)) => {
                version.stats.record_upstream_error(worker.id, e.kind);
                version.stats.record_attempt(
                    worker.id,
                    e.kind.status().as_u16(),
                    started.elapsed(),
                );
                // Debug: the analysis and the metrics report a failing candidate; a log line
                // per copy would flood the log with it.
                tracing::debug!(service = %service.name, version = %version.name, upstream = %endpoint.addr, kind = e.kind.label(), "mirrored request failed: {}", e.detail);
            }
            Err(_) => {
                let kind = UpstreamErrorKind::Timeout;
                version.stats.record_upstream_error(worker.id, kind);
                version
                    .stats
                    .record_attempt(worker.id, kind.status().as_u16(), started.elapsed());
                tracing::debug!(service = %service.name, version = %version.name, upstream = %endpoint.addr, timeout = ?service.request_timeout, "mirrored request got no answer in time");
            }
        }
        endpoint.in_flight.fetch_sub(1, Relaxed);
    });
    true
}

/// One of the worker's [`MAX_IN_FLIGHT`] places for a copy, given back when the copy ends (or
/// its task is dropped with the worker).
struct Slot;

impl Slot {
    fn take() -> Option<Slot> {
        IN_FLIGHT.with(|n| {
            if n.get() >= MAX_IN_FLIGHT {
                return None;
            }
            n.set(n.get() + 1);
            Some(Slot)
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        IN_FLIGHT.with(|n| n.set(n.get().saturating_sub(1)));
    }
}
