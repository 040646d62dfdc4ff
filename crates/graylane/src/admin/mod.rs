//! The admin listener (`admin.bind`, loopback in the examples):
//!
//! * `/metrics` (Prometheus text), `/healthz` (the process is up), `/readyz` (it accepts
//!   traffic; 503 while draining) and `/api/v1/openapi.json` — open, so probes, scrapers and
//!   API tools need no secret;
//! * `/api/v1/...` ([`api`]) — releases, configuration revisions and the audit log, behind
//!   a bearer token whose role ([`auth`]) decides what it may do. Errors are JSON ([`error`]).
//! * `/` and `/dashboard/...` ([`dashboard`]) — the web dashboard, a page embedded in the binary
//!   that drives the same API with the token a person signs in with.

pub mod api;
pub mod auth;
pub mod dashboard;
pub mod error;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use graylane_controller::Controller;
use graylane_proxy::Metrics;
use http::{HeaderValue, StatusCode, header};
use tokio::net::TcpListener;

pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub ready: AtomicBool,
    /// `None` for the demo, which runs without a store.
    pub controller: Option<Arc<Controller>>,
    /// The data plane, for what only it holds (the mirrors of Redis segments).
    pub gateway: Arc<graylane_proxy::Gateway>,
    pub tokens: auth::Tokens,
}

/// Binds the admin listener (exclusively: a second process on the address fails).
pub fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    std::net::TcpListener::bind(addr)
        .map_err(|e| anyhow::anyhow!("cannot bind the admin listener on {addr}: {e}"))
}

/// Serves until `stop` completes, then finishes the requests in flight.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    if let Err(e) = axum::serve(listener, app(state))
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!("the admin listener stopped: {e}");
    }
}

/// Every admin route: the open ones, and the API behind [`auth::authorize`].
pub fn app(state: Arc<AdminState>) -> Router {
    let (api, doc) = api::router();
    let openapi = Bytes::from(serde_json::to_vec_pretty(&doc).unwrap_or_default());
    let api = api.route_layer(middleware::from_fn_with_state(
        Arc::clone(&state),
        auth::authorize,
    ));
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { text(StatusCode::OK, "ok\n") }))
        .route("/readyz", get(readyz))
        .route(
            "/api/v1/openapi.json",
            get(move || {
                let openapi = openapi.clone();
                async move {
                    let mut resp = openapi.into_response();
                    resp.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    resp
                }
            }),
        )
        .merge(api)
        .merge(dashboard::router())
        .fallback(fallback)
        .with_state(state)
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    let mut resp = state.metrics.encode().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}

async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    if state.ready.load(Ordering::Relaxed) {
        text(StatusCode::OK, "ready\n")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    }
}

async fn fallback(uri: http::Uri) -> Response {
    if uri.path().starts_with("/api/") {
        api::not_found(uri).await.into_response()
    } else {
        text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz, /readyz or /api/v1/openapi.json\n",
        )
    }
}

fn text(status: StatusCode, body: &'static str) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
