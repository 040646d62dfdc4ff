//! A configuration with many services, for measuring how loading and routing scale. Shared by
//! the reliability suite and `examples/load_10k.rs` (which includes this file by path), so the
//! figures recorded from the example are for the configuration the test checks.

use std::fmt::Write;
use std::net::SocketAddr;

/// YAML with `count` services `svc-0`..: service `i` matches `/svc/{i}`, has a `stable` and a
/// `canary` version, and a canary release at weight 0 whose force rule is the header
/// `X-Release-Phase: canary-{i}`, so a request proves which service routed it.
pub(crate) fn many_services_yaml(count: usize, stable: SocketAddr, canary: SocketAddr) -> String {
    let mut yaml = String::with_capacity(count * 360 + 64);
    yaml.push_str("listeners:\n  - bind: 127.0.0.1:0\nservices:\n");
    for i in 0..count {
        // Writing to a String cannot fail.
        let _ = write!(
            yaml,
            r#"  - name: svc-{i}
    match: {{ path_prefix: /svc/{i} }}
    versions:
      stable: {{ endpoints: ["{stable}"] }}
      canary: {{ endpoints: ["{canary}"] }}
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      force:
        - header: {{ name: X-Release-Phase, equals: canary-{i} }}
      steps:
        - weight: 0
"#
        );
    }
    yaml
}
