//! Helpers shared by the integration tests: a configuration from a YAML fragment and an owned
//! request that lends out a `RequestView`.

// Each test binary includes this module and uses a different subset of it.
#![allow(dead_code)]

use std::net::IpAddr;
use std::path::Path;

use graylane_config::Config;
use graylane_rules::{CookieKeys, Decision, RequestView, RoutingTable};
use http::{HeaderMap, HeaderName, HeaderValue, Method};

/// A validated configuration from `body` (the YAML after the `listeners:` line).
pub(crate) fn config(body: &str) -> Config {
    let yaml = format!("listeners: [{{ bind: 127.0.0.1:8080 }}]\n{body}");
    match graylane_config::load_str(&yaml, "t.yaml", Path::new(".")) {
        Ok(c) => c,
        Err(e) => panic!("test config is invalid: {e}\n{yaml}"),
    }
}

/// [`config`] with a listener that trusts 10.0.0.0/8, for `trusted_only` keys and rules.
pub(crate) fn config_with_trusted_hops(body: &str) -> Config {
    let yaml =
        format!("listeners: [{{ bind: 127.0.0.1:8080, trusted_hops: [10.0.0.0/8] }}]\n{body}");
    match graylane_config::load_str(&yaml, "t.yaml", Path::new(".")) {
        Ok(c) => c,
        Err(e) => panic!("test config is invalid: {e}\n{yaml}"),
    }
}

pub(crate) fn table(body: &str) -> RoutingTable {
    RoutingTable::compile(&config(body))
}

/// The sticky-cookie key the keyed tables sign with.
pub(crate) const COOKIE_KEY: &str = "test-cookie-key-0123456789";

/// A table whose sticky cookies are signed with [`COOKIE_KEY`].
pub(crate) fn keyed_table(body: &str) -> RoutingTable {
    let mut t = table(body);
    t.set_cookie_keys(&CookieKeys::parse(COOKIE_KEY).unwrap());
    t
}

/// The signed sticky cookie value `t` issues for `bucket` of service `service`.
pub(crate) fn sticky_value(t: &RoutingTable, service: usize, bucket: u32) -> String {
    let v = t
        .sticky_value(service, bucket)
        .expect("a sticky release with keys");
    String::from_utf8(v.as_bytes().to_vec()).unwrap()
}

/// One service `svc` (stable + canary) whose release has the single force rule `rule` (flow
/// YAML) at weight 0, so a request is forced iff the rule matches. Segment `staff` holds
/// `u-1001` and `u-1002`.
pub(crate) fn force_table(rule: &str) -> RoutingTable {
    table(&format!(
        "segments:
  staff: {{ values: [u-1001, u-1002] }}
services:
  - name: svc
    versions:
      stable: {{ endpoints: [127.0.0.1:9001] }}
      canary: {{ endpoints: [127.0.0.1:9002] }}
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      force:
        - {rule}
      steps: [{{ weight: 0 }}]
"
    ))
}

/// An owned request; `view()` lends it to the rule engine.
#[derive(Clone)]
pub(crate) struct Req {
    pub method: Method,
    pub host: Option<String>,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub ip: IpAddr,
    pub now_unix_ms: i64,
    pub lane: Option<String>,
    pub trusted: bool,
    pub trusted_hops: Vec<ipnet::IpNet>,
    pub random: u32,
}

impl Req {
    pub(crate) fn get(path: &str) -> Req {
        Req {
            method: Method::GET,
            host: None,
            path: path.to_string(),
            query: None,
            headers: HeaderMap::new(),
            ip: "198.51.100.10".parse().unwrap(),
            now_unix_ms: 1_700_000_000_000,
            lane: None,
            trusted: false,
            trusted_hops: Vec::new(),
            random: 0,
        }
    }

    /// Appends a header, so calling it twice sends the header twice.
    pub(crate) fn header(self, name: &str, value: &str) -> Req {
        self.header_bytes(name, value.as_bytes())
    }

    pub(crate) fn header_bytes(mut self, name: &str, value: &[u8]) -> Req {
        let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
        self.headers
            .append(name, HeaderValue::from_bytes(value).unwrap());
        self
    }

    pub(crate) fn method(mut self, m: Method) -> Req {
        self.method = m;
        self
    }

    pub(crate) fn host(mut self, h: &str) -> Req {
        self.host = Some(h.to_string());
        self
    }

    pub(crate) fn query(mut self, q: &str) -> Req {
        self.query = Some(q.to_string());
        self
    }

    pub(crate) fn ip(mut self, ip: &str) -> Req {
        self.ip = ip.parse().unwrap();
        self
    }

    pub(crate) fn now(mut self, unix_ms: i64) -> Req {
        self.now_unix_ms = unix_ms;
        self
    }

    pub(crate) fn lane(mut self, lane: &str) -> Req {
        self.lane = Some(lane.to_string());
        self
    }

    /// From a listener's trusted hops.
    pub(crate) fn trusted(mut self) -> Req {
        self.trusted = true;
        self
    }

    /// The random number the proxy would have drawn for this request.
    pub(crate) fn random(mut self, r: u32) -> Req {
        self.random = r;
        self
    }

    pub(crate) fn view(&self) -> RequestView<'_> {
        RequestView {
            method: &self.method,
            host: self.host.as_deref(),
            path: &self.path,
            query: self.query.as_deref(),
            headers: &self.headers,
            client_ip: self.ip,
            now_unix_ms: self.now_unix_ms,
            trusted_lane: self.lane.as_deref(),
            trusted: self.trusted,
            trusted_hops: &self.trusted_hops,
            random: self.random,
        }
    }
}

/// The decision for `req`, which must match some service.
pub(crate) fn decide(table: &RoutingTable, req: &Req) -> Decision {
    match table.decide(&req.view()) {
        Some(d) => d,
        None => panic!("no service matched {} {}", req.method, req.path),
    }
}

/// `(service name, version name)` for `req`, or `None` when no service matches.
pub(crate) fn route(table: &RoutingTable, req: &Req) -> Option<(String, String)> {
    let d = table.decide(&req.view())?;
    Some((
        table.service_name(d.service).to_string(),
        table.version_name(d.service, d.version).to_string(),
    ))
}
