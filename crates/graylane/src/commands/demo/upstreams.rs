//! The demo's upstreams, each a real server of its protocol on loopback: per version (stable,
//! canary) one port that answers JSON over HTTP/1.1, echoes WebSocket messages and serves the
//! gRPC health service over h2c (prior knowledge); and an HTTPS upstream with a certificate from
//! a certificate authority made at start, whose CA file the gateway is told to trust. The
//! canary's payment answers can be broken on purpose ([`Faults`]), for the demo's story.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Either, Full, channel::Channel};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// The name the HTTPS upstream's certificate is issued for; the gateway checks it.
pub(super) const ACCOUNT_SERVER_NAME: &str = "account.demo.internal";

/// The canary's broken build: while `broken`, every other request to the payment API gets a
/// `503`, enough for the analysis to fail it within an interval or two.
pub(super) struct Faults {
    broken: AtomicBool,
    /// Payment requests answered, to pick which half fails.
    answered: AtomicU64,
}

impl Faults {
    /// Faults that start broken (`true`) or healthy.
    pub(super) fn new(broken: bool) -> Faults {
        Faults {
            broken: AtomicBool::new(broken),
            answered: AtomicU64::new(0),
        }
    }

    /// The fixed build: every answer from now on is healthy.
    pub(super) fn fix(&self) {
        self.broken.store(false, Ordering::Relaxed);
    }

    /// Whether this payment request fails.
    fn fails(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
            && self
                .answered
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(2)
    }
}

/// Where the demo's upstreams listen, and the CA file that signed the HTTPS one.
pub(super) struct Upstreams {
    pub(super) stable: SocketAddr,
    pub(super) canary: SocketAddr,
    pub(super) account: SocketAddr,
    pub(super) ca_file: PathBuf,
}

/// Starts every demo upstream on a background thread; returns where they listen. The
/// canary's payment answers fail as `faults` says.
pub(super) fn start(dir: &Path, faults: Arc<Faults>) -> anyhow::Result<Upstreams> {
    let tls = demo_tls(dir)?;
    let (tx, rx) = std::sync::mpsc::channel();
    crate::runtime::thread("graylane-demo-upstreams", move || {
        let runtime = match crate::runtime::control_plane() {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Err(anyhow::Error::from(e)));
                return;
            }
        };
        runtime.block_on(async move {
            let bound = async {
                let stable = TcpListener::bind("127.0.0.1:0").await?;
                let canary = TcpListener::bind("127.0.0.1:0").await?;
                let account = TcpListener::bind("127.0.0.1:0").await?;
                let addrs = (
                    stable.local_addr()?,
                    canary.local_addr()?,
                    account.local_addr()?,
                );
                anyhow::Ok(((stable, canary, account), addrs))
            }
            .await;
            match bound {
                Ok(((stable, canary, account), (s, c, a))) => {
                    let _ = tx.send(Ok((s, c, a)));
                    tokio::join!(
                        serve(stable, "stable", Arc::new(Faults::new(false))),
                        serve(canary, "canary", faults),
                        serve_tls(account, tls.acceptor),
                    );
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        });
    })?;
    let (stable, canary, account) = rx.recv()??;
    Ok(Upstreams {
        stable,
        canary,
        account,
        ca_file: tls.ca_file,
    })
}

/// A version's upstream: HTTP/1.1 and h2c on one port.
async fn serve(listener: TcpListener, version: &'static str, faults: Arc<Faults>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let faults = Arc::clone(&faults);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let broken = req.uri().path().starts_with("/api/payment") && faults.fails();
                answer(req, version, broken)
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The HTTPS upstream of the `account` service.
async fn serve_tls(listener: TcpListener, acceptor: tokio_rustls::TlsAcceptor) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(stream).await else {
                return;
            };
            let service = service_fn(|req| answer(req, "account", false));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type DemoBody = Either<Full<Bytes>, Channel<Bytes, Infallible>>;

/// Answers `req` as `version`; a `broken` request gets the broken build's `503`.
async fn answer(
    req: Request<Incoming>,
    version: &'static str,
    broken: bool,
) -> Result<Response<DemoBody>, Infallible> {
    let is_grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if is_grpc {
        return Ok(grpc_health(req, version).await);
    }
    if req.uri().path().starts_with("/ws/") && req.headers().contains_key(header::UPGRADE) {
        return Ok(websocket_echo(req, version));
    }
    if broken {
        let body = serde_json::json!({
            "version": version,
            "error": "the demo's broken build of the canary fails every other request",
        });
        let mut resp = Response::new(Either::Left(Full::new(Bytes::from(format!("{body}\n")))));
        *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return Ok(resp);
    }
    Ok(json(&req, version).map(Either::Left))
}

/// A line of JSON naming the version, the path and the lane the gateway put the request on.
fn json(req: &Request<Incoming>, version: &str) -> Response<Full<Bytes>> {
    let lane = req
        .headers()
        .get("x-graylane-lane")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let body = serde_json::json!({
        "version": version,
        "message": format!("hello from the {version} version"),
        "path": req.uri().path(),
        "lane": lane,
    });
    let mut resp = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Accepts a WebSocket upgrade and echoes every text or binary message, prefixed with the
/// version's name so the client sees which version it reached.
fn websocket_echo(mut req: Request<Incoming>, version: &'static str) -> Response<DemoBody> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        let mut bad = Response::new(Either::Left(Full::new(Bytes::from_static(
            b"a WebSocket upgrade needs Sec-WebSocket-Key\n",
        ))));
        *bad.status_mut() = StatusCode::BAD_REQUEST;
        return bad;
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else {
            return;
        };
        let mut socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        use futures_util::{SinkExt, StreamExt};
        while let Some(Ok(message)) = socket.next().await {
            let reply = match message {
                Message::Text(text) => Message::text(format!("{version}: {text}")),
                Message::Binary(bytes) => Message::Binary(bytes),
                Message::Close(_) => break,
                _ => continue,
            };
            if socket.send(reply).await.is_err() {
                break;
            }
        }
    });
    let mut resp = Response::new(Either::Left(Full::new(Bytes::new())));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        headers.insert("sec-websocket-accept", accept);
    }
    resp
}

/// `grpc.health.v1.Health`: `Check` answers SERVING; `Watch` streams SERVING three times, a
/// second apart; any other method is UNIMPLEMENTED. Statuses travel in trailers, as gRPC's do.
async fn grpc_health(req: Request<Incoming>, version: &'static str) -> Response<DemoBody> {
    // HealthCheckResponse { status: SERVING }: field 1, varint 1.
    const SERVING: [u8; 7] = [0, 0, 0, 0, 2, 0x08, 0x01];
    let method = req.uri().path().to_owned();
    // The request message (which service to check) is read and not needed: one service here.
    let _ = req.into_body().collect().await;
    let (mut tx, body) = Channel::<Bytes, Infallible>::new(4);
    let mut resp = Response::new(Either::Right(body));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("x-demo-version", HeaderValue::from_static(version));
    let (status, messages, every) = match method.as_str() {
        "/grpc.health.v1.Health/Check" => ("0", 1, Duration::ZERO),
        "/grpc.health.v1.Health/Watch" => ("0", 3, Duration::from_secs(1)),
        _ => ("12", 0, Duration::ZERO),
    };
    tokio::spawn(async move {
        for i in 0..messages {
            if i > 0 {
                tokio::time::sleep(every).await;
            }
            if tx.send_data(Bytes::from_static(&SERVING)).await.is_err() {
                return;
            }
        }
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static(status));
        if status != "0" {
            trailers.insert(
                "grpc-message",
                HeaderValue::from_static("the demo serves grpc.health.v1.Health only"),
            );
        }
        let _ = tx.send_trailers(trailers).await;
    });
    resp
}

/// The HTTPS upstream's TLS: a CA made now, its certificate written to `dir` for the gateway
/// to trust, and a certificate it signed for [`ACCOUNT_SERVER_NAME`].
struct DemoTls {
    acceptor: tokio_rustls::TlsAcceptor,
    ca_file: PathBuf,
}

fn demo_tls(dir: &Path) -> anyhow::Result<DemoTls> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "graylane demo CA");
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);

    let leaf_key = KeyPair::generate()?;
    let leaf = CertificateParams::new(vec![ACCOUNT_SERVER_NAME.to_owned()])?
        .signed_by(&leaf_key, &issuer)?;

    std::fs::create_dir_all(dir)?;
    let ca_file = dir.join("demo-ca.pem");
    std::fs::write(&ca_file, ca.pem())?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der())
        .map_err(|e| anyhow::anyhow!("the demo's key: {e}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(DemoTls {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        ca_file,
    })
}
