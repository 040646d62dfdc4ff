//! Listening sockets and draining: a listener address belongs to one gateway; a prepared gateway
//! queues connections until its routing is ready; a socket handed to another gateway keeps its
//! queued connections; a draining gateway answers requests sent on its open connections instead
//! of closing the connections under them.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use graylane_config::Weight;
use graylane_proxy::{Gateway, GatewayOptions, StartError};
use http::StatusCode;

/// One service on one upstream, `{name}` in the responses; listener on `{bind}`.
const ONE: &str = r#"
listeners:
  - bind: {bind}
services:
  - name: payment
    match: { path_prefix: /api/payment }
    versions:
      stable: { endpoints: ["{upstream}"] }
"#;

/// A canary release at weight 0 on two upstreams.
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
        - weight: 0
"#;

fn one(bind: &str, upstream: &Upstream) -> graylane_config::Config {
    config(&fill(
        ONE,
        &[
            ("bind", bind.to_string()),
            ("upstream", upstream.addr.to_string()),
        ],
    ))
}

fn options() -> GatewayOptions {
    GatewayOptions {
        workers: 2,
        drain_timeout: Duration::from_secs(10),
        ..GatewayOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_gateway_on_an_address_in_use_fails_with_address_in_use() {
    let upstream = Upstream::start("first");
    let first = start_gateway(one("127.0.0.1:0", &upstream));
    let taken = addr(&first);
    let second = Gateway::start(one(&taken.to_string(), &upstream), options());
    match second {
        Err(e @ StartError::Bind { .. }) => {
            let StartError::Bind { addr, source } = &e else {
                unreachable!()
            };
            assert_eq!(*addr, taken);
            assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse, "{e}");
            assert!(e.to_string().contains(&taken.to_string()), "{e}");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a second gateway listens on {taken}, which the first one serves"),
    }
    shutdown(first).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_gateway_queues_connections_until_it_accepts_and_routes_them_with_what_was_applied()
 {
    let (stable, canary) = (Upstream::start("stable"), Upstream::start("canary"));
    let config = config(&fill(
        RELEASE,
        &[
            ("stable", stable.addr.to_string()),
            ("canary", canary.addr.to_string()),
        ],
    ));
    let gateway = Gateway::prepare(config, options(), Vec::new()).expect("prepares");
    let proxy = addr(&gateway);
    let queued =
        tokio::spawn(
            async move { try_get(proxy, "/api/payment/x", &[("X-User-Id", "u-1")]).await },
        );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!queued.is_finished(), "answered before the gateway accepts");
    assert_eq!(stable.received() + canary.received(), 0);

    // The release state the process resumes, applied before the first request is routed.
    gateway.set_weight("payment", Weight::FULL).unwrap();
    gateway.start_accepting();
    let reply = queued
        .await
        .unwrap()
        .expect("the queued request is answered");
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.upstream_version(), "canary");
    shutdown(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handed_over_socket_keeps_its_queue_and_the_old_gateway_finishes_its_connections() {
    let (old_upstream, new_upstream) = (Upstream::start("old"), Upstream::start("new"));
    let old = start_gateway(one("127.0.0.1:0", &old_upstream));
    let proxy = addr(&old);
    let mut kept = Http1::connect(proxy).await.unwrap();
    assert_eq!(
        kept.get("/api/payment/a", &[])
            .await
            .unwrap()
            .upstream_version(),
        "old"
    );

    let new = Gateway::prepare(
        one(&proxy.to_string(), &new_upstream),
        options(),
        old.listening_sockets().unwrap(),
    )
    .expect("the new gateway takes the socket, no bind");
    old.hand_over();
    // Neither accepts now: the connection waits in the socket's queue.
    let queued = tokio::spawn(async move { try_get(proxy, "/api/payment/b", &[]).await });
    // A request on a connection the old gateway has is still its own, and its last there.
    let last = kept.get("/api/payment/c", &[]).await.unwrap();
    assert_eq!(last.status, StatusCode::OK);
    assert_eq!(last.upstream_version(), "old");
    assert_eq!(
        last.headers.get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );
    new.start_accepting();
    let reply = queued
        .await
        .unwrap()
        .expect("the queued connection is served");
    assert_eq!(reply.upstream_version(), "new");
    shutdown(old).await;
    assert_eq!(
        get(proxy, "/api/payment/d", &[]).await.upstream_version(),
        "new"
    );
    shutdown(new).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_gateway_answers_a_request_sent_on_an_idle_keep_alive_connection() {
    let upstream = Upstream::start("stable");
    let gateway = start_gateway(one("127.0.0.1:0", &upstream));
    let proxy: SocketAddr = addr(&gateway);
    let mut idle = Http1::connect(proxy).await.unwrap();
    assert_eq!(
        idle.get("/api/payment/a", &[]).await.unwrap().status,
        StatusCode::OK
    );

    let draining = tokio::task::spawn_blocking(move || gateway.shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The connection was idle when the drain began; the client could not know.
    let reply = idle
        .get("/api/payment/b", &[])
        .await
        .expect("answered, not closed under the request");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.headers.get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..]),
        "the last answer on the connection says so"
    );
    tokio::time::timeout(Duration::from_secs(10), draining)
        .await
        .expect("the drain ends once the connection is closed")
        .unwrap();
}
