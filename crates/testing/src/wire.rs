//! Raw HTTP/1.1 on both sides of the gateway: an upstream that records the exact bytes it
//! received and parses them as a strict server would, and a client that writes bytes exactly
//! as given. What the gateway really put on the wire is visible here, where a friendly server
//! library would have normalised it away.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::net::{TcpListener, TcpStream};

use crate::REQUEST_TIMEOUT;

/// One request as a [`RecordingUpstream`] parsed it off the wire.
#[derive(Debug, Clone)]
pub struct WireRequest {
    /// The method as sent.
    pub method: String,
    /// The request target as sent.
    pub target: String,
    /// Header lines in the order received, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl WireRequest {
    /// Every value of header `name` (compared case-insensitively).
    pub fn header_values(&self, name: &str) -> Vec<&str> {
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
pub struct RecordingUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    recorded: Arc<std::sync::Mutex<Recorded>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl RecordingUpstream {
    /// Starts one on a loopback port the kernel picks.
    pub fn start() -> RecordingUpstream {
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
    pub fn requests(&self) -> Vec<WireRequest> {
        self.recorded.lock().unwrap().requests.clone()
    }

    /// Bytes that did not parse as a request.
    pub fn garbage(&self) -> Vec<Vec<u8>> {
        self.recorded.lock().unwrap().garbage.clone()
    }

    /// Everything received, all connections concatenated, as text (lossy).
    pub fn wire_text(&self) -> String {
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
pub struct RawReply {
    /// The status code.
    pub status: u16,
    /// Header lines in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body (`content-length` framed).
    pub body: Vec<u8>,
}

impl RawReply {
    /// The first value of header `name` (compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A raw HTTP/1.1 connection: writes bytes exactly as given, reads responses one by one.
pub struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    /// Connects to `addr`; panics if it cannot.
    pub async fn connect(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let _ = stream.set_nodelay(true);
        RawClient {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes `bytes` as they are.
    pub async fn write(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.expect("write");
    }

    /// The next response, or `None` when the server closed the connection first (or nothing
    /// came within [`REQUEST_TIMEOUT`]).
    pub async fn read_reply(&mut self) -> Option<RawReply> {
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
    pub async fn exchange(&mut self, request: &[u8]) -> Option<RawReply> {
        self.write(request).await;
        self.read_reply().await
    }
}

/// One raw request on a new connection.
pub async fn raw_request(addr: SocketAddr, request: &[u8]) -> Option<RawReply> {
    RawClient::connect(addr).await.exchange(request).await
}
