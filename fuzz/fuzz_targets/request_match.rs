//! Fuzzed requests against one fixed, rich routing table (every matcher kind, every value-test
//! shape the compiler produces, every key kind, sticky cookies, trusted lanes): `decide` and
//! `explain` must never panic, and a decision must point at a real service and version.
//!
//! Request parts come from the input as raw bytes: header names and values, cookie headers,
//! query strings and paths mix the names the configuration uses with arbitrary ones; header
//! values go through `HeaderValue::from_bytes`, and ones it refuses are skipped, as a real
//! proxy would never see them.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use graylane_rules::{Reason, RequestView, RoutingTable};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;

const CONFIG: &str = include_str!("../request_match.yaml");

fn table() -> &'static (RoutingTable, usize) {
    static TABLE: OnceLock<(RoutingTable, usize)> = OnceLock::new();
    TABLE.get_or_init(|| {
        let config = graylane_config::load_str(CONFIG, "request_match.yaml", Path::new("."))
            .unwrap_or_else(|e| panic!("the fixed fuzz config is invalid: {e}"));
        (RoutingTable::compile(&config), config.services.len())
    })
}

/// Names the configuration looks at, so the fuzzer hits them often.
const HEADER_NAMES: &[&str] = &[
    "x-release-phase",
    "x-tier",
    "x-build",
    "x-debug",
    "x-required",
    "x-user-id",
    "x-app-version",
    "cf-ipcountry",
    "x-country",
    "user-agent",
    "cookie",
    "x-any",
    "x-client",
];
const COOKIE_NAMES: &[&str] = &["beta", "uid", "graylane_lane", "team", "b"];
const QUERY_NAMES: &[&str] = &["variant", "u", "debug", "flag", "q"];
const PATHS: &[&str] = &[
    "/",
    "/api",
    "/api/",
    "/api/payment",
    "/api/payment/",
    "/api/payment/v2/charge",
    "/static/",
    "/ip",
    "/ip/x",
    "/search",
    "/api/v2",
];
const HOSTS: &[&str] = &[
    "search.example.com",
    "SEARCH.example.com.",
    "example.com",
    "",
];
const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS"];
const LANES: &[&str] = &["stable", "canary", "blue", "green", "", "nope"];
const VALUES: &[&str] = &[
    "canary",
    "u-1001",
    "u-1002",
    "gold",
    "j",
    "rc-1",
    "canary-7",
    "x-beta",
    "a-nightly-b",
    "v1.2.3",
    "1",
    "yes",
    "v2.5.1",
    "3.0.0-rc.1",
    "de",
    " AT ",
    "\"c-2\"",
    "203.0.113.7",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0) Mobile",
    "Googlebot/2.1",
    "a b",
    "a+b",
    "%41%2",
];

/// A name or value: usually one the configuration knows, sometimes anything.
#[derive(Arbitrary, Debug)]
enum Pick<'a> {
    Known(u8),
    Raw(&'a [u8]),
}

impl<'a> Pick<'a> {
    fn bytes(&self, known: &'static [&'static str]) -> &'a [u8] {
        match self {
            Pick::Known(i) => known[usize::from(*i) % known.len()].as_bytes(),
            Pick::Raw(b) => b,
        }
    }

    /// As text; raw bytes that are not UTF-8 are cut to their longest valid prefix.
    fn str(&self, known: &'static [&'static str]) -> &'a str {
        utf8_prefix(self.bytes(known))
    }
}

#[derive(Arbitrary, Debug)]
enum Query<'a> {
    None,
    Raw(&'a [u8]),
    Pairs(Vec<(Pick<'a>, Option<Pick<'a>>)>),
}

#[derive(Arbitrary, Debug)]
enum Cookie<'a> {
    Raw(&'a [u8]),
    Pairs(Vec<(Pick<'a>, Pick<'a>)>),
}

#[derive(Arbitrary, Debug)]
enum Ip {
    V4([u8; 4]),
    V6([u8; 16]),
    /// An IPv4-mapped IPv6 address, as a dual-stack listener reports IPv4 peers.
    Mapped([u8; 4]),
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    method: Pick<'a>,
    host: Option<Pick<'a>>,
    path: Pick<'a>,
    path_suffix: &'a [u8],
    query: Query<'a>,
    headers: Vec<(Pick<'a>, Pick<'a>)>,
    cookies: Vec<Cookie<'a>>,
    ip: Ip,
    now_unix_ms: i64,
    lane: Option<Pick<'a>>,
}

fuzz_target!(|input: Input<'_>| {
    let (table, services) = table();

    let Ok(method) = Method::from_bytes(input.method.bytes(METHODS)) else {
        return;
    };
    let host = input.host.as_ref().map(|h| h.str(HOSTS));
    let mut path = String::from(input.path.str(PATHS));
    path.push_str(utf8_prefix(input.path_suffix));
    let mut query_buf = String::new();
    let query = match &input.query {
        Query::None => None,
        Query::Raw(b) => Some(utf8_prefix(b)),
        Query::Pairs(pairs) => {
            for (i, (name, value)) in pairs.iter().enumerate() {
                if i > 0 {
                    query_buf.push('&');
                }
                query_buf.push_str(name.str(QUERY_NAMES));
                if let Some(v) = value {
                    query_buf.push('=');
                    query_buf.push_str(v.str(VALUES));
                }
            }
            Some(query_buf.as_str())
        }
    };

    let mut headers = HeaderMap::new();
    for (name, value) in &input.headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.bytes(HEADER_NAMES)),
            HeaderValue::from_bytes(value.bytes(VALUES)),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    for cookie in &input.cookies {
        let bytes = match cookie {
            Cookie::Raw(b) => b.to_vec(),
            Cookie::Pairs(pairs) => {
                let mut v = Vec::new();
                for (i, (name, value)) in pairs.iter().enumerate() {
                    if i > 0 {
                        v.extend_from_slice(b"; ");
                    }
                    v.extend_from_slice(name.bytes(COOKIE_NAMES));
                    v.push(b'=');
                    v.extend_from_slice(value.bytes(VALUES));
                }
                v
            }
        };
        if let Ok(value) = HeaderValue::from_bytes(&bytes) {
            headers.append(http::header::COOKIE, value);
        }
    }

    let client_ip = match input.ip {
        Ip::V4(b) => IpAddr::V4(Ipv4Addr::from(b)),
        Ip::V6(b) => IpAddr::V6(Ipv6Addr::from(b)),
        Ip::Mapped(b) => IpAddr::V6(Ipv4Addr::from(b).to_ipv6_mapped()),
    };
    let req = RequestView {
        method: &method,
        host,
        path: &path,
        query,
        headers: &headers,
        client_ip,
        now_unix_ms: input.now_unix_ms,
        trusted_lane: input.lane.as_ref().map(|l| l.str(LANES)),
        trusted: input.lane.is_some(),
        random: input.now_unix_ms as u32,
    };

    let Some(decision) = table.decide(&req) else {
        return;
    };
    assert!(decision.service < *services, "service index out of range");
    assert_ne!(
        table.version_name(decision.service, decision.version),
        "?",
        "version index out of range"
    );
    if let Reason::Bucket { bucket, .. } = decision.reason {
        assert!(
            bucket < graylane_rules::bucket::BUCKETS,
            "bucket out of range"
        );
    }
    let text = table.explain(&req, &decision);
    assert!(!text.is_empty());
    assert_eq!(
        table.decide(&req),
        Some(decision),
        "decide is not deterministic"
    );
});

fn utf8_prefix(b: &[u8]) -> &str {
    match std::str::from_utf8(b) {
        Ok(s) => s,
        // `valid_up_to` is a char boundary, so this cannot fail.
        Err(e) => std::str::from_utf8(&b[..e.valid_up_to()]).unwrap_or_default(),
    }
}
