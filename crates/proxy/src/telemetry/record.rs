//! One traced request before it becomes spans: ids, clock readings and small copies of the
//! request, in fixed-size fields (no string is formatted or allocated on the request path), and
//! a fixed array of its upstream attempts. The exporter turns it into a server span and one
//! client span per attempt (export.rs).

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use graylane_rules::Decision;
use http::header;
use http::{Request, Response};

use crate::access_log::{Facts, Text};
use crate::body::ProxyBody;
use crate::forward::{Trace, incoming_trace};
use crate::rng::fastrand_u64;
use crate::snapshot::Snapshot;
use crate::upstream::{UpstreamError, UpstreamErrorKind};

/// The upstream attempts of a request kept as client spans; later ones are counted only.
pub(crate) const MAX_ATTEMPTS: usize = 4;

/// How an upstream attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Still running (the request ended some other way, e.g. its client went away).
    Running,
    /// A response with this status.
    Status(u16),
    /// No response: the exchange failed.
    Failed(UpstreamErrorKind),
    /// No response before the request's deadline.
    TimedOut,
}

impl Ended {
    /// Whether the attempt failed: no response, or a 5xx.
    pub(crate) fn failed(self) -> bool {
        match self {
            Ended::Status(s) => s >= 500,
            Ended::Failed(_) | Ended::TimedOut => true,
            Ended::Running => false,
        }
    }
}

/// One upstream attempt: a client span.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attempt {
    pub(crate) span_id: [u8; 8],
    /// The version's index in the service.
    pub(crate) version: usize,
    /// Sent to another version (or its page) after the routed one failed.
    pub(crate) fallback: bool,
    pub(crate) addr: SocketAddr,
    pub(crate) started: Instant,
    pub(crate) ended_at: Instant,
    pub(crate) ended: Ended,
}

/// One traced request.
pub(crate) struct SpanRecord {
    pub(crate) trace_id: [u8; 16],
    /// The caller's span (from its `traceparent`); all zeros when graylane started the trace.
    pub(crate) parent: [u8; 8],
    /// The server span's id.
    pub(crate) span_id: [u8; 8],
    /// Sampled (by the caller's flag or the `sample` share), rather than kept in case it fails.
    pub(crate) sampled: bool,
    /// The wall clock when the request arrived; `started` is the same moment on the monotonic
    /// clock every other reading is measured from.
    pub(crate) start: SystemTime,
    pub(crate) started: Instant,
    pub(crate) duration: Duration,
    pub(crate) method: Text<16>,
    pub(crate) path: Text<256>,
    pub(crate) host: Text<128>,
    pub(crate) peer: IpAddr,
    pub(crate) http: http::Version,
    pub(crate) tls: bool,
    pub(crate) status: u16,
    pub(crate) decision: Option<Decision>,
    pub(crate) answered_by: Option<usize>,
    pub(crate) fallback: bool,
    pub(crate) retries: u32,
    pub(crate) attempts: [Option<Attempt>; MAX_ATTEMPTS],
    /// Attempts made, kept or not.
    pub(crate) attempts_made: u32,
    /// The snapshot the indices above are of, taken only for a record that is exported.
    pub(crate) snapshot: Option<Arc<Snapshot>>,
}

/// The request's trace while it is served: its record when it is traced. The phases reach it
/// through [`Facts`]; nothing borrows it across an await.
#[derive(Default)]
pub(crate) struct TraceCell {
    record: RefCell<Option<Box<SpanRecord>>>,
    /// Graylane started the trace and did not sample it: the upstream is told so (flags `00`),
    /// so the hops after it agree instead of sampling a trace with no root.
    unsampled: Cell<bool>,
}

/// What [`TraceCell::begin`] decides from the sampling settings.
#[derive(Clone, Copy)]
pub(crate) struct Sampling {
    /// New traces are sampled when the low 64 bits of their id are below this; `u64::MAX`
    /// samples all of them.
    pub(crate) threshold: u64,
    pub(crate) always_on_error: bool,
}

impl TraceCell {
    /// Starts the request's record when it is sampled or may be exported on error; the
    /// request's other fields are copied here before the request is taken apart.
    #[cold]
    #[inline(never)]
    pub(crate) fn begin<B>(
        &self,
        sampling: Sampling,
        req: &Request<B>,
        peer: IpAddr,
        tls: bool,
        started: Instant,
    ) {
        let (trace_id, parent, sampled, started_here) = match incoming(req) {
            Some((trace_id, parent, sampled)) => (trace_id, parent, sampled, false),
            None => {
                let low = fastrand_u64();
                let sampled = sampling.threshold == u64::MAX || low < sampling.threshold;
                let mut id = [0; 16];
                id[..8].copy_from_slice(&fastrand_u64().to_be_bytes());
                id[8..].copy_from_slice(&low.to_be_bytes());
                (id, [0; 8], sampled, true)
            }
        };
        if !sampled && !sampling.always_on_error {
            self.unsampled.set(started_here);
            return;
        }
        let mut record = Box::new(SpanRecord {
            trace_id,
            parent,
            span_id: span_id(),
            sampled,
            start: SystemTime::now(),
            started,
            duration: Duration::ZERO,
            method: Text::default(),
            path: Text::default(),
            host: Text::default(),
            peer,
            http: req.version(),
            tls,
            status: 0,
            decision: None,
            answered_by: None,
            fallback: false,
            retries: 0,
            attempts: [None; MAX_ATTEMPTS],
            attempts_made: 0,
            snapshot: None,
        });
        record.method.set(req.method().as_str().as_bytes());
        record.path.set(req.uri().path().as_bytes());
        let host = req
            .uri()
            .host()
            .or_else(|| req.headers().get(header::HOST)?.to_str().ok());
        if let Some(host) = host {
            // `server.address` is the name alone; `[::1]:8080` keeps its brackets.
            let name = match host.rsplit_once(':') {
                Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
                _ => host,
            };
            record.host.set(name.as_bytes());
        }
        *self.record.borrow_mut() = Some(record);
    }

    /// Whether the request is traced (its upstream attempts then carry their client span in
    /// `traceparent`), or graylane started its trace unsampled (they are told so).
    #[inline]
    pub(crate) fn active(&self) -> Option<&TraceCell> {
        (self.unsampled.get() || self.record.borrow().is_some()).then_some(self)
    }

    /// Starts a client span for an attempt at `addr`.
    pub(crate) fn attempt(&self, version: usize, fallback: bool, addr: SocketAddr) {
        let mut cell = self.record.borrow_mut();
        let Some(record) = cell.as_mut() else {
            return;
        };
        let index = record.attempts_made as usize;
        record.attempts_made += 1;
        if let Some(slot) = record.attempts.get_mut(index) {
            let now = Instant::now();
            *slot = Some(Attempt {
                span_id: span_id(),
                version,
                fallback,
                addr,
                started: now,
                ended_at: now,
                ended: Ended::Running,
            });
        }
    }

    /// Ends the latest attempt's client span with the exchange's outcome.
    pub(crate) fn attempt_ended<T>(&self, result: &Option<Result<Response<T>, UpstreamError>>) {
        let ended = match result {
            Some(Ok(resp)) => Ended::Status(resp.status().as_u16()),
            Some(Err(e)) => Ended::Failed(e.kind),
            None => Ended::TimedOut,
        };
        let mut cell = self.record.borrow_mut();
        let Some(record) = cell.as_mut() else {
            return;
        };
        let index = (record.attempts_made as usize).wrapping_sub(1);
        if let Some(Some(attempt)) = record.attempts.get_mut(index) {
            attempt.ended = ended;
            attempt.ended_at = Instant::now();
        }
    }

    /// Writes `traceparent: 00-<trace id>-<the latest attempt's span id>-<flags>\r\n`: the
    /// upstream's spans nest under graylane's client span.
    pub(crate) fn write_traceparent(&self, out: &mut Vec<u8>) {
        let cell = self.record.borrow();
        let Some(record) = cell.as_ref() else {
            if self.unsampled.get() {
                let mut traceparent = crate::forward::new_traceparent();
                traceparent[53..].copy_from_slice(b"00");
                out.extend_from_slice(b"traceparent: ");
                out.extend_from_slice(&traceparent);
                out.extend_from_slice(b"\r\n");
            }
            return;
        };
        let index = (record.attempts_made as usize).wrapping_sub(1);
        let parent = match record.attempts.get(index) {
            Some(Some(attempt)) => attempt.span_id,
            // An attempt past the kept ones has no span: the server span is its parent.
            _ => record.span_id,
        };
        out.extend_from_slice(b"traceparent: 00-");
        hex(out, &record.trace_id);
        out.push(b'-');
        hex(out, &parent);
        out.extend_from_slice(if record.sampled {
            b"-01\r\n"
        } else {
            b"-00\r\n"
        });
    }

    /// Ends the record with the response and what the phases left in `facts`: the record to
    /// export, or `None` when it was kept only in case of an error and none happened.
    #[cold]
    #[inline(never)]
    pub(crate) fn finish(
        &self,
        snapshot: &Arc<Snapshot>,
        facts: &Facts,
        response: &Response<ProxyBody>,
    ) -> Option<Box<SpanRecord>> {
        let mut record = self.record.borrow_mut().take()?;
        record.duration = record.started.elapsed();
        record.status = response.status().as_u16();
        record.decision = facts.decision.get();
        record.answered_by = facts.answered_by.get();
        record.fallback = facts.fallback.get();
        record.retries = facts.retries.get();
        let failed = record.status >= 500
            || record.fallback
            || record.attempts.iter().flatten().any(|a| a.ended.failed());
        if !record.sampled && !failed {
            return None;
        }
        record.snapshot = Some(Arc::clone(snapshot));
        Some(record)
    }
}

/// The caller's trace id, span id and sampled flag, when the request carries one well-formed
/// `traceparent`: the same judgement as the one that forwards it (`forward::incoming_trace`),
/// so the spans and the upstream always agree on whose trace this is.
fn incoming<B>(req: &Request<B>) -> Option<([u8; 16], [u8; 8], bool)> {
    // `-traceid-parentid-flags`, the version's two digits cut off.
    let Trace::Valid(ids) = incoming_trace(req.headers()) else {
        return None;
    };
    let mut trace_id = [0; 16];
    let mut parent = [0; 8];
    unhex(&ids[1..33], &mut trace_id)?;
    unhex(&ids[34..50], &mut parent)?;
    let flags = (ids[51] as char).to_digit(16)? * 16 + (ids[52] as char).to_digit(16)?;
    Some((trace_id, parent, flags & 1 == 1))
}

fn unhex(text: &[u8], out: &mut [u8]) -> Option<()> {
    for (pair, byte) in text.chunks_exact(2).zip(out.iter_mut()) {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        *byte = (hi * 16 + lo) as u8;
    }
    Some(())
}

fn hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 0xf)]);
    }
}

/// A random span id, never all zeros (which would be invalid).
fn span_id() -> [u8; 8] {
    fastrand_u64().max(1).to_be_bytes()
}

#[cfg(test)]
impl Default for SpanRecord {
    fn default() -> Self {
        SpanRecord {
            trace_id: [0; 16],
            parent: [0; 8],
            span_id: [0; 8],
            sampled: false,
            start: SystemTime::UNIX_EPOCH,
            started: Instant::now(),
            duration: Duration::ZERO,
            method: Text::default(),
            path: Text::default(),
            host: Text::default(),
            peer: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            http: http::Version::HTTP_11,
            tls: false,
            status: 0,
            decision: None,
            answered_by: None,
            fallback: false,
            retries: 0,
            attempts: [None; MAX_ATTEMPTS],
            attempts_made: 0,
            snapshot: None,
        }
    }
}
