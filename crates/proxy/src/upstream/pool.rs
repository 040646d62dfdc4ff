//! The per-thread pool of keep-alive connections to upstream endpoints, and one exchange on a
//! connection: [`UpstreamPool::send`] checks a connection out (or connects), writes the request
//! (`codec.rs`), reads until a final response head has been parsed, and hands the connection
//! on inside the response's [`UpstreamBody`] (`body.rs`), which checks it back in once the body
//! is read to its end.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response};
use http_body::Body;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::body::UpstreamBody;
use super::codec::{self, Head, HeaderSpan, Parsed, RequestFraming};
use super::{ExchangeError, UpstreamError};
use crate::forward::Forwarding;

/// A request body longer than this (or of unknown length) is sent while the upstream's early
/// response is watched for; a shorter one goes out with its head in one write.
const EARLY_RESPONSE_WATCH: u64 = 64 * 1024;
/// Read buffer growth step; also bounds the size of one body frame.
const READ_CHUNK: usize = 16 * 1024;
/// Largest response head accepted, like a proxy buffer of 64 KiB.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// One keep-alive connection to an endpoint.
pub(super) struct Conn {
    stream: TcpStream,
    /// Bytes read from the upstream and not consumed yet.
    pub(super) read: BytesMut,
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

/// A worker thread's idle keep-alive connections, by endpoint.
pub(crate) struct UpstreamPool {
    idle: RefCell<foldhash::HashMap<SocketAddr, Vec<Idle>>>,
    max_idle_per_endpoint: usize,
    idle_timeout: Duration,
}

impl UpstreamPool {
    /// An empty pool keeping up to `max_idle_per_endpoint` idle connections to each endpoint,
    /// each for up to `idle_timeout`.
    pub(crate) fn new(max_idle_per_endpoint: usize, idle_timeout: Duration) -> Rc<UpstreamPool> {
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

    /// Keeps `conn` for a later request to `addr`, unless `addr` has enough idle ones.
    pub(super) fn check_in(&self, addr: SocketAddr, conn: Conn) {
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
    pub(crate) async fn send<B>(
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
            let framing =
                codec::encode_head(&parts, forwarding, has_body, exact_length, &mut conn.head);
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
        let body = UpstreamBody::new(conn, head.framing, head.keep_alive, Rc::clone(self), addr);
        Response::from_parts(head.parts, body)
    }
}

impl Conn {
    pub(super) async fn connect(
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<Conn, UpstreamError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let stream = super::connect_tcp(addr, deadline, timeout).await?;
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
    pub(super) async fn write_request<B>(
        &mut self,
        framing: RequestFraming,
        body: &mut B,
    ) -> io::Result<()>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        codec::write_request(&mut self.stream, &mut self.head, framing, body).await
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
        let write = codec::write_request(&mut writer, &mut self.head, framing, body);
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

    /// The request head buffer, for `upgrade.rs` to write its head into.
    pub(super) fn head_mut(&mut self) -> &mut Vec<u8> {
        &mut self.head
    }

    /// Reads what the socket has into the read buffer (growing it by [`READ_CHUNK`]) for
    /// `upgrade.rs`, which parses a `101` head itself; `Ok(0)` at the end of the connection.
    pub(super) async fn read_more(&mut self) -> io::Result<usize> {
        if self.read.len() >= MAX_HEAD_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("response head larger than {MAX_HEAD_BYTES} bytes"),
            ));
        }
        self.read.reserve(READ_CHUNK);
        self.stream.read_buf(&mut self.read).await
    }

    /// The connection taken out of the exchange after a `101`: its socket, and the bytes the
    /// upstream already sent past the head (the new protocol's first ones). It never goes back
    /// to a pool.
    pub(super) fn into_switched(self) -> (TcpStream, BytesMut) {
        (self.stream, self.read)
    }

    /// Reads what the socket has into the read buffer; `Ok(0)` at the end of the connection.
    pub(super) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
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
            match codec::parse_head(read, method, spans)? {
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
