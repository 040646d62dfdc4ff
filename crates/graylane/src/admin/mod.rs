//! The admin listener (`admin.bind`, loopback in the examples):
//!
//! * `/metrics` (Prometheus text), `/healthz` (the process is up), `/readyz` (it accepts
//!   traffic; 503 while draining) and `/api/v1/openapi.json` — open, so probes, scrapers and
//!   API tools need no secret;
//! * `/api/v1/...` ([`api`]) — releases, configuration revisions and the audit log, behind
//!   a bearer token whose role ([`auth`]) decides what it may do. Errors are JSON ([`error`]).
//! * `/ofrep/v1/...` (in [`api`]) — feature flags and releases over the OpenFeature Remote
//!   Evaluation Protocol, behind the same tokens (a viewer's is enough).
//! * `/` and `/dashboard/...` ([`dashboard`]) — the web dashboard, a page embedded in the binary
//!   that drives the same API with the token a person signs in with.
//!
//! [`serve`] bounds what a client may hold ([`Limits`]): the time to send a request's headers,
//! the time a connection may move no byte, and the number of open connections.

pub(crate) mod api;
pub(crate) mod auth;
pub(crate) mod dashboard;
pub(crate) mod error;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use graylane_controller::Controller;
use graylane_proxy::Metrics;
use http::{HeaderValue, StatusCode, header};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

pub(crate) struct AdminState {
    pub metrics: Arc<Metrics>,
    pub ready: AtomicBool,
    /// `None` for the demo, which runs without a store.
    pub controller: Option<Arc<Controller>>,
    /// The data plane, for what only it holds (the mirrors of Redis segments).
    pub gateway: Arc<graylane_proxy::Gateway>,
    pub tokens: auth::Tokens,
    /// A fleet node's membership (`GET /api/v1/cluster`); `None` on a single node.
    pub fleet: Option<Arc<graylane_etcd::Fleet>>,
}

/// Binds the admin listener (exclusively: a second process on the address fails).
pub(crate) fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    std::net::TcpListener::bind(addr)
        .map_err(|e| anyhow::anyhow!("cannot bind the admin listener on {addr}: {e}"))
}

/// What the admin listener allows a client: `admin.header_read_timeout`, `idle_timeout` and
/// `max_connections`, as the proxy listeners have (the admin port is as reachable a target).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
}

impl From<&graylane_config::Admin> for Limits {
    fn from(a: &graylane_config::Admin) -> Limits {
        Limits {
            header_read_timeout: a.header_read_timeout,
            idle_timeout: a.idle_timeout,
            request_timeout: a.request_timeout,
            max_connections: a.max_connections,
        }
    }
}

/// Serves until `stop` completes, then lets every connection finish the request in flight
/// (idle keep-alive connections are closed) and returns once they have.
pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    limits: Limits,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    // A request (its body included) must end within `request_timeout`: the idle timeout alone
    // lets a client that sends a byte now and then hold a connection for ever.
    let deadline = limits.request_timeout;
    let app = app(state).layer(middleware::from_fn(
        move |req: axum::extract::Request, next: middleware::Next| async move {
            match tokio::time::timeout(deadline, next.run(req)).await {
                Ok(response) => response,
                Err(_) => {
                    let mut response = error::ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "request_timeout",
                        format!("the request did not complete within {deadline:?} (admin.request_timeout)"),
                    )
                    .into_response();
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    response
                }
            }
        },
    ));
    let service = TowerToHyperService::new(app);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let (stopping, stopped) = tokio::sync::watch::channel(false);
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stop => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("admin accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Beyond the limit a connection is accepted and closed at once, as on the proxy
        // listeners: left in the backlog, the client would see a hang instead of an error.
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!(%peer, limit = limits.max_connections, "admin listener full: closing the new connection");
            continue;
        };
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(Watched {
            io: stream,
            activity: Arc::clone(&activity),
        });
        let connection = http.serve_connection(io, service.clone());
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = activity.idle_for(limits.idle_timeout) => {
                    tracing::debug!(%peer, "admin connection idle: closing");
                }
                // The channel's guard must not outlive this branch's condition.
                () = async { let _ = stopped.wait_for(|stop| *stop).await; } => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(limits.idle_timeout, connection).await;
                }
            }
            drop(slot);
        });
    }
    let _ = stopping.send(true);
    // Every connection gives its slot back when it ends.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await;
}

/// When a connection last moved a byte, in milliseconds since it opened.
struct Activity {
    opened: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            opened: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Ready once no byte has moved for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let last = self.opened + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

/// A connection that records its [`Activity`] on every read and write that moves bytes.
struct Watched {
    io: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Every admin route: the open ones, and the API behind [`auth::authorize`].
pub(crate) fn app(state: Arc<AdminState>) -> Router {
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
        .method_not_allowed_fallback(method_not_allowed)
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

async fn method_not_allowed(method: http::Method, uri: http::Uri) -> Response {
    if uri.path().starts_with("/api/") {
        api::method_not_allowed(method, uri).await.into_response()
    } else {
        text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: use GET\n",
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
