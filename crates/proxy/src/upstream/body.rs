//! The response body of an upstream exchange: read straight off the upstream connection by
//! whoever polls it (the downstream connection writing it out), by length, through the chunked
//! decoder (`chunked.rs`), or to the end of the connection, as the head's framing said
//! (`codec.rs`). Read exactly to its end, it checks the connection back into the pool
//! (`pool.rs`); dropped earlier or failed, the connection closes.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::chunked::{Chunk, ChunkState};
use super::codec::ResponseFraming;
use super::pool::{Conn, UpstreamPool};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyState {
    Length { remaining: u64 },
    Chunked(ChunkState),
    UntilClose,
    Done,
}

/// A response body read straight off the upstream connection by whoever polls it. When it is
/// read to its end the connection returns to the pool; dropped earlier, the connection closes.
pub(crate) struct UpstreamBody {
    conn: Option<Conn>,
    state: BodyState,
    reusable: bool,
    pool: Rc<UpstreamPool>,
    addr: SocketAddr,
}

impl UpstreamBody {
    /// The body that follows a response head framed as `framing` on `conn`, a connection to
    /// `addr` that may go back to `pool` afterwards if `keep_alive`.
    #[inline]
    pub(super) fn new(
        conn: Conn,
        framing: ResponseFraming,
        keep_alive: bool,
        pool: Rc<UpstreamPool>,
        addr: SocketAddr,
    ) -> UpstreamBody {
        let mut body = UpstreamBody {
            conn: Some(conn),
            state: match framing {
                ResponseFraming::Empty | ResponseFraming::Length(0) => BodyState::Done,
                ResponseFraming::Length(n) => BodyState::Length { remaining: n },
                ResponseFraming::Chunked => BodyState::Chunked(ChunkState::Size),
                ResponseFraming::UntilClose => BodyState::UntilClose,
            },
            reusable: keep_alive && framing != ResponseFraming::UntilClose,
            pool,
            addr,
        };
        if body.state == BodyState::Done {
            body.finish();
        }
        body
    }

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

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        match self.state {
            BodyState::Done => Poll::Ready(Ok(None)),
            BodyState::UntilClose => {
                let data = ready!(self.poll_data(cx, u64::MAX))?;
                if data.is_none() {
                    self.finish();
                }
                Poll::Ready(Ok(data))
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
                Poll::Ready(Ok(Some(data)))
            }
            BodyState::Chunked(_) => self.poll_chunked(cx),
        }
    }

    /// The next data of a chunked body, decoded from the connection's read buffer, which is
    /// filled from the socket whenever the decoder needs more.
    #[inline]
    fn poll_chunked(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        let (BodyState::Chunked(chunk), Some(conn)) = (&mut self.state, self.conn.as_mut()) else {
            return Poll::Ready(Err(truncated()));
        };
        loop {
            match chunk.decode(&mut conn.read)? {
                Chunk::Data(data) => return Poll::Ready(Ok(Some(data))),
                Chunk::End => break,
                Chunk::NeedMore => {
                    if ready!(conn.poll_fill(cx))? == 0 {
                        return Poll::Ready(Err(truncated()));
                    }
                }
            }
        }
        self.finish();
        Poll::Ready(Ok(None))
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

fn truncated() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "upstream body: the connection closed before the body ended",
    )
}
