//! Mirror (shadow) steps through a real gateway on loopback: users are answered by the baseline
//! alone while a share of their requests is copied to the candidate, marked
//! `X-Graylane-Mirror: 1`; only safe methods unless configured; a dead or slow candidate never
//! slows a user, and what it answers (or fails to) is counted as the candidate's.

mod common;

use std::time::{Duration, Instant};

use common::*;
use http::Method;

/// `{share}`% of the requests copied to `canary`; users bucketed by `X-User`.
const CONFIG: &str = r#"
listeners:
  - bind: 127.0.0.1:0
services:
  - name: web
    timeouts: { request: 10s }
    versions:
      stable: { endpoints: ["{stable}"] }
      canary: { endpoints: ["{canary}"] }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      bucket_by: "header:X-User"
{methods}      steps:
        - { mirror: {share}, pause: manual }
        - { weight: 100 }
"#;

fn yaml(stable: &str, canary: &str, share: &str, methods: &str) -> String {
    fill(
        CONFIG,
        &[
            ("stable", stable.to_string()),
            ("canary", canary.to_string()),
            ("share", share.to_string()),
            ("methods", methods.to_string()),
        ],
    )
}

fn series(gateway: &graylane_proxy::Gateway, series: &str) -> f64 {
    metric_value(&gateway.metrics().encode(), series).unwrap_or(0.0)
}

fn mirror_count(gateway: &graylane_proxy::Gateway, outcome: &str) -> f64 {
    series(
        gateway,
        &format!(
            "graylane_mirror_requests_total{{service=\"web\",version=\"canary\",outcome=\"{outcome}\"}}"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_get_only_the_baseline_while_a_share_of_their_gets_is_copied_to_the_candidate() {
    let stable = Upstream::start("stable");
    let canary = Upstream::start("canary");
    let gateway = start_gateway(config(&yaml(
        &stable.addr.to_string(),
        &canary.addr.to_string(),
        "30",
        "",
    )));
    let mut conn = Http1::connect(addr(&gateway)).await.expect("connect");
    const USERS: usize = 400;
    for i in 0..USERS {
        let user = format!("user-{i}");
        let reply = conn
            // A client's own mark is not believed: only the gateway's copies carry it.
            .get(
                &format!("/items/{i}"),
                &[("x-user", &user), ("x-graylane-mirror", "1")],
            )
            .await
            .expect("an answer");
        assert_eq!(reply.status, 200, "{user}");
        assert_eq!(
            reply.upstream_version(),
            "stable",
            "{user} saw the candidate"
        );
        assert_eq!(reply.version(), Some("stable"));
    }
    // Whether a request is copied is decided before its answer: the count is final now.
    let sent = mirror_count(&gateway, "sent") as usize;
    assert!(
        (USERS * 20 / 100..=USERS * 40 / 100).contains(&sent),
        "{sent} of {USERS} requests copied, expected about 30%"
    );
    eventually("every copy reaches the candidate", || async {
        (canary.received() as usize == sent).then_some(())
    })
    .await;
    for seen in canary.seen() {
        assert_eq!(seen.method, "GET");
        assert_eq!(
            seen.headers.get("x-graylane-mirror").map(String::as_str),
            Some("1")
        );
        assert_eq!(
            seen.headers.get("x-graylane-lane").map(String::as_str),
            Some("canary")
        );
    }
    assert_eq!(
        stable.received() as usize,
        USERS,
        "the baseline serves every user"
    );
    assert!(
        stable
            .seen()
            .iter()
            .all(|s| !s.headers.contains_key("x-graylane-mirror")),
        "users' own requests are not marked, even when the client marked them"
    );

    // The candidate's stats hold the copies' exchanges; no user was answered by it.
    let observed = gateway.metrics().observe("web", "canary");
    assert_eq!(
        observed.codes.get(&200).copied().unwrap_or(0) as usize,
        sent
    );
    assert_eq!(
        series(
            &gateway,
            "graylane_requests_total{service=\"web\",version=\"canary\",code=\"200\"}"
        ),
        0.0
    );
    shutdown(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_users_are_copied_on_every_request() {
    let stable = Upstream::start("stable");
    let canary = Upstream::start("canary");
    let gateway = start_gateway(config(&yaml(
        &stable.addr.to_string(),
        &canary.addr.to_string(),
        "50",
        "",
    )));
    let mut conn = Http1::connect(addr(&gateway)).await.expect("connect");
    for round in 0..3 {
        for i in 0..40 {
            let user = format!("user-{i}");
            conn.get(&format!("/r{round}"), &[("x-user", &user)])
                .await
                .expect("an answer");
        }
    }
    let sent = mirror_count(&gateway, "sent") as u64;
    eventually("every copy reaches the candidate", || async {
        (canary.received() == sent).then_some(())
    })
    .await;
    let mut per_user = std::collections::BTreeMap::<String, u32>::new();
    for seen in canary.seen() {
        *per_user.entry(seen.headers["x-user"].clone()).or_default() += 1;
    }
    assert!(!per_user.is_empty());
    assert!(
        per_user.values().all(|&n| n == 3),
        "a copied user is copied every round: {per_user:?}"
    );
    shutdown(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_copied_only_when_mirror_methods_names_it() {
    let stable = Upstream::start("stable");
    let canary = Upstream::start("canary");
    let (s, c) = (stable.addr.to_string(), canary.addr.to_string());
    let gateway = start_gateway(config(&yaml(&s, &c, "100", "")));
    for i in 0..10 {
        let reply = request(
            addr(&gateway),
            Method::POST,
            "/orders",
            &[("x-user", &format!("user-{i}"))],
            "order",
        )
        .await;
        assert_eq!(reply.upstream_version(), "stable");
    }
    assert_eq!(
        mirror_count(&gateway, "sent"),
        0.0,
        "POST is not copied by default"
    );

    gateway.apply(config(&yaml(
        &s,
        &c,
        "100",
        "      mirror_methods: [GET, POST]\n",
    )));
    for i in 0..10 {
        let reply = request(
            addr(&gateway),
            Method::POST,
            "/orders",
            &[("x-user", &format!("user-{i}"))],
            format!("order {i}"),
        )
        .await;
        assert_eq!(reply.upstream_version(), "stable");
        assert_eq!(reply.json()["body"], format!("order {i}"));
    }
    eventually("every POST reaches the candidate", || async {
        (canary.received() == 10).then_some(())
    })
    .await;
    let mut bodies: Vec<String> = canary
        .seen()
        .iter()
        .map(|s| {
            assert_eq!(s.method, "POST");
            assert_eq!(
                s.headers.get("x-graylane-mirror").map(String::as_str),
                Some("1")
            );
            String::from_utf8_lossy(&s.body).into_owned()
        })
        .collect();
    bodies.sort();
    let mut expected: Vec<String> = (0..10).map(|i| format!("order {i}")).collect();
    expected.sort();
    assert_eq!(bodies, expected, "each copy carries its request's body");
    shutdown(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_candidate_fails_in_its_own_stats_while_users_are_served() {
    let stable = Upstream::start("stable");
    let dead = closed_port();
    let gateway = start_gateway(config(&yaml(
        &stable.addr.to_string(),
        &dead.to_string(),
        "100",
        "",
    )));
    let mut conn = Http1::connect(addr(&gateway)).await.expect("connect");
    for i in 0..50 {
        let reply = conn
            .get("/", &[("x-user", &format!("user-{i}"))])
            .await
            .expect("an answer");
        assert_eq!(
            (reply.status.as_u16(), reply.upstream_version()),
            (200, "stable".into())
        );
    }
    eventually("the candidate's failed copies are counted", || async {
        let failed = gateway
            .metrics()
            .observe("web", "canary")
            .codes
            .get(&502)
            .copied();
        (failed == Some(50)).then_some(())
    })
    .await;
    assert_eq!(
        series(
            &gateway,
            "graylane_requests_total{service=\"web\",version=\"stable\",code=\"200\"}"
        ),
        50.0
    );
    shutdown(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_candidate_never_slows_users_and_copies_beyond_the_bound_are_dropped() {
    let stable = Upstream::start("stable");
    let canary = Upstream::start("canary");
    canary.set_delay(Duration::from_secs(5));
    let gateway = start_gateway(config(&yaml(
        &stable.addr.to_string(),
        &canary.addr.to_string(),
        "100",
        "",
    )));
    let mut conn = Http1::connect(addr(&gateway)).await.expect("connect");
    const REQUESTS: usize = 200;
    let started = Instant::now();
    for i in 0..REQUESTS {
        let asked = Instant::now();
        let reply = conn
            .get("/", &[("x-user", &format!("user-{i}"))])
            .await
            .expect("an answer");
        assert_eq!(reply.upstream_version(), "stable");
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "a user waited {:?} on a candidate that takes 5 s",
            asked.elapsed()
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{REQUESTS} requests took {:?}: users waited on the candidate",
        started.elapsed()
    );
    // One connection is one worker: at most its bound of copies waits on the candidate.
    let (sent, dropped) = (
        mirror_count(&gateway, "sent"),
        mirror_count(&gateway, "dropped"),
    );
    assert_eq!(
        sent + dropped,
        REQUESTS as f64,
        "every request is sent or dropped"
    );
    assert!(
        sent <= 2.0 * 64.0 && dropped >= (REQUESTS - 2 * 64) as f64,
        "sent {sent}, dropped {dropped}"
    );
    shutdown(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_is_not_copied_and_is_counted_skipped() {
    let stable = Upstream::start("stable");
    let canary = Upstream::start("canary");
    let gateway = start_gateway(config(&yaml(
        &stable.addr.to_string(),
        &canary.addr.to_string(),
        "100",
        "      mirror_methods: [PUT]\n",
    )));
    // Larger than the 64 KiB the gateway reads ahead: forwarded as it streams.
    let big = vec![b'x'; 256 * 1024];
    let reply = request(
        addr(&gateway),
        Method::PUT,
        "/blob",
        &[("x-user", "u")],
        big,
    )
    .await;
    assert_eq!(
        (reply.status.as_u16(), reply.upstream_version()),
        (200, "stable".into())
    );
    assert_eq!(mirror_count(&gateway, "skipped"), 1.0);
    assert_eq!(mirror_count(&gateway, "sent"), 0.0);
    assert_eq!(canary.received(), 0);
    shutdown(gateway).await;
}
