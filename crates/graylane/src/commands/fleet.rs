//! `graylane serve --etcd URL`: a fleet node. etcd holds the environment's configuration
//! revisions, release state, audit log and cookie keys; every node serves traffic and the admin
//! API from a local copy it keeps current by watching etcd, and one elected leader advances
//! timed steps and runs the analyses (`graylane_etcd::fleet`).
//!
//! Who writes what: a node that is sent a command or a configuration (admin API, or its
//! `--config` file changing) writes it to etcd with a conditional transaction and applies it
//! at once; the others apply it when their watch sees it. Only the leader writes timed steps
//! and verdicts, fenced by its lease.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Args;
use graylane_config::Config;
use graylane_controller::fleet::{FleetObservations, FleetPlane, NodeReport};
use graylane_controller::{ControlError, Controller, DataPlane};
use graylane_etcd::{Etcd, EtcdOptions, EtcdStore, Fleet, FleetEvent, NodeInfo};
use graylane_proxy::GatewayOptions;
use graylane_store::{RevisionSource, Store};
use tokio::sync::mpsc::UnboundedReceiver;

use super::serve::{ConfigSource, GatewayPlane, Managed, Prepared, ServeArgs, now_ms};
use crate::admin::AdminState;

/// The environment variable that holds `--etcd-user`'s password.
pub(crate) const PASSWORD_ENV: &str = "GRAYLANE_ETCD_PASSWORD";

#[derive(Args, Default)]
pub(crate) struct FleetArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// How long a node that stopped answering keeps its membership and leadership: another
    /// node leads at most this long after the leader dies.
    #[arg(long, default_value = "10s", value_parser = super::serve::humantime_duration)]
    pub etcd_lease_ttl: Duration,
    /// How often the leader compacts etcd's history (to what it held one period before), so
    /// the nodes' once-a-second heartbeats do not fill etcd's database; 0 turns it off, for an
    /// etcd that compacts itself (--auto-compaction-retention).
    #[arg(long, default_value = "5m", value_parser = super::serve::humantime_duration)]
    pub etcd_compact_every: Duration,
    /// This node's name in the fleet (unique; default: the host name).
    #[arg(long)]
    pub node: Option<String>,
    /// This node's address for the first listener, replacing the configuration's.
    #[arg(long)]
    pub bind: Option<SocketAddr>,
    /// This node's admin listener address, replacing the configuration's.
    #[arg(long)]
    pub admin_bind: Option<SocketAddr>,
}

/// How to reach etcd: the same flags for `serve --etcd`, `fleet import` and `register`.
#[derive(Args, Default)]
pub(crate) struct EtcdArgs {
    /// etcd's endpoints, comma-separated (e.g. http://10.0.0.5:2379,http://10.0.0.6:2379). For
    /// `serve`, this turns fleet mode on: etcd holds the environment's configuration, release
    /// state and audit log.
    #[arg(long, value_delimiter = ',', env = "GRAYLANE_ETCD")]
    pub etcd: Vec<String>,
    /// Where graylane's keys live in etcd.
    #[arg(long, default_value = graylane_etcd::registry::DEFAULT_PREFIX)]
    pub etcd_prefix: String,
    /// The CA certificate (PEM) that signed etcd's certificate, for https:// endpoints.
    #[arg(long)]
    pub etcd_ca: Option<PathBuf>,
    /// etcd user name; the password is read from GRAYLANE_ETCD_PASSWORD.
    #[arg(long)]
    pub etcd_user: Option<String>,
}

impl EtcdArgs {
    /// The connection these flags describe, each call bounded by `timeout`. The password comes
    /// from [`PASSWORD_ENV`], never from the command line (where `ps` would show it).
    pub(crate) fn options(&self, timeout: Duration) -> anyhow::Result<EtcdOptions> {
        if self.etcd.is_empty() {
            anyhow::bail!("--etcd URL is required (or GRAYLANE_ETCD)");
        }
        let user = match &self.etcd_user {
            Some(user) => Some((
                user.clone(),
                std::env::var(PASSWORD_ENV).map_err(|_| {
                    anyhow::anyhow!("--etcd-user {user}: set the password in {PASSWORD_ENV}")
                })?,
            )),
            None => None,
        };
        Ok(EtcdOptions {
            endpoints: self.etcd.clone(),
            prefix: self.etcd_prefix.clone(),
            ca: self.etcd_ca.clone(),
            user,
            timeout,
        })
    }
}

impl FleetArgs {
    /// A fleet flag without `--etcd` is a mistake worth saying rather than ignoring.
    pub(crate) fn refuse_without_etcd(&self) -> anyhow::Result<()> {
        let given = [
            ("--node", self.node.is_some()),
            ("--bind", self.bind.is_some()),
            ("--admin-bind", self.admin_bind.is_some()),
            ("--etcd-ca", self.etcd.etcd_ca.is_some()),
            ("--etcd-user", self.etcd.etcd_user.is_some()),
        ];
        if let Some((flag, _)) = given.iter().find(|(_, set)| *set) {
            anyhow::bail!("{flag} is a fleet option: it needs --etcd URL");
        }
        Ok(())
    }
}

/// What differs on this node from the configuration every node shares: its addresses, and the
/// endpoints of versions that follow the service registry, as this node last saw it.
#[derive(Debug, Clone, Default)]
pub(crate) struct NodeLocal {
    bind: Option<SocketAddr>,
    admin_bind: Option<SocketAddr>,
    registry: Option<tokio::sync::watch::Receiver<graylane_etcd::registry::Snapshot>>,
}

impl NodeLocal {
    /// `config` as this node serves it.
    pub(crate) fn adjust(&self, config: Config) -> Config {
        let mut config = match &self.registry {
            Some(registry) => graylane_config::resolve_registry(&config, &registry.borrow()),
            None => config,
        };
        if let (Some(bind), Some(first)) = (self.bind, config.listeners.first_mut()) {
            first.bind = bind;
        }
        if let (Some(bind), Some(admin)) = (self.admin_bind, config.admin.as_mut()) {
            admin.bind = bind;
        }
        config
    }
}

/// A fleet node's membership and what it hears from the other nodes.
pub(crate) struct FleetNode {
    pub fleet: Arc<Fleet>,
    pub events: UnboundedReceiver<FleetEvent>,
    pub local: NodeLocal,
    /// Every node's traffic counters, from their reports.
    pub observations: Arc<FleetObservations>,
    /// Changes on every start, so that other nodes tell a restarted node's counters (from 0
    /// again) from a continuation.
    pub incarnation: u64,
    /// The service registry as it changes (endpoints of `registry:` versions).
    pub registry: graylane_etcd::registry::RegistryWatch,
}

/// The controller's data plane on this node: in a fleet, the gateway with every other node's
/// traffic added to what it observes, so the analysis judges the fleet's traffic.
pub(crate) fn plane(gateway: Arc<GatewayPlane>, fleet: Option<&FleetNode>) -> Arc<dyn DataPlane> {
    match fleet {
        Some(node) => Arc::new(FleetPlane::new(gateway, Arc::clone(&node.observations))),
        None => gateway,
    }
}

/// Applies the configuration again whenever the service registry changes, so a version that
/// follows it serves the instances registered now: a new one within moments, one whose lease
/// expired no more.
pub(crate) async fn follow_registry(
    registry: graylane_etcd::registry::RegistryWatch,
    plane: Arc<GatewayPlane>,
) {
    let mut changes = registry.receiver();
    while changes.changed().await.is_ok() {
        let plane = Arc::clone(&plane);
        let _ = tokio::task::spawn_blocking(move || plane.adjusted()).await;
    }
}

/// How often a node waiting for its first configuration looks again, and says so.
const WAIT_FOR_CONFIG: Duration = Duration::from_secs(1);

pub(crate) fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let f = &args.fleet;
    if args.takeover {
        anyhow::bail!(
            "--takeover replaces a single node on its --data-dir; a fleet node is replaced by starting the new one (another --node name, or the same once the old one stopped) and stopping the old one"
        );
    }
    let node = match &f.node {
        Some(n) => n.clone(),
        None => std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| anyhow::anyhow!("--node NAME is required (the host name is unknown)"))?,
    };
    super::serve::check_name("--node", "node", &node)?;
    let etcd = Etcd::connect(&f.etcd.options(Duration::from_secs(2))?)?;
    let store = Arc::new(EtcdStore::open(etcd.clone(), &args.env)?);
    let registry = etcd
        .handle()
        .block_on(graylane_etcd::registry::watch(etcd.client(), etcd.prefix()))
        .map_err(|e| anyhow::anyhow!("cannot read the service registry: {e}"))?;
    let local = NodeLocal {
        bind: f.bind,
        admin_bind: f.admin_bind,
        registry: Some(registry.receiver()),
    };
    let Chosen {
        path,
        yaml,
        file_text,
        admin: early_admin,
    } = choose_config(&args, store.as_ref())?;
    let shared = match graylane_config::load_text_for(&yaml, &path) {
        Ok(config) => config,
        Err(errors) => {
            for e in &errors.errors {
                eprintln!("error: {e}");
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    let config = local.adjust(shared.clone());
    let admin = config.admin.as_ref().map(|a| a.bind.to_string());
    let (fleet, events) = Fleet::join(
        store.as_ref(),
        &args.env,
        NodeInfo {
            name: node.clone(),
            admin,
        },
        f.etcd_lease_ttl,
    )?;
    fleet.compact_history(f.etcd_compact_every);
    let cookie_keys = match std::env::var(graylane_proxy::cookie_keys::ENV)
        .ok()
        .filter(|v| !v.trim().is_empty())
    {
        Some(text) => text,
        None => graylane_etcd::shared::cookie_keys(&etcd, &args.env, || {
            graylane_proxy::cookie_keys::random_key().unwrap_or_default()
        })?,
    };
    let mut options = GatewayOptions {
        drain_timeout: args.drain_timeout,
        // Redis segments' last members, kept on this node's disk as on a single node.
        segment_cache: Some(args.data_dir.join("segments")),
        cookie_keys: Some(
            graylane_rules::CookieKeys::parse(&cookie_keys)
                .map_err(|e| anyhow::anyhow!("the fleet's cookie keys: {e}"))?,
        ),
        ..GatewayOptions::default()
    };
    if let Some(w) = args.workers {
        options.workers = w;
    }
    args.access_log_options(&mut options);
    let prepared = match Prepared::bind(&config, options, Vec::new(), early_admin) {
        Ok(p) => p,
        Err(e) => {
            fleet.leave();
            return Err(e);
        }
    };
    tracing::info!(node = %node, env = %args.env, etcd = %etcd.endpoints(), "fleet node joined");
    let incarnation = u64::try_from(now_ms()).unwrap_or_default();
    let source = ConfigSource::File(Box::new(Managed {
        path,
        watched: args.config.is_some(),
        interval: args.watch_interval,
        yaml,
        file_text,
        store: store as Arc<dyn Store>,
        releasable: None,
        env: args.env,
        offer: None,
        fleet: Some(FleetNode {
            fleet,
            events,
            local,
            observations: Arc::new(FleetObservations::new(&node, incarnation)),
            incarnation,
            registry,
        }),
    }));
    super::serve::run_gateway(prepared, shared, source)
}

/// What a node starts with.
struct Chosen {
    /// The configuration file, or a name to resolve relative segment files from.
    path: PathBuf,
    /// The configuration to serve.
    yaml: String,
    /// The file's text, when it is not `yaml`.
    file_text: Option<String>,
    /// The admin listener, already bound while waiting for a configuration.
    admin: Option<std::net::TcpListener>,
}

/// The configuration to start with: the `--config` file if it is new to the fleet (it is then
/// pushed as a revision), else the newest revision in etcd, waiting for one if there is none.
///
/// A file equal to the newest revision pushed from a file is not pushed again even when a
/// later revision (an API edit) differs from it: restarting a node must not undo what was
/// changed through the API since the file last changed.
///
/// While it waits, the admin listener (`--admin-bind`) answers `503`, so a load balancer's or
/// orchestrator's readiness probe sees a node that is up but not ready; the listener is then
/// handed to the admin API.
fn choose_config(args: &ServeArgs, store: &EtcdStore) -> anyhow::Result<Chosen> {
    let env = &args.env;
    let chosen = |path: &PathBuf, yaml: String, file_text: Option<String>| Chosen {
        path: path.clone(),
        yaml,
        file_text,
        admin: None,
    };
    if let Some(path) = &args.config {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let latest = store.latest_revision(env)?;
        let Some(latest) = latest else {
            return Ok(chosen(path, text, None));
        };
        if latest.yaml == text {
            return Ok(chosen(path, text, None));
        }
        let from_file = store
            .revisions(env)?
            .into_iter()
            .find(|r| r.source == RevisionSource::File);
        if let Some(meta) = from_file
            && let Some(rev) = store.revision(env, meta.n)?
            && rev.yaml == text
        {
            tracing::info!(
                revision = latest.n,
                "{} is unchanged since it was last pushed: serving the newer revision {}",
                path.display(),
                latest.n
            );
            return Ok(chosen(path, latest.yaml, Some(text)));
        }
        return Ok(chosen(path, text, None));
    }
    let mut not_ready = match args.fleet.admin_bind {
        Some(addr) => Some(NotReady::start(crate::admin::bind(addr)?)?),
        None => None,
    };
    let mut waited = 0u64;
    loop {
        if let Some(latest) = store.latest_revision(env)? {
            let admin = not_ready.take().map(NotReady::stop).transpose()?;
            return Ok(Chosen {
                path: PathBuf::from("graylane.yaml"),
                yaml: latest.yaml,
                file_text: None,
                admin,
            });
        }
        if waited.is_multiple_of(10) {
            tracing::warn!(
                "etcd holds no configuration for environment `{env}` yet: waiting for one (push one with `graylane serve --etcd ... --config FILE` or the admin API of a node that has one)"
            );
        }
        waited += 1;
        std::thread::sleep(WAIT_FOR_CONFIG);
    }
}

/// The admin listener of a node still waiting for its first configuration: every request gets
/// `503` saying so.
struct NotReady {
    listener: std::net::TcpListener,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl NotReady {
    const ANSWER: &'static str = "waiting for a configuration revision in etcd\n";

    fn start(listener: std::net::TcpListener) -> anyhow::Result<NotReady> {
        listener.set_nonblocking(true)?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (accepting, stopping) = (listener.try_clone()?, Arc::clone(&stop));
        let thread = crate::runtime::thread("graylane-not-ready", move || {
            use std::io::{Read, Write};
            while !stopping.load(Ordering::Relaxed) {
                let Ok((mut stream, _)) = accepting.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match stream.read(&mut buf) {
                        Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => break,
                    }
                }
                let _ = write!(
                    stream,
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
                    Self::ANSWER.len(),
                    Self::ANSWER
                );
            }
        })?;
        Ok(NotReady {
            listener,
            stop,
            thread,
        })
    }

    /// Stops answering and hands the listener back (still bound: no request is refused).
    fn stop(self) -> anyhow::Result<std::net::TcpListener> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        self.listener.set_nonblocking(false)?;
        Ok(self.listener)
    }
}

/// Applies what other nodes changed, as the watch reports it.
pub(crate) async fn follow(
    controller: Arc<Controller>,
    mut events: UnboundedReceiver<FleetEvent>,
    observations: Arc<FleetObservations>,
) {
    while let Some(event) = events.recv().await {
        match &event {
            FleetEvent::Report { node, report } => {
                match NodeReport::decode(report) {
                    Ok(r) => observations.update(node, r),
                    Err(e) => tracing::warn!("ignoring node {node}'s traffic report: {e}"),
                }
                continue;
            }
            FleetEvent::ReportGone(node) => {
                observations.remove(node);
                continue;
            }
            _ => {}
        }
        let c = Arc::clone(&controller);
        let outcome = tokio::task::spawn_blocking(move || match event {
            FleetEvent::Revision(n) => c.revision_changed(n, now_ms()).map(|applied| {
                if applied {
                    tracing::info!(
                        revision = n,
                        "applied the fleet's new configuration revision"
                    );
                }
            }),
            FleetEvent::Release {
                service,
                state,
                version,
            } => c.release_changed(&service, &state, version).map(|_| ()),
            FleetEvent::Report { .. } | FleetEvent::ReportGone(_) => Ok(()),
            FleetEvent::Resynced => Ok(()),
        })
        .await;
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(ControlError::Invalid(errors))) => {
                for e in &errors.errors {
                    tracing::error!(
                        "a revision from the fleet was rejected, the previous configuration keeps serving: {e}"
                    );
                }
            }
            Ok(Err(e)) => tracing::error!("cannot apply a change from the fleet: {e}"),
            Err(e) => tracing::error!("applying a change from the fleet did not finish: {e}"),
        }
    }
}

/// Publishes, once a second, which revision this node serves, whether it is ready, and its
/// traffic counters (for the leader's analysis). It also catches up with a revision the watch
/// announced but this node could not read then (etcd away at that moment): a node never
/// stays behind because one read failed. A revision this build refuses is not tried again.
pub(crate) async fn publish(
    controller: Arc<Controller>,
    fleet: Arc<Fleet>,
    incarnation: u64,
    state: Arc<AdminState>,
) {
    let mut ticker = tokio::time::interval(graylane_etcd::fleet::HEARTBEAT);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut refused = None;
    loop {
        ticker.tick().await;
        let latest = fleet.latest_revision();
        if latest > controller.current_revision() && refused != Some(latest) {
            let c = Arc::clone(&controller);
            match tokio::task::spawn_blocking(move || c.revision_changed(latest, now_ms())).await {
                Ok(Ok(true)) => {
                    tracing::info!(revision = latest, "caught up with the fleet's revision")
                }
                Ok(Err(ControlError::Invalid(_))) => refused = Some(latest),
                _ => {}
            }
        }
        fleet.set_status(
            controller.current_revision(),
            state.ready.load(Ordering::Relaxed),
        );
        let c = Arc::clone(&controller);
        if let Ok(report) =
            tokio::task::spawn_blocking(move || c.fleet_report(incarnation, now_ms()).encode())
                .await
        {
            fleet.set_report(report);
        }
    }
}

/// The fleet's figures on `/metrics`, read at scrape time: `graylane_fleet_leader` (1 while
/// this node leads), `graylane_fleet_store_reachable` (0 while it is cut off from etcd and
/// serves what it last knew), `graylane_fleet_members`, and `graylane_fleet_config_revision`
/// with `graylane_fleet_latest_revision` (a node behind the newest revision lags).
pub(crate) struct FleetCollector {
    pub fleet: Arc<Fleet>,
    pub controller: Arc<Controller>,
}

impl std::fmt::Debug for FleetCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FleetCollector")
    }
}

impl prometheus_client::collector::Collector for FleetCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::MetricType;
        use prometheus_client::metrics::gauge::ConstGauge;
        let view = self.fleet.cluster();
        let gauges: [(&str, &str, i64); 5] = [
            (
                "graylane_fleet_leader",
                "1 while this node leads the fleet",
                i64::from(self.fleet.is_leader()),
            ),
            (
                "graylane_fleet_store_reachable",
                "0 while this node cannot reach etcd and serves its last known state",
                i64::from(view.store_reachable),
            ),
            (
                "graylane_fleet_members",
                "Members of the fleet this node knows of",
                view.members.len() as i64,
            ),
            (
                "graylane_fleet_config_revision",
                "The configuration revision this node serves",
                self.controller.current_revision() as i64,
            ),
            (
                "graylane_fleet_latest_revision",
                "The newest configuration revision in etcd, as this node last heard",
                view.latest_revision as i64,
            ),
        ];
        for (name, help, value) in gauges {
            let family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(value).encode(family)?;
        }
        Ok(())
    }
}
