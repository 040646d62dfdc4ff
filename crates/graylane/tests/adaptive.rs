//! `steps: adaptive` through the real binary under load: a healthy candidate's weight grows
//! interval by interval to completion, observed through the admin API; a failing one is stopped
//! by its exposure budget, which it overspends by at most one interval's requests; one set wide
//! by hand and handed back with `resume` is shrunk step by step before the budget stops it; one
//! healthy at its start weight that degrades once grown is shrunk on the data since it grew.

mod common;

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use http::Method;
use serde_json::Value;

const OPERATOR: &str = "operator-secret";

/// Several intervals of real traffic on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(60);

/// The analysis interval of both releases, in seconds.
const INTERVAL_S: f64 = 0.3;

/// The exposure budget of the failing release.
const BUDGET: u64 = 100;

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
      steps: adaptive
      adaptive: { start: 10, max: 100, grow: 2, shrink: 0.5, min_pause: 300ms, max_pause: 10s }
      max_bad_requests: {budget}
      analysis:
        interval: 300ms
        min_requests: 20
        failure_limit: 100
        checks:
          - metric: error_rate
            max_increase: 0.3
  - name: ledger
    match: { path_prefix: /api/ledger }
    versions:
      stable: { endpoints: ["{stable}"] }
      canary: { endpoints: ["{canary}"] }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      bucket_by: "header:X-User-Id"
      steps: adaptive
      adaptive: { start: 10, max: 100, min_pause: 2s }
      analysis:
        interval: 300ms
        min_requests: 20
        failure_limit: 100
        checks:
          - metric: error_rate
            max_increase: 0.2
  - name: refund
    match: { path_prefix: /api/refund }
    versions:
      stable: { endpoints: ["{stable}"] }
      canary: { endpoints: ["{canary}"] }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      bucket_by: "header:X-User-Id"
      steps: adaptive
      adaptive: { start: 10, min_pause: 300ms }
      max_bad_requests: {refund_budget}
      analysis:
        interval: 300ms
        min_requests: 20
        failure_limit: 100
        checks:
          - metric: error_rate
            max_increase: 0.3
"#;

/// The exposure budget of the release that is set to 80% by hand first.
const REFUND_BUDGET: u64 = 400;

async fn serve(test: &str) -> Served {
    Served::start(
        test,
        CONFIG,
        &[
            ("budget", BUDGET.to_string()),
            ("refund_budget", REFUND_BUDGET.to_string()),
        ],
        &[("TEST_TOKEN_OPERATOR", OPERATOR)],
    )
    .await
}

async fn release(s: &Served) -> Value {
    release_of(s, "payment").await
}

async fn release_of(s: &Served, service: &str) -> Value {
    s.api(
        Method::GET,
        &format!("/api/v1/releases/{service}"),
        OPERATOR,
        "",
    )
    .await
    .json()
}

/// Sends requests from ever new users until `done` is set (bounded: at most 90 s).
fn traffic(s: &Served, done: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    traffic_to(s, "/api/payment/pay", done)
}

fn traffic_to(
    s: &Served,
    path: &'static str,
    done: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    let proxy = s.proxy;
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        let mut sent = 0u64;
        while !done.load(Ordering::SeqCst) && tokio::time::Instant::now() < deadline {
            let user = format!("user-{sent}");
            let _ = try_get(proxy, path, &[("x-user-id", user.as_str())]).await;
            sent += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        sent
    })
}

fn weight_of(r: &Value) -> f64 {
    r["weights"]["canary"].as_f64().unwrap()
}

#[tokio::test]
async fn a_healthy_candidate_grows_interval_by_interval_to_completion() {
    let s = serve("adaptive-grow").await;
    let first = release(&s).await;
    assert_eq!(
        weight_of(&first),
        10.0,
        "an adaptive release starts at `start`: {first}"
    );
    assert_eq!(first["adaptive"]["max_bad_requests"], BUDGET, "{first}");
    let done = Arc::new(AtomicBool::new(false));
    let load = traffic(&s, Arc::clone(&done));
    let seen = RefCell::new(vec![10.0]);
    let r = eventually_within(DEADLINE, "the adaptive release to complete", || {
        let (seen, s) = (&seen, &s);
        async move {
            let r = release(s).await;
            let w = weight_of(&r);
            let mut seen = seen.borrow_mut();
            if seen.last() != Some(&w) {
                seen.push(w);
            }
            (r["state"] == "completed").then_some(r)
        }
    })
    .await;
    let seen = seen.into_inner();
    done.store(true, Ordering::SeqCst);
    load.await.unwrap();
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "the weight only grows for a healthy candidate: {seen:?}"
    );
    let path: Vec<f64> = r["adaptive"]["path"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["weight"].as_f64().unwrap())
        .collect();
    // All the data is at 10% when it first clears: proven at its weight, it grows by grow².
    assert_eq!(path[..2], [10.0, 40.0], "{r}");
    assert_eq!(path.last(), Some(&100.0), "{r}");
    assert!(
        path.windows(2)
            .all(|w| w[1] == 100.0 || w[1] == w[0] * 2.0 || w[1] == w[0] * 4.0),
        "each change grows by grow or grow², capped at 100%: {path:?}"
    );
    let grows: Vec<&Value> = r["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["action"] == "grow" || t["action"] == "complete")
        .collect();
    assert_eq!(grows.len(), path.len() - 1, "{r}");
    assert!(
        grows[0]["reason"]
            .as_str()
            .unwrap()
            .contains("10% → 40% (grow 2², proven at this weight"),
        "{}",
        grows[0]
    );
    for t in grows {
        assert_eq!(t["actor"], "analysis");
        assert!(
            t["reason"].as_str().unwrap().contains("error_rate"),
            "each change names the figures that caused it: {t}"
        );
    }
    assert_eq!(r["adaptive"]["budget_spent"], 0, "{r}");
    s.stop().await;
}

#[tokio::test]
async fn a_failing_candidate_is_stopped_by_its_exposure_budget() {
    let s = serve("adaptive-budget").await;
    s.canary.fail_every(2);
    let started = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let load = traffic(&s, Arc::clone(&done));
    let r = eventually_within(DEADLINE, "the exposure budget to stop the release", || {
        let s = &s;
        async move {
            let r = release(s).await;
            (r["state"] == "aborted").then_some(r)
        }
    })
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let served = s.canary.received();
    done.store(true, Ordering::SeqCst);
    load.await.unwrap();
    let last = r["transitions"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["action"], "budget_spent", "{r}");
    assert!(
        last["reason"]
            .as_str()
            .unwrap()
            .contains("max_bad_requests 100"),
        "{last}"
    );
    assert_eq!(weight_of(&r), 0.0);
    let spent = r["adaptive"]["budget_spent"].as_u64().unwrap();
    // Tolerance: the budget is checked once per interval, so it may be overspent by what the
    // candidate served in one interval — at most its mean rate over the run times the interval,
    // doubled for the unevenness of a loaded machine.
    let one_interval = (served as f64 / elapsed * INTERVAL_S * 2.0).ceil() as u64;
    assert!(
        spent <= BUDGET + one_interval,
        "spent {spent} of {BUDGET} (+{one_interval} for one interval): {r}"
    );
    assert!(
        spent <= served,
        "only requests the candidate served count: {spent} > {served}"
    );
    assert!(spent > 0, "{r}");
    s.stop().await;
}

#[tokio::test]
async fn a_candidate_looking_worse_is_shrunk_step_by_step_after_set_weight_and_resume() {
    let s = serve("adaptive-shrink").await;
    s.canary.fail_every(2);
    let set = s
        .api(
            Method::POST,
            "/api/v1/releases/refund/weight",
            OPERATOR,
            r#"{"weight": 80, "reason": "try it wide"}"#,
        )
        .await
        .json();
    assert_eq!(weight_of(&set), 80.0, "{set}");
    assert!(
        set["allowed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "resume"),
        "a weight set by hand is kept until resume: {set}"
    );
    let resumed = s
        .api(
            Method::POST,
            "/api/v1/releases/refund/resume",
            OPERATOR,
            r#"{"reason": "back to the analysis"}"#,
        )
        .await
        .json();
    assert_eq!(resumed["weight_overridden"], false, "{resumed}");
    let started = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let load = traffic_to(&s, "/api/refund/pay", Arc::clone(&done));
    let r = eventually_within(DEADLINE, "the exposure budget to stop the release", || {
        let s = &s;
        async move {
            let r = release_of(s, "refund").await;
            (r["state"] == "aborted").then_some(r)
        }
    })
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let served = s.canary.received();
    done.store(true, Ordering::SeqCst);
    load.await.unwrap();
    let path: Vec<(String, f64)> = r["adaptive"]["path"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["action"].as_str().unwrap().to_string(),
                t["weight"].as_f64().unwrap(),
            )
        })
        .collect();
    let shrinks: Vec<f64> = path
        .iter()
        .filter(|(action, _)| action == "shrink")
        .map(|(_, w)| *w)
        .collect();
    assert_eq!(
        shrinks.first(),
        Some(&40.0),
        "80% halves to 40% first: {path:?}"
    );
    assert!(
        shrinks.windows(2).all(|w| w[1] < w[0]) && shrinks.iter().all(|w| *w >= 10.0),
        "each shrink halves, never below start: {path:?}"
    );
    let last = r["transitions"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["action"], "budget_spent", "{r}");
    let spent = r["adaptive"]["budget_spent"].as_u64().unwrap();
    // The same tolerance as above: one interval at the run's mean candidate rate, doubled.
    let one_interval = (served as f64 / elapsed * INTERVAL_S * 2.0).ceil() as u64;
    assert!(
        spent <= REFUND_BUDGET + one_interval,
        "spent {spent} of {REFUND_BUDGET} (+{one_interval} for one interval): {r}"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_candidate_that_degrades_once_grown_is_shrunk_on_the_data_since_it_grew() {
    let s = serve("adaptive-degrade").await;
    let done = Arc::new(AtomicBool::new(false));
    let load = traffic_to(&s, "/api/ledger/post", Arc::clone(&done));
    // Healthy at 10%: it clears and grows (min_pause keeps it at 40% for 2 s).
    eventually_within(DEADLINE, "the ledger release to grow to 40%", || {
        let s = &s;
        async move { (weight_of(&release_of(s, "ledger").await) == 40.0).then_some(()) }
    })
    .await;
    // Under the load of 40% it degrades: every second request fails.
    s.canary.fail_every(2);
    let r = eventually_within(DEADLINE, "the degraded candidate to be shrunk", || {
        let s = &s;
        async move {
            let r = release_of(s, "ledger").await;
            (weight_of(&r) < 40.0).then_some(r)
        }
    })
    .await;
    done.store(true, Ordering::SeqCst);
    load.await.unwrap();
    let shrink = r["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["action"] == "shrink")
        .unwrap_or_else(|| panic!("a shrink, not a stop: {r}"))
        .clone();
    assert_eq!(weight_of(&r), 20.0, "{r}");
    let reason = shrink["reason"].as_str().unwrap();
    assert!(
        reason.contains("leaning worse: 40% → 20%")
            && reason.contains("since the weight last changed: error_rate"),
        "the shrink names the figures of the data since the growth: {shrink}"
    );
    assert!(
        r["adaptive"]["budget_spent"].as_u64().unwrap() > 0,
        "its requests while worse are counted: {r}"
    );
    s.stop().await;
}
