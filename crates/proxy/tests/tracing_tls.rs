//! Traces exported to `https://` OTLP collectors over real TLS (a test authority made with
//! rcgen, the receiver of graylane-testing serving `http/protobuf` and `grpc`): spans arrive
//! when the collector's certificate leads to `tls.ca`; a client certificate is presented to a
//! collector that requires one; `server_name` names the certificate an IP endpoint must carry;
//! and a collector whose certificate does not verify (another authority, a name it does not
//! carry, none of Mozilla's roots) gets nothing while the export error counter rises and
//! requests are answered as ever.

mod common;

use std::path::PathBuf;

use common::*;
use graylane_proxy::Gateway;
use graylane_testing::otlp::{OtlpReceiver, Protocol, ReceiverTls};
use graylane_testing::tls::{Authority, Issued};
use http::StatusCode;

/// PEM files written for one test, in a folder of their own.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn new(name: &str) -> Files {
        let dir = temp_file(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Files { dir }
    }

    /// Writes `pem` as `name` and returns its path.
    fn write(&self, name: &str, pem: &str) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path.display().to_string()
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A receiver over TLS showing `cert`, requiring a client certificate from `client_ca`.
fn receiver(protocol: Protocol, cert: &Issued, client_ca: Option<&Authority>) -> OtlpReceiver {
    OtlpReceiver::start_tls(
        protocol,
        ReceiverTls {
            cert_pem: cert.cert_pem.clone(),
            key_pem: cert.key_pem.clone(),
            client_ca_pem: client_ca.map(Authority::cert_pem),
        },
    )
}

/// A gateway with one service at `upstream` exporting every trace to `receiver` with `tls`
/// (a YAML flow mapping, or empty for none).
fn gateway(upstream: &Upstream, receiver: &OtlpReceiver, tls: &str) -> Gateway {
    let tls = if tls.is_empty() {
        String::new()
    } else {
        format!(", tls: {tls}")
    };
    start_gateway(config(&format!(
        "listeners: [{{ bind: 127.0.0.1:0 }}]\ntelemetry:\n  otlp: {{ endpoint: \"{}\", protocol: {}, sample: 1{tls} }}\nservices:\n  - name: api\n    versions:\n      stable: {{ endpoints: [\"{}\"] }}\n",
        receiver.endpoint(),
        receiver.protocol_name(),
        upstream.addr
    )))
}

/// A request is answered, and its server span reaches `receiver`.
async fn a_traced_request_arrives(gateway: &Gateway, receiver: &OtlpReceiver) {
    let r = get(addr(gateway), "/orders", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    eventually("the request's server span at the collector", || async {
        receiver
            .spans()
            .iter()
            .any(|s| s.kind == "SPAN_KIND_SERVER" && s.attr("url.path") == Some("/orders"))
            .then_some(())
    })
    .await;
}

/// Requests are answered while every export fails on the handshake: the error counter rises
/// and the receiver gets nothing.
async fn nothing_arrives_and_errors_are_counted(gateway: &Gateway, receiver: &OtlpReceiver) {
    for _ in 0..5 {
        assert_eq!(
            get(addr(gateway), "/orders", &[]).await.status,
            StatusCode::OK
        );
    }
    eventually("a failed export counted", || async {
        let errors = metric_value(
            &gateway.metrics().encode(),
            "graylane_trace_export_errors_total",
        )?;
        (errors >= 1.0).then_some(())
    })
    .await;
    assert!(
        receiver.spans().is_empty(),
        "a collector that did not verify was sent spans"
    );
    assert_eq!(
        metric_value(
            &gateway.metrics().encode(),
            "graylane_trace_spans_exported_total"
        ),
        Some(0.0)
    );
}

async fn spans_arrive_with_the_configured_ca(protocol: Protocol) {
    let files = Files::new(&format!("otlp-ca-{protocol:?}"));
    let ca = Authority::new();
    let ca_file = files.write("ca.pem", &ca.cert_pem());
    let receiver = receiver(protocol, &ca.issue(&["127.0.0.1"]), None);
    assert!(receiver.endpoint().starts_with("https://"));
    let upstream = Upstream::start("stable");
    let gateway = gateway(&upstream, &receiver, &format!("{{ ca: \"{ca_file}\" }}"));
    a_traced_request_arrives(&gateway, &receiver).await;
    shutdown(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_https_http_protobuf_collector_trusted_by_the_configured_ca() {
    spans_arrive_with_the_configured_ca(Protocol::HttpProtobuf).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_https_grpc_collector_trusted_by_the_configured_ca() {
    spans_arrive_with_the_configured_ca(Protocol::Grpc).await;
}

async fn another_authority_gets_nothing(protocol: Protocol) {
    let files = Files::new(&format!("otlp-other-{protocol:?}"));
    let trusted = Authority::new();
    let ca_file = files.write("ca.pem", &trusted.cert_pem());
    let other = Authority::new();
    let receiver = receiver(protocol, &other.issue(&["127.0.0.1"]), None);
    let upstream = Upstream::start("stable");
    let gateway = gateway(&upstream, &receiver, &format!("{{ ca: \"{ca_file}\" }}"));
    nothing_arrives_and_errors_are_counted(&gateway, &receiver).await;
    shutdown(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_protobuf_collector_signed_by_another_authority_gets_nothing_and_is_counted() {
    another_authority_gets_nothing(Protocol::HttpProtobuf).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_collector_signed_by_another_authority_gets_nothing_and_is_counted() {
    another_authority_gets_nothing(Protocol::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_ca_a_collector_must_lead_to_mozillas_roots() {
    let test_authority = Authority::new();
    let receiver = receiver(
        Protocol::HttpProtobuf,
        &test_authority.issue(&["127.0.0.1"]),
        None,
    );
    let upstream = Upstream::start("stable");
    let gateway = gateway(&upstream, &receiver, "");
    nothing_arrives_and_errors_are_counted(&gateway, &receiver).await;
    shutdown(gateway).await;
}

async fn server_name_names_the_certificate(protocol: Protocol) {
    let files = Files::new(&format!("otlp-name-{protocol:?}"));
    let ca = Authority::new();
    let ca_file = files.write("ca.pem", &ca.cert_pem());
    let receiver = receiver(protocol, &ca.issue(&["collector.example"]), None);
    let upstream = Upstream::start("stable");
    let by_address = gateway(&upstream, &receiver, &format!("{{ ca: \"{ca_file}\" }}"));
    nothing_arrives_and_errors_are_counted(&by_address, &receiver).await;
    shutdown(by_address).await;

    let named = gateway(
        &upstream,
        &receiver,
        &format!("{{ ca: \"{ca_file}\", server_name: collector.example }}"),
    );
    a_traced_request_arrives(&named, &receiver).await;
    shutdown(named).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_protobuf_collector_must_carry_the_name_and_server_name_names_it() {
    server_name_names_the_certificate(Protocol::HttpProtobuf).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_collector_must_carry_the_name_and_server_name_names_it() {
    server_name_names_the_certificate(Protocol::Grpc).await;
}

async fn a_client_certificate_is_presented(protocol: Protocol) {
    let files = Files::new(&format!("otlp-mtls-{protocol:?}"));
    let ca = Authority::new();
    let clients = Authority::new();
    let ca_file = files.write("ca.pem", &ca.cert_pem());
    let client = clients.issue(&["graylane"]);
    let cert_file = files.write("client.pem", &client.cert_pem);
    let key_file = files.write("client.key", &client.key_pem);
    let receiver = receiver(protocol, &ca.issue(&["127.0.0.1"]), Some(&clients));
    let upstream = Upstream::start("stable");

    let without = gateway(&upstream, &receiver, &format!("{{ ca: \"{ca_file}\" }}"));
    nothing_arrives_and_errors_are_counted(&without, &receiver).await;
    shutdown(without).await;

    let with = gateway(
        &upstream,
        &receiver,
        &format!(
            "{{ ca: \"{ca_file}\", client_cert: \"{cert_file}\", client_key: \"{key_file}\" }}"
        ),
    );
    a_traced_request_arrives(&with, &receiver).await;
    shutdown(with).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_is_presented_to_an_http_protobuf_collector_that_requires_one() {
    a_client_certificate_is_presented(Protocol::HttpProtobuf).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_is_presented_to_a_grpc_collector_that_requires_one() {
    a_client_certificate_is_presented(Protocol::Grpc).await;
}

#[test]
fn the_collectors_pem_files_are_read_at_load_and_a_bad_one_names_its_key() {
    let files = Files::new("otlp-config");
    let ca = Authority::new();
    let client = ca.issue(&["graylane"]);
    let ca_file = files.write("ca.pem", &ca.cert_pem());
    let cert_file = files.write("client.pem", &client.cert_pem);
    let key_file = files.write("client.key", &client.key_pem);
    let not_pem = files.write("not.pem", "not a certificate");
    let load = |tls: &str| {
        graylane_config::load_str(
            &format!(
                "listeners: [{{ bind: 127.0.0.1:0 }}]\ntelemetry:\n  otlp:\n    endpoint: https://127.0.0.1:4318\n    tls: {tls}\nservices:\n  - name: api\n    versions:\n      stable: {{ endpoints: [\"127.0.0.1:1\"] }}\n"
            ),
            "t.yaml",
            std::path::Path::new("."),
        )
        .map(|c| c.telemetry.unwrap().otlp.unwrap().tls.unwrap())
        .map_err(|e| e.to_string())
    };
    let tls = load(&format!(
        "{{ ca: \"{ca_file}\", client_cert: \"{cert_file}\", client_key: \"{key_file}\" }}"
    ))
    .unwrap();
    assert_eq!(tls.ca_pem.as_deref(), Some(ca.cert_pem().as_bytes()));
    assert_eq!(
        tls.client.unwrap().cert_pem,
        client.cert_pem.clone().into_bytes()
    );

    let other_key = files.write("other.key", &ca.issue(&["other"]).key_pem);
    let err = load(&format!(
        "{{ client_cert: \"{cert_file}\", client_key: \"{other_key}\" }}"
    ))
    .unwrap_err();
    assert!(
        err.contains("telemetry.otlp.tls.client_key: ")
            && err.contains("this key is not the key of the certificate"),
        "{err}"
    );

    let err = load(&format!(
        "{{ ca: \"{not_pem}\", client_cert: \"{cert_file}\", client_key: \"{not_pem}\" }}"
    ))
    .unwrap_err();
    assert!(
        err.contains("t.yaml:5:")
            && err.contains(&format!(
                "telemetry.otlp.tls.ca: `{not_pem}` holds no PEM certificate"
            )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "telemetry.otlp.tls.client_key: `{not_pem}` holds no PEM private key"
        )),
        "{err}"
    );
}
