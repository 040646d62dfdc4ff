//! A small HTTP client for the tests: HTTP/1.1 keep-alive and HTTP/2 (h2c) connections, and
//! one-shot requests on a new connection, every exchange bounded by [`REQUEST_TIMEOUT`].

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::REQUEST_TIMEOUT;

/// A response, fully read.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Reply {
    /// `x-graylane-version`, the version graylane says served the request.
    pub fn version(&self) -> Option<&str> {
        self.headers
            .get("x-graylane-version")
            .and_then(|v| v.to_str().ok())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {:?}", self.text()))
    }

    /// The version the test upstream says it is.
    pub fn upstream_version(&self) -> String {
        self.json()["version"].as_str().unwrap_or("").to_string()
    }

    /// A request header as the test upstream received it.
    pub fn upstream_header(&self, name: &str) -> Option<String> {
        self.json()["headers"][name].as_str().map(str::to_string)
    }

    /// Every `set-cookie` header, in order.
    pub fn set_cookies(&self) -> Vec<String> {
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
pub struct Http1 {
    addr: SocketAddr,
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Http1 {
    /// Connects to `addr`, bounded by [`REQUEST_TIMEOUT`].
    pub async fn connect(addr: SocketAddr) -> Result<Http1, String> {
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

    /// One request with a text body on this connection.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<Reply, String> {
        self.send_bytes(
            method,
            path,
            headers,
            Bytes::copy_from_slice(body.as_bytes()),
        )
        .await
    }

    /// One request with any body on this connection.
    pub async fn send_bytes(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Reply, String> {
        let what = format!("{method} {path} via {}", self.addr);
        let req = build_request(method, path, Some(self.addr), headers, body);
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
            .map_err(|_| format!("{what}: no answer within {REQUEST_TIMEOUT:?}"))?
    }

    /// A GET on this connection.
    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<Reply, String> {
        self.send(Method::GET, path, headers, "").await
    }
}

/// One GET on a new connection; panics if there is no answer.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    try_get(addr, path, headers)
        .await
        .unwrap_or_else(|e| panic!("GET {path} via {addr}: {e}"))
}

/// One GET on a new connection.
pub async fn try_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    Http1::connect(addr).await?.get(path, headers).await
}

/// An HTTP/2 connection with prior knowledge (h2c).
#[derive(Clone)]
pub struct Http2 {
    addr: SocketAddr,
    sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
}

impl Http2 {
    /// Connects to `addr` and does the HTTP/2 handshake, bounded by [`REQUEST_TIMEOUT`].
    pub async fn connect(addr: SocketAddr) -> Result<Http2, String> {
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

    /// A GET on this connection (a new stream).
    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<Reply, String> {
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

/// Any request with a body, on a new connection; panics if there is no answer.
pub async fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    try_request(addr, method, path, headers, body.into())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Any request with a body, on a new connection.
pub async fn try_request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Reply, String> {
    Http1::connect(addr)
        .await?
        .send_bytes(method, path, headers, body)
        .await
}
