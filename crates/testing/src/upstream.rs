//! A test upstream: a tiny HTTP/1.1 server on 127.0.0.1 that answers every request with JSON
//! describing what it received, and can be told to be slow, to fail, or to hold answers. It can
//! speak HTTP/2 too, in clear text or over TLS ([`Speaks`]).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// A request header the test upstream obeys: wait this many milliseconds before answering.
pub const DELAY_HEADER: &str = "x-test-delay-ms";

/// How a test upstream speaks.
#[derive(Clone)]
pub enum Speaks {
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/1.1 or HTTP/2 with prior knowledge (h2c), as the client starts.
    H2c,
    /// TLS with this acceptor, then HTTP/2 or HTTP/1.1 as ALPN chose.
    Tls(tokio_rustls::TlsAcceptor),
}

/// `grpc_status` when the upstream answers as plain HTTP.
const NOT_GRPC: u64 = u64::MAX;

/// A request header the test upstream obeys: hold the answer until [`Upstream::release`].
pub const HOLD_HEADER: &str = "x-test-hold";

struct UpstreamState {
    /// Delay before every answer, in milliseconds.
    delay_ms: AtomicU64,
    /// Requests whose headers have arrived (counted before any delay).
    received: AtomicU64,
    /// Connections accepted.
    connections: AtomicU64,
    /// Answer with this status instead of 200 (0: 200).
    status: AtomicU64,
    /// Every n-th request is answered 500 (0: none).
    fail_every: AtomicU64,
    /// Answer as a gRPC server with this `grpc-status` in the head ([`NOT_GRPC`]: plain JSON).
    grpc_status: AtomicU64,
    /// Held requests are answered once this is true.
    released: tokio::sync::watch::Sender<bool>,
    /// Every request received, in order of arrival of its body.
    seen: std::sync::Mutex<Vec<Seen>>,
}

/// A request as the test upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The method.
    pub method: String,
    /// The request target.
    pub path: String,
    /// The headers, by lower-case name; repeated ones joined with `, `.
    pub headers: BTreeMap<String, String>,
    /// The whole body.
    pub body: Bytes,
}

/// A test upstream on 127.0.0.1: answers every request with
/// `{"version": NAME, "method", "path", "http_version", "headers": {name: value}, "body"}`
/// after an optional delay. It runs on its own thread and runtime, so [`Upstream::kill`] (or a
/// drop) closes its listener and every open connection before returning.
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The version it says it is.
    pub name: &'static str,
    state: Arc<UpstreamState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Upstream {
    /// Starts an upstream called `name` on a loopback port the kernel picks.
    pub fn start(name: &'static str) -> Upstream {
        Upstream::start_on("127.0.0.1:0".parse().expect("an address"), name)
    }

    /// Starts an upstream on `addr` (e.g. the address of one that was killed).
    pub fn start_on(addr: SocketAddr, name: &'static str) -> Upstream {
        let listener = std::net::TcpListener::bind(addr)
            .unwrap_or_else(|e| panic!("test upstream cannot bind {addr}: {e}"));
        Upstream::serve(listener, name)
    }

    /// Serves HTTP/1.1 on `listener`, already bound by the caller.
    pub fn serve(listener: std::net::TcpListener, name: &'static str) -> Upstream {
        Upstream::serve_speaking(listener, name, Speaks::Http1)
    }

    /// Serves on `listener`, already bound by the caller, speaking as `speaks` says.
    pub fn serve_speaking(
        listener: std::net::TcpListener,
        name: &'static str,
        speaks: Speaks,
    ) -> Upstream {
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let addr = listener.local_addr().expect("a bound address");
        let state = Arc::new(UpstreamState {
            delay_ms: AtomicU64::new(0),
            received: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            status: AtomicU64::new(0),
            fail_every: AtomicU64::new(0),
            grpc_status: AtomicU64::new(NOT_GRPC),
            released: tokio::sync::watch::channel(false).0,
            seen: std::sync::Mutex::default(),
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let thread_state = Arc::clone(&state);
        let thread = std::thread::Builder::new()
            .name(format!("upstream-{name}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener).expect("a tokio listener");
                    tokio::select! {
                        _ = accept_loop(listener, name, thread_state, speaks) => {}
                        _ = stop_rx => {}
                    }
                });
                // Dropping the runtime drops every connection task, closing their sockets.
                drop(runtime);
            })
            .expect("a thread");
        Upstream {
            addr,
            name,
            state,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Every answer waits `delay` first.
    pub fn set_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Requests received so far (counted as soon as their headers arrive).
    pub fn received(&self) -> u64 {
        self.state.received.load(Ordering::SeqCst)
    }

    /// Every request received so far (once its body has arrived), oldest first.
    pub fn seen(&self) -> Vec<Seen> {
        self.state
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Answers every request from now on with `status` (200 to go back to normal).
    pub fn set_status(&self, status: u16) {
        self.state.status.store(u64::from(status), Ordering::SeqCst);
    }

    /// Answers every `n`-th request from now on with a 500 (0: none).
    pub fn fail_every(&self, n: u64) {
        self.state.fail_every.store(n, Ordering::SeqCst);
    }

    /// Answers every request from now on as a gRPC server failing or finishing the call at once:
    /// `content-type: application/grpc`, `grpc-status: code` in the head, no body (a
    /// trailers-only response).
    pub fn set_grpc_status(&self, code: u32) {
        self.state
            .grpc_status
            .store(u64::from(code), Ordering::SeqCst);
    }

    /// Lets every held request (and any later one) be answered.
    pub fn release(&self) {
        self.state.released.send_replace(true);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Stops the upstream abruptly: the listener and all connections are closed when this
    /// returns, so the port refuses connections.
    pub fn kill(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop_now();
    }
}

async fn accept_loop(
    listener: TcpListener,
    name: &'static str,
    state: Arc<UpstreamState>,
    speaks: Speaks,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        state.connections.fetch_add(1, Ordering::SeqCst);
        let state = Arc::clone(&state);
        let speaks = speaks.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(req, name, Arc::clone(&state)));
            let auto = || {
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
            };
            let _ = match speaks {
                Speaks::Http1 => hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                    .map_err(|e| e.into()),
                Speaks::H2c => auto().serve_connection(TokioIo::new(stream), service).await,
                Speaks::Tls(acceptor) => match acceptor.accept(stream).await {
                    Ok(tls) => auto().serve_connection(TokioIo::new(tls), service).await,
                    Err(e) => Err(e.into()),
                },
            };
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    name: &'static str,
    state: Arc<UpstreamState>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let n = state.received.fetch_add(1, Ordering::SeqCst) + 1;
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in req.headers() {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        headers
            .entry(k.as_str().to_string())
            .and_modify(|prev| {
                prev.push_str(", ");
                prev.push_str(&v);
            })
            .or_insert(v);
    }
    let delay = req
        .headers()
        .get(DELAY_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| state.delay_ms.load(Ordering::SeqCst));
    let hold = req.headers().contains_key(HOLD_HEADER);
    let method = req.method().to_string();
    let path = req.uri().to_string();
    let version = format!("{:?}", req.version());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    state
        .seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Seen {
            method: method.clone(),
            path: path.clone(),
            headers: headers.clone(),
            body: body.clone(),
        });
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if hold {
        let mut released = state.released.subscribe();
        // Bounded, so a test that forgets to release cannot hang forever.
        let _ = tokio::time::timeout(Duration::from_secs(30), released.wait_for(|r| *r)).await;
    }
    let grpc_status = state.grpc_status.load(Ordering::SeqCst);
    if grpc_status != NOT_GRPC {
        let mut resp = Response::new(Full::new(Bytes::new()));
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", HeaderValue::from(grpc_status));
        return Ok(resp);
    }
    let json = serde_json::json!({
        "version": name,
        "method": method,
        "path": path,
        "http_version": version,
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    let mut resp = Response::new(Full::new(Bytes::from(json.to_string())));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let fail_every = state.fail_every.load(Ordering::SeqCst);
    let status = state.status.load(Ordering::SeqCst);
    if fail_every > 0 && n.is_multiple_of(fail_every) {
        *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    } else if status != 0 {
        *resp.status_mut() = StatusCode::from_u16(status as u16).unwrap_or(StatusCode::OK);
    }
    Ok(resp)
}
