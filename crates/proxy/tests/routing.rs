//! Routing through a real gateway on loopback: forced rules, segments, weights, 404s, the
//! headers the upstream receives, sticky cookies, the lane header and HTTP/2 clients.

mod common;

use common::*;
use http::{Method, StatusCode};

/// `payment` at weight 0 with a header and a staff-segment force rule; `orders` at weight 100.
const TWO_SERVICES: &str = r#"
listeners:
  - bind: 127.0.0.1:0
segments:
  staff: { values: [u-1001, u-1002] }
services:
  - name: payment
    match: { path_prefix: /api/payment }
    versions:
      stable: { endpoints: ["{stable}"] }
      canary: { endpoints: ["{canary}"], tag: v1.2.0 }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      force:
        - header: { name: X-Release-Phase, equals: canary }
        - segment: { name: staff, key: "header:X-User-Id" }
      bucket_by: "header:X-User-Id"
      steps:
        - weight: 0
  - name: orders
    match: { path_prefix: /api/orders }
    versions:
      stable: { endpoints: ["{stable}"] }
      canary: { endpoints: ["{canary}"] }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      bucket_by: "header:X-User-Id"
      steps:
        - weight: 100
"#;

struct Setup {
    gateway: graylane_proxy::Gateway,
    stable: Upstream,
    _canary: Upstream,
}

fn two_services() -> Setup {
    let stable = Upstream::start("stable");
    let canary = Upstream::start("canary");
    let yaml = fill(
        TWO_SERVICES,
        &[
            ("stable", stable.addr.to_string()),
            ("canary", canary.addr.to_string()),
        ],
    );
    Setup {
        gateway: start_gateway(config(&yaml)),
        stable,
        _canary: canary,
    }
}

/// Asserts a 200 from the upstream `want`, stamped with `want` by graylane.
#[track_caller]
fn assert_served_by(reply: &Reply, want: &str, what: &str) {
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{what}: body {:?}",
        reply.body
    );
    assert_eq!(reply.version(), Some(want), "{what}: x-graylane-version");
    assert_eq!(
        reply.upstream_version(),
        want,
        "{what}: upstream that answered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_staff_and_weighted_requests_reach_the_right_version() {
    let s = two_services();
    let gw = addr(&s.gateway);
    let orders = "/api/payment/orders";

    let r = get(gw, orders, &[("X-User-Id", "u-42")]).await;
    assert_served_by(&r, "stable", "weight 0, ordinary user");
    let r = get(gw, orders, &[]).await;
    assert_served_by(&r, "stable", "weight 0, no user id");

    let r = get(gw, orders, &[("X-Release-Phase", "canary")]).await;
    assert_served_by(&r, "canary", "forced by header");
    let r = get(gw, orders, &[("X-Release-Phase", "canary-2")]).await;
    assert_served_by(&r, "stable", "`equals` is not a prefix match");

    for staff in ["u-1001", "u-1002"] {
        let r = get(gw, orders, &[("X-User-Id", staff)]).await;
        assert_served_by(&r, "canary", staff);
    }
    let r = get(gw, orders, &[("X-User-Id", "u-1003")]).await;
    assert_served_by(&r, "stable", "not in the staff segment");

    // Weight 100: every user, and a request without the bucketing key, goes to the canary.
    let mut conn = Http1::connect(gw).await.unwrap();
    for i in 0..30 {
        let user = format!("u-{i}");
        let r = conn
            .get("/api/orders/7", &[("X-User-Id", &user)])
            .await
            .unwrap();
        assert_served_by(&r, "canary", &user);
    }
    let r = conn.get("/api/orders", &[]).await.unwrap();
    assert_served_by(&r, "canary", "weight 100 without a user id");

    shutdown(s.gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_no_service_matches_gets_a_json_404() {
    let s = two_services();
    let gw = addr(&s.gateway);
    for path in ["/", "/nothing/here", "/api/pay"] {
        let r = get(gw, path, &[("X-Release-Phase", "canary")]).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(
            r.headers.get("content-type").unwrap(),
            "application/json",
            "{path}"
        );
        let body = r.json();
        assert_eq!(body["path"], path);
        assert!(
            body["error"].as_str().unwrap().contains("no service"),
            "{body}"
        );
        assert_eq!(r.version(), None, "no version served {path}");
    }
    shutdown(s.gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_receives_forwarding_and_trace_headers() {
    let s = two_services();
    let gw = addr(&s.gateway);
    let path = "/api/payment/orders?page=2";

    let r = get(gw, path, &[("X-User-Id", "u-42")]).await;
    assert_served_by(&r, "stable", "plain request");
    let body = r.json();
    assert_eq!(body["path"], path, "path and query reach the upstream");
    assert_eq!(
        r.upstream_header("x-graylane-lane").as_deref(),
        Some("stable")
    );
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        r.upstream_header("x-forwarded-proto").as_deref(),
        Some("http")
    );
    assert_eq!(r.upstream_header("x-user-id").as_deref(), Some("u-42"));
    assert_eq!(r.upstream_header("host"), Some(gw.to_string()));
    let via = r.upstream_header("via").unwrap_or_default();
    assert!(via.contains("1.1 graylane"), "via: {via:?}");
    let created = r
        .upstream_header("traceparent")
        .expect("a traceparent is created");
    assert!(
        is_traceparent(&created),
        "not a W3C traceparent: {created:?}"
    );

    // A second request gets a different trace.
    let again = get(gw, path, &[]).await;
    let other = again.upstream_header("traceparent").unwrap();
    assert!(is_traceparent(&other), "{other:?}");
    assert_ne!(created, other, "each request starts its own trace");

    // Incoming trace context and forwarding chain are kept.
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = get(
        gw,
        path,
        &[
            ("traceparent", parent),
            ("X-Forwarded-For", "203.0.113.9"),
            ("Via", "1.1 edge"),
            ("X-Release-Phase", "canary"),
        ],
    )
    .await;
    assert_served_by(&r, "canary", "forced request with a trace");
    assert_eq!(r.upstream_header("traceparent").as_deref(), Some(parent));
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(
        r.upstream_header("x-graylane-lane").as_deref(),
        Some("canary")
    );
    let via = r.upstream_header("via").unwrap_or_default();
    assert!(
        via.contains("1.1 edge") && via.contains("1.1 graylane"),
        "via: {via:?}"
    );
    shutdown(s.gateway).await;
}

fn is_traceparent(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    parts.len() == 4
        && parts[0] == "00"
        && hex(parts[1], 32)
        && parts[1] != "0".repeat(32)
        && hex(parts[2], 16)
        && parts[2] != "0".repeat(16)
        && hex(parts[3], 2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_stay_on_their_hop_and_bodies_are_forwarded() {
    let s = two_services();
    let gw = addr(&s.gateway);
    let mut conn = Http1::connect(gw).await.unwrap();
    let r = conn
        .send(
            Method::POST,
            "/api/payment/charge",
            &[
                ("Connection", "keep-alive, X-Secret-Hop"),
                ("X-Secret-Hop", "1"),
                ("Keep-Alive", "timeout=5"),
                ("Proxy-Connection", "keep-alive"),
                ("Proxy-Authorization", "Basic c2VjcmV0"),
                ("X-Kept", "yes"),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            "amount=42&currency=EUR",
        )
        .await
        .unwrap();
    assert_served_by(&r, "stable", "POST with hop-by-hop headers");
    let body = r.json();
    assert_eq!(body["method"], "POST");
    assert_eq!(
        body["body"], "amount=42&currency=EUR",
        "request body forwarded"
    );
    let headers = body["headers"].as_object().unwrap();
    for hop in [
        "x-secret-hop",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
    ] {
        assert!(
            !headers.contains_key(hop),
            "{hop} reached the upstream: {headers:?}"
        );
    }
    if let Some(c) = headers.get("connection") {
        assert!(
            !c.as_str().unwrap().to_ascii_lowercase().contains("secret"),
            "connection: {c}"
        );
    }
    assert_eq!(r.upstream_header("x-kept").as_deref(), Some("yes"));
    assert_eq!(
        r.upstream_header("content-type").as_deref(),
        Some("application/x-www-form-urlencoded")
    );

    // The client connection is still usable (keep-alive survived the exchange).
    let r = conn.get("/api/payment/orders", &[]).await.unwrap();
    assert_served_by(&r, "stable", "second request on the same connection");
    shutdown(s.gateway).await;
}

const STICKY: &str = r#"
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
      sticky: { cookie: graylane_lane }
      steps:
        - weight: {weight}
"#;

/// The `name=value` part of a `Set-Cookie`, and the bucket a `graylane_lane=v1.<bucket>.<tag>`
/// value carries.
fn sticky_pair(set_cookie: &str) -> (String, u32) {
    let pair = set_cookie.split(';').next().unwrap().to_string();
    let bucket = pair
        .strip_prefix("graylane_lane=v1.")
        .and_then(|rest| rest.split('.').next())
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("not a signed sticky cookie: {set_cookie:?}"));
    (pair, bucket)
}

fn sticky_yaml(stable: &Upstream, canary: &Upstream, weight: f64) -> String {
    fill(
        STICKY,
        &[
            ("stable", stable.addr.to_string()),
            ("canary", canary.addr.to_string()),
            ("weight", weight.to_string()),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_version_cookie_gets_the_configured_split_and_a_real_cookie() {
    let stable = Upstream::start("stable");
    let canary = Upstream::start("canary");
    let gateway = start_gateway(config(&sticky_yaml(&stable, &canary, 5.0)));
    let mut conn = Http1::connect(addr(&gateway)).await.unwrap();
    let mut on_canary = 0;
    for _ in 0..400 {
        let r = conn
            .get("/api/payment/orders", &[("Cookie", "graylane_lane=canary")])
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK);
        let version = r.version().unwrap().to_string();
        assert_eq!(r.upstream_version(), version);
        let cookies = r.set_cookies();
        assert_eq!(
            cookies.len(),
            1,
            "the forged cookie is replaced: {cookies:?}"
        );
        let (_, bucket) = sticky_pair(&cookies[0]);
        assert_eq!(
            version == "canary",
            bucket < 5_000,
            "bucket {bucket} → {version}"
        );
        on_canary += usize::from(version == "canary");
    }
    // 5% of 400 is 20; a forged cookie that worked would make it 400.
    assert!(
        (1..=60).contains(&on_canary),
        "{on_canary} of 400 on the canary"
    );
    shutdown(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_sticky_cookie_keeps_its_version_and_moves_to_the_candidate_as_the_weight_grows()
{
    let stable = Upstream::start("stable");
    let canary = Upstream::start("canary");
    let gateway = start_gateway(config(&sticky_yaml(&stable, &canary, 5.0)));
    let path = "/api/payment/orders";
    let mut conn = Http1::connect(addr(&gateway)).await.unwrap();

    // Clients without a user id: each first response pins a random bucket.
    let mut holders = Vec::new();
    for _ in 0..60 {
        let r = conn.get(path, &[]).await.unwrap();
        let cookies = r.set_cookies();
        assert_eq!(cookies.len(), 1, "{cookies:?}");
        for attribute in ["; Path=/api/payment", "; HttpOnly", "; SameSite=Lax"] {
            assert!(cookies[0].contains(attribute), "{:?}", cookies[0]);
        }
        assert!(
            !cookies[0].contains("Secure"),
            "plain HTTP: {:?}",
            cookies[0]
        );
        let (pair, bucket) = sticky_pair(&cookies[0]);
        holders.push((pair, bucket, r.version().unwrap().to_string()));
    }
    // Replayed at the same weight: the same version, and no new cookie.
    for (pair, bucket, first) in &holders {
        for _ in 0..2 {
            let r = conn.get(path, &[("Cookie", pair)]).await.unwrap();
            assert_eq!(r.version(), Some(first.as_str()), "bucket {bucket}");
            assert!(r.set_cookies().is_empty(), "{:?}", r.set_cookies());
        }
    }
    // Widening moves holders toward the candidate by their bucket, never back.
    let mut was_canary = vec![false; holders.len()];
    for weight in [5.0, 50.0, 99.9, 100.0] {
        gateway.apply(config(&sticky_yaml(&stable, &canary, weight)));
        for (i, (pair, bucket, _)) in holders.iter().enumerate() {
            let r = conn.get(path, &[("Cookie", pair)]).await.unwrap();
            let canary_now = r.version() == Some("canary");
            assert_eq!(r.upstream_version() == "canary", canary_now);
            assert_eq!(
                canary_now,
                f64::from(*bucket) < weight * 1_000.0,
                "bucket {bucket} at {weight}%"
            );
            assert!(canary_now || !was_canary[i], "bucket {bucket} moved back");
            was_canary[i] = canary_now;
        }
    }
    assert!(
        was_canary.iter().all(|c| *c),
        "everyone is on the canary at 100%"
    );
    shutdown(gateway).await;
}

const TRUSTED_ONLY: &str = r#"
listeners:
  - bind: 127.0.0.1:0
    trusted_hops: ["{trusted}"]
services:
  - name: payment
    versions:
      stable: { endpoints: ["{stable}"] }
      canary: { endpoints: ["{canary}"] }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      force:
        - header: { name: X-Canary, equals: "yes", trusted_only: true }
      steps:
        - weight: 0
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_only_force_header_from_an_untrusted_client_is_ignored() {
    let stable = Upstream::start("stable");
    let canary = Upstream::start("canary");
    let yaml = |trusted: &str| {
        fill(
            TRUSTED_ONLY,
            &[
                ("trusted", trusted.to_string()),
                ("stable", stable.addr.to_string()),
                ("canary", canary.addr.to_string()),
            ],
        )
    };
    let gateway = start_gateway(config(&yaml("192.0.2.0/24")));
    let gw = addr(&gateway);
    let r = get(gw, "/x", &[("X-Canary", "yes")]).await;
    assert_eq!(
        r.version(),
        Some("stable"),
        "127.0.0.1 is not a trusted hop"
    );
    shutdown(gateway).await;
    // Listener settings take effect at start: another gateway, trusting the client.
    let gateway = start_gateway(config(&yaml("127.0.0.1/32")));
    let r = get(addr(&gateway), "/x", &[("X-Canary", "yes")]).await;
    assert_eq!(r.version(), Some("canary"), "now it is");
    shutdown(gateway).await;
}

const LANE: &str = r#"
listeners:
  - bind: 127.0.0.1:0
    trusted_hops: ["{trusted}"]
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
  - name: orders
    match: { path_prefix: /api/orders }
    versions:
      stable: { endpoints: ["{stable}"] }
      canary: { endpoints: ["{canary}"] }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lane_header_is_honoured_only_from_trusted_hops() {
    let stable = Upstream::start("stable");
    let canary = Upstream::start("canary");
    let yaml = |trusted: &str| {
        fill(
            LANE,
            &[
                ("stable", stable.addr.to_string()),
                ("canary", canary.addr.to_string()),
                ("trusted", trusted.to_string()),
            ],
        )
    };
    let trusting = start_gateway(config(&yaml("127.0.0.1/32")));
    // 10.0.0.0/8 is only a CIDR in the configuration: nothing there is ever contacted.
    let distrusting = start_gateway(config(&yaml("10.0.0.0/8")));
    let lane = [("X-User-Id", "u-42"), ("x-graylane-lane", "canary")];

    let gw = addr(&trusting);
    for path in ["/api/payment/orders", "/api/orders/1"] {
        let r = get(gw, path, &lane).await;
        assert_served_by(&r, "canary", &format!("trusted lane on {path}"));
        assert_eq!(
            r.upstream_header("x-graylane-lane").as_deref(),
            Some("canary")
        );
    }
    // A lane that names no version of the service routes as usual, and the upstream sees the
    // lane graylane chose.
    let r = get(
        gw,
        "/api/payment/orders",
        &[("X-User-Id", "u-42"), ("x-graylane-lane", "blue")],
    )
    .await;
    assert_served_by(&r, "stable", "unknown lane");
    assert_eq!(
        r.upstream_header("x-graylane-lane").as_deref(),
        Some("stable")
    );

    let gw = addr(&distrusting);
    for path in ["/api/payment/orders", "/api/orders/1"] {
        let r = get(gw, path, &lane).await;
        assert_served_by(&r, "stable", &format!("untrusted lane on {path}"));
        assert_eq!(
            r.upstream_header("x-graylane-lane").as_deref(),
            Some("stable"),
            "the client's lane header must not reach the upstream"
        );
    }
    shutdown(trusting).await;
    shutdown(distrusting).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_clients_are_proxied() {
    let s = two_services();
    let gw = addr(&s.gateway);
    let mut h2 = Http2::connect(gw).await.unwrap();

    let r = h2
        .get("/api/payment/orders?x=1", &[("X-Release-Phase", "canary")])
        .await
        .unwrap();
    assert_served_by(&r, "canary", "h2 forced request");
    let body = r.json();
    assert_eq!(
        body["path"], "/api/payment/orders?x=1",
        "origin-form target upstream"
    );
    assert_eq!(
        body["http_version"], "HTTP/1.1",
        "upstreams are spoken to in HTTP/1.1"
    );
    assert_eq!(
        r.upstream_header("host"),
        Some(gw.to_string()),
        "authority → Host"
    );

    let r = h2.get("/nowhere", &[]).await.unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Many concurrent streams on the one connection, each routed on its own.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let mut h2 = h2.clone();
        tasks.push(tokio::spawn(async move {
            let forced = i % 2 == 0;
            let headers: &[(&str, &str)] = if forced {
                &[("X-Release-Phase", "canary")]
            } else {
                &[("X-User-Id", "u-42")]
            };
            let r = h2.get("/api/payment/orders", headers).await?;
            let want = if forced { "canary" } else { "stable" };
            if r.status == StatusCode::OK
                && r.version() == Some(want)
                && r.upstream_version() == want
            {
                Ok(())
            } else {
                Err(format!("stream {i}: wanted {want}, got {r:?}"))
            }
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    shutdown(s.gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways_and_connections_are_reused() {
    let s = two_services();
    let gw = addr(&s.gateway);
    let mut conn = Http1::connect(gw).await.unwrap();
    let big: String = (0..2 * 1024 * 1024)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    for round in 0..3 {
        let r = conn
            .send(Method::PUT, "/api/payment/upload", &[], &big)
            .await
            .unwrap();
        assert_served_by(&r, "stable", &format!("2 MiB upload, round {round}"));
        let echoed = r.json()["body"].as_str().unwrap().to_string();
        assert_eq!(echoed.len(), big.len(), "round {round}");
        assert!(echoed == big, "round {round}: the body arrived intact");
    }
    // A small request after them still works on the same client connection.
    let r = conn.get("/api/payment/orders", &[]).await.unwrap();
    assert_served_by(&r, "stable", "after large bodies");
    // Each streamed body gave its upstream connection back to the pool for the next request.
    let opened = s.stable.connections();
    eprintln!("upstream connections for 4 sequential exchanges: {opened}");
    assert!(
        opened < 4,
        "{opened} upstream connections for 4 sequential exchanges"
    );
    shutdown(s.gateway).await;
}
