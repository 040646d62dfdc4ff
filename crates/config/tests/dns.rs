//! Endpoints given as DNS names and the `dns:` keys: what a valid configuration turns into, and
//! the located error each kind of mistake gets.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use graylane_config::{Config, ConfigError, DnsName, DnsSettings};

fn load(yaml: &str) -> Result<Config, Vec<ConfigError>> {
    graylane_config::load_str(yaml, "t.yaml", Path::new(".")).map_err(|e| e.errors)
}

fn with(dns: &str, endpoints: &str) -> String {
    format!(
        "listeners: [{{ bind: 127.0.0.1:8080 }}]
{dns}
services:
  - name: api
    versions:
      stable:
        endpoints: {endpoints}
"
    )
}

/// The configuration is refused with an error at `line` of t.yaml, at `key`, saying `says`.
fn error_at(yaml: &str, line: usize, key: &str, says: &str) {
    let errors = load(yaml).expect_err("the configuration must be refused");
    assert!(
        errors.iter().any(|e| e.file == "t.yaml"
            && e.key == key
            && e.line == Some(line)
            && e.message.contains(says)),
        "no error at t.yaml:{line} `{key}` saying {says:?}: {:#?}",
        errors.iter().map(ToString::to_string).collect::<Vec<_>>()
    );
}

#[test]
fn a_host_name_endpoint_is_kept_as_a_name_next_to_the_fixed_addresses() {
    let cfg = load(&with(
        "dns: { servers: [10.0.0.2, \"[fd00::2]:5353\"], timeout: 2s, max_ttl: 5m }",
        "[Api.Internal.:8080, 127.0.0.1:9001, api.internal:8080]",
    ))
    .unwrap();
    assert_eq!(
        cfg.dns,
        DnsSettings {
            servers: vec![
                "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
                "[fd00::2]:5353".parse().unwrap()
            ],
            timeout: Duration::from_secs(2),
            refresh: None,
            max_ttl: Duration::from_secs(300),
        }
    );
    let stable = &cfg.services[0].versions[0];
    assert_eq!(
        stable.endpoints,
        ["127.0.0.1:9001".parse::<SocketAddr>().unwrap()]
    );
    let dns = stable.dns.as_ref().expect("the version names a host");
    assert_eq!(
        dns.names,
        [DnsName {
            host: "api.internal".to_string(),
            port: 8080
        }]
    );
    assert_eq!(dns.refresh, None, "without `refresh`, the records' TTL");
}

#[test]
fn refresh_is_the_versions_else_the_services_else_the_top_level_one() {
    let yaml = "listeners: [{ bind: 127.0.0.1:8080 }]
dns: { refresh: 30s }
services:
  - name: api
    dns: { refresh: 10s }
    versions:
      stable: { endpoints: [api.internal:80] }
      canary: { endpoints: [canary.internal:80], dns: { refresh: 2s } }
  - name: web
    match: { path_prefix: /web }
    versions:
      stable: { endpoints: [web.internal:80] }
";
    let cfg = load(yaml).unwrap();
    let refresh = |s: usize, v: &str| {
        let service = &cfg.services[s];
        service.versions[service.version_index(v).unwrap()]
            .dns
            .as_ref()
            .unwrap()
            .refresh
    };
    assert_eq!(refresh(0, "stable"), Some(Duration::from_secs(10)));
    assert_eq!(refresh(0, "canary"), Some(Duration::from_secs(2)));
    assert_eq!(refresh(1, "stable"), Some(Duration::from_secs(30)));
}

#[test]
fn a_name_server_that_is_not_an_ip_address_is_refused_where_it_is_written() {
    error_at(
        &with(
            "dns:\n  servers: [10.0.0.2, ns1.internal]",
            "[api.internal:80]",
        ),
        3,
        "dns.servers[1]",
        "is not a name server address",
    );
    error_at(
        &with("dns:\n  servers: [\"10.0.0.2:99999\"]", "[api.internal:80]"),
        3,
        "dns.servers[0]",
        "is not a name server address",
    );
}

#[test]
fn a_refresh_out_of_range_is_refused_at_each_level() {
    error_at(
        &with("dns:\n  refresh: 500ms", "[api.internal:80]"),
        3,
        "dns.refresh",
        "out of range: from 1s to 1h",
    );
    error_at(
        &with("dns:\n  max_ttl: 2h", "[api.internal:80]"),
        3,
        "dns.max_ttl",
        "out of range",
    );
    error_at(
        &with("dns:\n  timeout: 0s", "[api.internal:80]"),
        3,
        "dns.timeout",
        "must be more than 0",
    );
    let version_level = "listeners: [{ bind: 127.0.0.1:8080 }]
services:
  - name: api
    versions:
      stable:
        endpoints: [api.internal:80]
        dns: { refresh: 0s }
";
    error_at(
        version_level,
        7,
        "services[0].versions.stable.dns.refresh",
        "out of range",
    );
}

#[test]
fn an_endpoint_without_a_port_or_with_a_bad_name_says_what_is_wrong() {
    error_at(
        &with("", "[api.internal]"),
        7,
        "services[0].versions.stable.endpoints[0]",
        "has no port",
    );
    error_at(
        &with("", "[\"api.internal:0\"]"),
        7,
        "services[0].versions.stable.endpoints[0]",
        "is not a port",
    );
    error_at(
        &with("", "[\"api internal:80\"]"),
        7,
        "services[0].versions.stable.endpoints[0]",
        "a host name has letters, digits",
    );
    error_at(
        &with("", "[\"300.1.1.1:80\"]"),
        7,
        "services[0].versions.stable.endpoints[0]",
        "neither an IP address nor a host name",
    );
}

#[test]
fn an_unknown_dns_key_is_refused_with_a_suggestion() {
    error_at(
        &with("dns:\n  server: [10.0.0.2]", "[api.internal:80]"),
        3,
        "dns.server",
        "did you mean `servers`?",
    );
}
