//! Versions with endpoints given as DNS names: which names a configuration needs resolved and
//! how often, and the configuration with those versions' endpoints filled in from the
//! addresses the names have now. The resolver itself lives in the data plane; this crate only
//! sees its answers, as [`resolve_registry`](crate::resolve_registry) only sees the registry's.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::model::Config;

/// A name the configuration needs resolved, and by whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsLookup {
    /// The host name, lower case.
    pub host: String,
    /// The shortest `refresh` of the versions that use it; `None` if none sets one.
    pub refresh: Option<Duration>,
    /// Whether a version that uses it follows the records' TTL (has no `refresh`).
    pub follows_ttl: bool,
    /// `(service, version)` of each version that uses it, in the model's order.
    pub users: Vec<(String, String)>,
}

/// Every host name the configuration's versions name, each once, sorted.
pub fn dns_lookups(config: &Config) -> Vec<DnsLookup> {
    let mut out: BTreeMap<&str, DnsLookup> = BTreeMap::new();
    for service in &config.services {
        for version in &service.versions {
            let Some(dns) = &version.dns else { continue };
            for name in &dns.names {
                let entry = out.entry(&name.host).or_insert_with(|| DnsLookup {
                    host: name.host.clone(),
                    refresh: None,
                    follows_ttl: false,
                    users: Vec::new(),
                });
                match dns.refresh {
                    Some(r) => entry.refresh = Some(entry.refresh.map_or(r, |e| e.min(r))),
                    None => entry.follows_ttl = true,
                }
                let user = (service.name.clone(), version.name.clone());
                if !entry.users.contains(&user) {
                    entry.users.push(user);
                }
            }
        }
    }
    out.into_values().collect()
}

/// `config` with the endpoints of every version that names hosts set to its fixed addresses
/// plus every address in `addresses` (host → addresses) of each host at its port, sorted and
/// without duplicates, so the same answers in any order give the same configuration. A host
/// with no addresses (never resolved) adds none: a version left with no endpoint is answered
/// as when none of its endpoints is healthy. Other versions are left as they are.
pub fn resolve_dns(config: &Config, addresses: &BTreeMap<String, Vec<IpAddr>>) -> Config {
    let mut out = config.clone();
    for version in out.services.iter_mut().flat_map(|s| &mut s.versions) {
        let Some(dns) = &version.dns else { continue };
        let mut endpoints: BTreeSet<SocketAddr> = dns.fixed.iter().copied().collect();
        for name in &dns.names {
            let ips = addresses.get(&name.host).into_iter().flatten();
            endpoints.extend(ips.map(|ip| SocketAddr::new(*ip, name.port)));
        }
        version.endpoints = endpoints.into_iter().collect();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const YAML: &str = "listeners: [{ bind: 127.0.0.1:8080 }]
dns: { refresh: 30s }
services:
  - name: api
    versions:
      stable: { endpoints: [api.internal:8080, 127.0.0.1:9000] }
      canary: { endpoints: [API.internal:9090, canary.internal:80], dns: { refresh: 5s } }
      fixed: { endpoints: [127.0.0.1:9999] }
  - name: web
    match: { path_prefix: /web }
    dns: { refresh: 10s }
    versions:
      stable: { endpoints: [api.internal:8080] }
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
    fn every_address_of_a_name_is_an_endpoint_at_the_names_port_next_to_the_fixed_ones() {
        let addresses = BTreeMap::from([
            (
                "api.internal".to_string(),
                vec!["10.0.0.2".parse().unwrap(), "::1".parse().unwrap()],
            ),
            (
                "canary.internal".to_string(),
                vec!["10.0.0.9".parse().unwrap()],
            ),
        ]);
        let resolved = resolve_dns(&config(), &addresses);
        assert_eq!(
            endpoints(&resolved, "api", "stable"),
            ["10.0.0.2:8080", "127.0.0.1:9000", "[::1]:8080"]
        );
        assert_eq!(
            endpoints(&resolved, "api", "canary"),
            ["10.0.0.2:9090", "10.0.0.9:80", "[::1]:9090"]
        );
        assert_eq!(endpoints(&resolved, "api", "fixed"), ["127.0.0.1:9999"]);
    }

    #[test]
    fn a_name_without_addresses_leaves_only_the_fixed_endpoints_and_resolving_twice_adds_nothing() {
        let none = resolve_dns(&config(), &BTreeMap::new());
        assert_eq!(endpoints(&none, "api", "stable"), ["127.0.0.1:9000"]);
        assert!(endpoints(&none, "api", "canary").is_empty());
        let addresses = BTreeMap::from([(
            "api.internal".to_string(),
            vec!["10.0.0.2".parse().unwrap()],
        )]);
        let once = resolve_dns(&config(), &addresses);
        let twice = resolve_dns(&once, &addresses);
        assert_eq!(
            endpoints(&once, "api", "stable"),
            endpoints(&twice, "api", "stable")
        );
    }

    #[test]
    fn each_name_is_looked_up_once_at_the_shortest_refresh_of_its_users() {
        let lookups = dns_lookups(&config());
        let hosts: Vec<&str> = lookups.iter().map(|l| l.host.as_str()).collect();
        assert_eq!(hosts, ["api.internal", "canary.internal"]);
        let api = &lookups[0];
        assert_eq!(api.refresh, Some(Duration::from_secs(5)));
        assert!(!api.follows_ttl);
        assert_eq!(
            api.users,
            [
                ("api".to_string(), "canary".to_string()),
                ("api".to_string(), "stable".to_string()),
                ("web".to_string(), "stable".to_string()),
            ]
        );
    }
}
