//! The response body the proxy sends: either the upstream's, streamed frame by frame, or a
//! small body graylane wrote itself (errors, 404). An enum rather than a boxed body, so a
//! proxied response costs no allocation for its body type.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::pool::Lease;

pub enum ProxyBody {
    Upstream {
        body: Incoming,
        /// Returned to the pool when the body ends.
        lease: Option<Lease>,
    },
    Local(Full<Bytes>),
}

impl ProxyBody {
    pub fn local(bytes: impl Into<Bytes>) -> ProxyBody {
        ProxyBody::Local(Full::new(bytes.into()))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Upstream { body, lease } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                let finished = match &polled {
                    Poll::Ready(None) => true,
                    Poll::Ready(Some(Ok(_))) => body.is_end_stream(),
                    _ => false,
                };
                if finished && let Some(lease) = lease.take() {
                    lease.release();
                }
                polled
            }
            ProxyBody::Local(full) => Pin::new(full)
                .poll_frame(cx)
                .map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { body, .. } => body.is_end_stream(),
            ProxyBody::Local(full) => full.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { body, .. } => body.size_hint(),
            ProxyBody::Local(full) => full.size_hint(),
        }
    }
}
