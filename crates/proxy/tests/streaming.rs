//! Bodies pass through as they arrive: a server-sent event reaches the client before the
//! upstream has written the next one, and a client's streamed request body reaches the upstream
//! before the client has finished sending it. Nothing is held back to be forwarded whole.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::BodyExt;
use http_body_util::channel::Channel;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

const ONE_SERVICE: &str = r#"
listeners:
  - bind: 127.0.0.1:0
services:
  - name: events
    match: { path_prefix: / }
    versions:
      stable: { endpoints: ["{upstream}"] }
"#;

/// Reads from `stream` into `seen` until `needle` is in it, within the request timeout.
async fn read_until(stream: &mut TcpStream, seen: &mut Vec<u8>, needle: &str) {
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(seen).contains(needle) {
        let read = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{needle:?} did not arrive in time; got {:?}",
                    String::from_utf8_lossy(seen)
                )
            })
            .expect("the connection stays readable");
        assert!(
            read > 0,
            "the connection closed before {needle:?}; got {:?}",
            String::from_utf8_lossy(seen)
        );
        seen.extend_from_slice(&chunk[..read]);
    }
}

/// An upstream that answers one request with a server-sent event stream: the head and the
/// first event at once, the second event only when told to, then the end of the stream.
async fn event_stream_upstream() -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (send_second, second) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        read_until(&mut conn, &mut head, "\r\n\r\n").await;
        conn.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
              Transfer-Encoding: chunked\r\n\r\nd\r\ndata: first\n\n\r\n",
        )
        .await
        .unwrap();
        // The second event is written only once the client has shown it got the first.
        if second.await.is_ok() {
            let _ = conn.write_all(b"e\r\ndata: second\n\n\r\n0\r\n\r\n").await;
        }
    });
    (addr, send_second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_server_sent_event_reaches_an_http1_client_before_the_upstream_sends_the_second()
{
    let (upstream, send_second) = event_stream_upstream().await;
    let gateway = start_gateway(config(&fill(
        ONE_SERVICE,
        &[("upstream", upstream.to_string())],
    )));

    let mut client = TcpStream::connect(addr(&gateway)).await.unwrap();
    client
        .write_all(b"GET /events HTTP/1.1\r\nHost: gw\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    read_until(&mut client, &mut seen, "data: first").await;
    let text = String::from_utf8_lossy(&seen).to_string();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{text}"
    );
    assert!(!text.contains("data: second"), "{text}");

    send_second.send(()).unwrap();
    read_until(&mut client, &mut seen, "data: second").await;
    read_until(&mut client, &mut seen, "0\r\n\r\n").await;
    shutdown(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_server_sent_event_reaches_an_http2_client_before_the_upstream_sends_the_second()
{
    let (upstream, send_second) = event_stream_upstream().await;
    let gateway = start_gateway(config(&fill(
        ONE_SERVICE,
        &[("upstream", upstream.to_string())],
    )));

    let stream = TcpStream::connect(addr(&gateway)).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("an HTTP/2 (prior knowledge) connection to the gateway");
    tokio::spawn(connection);
    let request = http::Request::get("http://gw/events")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let response = tokio::time::timeout(REQUEST_TIMEOUT, sender.send_request(request))
        .await
        .expect("the response head arrives in time")
        .expect("the gateway answers");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();

    let first = tokio::time::timeout(REQUEST_TIMEOUT, body.frame())
        .await
        .expect("the first event arrives before the upstream sends the second")
        .expect("a frame")
        .expect("no error")
        .into_data()
        .expect("data");
    assert_eq!(first, "data: first\n\n");

    send_second.send(()).unwrap();
    let rest = tokio::time::timeout(REQUEST_TIMEOUT, body.collect())
        .await
        .expect("the rest arrives in time")
        .expect("the stream ends cleanly")
        .to_bytes();
    assert_eq!(rest, "data: second\n\n");
    shutdown(gateway).await;
}

/// An upstream that reports, through `received`, each piece of a request body as it arrives,
/// and answers once the body has ended.
async fn recording_body_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (received, pieces) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (conn, _) = listener.accept().await.unwrap();
        let service =
            hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let received = received.clone();
                async move {
                    let mut body = req.into_body();
                    let mut whole = Vec::new();
                    while let Some(frame) = body.frame().await {
                        if let Ok(data) = frame?.into_data() {
                            let _ = received.send(String::from_utf8_lossy(&data).to_string());
                            whole.extend_from_slice(&data);
                        }
                    }
                    Ok::<_, hyper::Error>(http::Response::new(http_body_util::Full::new(
                        Bytes::from(whole),
                    )))
                }
            });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(conn), service)
            .await;
    });
    (addr, pieces)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_request_body_reaches_the_upstream_before_the_client_has_sent_all_of_it() {
    let (upstream, mut pieces) = recording_body_upstream().await;
    let gateway = start_gateway(config(&fill(
        ONE_SERVICE,
        &[("upstream", upstream.to_string())],
    )));

    // An HTTP/2 client with a body of unknown length: a gRPC stream, an upload in pieces.
    let stream = TcpStream::connect(addr(&gateway)).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let (mut body_tx, body) = Channel::<Bytes, std::convert::Infallible>::new(4);
    let request = http::Request::post("http://gw/upload").body(body).unwrap();
    let response = tokio::spawn(async move { sender.send_request(request).await });

    body_tx
        .send_data(Bytes::from_static(b"part one;"))
        .await
        .unwrap();
    let first = tokio::time::timeout(REQUEST_TIMEOUT, pieces.recv())
        .await
        .expect("the first part reaches the upstream while the client is still sending")
        .expect("the upstream is running");
    assert_eq!(first, "part one;");

    body_tx
        .send_data(Bytes::from_static(b"part two"))
        .await
        .unwrap();
    drop(body_tx);
    let response = tokio::time::timeout(REQUEST_TIMEOUT, response)
        .await
        .expect("the response arrives in time")
        .unwrap()
        .expect("the gateway answers");
    assert_eq!(response.status(), 200);
    let echoed = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(echoed, "part one;part two");
    shutdown(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_http1_request_body_reaches_the_upstream_before_the_client_has_sent_all_of_it() {
    let (upstream, mut pieces) = recording_body_upstream().await;
    let gateway = start_gateway(config(&fill(
        ONE_SERVICE,
        &[("upstream", upstream.to_string())],
    )));

    let mut client = TcpStream::connect(addr(&gateway)).await.unwrap();
    client
        .write_all(
            b"POST /upload HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n9\r\npart one;\r\n",
        )
        .await
        .unwrap();
    let first = tokio::time::timeout(REQUEST_TIMEOUT, pieces.recv())
        .await
        .expect("the first chunk reaches the upstream while the client is still sending")
        .expect("the upstream is running");
    assert_eq!(first, "part one;");

    client
        .write_all(b"8\r\npart two\r\n0\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    read_until(&mut client, &mut seen, "part one;part two").await;
    assert!(
        String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    shutdown(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_of_known_length_still_goes_upstream_whole_with_its_length() {
    let upstream = RecordingUpstream::start();
    let gateway = start_gateway(config(&fill(
        ONE_SERVICE,
        &[("upstream", upstream.addr.to_string())],
    )));

    // Head and body in two writes, the body late: the gateway waits for a body whose length
    // it knows and that fits its read-ahead, and sends it with a Content-Length.
    let mut client = TcpStream::connect(addr(&gateway)).await.unwrap();
    client
        .write_all(b"POST /orders HTTP/1.1\r\nHost: gw\r\nContent-Length: 11\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    client.write_all(b"hello world").await.unwrap();
    let mut seen = Vec::new();
    read_until(&mut client, &mut seen, "\r\n\r\n").await;
    assert!(
        String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    let requests = upstream.requests();
    assert_eq!(requests.len(), 1, "{}", upstream.wire_text());
    assert_eq!(requests[0].header_values("content-length"), ["11"]);
    assert!(requests[0].header_values("transfer-encoding").is_empty());
    assert_eq!(requests[0].body, b"hello world");
    shutdown(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_sent_with_its_head_is_refused_before_any_upstream_sees_it() {
    let upstream = RecordingUpstream::start();
    let gateway = start_gateway(config(&fill(
        ONE_SERVICE,
        &[("upstream", upstream.addr.to_string())],
    )));

    // Reading only what has arrived must still read what arrived with the head.
    for body in [
        "5\r\nhello\r\nzz\r\nbad\r\n0\r\n\r\n",
        "5\r\nhelloXX0\r\n\r\n",
        "-1\r\nx\r\n0\r\n\r\n",
    ] {
        let request = format!(
            "POST /orders HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
        );
        let reply = raw_request(addr(&gateway), request.as_bytes())
            .await
            .expect("the gateway answers");
        assert_eq!(reply.status, 400, "{body:?}: {}", reply.text());
    }
    assert!(upstream.requests().is_empty(), "{}", upstream.wire_text());
    shutdown(gateway).await;
}
