//! A per-thread pool of keep-alive HTTP/1.1 connections to upstream endpoints.
//!
//! Each worker thread owns one pool, so checking a connection out or in is a `RefCell` borrow,
//! never a lock. A connection goes back to the pool when its response body has been read to
//! the end ([`Lease`] is carried by the response body); a body dropped half-read closes it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::metrics::UpstreamErrorKind;

type Sender = http1::SendRequest<Incoming>;

struct Idle {
    sender: Sender,
    since: Instant,
}

pub struct UpstreamPool {
    idle: RefCell<HashMap<SocketAddr, Vec<Idle>>>,
    max_idle_per_endpoint: usize,
    idle_timeout: Duration,
}

/// A checked-out connection, returned to its pool when dropped after a complete exchange.
pub struct Lease {
    pool: Rc<UpstreamPool>,
    addr: SocketAddr,
    sender: Option<Sender>,
}

impl Lease {
    /// Gives the connection back for reuse; call only once the response body is complete.
    pub fn release(mut self) {
        if let Some(sender) = self.sender.take() {
            self.pool.check_in(self.addr, sender);
        }
    }
}

/// Why an upstream exchange failed.
#[derive(Debug)]
pub struct UpstreamError {
    pub kind: UpstreamErrorKind,
    pub detail: String,
}

impl UpstreamPool {
    pub fn new(max_idle_per_endpoint: usize, idle_timeout: Duration) -> Rc<UpstreamPool> {
        Rc::new(UpstreamPool {
            idle: RefCell::default(),
            max_idle_per_endpoint,
            idle_timeout,
        })
    }

    fn check_out(&self, addr: SocketAddr) -> Option<Sender> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&addr)?;
        while let Some(conn) = list.pop() {
            if conn.since.elapsed() < self.idle_timeout
                && !conn.sender.is_closed()
                && conn.sender.is_ready()
            {
                return Some(conn.sender);
            }
        }
        None
    }

    fn check_in(&self, addr: SocketAddr, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(addr).or_default();
        if list.len() < self.max_idle_per_endpoint {
            list.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Sends `req` to `addr` on a pooled connection, or a new one. A pooled connection that
    /// turns out to be closed before the request was written is retried once on a new one,
    /// which is safe for any method since nothing reached the upstream.
    pub async fn send(
        self: &Rc<Self>,
        addr: SocketAddr,
        connect_timeout: Duration,
        mut req: Request<Incoming>,
    ) -> Result<(Response<Incoming>, Lease), UpstreamError> {
        loop {
            let (mut sender, reused) = match self.check_out(addr) {
                Some(s) => (s, true),
                None => (connect(addr, connect_timeout).await?, false),
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let lease = Lease {
                        pool: Rc::clone(self),
                        addr,
                        sender: Some(sender),
                    };
                    return Ok((resp, lease));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => req = unsent,
                    _ => {
                        return Err(UpstreamError {
                            kind: UpstreamErrorKind::Protocol,
                            detail: e.into_error().to_string(),
                        });
                    }
                },
            }
        }
    }
}

async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Sender, UpstreamError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => {
            return Err(UpstreamError {
                kind: UpstreamErrorKind::ConnectTimeout,
                detail: format!("connecting to {addr} took longer than {timeout:?}"),
            });
        }
        Ok(Err(e)) => {
            let kind = if e.kind() == std::io::ErrorKind::ConnectionRefused {
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
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| UpstreamError {
            kind: UpstreamErrorKind::ConnectError,
            detail: format!("handshake with {addr}: {e}"),
        })?;
    tokio::task::spawn_local(async move {
        let _ = conn.await;
    });
    Ok(sender)
}
