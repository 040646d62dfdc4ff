//! Service discovery by DNS, against a real DNS server on loopback that the test controls
//! (`graylane_testing::dns`): every address of a name gets traffic, a change of records moves
//! the traffic within the TTL, a failing server keeps the last addresses serving and is counted,
//! a name that never resolved answers 503 until it does, and a reload keeps the addresses.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::*;
use graylane_testing::dns::{DnsServer, Mode};
use http::StatusCode;

const NAME: &str = "api.graylane.test";

/// Three upstreams on loopback aliases (127.0.0.2, .3, .4) sharing one port, as the
/// addresses of one name do.
fn upstreams() -> (u16, [Upstream; 3]) {
    for _ in 0..20 {
        let first = Upstream::start_on("127.0.0.2:0".parse().unwrap(), "a");
        let port = first.addr.port();
        let bind = |ip: &str| std::net::TcpListener::bind((ip.parse::<IpAddr>().unwrap(), port));
        if let (Ok(b), Ok(c)) = (bind("127.0.0.3"), bind("127.0.0.4")) {
            return (
                port,
                [first, Upstream::serve(b, "b"), Upstream::serve(c, "c")],
            );
        }
    }
    panic!("no port free on 127.0.0.2, 127.0.0.3 and 127.0.0.4 at once");
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn yaml(dns: SocketAddr, port: u16, extra: &str) -> String {
    format!(
        "listeners:
  - bind: 127.0.0.1:0
dns:
  servers: [\"{dns}\"]
  timeout: 300ms
services:
  - name: api
    versions:
      stable:
        endpoints: [\"{NAME}:{port}\"]
{extra}"
    )
}

/// The upstreams that answered `n` requests.
async fn served_by(gateway: SocketAddr, n: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        let r = get(gateway, "/", &[]).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        seen.insert(r.upstream_version());
    }
    seen
}

fn lookup_errors(gateway: &graylane_proxy::Gateway) -> f64 {
    metric_value(
        &gateway.metrics().encode(),
        &format!(
            "graylane_dns_lookup_errors_total{{service=\"api\",version=\"stable\",name=\"{NAME}\"}}"
        ),
    )
    .unwrap_or(0.0)
}

fn set(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(ToString::to_string).collect()
}

#[tokio::test]
async fn every_address_of_a_name_gets_traffic_and_new_records_move_it_within_the_ttl() {
    let (port, _upstreams) = upstreams();
    let dns = DnsServer::start();
    dns.set(NAME, &ips(&["127.0.0.2", "127.0.0.3"]), 1);
    let gateway = start_gateway(config(&yaml(dns.addr, port, "")));
    let a = addr(&gateway);

    assert_eq!(
        served_by(a, 10).await,
        set(&["a", "b"]),
        "round robin over both addresses"
    );

    dns.set(NAME, &ips(&["127.0.0.4"]), 1);
    // A TTL of 1 s: the name is asked again within a second, and the next snapshot has it.
    let moved = graylane_testing::wait::time_until(Duration::from_secs(5), || {
        gateway.snapshot().services[0].versions[0]
            .endpoints
            .iter()
            .map(|e| e.addr)
            .eq([SocketAddr::new("127.0.0.4".parse().unwrap(), port)])
    })
    .await;
    assert!(moved.is_some(), "the new record is used within TTL + 4 s");
    assert_eq!(served_by(a, 10).await, set(&["c"]));
    shutdown(gateway).await;
}

#[tokio::test]
async fn requests_in_flight_while_the_records_change_all_succeed() {
    let (port, _upstreams) = upstreams();
    let dns = DnsServer::start();
    dns.set(NAME, &ips(&["127.0.0.2"]), 1);
    let gateway = start_gateway(config(&yaml(dns.addr, port, "")));
    let a = addr(&gateway);
    let load = tokio::spawn(async move {
        let mut seen = BTreeSet::new();
        for _ in 0..150 {
            let r = get(a, "/", &[(DELAY_HEADER, "10")]).await;
            assert_eq!(
                r.status,
                StatusCode::OK,
                "no request fails during the change"
            );
            seen.insert(r.upstream_version());
        }
        seen
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    dns.set(NAME, &ips(&["127.0.0.3"]), 1);
    let seen = load.await.expect("the load finishes");
    assert_eq!(seen, set(&["a", "b"]), "served by the old, then the new");
    shutdown(gateway).await;
}

#[tokio::test]
async fn a_failing_or_silent_server_keeps_the_last_addresses_and_counts_the_errors() {
    let (port, _upstreams) = upstreams();
    let dns = DnsServer::start();
    dns.set(NAME, &ips(&["127.0.0.2", "127.0.0.3"]), 1);
    let gateway = start_gateway(config(&yaml(dns.addr, port, "")));
    let a = addr(&gateway);
    assert_eq!(lookup_errors(&gateway), 0.0);

    dns.set_mode(Mode::ServFail);
    eventually("a SERVFAIL to be counted", || async {
        (lookup_errors(&gateway) >= 1.0).then_some(())
    })
    .await;
    assert_eq!(served_by(a, 10).await, set(&["a", "b"]));

    dns.set_mode(Mode::Silent);
    let before = lookup_errors(&gateway);
    eventually("a lookup without an answer to be counted", || async {
        (lookup_errors(&gateway) > before).then_some(())
    })
    .await;
    assert_eq!(served_by(a, 10).await, set(&["a", "b"]));

    // NXDOMAIN after a success keeps them too.
    dns.set_mode(Mode::Answer);
    dns.set(NAME, &[], 1);
    let before = lookup_errors(&gateway);
    eventually("an NXDOMAIN to be counted", || async {
        (lookup_errors(&gateway) > before).then_some(())
    })
    .await;
    assert_eq!(served_by(a, 10).await, set(&["a", "b"]));
    let metrics = gateway.metrics().encode();
    assert_eq!(
        metric_value(
            &metrics,
            &format!("graylane_dns_addresses{{name=\"{NAME}\"}}")
        ),
        Some(2.0),
        "{metrics}"
    );
    shutdown(gateway).await;
}

#[tokio::test]
async fn a_name_that_never_resolved_answers_503_until_it_resolves() {
    let (port, _upstreams) = upstreams();
    let dns = DnsServer::start();
    let gateway = start_gateway(config(&yaml(dns.addr, port, "")));
    let a = addr(&gateway);

    let r = get(a, "/", &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json()["error"], "no endpoint of the version is healthy");
    assert!(
        lookup_errors(&gateway) >= 1.0,
        "the failed lookup is counted"
    );

    dns.set(NAME, &ips(&["127.0.0.3"]), 1);
    let served = eventually("the name to resolve and serve", || async {
        let r = get(a, "/", &[]).await;
        (r.status == StatusCode::OK).then_some(r)
    })
    .await;
    assert_eq!(served.upstream_version(), "b");
    shutdown(gateway).await;
}

#[tokio::test]
async fn a_reload_keeps_the_addresses_while_the_server_is_down_and_resolves_added_names_first() {
    let (port, _upstreams) = upstreams();
    let dns = DnsServer::start();
    dns.set(NAME, &ips(&["127.0.0.2"]), 1);
    dns.set("canary.graylane.test", &ips(&["127.0.0.4"]), 1);
    let gateway = start_gateway(config(&yaml(dns.addr, port, "")));
    let a = addr(&gateway);
    assert_eq!(served_by(a, 3).await, set(&["a"]));

    // The reload adds a version on another name: it is resolved before the swap, so its first
    // request is served.
    let canary = format!(
        "      canary:\n        endpoints: [\"canary.graylane.test:{port}\"]\n    release:\n      strategy: canary\n      baseline: stable\n      candidate: canary\n      force:\n        - header: {{ name: x-canary, equals: \"1\" }}\n      steps: [{{ weight: 0 }}]\n"
    );
    gateway.apply(config(&yaml(dns.addr, port, &canary)));
    let r = get(a, "/", &[("x-canary", "1")]).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.upstream_version(), "c");

    // With the server silent, a reload keeps the addresses it had: no window without endpoints.
    dns.set_mode(Mode::Silent);
    gateway.apply(config(&yaml(dns.addr, port, &canary)));
    assert_eq!(served_by(a, 5).await, set(&["a"]));
    assert_eq!(
        get(a, "/", &[("x-canary", "1")]).await.upstream_version(),
        "c"
    );
    shutdown(gateway).await;
}
