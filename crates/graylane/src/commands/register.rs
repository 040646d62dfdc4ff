//! `graylane register`: puts one instance of a service in the etcd service registry under a
//! lease, keeps it alive until SIGTERM or Ctrl-C, then revokes the lease so the instance leaves
//! every gateway's rotation at once. Apps that register themselves write the same key
//! (README, "Service registry").

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use etcd_client::Client;
use graylane_etcd::registry::{self, Instance};
use tokio::signal::unix::{SignalKind, signal};

use crate::logging::{self, LogColor, LogFormat};

/// How long the first registration is tried before the command gives up.
const FIRST_REGISTRATION: Duration = Duration::from_secs(5);

#[derive(Args)]
pub(crate) struct RegisterArgs {
    #[command(flatten)]
    pub etcd: super::fleet::EtcdArgs,
    /// The registry service this is an instance of (what `endpoints: { registry: NAME }` names).
    #[arg(long, value_parser = parse_name)]
    pub service: String,
    /// Where gateways reach the instance.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_address)]
    pub address: SocketAddr,
    /// A label a version's selector can match, e.g. `--label version=canary --label zone=a`.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// `0` keeps the instance registered but out of rotation (draining).
    #[arg(long)]
    pub weight: Option<u32>,
    /// The instance's id, unique within the service (default: HOSTNAME-PORT).
    #[arg(long, value_parser = parse_name)]
    pub id: Option<String>,
    /// How long the instance stays registered after this process stops renewing its lease
    /// (killed without a chance to deregister).
    #[arg(long, default_value = "10s", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// Log lines as text or as one JSON object per line.
    #[arg(long, value_enum, default_value_t)]
    pub log_format: LogFormat,
    /// Colour in text logs: on a terminal without NO_COLOR (auto), always, or never.
    #[arg(long, value_enum, default_value_t)]
    pub log_color: LogColor,
    /// Log level or filter (RUST_LOG overrides it).
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

fn parse_name(s: &str) -> Result<String, String> {
    if registry::is_valid_name(s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "`{s}` may hold only letters, digits, `-`, `_` and `.`"
        ))
    }
}

fn parse_address(s: &str) -> Result<SocketAddr, String> {
    let addr = match s.parse::<SocketAddr>() {
        Ok(addr) => addr,
        Err(_) => s
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| format!("`{s}` is not a reachable HOST:PORT (e.g. 10.0.0.5:9000)"))?,
    };
    if addr.ip().is_unspecified() || addr.port() == 0 {
        return Err(format!(
            "`{s}` cannot be reached: give the address and port gateways connect to"
        ));
    }
    Ok(addr)
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((key, value)) if !key.is_empty() && !value.is_empty() => {
            Ok((key.to_string(), value.to_string()))
        }
        _ => Err(format!(
            "`{s}` is not KEY=VALUE with both parts non-empty (e.g. version=canary)"
        )),
    }
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let ttl = super::serve::humantime_duration(s)?;
    if ttl < Duration::from_secs(1) {
        return Err(format!("`{s}` is shorter than etcd's shortest lease, 1s"));
    }
    Ok(ttl)
}

/// `HOSTNAME-PORT`, with anything a key segment may not hold replaced by `-`; the address when
/// the host name is unknown.
fn default_id(address: SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| address.ip().to_string());
    format!("{host}-{}", address.port())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

pub(crate) fn run(args: RegisterArgs) -> anyhow::Result<ExitCode> {
    logging::init(args.log_format, args.log_color, &args.log_level);
    let runtime = crate::runtime::control_plane()?;
    runtime.block_on(register(args))
}

async fn register(args: RegisterArgs) -> anyhow::Result<ExitCode> {
    // Listening first: a signal that arrives while registering still deregisters.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let options = args.etcd.options(Duration::from_secs(5))?;
    let endpoints = options.endpoints.join(",");
    let client = Client::connect(&options.endpoints, Some(options.connect_options()?))
        .await
        .map_err(|e| anyhow::anyhow!("--etcd {endpoints}: {e}"))?;
    let instance = Instance {
        id: args.id.unwrap_or_else(|| default_id(args.address)),
        address: args.address,
        labels: args.labels.into_iter().collect::<BTreeMap<_, _>>(),
        weight: args.weight,
    };
    let address = instance.address;
    // With several endpoints a call may land on one that is down: try again for a while
    // before giving up.
    let deadline = tokio::time::Instant::now() + FIRST_REGISTRATION;
    let registration = loop {
        let attempt = registry::register(
            client.clone(),
            &options.prefix,
            &args.service,
            instance.clone(),
            args.ttl,
        );
        let result = tokio::select! {
            result = attempt => result,
            _ = term.recv() => return Ok(ExitCode::SUCCESS),
            _ = int.recv() => return Ok(ExitCode::SUCCESS),
        };
        match result {
            Ok(registration) => break registration,
            Err(e) if tokio::time::Instant::now() >= deadline => {
                anyhow::bail!("registering in etcd ({endpoints}) failed: {e}")
            }
            Err(e) => {
                tracing::warn!("registering failed, trying again: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    tracing::info!(
        key = registration.key(),
        %address,
        ttl = ?args.ttl,
        "registered; SIGTERM or Ctrl-C deregisters"
    );
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    let key = registration.key().to_string();
    match registration.deregister().await {
        Ok(()) => {
            tracing::info!(%key, "deregistered");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => anyhow::bail!(
            "could not deregister {key} ({e}); it leaves when its lease expires, within {:?}",
            args.ttl
        ),
    }
}
