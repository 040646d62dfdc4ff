//! What a hostile client can make graylane put on the wire, checked against an upstream that
//! records raw bytes: request smuggling through `Connection`, `Host` tricks, transfer codings,
//! path spellings that dodge path-scoped rules, header names with underscores and forged trace
//! context. Each case is sent the way an attacker would, byte for byte.

mod common;

use common::*;
use http::Method;

/// `payment` (with a path-scoped rate limit on its admin routes) on the recording upstream,
/// everything else on a second one, so a path that dodges the prefix shows up in the wrong
/// place.
const PATHS: &str = r#"
listeners:
  - bind: 127.0.0.1:0
{listener_extra}
services:
  - name: payment
    match: { path_prefix: /api/payment }
    versions:
      stable: { endpoints: ["{payment}"] }
  - name: site
    match: { path_prefix: / }
    versions:
      stable: { endpoints: ["{site}"] }
traffic_control:
  rate_limits:
    - { service: payment, path_prefix: /api/payment/admin, rate: 1/m, burst: 1 }
"#;

struct Paths {
    gateway: graylane_proxy::Gateway,
    payment: RecordingUpstream,
    site: RecordingUpstream,
}

fn paths_setup(listener_extra: &str) -> Paths {
    let payment = RecordingUpstream::start();
    let site = RecordingUpstream::start();
    let yaml = fill(
        PATHS,
        &[
            ("listener_extra", listener_extra.to_string()),
            ("payment", payment.addr.to_string()),
            ("site", site.addr.to_string()),
        ],
    );
    Paths {
        gateway: start_gateway(config(&yaml)),
        payment,
        site,
    }
}

fn one_upstream() -> (graylane_proxy::Gateway, RecordingUpstream) {
    let (gateway, upstream, _) = one_upstream_with("");
    (gateway, upstream)
}

fn one_upstream_with(
    listener_extra: &str,
) -> (
    graylane_proxy::Gateway,
    RecordingUpstream,
    RecordingUpstream,
) {
    let p = paths_setup(listener_extra);
    (p.gateway, p.site, p.payment)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_connection_nomination_can_make_a_body_into_a_second_upstream_request() {
    let (gateway, upstream) = one_upstream();
    let gw = addr(&gateway);
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: victim\r\nX-Graylane-Lane: canary\r\n\r\n";
    let chunked_body = format!("{:x}\r\n{smuggled}\r\n0\r\n\r\n", smuggled.len());
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "Connection: content-length",
            format!(
                "POST /a HTTP/1.1\r\nHost: gw\r\nContent-Length: {}\r\nConnection: content-length\r\n\r\n{smuggled}",
                smuggled.len()
            ),
            smuggled,
        ),
        (
            "Connection: keep-alive, Content-Length (mixed case, in a list)",
            format!(
                "POST /b HTTP/1.1\r\nHost: gw\r\nConnection: keep-alive, Content-Length\r\nContent-Length: {}\r\n\r\n{smuggled}",
                smuggled.len()
            ),
            smuggled,
        ),
        (
            "two Connection fields, the second naming content-length",
            format!(
                "POST /c HTTP/1.1\r\nHost: gw\r\nConnection: keep-alive\r\nContent-Length: {}\r\nConnection: content-length\r\n\r\n{smuggled}",
                smuggled.len()
            ),
            smuggled,
        ),
        (
            "Connection: transfer-encoding on a chunked body",
            format!(
                "POST /d HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nConnection: transfer-encoding\r\n\r\n{chunked_body}"
            ),
            smuggled,
        ),
        (
            "Connection: host, content-length, transfer-encoding",
            format!(
                "POST /e HTTP/1.1\r\nHost: gw\r\nContent-Length: {}\r\nConnection: host, content-length, transfer-encoding\r\n\r\n{smuggled}",
                smuggled.len()
            ),
            smuggled,
        ),
    ];
    let mut sent = Vec::new();
    for (what, request, body) in &cases {
        let mut client = RawClient::connect(gw).await;
        let reply = client
            .exchange(request.as_bytes())
            .await
            .unwrap_or_else(|| panic!("{what}: no answer"));
        assert_eq!(reply.status, 200, "{what}: {}", reply.text());
        let path = request.split(' ').nth(1).unwrap().to_string();
        sent.push((path, body.to_string()));
        // Other users' requests follow on the gateway's pooled connections: none of them may
        // be read by the upstream as anything but itself.
        for i in 0..4 {
            let reply = get(gw, &format!("/victim-{i}"), &[]).await;
            assert_eq!(reply.status, 200, "{what}: victim {i}");
        }
    }
    let requests = upstream.requests();
    assert!(
        upstream.garbage().is_empty(),
        "the upstream got bytes that are not a request: {:?}\n{}",
        upstream.garbage(),
        upstream.wire_text()
    );
    assert!(
        requests.iter().all(|r| r.target != "/smuggled"),
        "a body became a request upstream:\n{}",
        upstream.wire_text()
    );
    assert_eq!(requests.len(), cases.len() * 5, "{}", upstream.wire_text());
    for (path, body) in sent {
        let r = requests
            .iter()
            .find(|r| r.target == path)
            .unwrap_or_else(|| panic!("{path} never reached the upstream"));
        assert_eq!(String::from_utf8_lossy(&r.body), body, "{path}: its body");
        assert_eq!(
            r.header_values("host"),
            ["gw"],
            "{path}: Host is not removable"
        );
        assert_eq!(
            r.header_values("x-graylane-lane"),
            ["stable"],
            "{path}: the lane is graylane's"
        );
    }
    shutdown(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_repeated_host_is_refused_and_an_authority_replaces_host() {
    let (gateway, upstream) = one_upstream();
    let gw = addr(&gateway);
    for (what, request) in [
        ("no Host on HTTP/1.1", "GET /x HTTP/1.1\r\n\r\n".to_string()),
        (
            "two Host fields",
            "GET /x HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n".to_string(),
        ),
        (
            "a Host with a path in it",
            "GET /x HTTP/1.1\r\nHost: a.example/evil\r\n\r\n".to_string(),
        ),
        (
            "a Host with userinfo",
            "GET /x HTTP/1.1\r\nHost: user@a.example\r\n\r\n".to_string(),
        ),
        (
            "an empty Host",
            "GET /x HTTP/1.1\r\nHost:\r\n\r\n".to_string(),
        ),
    ] {
        let reply = raw_request(gw, request.as_bytes())
            .await
            .unwrap_or_else(|| panic!("{what}: no answer"));
        assert_eq!(reply.status, 400, "{what}: {}", reply.text());
    }
    assert!(
        upstream.requests().is_empty(),
        "refused requests never go upstream"
    );

    // HTTP/1.0 has no Host requirement.
    let reply = raw_request(gw, b"GET /old HTTP/1.0\r\n\r\n").await.unwrap();
    assert_eq!(reply.status, 200);

    // Absolute form: the target's authority is the host, for routing and upstream alike.
    let reply = raw_request(
        gw,
        b"GET http://a.example/abs HTTP/1.1\r\nHost: b.example\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let abs = upstream
        .requests()
        .into_iter()
        .find(|r| r.target == "/abs")
        .expect("the absolute-form request is forwarded in origin form");
    assert_eq!(abs.header_values("host"), ["a.example"]);
    shutdown(gateway).await;
}

/// Routing by host: what the router saw and what the upstream got must be the same host.
const HOSTS: &str = r#"
listeners:
  - bind: 127.0.0.1:0
services:
  - name: a
    match: { host: a.example, path_prefix: / }
    versions:
      stable: { endpoints: ["{a}"] }
  - name: b
    match: { host: b.example, path_prefix: / }
    versions:
      stable: { endpoints: ["{b}"] }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_and_the_upstream_see_the_same_host_over_http1_and_http2() {
    let a = RecordingUpstream::start();
    let b = RecordingUpstream::start();
    let yaml = fill(
        HOSTS,
        &[("a", a.addr.to_string()), ("b", b.addr.to_string())],
    );
    let gateway = start_gateway(config(&yaml));
    let gw = addr(&gateway);
    let reply = raw_request(
        gw,
        b"GET http://a.example/h1 HTTP/1.1\r\nHost: b.example\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200);
    let mut h2 = Http2::connect(gw).await.unwrap();
    let reply = h2.get("/h2", &[("host", "b.example")]).await.unwrap();
    // The h2 client's :authority is the gateway's address, which no service claims.
    assert_eq!(
        reply.status, 404,
        "the :authority decides, not a Host header"
    );
    assert!(b.requests().is_empty(), "b.example was never the host");
    let seen = a.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header_values("host"), ["a.example"]);
    shutdown(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_codings_other_than_chunked_are_not_implemented() {
    let (gateway, upstream) = one_upstream();
    let gw = addr(&gateway);
    let body = "5\r\nhello\r\n0\r\n\r\n";
    for te in [
        "Transfer-Encoding: gzip, chunked\r\n",
        "Transfer-Encoding: chunked, chunked\r\n",
        "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: identity, chunked\r\n",
    ] {
        let request = format!("POST /te HTTP/1.1\r\nHost: gw\r\n{te}\r\n{body}");
        let reply = raw_request(gw, request.as_bytes()).await;
        let status = reply.as_ref().map(|r| r.status);
        assert!(
            matches!(status, Some(501) | Some(400) | None),
            "{te:?}: {status:?}"
        );
        if te.contains("gzip, chunked") {
            assert_eq!(status, Some(501), "as nginx answers");
        }
    }
    assert!(
        upstream.requests().is_empty(),
        "a coding was dropped silently: {:?}",
        upstream.requests()
    );
    // Plain chunked still works, and goes upstream framed by the gateway.
    let request =
        format!("POST /ok HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
    let reply = raw_request(gw, request.as_bytes()).await.unwrap();
    assert_eq!(reply.status, 200);
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, b"hello");
    shutdown(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_of_a_path_is_routed_and_limited_as_its_normal_form() {
    let p = paths_setup("");
    let gw = addr(&p.gateway);
    let spellings = [
        "//api/payment/orders",
        "/api//payment/orders",
        "/api/./payment/orders",
        "/x/../api/payment/orders",
        "/x/%2E%2E/api/payment/orders",
        "/%61pi/payment/orders",
        "/api/%70ayment/orders",
        "/../api/payment/orders",
    ];
    for path in spellings {
        let request = format!("GET {path}?q=1 HTTP/1.1\r\nHost: gw\r\n\r\n");
        let reply = raw_request(gw, request.as_bytes()).await.unwrap();
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
    }
    let mut h2 = Http2::connect(gw).await.unwrap();
    for path in ["//api/payment/orders?q=1", "/x/../api/%70ayment/orders?q=1"] {
        let reply = h2.get(path, &[]).await.unwrap();
        assert_eq!(reply.status, 200, "h2 {path}");
    }
    assert_eq!(
        h2.get("/api%2Fpayment/orders", &[]).await.unwrap().status,
        400,
        "h2 encoded slash"
    );
    assert!(
        p.site.requests().is_empty(),
        "a spelling got around the payment prefix: {:?}",
        p.site.requests()
    );
    let payment = p.payment.requests();
    assert_eq!(payment.len(), spellings.len() + 2);
    for r in &payment {
        assert_eq!(r.target, "/api/payment/orders?q=1", "forwarded normalised");
    }

    // The path-scoped limit (1 per minute) counts every spelling as the same route.
    let first = get(gw, "/api/payment/admin/users", &[]).await;
    assert_eq!(first.status, 200);
    for path in [
        "//api/payment/admin/users",
        "/api/payment/./admin/users",
        "/api/payment/%61dmin/users",
        "/api/payment/x/../admin/users",
    ] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n");
        let reply = raw_request(gw, request.as_bytes()).await.unwrap();
        assert_eq!(reply.status, 429, "{path} dodged the limit");
    }

    // Spellings an upstream could read as another path are refused outright.
    for path in [
        "/api%2Fpayment/orders",
        "/api%2fpayment/orders",
        "/api%5Cpayment/orders",
        "/public/..;/api/payment/orders",
        "/public/%2e%2e;x/api/payment/orders",
        "/api/payment/%zz",
    ] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n");
        let reply = raw_request(gw, request.as_bytes()).await.unwrap();
        assert_eq!(reply.status, 400, "{path}: {}", reply.text());
    }
    assert!(p.site.requests().is_empty());
    shutdown(p.gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_can_forward_the_raw_path_and_keep_escaped_slashes() {
    let p = paths_setup("    paths: { forward: raw, escaped_slashes: keep }");
    let gw = addr(&p.gateway);
    for path in ["//api/payment/x", "/api/payment/a%2Fb"] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n");
        let reply = raw_request(gw, request.as_bytes()).await.unwrap();
        assert_eq!(reply.status, 200, "{path}");
    }
    let seen: Vec<String> = p.payment.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(seen, ["//api/payment/x", "/api/payment/a%2Fb"]);
    shutdown(p.gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_names_with_underscores_never_reach_the_upstream_as_graylane_headers() {
    let forged = [
        ("X_Graylane_Lane", "canary"),
        ("x_forwarded_for", "10.9.9.9"),
        ("X_Graylane_Anything", "1"),
        ("x_user_id", "u-1"),
    ];
    let (gateway, upstream, _) = one_upstream_with("");
    let gw = addr(&gateway);
    let mut request = String::from("GET /h1 HTTP/1.1\r\nHost: gw\r\n");
    for (n, v) in forged {
        request.push_str(&format!("{n}: {v}\r\n"));
    }
    request.push_str("\r\n");
    assert_eq!(
        raw_request(gw, request.as_bytes()).await.unwrap().status,
        200
    );
    let mut h2 = Http2::connect(gw).await.unwrap();
    assert_eq!(h2.get("/h2", &forged).await.unwrap().status, 200);
    for r in upstream.requests() {
        assert!(
            r.headers.iter().all(|(n, _)| !n.contains('_')),
            "{}: by default (as nginx) names with _ are dropped: {:?}",
            r.target,
            r.headers
        );
        assert!(!upstream.wire_text().contains("10.9.9.9"));
    }
    shutdown(gateway).await;

    let (gateway, upstream, _) = one_upstream_with("    headers_with_underscores: allow");
    let gw = addr(&gateway);
    assert_eq!(
        raw_request(gw, request.as_bytes()).await.unwrap().status,
        200
    );
    let r = &upstream.requests()[0];
    assert_eq!(r.header_values("x_user_id"), ["u-1"], "allowed names pass");
    for (n, _) in &forged[..3] {
        assert!(
            r.header_values(n).is_empty(),
            "{n} reads as a graylane header: always dropped"
        );
    }
    shutdown(gateway).await;

    let (gateway, upstream, _) = one_upstream_with("    headers_with_underscores: reject");
    let gw = addr(&gateway);
    let reply = raw_request(gw, request.as_bytes()).await.unwrap();
    assert_eq!(reply.status, 400);
    assert!(
        reply.text().contains('_'),
        "the error names the header: {}",
        reply.text()
    );
    assert!(upstream.requests().is_empty());
    shutdown(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_or_malformed_traceparent_starts_a_new_trace() {
    let (gateway, upstream) = one_upstream();
    let gw = addr(&gateway);
    let valid = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let mut c = Http1::connect(gw).await.unwrap();
    for bad in [
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",
        "zz-garbage",
    ] {
        let r = c
            .send(
                Method::GET,
                "/t",
                &[("traceparent", bad), ("tracestate", "forged=1")],
                "",
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    c.get("/t", &[("traceparent", valid)]).await.unwrap();
    let seen = upstream.requests();
    for r in &seen[..3] {
        let tp = r.header_values("traceparent");
        assert_eq!(tp.len(), 1);
        assert_ne!(tp[0], valid);
        assert!(tp[0].starts_with("00-") && tp[0].len() == 55, "{tp:?}");
        assert!(r.header_values("tracestate").is_empty());
    }
    assert_eq!(seen[3].header_values("traceparent"), [valid]);
    shutdown(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_framing_is_always_the_gateways_own() {
    let (gateway, upstream) = one_upstream();
    let gw = addr(&gateway);
    let mut c = Http1::connect(gw).await.unwrap();
    let r = c.send(Method::POST, "/len", &[], "hello").await.unwrap();
    assert_eq!(r.status, 200);
    let r = c.send(Method::POST, "/empty", &[], "").await.unwrap();
    assert_eq!(r.status, 200);
    let mut h2 = Http2::connect(gw).await.unwrap();
    assert_eq!(h2.get("/h2", &[]).await.unwrap().status, 200);
    for r in upstream.requests() {
        let lengths = r.header_values("content-length");
        let codings = r.header_values("transfer-encoding");
        assert!(lengths.len() <= 1 && codings.is_empty(), "{r:?}");
        if r.target == "/len" {
            assert_eq!(lengths, ["5"]);
            assert_eq!(r.body, b"hello");
        }
    }
    shutdown(gateway).await;
}

/// A canary that fails every request, with a breaker whose fallback is stable.
const FAILING_CANARY: &str = r#"
listeners:
  - bind: 127.0.0.1:0
services:
  - name: pay
    match: { path_prefix: / }
    versions:
      stable: { endpoints: ["{stable}"] }
      canary: { endpoints: ["{canary}"] }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      steps: [{ weight: 100 }]
traffic_control:
  circuit_breakers:
    - service: pay
      version: canary
      failure_rate_threshold: 0.99
      minimum_calls: 1000
      fallback: stable
{extra}
"#;

fn failing_canary(canary: &str, extra: &str) -> (graylane_proxy::Gateway, RecordingUpstream) {
    let stable = RecordingUpstream::start();
    let yaml = fill(
        FAILING_CANARY,
        &[
            ("stable", stable.addr.to_string()),
            ("canary", canary.to_string()),
            ("extra", extra.to_string()),
        ],
    );
    (start_gateway(config(&yaml)), stable)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_never_replays_a_request_the_failing_version_received_unless_it_is_safe() {
    let canary = Upstream::start("canary");
    canary.set_status(503);
    let (gateway, stable) = failing_canary(&canary.addr.to_string(), "");
    let gw = addr(&gateway);
    let mut c = Http1::connect(gw).await.unwrap();
    for method in [Method::POST, Method::PATCH] {
        let r = c
            .send(method.clone(), "/charge", &[], "{\"amount\":100}")
            .await
            .unwrap();
        assert_eq!(
            r.status, 503,
            "{method}: the canary's answer, not a second charge"
        );
        assert_eq!(r.version(), Some("canary"));
        assert!(r.headers.get("x-graylane-fallback").is_none());
    }
    assert!(
        stable.requests().is_empty(),
        "a non-idempotent request the canary received was replayed on stable: {:?}",
        stable.requests()
    );
    for method in [Method::GET, Method::PUT, Method::DELETE] {
        let r = c.send(method.clone(), "/item", &[], "").await.unwrap();
        assert_eq!(r.status, 200, "{method}: idempotent, so it falls back");
        assert_eq!(r.version(), Some("stable"));
    }
    assert_eq!(canary.received(), 5);
    shutdown(gateway).await;

    // A canary that refuses the connection never received the POST: falling back is safe.
    let (gateway, stable) = failing_canary(&closed_port().to_string(), "");
    let r = Http1::connect(addr(&gateway))
        .await
        .unwrap()
        .send(Method::POST, "/charge", &[], "{}")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.version(), Some("stable"));
    assert_eq!(stable.requests().len(), 1);
    shutdown(gateway).await;

    // An operator whose upstreams deduplicate may allow it.
    let (gateway, stable) = failing_canary(
        &canary.addr.to_string(),
        "      fallback_non_idempotent: true",
    );
    let r = Http1::connect(addr(&gateway))
        .await
        .unwrap()
        .send(Method::POST, "/charge", &[], "{}")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.version(), Some("stable"));
    assert_eq!(stable.requests().len(), 1);
    shutdown(gateway).await;
}

const SLOW_BODY: &str = r#"
listeners:
  - bind: 127.0.0.1:0
services:
  - name: upload
    match: { path_prefix: / }
    timeouts: { request: 1s }
    versions:
      stable: { endpoints: ["{upstream}"] }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_mid_body_gets_408_and_the_version_is_not_blamed() {
    use tokio::io::AsyncWriteExt;
    let upstream = RecordingUpstream::start();
    let yaml = fill(SLOW_BODY, &[("upstream", upstream.addr.to_string())]);
    let gateway = start_gateway(config(&yaml));
    let gw = addr(&gateway);
    // 100 KiB of a 1 MiB body (past the 64 KiB read-ahead, so it is being streamed upstream),
    // then nothing.
    let mut stream = tokio::net::TcpStream::connect(gw).await.unwrap();
    stream
        .write_all(b"POST /up HTTP/1.1\r\nHost: gw\r\nContent-Length: 1048576\r\n\r\n")
        .await
        .unwrap();
    stream.write_all(&vec![b'x'; 100 * 1024]).await.unwrap();
    let reply = read_one_reply(&mut stream).await;
    assert_eq!(
        reply.as_deref().map(|r| &r[..12]),
        Some("HTTP/1.1 408"),
        "{reply:?}"
    );

    // Also when the client's connection breaks off mid-body.
    let mut stream = tokio::net::TcpStream::connect(gw).await.unwrap();
    stream
        .write_all(b"POST /up HTTP/1.1\r\nHost: gw\r\nContent-Length: 1048576\r\n\r\n")
        .await
        .unwrap();
    stream.write_all(&vec![b'x'; 100 * 1024]).await.unwrap();
    drop(stream);

    let text = eventually("the 408 and the broken-off body to be counted", || async {
        let text = gateway.metrics().encode();
        let counted = |code: &str| {
            metric_value(
                &text,
                &format!(
                    "graylane_requests_total{{service=\"upload\",version=\"stable\",code=\"{code}\"}}"
                ),
            )
        };
        (counted("408") == Some(1.0) && counted("400") == Some(1.0)).then_some(text)
    })
    .await;
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("graylane_upstream_errors_total{")
                && l.contains("service=\"upload\"")
                && !l.ends_with(" 0")),
        "a slow client was counted as the upstream's error:\n{text}"
    );
    shutdown(gateway).await;
}

/// Reads until one response head has arrived (or the server closed); the head as text.
async fn read_one_reply(stream: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = std::time::Instant::now() + REQUEST_TIMEOUT;
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let left = deadline.checked_duration_since(std::time::Instant::now())?;
        match tokio::time::timeout(left, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    (!buf.is_empty()).then(|| String::from_utf8_lossy(&buf).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_answers_before_reading_a_large_body_is_heard_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream that refuses large uploads as soon as it has the head, and never reads on.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).await.unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\n\r\ntoo big!",
                    )
                    .await;
                tokio::time::sleep(std::time::Duration::from_secs(30)).await;
            });
        }
    });
    let yaml = fill(SLOW_BODY, &[("upstream", upstream.to_string())])
        .replace("request: 1s", "request: 20s");
    let gateway = start_gateway(config(&yaml));
    let gw = addr(&gateway);
    let stream = tokio::net::TcpStream::connect(gw).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let size = 64 * 1024 * 1024;
    let sender = tokio::spawn(async move {
        let head = format!("POST /up HTTP/1.1\r\nHost: gw\r\nContent-Length: {size}\r\n\r\n");
        let _ = writer.write_all(head.as_bytes()).await;
        let block = vec![b'x'; 1024 * 1024];
        for _ in 0..64 {
            if writer.write_all(&block).await.is_err() {
                break;
            }
        }
        writer
    });
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(REQUEST_TIMEOUT, reader.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            other => panic!("no answer: {other:?}"),
        }
    }
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "answered only after {:?}",
        started.elapsed()
    );
    sender.abort();
    shutdown(gateway).await;
}

const KEYED_STATE: &str = r#"
listeners:
  - bind: 127.0.0.1:0
services:
{before}
  - name: pay
    match: { path_prefix: /pay }
    versions:
      stable: { endpoints: ["{stable}"] }
      canary: { endpoints: ["{canary}"] }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      steps: [{ weight: 100 }]
traffic_control:
  rate_limits:
{limit_before}
    - { service: pay, path_prefix: /pay/limited, rate: 1/m, burst: 1 }
  circuit_breakers:
    - service: pay
      version: canary
      window: { kind: count, size: 4 }
      minimum_calls: 2
      failure_rate_threshold: 0.5
      open_for: 60s
      fallback: { status: 503, body: "{page}" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_and_limiter_state_survive_a_reload_that_moves_or_edits_around_them() {
    let stable = Upstream::start("stable");
    let canary = Upstream::start("canary");
    canary.set_status(500);
    let render = |before: &str, limit_before: &str, page: &str| {
        config(&fill(
            KEYED_STATE,
            &[
                ("stable", stable.addr.to_string()),
                ("canary", canary.addr.to_string()),
                ("before", before.to_string()),
                ("limit_before", limit_before.to_string()),
                ("page", page.to_string()),
            ],
        ))
    };
    let gateway = start_gateway(render("", "", "down"));
    let gw = addr(&gateway);
    for _ in 0..4 {
        get(gw, "/pay/x", &[]).await;
    }
    assert_eq!(gateway.circuit_states("pay")["canary"], "open");
    assert_eq!(get(gw, "/pay/limited", &[]).await.status.as_u16(), 503);
    assert_eq!(get(gw, "/pay/limited", &[]).await.status.as_u16(), 429);
    let transitions = |text: &str| {
        metric_value(
            text,
            "graylane_circuit_transitions_total{service=\"pay\",version=\"canary\"}",
        )
    };
    let before = transitions(&gateway.metrics().encode());
    assert_eq!(before, Some(1.0));

    // A service inserted before `pay`, a limit before its limit, a new fallback page.
    gateway.apply(render(
        "  - name: other\n    match: { path_prefix: /other }\n    versions:\n      stable: { endpoints: [\"127.0.0.1:9\"] }",
        "    - { service: other, rate: 5/s }",
        "down for maintenance",
    ));
    assert_eq!(
        gateway.circuit_states("pay")["canary"],
        "open",
        "the reload reset the breaker"
    );
    let r = get(gw, "/pay/x", &[]).await;
    assert_eq!(r.body, "down for maintenance", "the new page is used");
    assert_eq!(
        get(gw, "/pay/limited", &[]).await.status.as_u16(),
        429,
        "the reload reset the rate limit"
    );
    assert_eq!(transitions(&gateway.metrics().encode()), before);
    shutdown(gateway).await;
}

const RETRIED_CANARY: &str = r#"
listeners:
  - bind: 127.0.0.1:0
services:
  - name: pay
    match: { path_prefix: / }
    versions:
      stable: { endpoints: ["{stable}"] }
      canary: { endpoints: ["{canary}"] }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      steps: [{ weight: 100 }]
traffic_control:
  retries:
    - { service: pay, attempts: 1, retry_on: [503], budget: 1.0, min_concurrent: 100 }
  circuit_breakers:
    - service: pay
      version: canary
      failure_rate_threshold: 0.99
      minimum_calls: 1000
      fallback: stable
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_count_what_clients_received_and_attempts_count_every_exchange() {
    let stable = Upstream::start("stable");
    let canary = Upstream::start("canary");
    canary.set_status(503);
    let yaml = fill(
        RETRIED_CANARY,
        &[
            ("stable", stable.addr.to_string()),
            ("canary", canary.addr.to_string()),
        ],
    );
    let gateway = start_gateway(config(&yaml));
    let gw = addr(&gateway);
    for _ in 0..5 {
        let r = get(gw, "/x", &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.version(), Some("stable"));
    }
    assert_eq!(
        canary.received(),
        10,
        "each request: one try and one retry on canary"
    );
    let text = gateway.metrics().encode();
    let value = |series: &str| metric_value(&text, series).unwrap_or(0.0);
    let s = |name: &str, version: &str, extra: &str| {
        value(&format!(
            "{name}{{service=\"pay\",version=\"{version}\"{extra}}}"
        ))
    };
    assert_eq!(
        s("graylane_requests_total", "stable", ",code=\"200\""),
        5.0,
        "{text}"
    );
    assert_eq!(
        s("graylane_requests_total", "canary", ",code=\"503\""),
        0.0,
        "clients never received the canary's 503: {text}"
    );
    assert_eq!(
        s(
            "graylane_upstream_attempts_total",
            "canary",
            ",code=\"503\""
        ),
        10.0
    );
    assert_eq!(
        s(
            "graylane_upstream_attempts_total",
            "stable",
            ",code=\"200\""
        ),
        5.0
    );
    assert_eq!(s("graylane_retries_total", "canary", ""), 5.0);
    assert_eq!(s("graylane_fallbacks_total", "canary", ""), 5.0);
    assert_eq!(
        s("graylane_retry_budget_exhausted_total", "canary", ""),
        0.0
    );
    assert!(text.contains("graylane_shed_total{"), "{text}");
    assert!(text.contains("graylane_outlier_ejections_total{"), "{text}");
    // The analysis judges the canary on what it did, not on what clients got in the end.
    let observed = gateway.metrics().observe("pay", "canary");
    assert_eq!(observed.codes.get(&503), Some(&10));
    shutdown(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_parameters_do_not_get_around_a_path_prefix_or_its_limit() {
    let p = paths_setup("");
    let gw = addr(&p.gateway);
    for path in [
        "/api;x/payment/orders",
        "/;/api/payment/orders",
        "/api/payment;v=1/orders",
    ] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n");
        let reply = raw_request(gw, request.as_bytes()).await.unwrap();
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
    }
    assert!(
        p.site.requests().is_empty(),
        "a ;parameter got around the payment prefix: {:?}",
        p.site.requests()
    );
    // The upstream still gets the parameters it may use.
    let targets: Vec<String> = p.payment.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(
        targets,
        [
            "/api;x/payment/orders",
            "/;/api/payment/orders",
            "/api/payment;v=1/orders"
        ]
    );
    assert_eq!(get(gw, "/api/payment/admin", &[]).await.status, 200);
    for path in ["/api;x/payment/admin", "/api/payment;/admin;jsessionid=1"] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n");
        let reply = raw_request(gw, request.as_bytes()).await.unwrap();
        assert_eq!(reply.status, 429, "{path} dodged the limit");
    }
    shutdown(p.gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_and_authorities_that_could_name_another_host_are_refused() {
    let (gateway, upstream) = one_upstream();
    let gw = addr(&gateway);
    for (what, request) in [
        (
            "userinfo in an absolute target",
            "GET http://internal.example:80@a/x HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
        (
            "credentials in an absolute target",
            "GET http://user:pw@a.example/x HTTP/1.1\r\nHost: a.example\r\n\r\n",
        ),
        (
            "another scheme",
            "GET ftp://a.example/x HTTP/1.1\r\nHost: a.example\r\n\r\n",
        ),
        (
            "two ports",
            "GET /x HTTP/1.1\r\nHost: a:1:internal.example\r\n\r\n",
        ),
        (
            "a list",
            "GET /x HTTP/1.1\r\nHost: a,internal.example\r\n\r\n",
        ),
        (
            "parameters",
            "GET /x HTTP/1.1\r\nHost: internal.example;x\r\n\r\n",
        ),
        (
            "an escape",
            "GET /x HTTP/1.1\r\nHost: internal%2eexample\r\n\r\n",
        ),
        (
            "a word for a port",
            "GET /x HTTP/1.1\r\nHost: internal.example:abc\r\n\r\n",
        ),
        (
            "a port too long",
            "GET /x HTTP/1.1\r\nHost: a.example:123456\r\n\r\n",
        ),
        ("a bad literal", "GET /x HTTP/1.1\r\nHost: [::1x]\r\n\r\n"),
    ] {
        let reply = raw_request(gw, request.as_bytes())
            .await
            .unwrap_or_else(|| panic!("{what}: no answer"));
        assert_eq!(reply.status, 400, "{what}: {}", reply.text());
    }
    assert!(upstream.requests().is_empty(), "{:?}", upstream.requests());
    for host in [
        "a.example:8080",
        "[::1]:80",
        "127.0.0.1",
        "my_host.internal",
    ] {
        let request = format!("GET /ok HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let reply = raw_request(gw, request.as_bytes()).await.unwrap();
        assert_eq!(reply.status, 200, "{host}: {}", reply.text());
    }
    shutdown(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graylane_and_forwarding_headers_are_the_gateways_in_both_directions() {
    // An upstream that tries to speak for graylane in its answer.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let record = std::sync::Arc::clone(&seen);
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            let record = std::sync::Arc::clone(&record);
            tokio::spawn(async move {
                let mut buf = [0u8; 16 * 1024];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                record
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&head));
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nX-Graylane-Fallback: forged\r\nX-Graylane-Anything: 1\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    let yaml = fill(SLOW_BODY, &[("upstream", upstream_addr.to_string())]);
    let gateway = start_gateway(config(&yaml));
    let gw = addr(&gateway);
    let reply = get(
        gw,
        "/x",
        &[
            ("x-graylane-version", "forged"),
            ("x-graylane-fallback", "forged"),
            ("x-graylane-anything", "1"),
            ("x-forwarded-host", "internal.example"),
            ("x-forwarded-port", "8443"),
            ("forwarded", "host=internal.example;for=6.6.6.6;proto=https"),
            ("x-real-ip", "6.6.6.6"),
            (
                "traceparent",
                "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra-fields",
            ),
            ("tracestate", &"a=".repeat(400)),
        ],
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(
        reply.headers.get("x-graylane-fallback").is_none()
            && reply.headers.get("x-graylane-anything").is_none(),
        "the upstream's x-graylane-* reached the client: {:?}",
        reply.headers
    );
    assert_eq!(reply.version(), Some("stable"));
    let text = seen.lock().unwrap().to_ascii_lowercase();
    for forged in [
        "forged",
        "x-graylane-anything",
        "internal.example",
        "8443",
        "6.6.6.6",
        "extra-fields",
        "tracestate",
    ] {
        assert!(
            !text.contains(forged),
            "{forged} reached the upstream:\n{text}"
        );
    }
    assert!(
        text.contains("traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n"),
        "a later version is passed on as version 00:\n{text}"
    );
    shutdown(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_override_to_post_is_not_replayed_on_the_fallback() {
    let canary = Upstream::start("canary");
    canary.set_status(503);
    let (gateway, stable) = failing_canary(&canary.addr.to_string(), "");
    let gw = addr(&gateway);
    for header in [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ] {
        let r = get(gw, "/charge", &[(header, "POST")]).await;
        assert_eq!(r.status, 503, "{header}: the canary's answer");
        assert_eq!(r.version(), Some("canary"));
    }
    assert!(stable.requests().is_empty(), "{:?}", stable.requests());
    let r = get(gw, "/charge", &[("x-http-method-override", "DELETE")]).await;
    assert_eq!(
        r.version(),
        Some("stable"),
        "an idempotent override may fall back"
    );
    shutdown(gateway).await;
}

const TRUSTED_KEY_LIMIT: &str = r#"
listeners:
  - bind: 127.0.0.1:0
    trusted_hops: ["{hops}"]
services:
  - name: pay
    match: { path_prefix: / }
    versions:
      stable: { endpoints: ["{upstream}"] }
traffic_control:
  rate_limits:
    - { service: pay, key: { key: "header:X-User-Id", trusted_only: true }, rate: 1/m, burst: 1 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_only_limit_key_from_an_untrusted_client_limits_its_address() {
    let upstream = RecordingUpstream::start();
    let statuses = |hops: &'static str| {
        let yaml = fill(
            TRUSTED_KEY_LIMIT,
            &[
                ("hops", hops.to_string()),
                ("upstream", upstream.addr.to_string()),
            ],
        );
        async move {
            let gateway = start_gateway(config(&yaml));
            let mut seen = Vec::new();
            for user in ["u-1", "u-2", "u-3"] {
                let r = get(addr(&gateway), "/pay", &[("x-user-id", user)]).await;
                seen.push(r.status.as_u16());
            }
            shutdown(gateway).await;
            seen
        }
    };
    assert_eq!(
        statuses("10.0.0.0/8").await,
        [200, 429, 429],
        "another user id from the same untrusted client is no fresh allowance"
    );
    assert_eq!(
        statuses("127.0.0.0/8").await,
        [200, 200, 200],
        "from a trusted hop the key counts: one allowance per user"
    );
}
