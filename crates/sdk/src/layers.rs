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
/// extensions, else [`Lane::current`] (the inbound request being handled).
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
