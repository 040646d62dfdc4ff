//! gRPC through a real gateway on loopback, with real gRPC clients and servers (tonic and
//! tonic-health): a client speaking HTTP/2 with prior knowledge to a cleartext listener,
//! `h2c://` upstreams, unary and server-streaming calls routed by the release (a metadata
//! force rule sends a call to the canary), error statuses and their messages passed on in the
//! trailers, and each version's counts judged by `grpc-status` rather than HTTP 200.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use common::*;
use graylane_proxy::Gateway;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus as Reported;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::server::HealthReporter;

/// The `health` service: stable and canary on `h2c://`, all traffic to stable but what the
/// `x-canary: yes` metadata forces to the canary.
const GRPC_GATEWAY: &str = r#"
listeners: [{ bind: 127.0.0.1:0 }]
services:
  - name: health
    versions:
      stable: { endpoints: ["h2c://{stable}"] }
      canary: { endpoints: ["h2c://{canary}"] }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      force:
        - header: { name: x-canary, equals: "yes" }
      steps: [{ weight: 0 }]
"#;

/// A tonic-health server on a port of its own, reporting `status` for the server as a whole.
async fn health_upstream(status: ServingStatus) -> (SocketAddr, HealthReporter) {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter.set_service_status("", status).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (addr, reporter)
}

/// Metadata the status upstream obeys: answer with this `grpc-status` (default 0)...
const STATUS: &str = "x-test-grpc-status";
/// ...and this `grpc-message`...
const MESSAGE: &str = "x-test-grpc-message";
/// ...in the response head (a trailers-only response) when this is `head`, else in the
/// trailers after one empty message.
const IN: &str = "x-test-grpc-in";

/// A gRPC upstream written with hyper, answering every call with the status its metadata asks
/// for.
async fn status_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(
                    TokioIo::new(stream),
                    hyper::service::service_fn(answer_with_status),
                ),
            );
        }
    });
    addr
}

type StatusBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

async fn answer_with_status(req: Request<Incoming>) -> Result<Response<StatusBody>, Infallible> {
    let asked = |name: &str| req.headers().get(name).cloned();
    let status = asked(STATUS).unwrap_or(HeaderValue::from_static("0"));
    let message = asked(MESSAGE);
    let in_head = asked(IN).is_some_and(|v| v == "head");
    let _ = req.into_body().collect().await;
    let mut outcome = HeaderMap::new();
    outcome.insert("grpc-status", status);
    if let Some(message) = message {
        outcome.insert("grpc-message", message);
    }
    let mut resp = if in_head {
        let mut resp = Response::new(Full::new(Bytes::new()).boxed_unsync());
        resp.headers_mut().extend(outcome);
        resp
    } else {
        // One empty message (an all-default response), then the status in the trailers.
        Response::new(
            Full::new(Bytes::from_static(&[0, 0, 0, 0, 0]))
                .with_trailers(async move { Some(Ok(outcome)) })
                .boxed_unsync(),
        )
    };
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    Ok(resp)
}

async fn gateway_for(stable: SocketAddr, canary: SocketAddr) -> Gateway {
    let yaml = fill(
        GRPC_GATEWAY,
        &[
            ("stable", stable.to_string()),
            ("canary", canary.to_string()),
        ],
    );
    start_gateway(config(&yaml))
}

/// A gRPC client of the gateway: HTTP/2 with prior knowledge over clear text.
async fn client(gateway: &Gateway) -> HealthClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", addr(gateway)))
        .unwrap()
        .timeout(REQUEST_TIMEOUT)
        .connect()
        .await
        .expect("the client connects to the gateway");
    HealthClient::new(channel)
}

/// A health check request for the whole server, with `metadata`.
fn check(metadata: &[(&'static str, &'static str)]) -> tonic::Request<HealthCheckRequest> {
    let mut req = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    for (name, value) in metadata {
        req.metadata_mut().insert(*name, value.parse().unwrap());
    }
    req
}

fn served_by<T>(resp: &tonic::Response<T>) -> String {
    resp.metadata()
        .get("x-graylane-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_call_reaches_stable_and_a_metadata_force_rule_sends_it_to_the_canary() {
    let (stable, _s) = health_upstream(ServingStatus::Serving).await;
    let (canary, _c) = health_upstream(ServingStatus::NotServing).await;
    let gateway = gateway_for(stable, canary).await;
    let mut client = client(&gateway).await;

    let resp = client.check(check(&[])).await.expect("the call succeeds");
    assert_eq!(served_by(&resp), "stable");
    assert_eq!(resp.get_ref().status(), Reported::Serving);

    let resp = client
        .check(check(&[("x-canary", "yes")]))
        .await
        .expect("the forced call succeeds");
    assert_eq!(served_by(&resp), "canary");
    assert_eq!(resp.get_ref().status(), Reported::NotServing);
    shutdown(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_streaming_call_streams_each_message_as_the_upstream_sends_it() {
    let (stable, reporter) = health_upstream(ServingStatus::Serving).await;
    let (canary, _c) = health_upstream(ServingStatus::Serving).await;
    let gateway = gateway_for(stable, canary).await;
    let mut client = client(&gateway).await;

    let resp = client.watch(check(&[])).await.expect("the watch starts");
    assert_eq!(served_by(&resp), "stable");
    let mut stream = resp.into_inner();
    let first = stream.message().await.unwrap().expect("a first message");
    assert_eq!(first.status(), Reported::Serving);
    // The second message exists only once the status changes: it cannot have been buffered.
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    let second = stream.message().await.unwrap().expect("a second message");
    assert_eq!(second.status(), Reported::NotServing);

    // A stream the client cancels is the client's doing, not the version's error.
    drop(stream);
    let observed = eventually("the cancelled watch to be counted", || {
        let observed = gateway.metrics().observe("health", "stable");
        async move { (observed.codes.values().sum::<u64>() == 1).then_some(observed) }
    })
    .await;
    assert_eq!(observed.codes.get(&200), Some(&1), "{:?}", observed.codes);
    shutdown(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_status_and_its_message_reach_the_client_in_the_trailers_or_the_head() {
    let stable = status_upstream().await;
    let gateway = gateway_for(stable, stable).await;
    let mut client = client(&gateway).await;

    for place in ["trailers", "head"] {
        let err = client
            .check(check(&[
                (STATUS, "14"),
                (MESSAGE, "down%20for%20maintenance"),
                (IN, place),
            ]))
            .await
            .expect_err("the call fails as the upstream said");
        assert_eq!(err.code(), Code::Unavailable, "in the {place}: {err:?}");
        assert_eq!(err.message(), "down for maintenance", "in the {place}");
    }

    let ok = client
        .check(check(&[(STATUS, "0")]))
        .await
        .expect("a status 0 in the trailers is a success");
    assert_eq!(served_by(&ok), "stable");
    shutdown(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_counts_as_an_error_of_the_version_while_ok_and_not_found_do_not() {
    let stable = status_upstream().await;
    let gateway = gateway_for(stable, stable).await;
    let mut client = client(&gateway).await;

    for _ in 0..3 {
        client.check(check(&[(STATUS, "0")])).await.expect("OK");
    }
    let not_found = client.check(check(&[(STATUS, "5")])).await.unwrap_err();
    assert_eq!(not_found.code(), Code::NotFound);
    for place in ["trailers", "head"] {
        let err = client
            .check(check(&[(STATUS, "14"), (IN, place)]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
    }

    let observed = eventually("six calls counted", || {
        let observed = gateway.metrics().observe("health", "stable");
        async move { (observed.codes.values().sum::<u64>() == 6).then_some(observed) }
    })
    .await;
    assert_eq!(observed.codes.get(&200), Some(&4), "{:?}", observed.codes);
    assert_eq!(observed.codes.get(&503), Some(&2), "{:?}", observed.codes);
    shutdown(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_in_the_trailers_opens_the_versions_circuit_breaker() {
    let stable = status_upstream().await;
    let yaml = fill(
        GRPC_GATEWAY,
        &[
            ("stable", stable.to_string()),
            ("canary", stable.to_string()),
        ],
    ) + "traffic_control:
  circuit_breakers:
    - service: health
      version: stable
      window: { kind: count, size: 10 }
      minimum_calls: 4
      failure_rate_threshold: 0.5
      open_for: 30s
";
    let gateway = start_gateway(config(&yaml));
    let mut client = client(&gateway).await;
    for _ in 0..4 {
        let err = client
            .check(check(&[(STATUS, "14")]))
            .await
            .expect_err("the upstream says UNAVAILABLE");
        assert_eq!(err.code(), Code::Unavailable);
    }
    eventually("the breaker to open on the calls' trailers", || {
        let open = gateway.circuit_states("health").get("stable") == Some(&"open");
        async move { open.then_some(()) }
    })
    .await;
    shutdown(gateway).await;
}
