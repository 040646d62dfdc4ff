//! Upstreams spoken to over `h2c://` and `https://` through a real gateway on loopback: a test
//! certificate authority made at test time (graylane-testing), HTTP/2 or HTTP/1.1 as the upstream picks by
//! ALPN, a certificate from another authority refused with a `502` naming TLS, a client
//! certificate presented to an upstream that requires one, and the configuration errors of
//! the new keys.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use graylane_testing::tls::Authority;
use graylane_testing::upstream::Speaks;
use http::StatusCode;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate authority made for one test, its files in a folder of their own.
struct TestCa {
    dir: PathBuf,
    authority: Authority,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let dir = temp_file(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let authority = Authority::new();
        std::fs::write(dir.join("ca.pem"), authority.cert_pem()).unwrap();
        TestCa { dir, authority }
    }

    fn ca_file(&self) -> String {
        self.dir.join("ca.pem").display().to_string()
    }

    /// A certificate for `127.0.0.1` and `localhost` signed by this authority, written as
    /// `{stem}.pem` and `{stem}.key`; returns the two paths.
    fn issue(&self, stem: &str) -> (String, String) {
        let issued = self.authority.issue(&["127.0.0.1", "localhost"]);
        let cert_file = self.dir.join(format!("{stem}.pem"));
        let key_file = self.dir.join(format!("{stem}.key"));
        std::fs::write(&cert_file, issued.cert_pem).unwrap();
        std::fs::write(&key_file, issued.key_pem).unwrap();
        (
            cert_file.display().to_string(),
            key_file.display().to_string(),
        )
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TLS upstream with a certificate from `ca`, offering `alpn`; when `client_ca` is given it
/// requires a client certificate from that authority.
fn tls_upstream(
    name: &'static str,
    ca: &TestCa,
    alpn: &[&[u8]],
    client_ca: Option<&TestCa>,
) -> Upstream {
    let (cert, key) = ca.issue(name);
    let chain = vec![CertificateDer::from_pem_file(&cert).unwrap()];
    let key = PrivateKeyDer::from_pem_file(&key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(client_ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(client_ca.authority.der()).unwrap();
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    Upstream::serve_speaking(listener, name, Speaks::Tls(acceptor))
}

/// One service whose `stable` version is at `endpoint`, with `tls` (YAML flow mapping, or
/// empty) under it.
fn gateway_to(endpoint: &str, tls: &str) -> graylane_proxy::Gateway {
    let tls = if tls.is_empty() {
        String::new()
    } else {
        format!(", tls: {tls}")
    };
    start_gateway(config(&format!(
        "listeners: [{{ bind: 127.0.0.1:0 }}]\nservices:\n  - name: api\n    versions:\n      stable: {{ endpoints: [\"{endpoint}\"]{tls} }}\n"
    )))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_trusted_by_the_configured_ca_is_spoken_to_over_http2_by_alpn() {
    let ca = TestCa::new("https-h2");
    let upstream = tls_upstream("stable", &ca, &[b"h2", b"http/1.1"], None);
    let gateway = gateway_to(
        &format!("https://{}", upstream.addr),
        &format!("{{ ca: \"{}\" }}", ca.ca_file()),
    );
    let r = get(addr(&gateway), "/orders?id=7", &[("x-request-id", "abc")]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.version(), Some("stable"));
    let echoed = r.json();
    assert_eq!(echoed["http_version"], "HTTP/2.0");
    assert!(
        echoed["path"].as_str().unwrap().ends_with("/orders?id=7"),
        "{echoed}"
    );
    let headers = &echoed["headers"];
    assert_eq!(headers["x-request-id"], "abc");
    assert_eq!(headers["x-graylane-lane"], "stable");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    shutdown(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_that_picks_http1_gets_http1_on_a_kept_alive_connection() {
    let ca = TestCa::new("https-h1");
    let upstream = tls_upstream("stable", &ca, &[b"http/1.1"], None);
    let gateway = start_gateway(config(&format!(
        "listeners: [{{ bind: 127.0.0.1:0 }}]\nservices:\n  - name: api\n    versions:\n      stable: {{ endpoints: [\"https://{}\"], tls: {{ ca: \"{}\", server_name: localhost }} }}\n",
        upstream.addr,
        ca.ca_file()
    )));
    // One worker's connection at a time: each request after the first finds it idle.
    for i in 0..3 {
        let r = get(addr(&gateway), "/h1", &[]).await;
        assert_eq!(r.status, StatusCode::OK, "request {i}: {}", r.text());
        assert_eq!(r.json()["http_version"], "HTTP/1.1");
    }
    assert!(
        upstream.connections() <= 2,
        "at most one connection per worker, got {}",
        upstream.connections()
    );
    shutdown(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_connections_outlive_a_routing_change() {
    let ca = TestCa::new("https-weights");
    let upstream = tls_upstream("stable", &ca, &[b"h2"], None);
    let gateway = start_gateway(config(&format!(
        "listeners: [{{ bind: 127.0.0.1:0 }}]\nservices:\n  - name: api\n    versions:\n      stable: {{ endpoints: [\"https://{}\"], tls: {{ ca: \"{}\" }} }}\n      canary: {{ endpoints: [\"{}\"] }}\n    release: {{ strategy: canary, baseline: stable, candidate: canary, steps: [{{ weight: 0 }}, {{ weight: 100 }}] }}\n",
        upstream.addr,
        ca.ca_file(),
        closed_port()
    )));
    for _ in 0..4 {
        assert_eq!(get(addr(&gateway), "/", &[]).await.status, StatusCode::OK);
    }
    let before = upstream.connections();
    // A new routing snapshot, as every step of a release makes.
    gateway
        .set_weight("api", graylane_config::Weight::from_percent(0.0).unwrap())
        .unwrap();
    for _ in 0..4 {
        assert_eq!(get(addr(&gateway), "/", &[]).await.status, StatusCode::OK);
    }
    assert_eq!(
        upstream.connections(),
        before,
        "the requests went on the connections already made"
    );
    shutdown(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_whose_certificate_another_ca_signed_gets_a_502_naming_tls() {
    let ca = TestCa::new("https-right");
    let other = TestCa::new("https-wrong");
    let upstream = tls_upstream("stable", &ca, &[b"h2", b"http/1.1"], None);
    let gateway = gateway_to(
        &format!("https://{}", upstream.addr),
        &format!("{{ ca: \"{}\" }}", other.ca_file()),
    );
    let r = get(addr(&gateway), "/", &[]).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    let body = r.json();
    assert_eq!(body["kind"], "tls", "{body}");
    assert!(body["error"].as_str().unwrap().contains("TLS"), "{body}");
    assert_eq!(upstream.received(), 0);
    let text = gateway.metrics().encode();
    assert_eq!(
        metric_value(
            &text,
            r#"graylane_upstream_errors_total{service="api",version="stable",kind="tls"}"#
        ),
        Some(1.0),
        "{text}"
    );
    shutdown(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_client_certificate_is_presented_to_an_upstream_that_requires_one() {
    let ca = TestCa::new("mtls");
    let (client_cert, client_key) = ca.issue("graylane-client");
    let upstream = tls_upstream("stable", &ca, &[b"h2", b"http/1.1"], Some(&ca));
    let with_cert = gateway_to(
        &format!("https://{}", upstream.addr),
        &format!(
            "{{ ca: \"{}\", client_cert: \"{client_cert}\", client_key: \"{client_key}\" }}",
            ca.ca_file()
        ),
    );
    let r = get(addr(&with_cert), "/", &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    shutdown(with_cert).await;

    let without = gateway_to(
        &format!("https://{}", upstream.addr),
        &format!("{{ ca: \"{}\" }}", ca.ca_file()),
    );
    let r = get(addr(&without), "/", &[]).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.json()["kind"], "tls", "{}", r.text());
    shutdown(without).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_upstream_gets_plain_http_over_http2_with_a_streamed_body() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = Upstream::serve_speaking(listener, "stable", Speaks::H2c);
    let gateway = gateway_to(&format!("h2c://{}", upstream.addr), "");
    let r = get(addr(&gateway), "/plain", &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.version(), Some("stable"));
    assert_eq!(r.json()["http_version"], "HTTP/2.0");

    // Longer than the read-ahead: the rest is streamed to the upstream.
    let big = "x".repeat(200 * 1024);
    let r = request(
        addr(&gateway),
        http::Method::POST,
        "/upload",
        &[],
        bytes::Bytes::from(big.clone()),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["body"].as_str().map(str::len), Some(big.len()));
    shutdown(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_connection_that_died_is_made_anew_for_the_next_request() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = Upstream::serve_speaking(listener, "stable", Speaks::H2c);
    let at = upstream.addr;
    let gateway = gateway_to(&format!("h2c://{at}"), "");
    // Both workers hold a connection.
    for _ in 0..4 {
        let r = get(addr(&gateway), "/before", &[]).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    upstream.kill();
    let listener = std::net::TcpListener::bind(at).unwrap();
    let restarted = Upstream::serve_speaking(listener, "stable", Speaks::H2c);
    for i in 0..4 {
        let r = get(addr(&gateway), "/after", &[]).await;
        assert_eq!(r.status, StatusCode::OK, "request {i}: {}", r.text());
    }
    assert!(restarted.received() >= 4);
    shutdown(gateway).await;
}

/// The configuration error for `yaml`, read from `dir`.
fn config_error(yaml: &str, dir: &Path) -> String {
    match graylane_config::load_str(yaml, "t.yaml", dir) {
        Ok(_) => panic!("the configuration should be refused:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn endpoints_of_one_version_with_two_schemes_are_refused_naming_the_version_and_endpoint() {
    let err = config_error(
        "listeners: [{ bind: 127.0.0.1:0 }]\nservices:\n  - name: api\n    versions:\n      canary: { endpoints: [\"h2c://127.0.0.1:9001\", \"http://127.0.0.1:9002\"] }\n",
        Path::new("."),
    );
    assert!(
        err.contains("services[0].versions.canary.endpoints[1]"),
        "{err}"
    );
    assert!(
        err.contains("version `canary` must use one scheme"),
        "{err}"
    );
}

#[test]
fn an_unknown_scheme_is_refused_naming_the_ones_graylane_speaks() {
    let err = config_error(
        "listeners: [{ bind: 127.0.0.1:0 }]\nservices:\n  - name: api\n    versions:\n      stable: { endpoints: [\"127.0.0.1:9001\", \"grpc://127.0.0.1:9002\"] }\n",
        Path::new("."),
    );
    assert!(
        err.contains("services[0].versions.stable.endpoints[1]"),
        "{err}"
    );
    assert!(err.contains("unknown scheme `grpc://`"), "{err}");
    assert!(err.contains("`h2c://`"), "{err}");
}

#[test]
fn an_unreadable_ca_file_is_refused_naming_the_key_and_the_file() {
    let err = config_error(
        "listeners: [{ bind: 127.0.0.1:0 }]\nservices:\n  - name: api\n    versions:\n      stable: { endpoints: [\"https://127.0.0.1:9443\"], tls: { ca: missing-ca.pem } }\n",
        Path::new("/nonexistent-graylane-dir"),
    );
    assert!(err.contains("services[0].versions.stable.tls.ca"), "{err}");
    assert!(
        err.contains("/nonexistent-graylane-dir/missing-ca.pem"),
        "{err}"
    );
}

#[test]
fn a_ca_file_without_a_certificate_is_refused() {
    let dir = temp_file("not-pem");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ca.pem"), "not a certificate\n").unwrap();
    let err = config_error(
        "listeners: [{ bind: 127.0.0.1:0 }]\nservices:\n  - name: api\n    versions:\n      stable: { endpoints: [\"https://127.0.0.1:9443\"], tls: { ca: ca.pem } }\n",
        &dir,
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(err.contains("tls.ca"), "{err}");
    assert!(err.contains("no PEM certificate"), "{err}");
}

#[test]
fn tls_settings_on_plain_http_endpoints_and_https_without_a_ca_are_refused() {
    let err = config_error(
        "listeners: [{ bind: 127.0.0.1:0 }]\nservices:\n  - name: api\n    versions:\n      stable: { endpoints: [\"127.0.0.1:9001\"], tls: { server_name: api } }\n      canary: { endpoints: [\"https://127.0.0.1:9443\"] }\n",
        Path::new("."),
    );
    assert!(err.contains("services[0].versions.stable.tls"), "{err}");
    assert!(err.contains("services[0].versions.canary.tls.ca"), "{err}");
}

#[test]
fn an_unknown_grpc_code_name_is_refused_with_a_suggestion() {
    let err = config_error(
        "listeners: [{ bind: 127.0.0.1:0 }]\nservices:\n  - name: api\n    grpc: { error_codes: [UNAVAILABLE, INTERNL, 99] }\n    versions:\n      stable: { endpoints: [\"h2c://127.0.0.1:9001\"] }\n",
        Path::new("."),
    );
    assert!(err.contains("services[0].grpc.error_codes[1]"), "{err}");
    assert!(err.contains("did you mean `INTERNAL`"), "{err}");
    assert!(err.contains("services[0].grpc.error_codes[2]"), "{err}");
}
