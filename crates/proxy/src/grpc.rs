//! gRPC responses judged by their `grpc-status` rather than their HTTP status (nearly always
//! 200). A trailers-only response carries the status in its head and is judged there, like any
//! response, breakers and retries included. Otherwise the status comes in the trailers after
//! the body: the response's counting waits in its [`GrpcBody`] until then.
//!
//! A status among the service's `grpc.error_codes` is counted as the HTTP status gRPC maps it
//! to (`UNAVAILABLE` 503, `DEADLINE_EXCEEDED` 504, `UNIMPLEMENTED` 501, any other 500), so the
//! version's error rate, its metrics and the analysis see it as the failure it is; any other
//! status is counted as the HTTP status. A body that ends without a status counts as `UNKNOWN`,
//! one the upstream breaks off as a `502`. One the client drops first (it cancelled the call)
//! counts as `CANCELLED`: the client's doing, an error only when the service lists it.
//!
//! A version's circuit breaker and outlier detection judge such a response when its status
//! arrives too ([`LaterGuards`]): the breaker's call is asked for and recorded then, since the
//! one admitted with the request borrows the snapshot the body cannot hold on to.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use graylane_config::GrpcErrorCodes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::clock::nanos_at;
use crate::guards::AttemptOutcome;
use crate::metrics::{Event, RouteStats};
use crate::snapshot::Snapshot;
use crate::upstream::UpstreamErrorKind;

const CANCELLED: u32 = 1;
const UNKNOWN: u32 = 2;

/// The `grpc-status` a head or trailers carry, if any; a value that is not a number counts as
/// `UNKNOWN`.
pub(crate) fn status_in(headers: &HeaderMap) -> Option<u32> {
    let value = headers.get("grpc-status")?;
    Some(
        std::str::from_utf8(value.as_bytes())
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(UNKNOWN),
    )
}

/// The status a gRPC response with `code` is counted as, given its HTTP status.
pub(crate) fn counted_status(code: u32, codes: GrpcErrorCodes, http: u16) -> u16 {
    if http != 200 || !codes.contains(code) {
        return http;
    }
    match code {
        4 => 504,
        12 => 501,
        14 => 503,
        _ => 500,
    }
}

/// How a response's counting is recorded once its outcome is known.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Recorded {
    /// The request's one exchange: `record_served` with the time to the response head.
    Served(Duration),
    /// The last attempt of a guarded request: `record_attempt` with the attempt's time,
    /// `record_response` with the request's.
    Attempt {
        /// The attempt's time to the response head.
        took: Duration,
        /// The request's time to the response head.
        total: Duration,
    },
}

impl Recorded {
    /// Counts a response with `status` in `stats`. Every proxied response is counted here.
    #[inline]
    pub(crate) fn record(self, stats: &RouteStats, worker: usize, status: u16) {
        match self {
            Recorded::Served(elapsed) => stats.record_served(worker, status, elapsed),
            Recorded::Attempt { took, total } => {
                stats.record_attempt(worker, status, took);
                stats.record_response(worker, status, total);
            }
        }
    }
}

/// The counting a gRPC response owes once its status is known.
pub(crate) struct Pending {
    pub(crate) stats: Arc<RouteStats>,
    pub(crate) worker: usize,
    pub(crate) codes: GrpcErrorCodes,
    /// The response's HTTP status.
    pub(crate) http: u16,
    pub(crate) recorded: Recorded,
}

impl Pending {
    fn finish(self, end: End) {
        let status = match end {
            End::Status(code) => counted_status(code, self.codes, self.http),
            End::Broken => 502,
        };
        self.recorded.record(&self.stats, self.worker, status);
    }
}

/// How a gRPC response's body ended.
#[derive(Debug, Clone, Copy)]
enum End {
    /// With this status (or one that stands for its absence).
    Status(u32),
    /// The upstream broke it off.
    Broken,
}

/// The judgement a guarded version's breaker and outlier detection owe a gRPC response once
/// its status is known.
pub(crate) struct LaterGuards {
    pub(crate) snapshot: Arc<Snapshot>,
    pub(crate) service: usize,
    pub(crate) version: usize,
    pub(crate) endpoint: usize,
    pub(crate) worker: usize,
    /// The response's HTTP status.
    pub(crate) http: u16,
    /// The attempt's time to the response head.
    pub(crate) took: Duration,
}

impl LaterGuards {
    fn finish(self, end: End) {
        let Some(version) = self
            .snapshot
            .services
            .get(self.service)
            .and_then(|s| s.versions.get(self.version))
        else {
            return;
        };
        let codes = version
            .upstream
            .as_ref()
            .map_or_else(Default::default, |u| u.grpc_error_codes);
        let outcome = match end {
            End::Status(code) => AttemptOutcome::Status(counted_status(code, codes, self.http)),
            End::Broken => AttemptOutcome::Error(UpstreamErrorKind::Protocol),
        };
        let ctl = &version.guards;
        let failed = outcome.fails(&ctl.failure_on);
        let now = nanos_at(Instant::now());
        if let Some(call) = ctl.breaker.as_ref().and_then(|b| b.try_call(now).ok()) {
            call.record(
                now,
                graylane_traffic::breaker::Outcome {
                    failed,
                    duration: self.took,
                },
            );
        }
        if let Some(o) = &ctl.outlier
            && o.record(self.endpoint, now, !failed)
        {
            version.stats.record_event(self.worker, Event::Ejection);
        }
    }
}

/// A gRPC response's body, streamed as it comes; its trailers (with `grpc-status`) pass to the
/// client, and the response is counted when they arrive.
pub(crate) struct GrpcBody {
    inner: Incoming,
    /// The status a trailers-only response carries in its head.
    head_status: Option<u32>,
    pending: Option<Pending>,
    guards: Option<LaterGuards>,
}

impl GrpcBody {
    /// The body of a gRPC response whose head is `headers`.
    pub(crate) fn new(inner: Incoming, headers: &HeaderMap) -> GrpcBody {
        GrpcBody {
            inner,
            head_status: status_in(headers),
            pending: None,
            guards: None,
        }
    }

    /// The status a trailers-only response carried in its head; `None`: it comes in the
    /// trailers.
    pub(crate) fn head_status(&self) -> Option<u32> {
        self.head_status
    }

    /// Leaves the response's counting to the end of the body.
    pub(crate) fn defer(&mut self, pending: Pending) {
        self.pending = Some(pending);
    }

    /// Leaves the version's guards' judgement to the end of the body.
    pub(crate) fn judge_guards_later(&mut self, guards: LaterGuards) {
        self.guards = Some(guards);
    }

    fn finish(&mut self, end: End) {
        if let Some(pending) = self.pending.take() {
            pending.finish(end);
        }
        if let Some(guards) = self.guards.take() {
            guards.finish(end);
        }
    }
}

impl Body for GrpcBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.finish(End::Status(status_in(trailers).unwrap_or(UNKNOWN)));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                this.finish(End::Broken);
                Poll::Ready(Some(Err(std::io::Error::other(e))))
            }
            None => {
                this.finish(End::Status(UNKNOWN));
                Poll::Ready(None)
            }
        }
    }

    /// Not at its end while the status is awaited: the last poll is the one that tells a body
    /// that ended without trailers from one the client dropped.
    fn is_end_stream(&self) -> bool {
        self.pending.is_none() && self.guards.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for GrpcBody {
    fn drop(&mut self) {
        self.finish(End::Status(CANCELLED));
    }
}
