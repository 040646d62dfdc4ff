//! Certificates made at test time (self-signed, or signed by a test [`Authority`]) and a TLS
//! client that reports which certificate a server showed: for the tests of listener
//! certificates (rotation, SNI) and of TLS to OTLP collectors.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::REQUEST_TIMEOUT;

/// Every PEM file [`write_pair`] writes is padded to these sizes, so a file rewritten with
/// another certificate keeps its length (and, with its time put back, looks unchanged to a
/// poll of the file).
const CERT_FILE_SIZE: usize = 4096;
const KEY_FILE_SIZE: usize = 1024;

/// A self-signed certificate and its key, as PEM, with its DER to recognise it by.
#[derive(Clone)]
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
    /// The certificate, DER: what a client is shown.
    pub der: CertificateDer<'static>,
}

/// A new self-signed certificate (with a new key) for `names`.
pub fn issue(names: &[&str]) -> Issued {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(names).expect("rcgen makes a self-signed certificate");
    Issued {
        cert_pem: cert.pem(),
        key_pem: signing_key.serialize_pem(),
        der: cert.der().clone(),
    }
}

/// A certificate authority made for one test: a `ca:` file's certificate, and the issuer of
/// server and client certificates that lead to it.
pub struct Authority {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Authority {
    /// A new authority with a new key.
    pub fn new() -> Authority {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
            .expect("rcgen takes an empty name list");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().expect("rcgen makes a key");
        Authority {
            issuer: rcgen::CertifiedIssuer::self_signed(params, key)
                .expect("rcgen makes a CA certificate"),
        }
    }

    /// Its certificate, PEM: what a `ca:` file holds.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// Its certificate, DER: a root for a rustls verifier.
    pub fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A certificate for `names` (DNS names, or IP addresses such as `127.0.0.1`) signed by
    /// this authority, with a new key.
    pub fn issue(&self, names: &[&str]) -> Issued {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = rcgen::CertificateParams::new(names).expect("rcgen takes the names");
        let key = rcgen::KeyPair::generate().expect("rcgen makes a key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("the authority signs the certificate");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

impl Default for Authority {
    fn default() -> Authority {
        Authority::new()
    }
}

fn padded(pem: &str, size: usize) -> Vec<u8> {
    assert!(pem.len() < size, "a PEM of {} bytes", pem.len());
    let mut bytes = pem.as_bytes().to_vec();
    bytes.resize(size, b'\n');
    bytes
}

/// Writes `issued` to `cert` and `key`, in place (same inodes), padded to fixed sizes.
pub fn write_pair(cert: &Path, key: &Path, issued: &Issued) {
    std::fs::write(cert, padded(&issued.cert_pem, CERT_FILE_SIZE)).unwrap();
    std::fs::write(key, padded(&issued.key_pem, KEY_FILE_SIZE)).unwrap();
}

/// Writes `issued` over files [`write_pair`] wrote, keeping their length, inode and
/// modification time: a change only an explicit reload notices.
pub fn write_pair_unnoticed(cert: &Path, key: &Path, issued: &Issued) {
    let paths: [PathBuf; 2] = [cert.to_path_buf(), key.to_path_buf()];
    let times: Vec<_> = paths
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().modified().unwrap())
        .collect();
    write_pair(cert, key, issued);
    for (path, time) in paths.iter().zip(times) {
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(time)
            .unwrap();
    }
}

/// Accepts whatever certificate the server shows (its signatures are still checked): the
/// tests look at which one it chose, including for names it does not cover.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// An HTTP/1.1 connection over TLS to `addr` asking for the name `sni` (`None`: no name, as a
/// client connecting by IP sends none): the certificate the server showed, and the sender.
pub async fn connect(
    addr: SocketAddr,
    sni: Option<&str>,
) -> (CertificateDer<'static>, SendRequest<Empty<Bytes>>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = match sni {
        Some(n) => ServerName::try_from(n.to_string()).unwrap(),
        None => ServerName::IpAddress(addr.ip().into()),
    };
    let handshake = async {
        let tcp = TcpStream::connect(addr).await.expect("connecting");
        let tls = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .unwrap_or_else(|e| panic!("TLS handshake with {addr} asking for {sni:?}: {e}"));
        let shown = tls.get_ref().1.peer_certificates().expect("a certificate")[0].clone();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .expect("HTTP/1.1 over TLS");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        (shown, sender)
    };
    tokio::time::timeout(REQUEST_TIMEOUT, handshake)
        .await
        .expect("the TLS handshake finishes in time")
}

/// The certificate a new connection to `addr` asking for `sni` is shown.
pub async fn shown(addr: SocketAddr, sni: Option<&str>) -> CertificateDer<'static> {
    connect(addr, sni).await.0
}

/// The status of a `GET path` sent on an open connection (from [`connect`]), its body read.
pub async fn status_on(
    sender: &mut SendRequest<Empty<Bytes>>,
    path: &str,
) -> Result<http::StatusCode, String> {
    use http_body_util::BodyExt;
    let exchange = async {
        sender
            .ready()
            .await
            .map_err(|e| format!("the connection is closed: {e}"))?;
        let req = http::Request::get(path)
            .header(http::header::HOST, "localhost")
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("no response: {e}"))?;
        let status = resp.status();
        resp.into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?;
        Ok(status)
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))?
}
