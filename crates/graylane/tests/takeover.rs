//! Listeners are exclusive, and restarts lose nothing: a second `graylane serve` on an address in
//! use fails; `serve --takeover` replaces a running process under load without one failed
//! request, keeping the release state; a plain SIGTERM answers every request sent on the
//! connections it had.
//!
//! Every test runs the real binary on loopback ports; every wait and every load loop is bounded.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;

const ALICE: &str = "alice-secret-takeover";
const TOKEN_ENV: &[(&str, &str)] = &[("GRAYLANE_TEST_TOKEN_ALICE", ALICE)];

const CONFIG: &str = r#"
listeners:
  - bind: 127.0.0.1:{port}
admin:
  bind: 127.0.0.1:{admin}
  tokens:
    - { name: alice, env: GRAYLANE_TEST_TOKEN_ALICE, role: operator }
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
      bucket_by: "header:X-User-Id"
      steps:
        - weight: 0
          pause: manual
        - weight: 30
          pause: manual
        - weight: 100
"#;

/// Keep-alive client connections putting load on the gateway.
const CLIENTS: usize = 8;
/// The longest any load runs, whatever happens.
const LOAD_LIMIT: Duration = Duration::from_secs(30);

/// A configuration on free loopback ports in front of two test upstreams, in a test folder.
struct Site {
    dir: PathBuf,
    file: PathBuf,
    proxy: SocketAddr,
    admin: SocketAddr,
    _stable: Upstream,
    _canary: Upstream,
}

impl Site {
    fn new(test: &str) -> Site {
        let dir = temp_dir(test);
        let file = dir.join("graylane.yaml");
        let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let (proxy, admin) = (loopback(candidate_port()), loopback(candidate_port()));
        let (stable, canary) = (Upstream::start("stable"), Upstream::start("canary"));
        write_atomic(&file, &Site::yaml(proxy, admin, &stable, &canary));
        Site {
            dir,
            file,
            proxy,
            admin,
            _stable: stable,
            _canary: canary,
        }
    }

    fn yaml(proxy: SocketAddr, admin: SocketAddr, stable: &Upstream, canary: &Upstream) -> String {
        fill(
            CONFIG,
            &[
                ("port", proxy.port().to_string()),
                ("admin", admin.port().to_string()),
                ("stable", stable.addr.to_string()),
                ("canary", canary.addr.to_string()),
            ],
        )
    }

    /// `graylane serve` on the site's file and data folder, plus `extra` arguments.
    fn spawn(&self, extra: &[&str]) -> Graylane {
        let mut args = vec![
            "serve",
            "--config",
            self.file.to_str().unwrap(),
            "--workers",
            "2",
            "--drain-timeout",
            "10s",
        ];
        args.extend_from_slice(extra);
        spawn_with_env(&self.dir, &args, TOKEN_ENV)
    }

    async fn wait_ready(&self, process: &mut Graylane) {
        let deadline = Instant::now() + POLL_DEADLINE;
        loop {
            process.assert_running();
            if matches!(try_get(self.admin, "/readyz", &[]).await, Ok(r) if r.status == StatusCode::OK)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "graylane not ready within {POLL_DEADLINE:?}\n{}",
                process.logs()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn release(&self, method: Method, path: &str, body: Value) -> Value {
        let auth = format!("Bearer {ALICE}");
        let r = request(
            self.admin,
            method.clone(),
            path,
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            if method == Method::GET {
                String::new()
            } else {
                body.to_string()
            },
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{method} {path}: {}", r.text());
        r.json()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What one load client saw.
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    /// Requests sent after the signal and answered.
    ok_after_signal: u64,
    /// Requests on connections made before the signal that got no answer, or not a 200.
    failures: Vec<String>,
    /// Connections made after the signal that were refused or reset (expected once the
    /// listener is closed).
    refused_after_signal: u64,
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Sends requests back to back until `stop`: on one keep-alive connection (a new one whenever
/// the server closes it with `Connection: close`), or on a new connection each time if `fresh`.
/// Once `signalled` is set it opens no new connection; a request that fails on a connection made
/// after the signal is counted apart, not as a failure.
async fn load_client(
    addr: SocketAddr,
    client: usize,
    fresh: bool,
    stop: Arc<AtomicBool>,
    signalled: Arc<AtomicBool>,
) -> Tally {
    let mut tally = Tally::default();
    // The connection, and whether it was made before the signal.
    let mut conn: Option<(SendRequest<Full<Bytes>>, bool)> = None;
    let started = Instant::now();
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) && started.elapsed() < LOAD_LIMIT {
        let reusable = match conn.as_mut() {
            Some((s, _)) => s.ready().await.is_ok(),
            None => false,
        };
        if !reusable {
            if signalled.load(Ordering::SeqCst) {
                break;
            }
            match connect(addr).await {
                // Read after connecting: a connection made before the signal was queued or
                // accepted before the process heard of it.
                Ok(s) => conn = Some((s, !signalled.load(Ordering::SeqCst))),
                Err(_) if signalled.load(Ordering::SeqCst) => {
                    tally.refused_after_signal += 1;
                    break;
                }
                Err(e) => {
                    tally.failures.push(format!("client {client}: {e}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some((s, before_signal)) = conn.as_mut() else {
            continue;
        };
        let before_signal = *before_signal;
        let after_signal = signalled.load(Ordering::SeqCst);
        n += 1;
        let req = Request::get("/api/payment/orders")
            .header(header::HOST, addr.to_string())
            .header("X-User-Id", format!("u-{client}-{n}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let exchange = async {
            let resp = s.send_request(req).await.map_err(|e| e.to_string())?;
            let (parts, body) = resp.into_parts();
            body.collect().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(parts)
        };
        let failure = match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(Ok(parts)) if parts.status == StatusCode::OK => {
                tally.ok += 1;
                if after_signal {
                    tally.ok_after_signal += 1;
                }
                let closing = parts
                    .headers
                    .get(header::CONNECTION)
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
                if fresh || closing {
                    conn = None;
                }
                continue;
            }
            Ok(Ok(parts)) => parts.status.to_string(),
            Ok(Err(e)) => e,
            Err(_) => format!("no answer within {REQUEST_TIMEOUT:?}"),
        };
        conn = None;
        if before_signal {
            let kind = if fresh { "new" } else { "keep-alive" };
            tally
                .failures
                .push(format!("client {client} ({kind}), request {n}: {failure}"));
        } else {
            tally.refused_after_signal += 1;
            break;
        }
    }
    tally
}

/// Runs [`CLIENTS`] load clients, half of them on keep-alive connections and half on a new
/// connection per request; returns the flags that stop and "signal" them, and their tallies to
/// collect.
fn start_load(
    addr: SocketAddr,
) -> (
    Arc<AtomicBool>,
    Arc<AtomicBool>,
    Vec<tokio::task::JoinHandle<Tally>>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let signalled = Arc::new(AtomicBool::new(false));
    let clients = (0..CLIENTS)
        .map(|c| {
            tokio::spawn(load_client(
                addr,
                c,
                c % 2 == 1,
                Arc::clone(&stop),
                Arc::clone(&signalled),
            ))
        })
        .collect();
    (stop, signalled, clients)
}

async fn collect(clients: Vec<tokio::task::JoinHandle<Tally>>) -> Tally {
    let mut total = Tally::default();
    for c in clients {
        let t = c.await.unwrap();
        total.ok += t.ok;
        total.ok_after_signal += t.ok_after_signal;
        total.failures.extend(t.failures);
        total.refused_after_signal += t.refused_after_signal;
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_under_load_fails_no_request_and_keeps_the_release_state() {
    let site = Site::new("takeover");
    let mut old = site.spawn(&[]);
    site.wait_ready(&mut old).await;
    let promoted = site
        .release(Method::POST, "/api/v1/releases/payment/promote", json!({}))
        .await;
    assert_eq!(promoted["step"], 1, "{promoted}");

    let (stop, _signalled, clients) = start_load(site.proxy);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut new = site.spawn(&["--takeover"]);
    let status = old.wait_exit(Duration::from_secs(30));
    assert_eq!(
        status.code(),
        Some(0),
        "the old process exits 0\n{}",
        old.logs()
    );
    site.wait_ready(&mut new).await;
    // Load on the new process alone for a while.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let tally = collect(clients).await;
    assert!(
        tally.failures.is_empty(),
        "{} of {} requests failed across the takeover: {:#?}\n--- old\n{}\n--- new\n{}",
        tally.failures.len(),
        tally.ok + tally.failures.len() as u64,
        tally.failures,
        old.logs(),
        new.logs()
    );
    assert!(
        tally.ok > 100,
        "too little load to mean anything: {tally:?}"
    );
    assert!(
        old.stderr().contains("took the listeners over"),
        "{}",
        old.logs()
    );

    // The new process has the release where it was, and serves.
    let release = site
        .release(Method::GET, "/api/v1/releases/payment", json!({}))
        .await;
    assert_eq!(release["step"], 1, "{release}");
    let r = get(site.proxy, "/api/payment/orders", &[("X-User-Id", "u-1")]).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");

    // And it can be taken over in turn.
    let mut third = site.spawn(&["--takeover"]);
    let status = new.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{}", new.logs());
    site.wait_ready(&mut third).await;
    third.signal("TERM");
    let status = third.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", third.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_answers_every_request_on_the_connections_it_had() {
    let site = Site::new("sigterm-load");
    let mut process = site.spawn(&[]);
    site.wait_ready(&mut process).await;
    let (stop, signalled, clients) = start_load(site.proxy);
    tokio::time::sleep(Duration::from_millis(700)).await;
    signalled.store(true, Ordering::SeqCst);
    process.signal("TERM");
    let status = process.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{}", process.logs());
    stop.store(true, Ordering::SeqCst);
    let tally = collect(clients).await;
    assert!(
        tally.failures.is_empty(),
        "{} of {} requests failed across SIGTERM: {:#?}\n{}",
        tally.failures.len(),
        tally.ok + tally.failures.len() as u64,
        tally.failures,
        process.logs()
    );
    assert!(
        tally.ok > 100,
        "too little load to mean anything: {tally:?}"
    );
}

/// `serve` with the site's configuration but another admin port (and its own data folder), so
/// that only `conflict` is shared with the running process.
fn second_serve(site: &Site, test: &str, conflict: &str) -> (Output, SocketAddr) {
    let dir = temp_dir(test);
    let file = dir.join("graylane.yaml");
    let other = SocketAddr::from(([127, 0, 0, 1], candidate_port()));
    let (proxy, admin, shared) = match conflict {
        "proxy" => (site.proxy, other, site.proxy),
        _ => (other, site.admin, site.admin),
    };
    let (stable, canary) = (Upstream::start("stable"), Upstream::start("canary"));
    write_atomic(&file, &Site::yaml(proxy, admin, &stable, &canary));
    let mut p = spawn_with_env(
        &dir,
        &["serve", "--config", file.to_str().unwrap()],
        TOKEN_ENV,
    );
    let status = p.wait_exit(Duration::from_secs(10));
    let out = Output {
        status,
        stdout: p.stdout(),
        stderr: p.stderr(),
    };
    let _ = std::fs::remove_dir_all(&dir);
    (out, shared)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_serve_on_an_address_in_use_exits_with_address_in_use() {
    let site = Site::new("exclusive");
    let mut first = site.spawn(&[]);
    site.wait_ready(&mut first).await;
    for conflict in ["proxy", "admin"] {
        let (out, addr) = second_serve(&site, &format!("exclusive-{conflict}"), conflict);
        assert_eq!(out.code(), Some(1), "{conflict}: {out:?}");
        let stderr = out.stderr.to_lowercase();
        assert!(
            stderr.contains(&addr.to_string()) && stderr.contains("address already in use"),
            "{conflict}: the error names {addr} and says it is in use: {}",
            out.stderr
        );
    }
    // The first process still has all of its traffic.
    for i in 0..20 {
        let user = format!("u-{i}");
        let r = get(site.proxy, "/api/payment/orders", &[("X-User-Id", &user)]).await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
    }
    first.assert_running();
    first.signal("TERM");
    assert_eq!(first.wait_exit(Duration::from_secs(20)).code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_without_a_running_process_says_so() {
    let site = Site::new("takeover-alone");
    let mut p = site.spawn(&["--takeover"]);
    let status = p.wait_exit(COMMAND_DEADLINE);
    assert_eq!(status.code(), Some(1), "{}", p.logs());
    assert!(
        p.stderr().contains("no running graylane to take over")
            && p.stderr().contains("takeover.sock"),
        "{}",
        p.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_that_fails_before_draining_leaves_the_running_process_serving() {
    let site = Site::new("takeover-fails");
    let mut old = site.spawn(&[]);
    site.wait_ready(&mut old).await;
    // The new configuration adds a listener on an address someone else holds.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap();
    let yaml = std::fs::read_to_string(&site.file).unwrap().replace(
        "listeners:\n",
        &format!("listeners:\n  - bind: {busy_addr}\n"),
    );
    let busy_file = site.dir.join("busy.yaml");
    write_atomic(&busy_file, &yaml);
    let mut failed = spawn_with_env(
        &site.dir,
        &[
            "serve",
            "--config",
            busy_file.to_str().unwrap(),
            "--takeover",
        ],
        TOKEN_ENV,
    );
    let status = failed.wait_exit(COMMAND_DEADLINE);
    assert_eq!(status.code(), Some(1), "{}", failed.logs());
    let stderr = failed.stderr().to_lowercase();
    assert!(
        stderr.contains(&busy_addr.to_string()) && stderr.contains("address already in use"),
        "{}",
        failed.logs()
    );

    // The running process never stopped accepting.
    old.assert_running();
    for i in 0..20 {
        let user = format!("u-{i}");
        let r = get(site.proxy, "/api/payment/orders", &[("X-User-Id", &user)]).await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
    }
    site.wait_ready(&mut old).await;

    // And it can still be taken over.
    let mut new = site.spawn(&["--takeover"]);
    let status = old.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{}", old.logs());
    site.wait_ready(&mut new).await;
    new.signal("TERM");
    assert_eq!(
        new.wait_exit(Duration::from_secs(20)).code(),
        Some(0),
        "{}",
        new.logs()
    );
    drop(busy);
}
