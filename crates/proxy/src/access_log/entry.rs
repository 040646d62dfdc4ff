//! One request's line before it is formatted: what the request path copies out of the request
//! and its response, in fixed-size fields (nothing on the request path is formatted, and the
//! request's own buffers are not held on to), and the facts the phases leave behind for it.

use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use graylane_rules::{Decision, Reason};
use http::header::{self, HeaderName};
use http::{Request, Response};
use http_body::Body;

use crate::body::ProxyBody;
use crate::forward::X_GRAYLANE_LANE;
use crate::snapshot::Snapshot;

/// The most of a request's path (with its query) a line keeps; a longer one is cut here and
/// ends in `...`.
pub(crate) const PATH_MAX: usize = 1024;

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Text of at most `N` bytes, cut where longer.
pub(crate) struct Text<const N: usize> {
    len: u16,
    cut: bool,
    buf: [u8; N],
}

impl<const N: usize> Default for Text<N> {
    fn default() -> Self {
        Text {
            len: 0,
            cut: false,
            buf: [0; N],
        }
    }
}

impl<const N: usize> Text<N> {
    /// Keeps `bytes`, cut at `N`.
    pub(crate) fn set(&mut self, bytes: &[u8]) {
        let len = bytes.len().min(N);
        self.buf[..len].copy_from_slice(&bytes[..len]);
        self.len = len as u16;
        self.cut = bytes.len() > N;
    }

    /// The bytes kept.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    /// Whether the text was longer than `N` bytes.
    pub(crate) fn cut(&self) -> bool {
        self.cut
    }
}

/// One request's access log line, unformatted.
pub(crate) struct Entry {
    /// When the response was handed to the connection, in milliseconds since the Unix epoch.
    pub(crate) at_ms: i64,
    pub(crate) client: IpAddr,
    pub(crate) method: Text<16>,
    /// The path and query as received, not normalised.
    pub(crate) path: Text<PATH_MAX>,
    pub(crate) http: http::Version,
    pub(crate) referer: Text<512>,
    pub(crate) user_agent: Text<256>,
    /// `x-graylane-lane`, when a trusted hop sent it (only then does it route).
    pub(crate) lane: Text<64>,
    /// The incoming `traceparent`, checked and reduced to its trace id by the writer.
    pub(crate) traceparent: Text<55>,
    pub(crate) status: u16,
    /// The response body's length when its head gives it (`None`: streamed, unknown).
    pub(crate) bytes: Option<u64>,
    /// From the request's arrival to its response head.
    pub(crate) duration: Duration,
    /// The answering upstream exchange's time to its outcome; `None`: none was made.
    pub(crate) upstream: Option<Duration>,
    pub(crate) service: Text<64>,
    pub(crate) version: Text<64>,
    /// Why the version was chosen (`None`: the request was not routed).
    pub(crate) reason: Option<Reason>,
    /// A fallback answered: another version, or a version's static page.
    pub(crate) fallback: bool,
    pub(crate) retries: u32,
    /// A mirror step sent a copy of the request to the candidate.
    pub(crate) mirrored: bool,
}

impl Default for Entry {
    fn default() -> Self {
        Entry {
            at_ms: 0,
            client: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            method: Text::default(),
            path: Text::default(),
            http: http::Version::HTTP_11,
            referer: Text::default(),
            user_agent: Text::default(),
            lane: Text::default(),
            traceparent: Text::default(),
            status: 0,
            bytes: None,
            duration: Duration::ZERO,
            upstream: None,
            service: Text::default(),
            version: Text::default(),
            reason: None,
            fallback: false,
            retries: 0,
            mirrored: false,
        }
    }
}

/// What the phases of one request leave for its log line: the routing decision, the version
/// that answered and how. Plain stores, made whether or not the request is logged.
#[derive(Default)]
pub(crate) struct Facts {
    pub(crate) decision: Cell<Option<Decision>>,
    /// The version that answered, when a fallback did (else the decision's).
    pub(crate) answered_by: Cell<Option<usize>>,
    pub(crate) fallback: Cell<bool>,
    pub(crate) retries: Cell<u32>,
    pub(crate) upstream: Cell<Upstream>,
    pub(crate) mirrored: Cell<bool>,
    /// The request's trace, when it is traced (`telemetry/`).
    pub(crate) trace: crate::telemetry::TraceCell,
}

/// The answering upstream exchange's time.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) enum Upstream {
    /// No exchange answered (refused, not found, limited, shed, the client's failure).
    #[default]
    None,
    /// The request's one exchange, sent with no guard: timed from the request's arrival, as
    /// its metrics are (no clock is read for the log).
    Whole,
    /// The last of a guarded request's attempts, from its own start.
    Took(Duration),
}

impl Entry {
    /// The request's part of its line, copied before the request is taken apart.
    #[cold]
    #[inline(never)]
    pub(crate) fn begin<B>(req: &Request<B>, client: IpAddr, trusted: bool) -> Box<Entry> {
        let mut entry = Box::<Entry>::default();
        entry.client = client;
        entry.method.set(req.method().as_str().as_bytes());
        let uri = req.uri();
        let target = uri
            .path_and_query()
            .map_or_else(|| uri.path(), |p| p.as_str());
        entry.path.set(target.as_bytes());
        entry.http = req.version();
        let headers = req.headers();
        if let Some(v) = headers.get(header::REFERER) {
            entry.referer.set(v.as_bytes());
        }
        if let Some(v) = headers.get(header::USER_AGENT) {
            entry.user_agent.set(v.as_bytes());
        }
        if trusted && let Some(v) = headers.get(&X_GRAYLANE_LANE) {
            entry.lane.set(v.as_bytes());
        }
        if let Some(v) = headers.get(&TRACEPARENT) {
            entry.traceparent.set(v.as_bytes());
        }
        entry
    }

    /// The response's part of the line, from what the phases left in `facts`.
    #[cold]
    #[inline(never)]
    pub(crate) fn finish(
        &mut self,
        snapshot: &Snapshot,
        facts: &Facts,
        response: &Response<ProxyBody>,
        started: Instant,
    ) {
        self.at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        self.duration = started.elapsed();
        self.status = response.status().as_u16();
        self.bytes = response.body().size_hint().exact();
        if let Some(decision) = facts.decision.get() {
            self.reason = Some(decision.reason);
            if let Some(service) = snapshot.services.get(decision.service) {
                self.service.set(service.name.as_bytes());
                let version = facts.answered_by.get().unwrap_or(decision.version);
                if let Some(v) = service.versions.get(version) {
                    self.version.set(v.name.as_bytes());
                }
            }
        }
        self.fallback = facts.fallback.get();
        self.retries = facts.retries.get();
        self.upstream = match facts.upstream.get() {
            Upstream::None => None,
            Upstream::Whole => Some(self.duration),
            Upstream::Took(took) => Some(took),
        };
        self.mirrored = facts.mirrored.get();
    }
}
