//! The upstream side of the request path: a per-thread pool of keep-alive HTTP/1.1
//! connections, and the HTTP/1.1 exchange itself, done in the request's own task.
//!
//! A general-purpose client runs each connection as a task of its own and passes requests,
//! responses and body chunks to it through channels, which costs a task wake-up and a channel
//! hand-off per step. Here the request's task writes the request head (and body) to the socket
//! itself, parses the response head with `httparse`, and the response body is read from the
//! socket by whoever polls it — the downstream connection writing it out. Each worker thread
//! owns its pool, so checking a connection in and out is a `RefCell` borrow, never a lock.
//!
//! Framing follows RFC 9112 §6: a response to HEAD, a 1xx, 204 or 304 has no body; otherwise
//! `Transfer-Encoding: chunked` wins over `Content-Length`; without either, the body runs to the
//! end of the connection. Only a connection whose response was read exactly to its end, with no
//! stray bytes after it and no `Connection: close`, goes back to the pool. The response's
//! hop-by-hop fields (and those its `Connection` header names) are read while the head is
//! parsed and left out of the response the client gets.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, DATE, HeaderName, HeaderValue, SERVER};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::forward::{Forwarding, GRAYLANE_PREFIX};
use crate::metrics::UpstreamErrorKind;

/// Most headers a response head may have (Envoy's default is 100).
const MAX_HEADERS: usize = 100;
/// Largest response head accepted, like a proxy buffer of 64 KiB.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Read buffer growth step; also bounds the size of one body frame.
const READ_CHUNK: usize = 16 * 1024;
/// A request buffer larger than this is not kept with a pooled connection.
const HEAD_BUFFER_KEEP: usize = 16 * 1024;
/// Longest chunk-size line (with extensions) accepted in a chunked body.
const MAX_CHUNK_LINE: usize = 1024;
/// A request body longer than this (or of unknown length) is sent while the upstream's early
/// response is watched for; a shorter one goes out with its head in one write.
const EARLY_RESPONSE_WATCH: u64 = 64 * 1024;

/// Why an upstream exchange failed.
#[derive(Debug)]
pub struct UpstreamError {
    pub kind: UpstreamErrorKind,
    pub detail: String,
}

impl UpstreamError {
    /// An attempt that ran out of its per-try timeout.
    pub fn timeout() -> UpstreamError {
        UpstreamError {
            kind: UpstreamErrorKind::Timeout,
            detail: "no answer within the per-try timeout".to_string(),
        }
    }
}

/// One keep-alive connection to an endpoint.
struct Conn {
    stream: TcpStream,
    /// Bytes read from the upstream and not consumed yet.
    read: BytesMut,
    /// The request head being written; kept to reuse its allocation.
    head: Vec<u8>,
    /// Where each response header's name and value sit in the head; kept to reuse its
    /// allocation.
    spans: Vec<HeaderSpan>,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

pub struct UpstreamPool {
    idle: RefCell<foldhash::HashMap<SocketAddr, Vec<Idle>>>,
    max_idle_per_endpoint: usize,
    idle_timeout: Duration,
}

impl UpstreamPool {
    pub fn new(max_idle_per_endpoint: usize, idle_timeout: Duration) -> Rc<UpstreamPool> {
        Rc::new(UpstreamPool {
            idle: RefCell::default(),
            max_idle_per_endpoint,
            idle_timeout,
        })
    }

    /// The most recently used live connection to `addr`, if any.
    fn check_out(&self, addr: SocketAddr) -> Option<Conn> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&addr)?;
        while let Some(entry) = list.pop() {
            if entry.since.elapsed() < self.idle_timeout && entry.conn.is_idle_and_open() {
                return Some(entry.conn);
            }
        }
        None
    }

    fn check_in(&self, addr: SocketAddr, conn: Conn) {
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(addr).or_default();
        if list.len() < self.max_idle_per_endpoint {
            list.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// Sends `req` to `addr` and returns the response with its body still on the wire.
    ///
    /// A pooled connection the upstream closed while it sat idle fails before any response
    /// byte arrives; such a request is sent again on a new connection when that is safe: an
    /// idempotent method and no body (a streamed body cannot be replayed).
    pub async fn send<B>(
        self: &Rc<Self>,
        addr: SocketAddr,
        connect_timeout: Duration,
        req: Request<B>,
        forwarding: &Forwarding<'_>,
    ) -> Result<Response<UpstreamBody>, UpstreamError>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let (parts, mut body) = req.into_parts();
        let has_body = !body.is_end_stream();
        let exact_length = body.size_hint().exact();
        let replayable = !has_body && parts.method.is_idempotent();
        // A body that may take a while to send (large, or of unknown length) is sent while
        // the upstream is listened to: it may answer early (`413`, `401`) and stop reading.
        let watch = has_body && exact_length.is_none_or(|n| n > EARLY_RESPONSE_WATCH);
        loop {
            let (mut conn, reused) = match self.check_out(addr) {
                Some(conn) => (conn, true),
                None => (Conn::connect(addr, connect_timeout).await?, false),
            };
            let framing = encode_head(&parts, forwarding, has_body, exact_length, &mut conn.head);
            let head = if watch {
                conn.exchange_watching(framing, &mut body, &parts.method)
                    .await
            } else {
                match conn.write_request(framing, &mut body).await {
                    Ok(()) => conn.read_head(&parts.method).await,
                    Err(e) => Err(ExchangeError::Io {
                        error: e,
                        received_nothing: true,
                    }),
                }
            };
            match head {
                Ok(head) => return Ok(self.response(addr, conn, head)),
                Err(ExchangeError::Io {
                    received_nothing: true,
                    ..
                }) if reused && replayable => continue,
                Err(e) => return Err(e.into_upstream_error(addr)),
            }
        }
    }

    fn response(
        self: &Rc<Self>,
        addr: SocketAddr,
        conn: Conn,
        head: Head,
    ) -> Response<UpstreamBody> {
        let mut body = UpstreamBody {
            conn: Some(conn),
            state: match head.framing {
                ResponseFraming::Empty | ResponseFraming::Length(0) => BodyState::Done,
                ResponseFraming::Length(n) => BodyState::Length { remaining: n },
                ResponseFraming::Chunked => BodyState::Chunked(ChunkState::Size),
                ResponseFraming::UntilClose => BodyState::UntilClose,
            },
            reusable: head.keep_alive && head.framing != ResponseFraming::UntilClose,
            pool: Rc::clone(self),
            addr,
        };
        if body.state == BodyState::Done {
            body.finish();
        }
        Response::from_parts(head.parts, body)
    }
}

impl Conn {
    async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Conn, UpstreamError> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Err(_) => {
                return Err(UpstreamError {
                    kind: UpstreamErrorKind::ConnectTimeout,
                    detail: format!("connecting to {addr} took longer than {timeout:?}"),
                });
            }
            Ok(Err(e)) => {
                let kind = if e.kind() == io::ErrorKind::ConnectionRefused {
                    UpstreamErrorKind::ConnectRefused
                } else {
                    UpstreamErrorKind::ConnectError
                };
                return Err(UpstreamError {
                    kind,
                    detail: format!("connecting to {addr}: {e}"),
                });
            }
            Ok(Ok(s)) => s,
        };
        // Small request/response exchanges must not wait for Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream,
            read: BytesMut::with_capacity(READ_CHUNK),
            head: Vec::with_capacity(512),
            spans: Vec::with_capacity(16),
        })
    }

    /// An idle connection is healthy when it has nothing to read: no stray bytes, no EOF.
    /// Tokio answers `WouldBlock` from its readiness state without a system call.
    fn is_idle_and_open(&self) -> bool {
        let mut probe = [0u8; 1];
        self.read.is_empty()
            && matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Writes the head and the body.
    async fn write_request<B>(&mut self, framing: RequestFraming, body: &mut B) -> io::Result<()>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        write_request(&mut self.stream, &mut self.head, framing, body).await
    }

    /// Reads until a final (non-1xx) response head is complete.
    async fn read_head(&mut self, method: &Method) -> Result<Head, ExchangeError> {
        read_head(&mut self.stream, &mut self.read, &mut self.spans, method).await
    }

    /// Sends the request while reading the response: an upstream that answers before the body
    /// is all sent (and may stop reading it) is heard at once, instead of the send waiting on a
    /// full socket until the request times out. The connection is not reused after an early
    /// answer: the rest of the body was never sent.
    async fn exchange_watching<B>(
        &mut self,
        framing: RequestFraming,
        body: &mut B,
        method: &Method,
    ) -> Result<Head, ExchangeError>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let (mut reader, mut writer) = self.stream.split();
        let write = write_request(&mut writer, &mut self.head, framing, body);
        let answer = read_head(&mut reader, &mut self.read, &mut self.spans, method);
        tokio::pin!(write, answer);
        let written = tokio::select! {
            biased;
            head = &mut answer => {
                return head.map(|mut head| {
                    head.keep_alive = false;
                    head
                });
            }
            written = &mut write => written,
        };
        match written {
            Ok(()) => answer.await,
            // The upstream may have answered and closed while the body was still going out:
            // its answer, if it is there, is the one to pass on.
            Err(error) => answer.await.map_err(|_| ExchangeError::Io {
                error,
                received_nothing: true,
            }),
        }
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read.capacity() - self.read.len() < READ_CHUNK / 4 {
            self.read.reserve(READ_CHUNK);
        }
        loop {
            ready!(self.stream.poll_read_ready(cx))?;
            match self.stream.try_read_buf(&mut self.read) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return Poll::Ready(other),
            }
        }
    }
}

/// Writes the head and the body. Each body frame is appended to the head buffer and the
/// buffer is written once the body ends or has nothing more ready, so a whole body (the usual
/// API request) goes out with its head in a single system call, while a body that trickles in
/// is still forwarded frame by frame.
async fn write_request<W, B>(
    out: &mut W,
    head: &mut Vec<u8>,
    framing: RequestFraming,
    body: &mut B,
) -> io::Result<()>
where
    W: tokio::io::AsyncWrite + Unpin,
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    use std::io::Write as _;
    let chunked = framing == RequestFraming::Chunked;
    if framing != RequestFraming::Empty {
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| io::Error::other(format!("reading the client's body: {e}")))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            if chunked {
                write!(head, "{:x}\r\n", data.len())?;
            }
            head.extend_from_slice(&data);
            if chunked {
                head.extend_from_slice(b"\r\n");
            }
            if !body.is_end_stream() {
                out.write_all(head).await?;
                head.clear();
            }
        }
        if chunked {
            head.extend_from_slice(b"0\r\n\r\n");
        }
    }
    out.write_all(head).await?;
    // A large body must not keep its buffer alive for as long as the connection is pooled.
    if head.capacity() > HEAD_BUFFER_KEEP {
        *head = Vec::with_capacity(512);
    }
    Ok(())
}

/// Reads until a final (non-1xx) response head is complete.
async fn read_head<R>(
    input: &mut R,
    read: &mut BytesMut,
    spans: &mut Vec<HeaderSpan>,
    method: &Method,
) -> Result<Head, ExchangeError>
where
    R: tokio::io::AsyncRead + Unpin,
{
    let mut received = false;
    loop {
        if !read.is_empty() {
            match parse_head(read, method, spans)? {
                Parsed::Final(head) => return Ok(head),
                Parsed::Informational => continue,
                Parsed::Partial => {}
            }
        }
        if read.len() >= MAX_HEAD_BYTES {
            return Err(ExchangeError::Protocol(format!(
                "response head larger than {MAX_HEAD_BYTES} bytes"
            )));
        }
        read.reserve(READ_CHUNK);
        let n = input
            .read_buf(read)
            .await
            .map_err(|error| ExchangeError::Io {
                error,
                received_nothing: !received,
            })?;
        if n == 0 {
            return Err(ExchangeError::Io {
                error: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the upstream closed the connection before a complete response head",
                ),
                received_nothing: !received,
            });
        }
        received = true;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestFraming {
    Empty,
    Length,
    Chunked,
}

/// Writes the request line and headers. The URI is sent in origin form whatever form the
/// client used (HTTP/2 clients send an absolute URI), with the normalised path when there is
/// one. The framing is the gateway's own, from the body it is about to send: a known length
/// goes as `Content-Length`, an unknown one chunked; none of the client's framing headers is
/// copied (see `forward.rs`).
fn encode_head(
    parts: &http::request::Parts,
    forwarding: &Forwarding<'_>,
    has_body: bool,
    exact_length: Option<u64>,
    out: &mut Vec<u8>,
) -> RequestFraming {
    out.clear();
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    match forwarding.path {
        Some(path) => {
            out.extend_from_slice(path.as_bytes());
            if let Some(query) = parts.uri.query() {
                out.push(b'?');
                out.extend_from_slice(query.as_bytes());
            }
        }
        None => {
            let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
            out.extend_from_slice(target.as_bytes());
        }
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    forwarding.write_headers(&parts.uri, &parts.headers, out);
    let framing = if !has_body {
        // An empty body the client framed with a length keeps `Content-Length: 0`, which some
        // upstreams require on a POST.
        if parts.headers.contains_key(CONTENT_LENGTH) {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        RequestFraming::Empty
    } else if let Some(n) = exact_length {
        out.extend_from_slice(b"content-length: ");
        push_decimal(out, n);
        out.extend_from_slice(b"\r\n");
        RequestFraming::Length
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        RequestFraming::Chunked
    };
    out.extend_from_slice(b"\r\n");
    framing
}

/// `n` in decimal, without the formatting machinery (every request with a body writes one).
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResponseFraming {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

struct Head {
    parts: http::response::Parts,
    framing: ResponseFraming,
    keep_alive: bool,
}

enum Parsed {
    Final(Head),
    /// A 1xx head was consumed; a final one follows.
    Informational,
    Partial,
}

/// Byte ranges of one header's name and value within a response head.
#[derive(Clone, Copy)]
struct HeaderSpan {
    name: (usize, usize),
    value: (usize, usize),
}

/// Parses one response head off the front of `buf`, consuming it when complete. Header values
/// share the head's buffer rather than being copied. The header slots are left uninitialised
/// and the spans live in a reused vector: zeroing a hundred slots per response would cost more
/// than parsing a typical head.
fn parse_head(
    buf: &mut BytesMut,
    method: &Method,
    spans: &mut Vec<HeaderSpan>,
) -> Result<Parsed, ExchangeError> {
    let mut slots =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots);
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(e) => {
            return Err(ExchangeError::Protocol(format!(
                "invalid response head: {e}"
            )));
        }
    };
    let code = resp.code.unwrap_or(0);
    let status = StatusCode::from_u16(code)
        .map_err(|_| ExchangeError::Protocol(format!("invalid status code {code}")))?;
    if status.is_informational() {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(ExchangeError::Protocol(
                "protocol upgrades are not supported".into(),
            ));
        }
        buf.advance(len);
        return Ok(Parsed::Informational);
    }
    let http10 = resp.version == Some(0);
    let base = buf.as_ptr() as usize;
    spans.clear();
    spans.extend(resp.headers.iter().map(|h| {
        let name = h.name.as_ptr() as usize - base;
        let value = h.value.as_ptr() as usize - base;
        HeaderSpan {
            name: (name, name + h.name.len()),
            value: (value, value + h.value.len()),
        }
    }));
    let head = buf.split_to(len).freeze();
    // One slot more than the upstream sent: the proxy stamps its version header on the way out.
    let mut headers = HeaderMap::with_capacity(spans.len() + 1);
    let mut keep_alive = !http10;
    let mut framing = Framing::default();
    // Names the upstream's `Connection` header lists besides `close` and `keep-alive`: rare, so
    // only then is anything kept aside.
    let mut listed: Vec<Bytes> = Vec::new();
    for span in spans.iter() {
        let raw_name = &head[span.name.0..span.name.1];
        let raw_value = &head[span.value.0..span.value.1];
        // The hop-by-hop fields (RFC 9110 §7.6.1) describe this connection, not the response:
        // they are read here and never reach the client.
        let name = match Field::of(raw_name) {
            Field::Connection => {
                for token in raw_value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        keep_alive = false;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive |= http10;
                    } else if !token.is_empty() {
                        listed.push(head.slice_ref(token));
                    }
                }
                continue;
            }
            Field::TransferEncoding => {
                framing.last_transfer_coding = raw_value.rsplit(|&b| b == b',').next();
                continue;
            }
            Field::OtherHopByHop => continue,
            Field::ContentLength => {
                framing.add_length(raw_value);
                CONTENT_LENGTH
            }
            Field::Known(name) => name,
            // graylane stamps its own (`X-Graylane-Version`, `-Fallback`); an upstream's would
            // tell the client something graylane did not decide.
            Field::Other
                if raw_name
                    .get(..GRAYLANE_PREFIX.len())
                    .is_some_and(|p| p.eq_ignore_ascii_case(GRAYLANE_PREFIX.as_bytes())) =>
            {
                continue;
            }
            Field::Other => HeaderName::from_bytes(raw_name).map_err(|_| {
                ExchangeError::Protocol("invalid header name in the response".into())
            })?,
        };
        let value = HeaderValue::from_maybe_shared(head.slice(span.value.0..span.value.1))
            .map_err(|_| {
                ExchangeError::Protocol(format!("invalid value of response header {name}"))
            })?;
        headers.append(name, value);
    }
    for name in &listed {
        if let Ok(name) = HeaderName::from_bytes(name) {
            headers.remove(name);
        }
    }
    let framing = framing.decide(method, status)?;
    if framing == ResponseFraming::Chunked && headers.contains_key(CONTENT_LENGTH) {
        // Both framings at once is a smuggling vector: trust the chunking, drop the length,
        // and do not reuse the connection (RFC 9112 §6.3).
        headers.remove(CONTENT_LENGTH);
        keep_alive = false;
    }
    let mut parts = Response::new(()).into_parts().0;
    parts.status = status;
    parts.version = Version::HTTP_11;
    parts.headers = headers;
    Ok(Parsed::Final(Head {
        parts,
        framing,
        keep_alive,
    }))
}

/// What a response header name means to the exchange, told from its raw bytes without building
/// a `HeaderName` for the fields that are read here or dropped.
enum Field {
    Connection,
    TransferEncoding,
    ContentLength,
    /// Another hop-by-hop field: dropped.
    OtherHopByHop,
    /// A name nearly every response carries, without the general lookup.
    Known(HeaderName),
    Other,
}

impl Field {
    fn of(name: &[u8]) -> Field {
        let is = |known: &[u8]| name.eq_ignore_ascii_case(known);
        match name.len() {
            2 if is(b"te") => Field::OtherHopByHop,
            4 if is(b"date") => Field::Known(DATE),
            6 if is(b"server") => Field::Known(SERVER),
            7 if is(b"trailer") || is(b"upgrade") => Field::OtherHopByHop,
            10 if is(b"connection") => Field::Connection,
            10 if is(b"keep-alive") => Field::OtherHopByHop,
            12 if is(b"content-type") => Field::Known(CONTENT_TYPE),
            14 if is(b"content-length") => Field::ContentLength,
            16 if is(b"proxy-connection") => Field::OtherHopByHop,
            17 if is(b"transfer-encoding") => Field::TransferEncoding,
            19 if is(b"proxy-authorization") => Field::OtherHopByHop,
            _ => Field::Other,
        }
    }
}

/// The framing fields of a response head, gathered while its headers are read. A bad
/// `Content-Length` matters only when it frames the body: not under `Transfer-Encoding`, not
/// for a response that has no body.
#[derive(Default)]
struct Framing<'a> {
    /// The last transfer coding of the last `Transfer-Encoding` field.
    last_transfer_coding: Option<&'a [u8]>,
    length: Option<u64>,
    bad_length: Option<&'static str>,
}

impl Framing<'_> {
    /// A `Content-Length` field: a number, or a list of the same number (RFC 9112 §6.3).
    fn add_length(&mut self, value: &[u8]) {
        for part in value.split(|&b| b == b',') {
            let n = std::str::from_utf8(part.trim_ascii())
                .ok()
                .and_then(|t| t.parse::<u64>().ok());
            match n {
                None => self.bad_length = Some("invalid Content-Length in the response"),
                Some(n) if self.length.is_some_and(|l| l != n) => {
                    self.bad_length = Some("conflicting Content-Length values in the response");
                }
                Some(n) => self.length = Some(n),
            }
        }
    }

    fn decide(
        &self,
        method: &Method,
        status: StatusCode,
    ) -> Result<ResponseFraming, ExchangeError> {
        if method == Method::HEAD
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Ok(ResponseFraming::Empty);
        }
        if let Some(last) = self.last_transfer_coding {
            return Ok(if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                ResponseFraming::Chunked
            } else {
                ResponseFraming::UntilClose
            });
        }
        if let Some(why) = self.bad_length {
            return Err(ExchangeError::Protocol(why.into()));
        }
        Ok(self
            .length
            .map_or(ResponseFraming::UntilClose, ResponseFraming::Length))
    }
}

enum ExchangeError {
    Io {
        error: io::Error,
        /// No response byte arrived: on a reused connection this is a stale keep-alive.
        received_nothing: bool,
    },
    Protocol(String),
}

impl ExchangeError {
    fn into_upstream_error(self, addr: SocketAddr) -> UpstreamError {
        let detail = match self {
            ExchangeError::Io { error, .. } => format!("exchange with {addr}: {error}"),
            ExchangeError::Protocol(why) => format!("exchange with {addr}: {why}"),
        };
        UpstreamError {
            kind: UpstreamErrorKind::Protocol,
            detail,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyState {
    Length { remaining: u64 },
    Chunked(ChunkState),
    UntilClose,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Expecting a chunk-size line.
    Size,
    Data {
        remaining: u64,
    },
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
}

/// A response body read straight off the upstream connection by whoever polls it. When it is
/// read to its end the connection returns to the pool; dropped earlier, the connection closes.
pub struct UpstreamBody {
    conn: Option<Conn>,
    state: BodyState,
    reusable: bool,
    pool: Rc<UpstreamPool>,
    addr: SocketAddr,
}

impl UpstreamBody {
    fn finish(&mut self) {
        self.state = BodyState::Done;
        if let Some(conn) = self.conn.take()
            && self.reusable
            && conn.read.is_empty()
        {
            self.pool.check_in(self.addr, conn);
        }
    }

    /// Takes up to `limit` buffered bytes as a data frame, reading more first if none are
    /// buffered. `Ok(None)` means the connection reached its end.
    fn poll_data(&mut self, cx: &mut Context<'_>, limit: u64) -> Poll<io::Result<Option<Bytes>>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Ok(None));
        };
        if conn.read.is_empty() && ready!(conn.poll_fill(cx))? == 0 {
            return Poll::Ready(Ok(None));
        }
        let n = conn
            .read
            .len()
            .min(usize::try_from(limit).unwrap_or(usize::MAX));
        Poll::Ready(Ok(Some(conn.read.split_to(n).freeze())))
    }

    /// The next CRLF-terminated line of a chunked body, without its CRLF, consumed from the
    /// buffer; `Ok(None)` when the connection ended first.
    fn poll_line(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Ok(None));
        };
        loop {
            if let Some(pos) = conn.read.windows(2).position(|w| w == b"\r\n") {
                let line = conn.read.split_to(pos).freeze();
                conn.read.advance(2);
                return Poll::Ready(Ok(Some(line)));
            }
            if conn.read.len() > MAX_CHUNK_LINE {
                return Poll::Ready(Err(invalid("chunk-size line too long")));
            }
            if ready!(conn.poll_fill(cx))? == 0 {
                return Poll::Ready(Ok(None));
            }
        }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        loop {
            match self.state {
                BodyState::Done => return Poll::Ready(Ok(None)),
                BodyState::UntilClose => {
                    let data = ready!(self.poll_data(cx, u64::MAX))?;
                    if data.is_none() {
                        self.finish();
                    }
                    return Poll::Ready(Ok(data));
                }
                BodyState::Length { remaining } => {
                    let Some(data) = ready!(self.poll_data(cx, remaining))? else {
                        return Poll::Ready(Err(truncated()));
                    };
                    let left = remaining - data.len() as u64;
                    self.state = BodyState::Length { remaining: left };
                    if left == 0 {
                        self.finish();
                    }
                    return Poll::Ready(Ok(Some(data)));
                }
                BodyState::Chunked(ChunkState::Size) => {
                    let line = ready!(self.poll_line(cx))?.ok_or_else(truncated)?;
                    let size = parse_chunk_size(&line)?;
                    self.state = BodyState::Chunked(if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data { remaining: size }
                    });
                }
                BodyState::Chunked(ChunkState::Data { remaining }) => {
                    let data = ready!(self.poll_data(cx, remaining))?.ok_or_else(truncated)?;
                    let left = remaining - data.len() as u64;
                    self.state = BodyState::Chunked(if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data { remaining: left }
                    });
                    return Poll::Ready(Ok(Some(data)));
                }
                BodyState::Chunked(ChunkState::DataEnd) => {
                    let line = ready!(self.poll_line(cx))?.ok_or_else(truncated)?;
                    if !line.is_empty() {
                        return Poll::Ready(Err(invalid("chunk data longer than its size")));
                    }
                    self.state = BodyState::Chunked(ChunkState::Size);
                }
                BodyState::Chunked(ChunkState::Trailers) => {
                    // Trailers are dropped: few clients use them and HTTP/1.1 ones rarely
                    // expect them from a proxy.
                    let line = ready!(self.poll_line(cx))?.ok_or_else(truncated)?;
                    if line.is_empty() {
                        self.finish();
                        return Poll::Ready(Ok(None));
                    }
                }
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        match ready!(this.poll_next(cx)) {
            Ok(Some(data)) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => {
                // The connection is in an unknown state: never reuse it.
                this.conn = None;
                this.state = BodyState::Done;
                Poll::Ready(Some(Err(e)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == BodyState::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            BodyState::Length { remaining } => SizeHint::with_exact(remaining),
            BodyState::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

fn parse_chunk_size(line: &[u8]) -> io::Result<u64> {
    let digits = line.split(|b| *b == b';').next().unwrap_or_default();
    let digits = digits.trim_ascii();
    if digits.is_empty() || digits.len() > 15 {
        return Err(invalid("invalid chunk size"));
    }
    digits.iter().try_fold(0u64, |acc, b| {
        let d = (*b as char)
            .to_digit(16)
            .ok_or_else(|| invalid("invalid chunk size"))?;
        Ok(acc * 16 + u64::from(d))
    })
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("upstream body: {why}"))
}

fn truncated() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "upstream body: the connection closed before the body ended",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &[u8], method: &Method) -> (Head, BytesMut) {
        let mut buf = BytesMut::from(text);
        loop {
            match parse_head(&mut buf, method, &mut Vec::new()) {
                Ok(Parsed::Final(head)) => return (head, buf),
                Ok(Parsed::Informational) => continue,
                Ok(Parsed::Partial) => panic!("partial"),
                Err(_) => panic!("error"),
            }
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let (h, rest) = parse(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            &Method::GET,
        );
        assert_eq!(h.framing, ResponseFraming::Length(5));
        assert!(h.keep_alive);
        assert_eq!(&rest[..], b"hello");

        let (h, _) = parse(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
            &Method::HEAD,
        );
        assert_eq!(h.framing, ResponseFraming::Empty);

        let (h, _) = parse(b"HTTP/1.1 204 No Content\r\n\r\n", &Method::GET);
        assert_eq!(h.framing, ResponseFraming::Empty);

        let (h, _) = parse(
            b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n",
            &Method::GET,
        );
        assert_eq!(h.framing, ResponseFraming::UntilClose);
        assert!(!h.keep_alive);

        let (h, _) = parse(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
            &Method::POST,
        );
        assert_eq!(h.framing, ResponseFraming::Chunked);
        assert!(!h.keep_alive, "TE and CL together must not be reused");
        assert!(!h.parts.headers.contains_key(CONTENT_LENGTH));

        let (h, _) = parse(
            b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n",
            &Method::GET,
        );
        assert!(!h.keep_alive);
    }

    #[test]
    fn hop_by_hop_fields_are_read_and_not_passed_on() {
        let (h, _) = parse(
            b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Sun, 22 Nov 2026 08:00:00 GMT\r\n\
              Content-Type: text/plain\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\
              Keep-Alive: timeout=5\r\nX-End: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
            &Method::GET,
        );
        assert_eq!(h.framing, ResponseFraming::Chunked);
        assert!(h.keep_alive);
        let names: Vec<&str> = h.parts.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["server", "date", "content-type", "x-end"]);
        assert_eq!(h.parts.headers["content-type"], "text/plain");

        let (h, _) = parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\nConnection: Close\r\n\r\n",
            &Method::GET,
        );
        assert_eq!(h.framing, ResponseFraming::Length(3));
        assert!(!h.keep_alive);
        assert_eq!(h.parts.headers["content-length"], "3, 3");
    }

    #[test]
    fn conflicting_lengths_are_rejected() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n"[..],
        );
        assert!(matches!(
            parse_head(&mut buf, &Method::GET, &mut Vec::new()),
            Err(ExchangeError::Protocol(_))
        ));
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n"[..]);
        assert!(matches!(
            parse_head(&mut buf, &Method::GET, &mut Vec::new()),
            Err(ExchangeError::Protocol(_))
        ));
        // Where the length frames nothing, a bad one is no error (RFC 9112 §6.3).
        let (h, _) = parse(
            b"HTTP/1.1 200 OK\r\ncontent-length: x\r\ntransfer-encoding: chunked\r\n\r\n",
            &Method::GET,
        );
        assert_eq!(h.framing, ResponseFraming::Chunked);
        assert!(!h.parts.headers.contains_key("content-length"));
        let (h, _) = parse(
            b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
            &Method::HEAD,
        );
        assert_eq!(h.framing, ResponseFraming::Empty);
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(parse_chunk_size(b"1a").unwrap(), 26);
        assert_eq!(parse_chunk_size(b"0;ext=1").unwrap(), 0);
        assert!(parse_chunk_size(b"").is_err());
        assert!(parse_chunk_size(b"zz").is_err());
        assert!(parse_chunk_size(b"ffffffffffffffffff").is_err());
    }

    #[test]
    fn request_head_is_origin_form_and_frames_the_body() {
        let req = Request::post("http://example.test/a/b?c=d")
            .header("x-a", "1")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let mut out = Vec::new();
        let forwarding = Forwarding {
            lane: &HeaderValue::from_static("stable"),
            forwarded_for: &HeaderValue::from_static("127.0.0.1"),
            tls: false,
            path: None,
            underscores: graylane_config::UnderscoreHeaders::Drop,
            trusted: false,
        };
        assert_eq!(
            encode_head(&parts, &forwarding, true, None, &mut out),
            RequestFraming::Chunked
        );
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("POST /a/b?c=d HTTP/1.1\r\nx-a: 1\r\n"),
            "{text}"
        );
        assert!(
            text.ends_with("transfer-encoding: chunked\r\n\r\n"),
            "{text}"
        );
        for n in [1, 9, 10, 1234, 18_446_744_073_709_551_615] {
            let mut out = Vec::new();
            encode_head(&parts, &forwarding, true, Some(n), &mut out);
            let text = String::from_utf8(out).unwrap();
            assert!(
                text.ends_with(&format!("content-length: {n}\r\n\r\n")),
                "{text}"
            );
        }
    }
}
