//! The reliability suite: the gateway under reloads, failing and hanging upstreams, slow and
//! greedy clients, malformed HTTP, a long run of distinct users and a very large
//! configuration. Every test drives a real gateway over loopback sockets.
//!
//! The default (short) mode runs with `cargo test` in well under a minute; `GRAYLANE_LONG_TESTS=1`
//! raises the counts (kill/restart cycles 3 → 20, requests in the memory test 100k → 1M) and
//! the time limits with them. Tests that measure the process's resident memory take
//! [`RSS_LOCK`] exclusively so no other test of this binary allocates meanwhile; every other
//! test takes it shared.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::RwLock;

/// Held shared by ordinary tests and exclusively by the ones that read the process's RSS.
static RSS_LOCK: RwLock<()> = RwLock::const_new(());

/// `GRAYLANE_LONG_TESTS=1` selects the long mode.
fn long_mode() -> bool {
    std::env::var("GRAYLANE_LONG_TESTS").is_ok_and(|v| v == "1")
}

/// `short` normally, `long` in the long mode.
fn scale(short: u64, long: u64) -> u64 {
    if long_mode() { long } else { short }
}

/// The process's resident set size, from `/proc/self/status`.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[track_caller]
fn assert_no_failures(what: &str, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{what}: {} failures, first: {:#?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1.1 over a TCP stream
// ---------------------------------------------------------------------------------------------

/// What came back on a raw connection until the server closed it (or the wait ran out).
#[derive(Debug)]
struct RawOutcome {
    /// Everything the server sent.
    bytes: Vec<u8>,
    /// The server closed the connection (EOF or reset) within the wait.
    closed: bool,
}

impl RawOutcome {
    /// The status code of the first response, if any.
    fn status(&self) -> Option<u16> {
        let text = String::from_utf8_lossy(&self.bytes);
        let line = text.lines().next()?;
        line.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
    }

    /// How many responses the server sent.
    fn responses(&self) -> usize {
        String::from_utf8_lossy(&self.bytes)
            .matches("HTTP/1.1 ")
            .count()
    }

    /// The body of the (single) response.
    fn body(&self) -> &[u8] {
        let at = self
            .bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(self.bytes.len(), |i| i + 4);
        &self.bytes[at..]
    }
}

/// Writes `request` on a new connection and reads until the server closes it, at most `wait`.
/// Writing goes on in its own task, so a server that answers before reading everything (and
/// then resets the connection) is still heard.
async fn raw_exchange(addr: SocketAddr, request: Vec<u8>, wait: Duration) -> RawOutcome {
    let stream = TcpStream::connect(addr).await.expect("connect to gateway");
    let (mut reader, mut writer) = stream.into_split();
    let write = tokio::spawn(async move {
        let _ = writer.write_all(&request).await;
        // Keep the write half open: closing it would be a client EOF, which hyper treats as
        // the end of the conversation.
        writer
    });
    let mut bytes = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let deadline = Instant::now() + wait;
    let mut closed = false;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match tokio::time::timeout(left, reader.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    write.abort();
    RawOutcome { bytes, closed }
}

// ---------------------------------------------------------------------------------------------
// 5. Malformed HTTP never reaches an upstream
// ---------------------------------------------------------------------------------------------

const CATCH_ALL: &str = r#"
listeners:
  - bind: 127.0.0.1:0
services:
  - name: web
    match: { path_prefix: / }
    versions:
      stable: { endpoints: ["{stable}"] }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused_and_never_reach_the_upstream() {
    let _shared = RSS_LOCK.read().await;
    let upstream = Upstream::start("stable");
    let gateway = start_gateway(config(&fill(
        CATCH_ALL,
        &[("stable", upstream.addr.to_string())],
    )));
    let gw = addr(&gateway);
    let wait = Duration::from_secs(5);

    let huge_header = format!(
        "GET / HTTP/1.1\r\nHost: gw\r\nX-Huge: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("not HTTP at all", b"GARBAGE\r\n\r\n".to_vec(), 400),
        (
            "a space in the request target",
            b"GET /a b HTTP/1.1\r\nHost: gw\r\n\r\n".to_vec(),
            400,
        ),
        (
            "an unknown HTTP version",
            b"GET / HTTP/9.9\r\nHost: gw\r\n\r\n".to_vec(),
            400,
        ),
        (
            "a NUL in the request target",
            b"GET /a\0b HTTP/1.1\r\nHost: gw\r\n\r\n".to_vec(),
            400,
        ),
        // hyper answers an oversized head with the precise status, 431, not a plain 400.
        ("a 100 KiB header", huge_header.into_bytes(), 431),
        (
            "an invalid chunk size",
            b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
            400,
        ),
        (
            "a chunk longer than announced",
            b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
            400,
        ),
        (
            "a transfer coding other than chunked last",
            b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"
                .to_vec(),
            400,
        ),
        (
            "an obfuscated Transfer-Encoding (TE.TE)",
            b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\n"
                .to_vec(),
            400,
        ),
        (
            "a space before the colon",
            b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n"
                .to_vec(),
            400,
        ),
        (
            "two different Content-Lengths",
            b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nhello"
                .to_vec(),
            400,
        ),
        (
            "a Content-Length that is not a number",
            b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 3x\r\n\r\nabc".to_vec(),
            400,
        ),
        (
            "a control byte in a header value",
            b"GET / HTTP/1.1\r\nHost: gw\r\nX-Bad: a\x01b\r\n\r\n".to_vec(),
            400,
        ),
        (
            "a space in a header name",
            b"GET / HTTP/1.1\r\nHost: gw\r\nX Bad: v\r\n\r\n".to_vec(),
            400,
        ),
        (
            "Transfer-Encoding in HTTP/1.0",
            b"POST / HTTP/1.0\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            400,
        ),
    ];
    for (what, request, want) in cases {
        let out = raw_exchange(gw, request, wait).await;
        assert_eq!(
            out.status(),
            Some(want),
            "{what}: {:?}",
            String::from_utf8_lossy(&out.bytes)
        );
        assert_eq!(out.responses(), 1, "{what}: one answer");
        assert!(
            out.closed,
            "{what}: the connection is closed after the error"
        );
        assert_eq!(upstream.received(), 0, "{what}: reached the upstream");
    }

    // The gateway is unharmed, and a well-formed raw request does get through: the cases above
    // were refused for what they are, not for how this test sends them.
    let out = raw_exchange(
        gw,
        b"POST /ok HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            .to_vec(),
        wait,
    )
    .await;
    assert_eq!(out.status(), Some(200), "{out:?}");
    assert_eq!(upstream.received(), 1);
    let seen: serde_json::Value = serde_json::from_slice(out.body()).expect("upstream JSON");
    assert_eq!(seen["body"], "hello");
    shutdown(gateway).await;
}

/// Request smuggling with both framings. RFC 9112 §6.1 lets a server either reject such a
/// request or frame it by `Transfer-Encoding` alone and close the connection afterwards; hyper
/// does the latter and drops the `Content-Length`. So the upstream gets exactly one request
/// whose body is what the chunked framing says, framed afresh by the gateway, and the bytes a
/// smuggler hid behind it are discarded with the connection: they never become a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_with_content_length_and_transfer_encoding_yields_one_request() {
    let _shared = RSS_LOCK.read().await;
    let upstream = Upstream::start("stable");
    let gateway = start_gateway(config(&fill(
        CATCH_ALL,
        &[("stable", upstream.addr.to_string())],
    )));
    let gw = addr(&gateway);

    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: gw\r\n\r\n";
    let cases = [
        // CL.TE: a front end trusting Content-Length forwards the whole body; a back end
        // trusting chunked sees an empty body followed by a second, smuggled request.
        (
            "CL.TE",
            format!(
                "POST /cl-te HTTP/1.1\r\nHost: gw\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
                5 + smuggled.len()
            ),
            "",
        ),
        // TE.CL: a back end trusting Content-Length reads the chunk size line as the body and
        // the chunk's data as a second request.
        (
            "TE.CL",
            format!(
                "POST /te-cl HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
                smuggled.len()
            ),
            smuggled,
        ),
        // The same with Content-Length first: hyper drops it either way.
        (
            "CL before TE",
            format!(
                "POST /cl-first HTTP/1.1\r\nContent-Length: 4\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
                smuggled.len()
            ),
            smuggled,
        ),
    ];
    for (i, (what, request, body)) in cases.into_iter().enumerate() {
        let out = raw_exchange(gw, request.into_bytes(), Duration::from_secs(5)).await;
        assert_eq!(out.status(), Some(200), "{what}: {out:?}");
        assert_eq!(out.responses(), 1, "{what}: {out:?}");
        assert!(out.closed, "{what}: the connection is closed afterwards");
        assert_eq!(upstream.received(), i as u64 + 1, "{what}: one request");
        let seen: serde_json::Value = serde_json::from_slice(out.body()).expect("upstream JSON");
        assert_ne!(seen["path"], "/smuggled", "{what}");
        assert_eq!(seen["body"], body, "{what}: framed by Transfer-Encoding");
        // The client's Content-Length is not passed on: the framing upstream is the gateway's.
        let length = seen["headers"]["content-length"].as_str();
        assert!(
            length.is_none_or(|l| l == body.len().to_string()),
            "{what}: {seen}"
        );
    }
    // Nothing arrives later either.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(upstream.received(), 3);
    shutdown(gateway).await;
}

// ---------------------------------------------------------------------------------------------
// 1. Reloads under load
// ---------------------------------------------------------------------------------------------

/// A valid configuration that sends every `payment` request to its candidate; with `canary`
/// (A) and `green` (B) as candidates a response proves which one routed it. `orders` is the
/// same in both.
const RELOAD_VALID: &str = r#"
listeners:
  - bind: 127.0.0.1:0
services:
  - name: payment
    match: { path_prefix: /api/payment }
    versions:
      stable: { endpoints: ["{stable}"] }
      {candidate}: { endpoints: ["{candidate_endpoint}"] }
    release:
      strategy: canary
      baseline: stable
      candidate: {candidate}
      bucket_by: "header:X-User-Id"
      steps:
        - weight: 100
  - name: orders
    match: { path_prefix: /api/orders }
    versions:
      stable: { endpoints: ["{stable}"] }
"#;

/// A configuration that would send everything to `poison` if it were ever applied; `{defect}`
/// makes each variant invalid in a different way.
const RELOAD_POISON: &str = r#"
listeners:
  - bind: 127.0.0.1:0
services:
  - name: payment
    match: { path_prefix: /api/payment }
    versions:
      stable: { endpoints: ["{stable}"] }
      poison: { endpoints: ["{poison_endpoint}"] }
    release:
      strategy: canary
      baseline: stable
      candidate: poison
      bucket_by: "header:X-User-Id"
      steps:
        - weight: {weight}
{defect}
  - name: orders
    match: { path_prefix: /api/orders }
    versions:
      poison: { endpoints: ["{stable}"] }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_reloads_under_load_fail_no_request() {
    const CLIENTS: usize = 4;
    // The full count in both modes: a reload costs about a millisecond in a debug build, so
    // the whole test takes a few seconds.
    let reload_count = 1_000;
    // Bounds the load whatever happens; the reloads take a few seconds.
    let deadline = Instant::now() + Duration::from_secs(scale(60, 300));
    let max_requests_per_client = scale(200_000, 2_000_000);

    let _shared = RSS_LOCK.read().await;
    let stable = Upstream::start("stable");
    let canary = Upstream::start("canary");
    let green = Upstream::start("green");
    let valid = |candidate: &Upstream| {
        fill(
            RELOAD_VALID,
            &[
                ("stable", stable.addr.to_string()),
                ("candidate", candidate.name.to_string()),
                ("candidate_endpoint", candidate.addr.to_string()),
            ],
        )
    };
    let (valid_a, valid_b) = (valid(&canary), valid(&green));
    let poison = |weight: &str, endpoint: &str, defect: &str| {
        fill(
            RELOAD_POISON,
            &[
                ("stable", stable.addr.to_string()),
                ("poison_endpoint", endpoint.to_string()),
                ("weight", weight.to_string()),
                ("defect", defect.to_string()),
            ],
        )
    };
    let stable_addr = stable.addr.to_string();
    let invalid = [
        "services: [ {\n".to_string(),
        poison("100", &stable_addr, "      weigth: 100"),
        poison("150", &stable_addr, ""),
        poison("100", "not an address", ""),
    ];

    let gateway = Arc::new(start_gateway(config(&valid_a)));
    let gw = addr(&gateway);
    let path = temp_file("reliability-reload.yaml");
    let requests = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));

    // Reloads on a plain thread, like the binary's file watcher and SIGHUP handler: A, an
    // invalid file, B, another invalid file, and so on.
    let reloader = {
        let (gateway, requests, done, path) = (
            Arc::clone(&gateway),
            Arc::clone(&requests),
            Arc::clone(&done),
            path.clone(),
        );
        std::thread::spawn(move || {
            let mut problems = Vec::new();
            let mut expected_ok = 0u64;
            for i in 0..reload_count {
                if Instant::now() > deadline {
                    problems.push(format!("only {i} reloads before the deadline"));
                    break;
                }
                let (text, valid) = match i % 4 {
                    0 => (&valid_a, true),
                    2 => (&valid_b, true),
                    _ => (&invalid[(i / 2) % invalid.len()], false),
                };
                std::fs::write(&path, text).expect("write the reload file");
                let result = gateway.reload_from(&path);
                if result.is_ok() != valid {
                    problems.push(format!(
                        "reload {i}: expected valid={valid}, got {result:?}"
                    ));
                }
                expected_ok += u64::from(valid);
                // Let some traffic through between reloads, so each configuration serves.
                let seen = requests.load(Ordering::SeqCst);
                let wait_until = Instant::now() + Duration::from_millis(50);
                while requests.load(Ordering::SeqCst) == seen && Instant::now() < wait_until {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            done.store(true, Ordering::SeqCst);
            (expected_ok, problems)
        })
    };

    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (requests, done) = (Arc::clone(&requests), Arc::clone(&done));
        clients.push(tokio::spawn(async move {
            let mut seen: BTreeMap<String, u64> = BTreeMap::new();
            let mut failures: Vec<String> = Vec::new();
            let mut conn: Option<Http1> = None;
            let mut i = 0u64;
            while !done.load(Ordering::SeqCst)
                && Instant::now() < deadline
                && i < max_requests_per_client
                && failures.len() < 20
            {
                i += 1;
                // Mostly keep-alive, with a fresh connection now and then.
                if i % 100 == 1 {
                    conn = None;
                }
                if conn.is_none() {
                    match Http1::connect(gw).await {
                        Ok(c) => conn = Some(c),
                        Err(e) => {
                            failures.push(e);
                            continue;
                        }
                    }
                }
                let user = format!("u-{c}-{i}");
                let (path, allowed): (&str, &[&str]) = if i.is_multiple_of(2) {
                    ("/api/payment/pay", &["canary", "green"])
                } else {
                    ("/api/orders/list", &["stable"])
                };
                let Some(open) = conn.as_mut() else { continue };
                let result = open.get(path, &[("X-User-Id", &user)]).await;
                requests.fetch_add(1, Ordering::SeqCst);
                match result {
                    Ok(r) => {
                        let version = r.version().unwrap_or("").to_string();
                        let served_by = serde_json::from_slice::<serde_json::Value>(&r.body)
                            .ok()
                            .and_then(|v| v["version"].as_str().map(str::to_string));
                        // Each upstream is named after the version it serves.
                        let upstream_ok = served_by.as_deref() == Some(version.as_str());
                        if r.status != StatusCode::OK
                            || !allowed.contains(&version.as_str())
                            || !upstream_ok
                        {
                            failures.push(format!(
                                "{path} {user}: {} version {version:?} served by {served_by:?}",
                                r.status
                            ));
                        }
                        *seen.entry(format!("{path} {version}")).or_default() += 1;
                    }
                    Err(e) => {
                        failures.push(format!("{path} {user}: {e}"));
                        conn = None;
                    }
                }
            }
            (seen, failures)
        }));
    }

    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    let mut failures = Vec::new();
    for c in clients {
        let (s, f) = c.await.expect("client task");
        for (k, v) in s {
            *seen.entry(k).or_default() += v;
        }
        failures.extend(f);
    }
    done.store(true, Ordering::SeqCst);
    let (expected_ok, problems) = reloader.join().expect("reloader thread");
    let total = requests.load(Ordering::SeqCst);
    eprintln!("{reload_count} reloads, {total} requests: {seen:?}");

    assert_no_failures("requests during reloads", &failures);
    assert_no_failures("reloads", &problems);
    let expected_errors = reload_count as u64 - expected_ok;
    let metrics = gateway.metrics().encode();
    assert_eq!(
        metric_value(&metrics, r#"graylane_config_reloads_total{result="ok"}"#),
        Some(expected_ok as f64),
        "{metrics}"
    );
    assert_eq!(
        metric_value(&metrics, r#"graylane_config_reloads_total{result="error"}"#),
        Some(expected_errors as f64),
        "{metrics}"
    );
    for key in [
        "/api/payment/pay canary",
        "/api/payment/pay green",
        "/api/orders/list stable",
    ] {
        assert!(
            seen.get(key).copied().unwrap_or(0) > 0,
            "`{key}` never served: {seen:?}"
        );
    }
    assert!(
        total >= reload_count as u64 / 2,
        "the load ran alongside the reloads: {total} requests"
    );
    // The last file written was invalid, so B (the last valid one) is what serves now.
    let r = get(gw, "/api/payment/pay", &[("X-User-Id", "u-final")]).await;
    assert_eq!((r.status, r.version()), (StatusCode::OK, Some("green")));

    let _ = std::fs::remove_file(&path);
    let gateway = Arc::try_unwrap(gateway)
        .ok()
        .expect("no other gateway owner is left");
    shutdown(gateway).await;
}

// ---------------------------------------------------------------------------------------------
// 2. An upstream killed and restarted under load
// ---------------------------------------------------------------------------------------------

const TWO_SERVICES: &str = r#"
listeners:
  - bind: 127.0.0.1:0
services:
  - name: payment
    match: { path_prefix: /api/payment }
    versions:
      stable: { endpoints: ["{payment}"] }
  - name: orders
    match: { path_prefix: /api/orders }
    versions:
      stable: { endpoints: ["{orders}"] }
"#;

/// Phases of the kill/restart test, four per cycle: the payment upstream is up (`4k`), being
/// killed (`4k + 1`), down (`4k + 2`), being restarted (`4k + 3`). "Up" and "down" begin only
/// once the kill or restart has completed, so a request that began and ended in one of them
/// has exactly one right answer; during a kill or restart, either answer is right.
struct Phases {
    current: AtomicU64,
    /// Responses per phase from requests that began and ended in it.
    answered: Vec<AtomicU64>,
}

impl Phases {
    fn now(&self) -> u64 {
        self.current.load(Ordering::SeqCst)
    }

    fn enter(&self, phase: u64) {
        self.current.store(phase, Ordering::SeqCst);
    }

    /// The one status a payment request that began and ended in `phase` may get, if only one.
    fn expected(phase: u64) -> Option<StatusCode> {
        match phase % 4 {
            0 => Some(StatusCode::OK),
            2 => Some(StatusCode::BAD_GATEWAY),
            _ => None,
        }
    }

    async fn wait_for_answers(&self, phase: u64, count: u64, deadline: Instant) {
        while self.answered[phase as usize].load(Ordering::SeqCst) < count {
            assert!(
                Instant::now() < deadline,
                "phase {phase}: only {} answers before the deadline",
                self.answered[phase as usize].load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_upstream_gets_502_and_serves_again_after_restart() {
    let cycles = scale(3, 20);
    let per_phase = 30;
    let deadline = Instant::now() + Duration::from_secs(scale(60, 300));

    let _shared = RSS_LOCK.read().await;
    let payment = Upstream::start("payment");
    let payment_addr = payment.addr;
    let orders = Upstream::start("orders");
    let gateway = start_gateway(config(&fill(
        TWO_SERVICES,
        &[
            ("payment", payment_addr.to_string()),
            ("orders", orders.addr.to_string()),
        ],
    )));
    let gw = addr(&gateway);
    let phases = Arc::new(Phases {
        current: AtomicU64::new(0),
        answered: (0..=4 * cycles).map(|_| AtomicU64::new(0)).collect(),
    });
    let stop = Arc::new(AtomicBool::new(false));

    let mut clients = Vec::new();
    for c in 0..4 {
        let (phases, stop) = (Arc::clone(&phases), Arc::clone(&stop));
        let path = if c % 2 == 0 {
            "/api/payment/pay"
        } else {
            "/api/orders/list"
        };
        clients.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
            let mut conn: Option<Http1> = None;
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst)
                && Instant::now() < deadline
                && n < 1_000_000
                && failures.len() < 20
            {
                n += 1;
                if conn.is_none() {
                    match Http1::connect(gw).await {
                        Ok(c) => conn = Some(c),
                        Err(e) => {
                            failures.push(format!("{path}: {e}"));
                            continue;
                        }
                    }
                }
                let Some(open) = conn.as_mut() else { continue };
                let before = phases.now();
                // `get` gives up after REQUEST_TIMEOUT: a hang is a failure, not a stall.
                let result = open.get(path, &[]).await;
                let after = phases.now();
                let r = match result {
                    Ok(r) => r,
                    Err(e) => {
                        failures.push(format!("{path} in phase {before}: {e}"));
                        conn = None;
                        continue;
                    }
                };
                *statuses.entry(r.status.as_u16()).or_default() += 1;
                let is_payment = path.starts_with("/api/payment");
                let want = match (is_payment, before == after) {
                    (false, _) => Some(StatusCode::OK),
                    (true, true) => Phases::expected(before),
                    (true, false) => None,
                };
                let acceptable = match want {
                    Some(status) => r.status == status,
                    None => r.status == StatusCode::OK || r.status == StatusCode::BAD_GATEWAY,
                };
                if !acceptable {
                    failures.push(format!(
                        "{path} in phase {before}..{after}: {} {:?}",
                        r.status,
                        String::from_utf8_lossy(&r.body)
                    ));
                } else if r.status == StatusCode::BAD_GATEWAY {
                    let body = r.json();
                    let kind = body["kind"].as_str().unwrap_or("");
                    if body["service"] != "payment"
                        || !(kind == "connect_refused" || kind == "protocol")
                    {
                        failures.push(format!("502 body: {body}"));
                    }
                }
                if before == after && is_payment {
                    phases.answered[before as usize].fetch_add(1, Ordering::SeqCst);
                }
            }
            (statuses, failures)
        }));
    }

    let mut upstream = Some(payment);
    for cycle in 0..cycles {
        let up = 4 * cycle;
        phases.wait_for_answers(up, per_phase, deadline).await;
        phases.enter(up + 1);
        let killed = upstream.take().expect("the payment upstream is up");
        tokio::task::spawn_blocking(move || killed.kill())
            .await
            .expect("kill");
        phases.enter(up + 2);
        phases.wait_for_answers(up + 2, per_phase, deadline).await;
        phases.enter(up + 3);
        upstream = Some(Upstream::start_on(payment_addr, "payment"));
        phases.enter(up + 4);
    }
    phases
        .wait_for_answers(4 * cycles, per_phase, deadline)
        .await;
    stop.store(true, Ordering::SeqCst);

    let mut failures = Vec::new();
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    for c in clients {
        let (s, f) = c.await.expect("client task");
        for (k, v) in s {
            *statuses.entry(k).or_default() += v;
        }
        failures.extend(f);
    }
    // Up and down phases only: kills and restarts are too short to count.
    let per_phase: Vec<u64> = phases
        .answered
        .iter()
        .step_by(2)
        .map(|a| a.load(Ordering::SeqCst))
        .collect();
    eprintln!(
        "{cycles} kill/restart cycles: statuses {statuses:?}, payment answers per up/down phase {per_phase:?}"
    );
    assert_no_failures("requests during kills and restarts", &failures);

    // The gateway itself is fine, and counted what happened.
    let r = get(gw, "/api/payment/after", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    let metrics = gateway.metrics().encode();
    let refused = metric_value(
        &metrics,
        r#"graylane_upstream_errors_total{service="payment",version="stable",kind="connect_refused"}"#,
    )
    .unwrap_or(0.0);
    assert!(refused > 0.0, "{metrics}");
    assert!(
        !metrics.contains(r#"graylane_upstream_errors_total{service="orders""#),
        "{metrics}"
    );
    drop(upstream);
    shutdown(gateway).await;
}

// ---------------------------------------------------------------------------------------------
// 3. A canary that accepts connections and never answers
// ---------------------------------------------------------------------------------------------

/// An endpoint that accepts TCP connections and holds them open without reading or writing.
struct Hanging {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Hanging {
    async fn start() -> Hanging {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the hanging endpoint");
        let addr = listener.local_addr().expect("local addr");
        let accepted = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                held.push(socket);
            }
        });
        Hanging {
            addr,
            accepted,
            task,
        }
    }
}

impl Drop for Hanging {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const HANGING_CANARY: &str = r#"
listeners:
  - bind: 127.0.0.1:0
services:
  - name: search
    match: { path_prefix: /api/search }
    timeouts: { request: 2s }
    versions:
      stable: { endpoints: ["{healthy}"] }
      canary: { endpoints: ["{hanging}"] }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      force:
        - header: { name: X-Release-Phase, equals: canary }
      steps:
        - weight: 0
  - name: orders
    match: { path_prefix: /api/orders }
    versions:
      stable: { endpoints: ["{healthy}"] }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_canary_gets_504_after_its_timeout_and_holds_up_nothing_else() {
    const HUNG: u64 = 6;
    let request_timeout = Duration::from_secs(2);
    let _shared = RSS_LOCK.read().await;
    let healthy = Upstream::start("healthy");
    let hanging = Hanging::start().await;
    let gateway = start_gateway(config(&fill(
        HANGING_CANARY,
        &[
            ("healthy", healthy.addr.to_string()),
            ("hanging", hanging.addr.to_string()),
        ],
    )));
    let gw = addr(&gateway);

    let first_504 = Arc::new(AtomicBool::new(false));
    let mut hung = Vec::new();
    for i in 0..HUNG {
        let first_504 = Arc::clone(&first_504);
        hung.push(tokio::spawn(async move {
            let started = Instant::now();
            let r = try_get(
                gw,
                &format!("/api/search?q={i}"),
                &[("X-Release-Phase", "canary")],
            )
            .await;
            first_504.store(true, Ordering::SeqCst);
            (r, started.elapsed())
        }));
    }

    // Meanwhile, the stable version of the same service and another service answer at once.
    let mut before_first_504 = 0u64;
    let mut normal = 0u64;
    let mut failures = Vec::new();
    let mut keep_alive = Http1::connect(gw).await.expect("connect");
    let load_deadline = Instant::now() + Duration::from_secs(30);
    while !hung.iter().all(|t| t.is_finished()) && Instant::now() < load_deadline && normal < 5_000
    {
        normal += 1;
        let result = if normal.is_multiple_of(2) {
            keep_alive.get("/api/search?q=stable", &[]).await
        } else {
            try_get(gw, "/api/orders/1", &[]).await
        };
        match result {
            Ok(r) if r.status == StatusCode::OK => {
                if !first_504.load(Ordering::SeqCst) {
                    before_first_504 += 1;
                }
            }
            Ok(r) => failures.push(format!("{} {:?}", r.status, r.body)),
            Err(e) => failures.push(e),
        }
    }
    for t in hung {
        let (r, took) = t.await.expect("hung request task");
        let r = r.expect("a hanging upstream still gets an answer");
        assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{r:?}");
        assert_eq!(r.version(), Some("canary"));
        assert_eq!(r.json()["kind"], "timeout");
        // Not before the service's timeout (a lower bound cannot flake), and nowhere near
        // the 30 s default.
        assert!(
            took >= request_timeout && took < Duration::from_secs(15),
            "504 after {took:?}"
        );
    }
    eprintln!(
        "{normal} normal requests while {HUNG} hung, {before_first_504} before the first 504"
    );
    assert_no_failures("normal requests", &failures);
    assert!(
        before_first_504 >= 10,
        "only {before_first_504} normal requests were answered while the canary hung"
    );
    assert!(
        hanging.accepted.load(Ordering::SeqCst) >= 1,
        "the gateway did connect to the hanging endpoint"
    );
    let metrics = gateway.metrics().encode();
    assert_eq!(
        metric_value(
            &metrics,
            r#"graylane_upstream_errors_total{service="search",version="canary",kind="timeout"}"#
        ),
        Some(HUNG as f64),
        "{metrics}"
    );
    // Afterwards: the same again, and the stable version is still fine.
    let r = get(gw, "/api/search?q=again", &[("X-Release-Phase", "canary")]).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    let r = get(gw, "/api/search?q=again", &[]).await;
    assert_eq!((r.status, r.version()), (StatusCode::OK, Some("stable")));
    shutdown(gateway).await;
}

// ---------------------------------------------------------------------------------------------
// 4. Slow and greedy clients: header_read_timeout and max_connections
// ---------------------------------------------------------------------------------------------

const LIMITED: &str = r#"
listeners:
  - bind: 127.0.0.1:0
    {limit}
services:
  - name: orders
    match: { path_prefix: /api/orders }
    versions:
      stable: { endpoints: ["{orders}"] }
"#;

/// How a slowloris client misbehaves.
#[derive(Debug, Clone, Copy)]
enum Slow {
    /// Sends a request head one byte every 50 ms, never finishing it.
    Trickle,
    /// Connects and sends nothing.
    Silent,
    /// Sends the start of the HTTP/2 preface and stops.
    PartialPreface,
    /// Completes the HTTP/2 handshake and never sends a request.
    Http2Idle,
}

/// Runs one slow client until the gateway closes its connection; returns how long that took,
/// or `None` if the connection was still open after `give_up`.
async fn slow_client(gw: SocketAddr, kind: Slow, give_up: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(gw).await.expect("connect");
    let opening: &[u8] = match kind {
        Slow::Trickle => b"GET /api/orders/slow HTTP/1.1\r\nHost: gw\r\nX-Pad: ",
        Slow::Silent => b"",
        Slow::PartialPreface => b"PRI * HTTP/2",
        // The connection preface and an empty SETTINGS frame.
        Slow::Http2Idle => b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
    };
    if stream.write_all(opening).await.is_err() {
        return Some(started.elapsed());
    }
    let mut buf = [0u8; 1024];
    while started.elapsed() < give_up {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return Some(started.elapsed()),
                // HTTP/2 SETTINGS and the like; a slow HTTP/1.1 client gets no response.
                Ok(_) => {}
            },
            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                if matches!(kind, Slow::Trickle) && stream.write_all(b"a").await.is_err() {
                    return Some(started.elapsed());
                }
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_by_the_header_read_timeout_while_others_are_served() {
    let timeout = Duration::from_millis(300);
    let _shared = RSS_LOCK.read().await;
    let orders = Upstream::start("orders");
    let gateway = start_gateway(config(&fill(
        LIMITED,
        &[
            ("orders", orders.addr.to_string()),
            ("limit", "header_read_timeout: 300ms".to_string()),
        ],
    )));
    let gw = addr(&gateway);

    let kinds = [
        Slow::Trickle,
        Slow::Silent,
        Slow::PartialPreface,
        Slow::Http2Idle,
    ];
    let mut slow = Vec::new();
    for i in 0..12 {
        let kind = kinds[i % kinds.len()];
        slow.push((
            kind,
            tokio::spawn(slow_client(gw, kind, Duration::from_secs(8))),
        ));
    }
    let mut served = 0u64;
    let mut failures = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while (served < 5 || !slow.iter().all(|(_, t)| t.is_finished()))
        && Instant::now() < deadline
        && served < 2_000
    {
        match try_get(gw, "/api/orders/1", &[]).await {
            Ok(r) if r.status == StatusCode::OK => served += 1,
            Ok(r) => failures.push(format!("{} {:?}", r.status, r.body)),
            Err(e) => failures.push(e),
        }
    }
    for (kind, t) in slow {
        let took = t.await.expect("slow client task");
        let took = took.unwrap_or_else(|| panic!("{kind:?}: still open after 8 s"));
        // Cut off by the configured 300 ms, not the 10 s default; and not before it.
        assert!(
            took >= timeout - Duration::from_millis(50) && took < Duration::from_secs(5),
            "{kind:?}: closed after {took:?}"
        );
    }
    assert_no_failures("normal clients", &failures);
    assert!(served >= 5, "served {served}");
    assert_eq!(
        orders.received(),
        served,
        "only the normal clients' requests reached the upstream"
    );

    // The timeout also bounds how long an HTTP/1.1 keep-alive connection may sit idle.
    let mut idle = Http1::connect(gw).await.expect("connect");
    assert_eq!(
        idle.get("/api/orders/1", &[]).await.expect("answer").status,
        StatusCode::OK
    );
    tokio::time::sleep(timeout * 4).await;
    assert!(idle.get("/api/orders/2", &[]).await.is_err());
    shutdown(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_connections_are_closed_until_one_frees_up() {
    let _shared = RSS_LOCK.read().await;
    let orders = Upstream::start("orders");
    let gateway = start_gateway(config(&fill(
        LIMITED,
        &[
            ("orders", orders.addr.to_string()),
            ("limit", "max_connections: 4".to_string()),
        ],
    )));
    let gw = addr(&gateway);

    // Four connections, across both workers, each proven accepted by an answer.
    let mut open = Vec::new();
    for _ in 0..4 {
        let mut c = Http1::connect(gw).await.expect("connect");
        assert_eq!(
            c.get("/api/orders/1", &[]).await.expect("answer").status,
            StatusCode::OK
        );
        open.push(c);
    }

    // The fifth is accepted by the kernel and closed by the gateway without an answer.
    let refused = raw_exchange(
        gw,
        b"GET /api/orders/5 HTTP/1.1\r\nHost: gw\r\n\r\n".to_vec(),
        Duration::from_secs(5),
    )
    .await;
    assert!(
        refused.closed,
        "the fifth connection is closed: {refused:?}"
    );
    assert!(refused.bytes.is_empty(), "and gets no answer: {refused:?}");
    assert!(try_get(gw, "/api/orders/5", &[]).await.is_err());
    assert_eq!(orders.received(), 4);

    // The four keep working.
    for c in &mut open {
        assert_eq!(
            c.get("/api/orders/2", &[]).await.expect("answer").status,
            StatusCode::OK
        );
    }

    // Closing one makes room for exactly one more.
    drop(open.pop());
    let mut replacement = eventually("a free connection slot", || async {
        let mut c = Http1::connect(gw).await.ok()?;
        let r = c.get("/api/orders/3", &[]).await.ok()?;
        (r.status == StatusCode::OK).then_some(c)
    })
    .await;
    let refused = raw_exchange(
        gw,
        b"GET /api/orders/6 HTTP/1.1\r\nHost: gw\r\n\r\n".to_vec(),
        Duration::from_secs(5),
    )
    .await;
    assert!(
        refused.closed && refused.bytes.is_empty(),
        "full again: {refused:?}"
    );
    assert_eq!(
        replacement
            .get("/api/orders/4", &[])
            .await
            .expect("answer")
            .status,
        StatusCode::OK
    );
    let metrics = gateway.metrics().encode();
    assert_eq!(
        metric_value(&metrics, "graylane_open_connections"),
        Some(4.0),
        "{metrics}"
    );
    shutdown(gateway).await;
}

// ---------------------------------------------------------------------------------------------
// 6. Memory stays flat over many distinct users
// ---------------------------------------------------------------------------------------------

const STICKY_RELEASE: &str = r#"
listeners:
  - bind: 127.0.0.1:0
services:
  - name: payment
    match: { path_prefix: /api/payment }
    versions:
      stable: { endpoints: ["{stable}"] }
      canary: { endpoints: ["{canary}"] }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      force:
        - header: { name: X-Release-Phase, equals: canary }
      bucket_by: "header:X-User-Id"
      sticky: { cookie: graylane_lane, max_age: 1h }
      steps:
        - weight: 50
"#;

/// Distinct user ids the memory test cycles through.
const USERS: u64 = 100_000;

/// Where `needle` first occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The value of header `name` in an HTTP/1.1 head (one header per line, no folding).
fn head_value<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// An upstream that answers every request with a fixed two-byte body, parsing no more than
/// it must. The memory test measures the gateway, and with the JSON-echoing test upstream
/// and a hyper client in a debug build, those two would take most of the CPU.
struct FastUpstream {
    addr: SocketAddr,
    received: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl FastUpstream {
    async fn start() -> FastUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the upstream");
        let addr = listener.local_addr().expect("local addr");
        let received = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&received);
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let count = Arc::clone(&count);
                tokio::spawn(async move {
                    let mut buf = Vec::with_capacity(4096);
                    let mut chunk = [0u8; 4096];
                    loop {
                        // Answer every complete head in the buffer; the gateway sends GETs
                        // without a body.
                        while let Some(end) = find(&buf, b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            count.fetch_add(1, Ordering::Relaxed);
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if socket.write_all(answer).await.is_err() {
                                return;
                            }
                        }
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        FastUpstream {
            addr,
            received,
            task,
        }
    }
}

impl Drop for FastUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A response as the raw client read it.
struct RawReply {
    status: u16,
    head: String,
}

/// A minimal HTTP/1.1 keep-alive client for GETs, cheap enough that the gateway is what a
/// debug build spends its time on.
struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    async fn connect(addr: SocketAddr) -> Result<RawClient, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        Ok(RawClient {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    async fn get(&mut self, path: &str, header: (&str, &str)) -> Result<RawReply, String> {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: gw\r\n{}: {}\r\n\r\n",
            header.0, header.1
        );
        tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(request.as_bytes()))
            .await
            .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))?
    }

    async fn exchange(&mut self, request: &[u8]) -> Result<RawReply, String> {
        self.stream
            .write_all(request)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                break end + 4;
            }
            self.fill(&mut chunk).await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let status = head
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| format!("not an HTTP/1.1 response: {head:?}"))?;
        let length: usize = head_value(&head, "content-length")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("no content-length: {head:?}"))?;
        while self.buf.len() < head_end + length {
            self.fill(&mut chunk).await?;
        }
        self.buf.drain(..head_end + length);
        Ok(RawReply { status, head })
    }

    async fn fill(&mut self, chunk: &mut [u8]) -> Result<(), String> {
        match self.stream.read(chunk).await {
            Ok(0) => Err("connection closed".to_string()),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) => Err(format!("read: {e}")),
        }
    }
}

/// Sends requests `range` (request `n` is from user `n % USERS`) from `clients` keep-alive
/// connections; returns the versions seen and any failures.
async fn drive_users(
    gw: SocketAddr,
    range: std::ops::Range<u64>,
    clients: usize,
    deadline: Instant,
) -> (BTreeMap<String, u64>, Vec<String>) {
    let next = Arc::new(AtomicU64::new(range.start));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (next, end) = (Arc::clone(&next), range.end);
        tasks.push(tokio::spawn(async move {
            let mut seen: BTreeMap<String, u64> = BTreeMap::new();
            let mut failures = Vec::new();
            let mut conn: Option<RawClient> = None;
            while Instant::now() < deadline && failures.len() < 20 {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= end {
                    break;
                }
                if conn.is_none() {
                    match RawClient::connect(gw).await {
                        Ok(c) => conn = Some(c),
                        Err(e) => {
                            failures.push(e);
                            continue;
                        }
                    }
                }
                let Some(open) = conn.as_mut() else { continue };
                let user = format!("user-{}", n % USERS);
                match open.get("/api/payment/pay", ("X-User-Id", &user)).await {
                    Ok(r) if r.status == 200 => {
                        let version = head_value(&r.head, "x-graylane-version").unwrap_or("");
                        // Every bucketed answer pins the user with the sticky cookie.
                        let cookie = head_value(&r.head, "set-cookie").unwrap_or("");
                        if !cookie.starts_with("graylane_lane=v1.") {
                            failures.push(format!("{user}: cookie {cookie:?} for {version:?}"));
                        }
                        *seen.entry(version.to_string()).or_default() += 1;
                    }
                    Ok(r) => failures.push(format!("{user}: {}", r.head)),
                    Err(e) => {
                        failures.push(format!("{user}: {e}"));
                        conn = None;
                    }
                }
            }
            (seen, failures)
        }));
    }
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    let mut failures = Vec::new();
    for t in tasks {
        let (s, f) = t.await.expect("client task");
        for (k, v) in s {
            *seen.entry(k).or_default() += v;
        }
        failures.extend(f);
    }
    (seen, failures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_flat_over_many_distinct_users() {
    const CLIENTS: usize = 8;
    const WARM_UP: u64 = 20_000;
    const MAX_GROWTH: u64 = 32 << 20;
    let total = scale(100_000, 1_000_000);
    let deadline = Instant::now() + Duration::from_secs(scale(120, 900));

    let _exclusive = RSS_LOCK.write().await;
    let stable = FastUpstream::start().await;
    let canary = FastUpstream::start().await;
    let gateway = start_gateway(config(&fill(
        STICKY_RELEASE,
        &[
            ("stable", stable.addr.to_string()),
            ("canary", canary.addr.to_string()),
        ],
    )));
    let gw = addr(&gateway);

    let started = Instant::now();
    let (warm_seen, failures) = drive_users(gw, 0..WARM_UP, CLIENTS, deadline).await;
    assert_no_failures("warm-up", &failures);
    let warm_rss = rss_bytes();
    let (seen, failures) = drive_users(gw, WARM_UP..total, CLIENTS, deadline).await;
    assert_no_failures("load", &failures);
    let end_rss = rss_bytes();
    let took = started.elapsed();

    let answered: u64 = warm_seen.values().chain(seen.values()).sum();
    let growth = end_rss.saturating_sub(warm_rss);
    eprintln!(
        "{answered} requests from {} users in {took:?} ({:.0}/s): RSS {:.1} MiB after the warm-up, {:.1} MiB at the end (+{:.1} MiB); versions {seen:?}",
        USERS.min(total),
        answered as f64 / took.as_secs_f64(),
        mib(warm_rss),
        mib(end_rss),
        mib(growth)
    );
    assert_eq!(
        answered, total,
        "every request was answered before the deadline"
    );
    assert_eq!(
        stable.received.load(Ordering::Relaxed) + canary.received.load(Ordering::Relaxed),
        total
    );
    assert!(
        seen.get("stable").copied().unwrap_or(0) > total / 4
            && seen.get("canary").copied().unwrap_or(0) > total / 4,
        "a 50% release splits the users: {seen:?}"
    );
    assert!(
        growth < MAX_GROWTH,
        "RSS grew by {:.1} MiB over {} requests after the warm-up",
        mib(growth),
        total - WARM_UP
    );
    shutdown(gateway).await;
}

// ---------------------------------------------------------------------------------------------
// 7. A configuration with 10,000 services
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_services_load_and_route() {
    const SERVICES: usize = 10_000;
    // Generous for a debug build on a busy 2-core machine (about 3.5 s to load when measured):
    // this catches a blow-up, such as quadratic work with a real cost per pair, not small
    // regressions. `examples/load_10k.rs` measures the release build.
    const MAX_LOAD: Duration = Duration::from_secs(15);
    // About 70 MiB when measured.
    const MAX_GROWTH: u64 = 512 << 20;

    let _exclusive = RSS_LOCK.write().await;
    let stable = Upstream::start("stable");
    let canary = Upstream::start("canary");
    let yaml = many_services::many_services_yaml(SERVICES, stable.addr, canary.addr);
    let rss_before = rss_bytes();

    let started = Instant::now();
    let cfg = graylane_config::load_str(&yaml, "10k.yaml", std::path::Path::new("."))
        .expect("the generated configuration is valid");
    let parsed = started.elapsed();
    let gateway = start_gateway(cfg);
    let loaded = started.elapsed();
    let rss_loaded = rss_bytes();

    let reload_started = Instant::now();
    let cfg = graylane_config::load_str(&yaml, "10k.yaml", std::path::Path::new("."))
        .expect("the generated configuration is valid");
    gateway.apply(cfg);
    let reloaded = reload_started.elapsed();
    let growth = rss_loaded.saturating_sub(rss_before);
    eprintln!(
        "{SERVICES} services, {} KiB of YAML: parse+validate {parsed:?}, + start (compile) {:?} = {loaded:?}; reload {reloaded:?}; RSS +{:.1} MiB ({:.1} MiB after loading)",
        yaml.len() / 1024,
        loaded - parsed,
        mib(growth),
        mib(rss_loaded)
    );

    // The last service routes, and it is that service that decides: its own force rule
    // selects its canary, the rule of a service whose prefix is a prefix of its own does not.
    let gw = addr(&gateway);
    let last = SERVICES - 1;
    let path = format!("/svc/{last}/orders");
    let r = get(gw, &path, &[]).await;
    assert_eq!((r.status, r.version()), (StatusCode::OK, Some("stable")));
    assert_eq!(r.upstream_version(), "stable");
    let own = format!("canary-{last}");
    let r = get(gw, &path, &[("X-Release-Phase", &own)]).await;
    assert_eq!((r.status, r.version()), (StatusCode::OK, Some("canary")));
    assert_eq!(r.upstream_version(), "canary");
    assert_eq!(r.json()["path"], path.as_str());
    let other = format!("canary-{}", last / 10);
    let r = get(gw, &path, &[("X-Release-Phase", &other)]).await;
    assert_eq!(
        r.version(),
        Some("stable"),
        "svc-{} did not decide",
        last / 10
    );
    let r = get(gw, "/nothing/here", &[]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    assert!(
        loaded < MAX_LOAD,
        "loading {SERVICES} services took {loaded:?}"
    );
    assert!(
        reloaded < MAX_LOAD,
        "reloading {SERVICES} services took {reloaded:?}"
    );
    assert!(
        growth < MAX_GROWTH,
        "{SERVICES} services took {:.1} MiB",
        mib(growth)
    );
    shutdown(gateway).await;
}
