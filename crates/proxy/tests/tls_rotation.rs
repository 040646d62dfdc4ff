//! Listener certificates in operation, through a real gateway on loopback with certificates
//! made at test time: files rewritten under a running gateway (in place, or by a secret
//! volume's symlink swap) are served to new connections while open ones keep working, several certificates are chosen by SNI (exact, wildcard,
//! default), a bad rotation keeps the old certificate and is counted, a reload reads unchanged
//! configuration's files again, and bad pairs are configuration errors naming file and key.

mod common;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use common::*;
use graylane_proxy::{Gateway, GatewayOptions};
use graylane_testing::tls::{
    Issued, connect, issue, shown, status_on, write_pair, write_pair_unnoticed,
};
use http::StatusCode;
use http_body_util::Empty;
use hyper::client::conn::http1::SendRequest;

/// One service behind a TLS listener whose `tls:` is `{tls}`.
const GATEWAY: &str = r#"
listeners:
  - bind: 127.0.0.1:0
    tls: {tls}
    header_read_timeout: 60s
services:
  - name: web
    match: { path_prefix: / }
    versions:
      stable: { endpoints: ["{stable}"] }
"#;

/// A folder of certificate and key files made at test time (removed on drop).
struct Certs {
    dir: PathBuf,
}

impl Certs {
    fn new(name: &str) -> Certs {
        let dir = temp_file(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Certs { dir }
    }

    fn cert_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }

    fn key_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }

    /// Writes `issued` as `name.pem` and `name.key`, in place.
    fn write(&self, name: &str, issued: &Issued) {
        write_pair(&self.cert_path(name), &self.key_path(name), issued);
    }

    /// Writes `issued` over `name`'s files so that only a reload notices.
    fn write_unnoticed(&self, name: &str, issued: &Issued) {
        write_pair_unnoticed(&self.cert_path(name), &self.key_path(name), issued);
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The gateway's YAML with `tls` (inline YAML) in front of `upstream`.
fn yaml(tls: &str, upstream: &Upstream) -> String {
    fill(
        GATEWAY,
        &[
            ("tls", tls.to_string()),
            ("stable", upstream.addr.to_string()),
        ],
    )
}

fn start(yaml: &str, dir: &Path) -> Gateway {
    let config = graylane_config::load_str(yaml, "t.yaml", dir)
        .unwrap_or_else(|e| panic!("test configuration is invalid:\n{e}\n---\n{yaml}"));
    Gateway::start(
        config,
        GatewayOptions {
            workers: 2,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("the TLS gateway starts: {e}"))
}

/// A request on an open connection is proxied.
async fn assert_serves(sender: &mut SendRequest<Empty<Bytes>>, path: &str, what: &str) {
    let status = status_on(sender, path)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(status, StatusCode::OK, "{what}");
}

fn reload_errors(gateway: &Gateway) -> f64 {
    let series = format!(
        "graylane_tls_reload_errors_total{{listener=\"{}\"}}",
        gateway_bind(gateway)
    );
    metric_value(&gateway.metrics().encode(), &series).unwrap_or(0.0)
}

/// The listener label: the `bind` address as configured.
fn gateway_bind(gateway: &Gateway) -> String {
    gateway.snapshot().config.listeners[0].bind.to_string()
}

#[tokio::test]
async fn a_rewritten_certificate_is_served_to_new_connections_and_open_ones_keep_working() {
    let certs = Certs::new("rotate");
    let (old, new) = (issue(&["localhost"]), issue(&["localhost"]));
    certs.write("site", &old);
    let upstream = Upstream::start("stable");
    let gateway = start(
        &yaml(r#"{ cert: site.pem, key: site.key }"#, &upstream),
        &certs.dir,
    );
    let addr = addr(&gateway);
    let (before, mut open) = connect(addr, Some("localhost")).await;
    assert_eq!(before, old.der, "the configured certificate is served");
    assert_serves(&mut open, "/before", "a request before the rotation").await;

    certs.write("site", &new);
    eventually(
        "new connections to get the rewritten certificate",
        || async { (shown(addr, Some("localhost")).await == new.der).then_some(()) },
    )
    .await;
    assert_serves(
        &mut open,
        "/after",
        "a request on the connection opened before the rotation",
    )
    .await;
    assert_eq!(reload_errors(&gateway), 0.0);
    assert_eq!(upstream.received(), 2);
    shutdown(gateway).await;
}

#[tokio::test]
async fn a_secret_volume_update_that_swaps_a_symlink_is_picked_up() {
    // As Kubernetes updates a mounted secret: the files are symlinks through `..data`, which
    // is switched to a new folder in one rename.
    let certs = Certs::new("symlink-swap");
    let (old, new) = (issue(&["localhost"]), issue(&["localhost"]));
    for (version, issued) in [("v1", &old), ("v2", &new)] {
        let folder = certs.dir.join(version);
        std::fs::create_dir_all(&folder).unwrap();
        write_pair(&folder.join("tls.crt"), &folder.join("tls.key"), issued);
    }
    let link =
        |target: &str, at: &str| std::os::unix::fs::symlink(target, certs.dir.join(at)).unwrap();
    link("v1", "..data");
    link("..data/tls.crt", "tls.crt");
    link("..data/tls.key", "tls.key");
    let upstream = Upstream::start("stable");
    let gateway = start(
        &yaml(r#"{ cert: tls.crt, key: tls.key }"#, &upstream),
        &certs.dir,
    );
    let addr = addr(&gateway);
    let (before, mut open) = connect(addr, Some("localhost")).await;
    assert_eq!(before, old.der);

    link("v2", "..data_tmp");
    std::fs::rename(certs.dir.join("..data_tmp"), certs.dir.join("..data")).unwrap();
    eventually("the swapped-in certificate to be served", || async {
        (shown(addr, Some("localhost")).await == new.der).then_some(())
    })
    .await;
    assert_serves(
        &mut open,
        "/after-swap",
        "the connection opened before the swap",
    )
    .await;
    assert_eq!(reload_errors(&gateway), 0.0);
    shutdown(gateway).await;
}

#[tokio::test]
async fn sni_chooses_the_certificate_naming_the_host_and_the_default_serves_the_rest() {
    let certs = Certs::new("sni");
    let (a, b, wild) = (
        issue(&["a.example.test"]),
        issue(&["b.example.test", "b2.example.test"]),
        issue(&["*.wild.example.test"]),
    );
    certs.write("a", &a);
    certs.write("b", &b);
    certs.write("wild", &wild);
    let upstream = Upstream::start("stable");
    let list = |default_b: bool| {
        let mark = if default_b { ", default: true" } else { "" };
        format!(
            "{{ certificates: [{{ cert: a.pem, key: a.key }}, {{ cert: b.pem, key: b.key{mark} }}, {{ cert: wild.pem, key: wild.key }}] }}"
        )
    };
    let gateway = start(&yaml(&list(false), &upstream), &certs.dir);
    let addr = addr(&gateway);
    let cases = [
        (Some("a.example.test"), &a, "an exact name"),
        (
            Some("b2.example.test"),
            &b,
            "the second name of a certificate",
        ),
        (Some("B.Example.TEST"), &b, "a name in other case"),
        (
            Some("shop.wild.example.test"),
            &wild,
            "a name under a wildcard",
        ),
        (
            Some("x.shop.wild.example.test"),
            &a,
            "two labels under a wildcard: the first",
        ),
        (Some("c.example.test"), &a, "an unknown name: the first"),
        (None, &a, "no name at all: the first"),
    ];
    for (sni, expected, what) in cases {
        assert_eq!(shown(addr, sni).await, expected.der, "{what} ({sni:?})");
    }
    let (_, mut sender) = connect(addr, Some("b.example.test")).await;
    assert_serves(
        &mut sender,
        "/sni",
        "a request over the SNI-chosen certificate",
    )
    .await;

    // `default: true` moves the default; a reload with it applies at once.
    gateway.apply(
        graylane_config::load_str(&yaml(&list(true), &upstream), "t.yaml", &certs.dir).unwrap(),
    );
    assert_eq!(
        shown(addr, Some("c.example.test")).await,
        b.der,
        "an unknown name: the default"
    );
    assert_eq!(shown(addr, None).await, b.der, "no name: the default");
    assert_eq!(
        shown(addr, Some("a.example.test")).await,
        a.der,
        "an exact name still wins"
    );
    shutdown(gateway).await;
}

#[tokio::test]
async fn a_garbage_or_mismatched_rotation_keeps_the_old_certificate_and_is_counted() {
    let certs = Certs::new("bad-rotation");
    let (old, new, other) = (
        issue(&["localhost"]),
        issue(&["localhost"]),
        issue(&["localhost"]),
    );
    certs.write("site", &old);
    let upstream = Upstream::start("stable");
    let gateway = start(
        &yaml(r#"{ cert: site.pem, key: site.key }"#, &upstream),
        &certs.dir,
    );
    let addr = addr(&gateway);
    let (_, mut open) = connect(addr, Some("localhost")).await;

    // A certificate file that holds no certificate.
    std::fs::write(certs.cert_path("site"), "not a certificate\n").unwrap();
    eventually("the garbage certificate to be counted", || async {
        (reload_errors(&gateway) == 1.0).then_some(())
    })
    .await;
    assert_eq!(
        shown(addr, Some("localhost")).await,
        old.der,
        "after a garbage file"
    );

    // A new certificate with a key that is not its own.
    let mismatched = Issued {
        key_pem: other.key_pem.clone(),
        ..new.clone()
    };
    certs.write("site", &mismatched);
    eventually("the mismatched pair to be counted", || async {
        (reload_errors(&gateway) == 2.0).then_some(())
    })
    .await;
    assert_eq!(
        shown(addr, Some("localhost")).await,
        old.der,
        "after a mismatched pair"
    );
    assert_serves(&mut open, "/still", "the connection opened before").await;

    // Not tried again while the files stay as they are; a good pair is then taken.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(reload_errors(&gateway), 2.0, "a bad pair is reported once");
    certs.write("site", &new);
    eventually("the good pair to be served", || async {
        (shown(addr, Some("localhost")).await == new.der).then_some(())
    })
    .await;
    let expiry = format!(
        "graylane_tls_certificate_expiry_seconds{{listener=\"{}\",name=\"localhost\"}}",
        gateway_bind(&gateway)
    );
    let not_after = metric_value(&gateway.metrics().encode(), &expiry).expect(&expiry);
    assert!(
        not_after > 4e9,
        "rcgen's certificates last until 4096: {not_after}"
    );
    shutdown(gateway).await;
}

#[tokio::test]
async fn a_reload_of_unchanged_configuration_reads_the_certificate_files_again() {
    let certs = Certs::new("reload");
    let (old, new, newer) = (
        issue(&["localhost"]),
        issue(&["localhost"]),
        issue(&["localhost"]),
    );
    certs.write("site", &old);
    let upstream = Upstream::start("stable");
    let text = yaml(r#"{ cert: site.pem, key: site.key }"#, &upstream);
    let file = certs.dir.join("graylane.yaml");
    std::fs::write(&file, &text).unwrap();
    let gateway = start(&text, &certs.dir);
    let addr = addr(&gateway);

    // Same length, inode and time: the poll cannot see it, a reload of the same file can.
    certs.write_unnoticed("site", &new);
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(
        shown(addr, Some("localhost")).await,
        old.der,
        "not noticed by the poll"
    );
    gateway
        .reload_from(&file)
        .expect("the unchanged file reloads");
    assert_eq!(
        shown(addr, Some("localhost")).await,
        new.der,
        "after reload_from"
    );

    certs.write_unnoticed("site", &newer);
    gateway.reload_certificates();
    assert_eq!(
        shown(addr, Some("localhost")).await,
        newer.der,
        "after reload_certificates"
    );
    assert_eq!(reload_errors(&gateway), 0.0);
    shutdown(gateway).await;
}

#[test]
fn bad_pairs_are_configuration_errors_naming_the_file_and_the_key() {
    let certs = Certs::new("config-errors");
    let (a, b) = (issue(&["a.example.test"]), issue(&["b.example.test"]));
    certs.write("a", &a);
    certs.write("b", &b);
    std::fs::write(certs.cert_path("garbage"), "garbage\n").unwrap();
    let upstream = Upstream::start("stable");
    let load = |tls: &str| {
        graylane_config::load_str(&yaml(tls, &upstream), "t.yaml", &certs.dir)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };

    let shown =
        load("{ certificates: [{ cert: a.pem, key: a.key }, { cert: b.pem, key: a.key }] }");
    let b_pem = certs.cert_path("b").display().to_string();
    let a_key = certs.key_path("a").display().to_string();
    assert!(
        shown.contains("t.yaml:4:")
            && shown.contains(": listeners[0].tls.certificates[1].key: ")
            && shown.contains(&format!(
                "{a_key}: this key is not the key of the certificate in {b_pem}"
            )),
        "{shown}"
    );

    let shown = load("{ cert: garbage.pem, key: a.key }");
    assert!(
        shown.contains("listeners[0].tls.cert: ")
            && shown.contains(&certs.cert_path("garbage").display().to_string())
            && shown.contains("no certificate found"),
        "{shown}"
    );

    let shown = load("{ cert: a.pem, key: missing.key }");
    assert!(
        shown.contains("listeners[0].tls.key: cannot read key ")
            && shown.contains(&certs.key_path("missing").display().to_string()),
        "{shown}"
    );

    let shown = load("{ cert: a.pem, key: a.key, certificates: [{ cert: b.pem, key: b.key }] }");
    assert!(
        shown.contains("listeners[0].tls: give either `cert` and `key`"),
        "{shown}"
    );

    let shown = load("{ cert: a.pem }");
    assert!(
        shown.contains("listeners[0].tls: `cert` needs its `key`"),
        "{shown}"
    );

    let shown = load("{ certificates: [] }");
    assert!(
        shown.contains("listeners[0].tls.certificates: an empty list"),
        "{shown}"
    );

    let shown = load(
        "{ certificates: [{ cert: a.pem, key: a.key, default: true }, { cert: b.pem, key: b.key, default: true }] }",
    );
    assert!(
        shown.contains("listeners[0].tls.certificates[1].default: a second `default: true`"),
        "{shown}"
    );
    assert_eq!(upstream.received(), 0);
}
