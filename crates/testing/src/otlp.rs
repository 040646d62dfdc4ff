//! A real OTLP trace receiver on 127.0.0.1, as an OpenTelemetry Collector would be: HTTP
//! (`POST /v1/traces` with a protobuf `ExportTraceServiceRequest`) or gRPC (the OTLP
//! `TraceService`), decoded with `opentelemetry-proto` and kept for the tests' assertions;
//! over plain TCP or TLS ([`ReceiverTls`]), optionally requiring a client certificate.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;

/// How the receiver takes exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `http/protobuf`.
    HttpProtobuf,
    /// `grpc`.
    Grpc,
}

/// The TLS a receiver serves: its certificate and key, and the authority a client's
/// certificate must come from when it requires one.
#[derive(Debug, Clone)]
pub struct ReceiverTls {
    /// The server's certificate chain, PEM.
    pub cert_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
    /// `Some`: a client must present a certificate leading to these (PEM), else the handshake
    /// fails.
    pub client_ca_pem: Option<String>,
}

/// A span as the receiver decoded it, with ids in lower-case hex.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// The span's name.
    pub name: String,
    /// `SPAN_KIND_SERVER`, `SPAN_KIND_CLIENT`, `SPAN_KIND_INTERNAL`, ...
    pub kind: String,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits, or empty for a root span.
    pub parent_span_id: String,
    /// The attributes, their values as text (`true`, `42`, `0.5`, `GET`).
    pub attributes: BTreeMap<String, String>,
    /// The span's status: an error.
    pub error: bool,
    /// The span's start and end, in nanoseconds since the Unix epoch.
    pub start_unix_nanos: u64,
    /// See `start_unix_nanos`.
    pub end_unix_nanos: u64,
    /// The resource's `service.name`.
    pub service_name: String,
}

impl ReceivedSpan {
    /// The attribute `key`, if the span has it.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

#[derive(Default)]
struct Received {
    spans: Vec<ReceivedSpan>,
    /// The headers (or gRPC metadata) of every export, by lower-case name.
    headers: Vec<BTreeMap<String, String>>,
}

/// An OTLP receiver on a loopback port the kernel picked; stops when dropped.
pub struct OtlpReceiver {
    /// Where it listens.
    pub addr: SocketAddr,
    /// How it takes exports.
    pub protocol: Protocol,
    tls: bool,
    received: Arc<Mutex<Received>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl OtlpReceiver {
    /// Starts a receiver speaking `protocol` over plain TCP.
    pub fn start(protocol: Protocol) -> OtlpReceiver {
        OtlpReceiver::serve(protocol, None)
    }

    /// Starts a receiver speaking `protocol` over TLS.
    pub fn start_tls(protocol: Protocol, tls: ReceiverTls) -> OtlpReceiver {
        OtlpReceiver::serve(protocol, Some(tls))
    }

    fn serve(protocol: Protocol, tls: Option<ReceiverTls>) -> OtlpReceiver {
        let secure = tls.is_some();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let addr = listener.local_addr().expect("a bound address");
        let received = Arc::new(Mutex::new(Received::default()));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let state = Arc::clone(&received);
        let thread = std::thread::Builder::new()
            .name("otlp-receiver".to_string())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                runtime.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
                    match protocol {
                        Protocol::HttpProtobuf => {
                            let acceptor = tls.map(|tls| {
                                tokio_rustls::TlsAcceptor::from(Arc::new(server_config(&tls)))
                            });
                            tokio::select! {
                                () = serve_http(listener, acceptor, state) => {}
                                _ = stop_rx => {}
                            }
                        }
                        Protocol::Grpc => {
                            let mut builder = tonic::transport::Server::builder();
                            if let Some(tls) = tls {
                                builder = builder
                                    .tls_config(grpc_tls(&tls))
                                    .expect("tonic takes the TLS settings");
                            }
                            let server = builder
                                .add_service(TraceServiceServer::new(Grpc(state)))
                                .serve_with_incoming_shutdown(
                                    tonic::transport::server::TcpIncoming::from(listener),
                                    async {
                                        let _ = stop_rx.await;
                                    },
                                );
                            let _ = server.await;
                        }
                    }
                });
                drop(runtime);
            })
            .expect("a thread");
        OtlpReceiver {
            addr,
            protocol,
            tls: secure,
            received,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// The `telemetry.otlp.endpoint` that reaches it: `http://127.0.0.1:PORT`, or `https://`
    /// when it serves TLS.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The `telemetry.otlp.protocol` it speaks.
    pub fn protocol_name(&self) -> &'static str {
        match self.protocol {
            Protocol::HttpProtobuf => "http/protobuf",
            Protocol::Grpc => "grpc",
        }
    }

    /// Every span received so far, in order of arrival.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.lock().spans.clone()
    }

    /// The headers (gRPC metadata) each export came with.
    pub fn export_headers(&self) -> Vec<BTreeMap<String, String>> {
        self.lock().headers.clone()
    }

    /// Waits (up to `limit`) until `done` holds for the spans received, and returns them;
    /// panics naming `what` when it does not.
    pub fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        mut done: impl FnMut(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        crate::wait::wait_for(what, limit, || done(&self.lock().spans));
        self.spans()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Received> {
        self.received.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn keep(
    state: &Mutex<Received>,
    request: ExportTraceServiceRequest,
    headers: BTreeMap<String, String>,
) {
    let mut received = state.lock().unwrap_or_else(|e| e.into_inner());
    received.headers.push(headers);
    for resource_spans in request.resource_spans {
        let service_name = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .map(|kv| text(kv.value.as_ref().and_then(|v| v.value.as_ref())))
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                let kind =
                    opentelemetry_proto::tonic::trace::v1::span::SpanKind::try_from(span.kind)
                        .map(|k| k.as_str_name().to_string())
                        .unwrap_or_default();
                received.spans.push(ReceivedSpan {
                    name: span.name,
                    kind,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| {
                            (
                                kv.key.clone(),
                                text(kv.value.as_ref().and_then(|v| v.value.as_ref())),
                            )
                        })
                        .collect(),
                    // STATUS_CODE_ERROR is 2.
                    error: span.status.as_ref().is_some_and(|s| s.code == 2),
                    start_unix_nanos: span.start_time_unix_nano,
                    end_unix_nanos: span.end_time_unix_nano,
                    service_name: service_name.clone(),
                });
            }
        }
    }
}

fn text(value: Option<&Value>) -> String {
    match value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The rustls settings of `tls`: its certificate, and the client verifier it asks for.
fn server_config(tls: &ReceiverTls) -> rustls::ServerConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(tls.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("the receiver's certificate is PEM");
    let key = PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes()).expect("the key is PEM");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("ring's protocol versions");
    let builder = match &tls.client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                roots
                    .add(cert.expect("the client CA is PEM"))
                    .expect("a usable client CA");
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .expect("a client verifier");
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .expect("the key is the certificate's");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// tonic's TLS of `tls`.
fn grpc_tls(tls: &ReceiverTls) -> tonic::transport::ServerTlsConfig {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let config = ServerTlsConfig::new().identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem));
    match &tls.client_ca_pem {
        Some(ca) => config.client_ca_root(Certificate::from_pem(ca)),
        None => config,
    }
}

async fn serve_http(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<Mutex<Received>>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = Arc::clone(&state);
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, state).await,
                // A client that does not trust the certificate, or shows none when one is
                // required, is dropped: nothing it sends is kept.
                Some(tls) => {
                    if let Ok(stream) = tls.accept(stream).await {
                        serve_connection(stream, state).await;
                    }
                }
            }
        });
    }
}

async fn serve_connection<S>(stream: S, state: Arc<Mutex<Received>>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let state = Arc::clone(&state);
        async move { Ok::<_, Infallible>(export_http(req, &state).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

async fn export_http(req: Request<Incoming>, state: &Mutex<Received>) -> Response<Full<Bytes>> {
    let answer = |status: StatusCode, body: Bytes| {
        Response::builder()
            .status(status)
            .header("content-type", "application/x-protobuf")
            .body(Full::new(body))
            .expect("a response")
    };
    if req.method() != http::Method::POST || req.uri().path() != "/v1/traces" {
        return answer(StatusCode::NOT_FOUND, Bytes::new());
    }
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let Ok(body) = req.into_body().collect().await else {
        return answer(StatusCode::BAD_REQUEST, Bytes::new());
    };
    match ExportTraceServiceRequest::decode(body.to_bytes()) {
        Ok(request) => {
            keep(state, request, headers);
            let response = ExportTraceServiceResponse::default();
            answer(StatusCode::OK, Bytes::from(response.encode_to_vec()))
        }
        Err(_) => answer(StatusCode::BAD_REQUEST, Bytes::new()),
    }
}

struct Grpc(Arc<Mutex<Received>>);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let headers = request
            .metadata()
            .clone()
            .into_headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        keep(&self.0, request.into_inner(), headers);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}
