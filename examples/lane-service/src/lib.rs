//! An example service behind graylane, using `graylane-sdk`'s two layers: it answers every
//! request with its name, its version and the lane the request came in on, and, when it has a
//! downstream, first calls that downstream through graylane. [`graylane_sdk::LaneLayer`] reads
//! the inbound lane; [`graylane_sdk::PropagateLaneLayer`] on its HTTP client sends it on, so a
//! request graylane put on the canary lane reaches the downstream's canary too.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Json;
use axum::extract::State;
use bytes::Bytes;
use graylane_sdk::{Lane, LaneLayer, PropagateLaneLayer};
use http::{Request, Response, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tower_layer::Layer;
use tower_service::Service;

/// Who this instance is and whom it calls.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The service's name, as graylane's configuration names it.
    pub name: String,
    /// The version this instance runs.
    pub version: String,
    /// A URL (through graylane) called for every request before answering; `None`: none.
    pub downstream: Option<Uri>,
}

/// The service's routes, with [`LaneLayer`] around them.
pub fn app(settings: Settings) -> axum::Router {
    axum::Router::new()
        .fallback(handle)
        .with_state(Arc::new(settings))
        .layer(LaneLayer::new())
}

/// Serves [`app`] on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, settings: Settings) -> std::io::Result<()> {
    axum::serve(listener, app(settings)).await
}

async fn handle(State(settings): State<Arc<Settings>>) -> Json<Value> {
    let lane = Lane::current().unwrap_or_default();
    let downstream = match &settings.downstream {
        None => Value::Null,
        Some(uri) => match call(uri.clone()).await {
            Ok(answer) => answer,
            Err(e) => json!({ "error": e }),
        },
    };
    Json(json!({
        "service": settings.name,
        "version": settings.version,
        "lane": lane.lane(),
        "downstream": downstream,
    }))
}

/// `GET uri` with the lane propagated, its JSON body and the version graylane says answered.
async fn call(uri: Uri) -> Result<Value, String> {
    let mut client = PropagateLaneLayer::new().layer(Http1);
    std::future::poll_fn(|cx| client.poll_ready(cx)).await?;
    let req = Request::get(uri)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = client.call(req).await?;
    let answered_by = resp
        .headers()
        .get("x-graylane-version")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = Limited::new(resp.into_body(), 1 << 20)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let mut answer: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    answer["answered_by"] = answered_by.into();
    Ok(answer)
}

/// The smallest outbound HTTP/1.1 client as a `tower` service: a connection per request.
#[derive(Debug, Clone, Copy)]
struct Http1;

type Answer = Result<Response<hyper::body::Incoming>, String>;

impl Service<Request<Empty<Bytes>>> for Http1 {
    type Response = Response<hyper::body::Incoming>;
    type Error = String;
    type Future = Pin<Box<dyn Future<Output = Answer> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), String>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Empty<Bytes>>) -> Self::Future {
        Box::pin(async move {
            let authority = req.uri().authority().ok_or("the URL has no host")?.clone();
            let stream = TcpStream::connect(authority.as_str())
                .await
                .map_err(|e| format!("cannot connect to {authority}: {e}"))?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| e.to_string())?;
            tokio::spawn(connection);
            let host =
                http::HeaderValue::from_str(authority.as_str()).map_err(|e| e.to_string())?;
            req.headers_mut().insert(header::HOST, host);
            sender.send_request(req).await.map_err(|e| e.to_string())
        })
    }
}
