//! `graylane demo`: built-in upstreams on loopback (stable and canary, each answering JSON,
//! WebSocket and gRPC; an HTTPS one), a gateway in front of them with sample canary releases,
//! its controller and store and access log in a temporary folder, the dashboard's address
//! with a token made at start, and the lines to try. The upstreams are in `upstreams.rs`; the
//! synthetic traffic and the scripted payment release (rolled back, retried, promoted) in
//! `story.rs`.

mod story;
mod upstreams;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use graylane_config::{AccessLogPath, Role};
use graylane_proxy::GatewayOptions;

use super::serve::{ConfigSource, Managed, Prepared, run_gateway};
use crate::logging::{self, LogColor, LogFormat};

#[derive(Args)]
pub(crate) struct DemoArgs {
    /// Port of the gateway on 127.0.0.1.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Port of the admin listener (metrics) on 127.0.0.1.
    #[arg(long, default_value_t = 9900)]
    pub admin_port: u16,
    /// Weight of the canary at the first step, in percent (0 to 100).
    #[arg(long, default_value_t = 10.0, value_parser = percent)]
    pub weight: f64,
    /// Send no traffic and script nothing: the canary is healthy, and the payment release
    /// moves on only as your own requests pass its analysis.
    #[arg(long)]
    pub no_traffic: bool,
    /// Tell the story N times faster (1 to 10): the analysis's interval, the pauses and the
    /// wait before the retry divided by N, the traffic multiplied by N.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub speed: u32,
    /// Export a trace of every request and the release's transitions to an OpenTelemetry
    /// collector at this OTLP endpoint, e.g. http://127.0.0.1:4318 (Jaeger's or a collector's
    /// http/protobuf port).
    #[arg(long, value_name = "URL")]
    pub otlp: Option<String>,
    /// The protocol of --otlp: http/protobuf, or grpc (usually on port 4317).
    #[arg(
        long,
        value_name = "PROTOCOL",
        default_value = "http/protobuf",
        requires = "otlp"
    )]
    pub otlp_protocol: String,
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
      # Each step moves on once its pause is over and the analysis passed it; a failed
      # analysis rolls the release back (all users on stable).
      steps:
        - { weight: {weight}, pause: {pause} }
        - { weight: {middle}, pause: {pause} }
        - weight: 100
      analysis:
        interval: {interval}
        min_requests: 30
        failure_limit: 1
        on_failure: rollback
        checks:
          - { metric: error_rate, max: 0.1 }
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

/// A weight flag's value: a percentage from 0 to 100.
fn percent(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(w) if (0.0..=100.0).contains(&w) => Ok(w),
        _ => Err(format!(
            "`{s}` is not a weight: give a percentage from 0 to 100"
        )),
    }
}

/// The name the demo's admin token is recorded under (the actor of what it does).
const TOKEN_NAME: &str = "demo";

pub(crate) fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    logging::init(LogFormat::Text, LogColor::Auto, "warn");
    let dir = std::env::temp_dir().join(format!("graylane-demo-{}", std::process::id()));
    let result = run_in(&args, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(args: &DemoArgs, dir: &Path) -> anyhow::Result<ExitCode> {
    let scripted = !args.no_traffic;
    if scripted && args.weight == 0.0 {
        anyhow::bail!(
            "--weight 0 sends none of the demo's users to the canary, so there is nothing to judge: give a weight above 0, or add --no-traffic"
        );
    }
    // The second step halves what is left to 100%, from 50% for a first step below it.
    let middle = if args.weight < 50.0 {
        50.0
    } else {
        ((args.weight + 100.0) / 2.0 * 1000.0).round() / 1000.0
    };
    let pace = story::Pace::new(args.speed);
    let faults = Arc::new(upstreams::Faults::new(scripted));
    let up = upstreams::start(dir, Arc::clone(&faults))?;
    let yaml = DEMO_CONFIG
        .replace("{port}", &args.port.to_string())
        .replace("{admin_port}", &args.admin_port.to_string())
        .replace("{stable}", &up.stable.to_string())
        .replace("{canary}", &up.canary.to_string())
        .replace("{account}", &up.account.to_string())
        .replace("{ca}", &up.ca_file.display().to_string())
        .replace("{server_name}", upstreams::ACCOUNT_SERVER_NAME)
        .replace("{weight}", &args.weight.to_string())
        .replace("{middle}", &middle.to_string())
        .replace("{interval}", &millis(pace.interval()))
        .replace("{pause}", &millis(pace.pause()));
    let yaml = match &args.otlp {
        // Quoted as JSON strings, which YAML reads as they are: the flags' text stays data, and
        // the configuration's own checks name what is wrong with it.
        Some(endpoint) => format!(
            "{yaml}telemetry:\n  otlp: {{ endpoint: {}, protocol: {}, sample: 1.0 }}\n",
            serde_json::to_string(endpoint)?,
            serde_json::to_string(&args.otlp_protocol)?,
        ),
        None => yaml,
    };
    let config_path = dir.join("graylane.yaml");
    std::fs::write(&config_path, &yaml)?;
    let config = graylane_config::load_str(&yaml, &config_path.display().to_string(), dir)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let access_log = dir.join("access.log");
    let token = graylane_proxy::cookie_keys::random_key()?[..32].to_owned();
    let store = super::takeover::open_store(&dir.join("data"), Duration::ZERO)?;
    let options = GatewayOptions {
        access_log_path: Some(AccessLogPath::File(access_log.clone())),
        ..GatewayOptions::default()
    };
    let mut prepared = Prepared::bind(&config, options, Vec::new(), None)?;
    prepared.grant(token.clone(), TOKEN_NAME, Role::Admin);

    let gateway = format!("127.0.0.1:{}", args.port);
    let admin = format!("127.0.0.1:{}", args.admin_port);
    let base = format!("http://{gateway}/api/payment/orders");
    println!("graylane demo: gateway on {gateway}, admin on {admin}");
    println!(
        "  stable upstream {}, canary upstream {} (JSON, WebSocket, gRPC); HTTPS upstream {}\n",
        up.stable, up.canary, up.account
    );
    println!("Dashboard: http://{admin}/#/releases/payment");
    println!("  sign in with the token {token}");
    println!(
        "  the CLI: export GRAYLANE_TOKEN={token}; graylane status payment --admin http://{admin}"
    );
    println!(
        "Access log: {} (JSON, a line per request)",
        access_log.display()
    );
    println!("  tail -f {}", access_log.display());
    if let Some(endpoint) = &args.otlp {
        println!(
            "Traces: every request and each release transition, to {endpoint} ({})",
            args.otlp_protocol
        );
    }
    println!("Configuration: {}\n", config_path.display());
    let s = seconds;
    if scripted {
        println!(
            "What happens (about {} on the dashboard's payment page):",
            if args.speed == 1 {
                "a minute".to_owned()
            } else {
                format!("{:.0}s", 60.0 / f64::from(args.speed))
            }
        );
        println!(
            "  * {} requests a second from 2000 users (X-User-Id) reach payment; {}% of the users get the canary",
            pace.rate(),
            args.weight
        );
        println!("    (v1.2.0), whose first build answers every other request with 503.");
        println!(
            "  * Every {}s the analysis judges the canary (error rate at most 10%, after 30 requests): it",
            s(pace.interval())
        );
        println!(
            "    fails it within a few intervals and rolls the release back: every user on stable."
        );
        println!(
            "  * {}s later a fixed build is deployed and the demo retries the release, as `graylane retry",
            s(pace.fix_after())
        );
        println!("    payment` would (the audit log names the token `demo`).");
        println!(
            "  * The healthy canary passes the analysis at {}%, then at {middle}% (each step at least {}s), and",
            args.weight,
            s(pace.pause())
        );
        println!("    the release completes: the canary is the stable version, for every user.");
        println!("  Each step is printed below as it happens.\n");
    } else {
        println!(
            "No traffic of the demo's own (--no-traffic): the canary is healthy, and the payment release"
        );
        println!(
            "moves on as your requests pass its analysis (judged every {}s once the canary has 30 requests).\n",
            s(pace.interval())
        );
    }
    println!("Try:");
    println!(
        "  curl -i {base} -H 'X-Release-Phase: canary'   # forced to the canary (test traffic)"
    );
    println!("  curl -i {base} -H 'X-User-Id: u-1001'         # a staff user: always the canary");
    println!(
        "  curl -i {base} -H \"X-User-Id: u-$RANDOM\"       # a random user: canary by the weight, sticky"
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
    println!("  curl -s {admin}/metrics | grep graylane_requests");
    println!("\nCtrl-C to stop.\n");
    if scripted {
        story::start(story::Story {
            gateway: loopback(args.port),
            admin: loopback(args.admin_port),
            token,
            faults,
            pace,
        })?;
    }
    let store = Arc::new(store) as Arc<dyn graylane_store::Store>;
    let source = ConfigSource::File(Box::new(Managed {
        path: config_path,
        watched: false,
        interval: Duration::from_secs(1),
        yaml,
        file_text: None,
        store,
        releasable: None,
        env: "default".to_owned(),
        offer: None,
        fleet: None,
    }));
    run_gateway(prepared, config, source)
}

/// A loopback address on `port`.
fn loopback(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

/// Seconds to a tenth, as the demo's text says them.
fn seconds(d: Duration) -> f64 {
    (d.as_secs_f64() * 10.0).round() / 10.0
}

/// A duration as the configuration writes it, exactly.
fn millis(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}
