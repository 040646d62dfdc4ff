//! Helpers shared by the data-plane integration tests: a test upstream (a tiny HTTP/1.1 server
//! that answers with JSON describing what it received), a gateway started from YAML on a
//! loopback port picked by the kernel, and a small HTTP/1.1 and HTTP/2 client.

// Each test binary includes this module and uses a different subset of it.
#![allow(dead_code)]

pub(crate) mod many_services;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use graylane_config::Config;
use graylane_proxy::{Gateway, GatewayOptions};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

/// Upper bound on any single exchange in these tests.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound on waiting for something to become true.
pub(crate) const POLL_DEADLINE: Duration = Duration::from_secs(10);

/// A request header the test upstream obeys: wait this many milliseconds before answering.
pub(crate) const DELAY_HEADER: &str = "x-test-delay-ms";

// ---------------------------------------------------------------------------------------------
// Test upstream
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct UpstreamState {
    /// Delay before every answer, in milliseconds.
    delay_ms: AtomicU64,
    /// Requests whose headers have arrived (counted before any delay).
    received: AtomicU64,
    /// Connections accepted.
    connections: AtomicU64,
    /// Answer with this status instead of 200 (0: 200).
    status: AtomicU64,
}

/// A test upstream on 127.0.0.1: answers every request with
/// `{"version": NAME, "method", "path", "headers": {name: value}, "body"}` after an optional
/// delay. It runs on its own thread and runtime, so [`Upstream::kill`] closes its listener and
/// every open connection before returning.
pub(crate) struct Upstream {
    pub addr: SocketAddr,
    pub name: &'static str,
    state: Arc<UpstreamState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Upstream {
    /// Starts an upstream called `name` on a free loopback port.
    pub(crate) fn start(name: &'static str) -> Upstream {
        Upstream::start_on("127.0.0.1:0".parse().unwrap(), name)
    }

    /// Starts an upstream on `addr` (e.g. the address of one that was killed).
    pub(crate) fn start_on(addr: SocketAddr, name: &'static str) -> Upstream {
        let listener = std::net::TcpListener::bind(addr)
            .unwrap_or_else(|e| panic!("test upstream cannot bind {addr}: {e}"));
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(UpstreamState::default());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let thread_state = Arc::clone(&state);
        let thread = std::thread::Builder::new()
            .name(format!("upstream-{name}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener).unwrap();
                    tokio::select! {
                        _ = accept_loop(listener, name, thread_state) => {}
                        _ = stop_rx => {}
                    }
                });
                // Dropping the runtime drops every connection task, closing their sockets.
                drop(runtime);
            })
            .unwrap();
        Upstream {
            addr,
            name,
            state,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Every answer waits `delay` first.
    pub(crate) fn set_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Requests received so far (counted as soon as their headers arrive).
    pub(crate) fn received(&self) -> u64 {
        self.state.received.load(Ordering::SeqCst)
    }

    /// Answers every request from now on with `status` (200 to go back to normal).
    pub(crate) fn set_status(&self, status: u16) {
        self.state.status.store(u64::from(status), Ordering::SeqCst);
    }

    /// Connections accepted so far.
    pub(crate) fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Stops the upstream abruptly: the listener and all connections are closed when this
    /// returns, so the port refuses connections.
    pub(crate) fn kill(mut self) {
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

async fn accept_loop(listener: TcpListener, name: &'static str, state: Arc<UpstreamState>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        state.connections.fetch_add(1, Ordering::SeqCst);
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(req, name, Arc::clone(&state)));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    name: &'static str,
    state: Arc<UpstreamState>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    state.received.fetch_add(1, Ordering::SeqCst);
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
    let method = req.method().to_string();
    let path = req.uri().to_string();
    let version = format!("{:?}", req.version());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
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
    let status = state.status.load(Ordering::SeqCst);
    if status != 0 {
        *resp.status_mut() = StatusCode::from_u16(status as u16).unwrap_or(StatusCode::OK);
    }
    Ok(resp)
}

/// A loopback address nothing listens on (bound, then released).
pub(crate) fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Gateway
// ---------------------------------------------------------------------------------------------

/// A validated configuration from YAML; panics with every error if it is invalid.
pub(crate) fn config(yaml: &str) -> Config {
    graylane_config::load_str(yaml, "t.yaml", Path::new("."))
        .unwrap_or_else(|e| panic!("test configuration is invalid:\n{e}\n---\n{yaml}"))
}

/// Replaces each `{key}` in `template` by its value.
pub(crate) fn fill(template: &str, values: &[(&str, String)]) -> String {
    let mut out = template.to_string();
    for (k, v) in values {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

pub(crate) fn start_gateway(config: Config) -> Gateway {
    start_gateway_with(config, Duration::from_secs(10))
}

pub(crate) fn start_gateway_with(config: Config, drain_timeout: Duration) -> Gateway {
    Gateway::start(
        config,
        GatewayOptions {
            workers: 2,
            drain_timeout,
            ..GatewayOptions::default()
        },
    )
    .expect("the gateway starts")
}

/// Shuts the gateway down off the async runtime (it joins its worker threads).
pub(crate) async fn shutdown(gateway: Gateway) {
    tokio::task::spawn_blocking(move || gateway.shutdown())
        .await
        .expect("shutdown does not panic");
}

/// The gateway's first listener address.
pub(crate) fn addr(gateway: &Gateway) -> SocketAddr {
    gateway.local_addrs()[0]
}

/// A path under the target's temporary folder, unique to this test process and `name`.
pub(crate) fn temp_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("graylane-proxy-{}-{name}", std::process::id()))
}

/// The value of the sample `series` (e.g. `graylane_requests_total{service="a",...}`) in a
/// Prometheus text exposition, if present.
pub(crate) fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/// A response, fully read.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// `x-graylane-version`, the version graylane says served the request.
    pub(crate) fn version(&self) -> Option<&str> {
        self.headers
            .get("x-graylane-version")
            .and_then(|v| v.to_str().ok())
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The version the test upstream says it is.
    pub(crate) fn upstream_version(&self) -> String {
        self.json()["version"].as_str().unwrap_or("").to_string()
    }

    /// A request header as the test upstream received it.
    pub(crate) fn upstream_header(&self, name: &str) -> Option<String> {
        self.json()["headers"][name].as_str().map(str::to_string)
    }

    pub(crate) fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap_or("").to_string())
            .collect()
    }
}

fn build_request(
    method: Method,
    uri: &str,
    host: Option<SocketAddr>,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Request<Full<Bytes>> {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(host) = host {
        req = req.header(header::HOST, host.to_string());
    }
    for (k, v) in headers {
        req = req.header(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    req.body(Full::new(body)).unwrap()
}

async fn read_reply(resp: Response<Incoming>) -> Result<Reply, String> {
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("reading the body: {e}"))?
        .to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// An HTTP/1.1 keep-alive connection.
pub(crate) struct Http1 {
    addr: SocketAddr,
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Http1 {
    pub(crate) async fn connect(addr: SocketAddr) -> Result<Http1, String> {
        let stream = tokio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connecting to {addr} timed out"))?
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake with {addr}: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Http1 { addr, sender })
    }

    pub(crate) async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<Reply, String> {
        let req = build_request(
            method,
            path,
            Some(self.addr),
            headers,
            Bytes::copy_from_slice(body.as_bytes()),
        );
        let exchange = async {
            self.sender
                .ready()
                .await
                .map_err(|e| format!("connection not ready: {e}"))?;
            let resp = self
                .sender
                .send_request(req)
                .await
                .map_err(|e| format!("request failed: {e}"))?;
            read_reply(resp).await
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))?
    }

    pub(crate) async fn get(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Reply, String> {
        self.send(Method::GET, path, headers, "").await
    }
}

/// One GET on a new connection; panics if there is no answer.
pub(crate) async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    try_get(addr, path, headers)
        .await
        .unwrap_or_else(|e| panic!("GET {path} via {addr}: {e}"))
}

pub(crate) async fn try_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    Http1::connect(addr).await?.get(path, headers).await
}

/// An HTTP/2 connection with prior knowledge (h2c).
#[derive(Clone)]
pub(crate) struct Http2 {
    addr: SocketAddr,
    sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
}

impl Http2 {
    pub(crate) async fn connect(addr: SocketAddr) -> Result<Http2, String> {
        let stream = tokio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connecting to {addr} timed out"))?
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .map_err(|e| format!("h2 handshake with {addr}: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Http2 { addr, sender })
    }

    pub(crate) async fn get(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Reply, String> {
        let uri = format!("http://{}{path}", self.addr);
        let req = build_request(Method::GET, &uri, None, headers, Bytes::new());
        let exchange = async {
            self.sender
                .ready()
                .await
                .map_err(|e| format!("h2 connection not ready: {e}"))?;
            let resp = self
                .sender
                .send_request(req)
                .await
                .map_err(|e| format!("h2 request failed: {e}"))?;
            if resp.version() != http::Version::HTTP_2 {
                return Err(format!("answered over {:?}", resp.version()));
            }
            read_reply(resp).await
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))?
    }
}

/// Polls `check` until it returns `Some`, up to [`POLL_DEADLINE`]; panics naming `what`.
pub(crate) async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + POLL_DEADLINE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {POLL_DEADLINE:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1.1: an upstream that records bytes, and a client that writes them
// ---------------------------------------------------------------------------------------------

/// One request as a [`RecordingUpstream`] parsed it off the wire.
#[derive(Debug, Clone)]
pub(crate) struct WireRequest {
    pub method: String,
    pub target: String,
    /// Header lines in the order received, names as sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl WireRequest {
    /// Every value of header `name` (compared case-insensitively).
    pub(crate) fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

#[derive(Default)]
struct Recorded {
    requests: Vec<WireRequest>,
    /// Every byte received, per connection, in order.
    bytes: Vec<Vec<u8>>,
    /// Bytes that did not parse as a request: what an upstream would choke on or misread.
    garbage: Vec<Vec<u8>>,
}

/// An upstream written on raw sockets that parses requests the way a strict HTTP/1.1 server
/// does (one after another on a keep-alive connection, framed by `Content-Length` or chunked),
/// records each with its exact bytes, and answers each with `200` and `{"seen": N}`. What the
/// gateway really put on the wire — a second request hidden in a body, a header it should have
/// dropped — is visible here, where a friendly server library would have normalised it away.
pub(crate) struct RecordingUpstream {
    pub addr: SocketAddr,
    recorded: Arc<std::sync::Mutex<Recorded>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl RecordingUpstream {
    pub(crate) fn start() -> RecordingUpstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let recorded = Arc::new(std::sync::Mutex::new(Recorded::default()));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let state = Arc::clone(&recorded);
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener).unwrap();
                let accept = async {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        tokio::spawn(record_connection(stream, Arc::clone(&state)));
                    }
                };
                tokio::select! {
                    () = accept => {}
                    _ = stop_rx => {}
                }
            });
        });
        RecordingUpstream {
            addr,
            recorded,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// The requests parsed so far, in arrival order.
    pub(crate) fn requests(&self) -> Vec<WireRequest> {
        self.recorded.lock().unwrap().requests.clone()
    }

    /// Bytes that did not parse as a request.
    pub(crate) fn garbage(&self) -> Vec<Vec<u8>> {
        self.recorded.lock().unwrap().garbage.clone()
    }

    /// Everything received, all connections concatenated, as text (lossy).
    pub(crate) fn wire_text(&self) -> String {
        let recorded = self.recorded.lock().unwrap();
        recorded
            .bytes
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect::<Vec<_>>()
            .join("\n--- next connection ---\n")
    }
}

impl Drop for RecordingUpstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn record_connection(
    mut stream: TcpStream,
    state: Arc<std::sync::Mutex<Recorded>>,
) -> Option<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let slot = {
        let mut s = state.lock().unwrap();
        s.bytes.push(Vec::new());
        s.bytes.len() - 1
    };
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        // Parse every complete request in the buffer.
        loop {
            match parse_wire_request(&buf) {
                WireParse::Complete(req, used) => {
                    buf.drain(..used);
                    let seen = {
                        let mut s = state.lock().unwrap();
                        s.requests.push(req);
                        s.requests.len()
                    };
                    let body = format!("{{\"seen\":{seen}}}");
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    stream.write_all(resp.as_bytes()).await.ok()?;
                }
                WireParse::Partial => break,
                WireParse::Invalid => {
                    state.lock().unwrap().garbage.push(std::mem::take(&mut buf));
                    let _ = stream
                        .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                    return None;
                }
            }
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            if !buf.is_empty() {
                state.lock().unwrap().garbage.push(buf);
            }
            return None;
        }
        state.lock().unwrap().bytes[slot].extend_from_slice(&chunk[..n]);
        buf.extend_from_slice(&chunk[..n]);
    }
}

enum WireParse {
    Complete(WireRequest, usize),
    Partial,
    Invalid,
}

fn parse_wire_request(buf: &[u8]) -> WireParse {
    if buf.is_empty() {
        return WireParse::Partial;
    }
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return WireParse::Partial,
        Err(_) => return WireParse::Invalid,
    };
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let find = |name: &str| {
        headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .collect::<Vec<_>>()
    };
    let te = find("transfer-encoding");
    let cl = find("content-length");
    if !te.is_empty() && !cl.is_empty() || cl.len() > 1 {
        // Both framings, or two lengths: what a strict server refuses.
        return WireParse::Invalid;
    }
    let rest = &buf[head_len..];
    let (body, used) = if !te.is_empty() {
        if te.len() != 1 || !te[0].eq_ignore_ascii_case("chunked") {
            return WireParse::Invalid;
        }
        let mut body = Vec::new();
        let mut at = 0;
        loop {
            let Some(eol) = rest[at..].windows(2).position(|w| w == b"\r\n") else {
                return WireParse::Partial;
            };
            let size_text = String::from_utf8_lossy(&rest[at..at + eol]).to_string();
            let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
            else {
                return WireParse::Invalid;
            };
            at += eol + 2;
            if size == 0 {
                if rest.len() < at + 2 {
                    return WireParse::Partial;
                }
                if &rest[at..at + 2] != b"\r\n" {
                    return WireParse::Invalid;
                }
                break (body, head_len + at + 2);
            }
            if rest.len() < at + size + 2 {
                return WireParse::Partial;
            }
            body.extend_from_slice(&rest[at..at + size]);
            at += size + 2;
        }
    } else if let Some(len) = cl.first() {
        let Ok(len) = len.parse::<usize>() else {
            return WireParse::Invalid;
        };
        if rest.len() < len {
            return WireParse::Partial;
        }
        (rest[..len].to_vec(), head_len + len)
    } else {
        (Vec::new(), head_len)
    };
    WireParse::Complete(
        WireRequest {
            method: req.method.unwrap_or("").to_string(),
            target: req.path.unwrap_or("").to_string(),
            headers,
            body,
        },
        used,
    )
}

/// A response read off a raw connection.
#[derive(Debug)]
pub(crate) struct RawReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawReply {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A raw HTTP/1.1 connection: writes bytes exactly as given, reads responses one by one.
pub(crate) struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    pub(crate) async fn connect(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let _ = stream.set_nodelay(true);
        RawClient {
            stream,
            buf: Vec::new(),
        }
    }

    pub(crate) async fn write(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.expect("write");
    }

    /// The next response, or `None` when the server closed the connection first (or nothing
    /// came within [`REQUEST_TIMEOUT`]).
    pub(crate) async fn read_reply(&mut self) -> Option<RawReply> {
        use tokio::io::AsyncReadExt;
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = resp.parse(&self.buf) {
                let headers: Vec<(String, String)> = resp
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                let len = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if self.buf.len() >= n + len {
                    let status = resp.code.unwrap_or(0);
                    let body = self.buf[n..n + len].to_vec();
                    self.buf.drain(..n + len);
                    return Some(RawReply {
                        status,
                        headers,
                        body,
                    });
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            let left = deadline.checked_duration_since(Instant::now())?;
            match tokio::time::timeout(left, self.stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    /// Writes `request` and reads one response.
    pub(crate) async fn exchange(&mut self, request: &[u8]) -> Option<RawReply> {
        self.write(request).await;
        self.read_reply().await
    }
}

/// One raw request on a new connection.
pub(crate) async fn raw_request(addr: SocketAddr, request: &[u8]) -> Option<RawReply> {
    RawClient::connect(addr).await.exchange(request).await
}
