//! The two `tower` layers: [`LaneLayer`] for a service's server (reads the inbound lane) and
//! [`PropagateLaneLayer`] for its outbound HTTP client (sends it on), so a call chain that
//! enters through graylane on one version stays on it at every hop.

use std::task::{Context, Poll};

use tokio::task::futures::TaskLocalFuture;
use tower_layer::Layer;
use tower_service::Service;

use crate::lane::Lane;

/// Reads each inbound request's `x-graylane-lane` and `x-graylane-version` into a [`Lane`]:
/// into the request's extensions, and as [`Lane::current`] while the inner service handles it.
#[derive(Debug, Clone, Copy, Default)]
pub struct LaneLayer;

impl LaneLayer {
    /// The layer.
    pub fn new() -> LaneLayer {
        LaneLayer
    }
}

impl<S> Layer<S> for LaneLayer {
    type Service = LaneService<S>;

    fn layer(&self, inner: S) -> LaneService<S> {
        LaneService { inner }
    }
}

/// The service [`LaneLayer`] makes.
#[derive(Debug, Clone)]
pub struct LaneService<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for LaneService<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = TaskLocalFuture<Lane, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let lane = Lane::from_headers(req.headers());
        req.extensions_mut().insert(lane.clone());
        // The inner `call` may do work before its future runs (a router picking a handler):
        // it sees the lane too.
        let future = lane.clone().sync_scope(|| self.inner.call(req));
        lane.scope(future)
    }
}

/// Sets `x-graylane-lane` on each outbound request that has none: the lane in the request's
/// extensions, else [`Lane::current`] (the inbound request being handled) as it is when the
/// request is handed to the client, so inside the handler.
#[derive(Debug, Clone, Copy, Default)]
pub struct PropagateLaneLayer;

impl PropagateLaneLayer {
    /// The layer.
    pub fn new() -> PropagateLaneLayer {
        PropagateLaneLayer
    }
}

impl<S> Layer<S> for PropagateLaneLayer {
    type Service = PropagateLane<S>;

    fn layer(&self, inner: S) -> PropagateLane<S> {
        PropagateLane { inner }
    }
}

/// The service [`PropagateLaneLayer`] makes.
#[derive(Debug, Clone)]
pub struct PropagateLane<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for PropagateLane<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> S::Future {
        let lane = req
            .extensions()
            .get::<Lane>()
            .cloned()
            .or_else(Lane::current);
        if let Some(lane) = lane {
            lane.apply(req.headers_mut());
        }
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::future::{Ready, ready};

    use http::{HeaderMap, Request};

    use super::*;

    /// Answers with the lane it saw in the request's extensions and as the current one.
    #[derive(Clone)]
    struct Handler;

    impl Service<Request<()>> for Handler {
        type Response = (Option<Lane>, Option<Lane>);
        type Error = Infallible;
        type Future = Ready<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Request<()>) -> Self::Future {
            ready(Ok((
                req.extensions().get::<Lane>().cloned(),
                Lane::current(),
            )))
        }
    }

    /// Answers with the headers an outbound request left with.
    #[derive(Clone)]
    struct Wire;

    impl Service<Request<()>> for Wire {
        type Response = HeaderMap;
        type Error = Infallible;
        type Future = Ready<Result<HeaderMap, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Request<()>) -> Self::Future {
            ready(Ok(req.headers().clone()))
        }
    }

    fn inbound(lane: &str) -> Request<()> {
        Request::builder()
            .header("x-graylane-lane", lane)
            .body(())
            .unwrap()
    }

    #[tokio::test]
    async fn the_handler_sees_the_inbound_lane_in_its_extensions_and_as_the_current_one() {
        let mut server = LaneLayer::new().layer(Handler);
        let (extension, current) = server.call(inbound("canary")).await.unwrap();
        assert_eq!(extension.unwrap().lane(), Some("canary"));
        assert_eq!(current.unwrap().lane(), Some("canary"));
        assert_eq!(Lane::current(), None, "only for the handler's duration");
    }

    #[tokio::test]
    async fn an_outbound_call_carries_the_current_lane_unless_it_names_its_own() {
        let mut client = PropagateLaneLayer::new().layer(Wire);
        let lane = Lane::named("canary").unwrap();
        // As in a handler: the call is made inside the scope.
        let sent = lane
            .clone()
            .scope(async { client.clone().call(Request::new(())).await })
            .await
            .unwrap();
        assert_eq!(sent["x-graylane-lane"], "canary");
        let own = lane
            .scope(async { client.clone().call(inbound("stable")).await })
            .await
            .unwrap();
        assert_eq!(own["x-graylane-lane"], "stable");
        let mut with_extension = Request::new(());
        with_extension
            .extensions_mut()
            .insert(Lane::named("blue").unwrap());
        let sent = client.call(with_extension).await.unwrap();
        assert_eq!(sent["x-graylane-lane"], "blue");
        let sent = client.call(Request::new(())).await.unwrap();
        assert!(sent.is_empty(), "no lane, no header");
    }
}
