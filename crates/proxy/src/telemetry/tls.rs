//! TLS to an `https://` OTLP collector, always verified: against `telemetry.otlp.tls.ca`, or
//! Mozilla's roots (webpki-roots) without it; with the client certificate of `client_cert` when
//! set. `grpc` is given tonic's `ClientTlsConfig`; `http/protobuf` a hyper client whose
//! connector speaks TLS (tokio-rustls) after opening the connection. A handshake that fails
//! (an unknown authority, the wrong name) fails that export, as a refused connection does.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use graylane_config::OtlpTls;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig, Identity};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;

/// The gRPC client's TLS of `tls`.
pub(super) fn grpc(tls: &OtlpTls) -> ClientTlsConfig {
    let mut config = ClientTlsConfig::new();
    config = match &tls.ca_pem {
        Some(pem) => config.ca_certificate(Certificate::from_pem(pem)),
        None => config.trust_anchors(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    };
    if let Some(name) = &tls.server_name {
        config = config.domain_name(name.clone());
    }
    if let Some(client) = &tls.client {
        config = config.identity(Identity::from_pem(&client.cert_pem, &client.key_pem));
    }
    config
}

/// The HTTP client's connector for `tls`; an error names the key of the PEM that no longer
/// reads (the files were checked at load; this reads what was kept then).
pub(super) fn https_connector(tls: &OtlpTls) -> Result<HttpsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_pem {
        Some(pem) => {
            let certs = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("telemetry.otlp.tls.ca: {e}"))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err("telemetry.otlp.tls.ca: no usable certificate".to_string());
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots);
    let mut config = match &tls.client {
        None => builder.with_no_client_auth(),
        Some(client) => {
            let chain = CertificateDer::pem_slice_iter(&client.cert_pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("telemetry.otlp.tls.client_cert: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(&client.key_pem)
                .map_err(|e| format!("telemetry.otlp.tls.client_key: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("telemetry.otlp.tls.client_key: {e}"))?
        }
    };
    // The exporter's requests are HTTP/1.1; a collector that offers h2 speaks 1.1 too.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let server_name = tls
        .server_name
        .as_deref()
        .map(|n| ServerName::try_from(n.to_string()).map_err(|e| e.to_string()))
        .transpose()?;
    let mut http = HttpConnector::new();
    // The scheme is https: this connector opens the TCP connection, TLS comes after.
    http.enforce_http(false);
    Ok(HttpsConnector {
        http,
        tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        server_name,
    })
}

/// Opens a TCP connection to a collector and speaks TLS over it.
#[derive(Clone)]
pub(crate) struct HttpsConnector {
    http: HttpConnector,
    tls: tokio_rustls::TlsConnector,
    /// `server_name`, else the URI's host.
    server_name: Option<ServerName<'static>>,
}

impl fmt::Debug for HttpsConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpsConnector")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<http::Uri> for HttpsConnector {
    type Response = TlsIo;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<TlsIo, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let name = match &self.server_name {
            Some(name) => Ok(name.clone()),
            None => {
                let host = uri.host().unwrap_or_default();
                let host = host
                    .strip_prefix('[')
                    .and_then(|h| h.strip_suffix(']'))
                    .unwrap_or(host);
                ServerName::try_from(host.to_string())
                    .map_err(|e| BoxError::from(format!("`{host}`: {e}")))
            }
        };
        let connecting = self.http.call(uri);
        let tls = self.tls.clone();
        Box::pin(async move {
            let name = name?;
            let tcp = connecting.await?.into_inner();
            let stream = tls.connect(name, tcp).await?;
            Ok(TlsIo(TokioIo::new(stream)))
        })
    }
}

/// A TLS connection to a collector, as hyper reads and writes it.
pub(crate) struct TlsIo(TokioIo<tokio_rustls::client::TlsStream<TcpStream>>);

impl Connection for TlsIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for TlsIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for TlsIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}
