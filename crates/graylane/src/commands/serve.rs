//! `graylane serve`: the gateway, its admin listener, and hot reload (file changes and SIGHUP).
//! SIGTERM or Ctrl-C drains in-flight requests and exits 0.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use clap::Args;
use graylane_config::Config;
use graylane_proxy::{Gateway, GatewayOptions};
use tokio::signal::unix::{SignalKind, signal};

use crate::admin::{self, AdminState};
use crate::logging::{self, LogFormat};

#[derive(Args)]
pub struct ServeArgs {
    /// The configuration file.
    #[arg(short, long, default_value = "graylane.yaml")]
    pub config: PathBuf,
    /// Worker threads (default: one per core).
    #[arg(long)]
    pub workers: Option<usize>,
    #[arg(long, value_enum, default_value_t)]
    pub log_format: LogFormat,
    /// Log level or filter (RUST_LOG overrides it).
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// How long shutdown waits for in-flight requests.
    #[arg(long, default_value = "30s", value_parser = humantime_duration)]
    pub drain_timeout: Duration,
    /// How often the configuration file is checked for changes.
    #[arg(long, default_value = "1s", value_parser = humantime_duration)]
    pub watch_interval: Duration,
}

pub fn humantime_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}` is not a duration like 30s: {e}"))
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    logging::init(args.log_format, &args.log_level);
    let Some(config) = super::load_or_report(&args.config) else {
        return Ok(ExitCode::FAILURE);
    };
    let mut options = GatewayOptions {
        drain_timeout: args.drain_timeout,
        ..GatewayOptions::default()
    };
    if let Some(w) = args.workers {
        options.workers = w;
    }
    let source = ConfigSource::File {
        path: args.config.clone(),
        interval: args.watch_interval,
    };
    run_gateway(config, options, source)
}

/// Where reloads come from.
pub enum ConfigSource {
    File {
        path: PathBuf,
        interval: Duration,
    },
    /// A configuration built in memory (the demo): nothing to reload.
    Fixed,
}

/// Runs a gateway until SIGTERM/SIGINT, then drains it. Shared by `serve` and `demo`.
pub fn run_gateway(
    config: Config,
    options: GatewayOptions,
    source: ConfigSource,
) -> anyhow::Result<ExitCode> {
    let admin_addr = config.admin.as_ref().map(|a| a.bind);
    let gateway = Arc::new(Gateway::start(config, options.clone())?);
    for addr in gateway.local_addrs() {
        tracing::info!(%addr, workers = options.workers, "listening");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let state = Arc::new(AdminState {
        metrics: Arc::clone(gateway.metrics()),
        ready: AtomicBool::new(true),
    });
    let (mut term, mut int) = runtime.block_on(async {
        anyhow::Ok((
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        ))
    })?;
    let watcher = runtime.block_on(async {
        if let Some(addr) = admin_addr {
            let listener = admin::bind(addr).await?;
            tracing::info!(%addr, "admin listening");
            tokio::spawn(admin::serve(listener, Arc::clone(&state)));
        }
        let watcher = match &source {
            ConfigSource::File { path, interval } => Some(tokio::spawn(watch_file(
                Arc::clone(&gateway),
                path.clone(),
                *interval,
            ))),
            ConfigSource::Fixed => None,
        };
        let mut hup = signal(SignalKind::hangup())?;
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    if let ConfigSource::File { path, .. } = &source {
                        tracing::info!("SIGHUP: reloading {}", path.display());
                        reload(&gateway, path);
                    }
                }
            }
        }
        anyhow::Ok(watcher)
    })?;
    tracing::info!("shutting down: draining in-flight requests");
    state.ready.store(false, Ordering::Relaxed);
    // Drain with the runtime still running, so the admin listener keeps answering (/readyz is
    // 503 from now on) until the gateway has stopped.
    let drained = runtime.block_on(async move {
        // The watcher holds a reference to the gateway; stop it so the gateway can be drained.
        if let Some(watcher) = watcher {
            watcher.abort();
            let _ = watcher.await;
        }
        let Ok(gateway) = Arc::try_unwrap(gateway) else {
            tracing::warn!("gateway still referenced at shutdown; exiting without drain");
            return true;
        };
        let drain = tokio::task::spawn_blocking(move || gateway.shutdown());
        // A second SIGTERM or Ctrl-C means "stop now", as people expect of a server.
        tokio::select! {
            _ = drain => true,
            _ = term.recv() => false,
            _ = int.recv() => false,
        }
    });
    if !drained {
        tracing::warn!("second signal: exiting without waiting for in-flight requests");
        std::process::exit(1);
    }
    drop(runtime);
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

fn reload(gateway: &Gateway, path: &Path) {
    match gateway.reload_from(path) {
        Ok(()) => tracing::info!(
            generation = gateway.snapshot().generation,
            "configuration reloaded from {}",
            path.display()
        ),
        Err(errors) => {
            for e in &errors.errors {
                tracing::error!("reload rejected, the previous configuration keeps serving: {e}");
            }
        }
    }
}

/// Reloads when the file's contents change. Polling (rather than inotify) also catches
/// editors and config-management tools that replace the file by renaming over it.
async fn watch_file(gateway: Arc<Gateway>, path: PathBuf, interval: Duration) {
    let stamp = |p: &Path| -> Option<(SystemTime, u64)> {
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len()))
    };
    let mut last_stamp = stamp(&path);
    let mut last_text = std::fs::read(&path).ok();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let now = stamp(&path);
        if now == last_stamp {
            continue;
        }
        last_stamp = now;
        let text = std::fs::read(&path).ok();
        if text.is_none() || text == last_text {
            continue;
        }
        last_text = text;
        tracing::info!("{} changed: reloading", path.display());
        reload(&gateway, &path);
    }
}
