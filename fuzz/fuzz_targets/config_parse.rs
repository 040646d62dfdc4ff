//! Arbitrary bytes → (if UTF-8) `graylane_config::load_str`. Any input may be rejected with
//! errors; none may panic, hang or exhaust memory.
//!
//! Two things `load_str` legitimately does are kept out of the fuzzer's reach, because they
//! touch the outside world rather than graylane's code:
//!
//! * a version endpoint that is `host:port` with a host name is resolved with the system
//!   resolver (`ToSocketAddrs`): a fuzzer would send thousands of DNS queries a second;
//! * a segment `file:` is read from disk: an absolute path such as `/dev/zero` would read
//!   forever.
//!
//! Inputs that would do either are skipped (they still count as executions); relative segment
//! files resolve under a base folder that does not exist, so they fail to open.

#![no_main]

use std::net::SocketAddr;
use std::path::Path;

use graylane_config::raw::{RawConfig, RawEndpoints};
use libfuzzer_sys::fuzz_target;
use serde::Deserialize as _;

/// Relative segment files resolve below this, which does not exist: every open fails at once.
const BASE_DIR: &str = "/nonexistent/graylane-fuzz";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if !stays_offline(text) {
        return;
    }
    match graylane_config::load_str(text, "fuzz.yaml", Path::new(BASE_DIR)) {
        Ok(config) => {
            // A valid configuration must also compile into a routing table.
            let _ = graylane_rules::RoutingTable::compile(&config);
        }
        Err(errors) => {
            assert!(!errors.errors.is_empty(), "an error result with no errors");
            // Rendering the errors is part of the contract too (the CLI prints them).
            let _ = errors.to_string();
        }
    }
});

/// Whether loading `text` neither resolves a host name nor reads a file outside `BASE_DIR`.
/// Text that serde cannot read as a `RawConfig` is never validated, so it is safe.
fn stays_offline(text: &str) -> bool {
    // The very call `load_str` makes, so both see the same `RawConfig`.
    let de = serde_yaml_ng::Deserializer::from_str(text);
    let Ok(raw) = RawConfig::deserialize(de) else {
        return true;
    };
    let files_ok = raw
        .segments
        .values()
        .filter_map(|s| s.file.as_deref())
        .all(|f| !Path::new(f).has_root());
    let endpoints_ok = raw
        .services
        .iter()
        .flat_map(|s| s.versions.values())
        .flat_map(|v| match &v.endpoints {
            RawEndpoints::List(list) => list.as_slice(),
            RawEndpoints::Registry(_) => &[][..],
        })
        .all(|e| !needs_lookup(e));
    files_ok && endpoints_ok
}

/// Mirrors the validator's endpoint parsing: anything that is not an `https://` URL or a
/// literal socket address but has a `:port` suffix goes to `getaddrinfo`.
fn needs_lookup(endpoint: &str) -> bool {
    if endpoint.starts_with("https://") {
        return false;
    }
    let hostport = endpoint
        .strip_prefix("http://")
        .unwrap_or(endpoint)
        .trim_end_matches('/');
    if hostport.parse::<SocketAddr>().is_ok() {
        return false;
    }
    // std only calls the resolver when the text ends in a valid `:port`.
    hostport
        .rsplit_once(':')
        .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
}
