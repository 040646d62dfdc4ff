//! Automated analysis through the real binary: real traffic from distinct users, a canary that
//! fails 10% of its requests rolled back by the analysis on its own, a healthy one promoted
//! through every step, verdicts with their figures in the API and the audit log, business
//! events attributed to experiment variants, and the experiment's results with its SRM check.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use graylane_testing::prometheus::PrometheusServer;
use http::{Method, StatusCode};
use serde_json::{Value, json};

const OPERATOR: &str = "operator-secret";

/// How long a test waits for the analysis to act on real traffic: several intervals, and the
/// traffic generator is slower on a loaded machine.
const ANALYSIS_DEADLINE: Duration = Duration::from_secs(45);

const CONFIG: &str = r#"
listeners:
  - bind: 127.0.0.1:{port}
admin:
  bind: 127.0.0.1:{admin}
  tokens:
    - { name: otto, env: TEST_TOKEN_OPERATOR, role: operator }
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
        - weight: 30
        - weight: 60
        - weight: 100
      analysis:
        interval: 500ms
        min_requests: 40
        success_needed: 2
        failure_limit: 1
        checks:
          - metric: error_rate
            max_increase: 0.02
  - name: quiet
    match: { path_prefix: /quiet }
    versions:
      stable: { endpoints: ["{stable}"] }
      canary: { endpoints: ["{canary}"] }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      steps:
        - weight: 50
        - weight: 100
      analysis:
        interval: 200ms
        min_requests: 40
        max_wait_without_data: 1s
        checks:
          - metric: error_rate
            max: 0.05
{orders}  - name: search
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

async fn serve(test: &str) -> Served {
    serve_with(test, "").await
}

async fn serve_with(test: &str, orders: &str) -> Served {
    Served::start(
        test,
        CONFIG,
        &[("orders", orders.to_string())],
        &[("TEST_TOKEN_OPERATOR", OPERATOR)],
    )
    .await
}

impl Served {
    /// An admin API call as the operator.
    async fn call(&self, method: Method, path: &str, body: &str) -> Reply {
        self.api(method, path, OPERATOR, body).await
    }

    async fn release(&self) -> Value {
        self.call(Method::GET, "/api/v1/releases/payment", "")
            .await
            .json()
    }

    /// Sends requests from ever new users until `done` is set (bounded: at most 60 s).
    fn traffic(&self, path: &'static str, done: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
        let proxy = self.proxy;
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            let mut sent = 0u64;
            while !done.load(Ordering::SeqCst) && tokio::time::Instant::now() < deadline {
                let user = format!("user-{sent}");
                let _ = try_get(proxy, path, &[("x-user-id", user.as_str())]).await;
                sent += 1;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            sent
        })
    }
}

#[tokio::test]
async fn a_failing_canary_is_rolled_back_by_the_analysis_alone() {
    let s = serve("analysis-fail").await;
    s.canary.fail_every(10);
    let done = Arc::new(AtomicBool::new(false));
    let traffic = s.traffic("/api/payment/pay", Arc::clone(&done));
    let r = eventually_within(
        ANALYSIS_DEADLINE,
        "the analysis to abort the release",
        || async {
            let r = s.release().await;
            (r["state"] == "aborted").then_some(r)
        },
    )
    .await;
    done.store(true, Ordering::SeqCst);
    let sent = traffic.await.unwrap();
    assert_eq!(r["weights"]["canary"], 0.0, "{r}");
    let last = r["transitions"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["actor"].as_str(), last["action"].as_str()),
        (Some("analysis"), Some("analysis_failed"))
    );
    assert!(
        last["reason"].as_str().unwrap().contains("error_rate"),
        "{last}"
    );
    assert!(s.canary.received() > 0 && sent > 0);

    // The verdict and its figures: in the analysis API and the audit log.
    let analysis = s
        .call(Method::GET, "/api/v1/releases/payment/analysis", "")
        .await
        .json();
    let latest = &analysis["latest"];
    assert_eq!(latest["decision"]["decision"], "fail", "{analysis}");
    let check = &latest["results"][0];
    assert_eq!(
        (check["check"].as_str(), check["verdict"].as_str()),
        (Some("error_rate"), Some("fail"))
    );
    assert!(
        check["figures"]["candidate"]["n"].as_u64().unwrap() >= 40,
        "{check}"
    );
    let audit = s
        .call(Method::GET, "/api/v1/audit?limit=200", "")
        .await
        .json();
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "analysis" && e["detail"]["results"].is_array()),
        "every verdict is audited with its figures"
    );
    // ... and logged, as a record naming the service and the verdict.
    let logs = s.process.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("analysis verdict") && l.contains("payment") && l.contains("fail")),
        "{logs}"
    );

    // Traffic after the rollback never reaches the failing canary.
    let before = s.canary.received();
    for i in 0..50 {
        let user = format!("after-{i}");
        let r = get(s.proxy, "/api/payment/pay", &[("x-user-id", user.as_str())]).await;
        assert_eq!(r.version(), Some("stable"));
    }
    assert_eq!(s.canary.received(), before);
    s.stop().await;
}

#[tokio::test]
async fn a_healthy_canary_is_promoted_through_every_step_by_the_analysis() {
    let s = serve("analysis-pass").await;
    let done = Arc::new(AtomicBool::new(false));
    let traffic = s.traffic("/api/payment/pay", Arc::clone(&done));
    let r = eventually_within(
        ANALYSIS_DEADLINE,
        "the analysis to complete the release",
        || async {
            let r = s.release().await;
            (r["state"] == "completed").then_some(r)
        },
    )
    .await;
    done.store(true, Ordering::SeqCst);
    traffic.await.unwrap();
    assert_eq!(r["stable"], "canary");
    let by_analysis = r["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["action"] == "analysis_passed")
        .count();
    assert_eq!(
        by_analysis, 2,
        "the 30% and 60% steps each passed their analysis: {r}"
    );
    assert!(s.stable.received() > 0);
    s.stop().await;
}

#[tokio::test]
async fn events_are_attributed_to_variants_and_experiment_results_compare_them() {
    let s = serve("analysis-events").await;
    for i in 0..200 {
        let user = format!("user-{i}");
        get(s.proxy, "/search/q", &[("x-user-id", user.as_str())]).await;
    }
    let events: Vec<Value> = (0..200)
        .map(|i| json!({"experiment": "search", "key": format!("user-{i}"), "event": "purchase", "value": 10.0}))
        .collect();
    let r = s
        .call(
            Method::POST,
            "/api/v1/events",
            &Value::Array(events).to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let recorded = r.json()["recorded"].as_array().unwrap().clone();
    assert_eq!(recorded.len(), 200);
    // The variant an event lands in is the one its user was served.
    let user = "user-7";
    let served = get(s.proxy, "/search/q", &[("x-user-id", user)]).await;
    let attributed = s
        .call(
            Method::POST,
            "/api/v1/events",
            &json!({"service": "search", "key": user, "event": "view"}).to_string(),
        )
        .await
        .json();
    assert_eq!(
        attributed["recorded"][0]["version"].as_str(),
        served.version()
    );

    let results = s
        .call(Method::GET, "/api/v1/experiments/search/results", "")
        .await
        .json();
    let variants = results["variants"].as_array().unwrap();
    assert_eq!(variants.len(), 2);
    let exposures: u64 = variants
        .iter()
        .map(|v| v["exposures"].as_u64().unwrap())
        .sum();
    assert_eq!(exposures, 201);
    let purchases: u64 = variants
        .iter()
        .map(|v| v["events"]["purchase"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(purchases, 200);
    assert_eq!(
        variants[1]["comparisons"][0]["check"], "error_rate",
        "{results}"
    );
    assert_eq!(
        results["srm"]["flagged"], false,
        "a fair split is not flagged: {results}"
    );

    // Bad input: an unknown service records nothing; a malformed event says what is expected.
    let before = variants[0]["events"]["purchase"]["count"].as_u64().unwrap();
    let bad = json!([{"service": "search", "key": "u", "event": "purchase"}, {"service": "nope", "key": "u", "event": "purchase"}]);
    let r = s
        .call(Method::POST, "/api/v1/events", &bad.to_string())
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let after = s
        .call(Method::GET, "/api/v1/experiments/search/results", "")
        .await
        .json();
    assert_eq!(
        after["variants"][0]["events"]["purchase"]["count"]
            .as_u64()
            .unwrap(),
        before,
        "nothing recorded"
    );
    let r = s
        .call(
            Method::POST,
            "/api/v1/events",
            r#"{"service": "search", "event": "x"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.json()["error"].as_str().unwrap().contains("key"),
        "{}",
        r.text()
    );
    let r = s
        .call(Method::GET, "/api/v1/experiments/payment/results", "")
        .await;
    assert_eq!(
        r.status,
        StatusCode::CONFLICT,
        "a canary is not an experiment"
    );
    s.stop().await;
}

#[tokio::test]
async fn without_enough_data_the_analysis_holds_then_pauses_and_says_why() {
    let s = serve("analysis-quiet").await;
    let held = eventually("a hold verdict", || async {
        let a = s
            .call(Method::GET, "/api/v1/releases/quiet/analysis", "")
            .await
            .json();
        (a["latest"]["decision"]["decision"] == "hold").then_some(a)
    })
    .await;
    assert!(
        held["latest"]["results"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("not enough data"),
        "{held}"
    );
    let r = eventually_within(
        ANALYSIS_DEADLINE,
        "the analysis to pause the release",
        || async {
            let r = s
                .call(Method::GET, "/api/v1/releases/quiet", "")
                .await
                .json();
            (r["state"] == "paused").then_some(r)
        },
    )
    .await;
    assert_eq!(r["step"], 0, "never promoted without data");
    assert_eq!(
        r["weights"]["canary"], 50.0,
        "never failed without data either"
    );
    let last = r["transitions"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["actor"], "analysis");
    assert!(
        last["reason"]
            .as_str()
            .unwrap()
            .contains("max_wait_without_data"),
        "{last}"
    );
    let metrics = get(s.admin, "/metrics", &[]).await.text();
    assert_eq!(
        metric_value(
            &metrics,
            "graylane_analysis_decision{service=\"quiet\",decision=\"pause\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    s.stop().await;
}

/// An `orders` release judged by a PromQL query to a real Prometheus that scrapes this
/// gateway's own `/metrics`.
const ORDERS: &str = r#"  - name: orders
    match: { path_prefix: /orders }
    versions:
      stable: { endpoints: ["{stable}"] }
      canary: { endpoints: ["{canary}"] }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      bucket_by: "header:X-User-Id"
      steps:
        - weight: 50
        - weight: 100
      analysis:
        interval: 1s
        metrics_source: prometheus
        prometheus_url: http://127.0.0.1:{prometheus}
        checks:
          - name: canary 5xx ratio
            query: 'sum(rate(graylane_requests_total{service="{{service}}",version="{{candidate}}",code=~"5.."}[15s])) / sum(rate(graylane_requests_total{service="{{service}}",version="{{candidate}}"}[15s]))'
            max: 0.05
"#;

#[tokio::test]
async fn a_prometheus_query_check_rolls_back_a_canary_prometheus_sees_failing() {
    let prometheus_dir = temp_dir("analysis-prometheus-server");
    let prometheus = PrometheusServer::start(&prometheus_dir, None);
    let orders = ORDERS.replace("{prometheus}", &prometheus.port.to_string());
    let s = serve_with("analysis-prometheus", &orders).await;
    prometheus.scrape(s.admin);
    s.canary.fail_every(5);
    let done = Arc::new(AtomicBool::new(false));
    let traffic = s.traffic("/orders/new", Arc::clone(&done));
    let r = eventually_within(
        ANALYSIS_DEADLINE,
        "the query check to abort the release",
        || async {
            let r = s
                .call(Method::GET, "/api/v1/releases/orders", "")
                .await
                .json();
            (r["state"] == "aborted").then_some(r)
        },
    )
    .await;
    done.store(true, Ordering::SeqCst);
    traffic.await.unwrap();
    let analysis = s
        .call(Method::GET, "/api/v1/releases/orders/analysis", "")
        .await
        .json();
    let failed = analysis["history"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|j| j["results"].as_array().unwrap().clone())
        .find(|c| c["verdict"] == "fail")
        .expect("a failing query verdict");
    assert_eq!(failed["check"], "canary 5xx ratio");
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains("above max 0.05"),
        "{failed}"
    );
    let value = failed["figures"]["candidate"]["value"].as_f64().unwrap();
    assert!(
        (0.1..=0.3).contains(&value),
        "Prometheus saw about 20% errors: {value}"
    );
    assert_eq!(r["weights"]["canary"], 0.0);
    s.stop().await;
}

/// A `shadow` release whose first step only mirrors: half the users' requests are copied to
/// the candidate, whose answers nobody sees.
const SHADOW: &str = r#"  - name: shadow
    match: { path_prefix: /shadow }
    versions:
      stable: { endpoints: ["{stable}"] }
      canary: { endpoints: ["{canary}"] }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      bucket_by: "header:X-User-Id"
      steps:
        - { mirror: 50, pause: 10m }
        - weight: 100
      analysis:
        interval: 500ms
        min_requests: 40
        checks:
          - metric: error_rate
            max_increase: 0.02
"#;

#[tokio::test]
async fn a_candidate_failing_on_mirrored_traffic_is_aborted_before_any_user_sees_it() {
    let s = serve_with("analysis-mirror", SHADOW).await;
    s.canary.set_status(500);
    let r = s
        .call(Method::GET, "/api/v1/releases/shadow", "")
        .await
        .json();
    assert_eq!(
        (r["mirror"].as_f64(), r["weights"]["canary"].as_f64()),
        (Some(50.0), Some(0.0)),
        "{r}"
    );
    assert_eq!(r["plan"][0]["mirror"], 50.0, "{r}");
    let admin = format!("http://{}", s.admin);
    let status = tokio::task::spawn_blocking(move || {
        run_with_env(
            &["status", "shadow", "--admin", &admin],
            &[("GRAYLANE_TOKEN", OPERATOR)],
        )
    })
    .await
    .unwrap();
    assert!(
        status.stdout.contains("canary 0% (mirror 50%)"),
        "{status:?}"
    );

    // Users keep coming while the analysis judges the copies; every answer is the baseline's.
    let done = Arc::new(AtomicBool::new(false));
    let proxy = s.proxy;
    let users = tokio::spawn({
        let done = Arc::clone(&done);
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            let mut answers = Vec::new();
            while !done.load(Ordering::SeqCst) && tokio::time::Instant::now() < deadline {
                let user = format!("user-{}", answers.len());
                if let Ok(reply) = try_get(proxy, "/shadow/page", &[("x-user-id", &user)]).await {
                    answers.push((reply.status, reply.upstream_version()));
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            answers
        }
    });
    let r = eventually_within(
        ANALYSIS_DEADLINE,
        "the analysis to abort the mirrored release",
        || async {
            let r = s
                .call(Method::GET, "/api/v1/releases/shadow", "")
                .await
                .json();
            (r["state"] == "aborted").then_some(r)
        },
    )
    .await;
    done.store(true, Ordering::SeqCst);
    let answers = users.await.unwrap();
    let last = r["transitions"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["actor"].as_str(), last["action"].as_str()),
        (Some("analysis"), Some("analysis_failed")),
        "{r}"
    );
    assert_eq!(
        r["mirror"],
        Value::Null,
        "an aborted release copies nothing: {r}"
    );
    assert!(answers.len() >= 40, "{} answers", answers.len());
    assert!(
        answers
            .iter()
            .all(|(status, version)| *status == StatusCode::OK && version == "stable"),
        "a user saw the candidate or its 500: {:?}",
        answers
            .iter()
            .find(|(st, v)| *st != StatusCode::OK || v != "stable")
    );
    let copies = s.canary.seen();
    assert!(
        copies.len() >= 40,
        "{} copies reached the candidate",
        copies.len()
    );
    assert!(
        copies
            .iter()
            .all(|c| c.headers.get("x-graylane-mirror").map(String::as_str) == Some("1")),
        "the candidate only ever got marked copies"
    );
    s.stop().await;
}
