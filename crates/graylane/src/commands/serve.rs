//! `graylane serve`: the gateway, its admin listener, and hot reload (file changes and SIGHUP).
//! SIGTERM or Ctrl-C drains in-flight requests and exits 0; `--takeover` replaces the process
//! running on the same data directory without losing a request ([`super::takeover`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use clap::Args;
use graylane_analysis::Histogram;
use graylane_config::Config;
use graylane_controller::fleet::{RouteFigures, UnitHashes};
use graylane_controller::metrics::ReleaseCollector;
use graylane_controller::{
    ControlError, Controller, DataPlane, Observation, Reloaded, Setup, webhook_targets,
};
use graylane_notify::Notifier;
use graylane_proxy::{Gateway, GatewayOptions};
use graylane_rules::Routing;
use tokio::signal::unix::{SignalKind, signal};

use crate::admin::auth::Tokens;
use crate::admin::{self, AdminState};
use crate::logging::{self, LogFormat};

use super::takeover::{self, Predecessor, ReleasableStore, Successor};

/// How long `--takeover` waits for the running process to close the store.
const RELEASE_WAIT: Duration = Duration::from_secs(15);
/// How long `--takeover` then retries opening the store while it is still locked.
const STORE_WAIT: Duration = Duration::from_secs(10);
/// How long a process being taken over lets its admin requests finish before it closes the
/// store under them.
const ADMIN_DRAIN: Duration = Duration::from_secs(5);

#[derive(Args)]
pub struct ServeArgs {
    /// The configuration file (default graylane.yaml). With --etcd it is optional: given, it is
    /// pushed to the fleet as a new revision whenever it changes; without it, the node serves
    /// the revision etcd holds.
    #[arg(short, long)]
    pub config: Option<PathBuf>,
    /// Where revisions, release state and the audit log are kept (created if missing). A fleet
    /// node (--etcd) keeps them in etcd, and only its Redis segments' last members here.
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
    /// Take the listening sockets and the store over from the graylane running with the same
    /// --data-dir, which then answers the requests it has, closes its connections and exits 0:
    /// an upgrade or restart that refuses no connection.
    #[arg(long)]
    pub takeover: bool,
    #[command(flatten)]
    pub fleet: super::fleet::FleetArgs,
}

pub fn humantime_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}` is not a duration like 30s: {e}"))
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    logging::init(args.log_format, &args.log_level);
    check_name("--env", "environment", &args.env)?;
    if !args.fleet.etcd.etcd.is_empty() {
        return super::fleet::run(args);
    }
    args.fleet.refuse_without_etcd()?;
    let config_path = args
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from("graylane.yaml"));
    let yaml = std::fs::read_to_string(&config_path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", config_path.display()))?;
    let config = match graylane_config::load_text_for(&yaml, &config_path) {
        Ok(config) => config,
        Err(errors) => {
            for e in &errors.errors {
                eprintln!("error: {e}");
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    let outside = graylane_controller::registry_outside_a_fleet(&config, &config_path);
    if !outside.is_empty() {
        for e in &outside {
            eprintln!("error: {e}");
        }
        return Ok(ExitCode::FAILURE);
    }
    // The key file is written next to the store, so it is only made once the store opened:
    // a data dir that is refused is left as it was.
    let cookie_keys = || {
        graylane_proxy::cookie_keys::load(
            std::env::var(graylane_proxy::cookie_keys::ENV)
                .ok()
                .as_deref(),
            &args.data_dir,
        )
        .map(Some)
    };
    let mut options = GatewayOptions {
        drain_timeout: args.drain_timeout,
        segment_cache: Some(args.data_dir.join("segments")),
        ..GatewayOptions::default()
    };
    if let Some(w) = args.workers {
        options.workers = w;
    }
    // Without --takeover the store comes first: it is the lock on the data directory. With it,
    // everything that can fail is set up before the running process is told to stop accepting;
    // only then is the store free to open.
    let (prepared, store) = if args.takeover {
        // The running process made the key file already.
        options.cookie_keys = cookie_keys()?;
        let mut predecessor = Predecessor::connect(&args.data_dir)?;
        let admin = config
            .admin
            .as_ref()
            .and_then(|a| predecessor.take_admin(a.bind));
        let listeners = std::mem::take(&mut predecessor.listeners);
        let prepared = Prepared::bind(&config, options, listeners, admin)?;
        predecessor.drain(RELEASE_WAIT)?;
        tracing::info!("the running process released the store: taking over");
        (prepared, takeover::open_store(&args.data_dir, STORE_WAIT)?)
    } else {
        let store = takeover::open_store(&args.data_dir, Duration::ZERO)?;
        options.cookie_keys = cookie_keys()?;
        (Prepared::bind(&config, options, Vec::new(), None)?, store)
    };
    // Serving matters more than being replaceable: without the socket (a data dir path too long
    // for one, say), serve on and say why a takeover will not work.
    let offer = takeover::listen(&args.data_dir)
        .inspect_err(|e| {
            tracing::warn!("`serve --takeover` will not be able to replace this process: {e:#}")
        })
        .ok();
    let store = Arc::new(ReleasableStore::new(store, &args.data_dir));
    let source = ConfigSource::File(Box::new(Managed {
        path: config_path,
        watched: true,
        interval: args.watch_interval,
        yaml,
        file_text: None,
        store: Arc::clone(&store) as Arc<dyn graylane_store::Store>,
        releasable: Some(store),
        env: args.env,
        offer,
        fleet: None,
    }));
    run_gateway(prepared, config, source)
}

/// Refuses a name (`--env`, `--node`) that could not be a key segment in the store.
pub fn check_name(flag: &str, what: &str, value: &str) -> anyhow::Result<()> {
    if value.is_empty()
        || !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        anyhow::bail!(
            "{flag} `{value}` is not a valid {what} name: use letters, digits, `-`, `_` and `.`"
        );
    }
    Ok(())
}

/// The gateway and the admin listener, bound (or taken over) but not accepting yet.
pub struct Prepared {
    gateway: Gateway,
    admin: Option<std::net::TcpListener>,
    workers: usize,
}

impl Prepared {
    /// Binds what `config` listens on, except the addresses of the sockets `listeners` and
    /// `admin` taken over from a running process.
    pub fn bind(
        config: &Config,
        options: GatewayOptions,
        listeners: Vec<std::net::TcpListener>,
        admin: Option<std::net::TcpListener>,
    ) -> anyhow::Result<Prepared> {
        let workers = options.workers;
        let gateway = Gateway::prepare(config.clone(), options, listeners)?;
        let admin = match (&config.admin, admin) {
            (None, _) => None,
            (Some(_), Some(inherited)) => Some(inherited),
            (Some(a), None) => Some(admin::bind(a.bind)?),
        };
        Ok(Prepared {
            gateway,
            admin,
            workers,
        })
    }
}

/// Where the configuration comes from, and whether a controller runs.
pub enum ConfigSource {
    /// A file, watched and reloaded; revisions and releases in a store.
    File(Box<Managed>),
    /// A configuration built in memory (the demo): nothing to reload, no controller.
    Fixed,
}

pub struct Managed {
    /// The configuration file; relative segment files are found from its folder.
    pub path: PathBuf,
    /// Whether the file is watched and reloaded (a fleet node without `--config` has none).
    pub watched: bool,
    pub interval: Duration,
    /// The configuration's text at start.
    pub yaml: String,
    /// The file's text at start when that is not `yaml` (see `Setup::file_text`).
    pub file_text: Option<String>,
    pub store: Arc<dyn graylane_store::Store>,
    /// The embedded store, which a `--takeover` successor asks to be closed.
    pub releasable: Option<Arc<ReleasableStore>>,
    pub env: String,
    /// Where a successor can take over (`serve --takeover`).
    pub offer: Option<std::os::unix::net::UnixListener>,
    /// A fleet node's membership and what it hears from the other nodes.
    pub fleet: Option<super::fleet::FleetNode>,
}

/// The gateway as the controller's data plane.
pub struct GatewayPlane {
    gateway: Arc<Gateway>,
    /// What differs on this node from the configuration every node shares.
    local: super::fleet::NodeLocal,
    /// The shared configuration last applied, to apply again with this node's adjustments
    /// when they change (the registry's instances come and go); the lock also orders those
    /// applies with the controller's.
    shared: std::sync::Mutex<Option<Config>>,
}

impl GatewayPlane {
    pub fn new(gateway: Arc<Gateway>, local: super::fleet::NodeLocal) -> GatewayPlane {
        GatewayPlane {
            gateway,
            local,
            shared: std::sync::Mutex::new(None),
        }
    }

    /// Applies the last configuration again with this node's adjustments as they are now,
    /// keeping every release's traffic split.
    pub fn adjusted(&self) {
        let shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(config) = shared.as_ref() {
            self.gateway.apply(self.local.adjust(config.clone()));
        }
    }
}

impl DataPlane for GatewayPlane {
    fn apply(&self, config: Config, routes: &BTreeMap<String, Routing>) {
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        self.gateway
            .apply_with_routes(self.local.adjust(config.clone()), routes);
        *shared = Some(config);
    }

    fn set_routing(&self, service: &str, routing: Routing) {
        if let Err(e) = self.gateway.set_routing(service, routing) {
            tracing::error!("cannot route the release: {e}");
        }
    }

    fn observe(&self, service: &str, version: &str) -> Observation {
        observation(self.gateway.metrics().observe(service, version))
    }

    fn units(&self, service: &str, versions: &[&str]) -> (Vec<u64>, u32) {
        self.gateway.metrics().distinct_units(service, versions)
    }

    fn circuit_states(&self, service: &str) -> BTreeMap<String, &'static str> {
        self.gateway.circuit_states(service)
    }

    fn assign(&self, service: &str, key: &str) -> Option<String> {
        let snapshot = self.gateway.snapshot();
        let table = &snapshot.table;
        let s = table.service_index(service)?;
        let v = table.assign(s, key)?;
        Some(table.version_name(s, v).to_string())
    }

    fn local_figures(&self) -> Vec<RouteFigures> {
        self.gateway
            .metrics()
            .export()
            .into_iter()
            .map(|e| RouteFigures {
                service: e.service,
                version: e.version,
                observation: observation(e.observed),
                units: e.units.map(unit_hashes),
            })
            .collect()
    }

    fn local_units(&self, service: &str, version: &str) -> Option<UnitHashes> {
        self.gateway
            .metrics()
            .unit_hashes(service, version)
            .map(unit_hashes)
    }
}

fn observation(o: graylane_proxy::Observed) -> Observation {
    Observation {
        codes: o.codes,
        latency: Histogram::from_counts(&o.latency),
        bucketed: o.bucketed,
        events: BTreeMap::new(),
    }
}

fn unit_hashes(u: graylane_proxy::UnitHashes) -> UnitHashes {
    UnitHashes {
        level: u.level,
        hashes: u.hashes,
    }
}

/// Why serving ends.
enum Stop {
    /// SIGTERM or Ctrl-C: stop accepting, drain, exit.
    Signal,
    /// A new process has the listening sockets: let it accept, close the store, drain, exit.
    TakenOver(Successor),
}

/// Runs a gateway until SIGTERM/SIGINT or a takeover, then drains it. Shared by `serve` and
/// `demo`.
pub fn run_gateway(
    prepared: Prepared,
    config: Config,
    source: ConfigSource,
) -> anyhow::Result<ExitCode> {
    let Prepared {
        gateway,
        admin: admin_socket,
        workers,
    } = prepared;
    let tokens = Tokens::from_env(config.admin.as_ref().map_or(&[][..], |a| &a.tokens));
    let admin_limits = config.admin.as_ref().map(admin::Limits::from);
    let gateway = Arc::new(gateway);
    for addr in gateway.local_addrs() {
        tracing::info!(%addr, workers, "listening");
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
    let (controller, notifier, path, store, offer, fleet) = match source {
        ConfigSource::Fixed => (None, None, None, None, None, None),
        ConfigSource::File(m) => runtime.block_on(async {
            // Always started, even with no webhooks: a reload may add some.
            let notifier = Some(Notifier::start(webhook_targets(&config)));
            let local = m
                .fleet
                .as_ref()
                .map(|f| f.local.clone())
                .unwrap_or_default();
            let gateway_plane = Arc::new(GatewayPlane::new(Arc::clone(&gateway), local));
            let plane = super::fleet::plane(Arc::clone(&gateway_plane), m.fleet.as_ref());
            let controller = Controller::open(Setup {
                env: m.env.clone(),
                config_path: m.path.clone(),
                fleet: m.fleet.is_some(),
                store: Arc::clone(&m.store),
                plane: Arc::clone(&plane),
                notifier: notifier.clone(),
                yaml: m.yaml,
                file_text: m.file_text,
                config,
                now_ms: now_ms(),
            })?;
            tracing::info!(env = %m.env, revision = controller.current_revision(), "controller ready");
            anyhow::Ok((
                Some(Arc::new(controller)),
                notifier,
                m.watched.then_some((m.path, m.interval)),
                m.releasable,
                m.offer,
                m.fleet.map(|f| (f, gateway_plane)),
            ))
        })?,
    };
    let (fleet, fleet_node) = match fleet {
        Some((node, gateway_plane)) => (
            Some(node.fleet),
            Some((
                node.events,
                node.observations,
                node.incarnation,
                (node.registry, gateway_plane),
            )),
        ),
        None => (None, None),
    };
    if let Some(c) = &controller {
        gateway.metrics().add_collector(Arc::new(ReleaseCollector {
            controller: Arc::clone(c),
            notifier: notifier.clone(),
            now_ms,
        }));
    }
    if let (Some(c), Some(f)) = (&controller, &fleet) {
        gateway
            .metrics()
            .add_collector(Arc::new(super::fleet::FleetCollector {
                fleet: Arc::clone(f),
                controller: Arc::clone(c),
            }));
    }
    // The release state is applied: the first request (and the connections queued meanwhile)
    // is routed with it.
    gateway.start_accepting();
    let state = Arc::new(AdminState {
        metrics: Arc::clone(gateway.metrics()),
        ready: AtomicBool::new(true),
        controller: controller.clone(),
        gateway: Arc::clone(&gateway),
        tokens,
        fleet: fleet.clone(),
    });
    // Kept to hand the admin listener over along with the others.
    let admin_dup = admin_socket.as_ref().map(|s| s.try_clone()).transpose()?;
    let offer_path = offer
        .as_ref()
        .and_then(|o| o.local_addr().ok()?.as_pathname().map(Path::to_path_buf));
    let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let (background, admin_task, stop) = runtime.block_on(async {
        let mut tasks = Vec::new();
        let admin_task = match (admin_socket, admin_limits) {
            (Some(socket), Some(limits)) => {
                socket.set_nonblocking(true)?;
                let listener = tokio::net::TcpListener::from_std(socket)?;
                tracing::info!(addr = %listener.local_addr()?, "admin listening");
                let stopped = async move {
                    let _ = admin_stopped.await;
                };
                Some(tokio::spawn(admin::serve(
                    listener,
                    Arc::clone(&state),
                    limits,
                    stopped,
                )))
            }
            _ => None,
        };
        if let Some(c) = &controller {
            tasks.push(tokio::spawn(tick_releases(Arc::clone(c), fleet.clone())));
        }
        if let (Some(c), Some(f), Some((events, observations, incarnation, (registry, plane)))) =
            (&controller, &fleet, fleet_node)
        {
            tasks.push(tokio::spawn(super::fleet::follow_registry(registry, plane)));
            tasks.push(tokio::spawn(super::fleet::follow(
                Arc::clone(c),
                events,
                observations,
            )));
            tasks.push(tokio::spawn(super::fleet::publish(
                Arc::clone(c),
                Arc::clone(f),
                incarnation,
                Arc::clone(&state),
            )));
        }
        if let (Some(c), Some((path, interval))) = (&controller, &path) {
            tasks.push(tokio::spawn(watch_file(
                Arc::clone(c),
                Arc::clone(&gateway),
                path.clone(),
                *interval,
            )));
        }
        let offer = offer.map(tokio::net::UnixListener::from_std).transpose()?;
        let successor = async {
            match offer {
                Some(offer) => {
                    takeover::wait_for_successor(offer, || {
                        let admin = admin_dup.as_ref().map(|s| s.try_clone()).transpose()?;
                        Ok((gateway.listening_sockets()?, admin))
                    })
                    .await
                }
                None => std::future::pending().await,
            }
        };
        tokio::pin!(successor);
        let mut hup = signal(SignalKind::hangup())?;
        let stop = loop {
            tokio::select! {
                _ = term.recv() => break Stop::Signal,
                _ = int.recv() => break Stop::Signal,
                s = &mut successor => break Stop::TakenOver(s),
                _ = hup.recv() => {
                    if let (Some(c), Some((path, _))) = (&controller, &path) {
                        tracing::info!("SIGHUP: reloading {}", path.display());
                        reload(c, &gateway, path).await;
                    }
                }
            }
        };
        anyhow::Ok((tasks, admin_task, stop))
    })?;
    drop(admin_dup);
    state.ready.store(false, Ordering::Relaxed);
    if let Some(f) = &fleet {
        // Leaving at once lets another node lead now rather than after the lease's TTL.
        f.leave();
    }
    let drained = runtime.block_on(async move {
        let mut background = background;
        let mut admin_task = admin_task;
        match stop {
            Stop::Signal => {
                tracing::info!("shutting down: draining in-flight requests");
                // No successor can take over a process that stops accepting.
                if let Some(p) = &offer_path {
                    let _ = std::fs::remove_file(p);
                }
            }
            Stop::TakenOver(successor) => {
                tracing::info!(
                    "a new process took the listeners over: closing the store, then draining in-flight requests"
                );
                let handing = Arc::clone(&gateway);
                let _ = tokio::task::spawn_blocking(move || handing.hand_over()).await;
                let _ = admin_stop.send(());
                for task in background.drain(..) {
                    task.abort();
                }
                if let Some(task) = admin_task.take()
                    && tokio::time::timeout(ADMIN_DRAIN, task).await.is_err()
                {
                    tracing::warn!("admin requests still running after {ADMIN_DRAIN:?}: closing the store under them");
                }
                if let Some(store) = &store {
                    let store = Arc::clone(store);
                    let _ = tokio::task::spawn_blocking(move || store.release()).await;
                }
                successor.released().await;
            }
        }
        // Drain with the runtime still running, so the admin listener keeps answering (/readyz
        // is 503 from now on) until the gateway has stopped.
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
        for task in background.into_iter().chain(admin_task) {
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
/// without a timer per release. In a fleet only the leader does this.
async fn tick_releases(controller: Arc<Controller>, fleet: Option<Arc<graylane_etcd::Fleet>>) {
    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let c = Arc::clone(&controller);
        let fleet = fleet.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let leads = fleet.as_ref().is_none_or(|f| f.is_leader());
            if leads {
                if fleet.is_some() {
                    c.save_pending(now_ms());
                }
                c.tick(now_ms());
                c.analyze(now_ms());
            }
            c.sample_series(now_ms());
        })
        .await;
    }
}

async fn reload(controller: &Arc<Controller>, gateway: &Gateway, path: &Path) {
    let c = Arc::clone(controller);
    let outcome = tokio::task::spawn_blocking(move || c.file_changed(now_ms())).await;
    match outcome {
        Ok(Ok(Reloaded::Revision(revision))) => {
            gateway.metrics().record_reload(true);
            tracing::info!(
                revision,
                generation = gateway.snapshot().generation,
                "configuration reloaded from {}",
                path.display()
            );
        }
        Ok(Ok(Reloaded::Segments(names))) => {
            gateway.metrics().record_reload(true);
            tracing::info!(
                segments = %names.join(", "),
                generation = gateway.snapshot().generation,
                "segment members reloaded from their files"
            );
        }
        Ok(Ok(Reloaded::Unchanged)) => tracing::debug!("{} is unchanged", path.display()),
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

/// Reloads when the file, or a segment file it names, changes. Polling (rather than inotify)
/// also catches editors and config-management tools that replace a file by renaming over it.
async fn watch_file(
    controller: Arc<Controller>,
    gateway: Arc<Gateway>,
    path: PathBuf,
    interval: Duration,
) {
    let stamps = |paths: &[PathBuf]| -> Vec<Option<(SystemTime, u64)>> {
        paths
            .iter()
            .map(|p| {
                let m = std::fs::metadata(p).ok()?;
                Some((m.modified().ok()?, m.len()))
            })
            .collect()
    };
    let watched = |c: &Controller| -> Vec<PathBuf> {
        std::iter::once(path.clone())
            .chain(c.segment_files())
            .collect()
    };
    // Nothing seen yet: the first tick reloads, which records nothing unless the files changed
    // between the start-up read and now (a change in that window would otherwise be missed).
    let mut last_paths = Vec::new();
    let mut last_stamps = Vec::new();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let paths = watched(&controller);
        let now = stamps(&paths);
        if paths == last_paths && now == last_stamps {
            continue;
        }
        let Some(Some(_)) = now.first() else {
            // The configuration file is missing for a moment (being replaced): wait for it.
            continue;
        };
        let first = last_paths.is_empty();
        last_paths = paths;
        last_stamps = now;
        if !first {
            tracing::info!("{} or a segment file changed: reloading", path.display());
        }
        reload(&controller, &gateway, &path).await;
    }
}
