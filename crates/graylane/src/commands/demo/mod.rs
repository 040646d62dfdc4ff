//! `graylane demo`: built-in upstreams on loopback (stable and canary, each answering JSON,
//! WebSocket and gRPC; an HTTPS one), a gateway in front of them with sample canary releases,
//! and the lines to try. The upstreams are in `upstreams.rs`.

mod upstreams;

use std::process::ExitCode;

use clap::Args;
use graylane_proxy::GatewayOptions;

use super::serve::{ConfigSource, Prepared, run_gateway};
use crate::logging::{self, LogColor, LogFormat};

#[derive(Args)]
pub(crate) struct DemoArgs {
    /// Port of the gateway on 127.0.0.1.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Port of the admin listener (metrics) on 127.0.0.1.
    #[arg(long, default_value_t = 9900)]
    pub admin_port: u16,
    /// Weight of the canary, in percent.
    #[arg(long, default_value_t = 10.0)]
    pub weight: f64,
}

const DEMO_CONFIG: &str = r#"
listeners:
  - bind: 127.0.0.1:{port}
admin:
  bind: 127.0.0.1:{admin_port}
segments:
  staff:
    values: ["u-1001", "u-1002"]
services:
  - name: payment
    match: { path_prefix: /api/payment }
    versions:
      stable: { endpoints: ["{stable}"] }
      canary: { endpoints: ["{canary}"], tag: v1.2.0 }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      force:
        - header: { name: X-Release-Phase, equals: canary }
        - segment: { name: staff, key: "header:X-User-Id" }
      bucket_by: "header:X-User-Id"
      sticky: { cookie: graylane_lane }
      steps:
        - weight: {weight}
          pause: manual
        - weight: 100
  # gRPC over HTTP/2 to the upstreams; judged by grpc-status, routed by metadata like headers.
  - name: health
    match: { path_prefix: /grpc.health.v1.Health/ }
    versions:
      stable: { endpoints: ["h2c://{stable}"] }
      canary: { endpoints: ["h2c://{canary}"] }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      force:
        - header: { name: X-Release-Phase, equals: canary }
      bucket_by: "header:X-User-Id"
      steps:
        - weight: {weight}
          pause: manual
  # WebSocket: the upgrade is routed like any request, then bytes flow both ways.
  - name: chat
    match: { path_prefix: /ws/ }
    versions:
      stable: { endpoints: ["{stable}"] }
      canary: { endpoints: ["{canary}"] }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      force:
        - header: { name: X-Release-Phase, equals: canary }
      bucket_by: "header:X-User-Id"
      steps:
        - weight: {weight}
          pause: manual
  # An HTTPS upstream, verified against the demo's own certificate authority.
  - name: account
    match: { path_prefix: /api/account }
    versions:
      stable:
        endpoints: ["https://{account}"]
        tls: { ca: "{ca}", server_name: {server_name} }
"#;

pub(crate) fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    logging::init(LogFormat::Text, LogColor::Auto, "warn");
    let dir = std::env::temp_dir().join(format!("graylane-demo-{}", std::process::id()));
    let result = run_in(&args, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(args: &DemoArgs, dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let up = upstreams::start(dir)?;
    let yaml = DEMO_CONFIG
        .replace("{port}", &args.port.to_string())
        .replace("{admin_port}", &args.admin_port.to_string())
        .replace("{stable}", &up.stable.to_string())
        .replace("{canary}", &up.canary.to_string())
        .replace("{account}", &up.account.to_string())
        .replace("{ca}", &up.ca_file.display().to_string())
        .replace("{server_name}", upstreams::ACCOUNT_SERVER_NAME)
        .replace("{weight}", &args.weight.to_string());
    let config = graylane_config::load_str(&yaml, "<demo>", std::path::Path::new("."))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let gateway = format!("127.0.0.1:{}", args.port);
    let base = format!("http://{gateway}/api/payment/orders");
    println!(
        "graylane demo: gateway on {gateway}, admin on 127.0.0.1:{}",
        args.admin_port
    );
    println!(
        "  stable upstream {}, canary upstream {} (JSON, WebSocket, gRPC); HTTPS upstream {}; canary weight {}%\n",
        up.stable, up.canary, up.account, args.weight
    );
    println!("Try:");
    println!(
        "  curl -i {base} -H 'X-Release-Phase: canary'   # forced to the canary (test traffic)"
    );
    println!("  curl -i {base} -H 'X-User-Id: u-1001'         # a staff user: always the canary");
    println!(
        "  curl -i {base} -H \"X-User-Id: u-$RANDOM\"       # a random user: {}% chance of canary, sticky",
        args.weight
    );
    println!(
        "  curl -i http://{gateway}/api/account/me        # through an HTTPS upstream, verified"
    );
    println!(
        "  websocat -H 'X-Release-Phase: canary' ws://{gateway}/ws/echo   # WebSocket echo, on the canary"
    );
    println!(
        "  printf '\\0\\0\\0\\0\\0' | curl -s --http2-prior-knowledge -H 'content-type: application/grpc' \\\n      --data-binary @- -o /dev/null -D - http://{gateway}/grpc.health.v1.Health/Check   # gRPC: see grpc-status"
    );
    println!(
        "  curl -s 127.0.0.1:{}/metrics | grep graylane_requests",
        args.admin_port
    );
    println!("\nCtrl-C to stop.");
    let prepared = Prepared::bind(&config, GatewayOptions::default(), Vec::new(), None)?;
    run_gateway(prepared, config, ConfigSource::Fixed)
}
