//! How long a configuration with 10,000 services takes to load, and how much memory it holds:
//!
//! ```console
//! $ cargo run --release -p graylane-proxy --example load_10k [-- SERVICES]
//! ```
//!
//! It times parsing and validation (`graylane_config::load_str`), compiling the routing table,
//! starting a gateway (which compiles the table and builds the routing snapshot) and a reload
//! (`load_str` + `Gateway::apply`), and reads the resident set size after each step. It uses
//! mimalloc like the `graylane` binary, so the memory figures are a deployment's. The
//! configuration is the one the reliability suite routes through
//! (`tests/common/many_services.rs`). The goal for a release build is under 1 s and 200 MiB.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use graylane_proxy::{Gateway, GatewayOptions};
use graylane_rules::{RequestView, RoutingTable};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../tests/common/many_services.rs"]
mod many_services;

const GOAL_TIME: Duration = Duration::from_secs(1);
const GOAL_RSS_MIB: f64 = 200.0;

/// Resident set size in MiB, from `/proc/self/status` (Linux); `None` elsewhere.
fn rss_mib() -> Option<f64> {
    proc_status_mib("VmRSS:")
}

/// The peak resident set size so far, in MiB.
fn peak_rss_mib() -> Option<f64> {
    proc_status_mib("VmHWM:")
}

fn proc_status_mib(key: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

fn show(rss: Option<f64>) -> String {
    rss.map_or_else(|| "n/a".to_string(), |m| format!("{m:.1} MiB"))
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load_10k: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let count: usize = match std::env::args().nth(1) {
        Some(arg) => arg
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("`{arg}` is not a number of services (at least 1)"))?,
        None => 10_000,
    };
    let stable: SocketAddr = ([127, 0, 0, 1], 9001).into();
    let canary: SocketAddr = ([127, 0, 0, 1], 9002).into();
    let yaml = many_services::many_services_yaml(count, stable, canary);
    let load = |yaml: &str| {
        graylane_config::load_str(yaml, "10k.yaml", Path::new("."))
            .map_err(|e| format!("the generated configuration is invalid:\n{e}"))
    };
    let rss_start = rss_mib();

    let t = Instant::now();
    let config = load(&yaml)?;
    let parsed = t.elapsed();
    let rss_parsed = rss_mib();
    let t = Instant::now();
    let table = RoutingTable::compile(&config);
    let compiled = t.elapsed();
    drop(table);

    let t = Instant::now();
    let options = GatewayOptions {
        workers: 1,
        drain_timeout: Duration::from_secs(1),
        ..GatewayOptions::default()
    };
    let gateway = Gateway::start(config, options).map_err(|e| e.to_string())?;
    let started = t.elapsed();
    let rss_loaded = rss_mib();
    let peak_loaded = peak_rss_mib();

    let t = Instant::now();
    gateway.apply(load(&yaml)?);
    let reloaded = t.elapsed();
    let rss_reloaded = rss_mib();
    let peak_reloaded = peak_rss_mib();

    // The last service routes, by its own force rule.
    let snapshot = gateway.snapshot();
    let last = count - 1;
    let mut headers = http::HeaderMap::new();
    let phase =
        http::HeaderValue::from_str(&format!("canary-{last}")).map_err(|e| e.to_string())?;
    headers.insert("x-release-phase", phase);
    let path = format!("/svc/{last}/orders");
    let view = RequestView {
        method: &http::Method::GET,
        host: None,
        path: &path,
        query: None,
        headers: &headers,
        client_ip: [127, 0, 0, 1].into(),
        now_unix_ms: 0,
        trusted_lane: None,
        trusted: false,
        trusted_hops: &[],
        random: 0,
    };
    let t = Instant::now();
    let decision = snapshot
        .table
        .decide(&view)
        .ok_or_else(|| format!("no service matched {path}"))?;
    let decided = t.elapsed();
    let service = &snapshot.services[decision.service];
    let version = &service.versions[decision.version].name;
    if service.name != format!("svc-{last}") || version != "canary" {
        return Err(format!("{path} went to {}/{version}", service.name));
    }
    // Freed memory the allocator has not handed back yet counts in the RSS above; after a
    // pause the figure is closer to what the gateway keeps.
    std::thread::sleep(Duration::from_secs(1));
    let rss_settled = rss_mib();
    gateway.shutdown();

    let load_time = parsed + started;
    println!("{count} services, {} KiB of YAML", yaml.len() / 1024);
    println!("  parse + validate (load_str)  {parsed:>12.1?}");
    println!("  RoutingTable::compile        {compiled:>12.1?}");
    println!("  Gateway::start (compile, snapshot, bind)  {started:.1?}");
    println!("  load total (load_str + start) {load_time:>11.1?}");
    println!("  reload (load_str + apply)    {reloaded:>12.1?}");
    println!(
        "  route /svc/{last}: {}/{version} in {decided:.1?}",
        service.name
    );
    println!(
        "  RSS: {} at start, {} parsed, {} loaded (peak {}), {} after a reload (peak {})",
        show(rss_start),
        show(rss_parsed),
        show(rss_loaded),
        show(peak_loaded),
        show(rss_reloaded),
        show(peak_reloaded)
    );
    println!("  RSS 1 s later: {}", show(rss_settled));
    let verdict = |ok: bool| if ok { "met" } else { "missed" };
    // Memory is judged on the peak, reload included: that is what a memory limit has to allow
    // for, since `graylane serve` reloads whenever the file changes.
    println!(
        "  goal (release build): load < {GOAL_TIME:?}: {}; peak RSS < {GOAL_RSS_MIB} MiB: {}",
        verdict(load_time < GOAL_TIME),
        verdict(peak_reloaded.is_none_or(|m| m < GOAL_RSS_MIB))
    );
    Ok(())
}
