//! What graylane's test suites share, used only as a dev-dependency: test upstreams that say
//! what they received, real servers (redis, etcd, prometheus, a DNS server) started on
//! loopback, an HTTP/1.1 and HTTP/2 client, an OTLP trace receiver, certificates and a TLS client that tells which one
//! it was shown, the `graylane` binary as a child process, and bounded waiting.
//!
//! Ports are bound once: in-process servers keep the listener they bound, the `graylane`
//! binary binds port 0 and reports what it got ([`process::Graylane::listening`]), and the
//! external servers that cannot be handed a socket retry on a fresh port when theirs was taken
//! ([`ports::with_fresh_port`]).

pub mod dns;
pub mod etcd;
pub mod geoip;
pub mod http;
pub mod otlp;
pub mod ports;
pub mod process;
pub mod prometheus;
pub mod redis;
pub mod tls;
pub mod upstream;
pub mod wait;
pub mod wire;

use std::time::Duration;

/// Upper bound on any single HTTP exchange in the tests.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound on waiting for something to become true (a process to be ready, a reload).
pub const POLL_DEADLINE: Duration = Duration::from_secs(10);

/// Replaces each `{key}` in `template` by its value.
pub fn fill(template: &str, values: &[(&str, String)]) -> String {
    let mut out = template.to_string();
    for (k, v) in values {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

/// The value of the sample `series` (e.g. `graylane_requests_total{service="a",...}`) in a
/// Prometheus text exposition, if present.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}
