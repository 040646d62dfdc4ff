//! The access log, read back from its file: one line per response (proxied, refused, not
//! found, rate limited, failed upstream), each naming the service, the version and why the
//! request went there; nginx's combined format readable by a combined-log regex; a sampled
//! share; a reload that moves the log; reopening after logrotate moved the file; and a file
//! that cannot be opened refusing the start.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use graylane_proxy::{Gateway, GatewayOptions};
use http::StatusCode;

const CONFIG: &str = r#"
listeners:
  - bind: 127.0.0.1:0
    trusted_hops: ["127.0.0.1/32"]
access_log: { path: "{log}", format: {format}, sample: {sample} }
services:
  - name: payment
    match: { path_prefix: /pay }
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
      steps: [{ weight: 0, pause: manual }]
  - name: broken
    match: { path_prefix: /broken }
    versions:
      stable: { endpoints: ["{refused}"] }
traffic_control:
  rate_limits:
    - { service: broken, key: "header:X-User-Id", rate: 1/s, burst: 1 }
"#;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

struct Setup {
    stable: Upstream,
    canary: Upstream,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            stable: Upstream::start("stable"),
            canary: Upstream::start("canary"),
        }
    }

    fn yaml(&self, log: &Path, format: &str, sample: f64) -> String {
        fill(
            CONFIG,
            &[
                ("stable", self.stable.addr.to_string()),
                ("canary", self.canary.addr.to_string()),
                ("refused", closed_port().to_string()),
                ("log", log.display().to_string()),
                ("format", format.to_string()),
                ("sample", sample.to_string()),
            ],
        )
    }
}

fn fresh(name: &str) -> std::path::PathBuf {
    let path = temp_file(name);
    let _ = std::fs::remove_file(&path);
    path
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    lines(path)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Waits until the log at `path` has `n` lines (the writer flushes within 100 ms).
async fn wait_lines(path: &Path, n: usize) -> Vec<String> {
    eventually(&format!("{n} lines in {}", path.display()), || async {
        let got = lines(path);
        (got.len() >= n).then_some(got)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_gets_a_json_line_naming_its_service_version_and_reason() {
    let setup = Setup::new();
    let log = fresh("json.log");
    let gateway = start_gateway(config(&setup.yaml(&log, "json", 1.0)));
    let mut conn = Http1::connect(addr(&gateway)).await.unwrap();

    let bucketed = conn
        .get(
            "/pay/a/../orders?id=7",
            &[
                ("X-User-Id", "u-1"),
                ("traceparent", TRACEPARENT),
                ("User-Agent", "test-agent/1.0"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(bucketed.status, StatusCode::OK);
    let forced = conn
        .get("/pay/orders", &[("X-Release-Phase", "canary")])
        .await
        .unwrap();
    assert_eq!(forced.version(), Some("canary"));
    let lane = conn
        .get("/pay/orders", &[("x-graylane-lane", "canary")])
        .await
        .unwrap();
    assert_eq!(lane.version(), Some("canary"));
    let missing = conn.get("/nowhere", &[]).await.unwrap();
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let failed = conn.get("/broken", &[("X-User-Id", "u-2")]).await.unwrap();
    assert_eq!(failed.status, StatusCode::BAD_GATEWAY);
    let limited = conn.get("/broken", &[("X-User-Id", "u-2")]).await.unwrap();
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    // Refused before routing: two Host headers.
    let refused = conn
        .get("/pay/orders", &[("Host", "a.example")])
        .await
        .unwrap();
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    shutdown(gateway).await;

    let got = json_lines(&log);
    assert_eq!(got.len(), 7, "one line per response: {got:#?}");
    let b = &got[0];
    assert_eq!(b["method"], "GET");
    assert_eq!(
        b["path"], "/pay/a/../orders?id=7",
        "as received, not normalised"
    );
    assert_eq!(b["protocol"], "HTTP/1.1");
    assert_eq!(b["status"], 200);
    assert_eq!(b["bytes"], bucketed.body.len());
    assert_eq!(b["client"], "127.0.0.1");
    assert_eq!(b["service"], "payment");
    assert_eq!(b["version"], "stable");
    assert_eq!(b["reason"], "bucket");
    assert!(b["bucket"].is_u64(), "{b}");
    assert_eq!(b["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(b["user_agent"], "test-agent/1.0");
    assert_eq!(b["lane"], "");
    assert_eq!(b["fallback"], false);
    assert_eq!(b["retries"], 0);
    assert!(b["duration_ms"].as_f64().unwrap() > 0.0, "{b}");
    assert!(b["upstream_ms"].as_f64().unwrap() > 0.0, "{b}");
    let time = b["time"].as_str().unwrap();
    assert!(
        time.len() == 24 && time.ends_with('Z') && time.as_bytes()[19] == b'.',
        "RFC 3339 with milliseconds: {time}"
    );

    assert_eq!(
        (&got[1]["version"], &got[1]["reason"]),
        (&"canary".into(), &"forced".into())
    );
    assert_eq!(got[1]["trace_id"], "", "no traceparent, no trace id");
    assert_eq!(
        (&got[2]["version"], &got[2]["reason"], &got[2]["lane"]),
        (&"canary".into(), &"lane".into(), &"canary".into())
    );
    assert_eq!(
        (&got[3]["status"], &got[3]["service"], &got[3]["reason"]),
        (&404.into(), &"".into(), &"".into())
    );
    assert!(got[3]["upstream_ms"].is_null());
    assert_eq!(
        (&got[4]["status"], &got[4]["service"], &got[4]["reason"]),
        (&502.into(), &"broken".into(), &"no_release".into())
    );
    assert_eq!(
        (&got[5]["status"], &got[5]["service"]),
        (&429.into(), &"broken".into())
    );
    assert!(got[5]["upstream_ms"].is_null());
    assert_eq!(got[6]["status"], 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_combined_format_is_read_by_a_combined_log_parser() {
    let setup = Setup::new();
    let log = fresh("combined.log");
    let gateway = start_gateway(config(&setup.yaml(&log, "combined", 1.0)));
    let mut conn = Http1::connect(addr(&gateway)).await.unwrap();
    let ok = conn
        .get(
            "/pay/orders?q=1",
            &[
                ("X-Release-Phase", "canary"),
                ("Referer", "https://shop.example/cart"),
                ("User-Agent", r#"Mozilla/5.0 (X11; "q")"#),
                ("traceparent", TRACEPARENT),
            ],
        )
        .await
        .unwrap();
    assert_eq!(ok.status, StatusCode::OK);
    let missing = conn.get("/nowhere", &[]).await.unwrap();
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let got = wait_lines(&log, 2).await;
    shutdown(gateway).await;

    // The regex a combined-log parser uses, anchored at the start: graylane's fields follow.
    let combined = regex::Regex::new(
        r#"^(\S+) \S+ \S+ \[(\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4})\] "(\S+) (\S+) (HTTP/\d\.\d)" (\d{3}) (\d+|-) "((?:[^"\\]|\\.)*)" "((?:[^"\\]|\\.)*)"(.*)$"#,
    )
    .unwrap();
    let first = combined
        .captures(&got[0])
        .unwrap_or_else(|| panic!("not combined: {}", got[0]));
    assert_eq!(&first[1], "127.0.0.1");
    assert_eq!(&first[3], "GET");
    assert_eq!(&first[4], "/pay/orders?q=1");
    assert_eq!(&first[5], "HTTP/1.1");
    assert_eq!(&first[6], "200");
    assert_eq!(first[7].parse::<usize>().unwrap(), ok.body.len());
    assert_eq!(&first[8], "https://shop.example/cart");
    assert_eq!(
        &first[9], r#"Mozilla/5.0 (X11; \x22q\x22)"#,
        "quotes escaped as nginx does"
    );
    let extra = &first[10];
    for field in [
        " service=payment",
        " version=canary",
        " reason=forced",
        " trace_id=4bf92f3577b34da6a3ce929d0e0e4736",
        " fallback=0",
        " retries=0",
    ] {
        assert!(extra.contains(field), "{field} in {extra}");
    }
    let second = combined
        .captures(&got[1])
        .unwrap_or_else(|| panic!("not combined: {}", got[1]));
    assert_eq!((&second[6], &second[8]), ("404", "-"));
    assert!(second[10].contains(" service=- "), "{}", &second[10]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sample_of_one_half_logs_about_half_of_the_requests() {
    let setup = Setup::new();
    let log = fresh("sampled.log");
    let gateway = start_gateway(config(&setup.yaml(&log, "json", 0.5)));
    let mut conn = Http1::connect(addr(&gateway)).await.unwrap();
    const N: usize = 400;
    for _ in 0..N {
        let r = conn.get("/nowhere", &[]).await.unwrap();
        assert_eq!(r.status, StatusCode::NOT_FOUND);
    }
    let text = graylane_testing::http::get(addr(&gateway), "/nowhere", &[]).await;
    assert_eq!(text.status, StatusCode::NOT_FOUND);
    shutdown(gateway).await;
    let logged = lines(&log).len();
    // Binomial(401, 0.5): a standard deviation of 10; 6 of them either side.
    assert!(
        (140..=260).contains(&logged),
        "{logged} of {N} requests logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_moves_the_access_log_writes_the_next_lines_at_the_new_path() {
    let setup = Setup::new();
    let (first, second) = (fresh("reload-a.log"), fresh("reload-b.log"));
    let gateway = start_gateway(config(&setup.yaml(&first, "json", 1.0)));
    let a = addr(&gateway);
    get(a, "/nowhere", &[]).await;
    wait_lines(&first, 1).await;
    gateway.apply(config(&setup.yaml(&second, "combined", 1.0)));
    get(a, "/nowhere", &[]).await;
    let moved = wait_lines(&second, 1).await;
    assert!(moved[0].starts_with("127.0.0.1 - - ["), "{}", moved[0]);
    shutdown(gateway).await;
    assert_eq!(lines(&first).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_logrotate_moves_the_file_a_reopen_writes_to_a_new_one_losing_nothing() {
    let setup = Setup::new();
    let log = fresh("rotate.log");
    let rotated = fresh("rotate.log.1");
    let gateway = start_gateway(config(&setup.yaml(&log, "json", 1.0)));
    let a = addr(&gateway);
    for _ in 0..3 {
        get(a, "/nowhere", &[]).await;
    }
    wait_lines(&log, 3).await;
    std::fs::rename(&log, &rotated).unwrap();
    // Until the reopen, lines go on to the moved file.
    get(a, "/nowhere", &[]).await;
    wait_lines(&rotated, 4).await;
    gateway.reopen_access_log();
    eventually("the log reopened at its path", || async {
        log.exists().then_some(())
    })
    .await;
    for _ in 0..2 {
        get(a, "/nowhere", &[]).await;
    }
    shutdown(gateway).await;
    assert_eq!(lines(&rotated).len(), 4);
    assert_eq!(lines(&log).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_written_are_counted_in_the_metrics() {
    let setup = Setup::new();
    let log = fresh("counted.log");
    let gateway = start_gateway(config(&setup.yaml(&log, "json", 1.0)));
    for _ in 0..5 {
        get(addr(&gateway), "/nowhere", &[]).await;
    }
    wait_lines(&log, 5).await;
    let text = gateway.metrics().encode();
    assert_eq!(
        metric_value(&text, "graylane_access_log_lines_total"),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "graylane_access_log_dropped_total"),
        Some(0.0)
    );
    shutdown(gateway).await;
}

#[test]
fn an_access_log_that_cannot_be_opened_refuses_the_start_naming_the_file() {
    let setup = Setup::new();
    let log = temp_file("no-such-dir").join("access.log");
    let err = Gateway::start(
        config(&setup.yaml(&log, "json", 1.0)),
        GatewayOptions {
            workers: 1,
            ..GatewayOptions::default()
        },
    )
    .err()
    .expect("the start fails");
    let err = err.to_string();
    assert!(
        err.contains(&format!("cannot open the access log {}", log.display())),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_path_turns_the_access_log_on_over_the_configuration() {
    let setup = Setup::new();
    let log = fresh("flag.log");
    let unused = fresh("flag-unused.log");
    let gateway = Gateway::start(
        config(&setup.yaml(&unused, "json", 1.0)),
        GatewayOptions {
            workers: 2,
            drain_timeout: Duration::from_secs(5),
            access_log_path: Some(graylane_config::AccessLogPath::File(log.clone())),
            access_log_format: Some(graylane_config::AccessLogFormat::Combined),
            ..GatewayOptions::default()
        },
    )
    .unwrap();
    get(addr(&gateway), "/nowhere", &[]).await;
    let got = wait_lines(&log, 1).await;
    assert!(
        got[0].contains("\"GET /nowhere HTTP/1.1\" 404"),
        "{}",
        got[0]
    );
    shutdown(gateway).await;
    assert!(lines(&unused).is_empty());
}
