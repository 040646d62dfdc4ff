//! `graylane serve`: the gateway, its admin listener, and hot reload (file changes and SIGHUP).
//! SIGTERM or Ctrl-C drains in-flight requests and exits 0; `--takeover` replaces the process
//! running on the same data directory without losing a request ([`super::takeover`]).
//!
//! Here: the flags, opening the store and binding the listeners ([`Prepared`]), and the gateway
//! as the controller's data plane ([`GatewayPlane`]); running what was prepared until it stops
//! is [`gateway`], shared with a fleet node and the demo.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use graylane_analysis::Histogram;
use graylane_config::{AccessLogFormat, AccessLogPath, Config};
use graylane_controller::fleet::{RouteFigures, UnitHashes};
use graylane_controller::{DataPlane, Observation};
use graylane_proxy::{Gateway, GatewayOptions};
use graylane_rules::Routing;

use crate::admin;
use crate::logging::{self, LogColor, LogFormat};

use super::takeover::{self, Predecessor, ReleasableStore};

mod gateway;

pub(crate) use gateway::run_gateway;

/// How long `--takeover` waits for the running process to close the store.
const RELEASE_WAIT: Duration = Duration::from_secs(15);
/// How long `--takeover` then retries opening the store while it is still locked.
const STORE_WAIT: Duration = Duration::from_secs(10);

#[derive(Args)]
pub(crate) struct ServeArgs {
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
    /// Log lines as text or as one JSON object per line.
    #[arg(long, value_enum, default_value_t)]
    pub log_format: LogFormat,
    /// Colour in text logs: on a terminal without NO_COLOR (auto), always, or never.
    #[arg(long, value_enum, default_value_t)]
    pub log_color: LogColor,
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
    /// Write an access log line per request to PATH (appended to; reopened on SIGUSR1), or to
    /// standard output with `stdout`: over `access_log.path`, and on even without
    /// `access_log:` in the configuration.
    #[arg(long, value_name = "PATH|stdout")]
    pub access_log: Option<PathBuf>,
    /// The access log's format, over `access_log.format`: `json` or `combined`.
    #[arg(long, value_name = "json|combined", value_parser = access_log_format)]
    pub access_log_format: Option<AccessLogFormat>,
    #[command(flatten)]
    pub fleet: super::fleet::FleetArgs,
}

fn access_log_format(s: &str) -> Result<AccessLogFormat, String> {
    AccessLogFormat::parse(s)
        .ok_or_else(|| format!("`{s}` is not a format: use `json` or `combined`"))
}

impl ServeArgs {
    /// The access log settings of `--access-log` and `--access-log-format` in `options`.
    pub(crate) fn access_log_options(&self, options: &mut GatewayOptions) {
        options.access_log_path = self
            .access_log
            .as_ref()
            .map(|p| AccessLogPath::parse(&p.to_string_lossy(), std::path::Path::new("")));
        options.access_log_format = self.access_log_format;
    }
}

pub(crate) fn humantime_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}` is not a duration like 30s: {e}"))
}

pub(crate) fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    logging::init(args.log_format, args.log_color, &args.log_level);
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
    args.access_log_options(&mut options);
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
pub(crate) fn check_name(flag: &str, what: &str, value: &str) -> anyhow::Result<()> {
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
pub(crate) struct Prepared {
    gateway: Gateway,
    admin: Option<std::net::TcpListener>,
    workers: usize,
    /// Admin tokens given in code rather than named by the configuration (the demo's).
    granted: admin::auth::Tokens,
}

impl Prepared {
    /// Binds what `config` listens on, except the addresses of the sockets `listeners` and
    /// `admin` taken over from a running process.
    pub(crate) fn bind(
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
            granted: admin::auth::Tokens::default(),
        })
    }

    /// Lets the admin API accept `secret` as the token of `name` with `role`, besides the
    /// configuration's tokens: the demo makes one at start, since it has no environment to
    /// read one from.
    pub(crate) fn grant(&mut self, secret: String, name: &str, role: graylane_config::Role) {
        self.granted.grant(
            secret,
            admin::auth::Caller {
                name: name.to_owned(),
                role,
            },
        );
    }
}

/// Where the configuration comes from.
pub(crate) enum ConfigSource {
    /// A file, watched and reloaded (unless it is the demo's); revisions and releases in a
    /// store, steered by the controller.
    File(Box<Managed>),
}

pub(crate) struct Managed {
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
pub(crate) struct GatewayPlane {
    gateway: Arc<Gateway>,
    /// What differs on this node from the configuration every node shares.
    local: super::fleet::NodeLocal,
    /// The shared configuration last applied, to apply again with this node's adjustments
    /// when they change (the registry's instances come and go); the lock also orders those
    /// applies with the controller's.
    shared: std::sync::Mutex<Option<Config>>,
}

impl GatewayPlane {
    pub(crate) fn new(gateway: Arc<Gateway>, local: super::fleet::NodeLocal) -> GatewayPlane {
        GatewayPlane {
            gateway,
            local,
            shared: std::sync::Mutex::new(None),
        }
    }

    /// Applies the last configuration again with this node's adjustments as they are now,
    /// keeping every release's traffic split.
    pub(crate) fn adjusted(&self) {
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

/// The wall clock in Unix milliseconds.
pub(crate) fn now_ms() -> i64 {
    crate::admin::api::now_ms()
}
