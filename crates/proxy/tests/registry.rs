//! Versions that follow the service registry: their endpoints come and go as configuration
//! swaps. A version with no endpoint yet is answered as one whose endpoints are all down (its
//! fallback, else a counted `503`), with or without traffic control, and serves as soon as a
//! configuration with its instances is applied.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use common::*;
use graylane_config::{Config, RegistryInstance, resolve_registry};
use http::StatusCode;

/// An instance as the registry would report it.
struct Instance {
    address: SocketAddr,
    labels: BTreeMap<String, String>,
}

impl RegistryInstance for Instance {
    fn address(&self) -> SocketAddr {
        self.address
    }
    fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }
}

/// `config` with the `payment` registry holding `instances` (address, `version` label).
fn with_instances(config: &Config, instances: &[(SocketAddr, &str)]) -> Config {
    let registry = BTreeMap::from([(
        "payment".to_string(),
        instances
            .iter()
            .map(|(address, version)| Instance {
                address: *address,
                labels: BTreeMap::from([("version".to_string(), version.to_string())]),
            })
            .collect::<Vec<_>>(),
    )]);
    resolve_registry(config, &registry)
}

const REGISTRY_ONLY: &str = "listeners:
  - bind: 127.0.0.1:0
services:
  - name: payment
    match: { path_prefix: /pay }
    versions:
      stable: { endpoints: { registry: payment, labels: { version: stable } } }
{traffic}";

fn shed(gateway: &graylane_proxy::Gateway, version: &str) -> f64 {
    let metrics = gateway.metrics().encode();
    metric_value(
        &metrics,
        &format!(
            "graylane_shed_total{{service=\"payment\",version=\"{version}\",reason=\"no_healthy_endpoint\"}}"
        ),
    )
    .unwrap_or(0.0)
}

async fn instances_come_and_go_as_configuration_swaps(traffic: &str) {
    let instance = Upstream::start("stable");
    let unresolved = config(&fill(REGISTRY_ONLY, &[("traffic", traffic.to_string())]));
    let gateway = start_gateway(resolve_registry::<Instance>(&unresolved, &BTreeMap::new()));
    let a = addr(&gateway);

    for _ in 0..3 {
        let r = get(a, "/pay", &[]).await;
        assert_eq!(
            r.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.json()["error"], "no endpoint of the version is healthy");
        assert_eq!(r.version(), Some("stable"));
    }
    assert_eq!(
        shed(&gateway, "stable"),
        3.0,
        "each refused request is counted"
    );

    gateway.apply(with_instances(&unresolved, &[(instance.addr, "stable")]));
    let served = eventually("the registered instance to serve", || async {
        let r = get(a, "/pay", &[]).await;
        (r.status == StatusCode::OK).then_some(r)
    })
    .await;
    assert_eq!(served.upstream_version(), "stable");
    for _ in 0..10 {
        assert_eq!(get(a, "/pay", &[]).await.status, StatusCode::OK);
    }

    gateway.apply(with_instances(&unresolved, &[]));
    let r = get(a, "/pay", &[]).await;
    assert_eq!(
        r.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "the instance left: {}",
        String::from_utf8_lossy(&r.body)
    );
    shutdown(gateway).await;
}

#[tokio::test]
async fn a_version_without_instances_answers_503_until_its_instances_are_applied() {
    instances_come_and_go_as_configuration_swaps("").await;
}

#[tokio::test]
async fn a_version_without_instances_is_safe_under_retries_outlier_detection_and_health_checks() {
    instances_come_and_go_as_configuration_swaps(
        "traffic_control:
  retries:
    - { service: payment, attempts: 2 }
  outlier_detection:
    - { service: payment, consecutive_failures: 1, base_ejection: 10s, max_ejection_percent: 50 }
  health_checks:
    - { service: payment, path: /healthz, interval: 50ms, timeout: 200ms, healthy_threshold: 1, unhealthy_threshold: 1 }
",
    )
    .await;
}

#[tokio::test]
async fn a_canary_without_instances_falls_back_to_stable_until_it_registers() {
    let stable = Upstream::start("stable");
    let canary = Upstream::start("canary");
    let yaml = format!(
        "listeners:
  - bind: 127.0.0.1:0
services:
  - name: payment
    match: {{ path_prefix: /pay }}
    versions:
      stable: {{ endpoints: [\"{}\"] }}
      canary: {{ endpoints: {{ registry: payment, labels: {{ version: canary }} }} }}
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      steps: [{{ weight: 100, pause: manual }}]
traffic_control:
  circuit_breakers:
    - {{ service: payment, version: canary, fallback: stable }}
",
        stable.addr
    );
    let unresolved = config(&yaml);
    // A stable instance registered under the same service is not selected by the canary's label.
    let gateway = start_gateway(with_instances(&unresolved, &[(stable.addr, "stable")]));
    let a = addr(&gateway);

    for _ in 0..5 {
        let r = get(a, "/pay", &[]).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.upstream_version(), "stable");
        assert_eq!(r.headers["x-graylane-fallback"], "stable");
    }
    assert_eq!(shed(&gateway, "canary"), 5.0);

    gateway.apply(with_instances(
        &unresolved,
        &[(stable.addr, "stable"), (canary.addr, "canary")],
    ));
    let r = eventually("the canary instance to serve", || async {
        let r = get(a, "/pay", &[]).await;
        (r.upstream_version() == "canary").then_some(r)
    })
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.version(), Some("canary"));
    assert!(!r.headers.contains_key("x-graylane-fallback"));
    shutdown(gateway).await;
}
