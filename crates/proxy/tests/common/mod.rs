//! What the data-plane integration tests share beyond `graylane-testing`: a gateway started
//! in-process from YAML (listeners on loopback port 0, read back from the gateway).

// Each test binary includes this module and uses a different subset of it.
#![allow(dead_code, unused_imports)]

pub(crate) mod many_services;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use graylane_config::Config;
use graylane_proxy::{Gateway, GatewayOptions};
pub(crate) use graylane_testing::http::*;
pub(crate) use graylane_testing::ports::closed_port;
pub(crate) use graylane_testing::upstream::{DELAY_HEADER, Upstream};
pub(crate) use graylane_testing::wait::eventually;
pub(crate) use graylane_testing::wire::*;
pub(crate) use graylane_testing::{POLL_DEADLINE, REQUEST_TIMEOUT, fill, metric_value};

/// A validated configuration from YAML; panics with every error if it is invalid.
pub(crate) fn config(yaml: &str) -> Config {
    graylane_config::load_str(yaml, "t.yaml", Path::new("."))
        .unwrap_or_else(|e| panic!("test configuration is invalid:\n{e}\n---\n{yaml}"))
}

/// A gateway with two workers and a 10 s drain.
pub(crate) fn start_gateway(config: Config) -> Gateway {
    start_gateway_with(config, Duration::from_secs(10))
}

/// A gateway with two workers and `drain_timeout`.
pub(crate) fn start_gateway_with(config: Config, drain_timeout: Duration) -> Gateway {
    Gateway::start(
        config,
        GatewayOptions {
            workers: 2,
            drain_timeout,
            ..GatewayOptions::default()
        },
    )
    .expect("the gateway starts")
}

/// Shuts the gateway down off the async runtime (it joins its worker threads).
pub(crate) async fn shutdown(gateway: Gateway) {
    tokio::task::spawn_blocking(move || gateway.shutdown())
        .await
        .expect("shutdown does not panic");
}

/// The gateway's first listener address.
pub(crate) fn addr(gateway: &Gateway) -> SocketAddr {
    gateway.local_addrs()[0]
}

/// A path under the target's temporary folder, unique to this test process and `name`.
pub(crate) fn temp_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("graylane-proxy-{}-{name}", std::process::id()))
}
