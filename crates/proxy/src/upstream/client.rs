//! The client for `h2c://` and `https://` endpoints, on hyper's connection API: one
//! multiplexed HTTP/2 connection per endpoint and worker thread, re-made when it dies, and over
//! TLS keep-alive HTTP/1.1 connections when the upstream picks `http/1.1` by ALPN. Each
//! connection runs as a task of the worker; the request's task hands it the request and gets
//! the response head back, the body streams through hyper's `Incoming` (its trailers too).
//!
//! The `http://` path never comes here: a version's [`UpstreamTarget`] is prepared in the
//! snapshot only for the other schemes, and the request path branches once on it
//! ([`super::exchange`]). The request an upstream gets is the same as on that path: its
//! header lines are the ones `forward.rs` writes for the in-task client, read back into a
//! header map.

use std::cell::{OnceCell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use graylane_config::{GrpcErrorCodes, UpstreamProtocol, UpstreamSettings, UpstreamTls};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use super::{UpstreamError, UpstreamErrorKind, connect_timed_out};
use crate::body::{ProxyBody, RequestBody};
use crate::forward::Forwarding;
use crate::grpc::GrpcBody;
use crate::hop_by_hop::{self, ConnectionOption};
use crate::server::LocalExec;

/// How a version's `h2c://` or `https://` endpoints are reached, prepared once per snapshot.
pub(crate) struct UpstreamTarget {
    /// Whose connections these are: the TLS settings' [`UpstreamTls::id`] (0 for `h2c://`),
    /// the same in every snapshot of one configuration, so a routing change keeps them, and
    /// never another's.
    id: u64,
    /// `None`: `h2c://`. `Err`: the TLS settings could not be turned into a client
    /// configuration; every attempt fails with this.
    tls: Option<Result<TlsTarget, String>>,
    idle_timeout: Duration,
    max_idle: usize,
    /// The `grpc-status` codes that count as the version's errors.
    pub(crate) grpc_error_codes: GrpcErrorCodes,
}

struct TlsTarget {
    connector: TlsConnector,
    /// `None`: each endpoint's IP address.
    server_name: Option<ServerName<'static>>,
}

impl UpstreamTarget {
    /// The target of a version whose endpoints use `protocol`; `None` for `http://`, which
    /// the in-task HTTP/1.1 client serves.
    pub(crate) fn new(
        protocol: UpstreamProtocol,
        tls: Option<&UpstreamTls>,
        settings: &UpstreamSettings,
        grpc_error_codes: GrpcErrorCodes,
    ) -> Option<Arc<UpstreamTarget>> {
        let id = tls.map_or(0, |t| t.id);
        let tls = match protocol {
            UpstreamProtocol::Http1 => return None,
            UpstreamProtocol::H2c => None,
            UpstreamProtocol::Https => Some(match tls {
                Some(tls) => tls_target(tls),
                None => Err("`https://` endpoints without `tls:` settings".to_string()),
            }),
        };
        Some(Arc::new(UpstreamTarget {
            id,
            tls,
            idle_timeout: settings.idle_timeout,
            max_idle: settings.max_idle_per_endpoint,
            grpc_error_codes,
        }))
    }
}

fn tls_target(tls: &UpstreamTls) -> Result<TlsTarget, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in &tls.roots {
        roots
            .add(cert.clone())
            .map_err(|e| format!("a certificate of {}: {e}", tls.ca_file.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match &tls.client {
        None => builder.with_no_client_auth(),
        Some(identity) => builder
            .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
            .map_err(|e| format!("the client certificate and key: {e}"))?,
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let server_name = match &tls.server_name {
        None => None,
        Some(name) => Some(
            ServerName::try_from(name.clone()).map_err(|e| format!("server name `{name}`: {e}"))?,
        ),
    };
    Ok(TlsTarget {
        connector: TlsConnector::from(Arc::new(config)),
        server_name,
    })
}

/// A connection's request side, with what ended its connection when the TLS layer did.
struct Sender {
    send: Send,
    ended: Ended,
}

enum Send {
    H2(http2::SendRequest<RequestBody>),
    H1(http1::SendRequest<RequestBody>),
}

/// What ended a connection: set by the connection's task, read by the requests it cancelled,
/// which see only that their connection closed.
type Ended = Rc<OnceCell<ConnEnd>>;

struct ConnEnd {
    /// The TLS layer ended it (an alert from the upstream, say).
    tls_layer: bool,
    what: String,
}

impl Sender {
    fn is_h2(&self) -> bool {
        matches!(self.send, Send::H2(_))
    }
}

/// A worker's connections to one endpoint of one target.
struct Connections {
    /// The HTTP/2 connection every request shares.
    h2: Option<(http2::SendRequest<RequestBody>, Ended)>,
    /// HTTP/1.1 connections (TLS, where the upstream chose it), each with when it was
    /// last handed out.
    h1: Vec<(http1::SendRequest<RequestBody>, Ended, Instant)>,
    used: Instant,
}

thread_local! {
    /// The worker thread's connections, by (target, endpoint): each worker runs on a thread of
    /// its own, so this is the worker's, and needs no lock.
    static CONNECTIONS: RefCell<foldhash::HashMap<(u64, SocketAddr), Connections>> =
        RefCell::default();
}

/// A live connection to `addr` for `target`, if the worker has one.
fn check_out(target: &UpstreamTarget, addr: SocketAddr) -> Option<Sender> {
    CONNECTIONS.with_borrow_mut(|all| {
        let conns = all.get_mut(&(target.id, addr))?;
        conns.used = Instant::now();
        if let Some((h2, ended)) = &conns.h2 {
            if !h2.is_closed() {
                return Some(Sender {
                    send: Send::H2(h2.clone()),
                    ended: Rc::clone(ended),
                });
            }
            conns.h2 = None;
        }
        conns
            .h1
            .retain(|(c, _, since)| !c.is_closed() && since.elapsed() < target.idle_timeout);
        let ready = conns.h1.iter().position(|(c, _, _)| c.is_ready())?;
        let (h1, ended, _) = conns.h1.swap_remove(ready);
        Some(Sender {
            send: Send::H1(h1),
            ended,
        })
    })
}

/// Keeps a connection for later requests; connections unused for the idle timeout are let
/// go at the same time.
fn check_in(target: &UpstreamTarget, addr: SocketAddr, sender: Sender) {
    CONNECTIONS.with_borrow_mut(|all| {
        let now = Instant::now();
        if !all.contains_key(&(target.id, addr)) {
            // Connections of earlier configurations' settings are never asked for again:
            // they go once idle, looked for whenever an endpoint gets its first connection.
            all.retain(|_, c| now.duration_since(c.used) < target.idle_timeout);
        }
        let conns = all.entry((target.id, addr)).or_insert_with(|| Connections {
            h2: None,
            h1: Vec::new(),
            used: now,
        });
        conns.used = now;
        match sender.send {
            Send::H2(h2) => conns.h2 = Some((h2, sender.ended)),
            Send::H1(h1) if conns.h1.len() < target.max_idle => {
                conns.h1.push((h1, sender.ended, now));
            }
            Send::H1(_) => {}
        }
    });
}

/// Sends `req` to `addr` over `target`'s protocol and returns the response with its body
/// still streaming: a gRPC response's body is a [`GrpcBody`], judged when it ends.
pub(crate) async fn send(
    target: &UpstreamTarget,
    addr: SocketAddr,
    connect_timeout: Duration,
    req: Request<RequestBody>,
    forwarding: &Forwarding<'_>,
) -> Result<Response<ProxyBody>, UpstreamError> {
    let tls = target.tls.is_some();
    let (mut sender, mut reused) = match check_out(target, addr) {
        Some(sender) => (sender, true),
        None => (connect(target, addr, connect_timeout).await?, false),
    };
    let mut req = upstream_request(req, forwarding, sender.is_h2(), tls, addr);
    let resp = loop {
        let sent = match &mut sender.send {
            Send::H2(h2) => {
                // A new connection is shared at once: it takes the next request while this
                // one is in flight (a kept one is still there).
                if !reused {
                    let shared = Sender {
                        send: Send::H2(h2.clone()),
                        ended: Rc::clone(&sender.ended),
                    };
                    check_in(target, addr, shared);
                }
                h2.try_send_request(req).await
            }
            Send::H1(h1) => h1.try_send_request(req).await,
        };
        match sent {
            Ok(resp) => {
                // Ready for another request once this response's body has been read.
                if !sender.is_h2() {
                    check_in(target, addr, sender);
                }
                break resp;
            }
            Err(mut e) => match e.take_message() {
                // A kept connection that died before the request went out hands it back
                // whole: it goes on a new connection (of the same protocol: it is built for
                // one).
                Some(unsent) if reused => {
                    let fresh = connect(target, addr, connect_timeout).await?;
                    if fresh.is_h2() != sender.is_h2() {
                        return Err(exchange_failed(addr, tls, true, e.error(), &fresh.ended));
                    }
                    (sender, reused, req) = (fresh, false, unsent);
                }
                _ => {
                    return Err(exchange_failed(
                        addr,
                        tls,
                        !reused,
                        e.error(),
                        &sender.ended,
                    ));
                }
            },
        }
    };
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let body = if is_grpc(&parts.headers) {
        ProxyBody::Grpc(GrpcBody::new(body, &parts.headers))
    } else {
        ProxyBody::Remote(body)
    };
    Ok(Response::from_parts(parts, body))
}

/// Connects to `addr` and makes the connection `target` asks for, all within `timeout`.
async fn connect(
    target: &UpstreamTarget,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<Sender, UpstreamError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let tcp = super::connect_tcp(addr, deadline, timeout).await?;
    let ended = Ended::default();
    let handshake_failed =
        |e: hyper::Error| exchange_failed(addr, target.tls.is_some(), true, &e, &Ended::default());
    let tls = match &target.tls {
        None => {
            let send = tokio::time::timeout_at(deadline, h2_handshake(TokioIo::new(tcp), &ended))
                .await
                .map_err(|_| connect_timed_out(addr, timeout))?
                .map_err(handshake_failed)?;
            return Ok(Sender {
                send: Send::H2(send),
                ended,
            });
        }
        Some(Err(why)) => {
            return Err(UpstreamError {
                kind: UpstreamErrorKind::Tls,
                detail: format!("TLS to {addr} is not set up: {why}"),
            });
        }
        Some(Ok(tls)) => tls,
    };
    let name = tls
        .server_name
        .clone()
        .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
    let stream = match tokio::time::timeout_at(deadline, tls.connector.connect(name, tcp)).await {
        Err(_) => return Err(connect_timed_out(addr, timeout)),
        Ok(Err(e)) => {
            return Err(UpstreamError {
                kind: UpstreamErrorKind::Tls,
                detail: format!("TLS handshake with {addr} failed: {e}"),
            });
        }
        Ok(Ok(stream)) => stream,
    };
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(stream);
    let sender = if h2 {
        tokio::time::timeout_at(deadline, h2_handshake(io, &ended))
            .await
            .map_err(|_| connect_timed_out(addr, timeout))?
            .map(Send::H2)
    } else {
        tokio::time::timeout_at(deadline, h1_handshake(io, &ended))
            .await
            .map_err(|_| connect_timed_out(addr, timeout))?
            .map(Send::H1)
    };
    let send = sender.map_err(handshake_failed)?;
    Ok(Sender { send, ended })
}

async fn h2_handshake<T>(io: T, ended: &Ended) -> hyper::Result<http2::SendRequest<RequestBody>>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
{
    let (sender, conn) = http2::Builder::new(LocalExec)
        .timer(TokioTimer::new())
        .handshake(io)
        .await?;
    let ended = Rc::clone(ended);
    tokio::task::spawn_local(async move {
        if let Err(e) = conn.await {
            note_end(&ended, &e);
        }
    });
    Ok(sender)
}

async fn h1_handshake<T>(io: T, ended: &Ended) -> hyper::Result<http1::SendRequest<RequestBody>>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
{
    let (sender, conn) = http1::handshake(io).await?;
    let ended = Rc::clone(ended);
    tokio::task::spawn_local(async move {
        if let Err(e) = conn.await {
            note_end(&ended, &e);
        }
    });
    Ok(sender)
}

/// Keeps what ended a connection for the requests it cancelled. Runs in
/// the connection's task as it ends, before any of them is polled again.
fn note_end(ended: &Ended, e: &hyper::Error) {
    tracing::debug!("upstream connection ended: {}", with_sources(e));
    let end = match tls_error(e) {
        Some(tls) => ConnEnd {
            tls_layer: true,
            what: tls.to_string(),
        },
        None => ConnEnd {
            tls_layer: false,
            what: with_sources(e),
        },
    };
    let _ = ended.set(end);
}

/// The request as the upstream gets it: the header lines `forward.rs` writes for the in-task
/// client, then what the protocol needs — for HTTP/2 the authority in the target rather than
/// a `Host` header, and `te: trailers` when the client asked for trailers (gRPC does).
fn upstream_request(
    req: Request<RequestBody>,
    forwarding: &Forwarding<'_>,
    h2: bool,
    tls: bool,
    addr: SocketAddr,
) -> Request<RequestBody> {
    let (parts, body) = req.into_parts();
    let mut lines = Vec::with_capacity(512);
    forwarding.write_headers(&parts.uri, &parts.headers, &mut lines);
    let mut headers = HeaderMap::with_capacity(parts.headers.len() + 6);
    for line in lines.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii_start()),
        ) {
            headers.append(name, value);
        }
    }
    let query = parts.uri.query();
    let path_and_query = match (forwarding.path, query) {
        (Some(path), Some(q)) => format!("{path}?{q}"),
        (Some(path), None) => path.to_string(),
        (None, _) => parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_string(),
    };
    let (uri, version) = if h2 {
        let host = headers.remove(header::HOST);
        let authority = host
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.parse::<http::uri::Authority>().ok())
            .unwrap_or_else(|| endpoint_authority(addr));
        let trailers = parts.headers.get_all(header::TE).iter().any(|te| {
            te.as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"))
        });
        if trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        let uri = Uri::builder()
            .scheme(if tls { "https" } else { "http" })
            .authority(authority)
            .path_and_query(path_and_query)
            .build()
            .unwrap_or_else(|_| Uri::from_static("/"));
        (uri, http::Version::HTTP_2)
    } else {
        if !headers.contains_key(header::HOST)
            && let Ok(host) = HeaderValue::from_str(&addr.to_string())
        {
            headers.insert(header::HOST, host);
        }
        let uri = path_and_query
            .parse::<Uri>()
            .unwrap_or_else(|_| Uri::from_static("/"));
        (uri, http::Version::HTTP_11)
    };
    let mut req = Request::new(body);
    *req.method_mut() = parts.method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    req
}

fn endpoint_authority(addr: SocketAddr) -> http::uri::Authority {
    addr.to_string()
        .parse()
        .unwrap_or_else(|_| http::uri::Authority::from_static("localhost"))
}

/// Removes the response's hop-by-hop fields and those its `Connection` header nominates
/// (an HTTP/1.1 upstream's; HTTP/2 has none).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let nominated: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| hop_by_hop::connection_options(v.as_bytes()))
        .filter_map(|option| match option {
            ConnectionOption::Field(name) => HeaderName::from_bytes(name).ok(),
            _ => None,
        })
        .collect();
    for name in nominated {
        headers.remove(name);
    }
    let hop: Vec<HeaderName> = headers
        .keys()
        .filter(|name| hop_by_hop::is_hop_by_hop(name))
        .cloned()
        .collect();
    for name in hop {
        headers.remove(name);
    }
}

/// Whether a response is gRPC's, whose outcome is its `grpc-status`: `content-type:
/// application/grpc`, `application/grpc+proto`, ... (not gRPC-Web, whose trailers are in the
/// body).
fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|ct| {
        ct.as_bytes()
            .strip_prefix(b"application/grpc")
            .is_some_and(|rest| matches!(rest.first(), None | Some(b'+' | b';')))
    })
}

/// A failed exchange on a connection (`fresh`: its first): a TLS failure or a broken
/// exchange. With TLS 1.3 an upstream refuses a client certificate only after graylane's side
/// of the handshake is done: its alert is read with the first response, or, when the upstream
/// has closed the connection by the time the request is written, lost to a broken pipe. A new
/// TLS connection that the upstream closes before any answer is counted as a TLS failure too.
fn exchange_failed(
    addr: SocketAddr,
    tls: bool,
    fresh: bool,
    e: &hyper::Error,
    ended: &Ended,
) -> UpstreamError {
    if tls {
        let why = match (tls_error(e), ended.get()) {
            (Some(io), _) => Some(io.to_string()),
            (None, Some(end)) if end.tls_layer => Some(end.what.clone()),
            (None, Some(end)) if fresh => Some(format!(
                "the upstream closed the connection right after the handshake (did it refuse the client certificate?): {}",
                end.what
            )),
            _ => None,
        };
        if let Some(why) = why {
            return UpstreamError {
                kind: UpstreamErrorKind::Tls,
                detail: format!("TLS with {addr} failed: {why}"),
            };
        }
    }
    UpstreamError {
        kind: UpstreamErrorKind::Protocol,
        detail: format!("exchange with {addr}: {}", with_sources(e)),
    }
}

/// The TLS layer's error somewhere in `e`'s sources: an I/O error of kind `InvalidData` (how
/// tokio-rustls reports what rustls refused or an alert it received), which an HTTP/2 error
/// holds without naming it as its source.
fn tls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut next = Some(e);
    while let Some(e) = next {
        let io = e
            .downcast_ref::<std::io::Error>()
            .or_else(|| e.downcast_ref::<h2::Error>().and_then(h2::Error::get_io));
        if let Some(io) = io.filter(|io| io.kind() == std::io::ErrorKind::InvalidData) {
            return Some(io);
        }
        next = e.source();
    }
    None
}

/// An error with its sources, which hyper keeps the useful part in.
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
