//! Versions that follow the service registry (`endpoints: { registry: NAME, labels: {...} }`):
//! which registry services a configuration needs, and the configuration with those versions'
//! endpoints filled in from what is registered now. The registry itself (etcd) lives elsewhere;
//! this crate only sees instances through [`RegistryInstance`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use crate::model::Config;

/// One registered instance of a service, as [`resolve_registry`] reads it.
pub trait RegistryInstance {
    /// Where its requests go.
    fn address(&self) -> SocketAddr;
    /// Its labels, e.g. `version: canary`, `zone: a`.
    fn labels(&self) -> &BTreeMap<String, String>;
    /// Its weight, if it registered one; `Some(0)` keeps it registered but out of rotation
    /// (draining).
    fn weight(&self) -> Option<u32> {
        None
    }
}

/// The registry services the configuration's versions follow, each once, in order.
pub fn registry_services(config: &Config) -> Vec<&str> {
    let services: BTreeSet<&str> = config
        .services
        .iter()
        .flat_map(|s| &s.versions)
        .filter_map(|v| v.registry.as_ref().map(|r| r.service.as_str()))
        .collect();
    services.into_iter().collect()
}

/// `config` with the endpoints of every version that follows the registry set to the
/// addresses of the instances its selector matches in `registry` (service name → instances),
/// sorted and without duplicates, so the same registry always gives the same configuration.
/// A version whose service has no matching instance gets no endpoints: its requests are then
/// answered as when none of its endpoints is healthy. Other versions are left as they are.
pub fn resolve_registry<I: RegistryInstance>(
    config: &Config,
    registry: &BTreeMap<String, Vec<I>>,
) -> Config {
    let mut out = config.clone();
    for version in out.services.iter_mut().flat_map(|s| &mut s.versions) {
        let Some(selector) = &version.registry else {
            continue;
        };
        let addresses: BTreeSet<SocketAddr> = registry
            .get(&selector.service)
            .into_iter()
            .flatten()
            .filter(|i| i.weight() != Some(0) && selector.matches(i.labels()))
            .map(RegistryInstance::address)
            .collect();
        version.endpoints = addresses.into_iter().collect();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    struct Inst(SocketAddr, BTreeMap<String, String>, Option<u32>);

    impl RegistryInstance for Inst {
        fn address(&self) -> SocketAddr {
            self.0
        }
        fn labels(&self) -> &BTreeMap<String, String> {
            &self.1
        }
        fn weight(&self) -> Option<u32> {
            self.2
        }
    }

    fn inst(addr: &str, labels: &[(&str, &str)]) -> Inst {
        Inst(
            addr.parse().unwrap(),
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            None,
        )
    }

    const YAML: &str = "listeners: [{ bind: 127.0.0.1:8080 }]
services:
  - name: payment
    versions:
      stable: { endpoints: { registry: payment, labels: { version: stable } } }
      canary: { endpoints: { registry: payment, labels: { version: canary, zone: a } } }
      any: { endpoints: { registry: payment } }
      fixed: { endpoints: [127.0.0.1:9999] }
  - name: web
    match: { path_prefix: /web }
    versions:
      stable: { endpoints: { registry: web-app } }
";

    fn config() -> Config {
        crate::load_str(YAML, "t.yaml", Path::new(".")).unwrap()
    }

    fn endpoints(config: &Config, service: &str, version: &str) -> Vec<String> {
        let s = config.service(service).unwrap();
        s.versions[s.version_index(version).unwrap()]
            .endpoints
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn every_label_of_the_selector_must_equal_the_instances() {
        let registry = BTreeMap::from([(
            "payment".to_string(),
            vec![
                inst("127.0.0.1:9002", &[("version", "canary"), ("zone", "a")]),
                inst("127.0.0.1:9003", &[("version", "canary"), ("zone", "b")]),
                inst("127.0.0.1:9001", &[("version", "stable")]),
                inst("127.0.0.1:9004", &[("zone", "a")]),
            ],
        )]);
        let resolved = resolve_registry(&config(), &registry);
        assert_eq!(
            endpoints(&resolved, "payment", "stable"),
            ["127.0.0.1:9001"]
        );
        assert_eq!(
            endpoints(&resolved, "payment", "canary"),
            ["127.0.0.1:9002"]
        );
        assert_eq!(
            endpoints(&resolved, "payment", "any"),
            [
                "127.0.0.1:9001",
                "127.0.0.1:9002",
                "127.0.0.1:9003",
                "127.0.0.1:9004"
            ]
        );
    }

    #[test]
    fn the_same_registry_in_any_order_gives_the_same_sorted_endpoints_once_each() {
        let a = BTreeMap::from([(
            "payment".to_string(),
            vec![
                inst("127.0.0.1:9003", &[("version", "stable")]),
                inst("127.0.0.1:9001", &[("version", "stable")]),
                inst("127.0.0.1:9003", &[("version", "stable")]),
            ],
        )]);
        let b = BTreeMap::from([(
            "payment".to_string(),
            vec![
                inst("127.0.0.1:9001", &[("version", "stable")]),
                inst("127.0.0.1:9003", &[("version", "stable")]),
            ],
        )]);
        let (ra, rb) = (
            resolve_registry(&config(), &a),
            resolve_registry(&config(), &b),
        );
        assert_eq!(
            endpoints(&ra, "payment", "stable"),
            ["127.0.0.1:9001", "127.0.0.1:9003"]
        );
        assert_eq!(
            endpoints(&ra, "payment", "stable"),
            endpoints(&rb, "payment", "stable")
        );
    }

    #[test]
    fn a_version_without_matching_instances_has_no_endpoints_and_fixed_ones_stay() {
        let registry: BTreeMap<String, Vec<Inst>> = BTreeMap::new();
        let resolved = resolve_registry(&config(), &registry);
        assert!(endpoints(&resolved, "payment", "canary").is_empty());
        assert!(endpoints(&resolved, "web", "stable").is_empty());
        assert_eq!(endpoints(&resolved, "payment", "fixed"), ["127.0.0.1:9999"]);
    }

    #[test]
    fn an_instance_of_weight_zero_is_out_of_rotation() {
        let mut draining = inst("127.0.0.1:9005", &[]);
        draining.2 = Some(0);
        let mut weighted = inst("127.0.0.1:9006", &[]);
        weighted.2 = Some(3);
        let registry = BTreeMap::from([("web-app".to_string(), vec![draining, weighted])]);
        let resolved = resolve_registry(&config(), &registry);
        assert_eq!(endpoints(&resolved, "web", "stable"), ["127.0.0.1:9006"]);
    }

    #[test]
    fn registry_services_lists_each_followed_service_once() {
        assert_eq!(registry_services(&config()), ["payment", "web-app"]);
        let plain = crate::load_str(
            "listeners: [{ bind: 127.0.0.1:8080 }]\nservices:\n  - name: web\n    versions: { stable: { endpoints: [127.0.0.1:9001] } }\n",
            "t.yaml",
            Path::new("."),
        )
        .unwrap();
        assert!(registry_services(&plain).is_empty());
    }
}
