//! `country` rules with a `geoip:` database, as a user runs them: the real binary routes a
//! client by the country its address is in (loopback aliases 127.0.0.2 and .3 stand for
//! clients in Germany and the US), believes `X-Forwarded-For` only from a trusted hop, falls
//! back to the header, picks up a replaced database file and keeps the old one when the
//! replacement is damaged; a missing or damaged file at start is a configuration error.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use graylane_testing::geoip::{country_db, write_country_db};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONFIG: &str = r#"
listeners:
  - bind: 127.0.0.1:0
    trusted_hops: [127.0.0.4/32]
geoip: { database: countries.mmdb }
services:
  - name: shop
    versions:
      stable: { endpoints: ["{stable}"] }
      canary: { endpoints: ["{canary}"] }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      force: [{ country: { in: [DE] } }]
      steps:
        - weight: 0
          pause: manual
"#;

/// 127.0.0.2 in Germany, 127.0.0.3 in the US; nothing else known.
const COUNTRIES: &[(&str, &str)] = &[("127.0.0.2/32", "DE"), ("127.0.0.3/32", "US")];

/// The version that serves a GET from a client connecting from `from`.
async fn version_from(from: &str, proxy: SocketAddr, headers: &[(&str, &str)]) -> String {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    let local: IpAddr = from.parse().unwrap();
    socket.bind(SocketAddr::new(local, 0)).unwrap();
    let exchange = async {
        let mut stream = socket.connect(proxy).await.unwrap();
        let mut request = String::from("GET /x HTTP/1.1\r\nhost: shop\r\nconnection: close\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await.unwrap();
        String::from_utf8_lossy(&reply).into_owned()
    };
    let reply = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .expect("the gateway answers in time");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    reply
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("x-graylane-version")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_default()
}

/// A `graylane serve` process with [`CONFIG`], its database holding `COUNTRIES`.
struct Served {
    process: Graylane,
    dir: PathBuf,
    proxy: SocketAddr,
    _upstreams: (Upstream, Upstream),
}

impl Served {
    async fn start(test: &str) -> Served {
        let dir = temp_dir(test);
        write_country_db(&dir.join("countries.mmdb"), COUNTRIES).unwrap();
        let (stable, canary) = (Upstream::start("stable"), Upstream::start("canary"));
        let file = write_config(&dir, &stable, &canary);
        let mut process = spawn_in(
            &dir,
            &[
                "serve",
                "--config",
                file.to_str().unwrap(),
                "--workers",
                "1",
                "--drain-timeout",
                "2s",
                "--watch-interval",
                "100ms",
            ],
        );
        let proxy = bound(&mut process, false).listeners[0];
        eventually("the gateway to answer", || async {
            let r = try_get(proxy, "/x", &[]).await.ok()?;
            (r.status == StatusCode::OK).then_some(())
        })
        .await;
        Served {
            process,
            dir,
            proxy,
            _upstreams: (stable, canary),
        }
    }

    /// Replaces the database file the way a downloader does: a new file renamed over it.
    fn replace_database(&self, bytes: &[u8]) {
        let tmp = self.dir.join("countries.mmdb.tmp");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, self.dir.join("countries.mmdb")).unwrap();
    }

    async fn stop(mut self) {
        self.process.assert_running();
        self.process.signal("TERM");
        let status = self.process.wait_exit(Duration::from_secs(20));
        assert_eq!(status.code(), Some(0), "{}", self.process.logs());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write_config(dir: &Path, stable: &Upstream, canary: &Upstream) -> PathBuf {
    let file = dir.join("graylane.yaml");
    let yaml = fill(
        CONFIG,
        &[
            ("stable", stable.addr.to_string()),
            ("canary", canary.addr.to_string()),
        ],
    );
    write_atomic(&file, &yaml);
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_in_germany_is_forced_to_the_canary_by_its_address() {
    let gw = Served::start("geoip-address").await;
    assert_eq!(version_from("127.0.0.2", gw.proxy, &[]).await, "canary");
    assert_eq!(version_from("127.0.0.3", gw.proxy, &[]).await, "stable");
    // The database's answer wins over a header the client wrote.
    assert_eq!(
        version_from("127.0.0.3", gw.proxy, &[("cf-ipcountry", "DE")]).await,
        "stable"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_names_the_client_only_behind_a_trusted_hop() {
    let gw = Served::start("geoip-forwarded").await;
    // 127.0.0.4 is a trusted hop: the client it saw connect is the right-most entry.
    let forwarded = [("x-forwarded-for", "127.0.0.3, 127.0.0.2")];
    assert_eq!(
        version_from("127.0.0.4", gw.proxy, &forwarded).await,
        "canary"
    );
    // Anyone else writing the header is looked up by their own address.
    assert_eq!(
        version_from("127.0.0.3", gw.proxy, &forwarded).await,
        "stable"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_the_database_does_not_know_falls_back_to_the_header() {
    let gw = Served::start("geoip-fallback").await;
    let header = [("cf-ipcountry", "DE")];
    assert_eq!(version_from("127.0.0.5", gw.proxy, &header).await, "canary");
    // No answer and no header: no country, the rule does not match.
    assert_eq!(version_from("127.0.0.5", gw.proxy, &[]).await, "stable");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_database_is_used_and_a_damaged_replacement_is_refused() {
    let gw = Served::start("geoip-reload").await;
    assert_eq!(version_from("127.0.0.3", gw.proxy, &[]).await, "stable");

    // 127.0.0.3 moves to Germany.
    gw.replace_database(&country_db(&[("127.0.0.0/24", "DE")]));
    eventually_within(Duration::from_secs(10), "the new database", || async {
        (version_from("127.0.0.3", gw.proxy, &[]).await == "canary").then_some(())
    })
    .await;

    // A truncated download: the database in use stays.
    let damaged = country_db(&[("127.0.0.0/24", "US")]);
    gw.replace_database(&damaged[..damaged.len() / 2]);
    eventually_within(Duration::from_secs(10), "the refusal logged", || async {
        gw.process.logs().contains("geoip.database").then_some(())
    })
    .await;
    for _ in 0..5 {
        assert_eq!(version_from("127.0.0.3", gw.proxy, &[]).await, "canary");
    }
    let logs = gw.process.logs();
    assert!(logs.contains("reload rejected"), "{logs}");
    gw.stop().await;
}

#[test]
fn a_missing_or_damaged_database_is_a_configuration_error_naming_file_and_key() {
    let dir = temp_dir("geoip-config-errors");
    let (stable, canary) = (Upstream::start("stable"), Upstream::start("canary"));
    let file = write_config(&dir, &stable, &canary);
    let config = file.to_str().unwrap();

    let missing = run(&["validate", config]);
    assert!(!missing.status.success());
    assert!(
        missing.stderr.contains("geoip.database") && missing.stderr.contains("countries.mmdb"),
        "{}",
        missing.stderr
    );

    std::fs::write(dir.join("countries.mmdb"), "not a database\n").unwrap();
    let damaged = run(&["validate", config]);
    assert!(!damaged.status.success());
    assert!(
        damaged.stderr.contains("geoip.database")
            && damaged.stderr.contains("is not a usable MaxMind DB"),
        "{}",
        damaged.stderr
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn eval_shows_the_country_the_database_gives() {
    let dir = temp_dir("geoip-eval");
    write_country_db(&dir.join("countries.mmdb"), COUNTRIES).unwrap();
    let (stable, canary) = (Upstream::start("stable"), Upstream::start("canary"));
    let file = write_config(&dir, &stable, &canary);
    let config = file.to_str().unwrap();
    let out = run(&[
        "eval",
        "--config",
        config,
        "--ip",
        "127.0.0.2",
        "-H",
        "Host: shop",
        "GET",
        "/x",
    ]);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(out.stdout.contains("version: canary"), "{}", out.stdout);
    assert!(out.stdout.contains("country: DE"), "{}", out.stdout);
    assert!(out.stdout.contains("GeoIP database"), "{}", out.stdout);
    let _ = std::fs::remove_dir_all(&dir);
}
