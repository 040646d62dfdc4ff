//! The gateway as a whole: worker threads serving a routing snapshot that can be replaced
//! atomically at any time. This is the one type the binary (and tests) drive.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use graylane_config::{AccessLogFormat, AccessLogPath, Config, ConfigErrors, Service, Weight};
use graylane_rules::{CookieKeys, Routing, Share};
use tokio::sync::watch;

use crate::access_log::{AccessLogs, OpenError as AccessLogError, Sink};
use crate::discovery::Discovery;
use crate::guards::GuardState;
use crate::metrics::Metrics;
use crate::server::tls::{ListenerCerts, TlsCollector};
use crate::server::{
    Balancer, BoundListener, ConnectionLimit, Phase, WorkerSetup, bind_exclusive, run_worker,
};
use crate::snapshot::Snapshot;
use crate::telemetry::{ReleaseTransition, Tracer, Traces};

/// How the gateway runs, beyond what the configuration file says.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// Worker threads; each has its own runtime and upstream pool, and accepts from every
    /// listener.
    pub workers: usize,
    /// How long SIGTERM waits for in-flight requests before closing connections.
    pub drain_timeout: Duration,
    /// The keys that sign sticky cookies (see [`crate::cookie_keys`]); `None`: random keys for
    /// this process only, so cookies stop verifying after a restart.
    pub cookie_keys: Option<CookieKeys>,
    /// Where Redis segments keep the members they last read (`serve` uses `DATA_DIR/segments`),
    /// so a restart during a Redis outage still serves them; `None` keeps nothing.
    pub segment_cache: Option<std::path::PathBuf>,
    /// `--access-log`: where access log lines go, whatever `access_log.path` says (and with
    /// no `access_log:`, JSON lines of every request); `None`: as configured.
    pub access_log_path: Option<AccessLogPath>,
    /// `--access-log-format`: the access log's format, whatever `access_log.format` says.
    pub access_log_format: Option<AccessLogFormat>,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            drain_timeout: Duration::from_secs(30),
            cookie_keys: None,
            segment_cache: None,
            access_log_path: None,
            access_log_format: None,
        }
    }
}

/// What snapshots are built from.
struct Inputs {
    config: Arc<Config>,
    /// Traffic splits set by the rollout controller, by service name. Kept by version *name* so
    /// they survive reloads that add or reorder versions.
    routes: BTreeMap<String, NamedRouting>,
    generation: u64,
    cookie_keys: CookieKeys,
    /// The access log the snapshots hand requests to.
    access_log: Option<Arc<Sink>>,
    /// The tracer the snapshots hand requests' spans to.
    tracer: Option<Arc<Tracer>>,
}

/// A [`Routing`] with version names instead of indices.
#[derive(Debug, Clone)]
struct NamedRouting {
    force_to: Option<String>,
    shares: Vec<(String, Weight)>,
    mirror: Weight,
}

impl NamedRouting {
    fn from_routing(service: &Service, routing: &Routing) -> NamedRouting {
        let name = |v: usize| {
            service
                .versions
                .get(v)
                .map_or_else(String::new, |v| v.name.clone())
        };
        NamedRouting {
            force_to: routing.force_to.map(name),
            shares: routing
                .shares
                .iter()
                .map(|s| (name(s.version), s.weight))
                .collect(),
            mirror: routing.mirror,
        }
    }

    /// `None` when a version it names is gone: the release then starts over from its
    /// configuration.
    fn resolve(&self, service: &Service) -> Option<Routing> {
        let force_to = match &self.force_to {
            Some(n) => Some(service.version_index(n)?),
            None => None,
        };
        let shares = self
            .shares
            .iter()
            .map(|(n, weight)| {
                Some(Share {
                    version: service.version_index(n)?,
                    weight: *weight,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Routing {
            force_to,
            shares,
            mirror: self.mirror,
        })
    }
}

/// Why [`Gateway::start`] (or [`Gateway::prepare`]) could not start the gateway.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener's address could not be bound (in use, not local, or not permitted).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The listener's `bind` address.
        addr: SocketAddr,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A socket handed over by the process being replaced could not be used.
    #[error("cannot use a listening socket taken over from the running process: {0}")]
    Inherit(std::io::Error),
    /// A listener's TLS certificate or key could not be read or is not valid.
    #[error("listener {addr}: {source}")]
    Tls {
        /// The listener's `bind` address.
        addr: SocketAddr,
        /// What is wrong with the certificate or key, naming the file.
        source: std::io::Error,
    },
    /// A worker (or the health prober) thread could not be spawned.
    #[error("cannot start worker thread: {0}")]
    Thread(std::io::Error),
    /// No sticky-cookie keys were given and none could be generated.
    #[error("{0}")]
    CookieKeys(#[from] crate::cookie_keys::CookieKeysError),
    /// The access log's file could not be opened.
    #[error("{0}")]
    AccessLog(#[from] AccessLogError),
}

/// Why segment members could not be changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    /// The configuration has no segment of that name.
    #[error("unknown segment `{name}`; segments: {}", segments.join(", "))]
    Unknown {
        /// The name asked for.
        name: String,
        /// Every segment the configuration defines, in its order.
        segments: Vec<String>,
    },
    /// The segment's members are listed in the configuration, which only a reload changes.
    #[error(
        "segment `{name}` lists its members in the configuration; only a `source: redis` segment is edited through the API"
    )]
    NotRedis {
        /// The segment's name.
        name: String,
    },
    /// The segment's Redis could not be reached or refused the change.
    #[error("Redis did not take the change: {0}")]
    Redis(String),
}

/// A weight was set for a service that has no release.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("service `{service}` has no release; services with one: {}", releases.join(", "))]
pub struct UnknownRelease {
    /// The service asked for (it may not exist at all).
    pub service: String,
    /// The services that do have a release, in configuration order.
    pub releases: Vec<String>,
}

/// A running gateway: its listeners, worker threads, health prober and the routing snapshot
/// they serve. Reloads, weight changes and segment edits go through it; [`Gateway::shutdown`]
/// drains and stops it.
pub struct Gateway {
    snapshot: Arc<ArcSwap<Snapshot>>,
    metrics: Arc<Metrics>,
    /// Traffic-control state (limiter tokens, breaker windows, ejections) that outlives
    /// snapshots.
    guard_state: Arc<GuardState>,
    /// Serialises snapshot rebuilds (reloads and weight changes) so neither loses the other's
    /// update; requests never touch it. Shared with the DNS resolver thread, which rebuilds
    /// when addresses change.
    inputs: Arc<Mutex<Inputs>>,
    /// The addresses of endpoints given as DNS names.
    discovery: Discovery,
    local_addrs: Vec<SocketAddr>,
    /// Each listener's certificates (`None`: plain HTTP), in configuration order.
    tls: Vec<Option<Arc<ListenerCerts>>>,
    /// One listening socket per listener (the workers accept from duplicates), kept to hand over
    /// to a successor process; closed when the gateway stops accepting.
    sockets: Mutex<Vec<std::net::TcpListener>>,
    balancer: Arc<Balancer>,
    phase: watch::Sender<Phase>,
    /// Stops the health prober.
    shutdown: watch::Sender<bool>,
    workers: Mutex<Vec<JoinHandle<std::io::Result<()>>>>,
    access_logs: AccessLogs,
    traces: Traces,
}

impl Gateway {
    /// Binds every listener and starts the workers serving `config`.
    pub fn start(config: Config, options: GatewayOptions) -> Result<Gateway, StartError> {
        let gateway = Gateway::prepare(config, options, Vec::new())?;
        gateway.start_accepting();
        Ok(gateway)
    }

    /// Sets up everything [`Gateway::start`] does, but the workers do not accept until
    /// [`Gateway::start_accepting`]: connections wait in the kernel's queue meanwhile (so a
    /// release state can be applied before the first request is routed).
    ///
    /// A listener whose address is that of one of the `inherited` sockets (taken over from the
    /// process this one replaces) serves on that socket, queued connections and all; the others
    /// are bound here. Inherited sockets no listener asks for are closed.
    pub fn prepare(
        config: Config,
        options: GatewayOptions,
        inherited: Vec<std::net::TcpListener>,
    ) -> Result<Gateway, StartError> {
        let workers = options.workers.max(1);
        let cookie_keys = match options.cookie_keys {
            Some(keys) => keys,
            None => crate::cookie_keys::ephemeral()?,
        };
        let metrics = Metrics::new(workers);
        let access_logs = AccessLogs::start(
            &config,
            workers,
            options.access_log_path.clone(),
            options.access_log_format,
        )?;
        metrics.add_collector(access_logs.collector());
        let access_log = access_logs.for_config(&config);
        let traces = Traces::new(workers);
        metrics.add_collector(traces.collector());
        let tracer = traces.for_config(&config);
        let mut inherited = inherited
            .into_iter()
            .map(|socket| Ok((socket.local_addr()?, socket)))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(StartError::Inherit)?;
        let mut per_worker: Vec<Vec<BoundListener>> = (0..workers).map(|_| Vec::new()).collect();
        let mut local_addrs = Vec::new();
        let mut sockets = Vec::new();
        let mut tls_listeners = Vec::new();
        for listener in &config.listeners {
            let addr = listener.bind;
            let certs = listener
                .tls
                .as_ref()
                .map(|t| ListenerCerts::load(addr, t))
                .transpose()
                .map_err(|source| StartError::Tls { addr, source })?;
            let tls = certs
                .as_ref()
                .map(ListenerCerts::acceptor)
                .transpose()
                .map_err(|source| StartError::Tls { addr, source })?;
            tls_listeners.push(certs);
            let socket = match inherited.iter().position(|(a, _)| *a == addr) {
                Some(i) => {
                    let (_, socket) = inherited.swap_remove(i);
                    socket.set_nonblocking(true).map_err(StartError::Inherit)?;
                    tracing::info!(%addr, "listening on the socket taken over");
                    socket
                }
                None => bind_exclusive(addr).map_err(|source| StartError::Bind { addr, source })?,
            };
            local_addrs.push(
                socket
                    .local_addr()
                    .map_err(|source| StartError::Bind { addr, source })?,
            );
            let connections = ConnectionLimit::new(listener.max_connections);
            for worker in &mut per_worker {
                worker.push(BoundListener {
                    socket: socket
                        .try_clone()
                        .map_err(|source| StartError::Bind { addr, source })?,
                    config: listener.clone(),
                    tls: tls.clone(),
                    connections: Arc::clone(&connections),
                });
            }
            sockets.push(socket);
        }
        for (addr, _) in &inherited {
            tracing::info!(%addr, "no listener is configured for this address any more: closing the socket taken over");
        }
        let upstream = config.upstream.clone();
        let config = Arc::new(config);
        let guard_state = Arc::new(GuardState::with_segment_cache(
            options.segment_cache.clone(),
        ));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (discovery, resolver_thread) =
            Discovery::start(shutdown_rx.clone()).map_err(StartError::Thread)?;
        discovery.configure(&config);
        metrics.add_collector(discovery.collector());
        let mut first = Snapshot::build(
            discovery.fill(&config),
            &metrics,
            1,
            &BTreeMap::new(),
            &guard_state,
            &cookie_keys,
        );
        first.access_log = access_log.clone();
        first.tracer = tracer.clone();
        let snapshot = Arc::new(ArcSwap::from_pointee(first));
        let (phase, phase_rx) = watch::channel(Phase::Held);
        let (balancer, inboxes) = Balancer::new(workers, config.listeners.len());
        let mut handles = Vec::new();
        for (id, (listeners, inbox)) in per_worker.into_iter().zip(inboxes).enumerate() {
            let setup = WorkerSetup {
                id,
                listeners,
                snapshot: Arc::clone(&snapshot),
                metrics: Arc::clone(&metrics),
                phase: phase_rx.clone(),
                balancer: Arc::clone(&balancer),
                inbox,
                drain_timeout: options.drain_timeout,
                max_idle_per_endpoint: upstream.max_idle_per_endpoint,
                idle_timeout: upstream.idle_timeout,
            };
            let handle = std::thread::Builder::new()
                .name(format!("graylane-worker-{id}"))
                .spawn(move || run_worker(setup))
                .map_err(StartError::Thread)?;
            handles.push(handle);
        }
        metrics.add_collector(Arc::new(crate::guards::BreakerCollector(
            Arc::clone(&snapshot),
            Arc::clone(&guard_state),
        )));
        let prober = crate::health::spawn_prober(Arc::clone(&snapshot), shutdown_rx)
            .map_err(StartError::Thread)?;
        handles.push(prober);
        let watched: Vec<_> = tls_listeners.iter().flatten().cloned().collect();
        if !watched.is_empty() {
            metrics.add_collector(Arc::new(TlsCollector(watched.clone())));
        }
        if let Some(watch) = crate::server::tls::spawn_watch(watched, shutdown.subscribe())
            .map_err(StartError::Thread)?
        {
            handles.push(watch);
        }
        handles.push(resolver_thread);
        let inputs = Arc::new(Mutex::new(Inputs {
            config,
            routes: BTreeMap::new(),
            generation: 1,
            cookie_keys,
            access_log,
            tracer,
        }));
        discovery.on_change(Box::new({
            let (inputs, snapshot, metrics, guard_state, discovery) = (
                Arc::clone(&inputs),
                Arc::clone(&snapshot),
                Arc::clone(&metrics),
                Arc::clone(&guard_state),
                discovery.clone(),
            );
            move || {
                let mut inputs = inputs.lock().unwrap_or_else(|e| e.into_inner());
                rebuild(&mut inputs, &snapshot, &metrics, &guard_state, &discovery);
            }
        }));
        Ok(Gateway {
            snapshot,
            metrics,
            guard_state,
            inputs,
            discovery,
            local_addrs,
            tls: tls_listeners,
            balancer,
            sockets: Mutex::new(sockets),
            phase,
            shutdown,
            workers: Mutex::new(handles),
            access_logs,
            traces,
        })
    }

    /// Lets the workers accept (after [`Gateway::prepare`]).
    pub fn start_accepting(&self) {
        self.advance(Phase::Serving);
    }

    /// Moves the workers on to `next`, never back, and never from a hand-over to a stop: once
    /// the successor has the sockets, the queued connections are its own.
    fn advance(&self, next: Phase) {
        self.phase.send_if_modified(|p| {
            let moves = next > *p && *p != Phase::HandedOver;
            if moves {
                *p = next;
            }
            moves
        });
    }

    /// Duplicates of the listening sockets, in configuration order, for handing over to a
    /// successor process (`graylane serve --takeover`). Empty once the gateway stopped accepting.
    pub fn listening_sockets(&self) -> std::io::Result<Vec<std::net::TcpListener>> {
        self.sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(std::net::TcpListener::try_clone)
            .collect()
    }

    /// Stops accepting because a successor process now accepts from the same sockets: the
    /// connections the kernel has queued are left to it. Returns once no worker accepts any more
    /// (waiting a second at most). The connections already accepted are answered and closed as
    /// in [`Gateway::shutdown`], which waits for them.
    pub fn hand_over(&self) {
        self.advance(Phase::HandedOver);
        self.sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let until = Instant::now() + Duration::from_secs(1);
        while self.balancer.accepting.load(Ordering::Acquire) > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The addresses actually bound, in configuration order (useful with port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// The gateway's counters, which outlive reloads; also where other parts add collectors
    /// to the Prometheus exposition.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The snapshot requests are being routed with right now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Replaces the routing snapshot atomically: every request after this sees `config`, every
    /// request before it finishes on the old one. Listener changes need a restart; the
    /// listeners' certificate files are read again (see [`Gateway::reload_certificates`]).
    pub fn apply(&self, config: Config) {
        let current = self.snapshot.load();
        let old: Vec<SocketAddr> = current.config.listeners.iter().map(|l| l.bind).collect();
        let new: Vec<SocketAddr> = config.listeners.iter().map(|l| l.bind).collect();
        if old != new {
            tracing::warn!(
                ?old,
                ?new,
                "listener changes take effect after a restart; routing is updated now"
            );
        }
        self.reload_tls(&config);
        self.discovery.configure(&config);
        let mut inputs = self.inputs.lock().unwrap_or_else(|e| e.into_inner());
        inputs.access_log = self.access_logs.for_config(&config);
        inputs.tracer = self.traces.for_config(&config);
        inputs.config = Arc::new(config);
        self.rebuild(&mut inputs);
    }

    /// Reopens the access log's file (SIGUSR1): after logrotate moved it, lines go to a new
    /// file at the configured path. Lines written before are in the moved file.
    pub fn reopen_access_log(&self) {
        self.access_logs.reopen();
    }

    /// Exports a release transition (a weight change, a promotion, a rollback, a verdict) as a
    /// `release.transition` span when `telemetry.otlp` is configured; never waits.
    pub fn trace_release_transition(&self, transition: ReleaseTransition) {
        self.traces.release_transition(transition);
    }

    /// Reads every listener's certificate and key files again, as a reload does: new TLS
    /// handshakes get what the files hold now, open connections keep theirs. A pair that does
    /// not load keeps the previous one serving, logged and counted in
    /// `graylane_tls_reload_errors_total`. (Changed files are also read within about two
    /// seconds without this.)
    pub fn reload_certificates(&self) {
        for certs in self.tls.iter().flatten() {
            certs.reload(None);
        }
    }

    /// Serves the certificates `config` names, read again even where the names are unchanged.
    fn reload_tls(&self, config: &Config) {
        for (i, certs) in self.tls.iter().enumerate() {
            let Some(certs) = certs else { continue };
            match config.listeners.get(i).and_then(|l| l.tls.as_ref()) {
                Some(tls) => certs.reload(Some(tls)),
                None => {
                    tracing::warn!(
                        "listeners[{i}] no longer has `tls`: it serves TLS until a restart"
                    );
                    certs.reload(None);
                }
            }
        }
    }

    /// Applies `config` and, in the same swap, the traffic split of every release in `routes`
    /// (by service name; the others start as configured). This is how the rollout controller
    /// applies a new configuration: no request ever sees the new config with old splits.
    pub fn apply_with_routes(&self, config: Config, routes: &BTreeMap<String, Routing>) {
        self.reload_tls(&config);
        self.discovery.configure(&config);
        let mut inputs = self.inputs.lock().unwrap_or_else(|e| e.into_inner());
        inputs.routes = routes
            .iter()
            .filter_map(|(name, r)| {
                let svc = config.service(name)?;
                Some((name.clone(), NamedRouting::from_routing(svc, r)))
            })
            .collect();
        inputs.access_log = self.access_logs.for_config(&config);
        inputs.tracer = self.traces.for_config(&config);
        inputs.config = Arc::new(config);
        self.rebuild(&mut inputs);
    }

    /// Sets the candidate weight of `service`'s release — the baseline gets the rest, force
    /// rules stay on — at once and until changed again (reloads keep it).
    pub fn set_weight(&self, service: &str, weight: Weight) -> Result<(), UnknownRelease> {
        self.update_routing(service, |release| Routing::canary(release, weight))
    }

    /// Sets the traffic split of `service`'s release, at once and until changed again (reloads
    /// keep it while the versions it names exist). This is the rollout controller's lever.
    pub fn set_routing(&self, service: &str, routing: Routing) -> Result<(), UnknownRelease> {
        self.update_routing(service, |_| routing)
    }

    fn update_routing(
        &self,
        service: &str,
        routing: impl FnOnce(&graylane_config::Release) -> Routing,
    ) -> Result<(), UnknownRelease> {
        let mut inputs = self.inputs.lock().unwrap_or_else(|e| e.into_inner());
        let config = Arc::clone(&inputs.config);
        let Some((svc, release)) = config
            .service(service)
            .and_then(|s| Some((s, s.release.as_ref()?)))
        else {
            let releases = config
                .services
                .iter()
                .filter(|s| s.release.is_some())
                .map(|s| s.name.clone())
                .collect();
            return Err(UnknownRelease {
                service: service.to_string(),
                releases,
            });
        };
        let named = NamedRouting::from_routing(svc, &routing(release));
        inputs.routes.insert(service.to_string(), named);
        self.rebuild(&mut inputs);
        Ok(())
    }

    fn rebuild(&self, inputs: &mut Inputs) {
        rebuild(
            inputs,
            &self.snapshot,
            &self.metrics,
            &self.guard_state,
            &self.discovery,
        );
    }

    /// The circuit-breaker state of each version of `service` that has a breaker.
    pub fn circuit_states(&self, service: &str) -> BTreeMap<String, &'static str> {
        let snapshot = self.snapshot();
        snapshot
            .services
            .iter()
            .filter(|s| s.name == service)
            .flat_map(|s| s.versions.iter())
            .filter_map(|v| Some((v.name.clone(), v.guards.breaker.as_ref()?.state().as_str())))
            .collect()
    }

    /// Adds and removes members of the Redis segment `name` (SADD / SREM); this gateway sees
    /// the change at once, the others at their next refresh.
    pub async fn edit_segment(
        &self,
        name: &str,
        add: &[String],
        remove: &[String],
    ) -> Result<(u64, u64), SegmentError> {
        let config = self.snapshot().config.clone();
        let Some(segment) = config.segments.iter().find(|s| s.name == name) else {
            return Err(SegmentError::Unknown {
                name: name.to_string(),
                segments: config.segments.iter().map(|s| s.name.clone()).collect(),
            });
        };
        if !matches!(segment.source, graylane_config::SegmentSource::Redis { .. }) {
            return Err(SegmentError::NotRedis {
                name: name.to_string(),
            });
        }
        let mirror = self
            .guard_state
            .mirror_of(segment)
            .ok_or_else(|| SegmentError::Redis("cannot connect to its Redis".to_string()))?;
        let added = if add.is_empty() {
            0
        } else {
            mirror
                .add(add)
                .await
                .map_err(|e| SegmentError::Redis(e.to_string()))?
        };
        let removed = if remove.is_empty() {
            0
        } else {
            mirror
                .remove(remove)
                .await
                .map_err(|e| SegmentError::Redis(e.to_string()))?
        };
        Ok((added, removed))
    }

    /// Reads, validates and applies the file at `path`; on any error the current snapshot keeps
    /// serving and the errors are returned (and counted in `graylane_config_reloads_total`).
    pub fn reload_from(&self, path: &Path) -> Result<(), ConfigErrors> {
        match graylane_config::load_file(path) {
            Ok(config) => {
                self.apply(config);
                self.metrics.record_reload(true);
                Ok(())
            }
            Err(errors) => {
                self.metrics.record_reload(false);
                Err(errors)
            }
        }
    }

    /// Stops accepting (unless [`Gateway::hand_over`] did already: then the successor accepts),
    /// answers the requests in flight and the ones arriving on open HTTP/1.1 connections (each
    /// with `Connection: close`) until every connection is closed or the drain timeout is up,
    /// and joins the workers.
    pub fn shutdown(&self) {
        self.advance(Phase::Stopping);
        self.sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let _ = self.shutdown.send(true);
        let handles = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|e| e.into_inner()));
        for handle in handles {
            match handle.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!("worker stopped with an error: {e}"),
                Err(_) => tracing::error!("a worker thread panicked"),
            }
        }
        self.access_logs.close();
        self.traces.close();
    }
}

/// Builds the snapshot of `inputs`, with the current addresses of DNS names, and swaps it in.
fn rebuild(
    inputs: &mut Inputs,
    snapshot: &ArcSwap<Snapshot>,
    metrics: &Metrics,
    guard_state: &GuardState,
    discovery: &Discovery,
) {
    inputs.generation += 1;
    let routes: BTreeMap<String, Routing> = inputs
        .routes
        .iter()
        .filter_map(|(name, named)| {
            let svc = inputs.config.service(name)?;
            svc.release.as_ref()?;
            let resolved = named.resolve(svc);
            if resolved.is_none() {
                tracing::warn!(service = %name, "a version of the release's traffic split is gone; the release starts as configured");
            }
            Some((name.clone(), resolved?))
        })
        .collect();
    let built = Snapshot::build(
        discovery.fill(&inputs.config),
        metrics,
        inputs.generation,
        &routes,
        guard_state,
        &inputs.cookie_keys,
    );
    let built = Snapshot {
        access_log: inputs.access_log.clone(),
        tracer: inputs.tracer.clone(),
        ..built
    };
    snapshot.store(Arc::new(built));
}
