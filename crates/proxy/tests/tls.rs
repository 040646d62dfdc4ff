//! TLS listeners through a real gateway on loopback: a self-signed certificate made at test
//! time, HTTP/1.1 and HTTP/2 chosen by ALPN, `x-forwarded-proto: https` for the upstream, a
//! plain-text client turned away, and unreadable certificate or key files rejected as
//! configuration errors (or failing the start when they vanish after validation).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use graylane_proxy::{Gateway, GatewayOptions};
use http::{Request, Response, StatusCode, Version, header};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// One service on a TLS listener, with a sticky release that keeps everyone on stable. The header read timeout is far above [`REQUEST_TIMEOUT`], so
/// a connection the gateway closes within a test was closed for a reason other than it.
const TLS_GATEWAY: &str = r#"
listeners:
  - bind: 127.0.0.1:0
    tls: { cert: "{cert}", key: "{key}" }
    header_read_timeout: 60s
services:
  - name: web
    match: { path_prefix: /tls }
    versions:
      stable: { endpoints: ["{stable}"] }
      canary: { endpoints: ["{stable}"] }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      sticky: { cookie: lane }
      steps: [{ weight: 0 }]
"#;

/// A self-signed certificate for `localhost` and `127.0.0.1`, its PEM files in a folder of
/// their own (removed on drop).
struct TestCert {
    dir: PathBuf,
    der: CertificateDer<'static>,
}

impl TestCert {
    const CERT_FILE: &'static str = "cert.pem";
    const KEY_FILE: &'static str = "key.pem";

    fn generate(name: &str) -> TestCert {
        let dir = temp_file(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".into()])
                .expect("rcgen makes a self-signed certificate");
        std::fs::write(dir.join(Self::CERT_FILE), cert.pem()).unwrap();
        std::fs::write(dir.join(Self::KEY_FILE), signing_key.serialize_pem()).unwrap();
        TestCert {
            dir,
            der: cert.der().clone(),
        }
    }

    /// A client configuration trusting only this certificate and offering only `alpn`.
    fn connector(&self, alpn: &[u8]) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        TlsConnector::from(Arc::new(config))
    }
}

impl Drop for TestCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The gateway's YAML with a TLS listener using `cert` and `key` (relative to the config
/// folder, or absolute) in front of `upstream`.
fn tls_config(cert: &str, key: &str, upstream: &Upstream) -> String {
    fill(
        TLS_GATEWAY,
        &[
            ("cert", cert.to_string()),
            ("key", key.to_string()),
            ("stable", upstream.addr.to_string()),
        ],
    )
}

fn start(yaml: &str, dir: &Path) -> Result<Gateway, graylane_proxy::StartError> {
    let config = graylane_config::load_str(yaml, "t.yaml", dir)
        .unwrap_or_else(|e| panic!("test configuration is invalid:\n{e}\n---\n{yaml}"));
    Gateway::start(
        config,
        GatewayOptions {
            workers: 2,
            ..Default::default()
        },
    )
}

/// A gateway serving `cert` on a TLS listener in front of `upstream`.
fn tls_gateway(cert: &TestCert, upstream: &Upstream) -> Gateway {
    let yaml = tls_config(TestCert::CERT_FILE, TestCert::KEY_FILE, upstream);
    start(&yaml, &cert.dir).unwrap_or_else(|e| panic!("the TLS gateway starts: {e}"))
}

/// A TLS connection to `addr` checking the certificate against `server_name`, after which
/// the server must have picked `alpn`.
async fn tls_connect(
    cert: &TestCert,
    addr: SocketAddr,
    server_name: &'static str,
    alpn: &[u8],
) -> TlsStream<TcpStream> {
    let connect = async {
        let tcp = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(server_name).unwrap();
        cert.connector(alpn)
            .connect(name, tcp)
            .await
            .unwrap_or_else(|e| panic!("TLS handshake with {addr} as {server_name}: {e}"))
    };
    let tls = tokio::time::timeout(REQUEST_TIMEOUT, connect)
        .await
        .unwrap_or_else(|_| panic!("TLS handshake with {addr} timed out"));
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(alpn),
        "ALPN protocol the gateway chose"
    );
    tls
}

async fn read_reply(resp: Response<Incoming>) -> Reply {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("reading the body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// A 200 from the upstream, stamped by graylane, for a request that reached it over TLS.
#[track_caller]
fn assert_proxied_over_tls(reply: &Reply, path: &str, what: &str) {
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{what}: body {:?}",
        reply.body
    );
    assert_eq!(
        reply.version(),
        Some("stable"),
        "{what}: x-graylane-version"
    );
    assert_eq!(reply.upstream_version(), "stable", "{what}: upstream");
    assert_eq!(reply.json()["path"], path, "{what}: path at the upstream");
    assert_eq!(
        reply.upstream_header("x-forwarded-proto").as_deref(),
        Some("https"),
        "{what}: x-forwarded-proto at the upstream"
    );
}

#[tokio::test]
async fn http1_over_tls_is_proxied_with_forwarded_proto_https() {
    let cert = TestCert::generate("tls-h1");
    let upstream = Upstream::start("stable");
    let gateway = tls_gateway(&cert, &upstream);
    let addr = addr(&gateway);

    let tls = tls_connect(&cert, addr, "localhost", b"http/1.1").await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("HTTP/1.1 handshake over TLS");
    tokio::spawn(async move {
        let _ = conn.await;
    });

    // Two requests on one keep-alive connection; the client's own claim to be plain HTTP is
    // replaced by what the gateway knows.
    for (i, path) in ["/tls/h1/first", "/tls/h1/second"].into_iter().enumerate() {
        let req = Request::get(path)
            .header(header::HOST, format!("localhost:{}", addr.port()))
            .header("x-forwarded-proto", "http")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let exchange = async {
            sender.ready().await.expect("the connection stays open");
            let resp = sender.send_request(req).await.expect("request over TLS");
            assert_eq!(resp.version(), Version::HTTP_11);
            read_reply(resp).await
        };
        let reply = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| panic!("no answer within {REQUEST_TIMEOUT:?}"));
        assert_proxied_over_tls(&reply, path, &format!("HTTP/1.1 request {}", i + 1));
        // The sticky cookie set over TLS is never sent back over plain HTTP.
        let cookie = reply.headers[header::SET_COOKIE].to_str().unwrap();
        assert!(
            cookie.starts_with("lane=v1.") && cookie.ends_with("; Secure"),
            "{cookie}"
        );
    }
    assert_eq!(upstream.received(), 2);
    shutdown(gateway).await;
}

#[tokio::test]
async fn http2_over_tls_is_negotiated_by_alpn_and_proxied() {
    let cert = TestCert::generate("tls-h2");
    let upstream = Upstream::start("stable");
    let gateway = tls_gateway(&cert, &upstream);
    let addr = addr(&gateway);

    // By IP this time: the certificate names 127.0.0.1 too.
    let tls = tls_connect(&cert, addr, "127.0.0.1", b"h2").await;
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("HTTP/2 handshake over TLS");
    tokio::spawn(async move {
        let _ = conn.await;
    });

    // Two streams at once on the one connection.
    let paths = ["/tls/h2/a", "/tls/h2/b"];
    let exchanges = paths.map(|path| {
        let mut sender = sender.clone();
        let req = Request::get(format!("https://127.0.0.1:{}{path}", addr.port()))
            .body(Empty::<Bytes>::new())
            .unwrap();
        async move {
            sender.ready().await.expect("the h2 connection is ready");
            let resp = sender.send_request(req).await.expect("h2 request over TLS");
            assert_eq!(resp.version(), Version::HTTP_2);
            read_reply(resp).await
        }
    });
    let [a, b] = exchanges;
    let (a, b) = tokio::time::timeout(REQUEST_TIMEOUT, async { tokio::join!(a, b) })
        .await
        .unwrap_or_else(|_| panic!("no answers within {REQUEST_TIMEOUT:?}"));
    assert_proxied_over_tls(&a, paths[0], "HTTP/2 stream a");
    assert_proxied_over_tls(&b, paths[1], "HTTP/2 stream b");
    assert_eq!(upstream.received(), 2);
    shutdown(gateway).await;
}

#[tokio::test]
async fn plain_http_to_a_tls_listener_is_not_proxied() {
    let cert = TestCert::generate("tls-plain");
    let upstream = Upstream::start("stable");
    let gateway = tls_gateway(&cert, &upstream);
    let addr = addr(&gateway);

    // The gateway ends the connection on the failed handshake (after a TLS alert), long
    // before the listener's 60 s header read timeout. A reset counts as closed too.
    let mut answer = Vec::new();
    let exchange = async {
        let mut tcp = TcpStream::connect(addr).await.expect("connecting");
        tcp.write_all(b"GET /tls/plain HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .expect("sending a plain-text request");
        tcp.read_to_end(&mut answer).await
    };
    let read = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .expect("the gateway closes a plain-text connection to its TLS port");
    assert!(
        !answer.starts_with(b"HTTP/"),
        "a plain-text request got an HTTP answer ({read:?}): {:?}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(
        upstream.received(),
        0,
        "the plain-text request reached the upstream"
    );

    // The listener still serves TLS clients.
    let tls = tls_connect(&cert, addr, "localhost", b"http/1.1").await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("HTTP/1.1 handshake over TLS");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::get("/tls/after")
        .header(header::HOST, "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let reply = tokio::time::timeout(REQUEST_TIMEOUT, async {
        read_reply(sender.send_request(req).await.expect("request over TLS")).await
    })
    .await
    .unwrap_or_else(|_| panic!("no answer within {REQUEST_TIMEOUT:?}"));
    assert_proxied_over_tls(&reply, "/tls/after", "TLS request after the plain-text one");
    assert_eq!(upstream.received(), 1);
    shutdown(gateway).await;
}

/// Loading the configuration failed with an error naming `file`; returns the error as shown.
#[track_caller]
fn config_error_naming(yaml: &str, dir: &Path, file: &str) -> String {
    match graylane_config::load_str(yaml, "t.yaml", dir) {
        Ok(_) => panic!("the configuration loaded although {file} is unusable"),
        Err(e) => {
            let shown = e.to_string();
            assert!(shown.contains(file), "the error names {file}: {shown}");
            assert!(
                shown.contains("listeners[0].tls."),
                "the error names the key: {shown}"
            );
            shown
        }
    }
}

#[test]
fn unusable_certificate_or_key_files_are_configuration_errors_naming_them() {
    let cert = TestCert::generate("tls-unusable");
    let other = TestCert::generate("tls-unusable-other");
    let upstream = Upstream::start("stable");
    let start_err = |cert_file: &str, key_file: &str, dir: &Path, named: &str| {
        config_error_naming(&tls_config(cert_file, key_file, &upstream), dir, named)
    };

    let shown = start_err(
        "no-such-cert.pem",
        TestCert::KEY_FILE,
        &cert.dir,
        "no-such-cert.pem",
    );
    assert!(
        shown.contains("tls.cert: cannot read certificate"),
        "{shown}"
    );

    let shown = start_err(
        TestCert::CERT_FILE,
        "no-such-key.pem",
        &cert.dir,
        "no-such-key.pem",
    );
    assert!(shown.contains("tls.key: cannot read key"), "{shown}");

    // Absolute paths are taken as they are, not joined to the config folder.
    let absolute = cert
        .dir
        .join("elsewhere")
        .join("gone.pem")
        .display()
        .to_string();
    let key = cert.dir.join(TestCert::KEY_FILE).display().to_string();
    let shown = start_err(
        &absolute,
        &key,
        Path::new("/nonexistent-config-dir"),
        &absolute,
    );
    assert!(shown.contains("cannot read certificate"), "{shown}");

    // A certificate file that is there but holds no certificate (here: the key).
    let shown = start_err(
        TestCert::KEY_FILE,
        TestCert::KEY_FILE,
        &cert.dir,
        TestCert::KEY_FILE,
    );
    assert!(shown.contains("no certificate found"), "{shown}");

    // A key file that is there but holds no key (here: the certificate).
    let shown = start_err(
        TestCert::CERT_FILE,
        TestCert::CERT_FILE,
        &cert.dir,
        TestCert::CERT_FILE,
    );
    assert!(shown.contains("no private key found"), "{shown}");

    // A key that is not the certificate's.
    let other_key = other.dir.join(TestCert::KEY_FILE).display().to_string();
    let shown = start_err(TestCert::CERT_FILE, &other_key, &cert.dir, &other_key);
    assert!(
        shown.contains("is not the key of the certificate"),
        "{shown}"
    );

    assert_eq!(upstream.received(), 0);
}

#[test]
fn certificate_files_gone_between_validation_and_start_fail_the_start_naming_them() {
    let cert = TestCert::generate("tls-gone");
    let upstream = Upstream::start("stable");
    let yaml = tls_config(TestCert::CERT_FILE, TestCert::KEY_FILE, &upstream);
    let config = graylane_config::load_str(&yaml, "t.yaml", &cert.dir).expect("valid at first");
    std::fs::remove_file(cert.dir.join(TestCert::KEY_FILE)).unwrap();
    match Gateway::start(config, GatewayOptions::default()) {
        Ok(gateway) => {
            gateway.shutdown();
            panic!("the gateway started without its key");
        }
        Err(e) => {
            let shown = e.to_string();
            assert!(
                matches!(e, graylane_proxy::StartError::Tls { .. }),
                "a TLS error, not {shown}"
            );
            assert!(
                shown.contains("listeners[0].tls.key: cannot read key")
                    && shown.contains(TestCert::KEY_FILE),
                "{shown}"
            );
        }
    }
}
