//! `graylane serve` and `graylane demo` as processes: traffic, the admin listener, reload on
//! file change and on SIGHUP (a rotated TLS certificate too), a rejected reload, and a clean
//! exit on SIGTERM.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use graylane_testing::otlp::{OtlpReceiver, Protocol};
use http::StatusCode;

const CONFIG: &str = r#"
listeners:
  - bind: 127.0.0.1:{port}
admin:
  bind: 127.0.0.1:{admin}
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
        - weight: {weight}
          pause: manual
"#;

/// A gateway process on ports it picked, in front of two test upstreams.
struct Served {
    process: Graylane,
    file: std::path::PathBuf,
    proxy: SocketAddr,
    admin: SocketAddr,
    stable: Upstream,
    canary: Upstream,
}

impl Served {
    fn yaml(&self, weight: &str) -> String {
        config(&self.stable, &self.canary, weight)
    }

    async fn metrics(&self) -> String {
        let r = get(self.admin, "/metrics", &[]).await;
        assert_eq!(r.status, StatusCode::OK);
        r.text()
    }

    /// The versions users u-0..u-9 get right now.
    async fn versions(&self) -> Vec<String> {
        let mut out = Vec::new();
        for i in 0..10 {
            let user = format!("u-{i}");
            let r = get(self.proxy, "/api/payment/orders", &[("X-User-Id", &user)]).await;
            assert_eq!(r.status, StatusCode::OK, "{user}: {r:?}");
            let v = r.version().unwrap_or("").to_string();
            assert_eq!(
                r.json()["version"],
                v.as_str(),
                "served by the version it names"
            );
            out.push(v);
        }
        out
    }

    async fn all_on(&self, version: &str) -> bool {
        self.versions().await.iter().all(|v| v == version)
    }

    async fn terminate(mut self) {
        self.process.assert_running();
        self.process.signal("TERM");
        let status = self.process.wait_exit(Duration::from_secs(20));
        assert_eq!(
            status.code(),
            Some(0),
            "exit after SIGTERM\n{}",
            self.process.logs()
        );
        if let Some(dir) = self.file.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

async fn serve(test: &str, watch_interval: &str) -> Served {
    let dir = temp_dir(test);
    let file = dir.join("graylane.yaml");
    let (stable, canary) = (Upstream::start("stable"), Upstream::start("canary"));
    write_atomic(&file, &config(&stable, &canary, "0"));
    let mut process = spawn_in(
        &dir,
        &[
            "serve",
            "--config",
            file.to_str().unwrap(),
            "--workers",
            "2",
            "--drain-timeout",
            "5s",
            "--watch-interval",
            watch_interval,
        ],
    );
    let listening = bound(&mut process, true);
    let (proxy, admin) = (listening.listeners[0], listening.admin.unwrap());
    wait_ready(&mut process, admin, proxy).await;
    Served {
        process,
        file,
        proxy,
        admin,
        stable,
        canary,
    }
}

/// The configuration, its listeners on port 0: the ports are read from the log, and a
/// rewritten file keeps the same listeners.
fn config(stable: &Upstream, canary: &Upstream, weight: &str) -> String {
    fill(
        CONFIG,
        &[
            ("port", "0".to_string()),
            ("admin", "0".to_string()),
            ("stable", stable.addr.to_string()),
            ("canary", canary.addr.to_string()),
            ("weight", weight.to_string()),
        ],
    )
}

/// Waits until `/readyz` answers 200 and the proxy listener accepts, failing at once (with the
/// logs) if the process dies.
async fn wait_ready(process: &mut Graylane, admin: SocketAddr, proxy: SocketAddr) {
    let deadline = Instant::now() + POLL_DEADLINE;
    loop {
        process.assert_running();
        let ready =
            matches!(try_get(admin, "/readyz", &[]).await, Ok(r) if r.status == StatusCode::OK);
        if ready && tokio::net::TcpStream::connect(proxy).await.is_ok() {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "graylane not ready within {POLL_DEADLINE:?}\n{}",
                process.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn reloads(metrics: &str, result: &str) -> f64 {
    metric_value(
        metrics,
        &format!(r#"graylane_config_reloads_total{{result="{result}"}}"#),
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_proxies_reloads_on_file_change_and_exits_on_sigterm() {
    let served = serve("watch", "200ms").await;

    assert!(
        served.all_on("stable").await,
        "weight 0 sends everyone to stable"
    );
    let r = get(
        served.proxy,
        "/api/payment/orders",
        &[("X-Release-Phase", "canary")],
    )
    .await;
    assert_eq!(r.version(), Some("canary"));
    let r = get(served.proxy, "/elsewhere", &[]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // The admin listener.
    let r = get(served.admin, "/healthz", &[]).await;
    assert_eq!((r.status, r.text().trim()), (StatusCode::OK, "ok"));
    let r = get(served.admin, "/readyz", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = get(served.admin, "/metrics", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    let content_type = r.headers.get("content-type").unwrap().to_str().unwrap();
    assert!(content_type.contains("openmetrics-text"), "{content_type}");
    let text = r.text();
    assert_eq!(
        metric_value(
            &text,
            r#"graylane_requests_total{service="payment",version="stable",code="200"}"#
        ),
        Some(10.0),
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            r#"graylane_requests_total{service="payment",version="canary",code="200"}"#
        ),
        Some(1.0),
        "{text}"
    );
    let r = get(served.admin, "/nope", &[]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Editing the file moves the traffic.
    write_atomic(&served.file, &served.yaml("100"));
    eventually("the weight-100 file to be picked up", || async {
        served.all_on("canary").await.then_some(())
    })
    .await;
    assert_eq!(reloads(&served.metrics().await, "ok"), 1.0);

    // A broken file is rejected and the last good configuration keeps serving.
    write_atomic(&served.file, &served.yaml("150"));
    eventually("the invalid file to be rejected", || async {
        (reloads(&served.metrics().await, "error") >= 1.0).then_some(())
    })
    .await;
    assert!(
        served.all_on("canary").await,
        "still the weight-100 routing"
    );
    let logs = served.process.stderr();
    let line = served
        .yaml("150")
        .lines()
        .position(|l| l.contains("weight: 150"))
        .unwrap()
        + 1;
    let located = format!("{}:{line}:", served.file.display());
    assert!(
        logs.contains("reload rejected") && logs.contains(&located),
        "the log says why, with {located}:\n{logs}"
    );

    // Fixing it is picked up again.
    write_atomic(&served.file, &served.yaml("0"));
    eventually("the fixed file to be picked up", || async {
        served.all_on("stable").await.then_some(())
    })
    .await;
    let metrics = served.metrics().await;
    assert_eq!(reloads(&metrics, "ok"), 2.0, "{metrics}");
    assert_eq!(reloads(&metrics, "error"), 1.0, "{metrics}");

    assert!(served.stable.received() > 0 && served.canary.received() > 0);
    served.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_file() {
    // The watcher checks once at start-up and then only after an hour: reloads here come from
    // SIGHUP alone.
    let served = serve("sighup", "1h").await;
    assert!(served.all_on("stable").await);

    write_atomic(&served.file, &served.yaml("100"));
    assert!(
        served.all_on("stable").await,
        "nothing reloads before the signal"
    );
    served.process.signal("HUP");
    eventually("SIGHUP to apply the weight-100 file", || async {
        served.all_on("canary").await.then_some(())
    })
    .await;

    // SIGHUP with a broken file keeps the routing and counts the error.
    write_atomic(&served.file, "listeners: [ {");
    served.process.signal("HUP");
    eventually("SIGHUP with a broken file to be rejected", || async {
        (reloads(&served.metrics().await, "error") >= 1.0).then_some(())
    })
    .await;
    assert!(served.all_on("canary").await);
    served.terminate().await;
}

/// One service behind a TLS listener whose certificate is `site.pem` beside the file.
const TLS_CONFIG: &str = r#"
listeners:
  - bind: 127.0.0.1:0
    tls: { cert: site.pem, key: site.key }
admin:
  bind: 127.0.0.1:0
services:
  - name: web
    match: { path_prefix: / }
    versions:
      stable: { endpoints: ["{stable}"] }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_serves_a_rotated_certificate_to_new_connections_without_a_restart() {
    use graylane_testing::tls::{
        connect, issue, shown, status_on, write_pair, write_pair_unnoticed,
    };
    let dir = temp_dir("sighup-tls");
    let (cert, key) = (dir.join("site.pem"), dir.join("site.key"));
    let (old, new) = (issue(&["localhost"]), issue(&["localhost"]));
    write_pair(&cert, &key, &old);
    let stable = Upstream::start("stable");
    let file = dir.join("graylane.yaml");
    write_atomic(
        &file,
        &fill(TLS_CONFIG, &[("stable", stable.addr.to_string())]),
    );
    let mut process = spawn_in(
        &dir,
        &[
            "serve",
            "--config",
            file.to_str().unwrap(),
            "--workers",
            "2",
            "--drain-timeout",
            "5s",
            "--watch-interval",
            "1h",
        ],
    );
    let listening = bound(&mut process, true);
    let (proxy, admin) = (listening.listeners[0], listening.admin.unwrap());
    wait_ready(&mut process, admin, proxy).await;
    let (before, mut open) = connect(proxy, Some("localhost")).await;
    assert_eq!(before, old.der, "the configured certificate is served");
    assert_eq!(status_on(&mut open, "/before").await, Ok(StatusCode::OK));

    // Rewritten so that the file poll cannot see it (same length, inode and time): only the
    // signal can put it in use. The configuration file is unchanged.
    write_pair_unnoticed(&cert, &key, &new);
    process.signal("HUP");
    eventually("SIGHUP to put the rewritten certificate in use", || async {
        (shown(proxy, Some("localhost")).await == new.der).then_some(())
    })
    .await;
    assert_eq!(
        status_on(&mut open, "/after").await,
        Ok(StatusCode::OK),
        "the connection opened before the signal still serves"
    );
    assert_eq!(stable.received(), 2);

    process.signal("TERM");
    let status = process.wait_exit(Duration::from_secs(20));
    assert_eq!(
        status.code(),
        Some(0),
        "exit after SIGTERM\n{}",
        process.logs()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_requests_in_flight_while_readyz_reports_draining() {
    let mut served = serve("drain", "1h").await;
    let (proxy, admin) = (served.proxy, served.admin);
    let in_flight =
        tokio::spawn(
            async move { try_get(proxy, "/api/payment/held", &[(HOLD_HEADER, "1")]).await },
        );
    eventually("the held request to reach the upstream", || async {
        (served.stable.received() >= 1).then_some(())
    })
    .await;

    served.process.signal("TERM");
    // While the request is held, the process is draining: not ready, not accepting.
    eventually("/readyz to answer 503 while draining", || async {
        match try_get(admin, "/readyz", &[]).await {
            Ok(r) if r.status == StatusCode::SERVICE_UNAVAILABLE => Some(()),
            _ => None,
        }
    })
    .await;
    eventually("the proxy listener to stop accepting", || async {
        tokio::net::TcpStream::connect(proxy)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    served.process.assert_running();

    served.stable.release();
    let reply = in_flight
        .await
        .unwrap()
        .expect("the request in flight is answered");
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.version(), Some("stable"));
    let status = served.process.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", served.process.logs());
    if let Some(dir) = served.file.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_an_invalid_file_exits_1_without_listening() {
    let dir = temp_dir("invalid-serve");
    let bad = fixture("bad/unknown_key.yaml");
    let mut p = spawn_in(&dir, &["serve", "--config", bad.to_str().unwrap()]);
    let status = p.wait_exit(COMMAND_DEADLINE);
    assert_eq!(status.code(), Some(1), "{}", p.logs());
    assert!(
        p.stderr().contains("did you mean `bucket_by`?"),
        "{}",
        p.logs()
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_answers_a_forced_canary_request_over_http_grpc_websocket_and_an_https_upstream() {
    let dir = temp_dir("demo");
    let (port, admin_port) = (candidate_port(), candidate_port());
    let mut demo = spawn_in(
        &dir,
        &[
            "demo",
            "--port",
            &port.to_string(),
            "--admin-port",
            &admin_port.to_string(),
            // Only this test's requests, counted below.
            "--no-traffic",
        ],
    );
    let proxy = SocketAddr::from(([127, 0, 0, 1], port));
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    wait_ready(&mut demo, admin, proxy).await;

    // curl -i 127.0.0.1:PORT/api/payment/orders -H 'X-Release-Phase: canary'
    let r = get(
        proxy,
        "/api/payment/orders",
        &[("X-Release-Phase", "canary")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.version(), Some("canary"));
    let body = r.json();
    assert_eq!(body["version"], "canary", "{body}");
    assert_eq!(body["lane"], "canary", "{body}");

    let r = get(proxy, "/api/payment/orders", &[("X-User-Id", "u-1001")]).await;
    assert_eq!(r.version(), Some("canary"), "a staff user");

    let stdout = demo.stdout();
    assert!(
        stdout.contains(&format!("127.0.0.1:{port}")) && stdout.contains("curl"),
        "the demo says where it listens and what to try:\n{stdout}"
    );
    let metrics = get(admin, "/metrics", &[]).await.text();
    assert_eq!(
        metric_value(
            &metrics,
            r#"graylane_requests_total{service="payment",version="canary",code="200"}"#
        ),
        Some(2.0),
        "{metrics}"
    );

    // The HTTPS upstream, verified against the demo's own CA.
    let r = get(proxy, "/api/account/me", &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.json()["version"], "account", "{r:?}");

    // gRPC over h2c to the versions; a metadata force rule picks the canary.
    let channel = tonic::transport::Channel::from_shared(format!("http://{proxy}"))
        .unwrap()
        .connect()
        .await
        .expect("a gRPC client connects to the demo");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let mut call = tonic::Request::new(tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    });
    call.metadata_mut()
        .insert("x-release-phase", "canary".parse().unwrap());
    let answer = health.check(call).await.expect("the health check answers");
    assert_eq!(
        answer.metadata().get("x-graylane-version").unwrap(),
        "canary"
    );
    assert_eq!(
        answer.get_ref().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // A WebSocket echo through the gateway, on the canary.
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};
    let mut request = format!("ws://{proxy}/ws/echo")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("x-release-phase", "canary".parse().unwrap());
    let (mut ws, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("the WebSocket handshake succeeds");
    assert_eq!(response.headers()["x-graylane-version"], "canary");
    ws.send(Message::text("hello")).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("the echo arrives in time")
        .expect("the socket is open")
        .expect("a frame");
    assert_eq!(echoed, Message::text("canary: hello"));
    ws.close(None).await.unwrap();

    demo.signal("TERM");
    let status = demo.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", demo.logs());
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_rolls_its_broken_canary_back_then_retries_and_promotes_it_healthy_on_its_own() {
    let dir = temp_dir("demo-story");
    let (port, admin_port) = (candidate_port(), candidate_port());
    let tmp = dir.display().to_string();
    let collector = OtlpReceiver::start(Protocol::HttpProtobuf);
    // Five times faster than a person watches it: the same story, with five times the traffic,
    // and its traces to a real OTLP receiver.
    let mut demo = spawn_with_env(
        &dir,
        &[
            "demo",
            "--port",
            &port.to_string(),
            "--admin-port",
            &admin_port.to_string(),
            "--speed",
            "5",
            "--otlp",
            &collector.endpoint(),
        ],
        &[("TMPDIR", &tmp)],
    );
    let proxy = SocketAddr::from(([127, 0, 0, 1], port));
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    wait_ready(&mut demo, admin, proxy).await;

    // The printed dashboard address serves the dashboard; the printed token signs in.
    let stdout = demo.stdout();
    assert!(
        stdout.contains(&format!("http://{admin}/#/releases/payment")),
        "{stdout}"
    );
    let token = printed_after(&stdout, "sign in with the token ");
    let dashboard = get(admin, "/", &[]).await;
    assert_eq!(dashboard.status, StatusCode::OK);
    assert!(
        dashboard.text().contains("graylane"),
        "{}",
        dashboard.text()
    );
    let bearer = format!("Bearer {token}");
    let auth = [("Authorization", bearer.as_str())];

    // No request of the test's own: the demo's traffic alone moves the release, and the demo
    // retries it through the admin API once the analysis rolled it back.
    let release = eventually_within(
        Duration::from_secs(120),
        "the payment release to complete",
        || {
            let demo_running = demo.try_exit().is_none();
            async move {
                assert!(demo_running, "the demo exited");
                let r = get(admin, "/api/v1/releases/payment", &auth).await;
                assert_eq!(r.status, StatusCode::OK, "the demo's token reads: {r:?}");
                let release = r.json();
                (release["state"] == "completed").then_some(release)
            }
        },
    )
    .await;
    assert_eq!(release["stable"], "canary", "{release}");
    let transitions = release["transitions"].as_array().unwrap();
    let position = |what: &str, actor: &str, to: &str| {
        transitions
            .iter()
            .position(|t| t["action"] == what && t["actor"] == actor && t["to"] == to)
            .unwrap_or_else(|| panic!("no {what} by {actor} to {to}: {release:#}"))
    };
    let rolled_back = position("analysis_failed", "analysis", "aborted");
    let retried = position("retry", "demo", "progressing");
    let completed = position("tick", "controller", "completed");
    assert!(
        rolled_back < retried && retried < completed,
        "rolled back, then retried, then completed: {release:#}"
    );
    assert!(
        transitions[rolled_back]["reason"]
            .as_str()
            .unwrap()
            .contains("error_rate"),
        "the rollback names the failed check: {release:#}"
    );

    // The audit log tells the same story, the analysis and the demo's token as the actors.
    let audit = get(
        admin,
        "/api/v1/audit?service=payment&action=analysis_failed",
        &auth,
    )
    .await
    .json();
    assert_eq!(audit["entries"][0]["actor"], "analysis", "{audit}");
    let audit = get(admin, "/api/v1/audit?service=payment&action=retry", &auth)
        .await
        .json();
    assert_eq!(audit["entries"][0]["actor"], "demo", "{audit}");
    assert_eq!(
        audit["entries"][0]["reason"], "the demo deployed a fixed canary",
        "{audit}"
    );

    // The demo said so as it happened (it reads the release a few times a second).
    let stdout = eventually("the demo to print the release's end", || {
        let stdout = demo.stdout();
        async move { stdout.contains("release completed").then_some(stdout) }
    })
    .await;
    for line in ["rolled the release back", "retries the release"] {
        assert!(stdout.contains(line), "{line}:\n{stdout}");
    }

    // The access log it printed has the traffic: the broken canary's 503s, then its 200s.
    let log = std::fs::read_to_string(printed_after(&stdout, "Access log: ")).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let canary = |status: u64| {
        lines
            .iter()
            .filter(|l| l["version"] == "canary" && l["status"] == status)
            .count()
    };
    assert!(canary(503) > 0 && canary(200) > 0, "{} lines", lines.len());

    // With --otlp, the requests' spans and the rollback's transition reach the collector.
    collector.wait_for(
        "a payment request's span and the rollback's release.transition span",
        Duration::from_secs(30),
        |spans| {
            spans.iter().any(|s| {
                s.kind == "SPAN_KIND_SERVER" && s.attr("graylane.service") == Some("payment")
            }) && spans.iter().any(|s| {
                s.name == "release.transition"
                    && s.attr("graylane.release.action") == Some("analysis_failed")
            })
        },
    );

    demo.signal("TERM");
    let status = demo.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", demo.logs());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn demo_refuses_a_weight_that_leaves_its_story_nothing_to_judge() {
    let out = run(&["demo", "--weight", "0", "--port", "0", "--admin-port", "0"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains("--weight 0") && out.stderr.contains("--no-traffic"),
        "{}",
        out.stderr
    );
    let out = run(&["demo", "--weight", "101"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("from 0 to 100"), "{}", out.stderr);
}

/// The word after `prefix` in `text` (a printed token or path).
fn printed_after(text: &str, prefix: &str) -> String {
    let start = text
        .find(prefix)
        .unwrap_or_else(|| panic!("no {prefix:?} in\n{text}"))
        + prefix.len();
    text[start..]
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// A `graylane serve` whose stderr goes to a file (as under systemd or a log shipper), with
/// `extra` flags and environment; returns what it logged once it listens.
fn logs_into_a_file(test: &str, extra: &[&str], env: &[(&str, &str)]) -> String {
    let dir = temp_dir(test);
    let file = dir.join("graylane.yaml");
    let (stable, canary) = (Upstream::start("stable"), Upstream::start("canary"));
    write_atomic(&file, &config(&stable, &canary, "0"));
    let mut args = vec!["serve", "--config", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    let mut process = spawn_with_env(&dir, &args, env);
    bound(&mut process, true);
    process.signal("TERM");
    process.wait_exit(Duration::from_secs(20));
    let logs = process.stderr();
    let _ = std::fs::remove_dir_all(dir);
    logs
}

#[test]
fn logs_into_a_file_carry_no_colour_codes_unless_asked() {
    let plain = logs_into_a_file("log-colour-auto", &[], &[]);
    assert!(plain.contains("listening"), "{plain}");
    assert!(!plain.contains('\x1b'), "colour codes in a file:\n{plain}");

    let asked = logs_into_a_file("log-colour-always", &["--log-color", "always"], &[]);
    assert!(asked.contains("\x1b["), "--log-color always:\n{asked}");

    let never = logs_into_a_file(
        "log-colour-never",
        &["--log-color", "never"],
        &[("NO_COLOR", "")],
    );
    assert!(!never.contains('\x1b'), "--log-color never:\n{never}");
}

#[test]
fn an_unknown_log_colour_is_refused_naming_the_choices() {
    let dir = temp_dir("log-colour-bad");
    let mut p = spawn_in(&dir, &["serve", "--log-color", "sometimes"]);
    let status = p.wait_exit(COMMAND_DEADLINE);
    assert_eq!(status.code(), Some(2), "{}", p.logs());
    let err = p.stderr();
    assert!(
        err.contains("--log-color") && err.contains("auto") && err.contains("never"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
