//! `country` rules with a `geoip:` database: the client address is looked up first, the rule's
//! header is the fallback, and an address behind trusted hops comes from `X-Forwarded-For`.

mod common;

use std::path::Path;

use common::Req;
use graylane_config::Config;
use graylane_rules::{Reason, RoutingTable};

/// A configuration with one release forcing `country: DE` to the canary, its GeoIP database
/// written next to it (127.0.0.2 in DE, 127.0.0.3 in US, 2001:db8::/32 in DE), and a
/// listener that trusts 10.0.0.0/8.
fn config(dir: &Path) -> Config {
    graylane_testing::geoip::write_country_db(
        &dir.join("countries.mmdb"),
        &[
            ("127.0.0.2/32", "DE"),
            ("127.0.0.3/32", "US"),
            ("2001:db8::/32", "de"),
        ],
    )
    .unwrap();
    let yaml = "listeners: [{ bind: 127.0.0.1:8080, trusted_hops: [10.0.0.0/8] }]
geoip: { database: countries.mmdb }
services:
  - name: svc
    versions:
      stable: { endpoints: [127.0.0.1:9001] }
      canary: { endpoints: [127.0.0.1:9002] }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      force: [{ country: { in: [DE, AT] } }]
      steps: [{ weight: 0 }]
";
    graylane_config::load_str(yaml, "t.yaml", dir).unwrap()
}

fn forced(table: &RoutingTable, req: &Req) -> bool {
    table.decide(&req.view()).unwrap().reason == Reason::Forced { rule: 0 }
}

fn from(ip: &str) -> Req {
    let mut r = Req::get("/");
    r.ip = ip.parse().unwrap();
    r
}

#[test]
fn the_database_s_country_for_the_client_address_decides() {
    let dir = tempfile::tempdir().unwrap();
    let table = RoutingTable::compile(&config(dir.path()));
    assert!(forced(&table, &from("127.0.0.2")));
    assert!(!forced(&table, &from("127.0.0.3")));
    assert!(forced(&table, &from("::ffff:127.0.0.2")), "IPv4-mapped");
    assert!(
        forced(&table, &from("2001:db8::7")),
        "codes compare case-insensitively"
    );
    assert_eq!(table.geoip_country(&from("127.0.0.3").view()), Some("US"));
}

#[test]
fn the_header_is_not_believed_over_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let table = RoutingTable::compile(&config(dir.path()));
    assert!(!forced(
        &table,
        &from("127.0.0.3").header("cf-ipcountry", "DE")
    ));
}

#[test]
fn an_address_the_database_does_not_know_falls_back_to_the_header() {
    let dir = tempfile::tempdir().unwrap();
    let table = RoutingTable::compile(&config(dir.path()));
    assert_eq!(table.geoip_country(&from("127.0.0.9").view()), None);
    assert!(forced(
        &table,
        &from("127.0.0.9").header("cf-ipcountry", "AT")
    ));
    // No answer and no header: no country, so the rule does not match.
    assert!(!forced(&table, &from("127.0.0.9")));
}

#[test]
fn x_forwarded_for_is_read_only_from_a_trusted_hop() {
    let dir = tempfile::tempdir().unwrap();
    let table = RoutingTable::compile(&config(dir.path()));
    let hops = vec!["10.0.0.0/8".parse().unwrap()];
    let mut behind_hop = from("10.1.1.1").header("x-forwarded-for", "127.0.0.3, 127.0.0.2");
    behind_hop.trusted = true;
    behind_hop.trusted_hops = hops.clone();
    assert!(forced(&table, &behind_hop));
    let mut untrusted = from("127.0.0.3").header("x-forwarded-for", "127.0.0.2");
    untrusted.trusted_hops = hops;
    assert!(!forced(&table, &untrusted));
}

#[test]
fn explanations_say_the_country_comes_from_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let table = RoutingTable::compile(&config(dir.path()));
    let req = from("127.0.0.2");
    let view = req.view();
    let text = table.explain(&view, &table.decide(&view).unwrap());
    assert!(
        text.contains("country (GeoIP database, else header cf-ipcountry) is DE or AT"),
        "{text}"
    );
}
