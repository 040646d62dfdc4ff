//! `graylane serve`: the gateway, its admin listener, and hot reload (file changes and SIGHUP).
//! SIGTERM or Ctrl-C drains in-flight requests and exits 0.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use clap::Args;
use graylane_analysis::Histogram;
use graylane_config::Config;
use graylane_controller::metrics::ReleaseCollector;
use graylane_controller::{ControlError, Controller, DataPlane, Observation, Setup};
use graylane_notify::{Notifier, WebhookTarget};
use graylane_proxy::{Gateway, GatewayOptions};
use graylane_rules::Routing;
use graylane_store::{RedbStore, Store};
use tokio::signal::unix::{SignalKind, signal};

use crate::admin::auth::Tokens;
use crate::admin::{self, AdminState};
use crate::logging::{self, LogFormat};

#[derive(Args)]
pub struct ServeArgs {
    /// The configuration file.
    #[arg(short, long, default_value = "graylane.yaml")]
    pub config: PathBuf,
    /// Where revisions, release state and the audit log are kept (created if missing).
    #[arg(long, default_value = "graylane-data")]
    pub data_dir: PathBuf,
    /// The environment (e.g. prod, staging): its own revisions and releases in the store.
    #[arg(long, default_value = "default")]
    pub env: String,
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
    if args.env.is_empty()
        || !args
            .env
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        anyhow::bail!(
            "--env `{}` is not a valid environment name: use letters, digits, `-`, `_` and `.`",
            args.env
        );
    }
    let yaml = std::fs::read_to_string(&args.config)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", args.config.display()))?;
    let config = match graylane_config::load_text_for(&yaml, &args.config) {
        Ok(config) => config,
        Err(errors) => {
            for e in &errors.errors {
                eprintln!("error: {e}");
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    let store = RedbStore::open(&args.data_dir)?;
    let mut options = GatewayOptions {
        drain_timeout: args.drain_timeout,
        ..GatewayOptions::default()
    };
    if let Some(w) = args.workers {
        options.workers = w;
    }
    let source = ConfigSource::File(Managed {
        path: args.config.clone(),
        interval: args.watch_interval,
        yaml,
        store: Arc::new(store),
        env: args.env,
    });
    run_gateway(config, options, source)
}

/// Where the configuration comes from, and whether a controller runs.
pub enum ConfigSource {
    /// A file, watched and reloaded; revisions and releases in a store.
    File(Managed),
    /// A configuration built in memory (the demo): nothing to reload, no controller.
    Fixed,
}

pub struct Managed {
    pub path: PathBuf,
    pub interval: Duration,
    /// The file's text at start.
    pub yaml: String,
    pub store: Arc<dyn Store>,
    pub env: String,
}

/// The gateway as the controller's data plane.
struct GatewayPlane(Arc<Gateway>);

impl DataPlane for GatewayPlane {
    fn apply(&self, config: Config, routes: &BTreeMap<String, Routing>) {
        self.0.apply_with_routes(config, routes);
    }

    fn set_routing(&self, service: &str, routing: Routing) {
        if let Err(e) = self.0.set_routing(service, routing) {
            tracing::error!("cannot route the release: {e}");
        }
    }

    fn observe(&self, service: &str, version: &str) -> Observation {
        let o = self.0.metrics().observe(service, version);
        Observation {
            codes: o.codes,
            latency: Histogram::from_counts(&o.latency),
            bucketed: o.bucketed,
        }
    }

    fn circuit_states(&self, service: &str) -> BTreeMap<String, &'static str> {
        self.0.circuit_states(service)
    }

    fn assign(&self, service: &str, key: &str) -> Option<String> {
        let snapshot = self.0.snapshot();
        let table = &snapshot.table;
        let s = table.service_index(service)?;
        let v = table.assign(s, key)?;
        Some(table.version_name(s, v).to_string())
    }
}

/// Runs a gateway until SIGTERM/SIGINT, then drains it. Shared by `serve` and `demo`.
pub fn run_gateway(
    config: Config,
    options: GatewayOptions,
    source: ConfigSource,
) -> anyhow::Result<ExitCode> {
    let admin = config.admin.clone();
    let webhooks = config.webhooks.clone();
    let gateway = Arc::new(Gateway::start(config.clone(), options.clone())?);
    for addr in gateway.local_addrs() {
        tracing::info!(%addr, workers = options.workers, "listening");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut term, mut int) = runtime.block_on(async {
        anyhow::Ok((
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        ))
    })?;
    let (controller, notifier, path) = match source {
        ConfigSource::Fixed => (None, None, None),
        ConfigSource::File(m) => runtime.block_on(async {
            let notifier = (!webhooks.is_empty()).then(|| {
                Notifier::start(
                    webhooks
                        .iter()
                        .map(|w| WebhookTarget {
                            url: w.url.clone(),
                            timeout: w.timeout,
                            retries: w.retries,
                            backoff: WebhookTarget::DEFAULT_BACKOFF,
                        })
                        .collect(),
                )
            });
            let controller = Controller::open(Setup {
                env: m.env.clone(),
                config_path: m.path.clone(),
                store: m.store,
                plane: Arc::new(GatewayPlane(Arc::clone(&gateway))),
                notifier: notifier.clone(),
                yaml: m.yaml,
                config,
                now_ms: now_ms(),
            })?;
            tracing::info!(env = %m.env, revision = controller.current().0, "controller ready");
            anyhow::Ok((
                Some(Arc::new(controller)),
                notifier,
                Some((m.path, m.interval)),
            ))
        })?,
    };
    if let Some(c) = &controller {
        gateway.metrics().add_collector(Arc::new(ReleaseCollector {
            controller: Arc::clone(c),
            notifier: notifier.clone(),
            now_ms,
        }));
    }
    let state = Arc::new(AdminState {
        metrics: Arc::clone(gateway.metrics()),
        ready: AtomicBool::new(true),
        controller: controller.clone(),
        gateway: Arc::clone(&gateway),
        tokens: Tokens::from_env(admin.as_ref().map_or(&[][..], |a| &a.tokens)),
    });
    let background = runtime.block_on(async {
        let mut tasks = Vec::new();
        if let Some(a) = &admin {
            let listener = admin::bind(a.bind).await?;
            tracing::info!(addr = %a.bind, "admin listening");
            tasks.push(tokio::spawn(admin::serve(
                listener,
                Arc::clone(&state),
                a.into(),
            )));
        }
        if let (Some(c), Some((path, interval))) = (&controller, &path) {
            tasks.push(tokio::spawn(tick_releases(Arc::clone(c))));
            tasks.push(tokio::spawn(watch_file(
                Arc::clone(c),
                Arc::clone(&gateway),
                path.clone(),
                *interval,
            )));
        }
        let mut hup = signal(SignalKind::hangup())?;
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    if let (Some(c), Some((path, _))) = (&controller, &path) {
                        tracing::info!("SIGHUP: reloading {}", path.display());
                        reload(c, &gateway, path).await;
                    }
                }
            }
        }
        anyhow::Ok(tasks)
    })?;
    tracing::info!("shutting down: draining in-flight requests");
    state.ready.store(false, Ordering::Relaxed);
    // Drain with the runtime still running, so the admin listener keeps answering (/readyz is
    // 503 from now on) until the gateway has stopped.
    let drained = runtime.block_on(async move {
        let drain = tokio::task::spawn_blocking({
            let gateway = Arc::clone(&gateway);
            move || gateway.shutdown()
        });
        // A second SIGTERM or Ctrl-C means "stop now", as people expect of a server.
        let drained = tokio::select! {
            _ = drain => true,
            _ = term.recv() => false,
            _ = int.recv() => false,
        };
        if let Some(n) = &notifier
            && !n.flush(Duration::from_secs(2)).await
        {
            tracing::warn!("some webhook events were not delivered before exit");
        }
        for task in background {
            task.abort();
        }
        drained
    });
    if !drained {
        tracing::warn!("second signal: exiting without waiting for in-flight requests");
        std::process::exit(1);
    }
    drop(runtime);
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

pub fn now_ms() -> i64 {
    crate::admin::api::now_ms()
}

/// Moves releases whose timed pause is over and runs the analyses whose interval is up. A short
/// period keeps a step's start (and a verdict) within a fraction of a second of its due time
/// without a timer per release.
async fn tick_releases(controller: Arc<Controller>) {
    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let c = Arc::clone(&controller);
        let _ = tokio::task::spawn_blocking(move || {
            c.tick(now_ms());
            c.analyze(now_ms());
            c.sample_series(now_ms());
        })
        .await;
    }
}

async fn reload(controller: &Arc<Controller>, gateway: &Gateway, path: &Path) {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            gateway.metrics().record_reload(false);
            tracing::error!(
                "reload rejected, the previous configuration keeps serving: cannot read {}: {e}",
                path.display()
            );
            return;
        }
    };
    let c = Arc::clone(controller);
    let outcome = tokio::task::spawn_blocking(move || c.file_changed(text, now_ms())).await;
    match outcome {
        Ok(Ok(Some(revision))) => {
            gateway.metrics().record_reload(true);
            tracing::info!(
                revision,
                generation = gateway.snapshot().generation,
                "configuration reloaded from {}",
                path.display()
            );
        }
        Ok(Ok(None)) => tracing::info!("{} is unchanged", path.display()),
        Ok(Err(ControlError::Invalid(errors))) => {
            gateway.metrics().record_reload(false);
            for e in &errors.errors {
                tracing::error!("reload rejected, the previous configuration keeps serving: {e}");
            }
        }
        Ok(Err(e)) => {
            gateway.metrics().record_reload(false);
            tracing::error!("reload failed, the previous configuration keeps serving: {e}");
        }
        Err(e) => tracing::error!("reload did not finish: {e}"),
    }
}

/// Reloads when the file's contents change. Polling (rather than inotify) also catches
/// editors and config-management tools that replace the file by renaming over it.
async fn watch_file(
    controller: Arc<Controller>,
    gateway: Arc<Gateway>,
    path: PathBuf,
    interval: Duration,
) {
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
        reload(&controller, &gateway, &path).await;
    }
}
