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
//! hop-by-hop fields (and those its `Connection` header names, see `hop_by_hop.rs`) are read
//! while the head is parsed and left out of the response the client gets.
//!
//! The parts, in the order a request meets them:
//!
//! ```text
//! pool.rs     UpstreamPool::send: check a connection out (or connect), write the request,
//!             read the response head; the connection travels on inside the body
//! codec.rs    the request writer (head, then body) and the response head parser with its
//!             framing decision; the parser works on a byte buffer alone
//! body.rs     UpstreamBody: the response body, read off the connection by length, to its
//!             end, or through the chunked decoder; read to its end, it checks the connection
//!             back into the pool
//! chunked.rs  the chunked body decoder, on a byte buffer alone
//! upgrade.rs  UpstreamPool::upgrade: a protocol upgrade (WebSocket) on a new connection;
//!             after a `101`, the raw socket and the bytes read past the head, never pooled
//! error.rs    UpstreamErrorKind: how an exchange failed, for the status (502/504), the
//!             retry and breaker rules, and the metrics
//! client.rs   the other client, for `h2c://` and `https://` endpoints: hyper's HTTP/2 (and,
//!             over TLS, HTTP/1.1) connections per worker thread, chosen once per version by
//!             the `UpstreamTarget` its snapshot prepared ([`exchange`] branches on it)
//! ```

mod body;
pub(crate) mod chunked;
mod client;
pub(crate) mod codec;
mod error;
mod pool;
mod upgrade;

use std::io;
use std::net::SocketAddr;

pub(crate) use body::UpstreamBody;
pub(crate) use client::UpstreamTarget;
pub(crate) use error::UpstreamErrorKind;
pub(crate) use pool::UpstreamPool;
pub(crate) use upgrade::{Handshake, Switched};

use std::rc::Rc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::Either;
use http::{Request, Response};

use crate::body::{ProxyBody, RequestBody};
use crate::forward::Forwarding;

/// One exchange with `addr`: through the in-task HTTP/1.1 client of `pool` for an `http://`
/// version (`target` is `None`), else through the client for its `h2c://` or `https://`
/// endpoints, boxed so the common case's future does not grow by it. Not an `async fn`: the
/// common case's future is the pool's own, not one more level that moves the request in and
/// the response out.
#[inline]
pub(crate) fn exchange<'a>(
    pool: &'a Rc<UpstreamPool>,
    target: Option<&'a UpstreamTarget>,
    addr: SocketAddr,
    connect_timeout: Duration,
    req: Request<RequestBody>,
    forwarding: &'a Forwarding<'_>,
) -> impl Future<Output = Result<Response<ProxyBody>, UpstreamError>> + 'a {
    match target {
        None => Either::Left(
            pool.send(addr, connect_timeout, req, forwarding)
                .map(|sent| sent.map(|resp| resp.map(ProxyBody::Upstream))),
        ),
        Some(target) => Either::Right(Box::pin(client::send(
            target,
            addr,
            connect_timeout,
            req,
            forwarding,
        ))),
    }
}

/// Opens a TCP connection to `addr` by `deadline` (`timeout` after the attempt began, for the
/// message), with Nagle's algorithm off: small request/response exchanges must not wait for
/// it. Its failures are told apart as the metrics count them.
pub(crate) async fn connect_tcp(
    addr: SocketAddr,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> Result<tokio::net::TcpStream, UpstreamError> {
    match tokio::time::timeout_at(deadline, tokio::net::TcpStream::connect(addr)).await {
        Err(_) => Err(connect_timed_out(addr, timeout)),
        Ok(Err(e)) => {
            let kind = if e.kind() == io::ErrorKind::ConnectionRefused {
                UpstreamErrorKind::ConnectRefused
            } else {
                UpstreamErrorKind::ConnectError
            };
            Err(UpstreamError {
                kind,
                detail: format!("connecting to {addr}: {e}"),
            })
        }
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
    }
}

/// A connection (or its TLS or HTTP/2 handshake) not made within `timeout`.
pub(crate) fn connect_timed_out(addr: SocketAddr, timeout: Duration) -> UpstreamError {
    UpstreamError {
        kind: UpstreamErrorKind::ConnectTimeout,
        detail: format!("connecting to {addr} took longer than {timeout:?}"),
    }
}

/// Why an upstream exchange failed.
#[derive(Debug)]
pub(crate) struct UpstreamError {
    /// What kind of failure, as the metrics count it.
    pub(crate) kind: UpstreamErrorKind,
    /// What happened, for the log.
    pub(crate) detail: String,
}

impl UpstreamError {
    /// An attempt that ran out of its per-try timeout.
    pub(crate) fn timeout() -> UpstreamError {
        UpstreamError {
            kind: UpstreamErrorKind::Timeout,
            detail: "no answer within the per-try timeout".to_string(),
        }
    }
}

/// Why one exchange on a connection failed, before it is told apart for the caller.
pub(crate) enum ExchangeError {
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
