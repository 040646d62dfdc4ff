//! Hot reload: routing changes atomically under concurrent load without failing a request, and
//! an invalid file changes nothing.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;

/// Weight {weight}; stable and canary are separate upstreams, so a response proves which
/// configuration routed it.
const RELEASE: &str = r#"
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
      bucket_by: "header:X-User-Id"
      steps:
        - weight: {weight}
"#;

const CLIENTS: usize = 6;
const MIN_REQUESTS: u64 = 6_000;
const MIN_RELOADS: u64 = 50;
/// Bounds the load loop whatever happens; the test fails if the goals are not met by then.
const LOAD_DEADLINE: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_fail_no_request() {
    let stable = Upstream::start("stable");
    let canary = Upstream::start("canary");
    let yaml = |weight: u32| {
        fill(
            RELEASE,
            &[
                ("stable", stable.addr.to_string()),
                ("canary", canary.addr.to_string()),
                ("weight", weight.to_string()),
            ],
        )
    };
    let all_stable = config(&yaml(0));
    let all_canary = config(&yaml(100));
    let gateway = Arc::new(start_gateway(all_stable.clone()));
    let gw = addr(&gateway);

    let requests = Arc::new(AtomicU64::new(0));
    let reloads = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + LOAD_DEADLINE;

    // Reloads on a plain thread, like the binary's SIGHUP/file watcher, alternating configs.
    let reloader = {
        let (gateway, reloads, stop) = (
            Arc::clone(&gateway),
            Arc::clone(&reloads),
            Arc::clone(&stop),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let n = reloads.load(Ordering::SeqCst);
                let next = if n % 2 == 0 { &all_canary } else { &all_stable };
                gateway.apply(next.clone());
                reloads.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };

    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (requests, reloads) = (Arc::clone(&requests), Arc::clone(&reloads));
        clients.push(tokio::spawn(async move {
            let mut seen: BTreeMap<String, u64> = BTreeMap::new();
            let mut failures: Vec<String> = Vec::new();
            let mut conn = None;
            let mut i = 0u64;
            loop {
                let done = requests.load(Ordering::SeqCst) >= MIN_REQUESTS
                    && reloads.load(Ordering::SeqCst) >= MIN_RELOADS;
                if done || Instant::now() > deadline || failures.len() >= 20 {
                    break;
                }
                i += 1;
                // Mostly keep-alive, with a fresh connection now and then.
                if i % 50 == 1 {
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
                let result = conn
                    .as_mut()
                    .unwrap()
                    .get("/api/payment/orders", &[("X-User-Id", &user)])
                    .await;
                requests.fetch_add(1, Ordering::SeqCst);
                match result {
                    Ok(r) => {
                        let version = r.version().unwrap_or("").to_string();
                        let served_by = serde_json::from_slice::<serde_json::Value>(&r.body)
                            .ok()
                            .and_then(|v| v["version"].as_str().map(str::to_string));
                        if r.status != StatusCode::OK
                            || !(version == "stable" || version == "canary")
                            || served_by.as_deref() != Some(version.as_str())
                        {
                            failures.push(format!(
                                "{user}: {} version {version:?} served by {served_by:?}",
                                r.status
                            ));
                        }
                        *seen.entry(version).or_default() += 1;
                    }
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
    for c in clients {
        let (s, f) = c.await.unwrap();
        for (k, v) in s {
            *seen.entry(k).or_default() += v;
        }
        failures.extend(f);
    }
    stop.store(true, Ordering::SeqCst);
    reloader.join().unwrap();

    let total = requests.load(Ordering::SeqCst);
    let applied = reloads.load(Ordering::SeqCst);
    eprintln!("{total} requests, {applied} reloads, versions {seen:?}");
    assert!(
        failures.is_empty(),
        "{} failures, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        total >= MIN_REQUESTS,
        "only {total} requests in {LOAD_DEADLINE:?}"
    );
    assert!(
        applied >= MIN_RELOADS,
        "only {applied} reloads during the load"
    );
    assert!(
        seen.get("stable").copied().unwrap_or(0) > 0
            && seen.get("canary").copied().unwrap_or(0) > 0,
        "both configurations served traffic: {seen:?}"
    );
    assert_eq!(seen.values().sum::<u64>(), total);

    // Reloads are atomic: after the last apply, every request follows it.
    gateway.apply(config(&yaml(100)));
    for i in 0..20 {
        let r = get(
            gw,
            "/api/payment/orders",
            &[("X-User-Id", &format!("u-{i}"))],
        )
        .await;
        assert_eq!(r.version(), Some("canary"));
    }

    let gateway = Arc::try_unwrap(gateway)
        .ok()
        .expect("no other gateway owner is left");
    shutdown(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_reload_is_rejected_and_the_old_routing_keeps_serving() {
    let stable = Upstream::start("stable");
    let canary = Upstream::start("canary");
    let yaml = |weight: &str| {
        fill(
            RELEASE,
            &[
                ("stable", stable.addr.to_string()),
                ("canary", canary.addr.to_string()),
                ("weight", weight.to_string()),
            ],
        )
    };
    let gateway = start_gateway(config(&yaml("0")));
    let gw = addr(&gateway);
    let path = temp_file("reload.yaml");

    // A valid file is applied and counted.
    std::fs::write(&path, yaml("100")).unwrap();
    gateway.reload_from(&path).expect("the valid file reloads");
    let r = get(gw, "/api/payment/orders", &[("X-User-Id", "u-1")]).await;
    assert_eq!(r.version(), Some("canary"));

    // An invalid one is refused with a precise error, and the routing does not change.
    std::fs::write(&path, yaml("150")).unwrap();
    let errors = gateway
        .reload_from(&path)
        .expect_err("weight 150 is refused");
    let text = errors.to_string();
    let line = yaml("150")
        .lines()
        .position(|l| l.contains("weight: 150"))
        .unwrap()
        + 1;
    assert!(
        text.contains(&format!("{}:{line}:", path.display()))
            && text.contains("services[0].release.steps[0].weight"),
        "{text}"
    );
    // So is a file that is not YAML at all, and one that does not exist.
    std::fs::write(&path, "services: [ {").unwrap();
    assert!(gateway.reload_from(&path).is_err());
    assert!(gateway.reload_from(&temp_file("missing.yaml")).is_err());

    for i in 0..20 {
        let r = get(
            gw,
            "/api/payment/orders",
            &[("X-User-Id", &format!("u-{i}"))],
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            r.version(),
            Some("canary"),
            "the last good configuration serves"
        );
    }
    let metrics = gateway.metrics().encode();
    assert_eq!(
        metric_value(&metrics, r#"graylane_config_reloads_total{result="error"}"#),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(
        metric_value(&metrics, r#"graylane_config_reloads_total{result="ok"}"#),
        Some(1.0),
        "{metrics}"
    );
    let _ = std::fs::remove_file(&path);
    shutdown(gateway).await;
}
