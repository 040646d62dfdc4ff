//! The response body the proxy sends: either the upstream's, streamed frame by frame straight
//! off its connection (or, for `h2c://` and `https://` upstreams, from hyper's client, trailers
//! included), or a small body graylane wrote itself (errors, 404). An enum rather than a boxed
//! body, so a proxied response costs no allocation for its body type.

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;

use crate::grpc::GrpcBody;
use crate::upstream::UpstreamBody;

pub(crate) enum ProxyBody {
    Upstream(UpstreamBody),
    /// An `h2c://` or `https://` upstream's body, trailers included.
    Remote(hyper::body::Incoming),
    /// A gRPC response's body from such an upstream, counted when its status arrives.
    Grpc(GrpcBody),
    Local(Full<Bytes>),
}

impl ProxyBody {
    pub(crate) fn local(bytes: impl Into<Bytes>) -> ProxyBody {
        ProxyBody::Local(Full::new(bytes.into()))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            ProxyBody::Upstream(body) => Pin::new(body).poll_frame(cx),
            ProxyBody::Remote(body) => Pin::new(body).poll_frame(cx).map_err(std::io::Error::other),
            ProxyBody::Grpc(body) => Pin::new(body).poll_frame(cx),
            ProxyBody::Local(full) => Pin::new(full)
                .poll_frame(cx)
                .map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(body) => body.is_end_stream(),
            ProxyBody::Remote(body) => body.is_end_stream(),
            ProxyBody::Grpc(body) => body.is_end_stream(),
            ProxyBody::Local(full) => full.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(body) => body.size_hint(),
            ProxyBody::Remote(body) => body.size_hint(),
            ProxyBody::Grpc(body) => body.size_hint(),
            ProxyBody::Local(full) => full.size_hint(),
        }
    }
}

/// A client's request body on its way upstream, after [`RequestBody::read_ahead`]: whole when
/// it ended within the read-ahead, else the part read so far followed by the rest, streamed.
pub(crate) enum RequestBody {
    Whole(Option<Bytes>),
    Streaming {
        read: std::collections::VecDeque<Bytes>,
        rest: hyper::body::Incoming,
        /// Shared with the request path, which must tell a client that stopped sending from
        /// an upstream that stopped answering.
        progress: Rc<Cell<ClientBody>>,
    },
}

/// How far a streamed request body has come from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientBody {
    /// More is expected.
    Receiving,
    /// It ended as framed.
    Received,
    /// The client's connection failed before it ended.
    Failed,
}

impl RequestBody {
    /// For a streamed body, how far it has come from the client; `None` for one read whole.
    pub(crate) fn progress(&self) -> Option<Rc<Cell<ClientBody>>> {
        match self {
            RequestBody::Whole(_) => None,
            RequestBody::Streaming { progress, .. } => Some(Rc::clone(progress)),
        }
    }
}

impl RequestBody {
    /// Reads up to about `limit` bytes of `body` before anything is forwarded, so a body that
    /// fits is checked whole (a malformed one fails here, before reaching an upstream) and can
    /// be sent with a `Content-Length`.
    ///
    /// A body of known length that fits is waited for: the client has said it is sending all
    /// of it. A body of unknown length (chunked, or HTTP/2 without `content-length`) may be a
    /// stream the client feeds as it goes — a gRPC stream, an upload in pieces, waiting for
    /// answers in between — so only what has already arrived is read ahead, and the rest is
    /// streamed from there on: holding it back would stall the exchange.
    pub(crate) async fn read_ahead(
        mut body: hyper::body::Incoming,
        limit: usize,
    ) -> Result<RequestBody, hyper::Error> {
        use http_body_util::BodyExt;
        if body.is_end_stream() {
            return Ok(RequestBody::Whole(None));
        }
        let known_length = body.size_hint().exact().is_some();
        let mut read = std::collections::VecDeque::new();
        let mut total = 0;
        // An HTTP/1.1 body is handed over by the connection's own task, which runs only when
        // this one yields: one yield after each frame lets bytes already received come through.
        let mut yielded = false;
        while total <= limit {
            let frame = if known_length {
                body.frame().await
            } else {
                match std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx)))
                    .await
                {
                    Poll::Ready(frame) => frame,
                    Poll::Pending if yielded => break,
                    Poll::Pending => {
                        yielded = true;
                        tokio::task::yield_now().await;
                        continue;
                    }
                }
            };
            let Some(frame) = frame else {
                return Ok(RequestBody::Whole(Some(concat(read))));
            };
            yielded = false;
            if let Ok(data) = frame?.into_data()
                && !data.is_empty()
            {
                // The common case, a body in one frame, needs no queue at all.
                if read.is_empty() && body.is_end_stream() {
                    return Ok(RequestBody::Whole(Some(data)));
                }
                total += data.len();
                read.push_back(data);
            }
        }
        Ok(RequestBody::Streaming {
            read,
            rest: body,
            progress: Rc::new(Cell::new(ClientBody::Receiving)),
        })
    }
}

fn concat(mut chunks: std::collections::VecDeque<Bytes>) -> Bytes {
    if chunks.len() == 1 {
        return chunks.pop_front().unwrap_or_default();
    }
    let mut all = bytes::BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
    for c in chunks {
        all.extend_from_slice(&c);
    }
    all.freeze()
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Whole(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            RequestBody::Streaming {
                read,
                rest,
                progress,
            } => match read.pop_front() {
                Some(d) => Poll::Ready(Some(Ok(Frame::data(d)))),
                None => {
                    let frame = Pin::new(rest).poll_frame(cx);
                    match &frame {
                        Poll::Ready(None) => progress.set(ClientBody::Received),
                        Poll::Ready(Some(Err(_))) => progress.set(ClientBody::Failed),
                        _ => {}
                    }
                    frame
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Whole(data) => data.is_none(),
            RequestBody::Streaming { read, rest, .. } => read.is_empty() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Whole(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            RequestBody::Streaming { read, rest, .. } => {
                let buffered: u64 = read.iter().map(|d| d.len() as u64).sum();
                let hint = rest.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(hint.lower() + buffered);
                if let Some(upper) = hint.upper() {
                    out.set_upper(upper + buffered);
                }
                out
            }
        }
    }
}
