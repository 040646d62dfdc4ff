//! The admin listener against hostile or careless clients, through a real `graylane serve`:
//! slow and idle connections, the connection limit, a configuration nested to exhaust the
//! parsers, and what it documents and answers for paths and methods it does not serve.

mod common;

use std::time::{Duration, Instant};

use common::*;
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const VIEWER: &str = "viewer-secret";
const ADMIN: &str = "admin-secret";

const CONFIG: &str = r#"
listeners:
  - bind: 127.0.0.1:{port}
admin:
  bind: 127.0.0.1:{admin}
  tokens:
    - { name: vera, env: TEST_TOKEN_VIEWER, role: viewer }
    - { name: ada, env: TEST_TOKEN_ADMIN, role: admin }
{limits}
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
        - weight: 100
"#;

async fn serve(test: &str, limits: &str) -> Served {
    Served::start(
        test,
        CONFIG,
        &[("limits", limits.to_string())],
        &[("TEST_TOKEN_VIEWER", VIEWER), ("TEST_TOKEN_ADMIN", ADMIN)],
    )
    .await
}

/// Reads until the peer closes (Ok) or `limit` passes (Err); what was read is returned either way.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Result<Vec<u8>, Vec<u8>> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return Err(got),
            Ok(Ok(0) | Err(_)) => return Ok(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn a_slowloris_client_on_the_admin_port_is_closed_after_the_header_read_timeout() {
    let s = serve(
        "slowloris",
        "  header_read_timeout: 1s\n  idle_timeout: 30s\n",
    )
    .await;
    let mut slow = TcpStream::connect(s.admin).await.unwrap();
    let started = Instant::now();
    slow.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    // A header line every 200 ms: never idle, never done.
    let mut closed = false;
    for i in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if slow
            .write_all(format!("x-slow-{i}: 1\r\n").as_bytes())
            .await
            .is_err()
        {
            closed = true;
            break;
        }
        let mut probe = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(1), slow.read(&mut probe)).await
        {
            closed = true;
            break;
        }
    }
    let took = started.elapsed();
    assert!(closed, "the slow client was still connected after {took:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "closed after {took:?}, not about the 1s header read timeout"
    );
    // The admin API still answers everyone else.
    assert_eq!(get(s.admin, "/healthz", &[]).await.status, StatusCode::OK);
    s.stop().await;
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_read_timeout() {
    let s = serve("silent", "  header_read_timeout: 1s\n").await;
    let mut silent = TcpStream::connect(s.admin).await.unwrap();
    let started = Instant::now();
    let read = read_until_closed(&mut silent, Duration::from_secs(5)).await;
    assert!(read.is_ok(), "still open after 5s");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");
    s.stop().await;
}

#[tokio::test]
async fn a_request_whose_body_stops_midway_is_closed_after_the_idle_timeout() {
    let s = serve("idle", "  header_read_timeout: 5s\n  idle_timeout: 1s\n").await;
    let mut stalled = TcpStream::connect(s.admin).await.unwrap();
    // Headers done in time; the promised body never comes.
    stalled
        .write_all(
            format!(
                "PUT /api/v1/config?dry_run=true HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ADMIN}\r\ncontent-length: 100\r\n\r\nlist"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let started = Instant::now();
    let read = read_until_closed(&mut stalled, Duration::from_secs(5)).await;
    assert!(
        read.is_ok(),
        "a stalled request body kept its connection for 5s"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "closed after {took:?}, not about the 1s idle timeout"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_body_trickled_in_faster_than_the_idle_timeout_ends_at_the_request_timeout() {
    let s = serve(
        "trickle",
        "  header_read_timeout: 5s\n  idle_timeout: 2s\n  request_timeout: 1s\n",
    )
    .await;
    let stream = TcpStream::connect(s.admin).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    writer
        .write_all(
            format!(
                "PUT /api/v1/config?dry_run=true HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ADMIN}\r\ncontent-length: 1000\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // A byte every 300 ms: never idle for the 2 s idle timeout, never finished either.
    let trickle = tokio::spawn(async move {
        for _ in 0..40 {
            if writer.write_all(b"x").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(8), reader.read(&mut buf)).await
    {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    let took = started.elapsed();
    trickle.abort();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    assert!(
        took < Duration::from_secs(4),
        "the trickled request held its connection for {took:?}"
    );
    s.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_admin_limit_are_closed_while_the_limit_holds() {
    let s = serve(
        "limit",
        "  max_connections: 2\n  header_read_timeout: 30s\n",
    )
    .await;
    // Two connections hold the listener's two places: each has its connection task running
    // once it answered a request, and keeps it open with keep-alive.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(s.admin).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(REQUEST_TIMEOUT, c.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
        held.push(c);
    }
    for _ in 0..3 {
        let mut extra = TcpStream::connect(s.admin).await.unwrap();
        let _ = extra
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await;
        let read = read_until_closed(&mut extra, Duration::from_secs(5)).await;
        assert_eq!(
            read,
            Ok(Vec::new()),
            "a connection beyond the limit is closed without an answer"
        );
    }
    // A place freed is a place for the next client.
    drop(held.pop());
    eventually("a freed place to serve a new connection", || async {
        let r = try_get(s.admin, "/healthz", &[]).await.ok()?;
        (r.status == StatusCode::OK).then_some(())
    })
    .await;
    drop(held);
    s.stop().await;
}

#[tokio::test]
async fn admin_limits_out_of_range_are_refused_with_their_key() {
    let dir = temp_dir("admin-limits");
    let file = dir.join("graylane.yaml");
    std::fs::write(
        &file,
        "listeners: [{ bind: 127.0.0.1:8080 }]\n\
         admin:\n  bind: 127.0.0.1:9090\n  header_read_timeout: 0s\n  idle_timeout: soon\n  max_connections: 0\n",
    )
    .unwrap();
    let out = run(&["validate", file.to_str().unwrap()]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    let shown = file.display();
    for (line, key, says) in [
        (4, "admin.header_read_timeout", "must be more than 0"),
        (5, "admin.idle_timeout", "soon"),
        (6, "admin.max_connections", "must be at least 1"),
    ] {
        assert!(
            out.stderr
                .lines()
                .any(|l| l.starts_with(&format!("error: {shown}:{line}:"))
                    && l.contains(&format!(": {key}: "))
                    && l.contains(says)),
            "{key}: {}",
            out.stderr
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_deeply_nested_configuration_is_refused_by_the_api_at_once() {
    let s = serve("deep", "").await;
    let depth = 100_000;
    let deep = format!("listeners: {}{}\n", "[".repeat(depth), "]".repeat(depth));
    let started = Instant::now();
    let r = s.api(Method::PUT, "/api/v1/config", ADMIN, &deep).await;
    let took = started.elapsed();
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text());
    let errors = r.json()["errors"].clone();
    assert!(
        errors[0]
            .as_str()
            .is_some_and(|e| e.contains(":1:139: the document nests more than 128 levels deep")),
        "{errors}"
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
    // The dry run takes the same path.
    let r = s
        .api(Method::PUT, "/api/v1/config?dry_run=true", ADMIN, &deep)
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text());
    let r = s.api(Method::GET, "/api/v1/releases", VIEWER, "").await;
    assert_eq!(r.status, StatusCode::OK);
    s.stop().await;
}

const SECRETS: &str = r#"
listeners:
  - bind: 127.0.0.1:{port}
admin:
  bind: 127.0.0.1:{admin}
  tokens:
    - { name: ada, env: TEST_TOKEN_ADMIN, role: admin }
webhooks:
  - { url: "http://127.0.0.1:{dead}/hooks?token=hook-s3cret", timeout: 200ms, retries: 0 }
segments:
  beta: { source: redis, url: "redis://:{password}@127.0.0.1:{redis}", key: graylane:beta, refresh: 100ms, max_staleness: 300ms }
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
        - segment: { name: beta, key: "header:X-User-Id" }
      steps:
        - weight: 0
          pause: manual
        - weight: 100
"#;

#[tokio::test]
async fn metrics_and_logs_name_redis_segments_and_webhooks_without_their_secrets() {
    let password = "redis-s3cret-pw";
    let redis = RedisServer::start_with(Some(password));
    // Nothing listens on the webhook's port: its delivery fails and is logged.
    let dead = closed_port().port();
    let s = Served::start(
        "secrets",
        SECRETS,
        &[
            ("password", password.to_string()),
            ("redis", redis.port.to_string()),
            ("dead", dead.to_string()),
        ],
        &[("TEST_TOKEN_ADMIN", ADMIN)],
    )
    .await;
    let r = s
        .api(Method::POST, "/api/v1/releases/payment/promote", ADMIN, "")
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // Redis goes away: the segment goes stale, and the reconnection attempts are logged.
    drop(redis);
    let metrics = eventually("the segment to be reported stale", || async {
        let text = get(s.admin, "/metrics", &[]).await.text();
        (metric_value(&text, "graylane_segment_stale{segment=\"beta\"}") == Some(1.0))
            .then_some(text)
    })
    .await;
    assert!(!metrics.contains(password), "{metrics}");
    assert!(!metrics.contains("redis://"), "{metrics}");
    eventually("the failed webhook delivery to be logged", || async {
        s.process
            .logs()
            .contains("webhook delivery failed")
            .then_some(())
    })
    .await;
    let logs = s.process.logs();
    assert!(!logs.contains(password), "{logs}");
    assert!(!logs.contains("hook-s3cret"), "{logs}");
    assert!(logs.contains("/hooks?token=***"), "{logs}");
    s.stop().await;
}

const LEAKY: &str = r#"
listeners:
  - bind: 127.0.0.1:{port}
admin:
  bind: 127.0.0.1:{admin}
  tokens:
    - { name: vera, env: TEST_TOKEN_VIEWER, role: viewer }
    - { name: otto, env: TEST_TOKEN_OPERATOR, role: operator }
    - { name: ada, env: TEST_TOKEN_ADMIN, role: admin }
webhooks:
  - url: http://127.0.0.1:{dead}/hooks?token={hook}
    timeout: 200ms
    retries: 0
segments:
  beta: { source: redis, url: "redis://:S3cretPW@127.0.0.1:{redis}", key: graylane:beta, refresh: 100ms, max_staleness: 300ms }
  bare: { source: redis, url: "redis://tokenSECRET@127.0.0.1:{redis}", key: graylane:bare, refresh: 100ms, max_staleness: 300ms }
  query: { source: redis, url: "redis://127.0.0.1:{redis}/0?password=QSECRET", key: graylane:query, refresh: 100ms, max_staleness: 300ms }
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
        - segment: { name: beta, key: "header:X-User-Id" }
        - segment: { name: bare, key: "header:X-User-Id" }
        - segment: { name: query, key: "header:X-User-Id" }
      steps:
        - weight: 0
          pause: manual
        - weight: 100
"#;

const OPERATOR: &str = "operator-secret";
const LEAKED: [&str; 5] = ["S3cretPW", "tokenSECRET", "QSECRET", "HOOKSECRET", "ret1"];

fn assert_no_secret(what: &str, text: &str) {
    for secret in LEAKED {
        assert!(!text.contains(secret), "{what} shows `{secret}`: {text}");
    }
}

#[tokio::test]
async fn below_admin_the_configuration_its_revisions_and_diffs_show_urls_without_their_secrets() {
    let redis = RedisServer::start_with(Some("S3cretPW"));
    let s = Served::start(
        "leaky",
        LEAKY,
        &[
            ("redis", redis.port.to_string()),
            ("dead", closed_port().port().to_string()),
            ("hook", "HOOKSECRET".to_string()),
        ],
        &[
            ("TEST_TOKEN_VIEWER", VIEWER),
            ("TEST_TOKEN_OPERATOR", OPERATOR),
            ("TEST_TOKEN_ADMIN", ADMIN),
        ],
    )
    .await;
    // A second revision that changes the webhook's token.
    let text = std::fs::read_to_string(&s.file).unwrap();
    let r = s
        .api(
            Method::PUT,
            "/api/v1/config",
            ADMIN,
            &text.replace("HOOKSECRET", "HOOKSECRET2"),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    // The admin reads the exact text: they may write it anyway.
    let exact = s.api(Method::GET, "/api/v1/config", ADMIN, "").await.text();
    assert!(exact.contains("redis://:S3cretPW@127.0.0.1:"), "{exact}");
    let second = s
        .api(Method::GET, "/api/v1/config/revisions/2", ADMIN, "")
        .await
        .json();
    assert!(
        second["yaml"]
            .as_str()
            .unwrap()
            .contains("?token=HOOKSECRET2"),
        "{second}"
    );
    let diff = s
        .api(Method::GET, "/api/v1/config/diff?from=1&to=2", ADMIN, "")
        .await
        .json();
    assert!(
        diff["diff"].as_str().unwrap().contains("HOOKSECRET2"),
        "{diff}"
    );

    for token in [VIEWER, OPERATOR] {
        let r = s.api(Method::GET, "/api/v1/config", token, "").await;
        assert_eq!(r.status, StatusCode::OK);
        let shown = r.text();
        assert_no_secret("GET /api/v1/config", &shown);
        for redacted in [
            "redis://:***@127.0.0.1:",
            "redis://***@127.0.0.1:",
            "/0?password=***",
            "/hooks?token=***",
        ] {
            assert!(shown.contains(redacted), "{redacted}: {shown}");
        }
        // Everything else is the text itself.
        assert!(
            shown.contains("key: graylane:beta, refresh: 100ms"),
            "{shown}"
        );

        let r = s
            .api(Method::GET, "/api/v1/config/revisions/1", token, "")
            .await;
        assert_eq!(r.status, StatusCode::OK);
        let yaml = r.json()["yaml"].as_str().unwrap().to_string();
        assert_no_secret("GET /api/v1/config/revisions/1", &yaml);
        assert!(yaml.contains("redis://:***@127.0.0.1:"), "{yaml}");

        let r = s
            .api(Method::GET, "/api/v1/config/diff?from=1&to=2", token, "")
            .await;
        assert_eq!(r.status, StatusCode::OK);
        let diff = r.json()["diff"].as_str().unwrap().to_string();
        assert_no_secret("GET /api/v1/config/diff", &diff);
        assert!(diff.contains("-  - url: http://127.0.0.1:"), "{diff}");
        assert!(diff.contains("/hooks?token=***\n+"), "{diff}");
    }
    s.stop().await;
}

#[tokio::test]
async fn redis_secrets_in_any_url_form_reach_no_log_metric_or_error() {
    let redis = RedisServer::start_with(Some("S3cretPW"));
    let s = Served::start(
        "leaky-logs",
        LEAKY,
        &[
            ("redis", redis.port.to_string()),
            ("dead", closed_port().port().to_string()),
            ("hook", "HOOKSECRET".to_string()),
        ],
        &[("TEST_TOKEN_ADMIN", ADMIN)],
    )
    .await;
    // The segments whose URL carries no usable password are refused (NOAUTH) and go stale; the
    // log says so, naming their Redis.
    let metrics = eventually("the NOAUTH segments to be reported stale", || async {
        let text = get(s.admin, "/metrics", &[]).await.text();
        (metric_value(&text, "graylane_segment_stale{segment=\"bare\"}") == Some(1.0)
            && metric_value(&text, "graylane_segment_stale{segment=\"query\"}") == Some(1.0))
        .then_some(text)
    })
    .await;
    assert_no_secret("/metrics", &metrics);
    eventually("both stale segments to be logged", || async {
        let logs = s.process.logs();
        (logs.matches("segment: no successful read").count() >= 2).then_some(())
    })
    .await;
    let logs = s.process.logs();
    assert_no_secret("the logs", &logs);
    assert!(logs.contains("redis://***@127.0.0.1:"), "{logs}");
    assert!(logs.contains("/0?password=***"), "{logs}");

    // A password with an unencoded `/` is refused, by the API and by `graylane validate`,
    // naming the key and not the password.
    let text = std::fs::read_to_string(&s.file).unwrap();
    let unencoded = text.replace("redis://:S3cretPW@", "redis://:Sec/ret1@");
    let r = s
        .api(
            Method::PUT,
            "/api/v1/config?dry_run=true",
            ADMIN,
            &unencoded,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text());
    let errors = r.json()["errors"].to_string();
    assert_no_secret("the API's refusal", &errors);
    assert!(
        errors.contains("segments.beta.url: `redis://***@127.0.0.1:")
            && errors.contains("must be percent-encoded"),
        "{errors}"
    );
    let file = s.dir.join("unencoded.yaml");
    std::fs::write(&file, &unencoded).unwrap();
    let out = run(&["validate", file.to_str().unwrap()]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert_no_secret(
        "graylane validate",
        &format!("{}{}", out.stdout, out.stderr),
    );
    assert!(
        out.stderr.contains(&format!("{}:15:", file.display()))
            && out.stderr.contains("segments.beta.url"),
        "{}",
        out.stderr
    );

    assert_no_secret("the logs", &s.process.logs());
    s.stop().await;
}

/// The size of the largest resident set `pid` has had, in bytes.
fn peak_memory(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM in /proc/PID/status");
    kb * 1024
}

/// A 100,000-character anchor and 6,000 aliases to it: 119 KB standing for 600 MB.
fn alias_bomb() -> String {
    let mut text = format!("a: &s {}\nb:\n", "x".repeat(100_000));
    for _ in 0..6000 {
        text.push_str("  - *s\n");
    }
    text
}

#[tokio::test]
async fn an_alias_bomb_is_refused_at_once_and_in_little_memory_by_validate_and_the_api() {
    let bomb = alias_bomb();
    let says = ":13:5: with this alias, the document's aliases (`*name`) repeat more than 1 MiB";

    let dir = temp_dir("alias-bomb-cli");
    let file = dir.join("bomb.yaml");
    std::fs::write(&file, &bomb).unwrap();
    let started = Instant::now();
    let out = run(&["validate", file.to_str().unwrap()]);
    let took = started.elapsed();
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains(says), "{}", out.stderr);
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let _ = std::fs::remove_dir_all(&dir);

    let s = serve("alias-bomb", "").await;
    let before = peak_memory(s.process.pid());
    let started = Instant::now();
    let r = s
        .api(Method::PUT, "/api/v1/config?dry_run=true", ADMIN, &bomb)
        .await;
    let took = started.elapsed();
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text());
    assert!(
        r.json()["errors"][0].as_str().unwrap().contains(says),
        "{}",
        r.text()
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let grown = peak_memory(s.process.pid()).saturating_sub(before);
    assert!(grown < 64 << 20, "peak memory grew by {} MB", grown >> 20);

    // A body over 1 MiB is refused before it is read whole.
    let huge = format!("# {}\n", "x".repeat(1 << 20));
    let started = Instant::now();
    let r = s.api(Method::PUT, "/api/v1/config", ADMIN, &huge).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());
    assert_eq!(r.json()["code"], "too_large", "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap().contains("over 1 MiB"));
    assert!(started.elapsed() < Duration::from_secs(2));
    let r = s.api(Method::GET, "/api/v1/releases", VIEWER, "").await;
    assert_eq!(r.status, StatusCode::OK);
    s.stop().await;
}

/// `graylane eval` against the served gateway's file or, with `--admin`, its admin API.
fn eval_json(s: &Served, live: bool, user: &str) -> serde_json::Value {
    let admin = format!("http://{}", s.admin);
    let file = s.file.to_str().unwrap().to_string();
    let mut args = vec!["eval"];
    if live {
        args.extend(["--admin", admin.as_str()]);
    } else {
        args.extend(["--config", file.as_str()]);
    }
    let header = format!("X-User-Id: {user}");
    args.extend([
        "GET",
        "/api/payment/orders",
        "-H",
        header.as_str(),
        "--json",
    ]);
    let out = run_with_env(&args, &[("GRAYLANE_TOKEN", VIEWER)]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", out.stdout))
}

#[tokio::test]
async fn eval_with_admin_sees_the_live_weight_where_eval_with_config_sees_the_file() {
    let s = serve("eval-live", "").await;
    let user = "u-42";
    let before = eval_json(&s, true, user);
    assert_eq!(
        (&before["version"], &before["reason"]),
        (&"stable".into(), &"bucket".into()),
        "{before}"
    );
    let r = s
        .api(
            Method::POST,
            "/api/v1/releases/payment/weight",
            ADMIN,
            r#"{"weight": 100}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    let live = eval_json(&s, true, user);
    assert_eq!(live["service"], "payment", "{live}");
    assert_eq!(live["version"], "canary", "{live}");
    assert_eq!(live["weight_percent"], 100.0, "{live}");
    let file = eval_json(&s, false, user);
    assert_eq!(file["version"], "stable", "the file's first step: {file}");
    assert_eq!(file["weight_percent"], 0.0, "{file}");
    // And the request itself agrees with the live answer.
    let reply = get(s.proxy, "/api/payment/orders", &[("x-user-id", user)]).await;
    assert_eq!(reply.version(), Some("canary"));

    // The text form, and a request no service takes.
    let admin = format!("http://{}", s.admin);
    let out = run_with_env(
        &["eval", "--admin", &admin, "GET", "/nothing"],
        &[("GRAYLANE_TOKEN", VIEWER)],
    );
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.stdout.contains("no service matches GET /nothing"),
        "{out:?}"
    );
    s.stop().await;
}

#[tokio::test]
async fn the_eval_api_is_for_viewers_and_names_what_is_wrong_with_a_request() {
    let s = serve("eval-api", "").await;
    let r = s
        .api(
            Method::POST,
            "/api/v1/eval",
            VIEWER,
            r#"{"method": "GET", "target": "/api/payment", "headers": ["X-User-Id: u-1"], "ip": "203.0.113.7"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["version"], "stable");
    let r = s
        .api(
            Method::POST,
            "/api/v1/eval",
            "",
            r#"{"method": "GET", "target": "/"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    for (body, says) in [
        (r#"{"method": "GET"}"#, "missing field `target`"),
        (
            r#"{"method": "GET", "target": "api"}"#,
            "must start with `/`",
        ),
        (
            r#"{"method": "GET", "target": "/", "headers": ["no colon"]}"#,
            "must look like `Name: value`",
        ),
        (
            r#"{"method": "GET", "target": "/", "ip": "nope"}"#,
            "invalid IP address",
        ),
    ] {
        let r = s.api(Method::POST, "/api/v1/eval", VIEWER, body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text());
        let error = r.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(error.contains(says), "{body}: {error}");
    }
    s.stop().await;
}

#[tokio::test]
async fn the_openapi_document_passes_openapi_spec_validator() {
    let s = serve("openapi", "").await;
    let doc = get(s.admin, "/api/v1/openapi.json", &[]).await;
    assert_eq!(doc.status, StatusCode::OK);
    let file = s.dir.join("openapi.json");
    std::fs::write(&file, &doc.body).unwrap();
    let out = std::process::Command::new("openapi-spec-validator")
        .arg(&file)
        .output()
        .expect("openapi-spec-validator on PATH (scripts/deps installs it)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let doc = doc.json();
    for path in ["/metrics", "/healthz", "/readyz", "/api/v1/eval"] {
        assert!(doc["paths"][path].is_object(), "{path} is not documented");
    }
    // Every response says what it means.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for (status, response) in op["responses"].as_object().unwrap() {
                let description = response["description"].as_str().unwrap_or_default();
                assert!(
                    !description.trim().is_empty(),
                    "{method} {path} {status} has no description"
                );
            }
        }
    }
    s.stop().await;
}

#[tokio::test]
async fn a_wrong_method_on_an_api_path_gets_a_json_405() {
    let s = serve("405", "").await;
    for (method, path) in [
        (Method::DELETE, "/api/v1/releases"),
        (Method::GET, "/api/v1/releases/payment/promote"),
        (Method::PATCH, "/api/v1/config"),
    ] {
        let r = s.api(method.clone(), path, VIEWER, "").await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_eq!(
            r.headers[http::header::CONTENT_TYPE],
            "application/json",
            "{method} {path}"
        );
        let body = r.json();
        assert_eq!(body["code"], "method_not_allowed", "{body}");
        assert!(
            body["error"].as_str().unwrap().contains(path),
            "{method} {path}: {body}"
        );
        assert!(
            r.headers.contains_key(http::header::ALLOW),
            "{method} {path}"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn refusals_name_commands_as_the_cli_spells_them() {
    let s = serve("refusals", "").await;
    let r = s
        .api(
            Method::GET,
            "/api/v1/experiments/payment/results",
            VIEWER,
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    assert_eq!(
        r.json()["error"],
        "`payment` is a canary release, not an experiment"
    );
    let admin = format!("http://{}", s.admin);
    let out = run_with_env(
        &["resume", "payment", "--admin", &admin],
        &[("GRAYLANE_TOKEN", ADMIN)],
    );
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains(
            "`resume` makes no sense for a release that is progressing; \
             allowed now: promote, promote --full, pause, abort, set-weight"
        ),
        "{}",
        out.stderr
    );
    s.stop().await;
}
