//! WebSocket through a real gateway on loopback, with a real client library (tokio-tungstenite)
//! and an echo WebSocket server per version that greets each client with its version's name:
//! frames both ways, routing by the release's rules, the `101` stamped and counted, the open
//! tunnels in metrics, an upstream refusing or closing, the breaker fed by handshakes only, a
//! TLS listener, a drain; and the requests an attacker
//! dresses as upgrades (`Upgrade` without `Connection: upgrade`, `h2c`, a body, an upstream
//! switching protocols unasked).

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use graylane_proxy::Gateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, accept_hdr_async, connect_async};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;
/// The header lines of each handshake request an echo server received.
type Handshakes = Arc<Mutex<Vec<Vec<(String, String)>>>>;

/// Services: `chat` (stable and canary echo servers, a force rule on a header), `refusing`
/// (an upstream that answers every request `403`), `plain` (a recording upstream),
/// `switching` (an upstream that answers every request `101`), `limited` (a rate limit of
/// one handshake per user) and `dead` (nothing listening); the chat canary and `dead` have
/// circuit breakers that open after two failures.
const GATEWAY: &str = r#"
listeners:
  - bind: 127.0.0.1:0
services:
  - name: chat
    match: { path_prefix: /ws }
    versions:
      stable: { endpoints: ["{stable}"] }
      canary: { endpoints: ["{canary}"] }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      force:
        - header: { name: X-Release-Phase, equals: canary }
      steps:
        - weight: 0
          pause: manual
  - name: refusing
    match: { path_prefix: /refuse }
    versions:
      stable: { endpoints: ["{refuser}"] }
  - name: plain
    match: { path_prefix: /plain }
    versions:
      stable: { endpoints: ["{recorder}"] }
  - name: switching
    match: { path_prefix: /switch }
    versions:
      stable: { endpoints: ["{switcher}"] }
  - name: limited
    match: { path_prefix: /limited }
    versions:
      stable: { endpoints: ["{stable}"] }
  - name: dead
    match: { path_prefix: /dead }
    versions:
      stable: { endpoints: ["{dead}"] }
traffic_control:
  rate_limits:
    - { service: limited, key: "header:X-User-Id", rate: 1/m, burst: 1, headers: always }
  circuit_breakers:
    - service: chat
      version: canary
      window: { kind: count, size: 10 }
      minimum_calls: 2
      failure_rate_threshold: 0.5
      open_for: 30s
    - service: dead
      version: stable
      window: { kind: count, size: 10 }
      minimum_calls: 2
      failure_rate_threshold: 0.5
      open_for: 30s
"#;

/// An echo WebSocket server: greets each client with `hello from NAME`, echoes text and binary
/// frames, and drops the connection (no close frame) on the text `bye`. Its `101` carries
/// `x-echo-version: NAME`; the handshake requests it received are kept.
struct EchoServer {
    addr: SocketAddr,
    handshakes: Handshakes,
}

impl EchoServer {
    async fn start(name: &'static str) -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&handshakes);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(echo(stream, name, Arc::clone(&seen)));
            }
        });
        EchoServer { addr, handshakes }
    }

    fn handshakes(&self) -> Vec<Vec<(String, String)>> {
        self.handshakes.lock().unwrap().clone()
    }
}

// The handshake callback's error type is tungstenite's own response, large as it is.
#[allow(clippy::result_large_err)]
async fn echo(stream: TcpStream, name: &'static str, seen: Handshakes) {
    let record = |req: &Request, mut resp: Response| {
        let headers = req
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        seen.lock().unwrap().push(headers);
        resp.headers_mut()
            .insert("x-echo-version", name.parse().unwrap());
        Ok(resp)
    };
    let Ok(mut ws) = accept_hdr_async(stream, record).await else {
        return;
    };
    // Sent at once after the 101: it may reach the gateway in the same read as the head.
    if ws
        .send(Message::text(format!("hello from {name}")))
        .await
        .is_err()
    {
        return;
    }
    while let Some(Ok(msg)) = ws.next().await {
        let echoed = match msg {
            Message::Text(t) if t.as_str() == "bye" => return,
            Message::Text(_) | Message::Binary(_) => ws.send(msg).await,
            _ => Ok(()),
        };
        if echoed.is_err() {
            return;
        }
    }
}

/// A raw upstream answering every request (once its head has arrived) with `answer`, then
/// holding the connection open until the peer closes it.
async fn raw_upstream(answer: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                if stream.write_all(answer).await.is_err() {
                    return;
                }
                while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

struct Setup {
    gateway: Gateway,
    stable: EchoServer,
    canary: EchoServer,
    recorder: RecordingUpstream,
}

async fn setup_with(drain_timeout: Duration) -> Setup {
    let stable = EchoServer::start("stable").await;
    let canary = EchoServer::start("canary").await;
    let refuser = raw_upstream(
        b"HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: 9\r\n\r\nforbidden",
    )
    .await;
    let switcher = raw_upstream(
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\nconnection: upgrade\r\n\r\n",
    )
    .await;
    let recorder = RecordingUpstream::start();
    let yaml = fill(
        GATEWAY,
        &[
            ("stable", stable.addr.to_string()),
            ("canary", canary.addr.to_string()),
            ("refuser", refuser.to_string()),
            ("switcher", switcher.to_string()),
            ("recorder", recorder.addr.to_string()),
            ("dead", closed_port().to_string()),
        ],
    );
    Setup {
        gateway: start_gateway_with(config(&yaml), drain_timeout),
        stable,
        canary,
        recorder,
    }
}

async fn setup() -> Setup {
    setup_with(Duration::from_secs(10)).await
}

/// Opens a WebSocket to `path` through the gateway with `headers`; the handshake's answer.
async fn open(
    gateway: SocketAddr,
    path: &str,
    headers: &[(&'static str, &'static str)],
) -> Result<
    (
        Client,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    WsError,
> {
    let mut request = format!("ws://{gateway}{path}").into_client_request()?;
    for (name, value) in headers {
        request
            .headers_mut()
            .insert(*name, value.parse().expect("a header value"));
    }
    tokio::time::timeout(REQUEST_TIMEOUT, connect_async(request))
        .await
        .expect("the handshake ends in time")
}

/// The next data frame, as text (binary frames prefixed `bin:`), within the request timeout.
async fn next_message<S>(ws: &mut WebSocketStream<S>) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let msg = tokio::time::timeout(REQUEST_TIMEOUT, ws.next())
            .await
            .expect("a message in time")
            .expect("the connection is open")
            .expect("a valid frame");
        match msg {
            Message::Text(t) => return t.to_string(),
            Message::Binary(b) => return format!("bin:{}", String::from_utf8_lossy(&b)),
            _ => continue,
        }
    }
}

/// Waits until the connection ends (a close frame, the end of the stream, or a reset).
async fn closed_by_the_other_side(ws: &mut Client) {
    loop {
        match tokio::time::timeout(REQUEST_TIMEOUT, ws.next())
            .await
            .expect("the connection ends in time")
        {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
            Some(Ok(_)) => continue,
        }
    }
}

fn upgraded_gauge(gateway: &Gateway, version: &str) -> f64 {
    let series = format!("graylane_upgraded_connections{{service=\"chat\",version=\"{version}\"}}");
    metric_value(&gateway.metrics().encode(), &series).unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_echoes_text_and_binary_frames_both_ways_through_the_gateway() {
    let s = setup().await;
    let gw = addr(&s.gateway);
    let (mut ws, handshake) = open(gw, "/ws/room?x=1", &[]).await.expect("upgraded");
    assert_eq!(handshake.status(), 101);
    assert_eq!(handshake.headers()["x-graylane-version"], "stable");
    assert_eq!(handshake.headers()["x-echo-version"], "stable");
    assert_eq!(next_message(&mut ws).await, "hello from stable");

    ws.send(Message::text("ping 1")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, "ping 1");
    ws.send(Message::binary(b"\x00\x01bytes".to_vec()))
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut ws).await,
        format!("bin:{}", String::from_utf8_lossy(b"\x00\x01bytes"))
    );
    // A frame larger than any one read, in both directions.
    let big = "x".repeat(300_000);
    ws.send(Message::text(big.clone())).await.unwrap();
    assert_eq!(next_message(&mut ws).await, big);
    ws.close(None).await.unwrap();

    let handshakes = s.stable.handshakes();
    assert_eq!(handshakes.len(), 1);
    let got = |name: &str| {
        handshakes[0]
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(got("connection"), ["upgrade"]);
    assert_eq!(got("upgrade"), ["websocket"]);
    assert_eq!(got("sec-websocket-version"), ["13"]);
    assert_eq!(got("sec-websocket-key").len(), 1);
    assert_eq!(got("x-graylane-lane"), ["stable"]);

    let metrics = s.gateway.metrics().encode();
    assert_eq!(
        metric_value(
            &metrics,
            "graylane_requests_total{service=\"chat\",version=\"stable\",code=\"101\"}"
        ),
        Some(1.0),
        "the handshake is counted as a request with status 101:\n{metrics}"
    );
    shutdown(s.gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_force_rule_sends_a_websocket_to_the_canary_and_the_rest_stay_on_stable() {
    let s = setup().await;
    let gw = addr(&s.gateway);
    let (mut ws, handshake) = open(gw, "/ws", &[("x-release-phase", "canary")])
        .await
        .expect("upgraded");
    assert_eq!(handshake.headers()["x-graylane-version"], "canary");
    assert_eq!(next_message(&mut ws).await, "hello from canary");
    ws.send(Message::text("to canary")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, "to canary");

    let (mut other, handshake) = open(gw, "/ws", &[("x-release-phase", "stable")])
        .await
        .expect("upgraded");
    assert_eq!(handshake.headers()["x-graylane-version"], "stable");
    assert_eq!(next_message(&mut other).await, "hello from stable");
    assert_eq!(s.canary.handshakes().len(), 1);
    assert_eq!(s.stable.handshakes().len(), 1);
    // Closed, so the shutdown has no tunnel to wait for.
    drop((ws, other));
    shutdown(s.gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_refusing_the_upgrade_is_passed_back_and_nothing_is_upgraded() {
    let s = setup().await;
    let gw = addr(&s.gateway);
    match open(gw, "/refuse", &[]).await {
        Err(WsError::Http(resp)) => {
            assert_eq!(resp.status(), 403);
            assert_eq!(resp.headers()["x-graylane-version"], "stable");
            assert_eq!(resp.body().as_deref(), Some(&b"forbidden"[..]));
        }
        Err(e) => panic!("expected the upstream's 403, got {e}"),
        Ok(_) => panic!("expected the upstream's 403, got an upgraded connection"),
    }
    let metrics = s.gateway.metrics().encode();
    assert_eq!(
        metric_value(
            &metrics,
            "graylane_requests_total{service=\"refusing\",version=\"stable\",code=\"403\"}"
        ),
        Some(1.0)
    );
    shutdown(s.gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_websockets_gauge_rises_while_open_and_falls_after_either_side_closes() {
    let s = setup().await;
    let gw = addr(&s.gateway);
    assert_eq!(upgraded_gauge(&s.gateway, "stable"), 0.0);
    let (mut first, _) = open(gw, "/ws", &[]).await.expect("upgraded");
    let (mut second, _) = open(gw, "/ws", &[]).await.expect("upgraded");
    assert_eq!(next_message(&mut first).await, "hello from stable");
    assert_eq!(next_message(&mut second).await, "hello from stable");
    assert_eq!(upgraded_gauge(&s.gateway, "stable"), 2.0);
    assert_eq!(upgraded_gauge(&s.gateway, "canary"), 0.0);

    // The client closes the first.
    first.close(None).await.unwrap();
    closed_by_the_other_side(&mut first).await;
    eventually("the gauge to fall to 1", || async {
        (upgraded_gauge(&s.gateway, "stable") == 1.0).then_some(())
    })
    .await;

    // The upstream drops the second: the client sees its connection end.
    second.send(Message::text("bye")).await.unwrap();
    closed_by_the_other_side(&mut second).await;
    eventually("the gauge to fall to 0", || async {
        (upgraded_gauge(&s.gateway, "stable") == 0.0).then_some(())
    })
    .await;
    let metrics = s.gateway.metrics().encode();
    assert_eq!(
        metric_value(
            &metrics,
            "graylane_upstream_attempts_total{service=\"chat\",version=\"stable\",code=\"502\"}"
        ),
        None,
        "a tunnel ending is not a failed request:\n{metrics}"
    );
    shutdown(s.gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_handshakes_open_the_breaker_but_tunnels_ending_abruptly_never_do() {
    let s = setup().await;
    let gw = addr(&s.gateway);
    // Four canary tunnels the upstream drops without a close frame.
    for _ in 0..4 {
        let (mut ws, _) = open(gw, "/ws", &[("x-release-phase", "canary")])
            .await
            .expect("upgraded");
        assert_eq!(next_message(&mut ws).await, "hello from canary");
        ws.send(Message::text("bye")).await.unwrap();
        closed_by_the_other_side(&mut ws).await;
    }
    assert_eq!(s.gateway.circuit_states("chat")["canary"], "closed");
    let (ws, handshake) = open(gw, "/ws", &[("x-release-phase", "canary")])
        .await
        .expect("the canary still takes websockets");
    assert_eq!(handshake.headers()["x-graylane-version"], "canary");
    drop(ws);

    // Handshakes that fail are the version's failures.
    for _ in 0..2 {
        match open(gw, "/dead", &[]).await {
            Err(WsError::Http(resp)) => assert_eq!(resp.status(), 502),
            other => panic!("expected 502, got {:?}", other.map(|(_, r)| r.status())),
        }
    }
    assert_eq!(s.gateway.circuit_states("dead")["stable"], "open");
    match open(gw, "/dead", &[]).await {
        Err(WsError::Http(resp)) => {
            assert_eq!(resp.status(), 503);
            assert!(resp.headers().contains_key("retry-after"));
        }
        other => panic!("expected 503, got {:?}", other.map(|(_, r)| r.status())),
    }
    shutdown(s.gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_without_connection_upgrade_and_h2c_upgrades_go_upstream_as_plain_requests() {
    let s = setup().await;
    let gw = addr(&s.gateway);
    let reply = raw_request(
        gw,
        b"GET /plain/a HTTP/1.1\r\nHost: app\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .expect("a reply");
    assert_eq!(reply.status, 200, "{}", reply.text());
    let reply = raw_request(
        gw,
        b"GET /plain/b HTTP/1.1\r\nHost: app\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await
    .expect("a reply");
    assert_eq!(reply.status, 200, "{}", reply.text());
    let reply = raw_request(
        gw,
        b"GET /plain/c HTTP/1.1\r\nHost: app\r\nConnection: upgrade\r\nUpgrade: websocket, h2c\r\n\r\n",
    )
    .await
    .expect("a reply");
    assert_eq!(reply.status, 200, "{}", reply.text());

    let requests = s.recorder.requests();
    assert_eq!(requests.len(), 3, "{}", s.recorder.wire_text());
    for req in &requests {
        for name in ["upgrade", "http2-settings", "connection"] {
            assert!(
                req.header_values(name).is_empty(),
                "{} reached the upstream with {name}: {:?}",
                req.target,
                req.headers
            );
        }
    }
    shutdown(s.gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_switching_protocols_for_a_request_that_asked_no_upgrade_is_a_502() {
    let s = setup().await;
    let gw = addr(&s.gateway);
    for request in [
        &b"GET /switch HTTP/1.1\r\nHost: app\r\n\r\n"[..],
        b"GET /switch HTTP/1.1\r\nHost: app\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    ] {
        let reply = raw_request(gw, request).await.expect("a reply");
        assert_eq!(reply.status, 502, "{}", reply.text());
    }
    // Asked for a WebSocket, switched to h2c: refused too.
    let reply = raw_request(
        gw,
        b"GET /switch HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .expect("a reply");
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_eq!(reply.header("x-graylane-version"), Some("stable"));
    shutdown(s.gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_request_with_a_body_is_refused_before_any_upstream_sees_it() {
    let s = setup().await;
    let gw = addr(&s.gateway);
    for framing in [
        &b"Content-Length: 5\r\n\r\nhello"[..],
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ] {
        let mut request = b"GET /ws HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\n\
              Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            .to_vec();
        request.extend_from_slice(framing);
        let reply = raw_request(gw, &request).await.expect("a reply");
        assert_eq!(reply.status, 400, "{}", reply.text());
    }
    assert!(s.stable.handshakes().is_empty());
    shutdown(s.gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_websocket_handshake_gets_429() {
    let s = setup().await;
    let gw = addr(&s.gateway);
    let (mut ws, handshake) = open(gw, "/limited", &[("x-user-id", "u-1")])
        .await
        .expect("the first is allowed");
    assert_eq!(handshake.headers()["ratelimit-remaining"], "0");
    assert_eq!(next_message(&mut ws).await, "hello from stable");
    match open(gw, "/limited", &[("x-user-id", "u-1")]).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status(), 429),
        Err(e) => panic!("expected 429, got {e}"),
        Ok(_) => panic!("expected 429, got an upgraded connection"),
    }
    assert_eq!(s.stable.handshakes().len(), 1);
    drop(ws);
    shutdown(s.gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_over_a_tls_listener_echoes_like_one_over_plain_tcp() {
    let stable = EchoServer::start("stable").await;
    let dir = temp_file("websocket-tls");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, signing_key.serialize_pem()).unwrap();
    let yaml = format!(
        "listeners:
  - bind: 127.0.0.1:0
    tls: {{ cert: \"{}\", key: \"{}\" }}
services:
  - name: chat
    match: {{ path_prefix: /ws }}
    versions:
      stable: {{ endpoints: [\"{}\"] }}
",
        cert_file.display(),
        key_file.display(),
        stable.addr
    );
    let gateway = start_gateway(config(&yaml));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(addr(&gateway)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .expect("the TLS handshake");
    let (mut ws, handshake) = tokio::time::timeout(
        REQUEST_TIMEOUT,
        tokio_tungstenite::client_async("wss://localhost/ws", stream),
    )
    .await
    .expect("the handshake ends in time")
    .expect("upgraded");
    assert_eq!(handshake.headers()["x-graylane-version"], "stable");
    assert_eq!(next_message(&mut ws).await, "hello from stable");
    ws.send(Message::text("over tls")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, "over tls");
    drop(ws);
    shutdown(gateway).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_lets_open_websockets_carry_on_until_the_drain_timeout_then_closes_them() {
    let drain = Duration::from_secs(3);
    let s = setup_with(drain).await;
    let gw = addr(&s.gateway);
    let (mut finishing, _) = open(gw, "/ws", &[]).await.expect("upgraded");
    let (mut lingering, _) = open(gw, "/ws", &[]).await.expect("upgraded");
    assert_eq!(next_message(&mut finishing).await, "hello from stable");
    assert_eq!(next_message(&mut lingering).await, "hello from stable");

    let started = Instant::now();
    let gateway = s.gateway;
    let stopping = tokio::task::spawn_blocking(move || gateway.shutdown());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !stopping.is_finished(),
        "the drain waits for open websockets"
    );
    for ws in [&mut finishing, &mut lingering] {
        ws.send(Message::text("during the drain")).await.unwrap();
        assert_eq!(next_message(ws).await, "during the drain");
    }
    finishing.close(None).await.unwrap();
    closed_by_the_other_side(&mut finishing).await;

    // The other one holds the drain to its timeout, and is closed then.
    closed_by_the_other_side(&mut lingering).await;
    let took = started.elapsed();
    assert!(
        took >= drain - Duration::from_millis(200),
        "closed after {took:?}, before the drain timeout"
    );
    tokio::time::timeout(REQUEST_TIMEOUT, stopping)
        .await
        .expect("the shutdown ends after the drain timeout")
        .expect("shutdown does not panic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_to_a_version_behind_h2c_or_https_endpoints_is_501_and_reaches_no_upstream() {
    let h2c = RecordingUpstream::start();
    let yaml = format!(
        "listeners:
  - bind: 127.0.0.1:0
services:
  - name: chat
    match: {{ path_prefix: /ws }}
    versions:
      stable: {{ endpoints: [\"h2c://{}\"] }}
",
        h2c.addr
    );
    let gateway = start_gateway(config(&yaml));
    let reply = raw_request(
        addr(&gateway),
        b"GET /ws HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .expect("a reply");
    assert_eq!(reply.status, 501, "{}", reply.text());
    assert!(
        reply.text().contains("http:// endpoints only"),
        "{}",
        reply.text()
    );
    assert!(h2c.requests().is_empty(), "{}", h2c.wire_text());
    shutdown(gateway).await;
}
