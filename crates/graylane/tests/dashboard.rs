//! The web dashboard in a real browser: Debian's chromium, driven by Playwright
//! (tests/dashboard/drive.mjs), against a real `graylane serve` with two real upstreams and
//! background traffic from distinct users. The script signs in with each role, watches the
//! charts fill, promotes, sets a weight with the slider, meets a refused action, aborts, sees
//! the "connection lost" banner (and the actions held) while this test restarts the server,
//! watches the error-rate axis stop at 100% when the canary fails everything, compares and reverts
//! configuration revisions and filters the audit log; it checks the real traffic split
//! through the proxy after each step. An adaptive release grows on its own, then (this test
//! makes its candidate fail once it has grown) is stopped by its exposure budget: the script
//! reads the path of weights, the figures of each change and the spent budget in its step plan.
//! Screenshots land under the target's temporary folder.
//!
//! Needs chromium and node (scripts/deps installs both, and playwright-core with `npm ci`);
//! without them the test fails and says what is missing.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use http::{Method, StatusCode};
use serde_json::Value;

const VIEWER: &str = "dash-viewer-secret";
const OPERATOR: &str = "dash-operator-secret";
const ADMIN: &str = "dash-admin-secret";
const TOKENS: [(&str, &str); 3] = [
    ("TEST_TOKEN_VIEWER", VIEWER),
    ("TEST_TOKEN_OPERATOR", OPERATOR),
    ("TEST_TOKEN_ADMIN", ADMIN),
];

/// Upper bound on the browser script (it bounds itself at 240 s, every wait inside too).
const SCRIPT_DEADLINE: Duration = Duration::from_secs(300);
/// Upper bound on installing playwright-core when the folder has no node_modules yet.
const NPM_DEADLINE: Duration = Duration::from_secs(300);

const CONFIG: &str = r#"
listeners:
  - bind: 127.0.0.1:{port}
admin:
  bind: 127.0.0.1:{admin}
  tokens:
    - { name: vera, env: TEST_TOKEN_VIEWER, role: viewer }
    - { name: otto, env: TEST_TOKEN_OPERATOR, role: operator }
    - { name: ada, env: TEST_TOKEN_ADMIN, role: admin }
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
      steps:
        - weight: 0
          pause: manual
        - weight: 20
          pause: manual
        - weight: 50
          pause: manual
        - weight: 100
      analysis:
        interval: 1s
        min_requests: 20
        checks:
          - metric: error_rate
            max_increase: 0.05
  - name: orders
    match: { path_prefix: /orders }
    versions:
      stable: { endpoints: ["{stable}"] }
      canary: { endpoints: ["{orders_canary}"] }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      bucket_by: "header:X-User-Id"
      steps: adaptive
      adaptive: { start: 20, max: 100, grow: 2, shrink: 0.5, min_pause: 20s, max_pause: 1m }
      max_bad_requests: 40
      analysis:
        interval: 1s
        min_requests: 20
        checks:
          - metric: error_rate
            max: 0.2
  - name: search
    match: { path_prefix: /search }
    versions:
      a: { endpoints: ["{stable}"] }
      b: { endpoints: ["{canary}"] }
    release:
      strategy: experiment
      bucket_by: "header:X-User-Id"
      variants:
        - { name: control, version: a, weight: 50 }
        - { name: treatment, version: b, weight: 50 }
"#;

/// What revision 2 adds (and the revert to revision 1 takes away again).
const CATALOG: &str = r#"  - name: catalog
    match: { path_prefix: /catalog }
    versions:
      stable: { endpoints: ["{stable}"] }
"#;

fn driver_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard")
}

/// Chromium and node must be there: a missing browser fails the test, never skips it.
fn check_tools() -> PathBuf {
    let chromium = PathBuf::from(
        std::env::var("GRAYLANE_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
    );
    assert!(
        chromium.exists(),
        "the dashboard test needs Debian's chromium at {} (run scripts/deps, or \
         `apt-get install -y chromium`; GRAYLANE_TEST_CHROMIUM names another path)",
        chromium.display()
    );
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "the dashboard test needs node on PATH (run scripts/deps): {node:?}"
    );
    let installed = driver_dir().join("node_modules/playwright-core/package.json");
    if !installed.exists() {
        // A clean checkout: install what package-lock.json pins (needs the npm registry once).
        let mut npm = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(driver_dir())
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run npm (run scripts/deps): {e}"));
        let until = Instant::now() + NPM_DEADLINE;
        let status = loop {
            if let Some(status) = npm.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > until {
                let _ = npm.kill();
                panic!(
                    "`npm ci` in {} took longer than {NPM_DEADLINE:?}",
                    driver_dir().display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        assert!(
            status.success() && installed.exists(),
            "`npm ci` in {} failed ({status}); run scripts/deps",
            driver_dir().display()
        );
    }
    chromium
}

/// Requests through the proxy from many distinct users until stopped (or 10 minutes), so the
/// live series and the experiment have data: payment (every 4th request forced to the
/// canary, so it has traffic at 0%), the adaptive orders release and the search experiment.
/// Errors are expected while the test restarts the server.
struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(proxy: std::net::SocketAddr) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (flag, count) = (Arc::clone(&stop), Arc::clone(&sent));
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let until = Instant::now() + Duration::from_secs(600);
                let mut i: u64 = 0;
                while !flag.load(Ordering::SeqCst) && Instant::now() < until {
                    i += 1;
                    let user = format!("bg-user-{}", i % 400);
                    let mut headers = vec![("x-user-id", user.as_str())];
                    if i.is_multiple_of(4) {
                        headers.push(("x-release-phase", "canary"));
                    }
                    if try_get(proxy, "/api/payment/x", &headers).await.is_ok() {
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    let _ = try_get(proxy, "/orders/x", &[("x-user-id", user.as_str())]).await;
                    let _ = try_get(proxy, "/search/q", &[("x-user-id", user.as_str())]).await;
                    tokio::time::sleep(Duration::from_millis(40)).await;
                }
            });
        });
        Traffic {
            stop,
            sent,
            thread: Some(thread),
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Makes the orders candidate fail every request once its adaptive release has grown to 80%
/// (the first growth from 20%, by grow², while the release waits `min_pause` before the next):
/// a candidate that breaks under more load. Bounded: gives up after 4 minutes or when stopped.
fn degrade_orders_once_grown(
    admin: std::net::SocketAddr,
    candidate: Arc<Upstream>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let auth = format!("Bearer {VIEWER}");
            let until = Instant::now() + Duration::from_secs(240);
            while !stop.load(Ordering::SeqCst) && Instant::now() < until {
                if let Ok(r) = try_get(
                    admin,
                    "/api/v1/releases/orders",
                    &[("authorization", auth.as_str())],
                )
                .await
                    && r.json()["weights"]["canary"].as_f64() == Some(80.0)
                {
                    candidate.fail_every(1);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    })
}

/// The node process; if the test ends early it gets SIGTERM first, so Playwright closes the
/// browser it started, then SIGKILL.
struct Driver(std::process::Child);

impl Drop for Driver {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-s", "TERM", &self.0.id().to_string()])
            .status();
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if self.0.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Stops the served process (SIGTERM, clean exit), keeping its folder and store.
fn stop_server(s: &mut Served) {
    s.process.signal("TERM");
    let status = s.process.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", s.process.logs());
}

/// Starts serve again on the same file, store and ports.
async fn start_server(s: &mut Served) {
    s.process = spawn_with_env(
        &s.dir,
        &[
            "serve",
            "--config",
            s.file.to_str().unwrap(),
            "--workers",
            "1",
            "--drain-timeout",
            "2s",
            "--watch-interval",
            "100ms",
        ],
        &TOKENS,
    );
    let admin = s.admin;
    eventually_within(
        Duration::from_secs(20),
        "the restarted admin API",
        || async move {
            let r = try_get(admin, "/readyz", &[]).await.ok()?;
            (r.status == StatusCode::OK).then_some(())
        },
    )
    .await;
}

#[test]
fn the_dashboard_watches_and_steers_a_release_in_a_real_browser() {
    let chromium = check_tools();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let orders_canary = Arc::new(Upstream::start("canary"));
    let mut s = rt.block_on(Served::start_restartable(
        "dashboard",
        CONFIG,
        &[("orders_canary", orders_canary.addr.to_string())],
        &TOKENS,
    ));
    let stop_degrade = Arc::new(AtomicBool::new(false));
    let degrade = degrade_orders_once_grown(s.admin, orders_canary, Arc::clone(&stop_degrade));

    // The page is served from the binary, with its files and a strict policy.
    rt.block_on(async {
        let page = get(s.admin, "/", &[]).await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(
            page.text().contains("/dashboard/js/app.js"),
            "{}",
            page.text()
        );
        assert!(
            page.headers["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("script-src 'self'")
        );
        let js = get(s.admin, "/dashboard/js/app.js", &[]).await;
        assert_eq!(js.status, StatusCode::OK);
        assert!(
            js.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/javascript")
        );
        assert_eq!(
            get(s.admin, "/dashboard/nope.js", &[]).await.status,
            StatusCode::NOT_FOUND
        );
    });

    // Revision 2 (the script compares it with revision 1, then reverts to 1).
    let yaml = std::fs::read_to_string(&s.file).unwrap();
    let changed = format!(
        "{yaml}{}",
        fill(CATALOG, &[("stable", s.stable.addr.to_string())])
    );
    rt.block_on(async {
        let r = s
            .api(
                Method::PUT,
                "/api/v1/config?message=add%20the%20catalog",
                ADMIN,
                &changed,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    });

    let traffic = Traffic::start(s.proxy);
    rt.block_on(eventually("background traffic", || async {
        (traffic.sent.load(Ordering::SeqCst) > 20).then_some(())
    }));

    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();
    let stderr_path = shots.join("driver-stderr.txt");
    let mut node = Command::new("node")
        .arg("drive.mjs")
        .current_dir(driver_dir())
        .env("DASHBOARD_URL", format!("http://{}/", s.admin))
        .env("PROXY_URL", format!("http://{}", s.proxy))
        .env("VIEWER_TOKEN", VIEWER)
        .env("OPERATOR_TOKEN", OPERATOR)
        .env("ADMIN_TOKEN", ADMIN)
        .env("SCREENSHOT_DIR", &shots)
        .env("CHROMIUM", &chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node: {e}"));
    let mut to_node = node.stdin.take().unwrap();
    let from_node = node.stdout.take().unwrap();
    let mut node = Driver(node);
    let (tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(from_node).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    // Read the script's lines as they come; restart the server when it asks.
    let until = Instant::now() + SCRIPT_DEADLINE;
    let mut output = String::new();
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left.min(Duration::from_secs(1))) {
            Ok(line) => {
                output.push_str(&line);
                output.push('\n');
                match line.as_str() {
                    "@@stop-server" => {
                        stop_server(&mut s);
                        writeln!(to_node, "stopped").unwrap();
                    }
                    "@@start-server" => {
                        rt.block_on(start_server(&mut s));
                        writeln!(to_node, "started").unwrap();
                    }
                    "@@fail-canary" => {
                        s.canary.fail_every(1);
                        writeln!(to_node, "failing").unwrap();
                    }
                    _ => {}
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if Instant::now() >= until {
                    drop(node);
                    panic!(
                        "the browser script did not finish within {SCRIPT_DEADLINE:?}\n{output}\n--- stderr\n{}",
                        std::fs::read_to_string(&stderr_path).unwrap_or_default()
                    );
                }
            }
        }
    }
    let status = node.0.wait().unwrap();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    drop(traffic);
    stop_degrade.store(true, Ordering::SeqCst);
    let _ = degrade.join();
    assert!(
        status.success() && output.contains("checks passed"),
        "the browser script failed ({status}):\n{output}\n--- stderr\n{stderr}\n--- graylane\n{}",
        s.process.logs()
    );
    println!("{output}");

    // What the clicks did, as the server recorded it: the same audit as the CLI's.
    rt.block_on(async {
        let audit: Value = s
            .api(Method::GET, "/api/v1/audit?limit=2000", VIEWER, "")
            .await
            .json();
        let by = |actor: &str| -> Vec<String> {
            audit["entries"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["actor"] == actor)
                .map(|e| e["action"].as_str().unwrap_or("").to_string())
                .collect()
        };
        let otto = by("otto");
        for action in ["promote", "pause", "resume", "abort"] {
            assert!(
                otto.iter().any(|a| a == action),
                "otto's {action}: {otto:?}"
            );
        }
        assert!(
            otto.iter().any(|a| a.contains("weight")),
            "otto's weight: {otto:?}"
        );
        assert!(by("vera").is_empty(), "the viewer changed nothing");
        assert!(
            !by("ada").is_empty(),
            "ada's revision and revert are audited"
        );
        let revisions = s
            .api(Method::GET, "/api/v1/config/revisions", VIEWER, "")
            .await
            .json();
        assert_eq!(revisions["current"], 3, "{revisions}");
        assert_eq!(revisions["revisions"][0]["source"], "revert", "{revisions}");
        let release = s
            .api(Method::GET, "/api/v1/releases/payment", VIEWER, "")
            .await
            .json();
        assert_eq!(release["state"], "aborted", "{release}");
    });

    let screenshot = shots.join("release-page.png");
    assert!(
        screenshot.exists(),
        "no screenshot at {}",
        screenshot.display()
    );
    println!("screenshot of the release page: {}", screenshot.display());
    rt.block_on(s.stop());
}
