//! Service selection: longest path prefix, then host-specific before any-host, then config
//! order; method filters; no match → `None`.

mod common;

use common::{Req, route, table};
use graylane_rules::RoutingTable;
use http::Method;

fn svc(name: &str, matcher: &str) -> String {
    format!(
        "  - name: {name}\n    match: {matcher}\n    versions: {{ stable: {{ endpoints: [127.0.0.1:9001] }} }}\n"
    )
}

fn routes(table: &RoutingTable, req: Req) -> Option<String> {
    route(table, &req).map(|(s, _)| s)
}

fn name(s: &str) -> Option<String> {
    Some(s.to_string())
}

#[test]
fn longest_prefix_wins() {
    let t = table(&format!(
        "services:\n{}{}{}",
        svc("root", "{ path_prefix: / }"),
        svc("api", "{ path_prefix: /api }"),
        svc("payment", "{ path_prefix: /api/payment }"),
    ));
    assert_eq!(routes(&t, Req::get("/api/payment/charge")), name("payment"));
    assert_eq!(routes(&t, Req::get("/api/payment")), name("payment"));
    assert_eq!(routes(&t, Req::get("/api/pay")), name("api"));
    assert_eq!(routes(&t, Req::get("/api")), name("api"));
    assert_eq!(routes(&t, Req::get("/ap")), name("root"));
    assert_eq!(routes(&t, Req::get("/")), name("root"));
    // A plain string prefix, as in nginx and Envoy: `/api` also covers `/apix`.
    assert_eq!(routes(&t, Req::get("/apix")), name("api"));
}

#[test]
fn no_match_is_none() {
    let t = table(&format!(
        "services:\n{}",
        svc("api", "{ path_prefix: /api/ }")
    ));
    assert_eq!(routes(&t, Req::get("/api")), None);
    assert_eq!(routes(&t, Req::get("/")), None);
    assert_eq!(routes(&t, Req::get("")), None);
    assert_eq!(routes(&t, Req::get("*")), None);
    assert_eq!(routes(&t, Req::get("/API/x")), None);
    assert_eq!(routes(&t, Req::get("/api/x")), name("api"));
}

#[test]
fn host_specific_beats_any_host_at_equal_prefix() {
    // The any-host service comes first in the file, yet the host-specific one wins for its host.
    let t = table(&format!(
        "services:\n{}{}{}",
        svc("generic", "{ path_prefix: /api }"),
        svc("shop", "{ host: Shop.Example.com, path_prefix: /api }"),
        svc("root-shop", "{ host: shop.example.com }"),
    ));
    assert_eq!(
        routes(&t, Req::get("/api/x").host("shop.example.com")),
        name("shop")
    );
    assert_eq!(
        routes(&t, Req::get("/api/x").host("SHOP.example.COM")),
        name("shop")
    );
    assert_eq!(
        routes(&t, Req::get("/api/x").host("shop.example.com.")),
        name("shop")
    );
    assert_eq!(
        routes(&t, Req::get("/api/x").host("blog.example.com")),
        name("generic")
    );
    assert_eq!(routes(&t, Req::get("/api/x")), name("generic"));
    // A longer prefix beats a host match on a shorter one.
    assert_eq!(
        routes(&t, Req::get("/other").host("shop.example.com")),
        name("root-shop")
    );
    assert_eq!(
        routes(&t, Req::get("/other").host("blog.example.com")),
        None
    );
}

#[test]
fn host_in_config_with_port_is_normalized() {
    let t = table(&format!(
        "services:\n{}",
        svc("a", "{ host: \"a.test:8443\" }")
    ));
    assert_eq!(routes(&t, Req::get("/").host("a.test")), name("a"));
    assert_eq!(routes(&t, Req::get("/").host("b.test")), None);
    assert_eq!(routes(&t, Req::get("/")), None);
}

#[test]
fn methods_filter_and_fall_through() {
    let t = table(&format!(
        "services:\n{}{}{}",
        svc(
            "writes",
            "{ path_prefix: /api/orders, methods: [POST, PUT] }"
        ),
        svc(
            "reads",
            "{ path_prefix: /api/orders, methods: [GET, HEAD, POST] }"
        ),
        svc("api", "{ path_prefix: /api }"),
    ));
    let req = |m: Method| Req::get("/api/orders/1").method(m);
    assert_eq!(routes(&t, req(Method::POST)), name("writes"));
    assert_eq!(routes(&t, req(Method::PUT)), name("writes"));
    assert_eq!(routes(&t, req(Method::GET)), name("reads"));
    // Neither service with the longer prefix takes DELETE, so the shorter prefix does.
    assert_eq!(routes(&t, req(Method::DELETE)), name("api"));
}

#[test]
fn config_order_breaks_remaining_ties() {
    let t = table(&format!(
        "services:\n{}{}",
        svc("first", "{ path_prefix: /x, methods: [GET] }"),
        svc("second", "{ path_prefix: /x, methods: [GET, POST] }"),
    ));
    assert_eq!(routes(&t, Req::get("/x")), name("first"));
    assert_eq!(
        routes(&t, Req::get("/x").method(Method::POST)),
        name("second")
    );
}

#[test]
fn multibyte_paths_do_not_split_characters() {
    // Prefix lengths 3 and 4 fall inside the two-byte `é` of the request paths below.
    let t = table(&format!(
        "services:\n{}{}{}",
        svc("ab", "{ path_prefix: /ab }"),
        svc("abc", "{ path_prefix: /abc }"),
        svc("e", "{ path_prefix: /é }"),
    ));
    assert_eq!(routes(&t, Req::get("/éé")), name("e"));
    assert_eq!(routes(&t, Req::get("/aé")), None);
    assert_eq!(routes(&t, Req::get("/abé")), name("ab"));
}

#[test]
fn a_thousand_services() {
    let mut body = String::from("services:\n");
    for i in 0..1000 {
        body.push_str(&svc(
            &format!("svc-{i}"),
            &format!("{{ path_prefix: /svc/{i}/ }}"),
        ));
    }
    body.push_str(&svc("fallback", "{ path_prefix: /svc/ }"));
    let t = table(&body);
    for i in [0, 1, 10, 99, 100, 512, 999] {
        assert_eq!(
            routes(&t, Req::get(&format!("/svc/{i}/items"))),
            Some(format!("svc-{i}"))
        );
    }
    assert_eq!(routes(&t, Req::get("/svc/1000/items")), name("fallback"));
    assert_eq!(routes(&t, Req::get("/svc/12")), name("fallback"));
    assert_eq!(routes(&t, Req::get("/other")), None);
}

#[test]
fn services_without_release_get_their_default_version() {
    let t = table(
        "services:
  - name: web
    default_version: blue
    versions:
      blue: { endpoints: [127.0.0.1:9001] }
      green: { endpoints: [127.0.0.1:9002] }
",
    );
    assert_eq!(
        route(&t, &Req::get("/")),
        Some(("web".to_string(), "blue".to_string()))
    );
    let d = common::decide(&t, &Req::get("/"));
    assert_eq!(d.reason, graylane_rules::Reason::NoRelease);
    assert_eq!(t.weight(d.service), graylane_config::Weight::ZERO);
}
