//! The gateway as a whole: worker threads serving a routing snapshot that can be replaced
//! atomically at any time. This is the one type the binary (and tests) drive.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use graylane_config::{Config, ConfigErrors, Service, Weight};
use graylane_rules::{Routing, Share};
use tokio::sync::watch;

use crate::control::ControlState;
use crate::metrics::Metrics;
use crate::server::{
    BoundListener, ConnectionLimit, WorkerSetup, bind_reuseport, run_worker, tls_acceptor,
};
use crate::snapshot::Snapshot;

/// How the gateway runs, beyond what the configuration file says.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// Worker threads; each has its own runtime, listener sockets and upstream pool.
    pub workers: usize,
    /// How long SIGTERM waits for in-flight requests before closing connections.
    pub drain_timeout: Duration,
    /// Where Redis segments keep the members they last read (`serve` uses `DATA_DIR/segments`),
    /// so a restart during a Redis outage still serves them; `None` keeps nothing.
    pub segment_cache: Option<std::path::PathBuf>,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            drain_timeout: Duration::from_secs(30),
            segment_cache: None,
        }
    }
}

/// What snapshots are built from.
struct Control {
    config: Arc<Config>,
    /// Traffic splits set by the rollout controller, by service name. Kept by version *name* so
    /// they survive reloads that add or reorder versions.
    routes: BTreeMap<String, NamedRouting>,
    generation: u64,
}

/// A [`Routing`] with version names instead of indices.
#[derive(Debug, Clone)]
struct NamedRouting {
    force_to: Option<String>,
    shares: Vec<(String, Weight)>,
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
        Some(Routing { force_to, shares })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("listener {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start worker thread: {0}")]
    Thread(std::io::Error),
}

/// Why segment members could not be changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    #[error("unknown segment `{name}`; segments: {}", segments.join(", "))]
    Unknown { name: String, segments: Vec<String> },
    #[error(
        "segment `{name}` lists its members in the configuration; only a `source: redis` segment is edited through the API"
    )]
    NotRedis { name: String },
    #[error("Redis did not take the change: {0}")]
    Redis(String),
}

/// A weight was set for a service that has no release.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("service `{service}` has no release; services with one: {}", releases.join(", "))]
pub struct UnknownRelease {
    pub service: String,
    pub releases: Vec<String>,
}

pub struct Gateway {
    snapshot: Arc<ArcSwap<Snapshot>>,
    metrics: Arc<Metrics>,
    /// Traffic-control state (limiter tokens, breaker windows, ejections) that outlives
    /// snapshots.
    control_state: Arc<ControlState>,
    /// Serialises snapshot rebuilds (reloads and weight changes) so neither loses the other's
    /// update; requests never touch it.
    control: Mutex<Control>,
    local_addrs: Vec<SocketAddr>,
    shutdown: watch::Sender<bool>,
    workers: Mutex<Vec<JoinHandle<std::io::Result<()>>>>,
}

impl Gateway {
    /// Binds every listener and starts the workers serving `config`.
    pub fn start(config: Config, options: GatewayOptions) -> Result<Gateway, StartError> {
        let workers = options.workers.max(1);
        let metrics = Metrics::new(workers);
        let mut per_worker: Vec<Vec<BoundListener>> = (0..workers).map(|_| Vec::new()).collect();
        let mut local_addrs = Vec::new();
        for listener in &config.listeners {
            let addr = listener.bind;
            let tls = match &listener.tls {
                Some(t) => {
                    Some(tls_acceptor(t).map_err(|source| StartError::Tls { addr, source })?)
                }
                None => None,
            };
            let sockets = bind_reuseport(addr, workers)
                .map_err(|source| StartError::Bind { addr, source })?;
            if let Some(first) = sockets.first() {
                local_addrs.push(
                    first
                        .local_addr()
                        .map_err(|source| StartError::Bind { addr, source })?,
                );
            }
            let connections = ConnectionLimit::new(listener.max_connections);
            for (w, socket) in sockets.into_iter().enumerate() {
                per_worker[w].push(BoundListener {
                    socket,
                    config: listener.clone(),
                    tls: tls.clone(),
                    connections: Arc::clone(&connections),
                });
            }
        }
        let upstream = config.upstream.clone();
        let config = Arc::new(config);
        let control_state = Arc::new(ControlState::with_segment_cache(
            options.segment_cache.clone(),
        ));
        let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::build(
            Arc::clone(&config),
            &metrics,
            1,
            &BTreeMap::new(),
            &control_state,
        )));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let shutdown_rx_for_prober = shutdown_rx.clone();
        let mut handles = Vec::new();
        for (id, listeners) in per_worker.into_iter().enumerate() {
            let setup = WorkerSetup {
                id,
                listeners,
                snapshot: Arc::clone(&snapshot),
                metrics: Arc::clone(&metrics),
                shutdown: shutdown_rx.clone(),
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
        metrics.add_collector(Arc::new(crate::control::BreakerCollector(
            Arc::clone(&snapshot),
            Arc::clone(&control_state),
        )));
        let prober = crate::health::spawn_prober(Arc::clone(&snapshot), shutdown_rx_for_prober)
            .map_err(StartError::Thread)?;
        handles.push(prober);
        Ok(Gateway {
            snapshot,
            metrics,
            control_state,
            control: Mutex::new(Control {
                config,
                routes: BTreeMap::new(),
                generation: 1,
            }),
            local_addrs,
            shutdown,
            workers: Mutex::new(handles),
        })
    }

    /// The addresses actually bound, in configuration order (useful with port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The snapshot requests are being routed with right now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Replaces the routing snapshot atomically: every request after this sees `config`, every
    /// request before it finishes on the old one. Listener changes need a restart.
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
        let mut control = self.control.lock().unwrap_or_else(|e| e.into_inner());
        control.config = Arc::new(config);
        self.rebuild(&mut control);
    }

    /// Applies `config` and, in the same swap, the traffic split of every release in `routes`
    /// (by service name; the others start as configured). This is how the rollout controller
    /// applies a new configuration: no request ever sees the new config with old splits.
    pub fn apply_with_routes(&self, config: Config, routes: &BTreeMap<String, Routing>) {
        let mut control = self.control.lock().unwrap_or_else(|e| e.into_inner());
        control.routes = routes
            .iter()
            .filter_map(|(name, r)| {
                let svc = config.service(name)?;
                Some((name.clone(), NamedRouting::from_routing(svc, r)))
            })
            .collect();
        control.config = Arc::new(config);
        self.rebuild(&mut control);
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
        let mut control = self.control.lock().unwrap_or_else(|e| e.into_inner());
        let config = Arc::clone(&control.config);
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
        control.routes.insert(service.to_string(), named);
        self.rebuild(&mut control);
        Ok(())
    }

    fn rebuild(&self, control: &mut Control) {
        control.generation += 1;
        let routes: BTreeMap<String, Routing> = control
            .routes
            .iter()
            .filter_map(|(name, named)| {
                let svc = control.config.service(name)?;
                svc.release.as_ref()?;
                let resolved = named.resolve(svc);
                if resolved.is_none() {
                    tracing::warn!(service = %name, "a version of the release's traffic split is gone; the release starts as configured");
                }
                Some((name.clone(), resolved?))
            })
            .collect();
        let snapshot = Snapshot::build(
            Arc::clone(&control.config),
            &self.metrics,
            control.generation,
            &routes,
            &self.control_state,
        );
        self.snapshot.store(Arc::new(snapshot));
    }

    /// The circuit-breaker state of each version of `service` that has a breaker.
    pub fn circuit_states(&self, service: &str) -> BTreeMap<String, &'static str> {
        let snapshot = self.snapshot();
        snapshot
            .services
            .iter()
            .filter(|s| s.name == service)
            .flat_map(|s| s.versions.iter())
            .filter_map(|v| Some((v.name.clone(), v.control.breaker.as_ref()?.state().as_str())))
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
            .control_state
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

    /// Stops accepting, lets in-flight requests finish (up to the drain timeout), and joins
    /// the workers.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        let handles = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|e| e.into_inner()));
        for handle in handles {
            match handle.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!("worker stopped with an error: {e}"),
                Err(_) => tracing::error!("a worker thread panicked"),
            }
        }
    }
}
