//! Service discovery by DNS: endpoints given as names (`api.internal:8080`) are resolved on a
//! thread of their own, never on the request path, and re-resolved on their records' TTL
//! (at least [`DnsSettings::MIN_TTL`], at most `dns.max_ttl`) or every `dns.refresh`. Every A
//! and AAAA address of a name is an endpoint. A change of addresses rebuilds the routing
//! snapshot as any other runtime change does, so requests in flight finish on the old one.
//!
//! A lookup that fails (a timeout, SERVFAIL, NXDOMAIN, no address) keeps the name's last
//! addresses, is logged and counted in `graylane_dns_lookup_errors_total`, and is tried again
//! after 1 s, doubling up to the name's refresh interval. A name that has never resolved adds
//! no endpoint: the gateway serves, and a version left without endpoints answers as one whose
//! endpoints are all down (its fallback, else `503`) until the name resolves.
//!
//! A reload keeps the addresses of the names it still uses, and resolves the names it adds
//! before it is applied (for `dns.timeout` at most), so no version is ever left without the
//! endpoints it had.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use graylane_config::{Config, DnsLookup, DnsSettings};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use tokio::sync::{mpsc, watch};

/// Rebuilds the routing snapshot with the addresses as they are now.
pub(crate) type OnChange = Box<dyn Fn() + Send>;

/// The data plane's side of discovery: the addresses every name has now, and the thread that
/// keeps them current.
#[derive(Clone)]
pub(crate) struct Discovery {
    commands: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
}

/// What the resolver thread writes and the snapshot builder and the metrics read.
#[derive(Default)]
pub(crate) struct Shared {
    /// Host → its last good addresses, sorted.
    addresses: Mutex<BTreeMap<String, Vec<IpAddr>>>,
    /// `(service, version, host)` → failed lookups of a name the version uses.
    errors: Mutex<BTreeMap<(String, String, String), u64>>,
}

enum Command {
    /// Follow the names of a configuration about to be applied; `done` is sent once the names
    /// it adds have been looked up once.
    Configure {
        settings: DnsSettings,
        lookups: Vec<DnsLookup>,
        done: std::sync::mpsc::Sender<()>,
    },
    /// From now on, call this when addresses change.
    OnChange(OnChange),
}

impl Discovery {
    /// Starts the resolver thread; it stops when `shutdown` turns true.
    pub(crate) fn start(
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<(Discovery, JoinHandle<std::io::Result<()>>)> {
        let (commands, inbox) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::default());
        let thread_shared = Arc::clone(&shared);
        let handle = std::thread::Builder::new()
            .name("graylane-dns".to_string())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(Resolving::new(thread_shared).run(inbox, shutdown));
                Ok(())
            })?;
        Ok((Discovery { commands, shared }, handle))
    }

    /// Makes the resolver follow `config`'s names and settings, and waits (for `dns.timeout`
    /// and a little more at most) until the names it did not follow yet have been looked up,
    /// so that [`Discovery::fill`] has their addresses. Quick when no name is new.
    pub(crate) fn configure(&self, config: &Config) {
        let lookups = graylane_config::dns_lookups(config);
        let (done, finished) = std::sync::mpsc::channel();
        let sent = self.commands.send(Command::Configure {
            settings: config.dns.clone(),
            lookups,
            done,
        });
        if sent.is_ok() {
            let _ = finished.recv_timeout(config.dns.timeout + Duration::from_millis(500));
        }
    }

    /// Calls `on_change` whenever addresses change from now on (and at once if they changed
    /// since the last [`Discovery::configure`]).
    pub(crate) fn on_change(&self, on_change: OnChange) {
        let _ = self.commands.send(Command::OnChange(on_change));
    }

    /// `config` with its names' endpoints filled in from their current addresses; the same
    /// `Arc` when it names no host.
    pub(crate) fn fill(&self, config: &Arc<Config>) -> Arc<Config> {
        let names_hosts = config
            .services
            .iter()
            .flat_map(|s| &s.versions)
            .any(|v| v.dns.is_some());
        if !names_hosts {
            return Arc::clone(config);
        }
        let addresses = self
            .shared
            .addresses
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        Arc::new(graylane_config::resolve_dns(config, &addresses))
    }

    /// The metrics of lookups: `graylane_dns_lookup_errors_total{service,version,name}` and
    /// `graylane_dns_addresses{name}`.
    pub(crate) fn collector(&self) -> Arc<DnsCollector> {
        Arc::new(DnsCollector(Arc::clone(&self.shared)))
    }
}

/// A name being followed.
struct Followed {
    lookup: DnsLookup,
    /// When it is looked up next.
    due: Instant,
    /// Failed lookups in a row.
    failures: u32,
}

/// The resolver thread's state.
struct Resolving {
    shared: Arc<Shared>,
    settings: Option<DnsSettings>,
    /// Set up at the first lookup with the current settings (a configuration without names
    /// never reads `/etc/resolv.conf`); the error when it could not be.
    resolver: Option<Result<TokioResolver, String>>,
    names: BTreeMap<String, Followed>,
    on_change: Option<OnChange>,
    /// Addresses changed while no one was told.
    unnoticed: bool,
}

impl Resolving {
    fn new(shared: Arc<Shared>) -> Resolving {
        Resolving {
            shared,
            settings: None,
            resolver: None,
            names: BTreeMap::new(),
            on_change: None,
            unnoticed: false,
        }
    }

    async fn run(
        mut self,
        mut inbox: mpsc::UnboundedReceiver<Command>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let next = self.names.values().map(|n| n.due).min();
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.changed() => return,
                command = inbox.recv() => match command {
                    None => return,
                    Some(Command::Configure { settings, lookups, done }) => {
                        let new = self.configure(settings, lookups);
                        let changed = self.resolve(new).await;
                        let waited = done.send(()).is_ok();
                        // The caller applies what it waited for; one that gave up waiting has
                        // applied without these addresses.
                        if changed && !waited {
                            self.changed();
                        }
                    }
                    Some(Command::OnChange(f)) => {
                        if std::mem::take(&mut self.unnoticed) {
                            f();
                        }
                        self.on_change = Some(f);
                    }
                },
                () = sleep => {
                    let now = Instant::now();
                    let due: Vec<String> = self
                        .names
                        .iter()
                        .filter(|(_, n)| n.due <= now)
                        .map(|(h, _)| h.clone())
                        .collect();
                    if self.resolve(due).await {
                        self.changed();
                    }
                }
            }
        }
    }

    /// Addresses changed: rebuild the snapshot, or remember to once someone can.
    fn changed(&mut self) {
        match &self.on_change {
            Some(f) => f(),
            None => self.unnoticed = true,
        }
    }

    /// Follows `lookups` from now on; returns the hosts it did not follow yet.
    fn configure(&mut self, settings: DnsSettings, lookups: Vec<DnsLookup>) -> Vec<String> {
        if self.settings.as_ref() != Some(&settings) {
            self.resolver = None;
            // Other servers may answer otherwise: ask them at once.
            if self.settings.is_some() {
                let now = Instant::now();
                for n in self.names.values_mut() {
                    n.due = now;
                }
            }
            self.settings = Some(settings);
        }
        let hosts: BTreeSet<String> = lookups.iter().map(|l| l.host.clone()).collect();
        // The configuration being replaced may still be rebuilt (a weight change) until the new
        // one is applied: the addresses of its names stay until the next configuration.
        let current: BTreeSet<&String> = self.names.keys().collect();
        self.shared
            .addresses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|h, _| hosts.contains(h) || current.contains(h));
        self.names.retain(|h, _| hosts.contains(h));
        let now = Instant::now();
        let mut new = Vec::new();
        for lookup in lookups {
            match self.names.get_mut(&lookup.host) {
                Some(followed) => followed.lookup = lookup,
                None => {
                    new.push(lookup.host.clone());
                    self.names.insert(
                        lookup.host.clone(),
                        Followed {
                            lookup,
                            due: now,
                            failures: 0,
                        },
                    );
                }
            }
        }
        new
    }

    /// Looks `hosts` up, all at once; returns whether any address changed.
    async fn resolve(&mut self, hosts: Vec<String>) -> bool {
        let (Some(settings), false) = (self.settings.clone(), hosts.is_empty()) else {
            return false;
        };
        let resolver = self
            .resolver
            .get_or_insert_with(|| {
                resolver(&settings).map_err(|e| {
                    tracing::error!("cannot set up the DNS resolver: {e}");
                    format!("no resolver: {e}")
                })
            })
            .clone();
        let mut lookups = tokio::task::JoinSet::new();
        for host in hosts {
            let resolver = resolver.clone();
            let timeout = settings.timeout;
            lookups.spawn(async move {
                let outcome = match resolver {
                    Err(e) => Err(e),
                    Ok(r) => {
                        match tokio::time::timeout(timeout, r.lookup_ip(host.as_str())).await {
                            Err(_) => Err(format!(
                                "no answer within {}",
                                humantime::format_duration(timeout)
                            )),
                            Ok(Err(e)) => Err(e.to_string()),
                            Ok(Ok(found)) => {
                                let mut ips: Vec<IpAddr> = found.iter().collect();
                                ips.sort_unstable();
                                ips.dedup();
                                let ttl = found
                                    .valid_until()
                                    .saturating_duration_since(Instant::now());
                                if ips.is_empty() {
                                    Err("no A or AAAA record".to_string())
                                } else {
                                    Ok((ips, ttl))
                                }
                            }
                        }
                    }
                };
                (host, outcome)
            });
        }
        let mut changed = false;
        while let Some(Ok((host, outcome))) = lookups.join_next().await {
            changed |= self.record(&settings, &host, outcome);
        }
        changed
    }

    /// Takes in one lookup's outcome and schedules the next; returns whether the name's
    /// addresses changed.
    fn record(
        &mut self,
        settings: &DnsSettings,
        host: &str,
        outcome: Result<(Vec<IpAddr>, Duration), String>,
    ) -> bool {
        let Some(followed) = self.names.get_mut(host) else {
            return false;
        };
        let now = Instant::now();
        let ceiling = followed.lookup.refresh.unwrap_or(settings.max_ttl);
        let mut addresses = self
            .shared
            .addresses
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match outcome {
            Ok((ips, ttl)) => {
                let ttl = ttl.clamp(DnsSettings::MIN_TTL, settings.max_ttl);
                let interval = match (followed.lookup.refresh, followed.lookup.follows_ttl) {
                    (Some(r), false) => r,
                    (Some(r), true) => r.min(ttl),
                    (None, _) => ttl,
                };
                followed.due = now + interval;
                if followed.failures > 0 {
                    tracing::info!(name = %host, "DNS lookups succeed again");
                }
                followed.failures = 0;
                if addresses.get(host) == Some(&ips) {
                    return false;
                }
                tracing::info!(name = %host, addresses = ?ips, next_in = ?interval, "endpoints from DNS changed");
                addresses.insert(host.to_string(), ips);
                true
            }
            Err(error) => {
                followed.failures += 1;
                let backoff = Duration::from_secs(1 << followed.failures.min(12).saturating_sub(1));
                followed.due = now + backoff.min(ceiling);
                let mut errors = self.shared.errors.lock().unwrap_or_else(|e| e.into_inner());
                for (service, version) in &followed.lookup.users {
                    *errors
                        .entry((service.clone(), version.clone(), host.to_string()))
                        .or_default() += 1;
                }
                match addresses.get(host) {
                    Some(last) => tracing::warn!(
                        name = %host, %error, kept = ?last,
                        "DNS lookup failed; the last addresses stay in use"
                    ),
                    None => tracing::error!(
                        name = %host, %error, users = ?followed.lookup.users,
                        "DNS lookup failed and the name never resolved: it adds no endpoint (a version without any answers 503) until it does"
                    ),
                }
                false
            }
        }
    }
}

/// A resolver for `settings`: its servers, else `/etc/resolv.conf`'s. Its cache is off: every
/// refresh asks a server, as `refresh` promises.
fn resolver(settings: &DnsSettings) -> Result<TokioResolver, hickory_resolver::ResolveError> {
    let mut builder = if settings.servers.is_empty() {
        TokioResolver::builder_tokio()?
    } else {
        let mut config = ResolverConfig::new();
        for server in &settings.servers {
            config.add_name_server(NameServerConfig::new(*server, Protocol::Udp));
            // For answers too long for a datagram.
            config.add_name_server(NameServerConfig::new(*server, Protocol::Tcp));
        }
        TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
    };
    let options = builder.options_mut();
    options.timeout = settings.timeout;
    options.cache_size = 0;
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    Ok(builder.build())
}

/// Exports lookups at scrape time: `graylane_dns_lookup_errors_total{service,version,name}`
/// and `graylane_dns_addresses{name}`, the addresses in use for a name.
pub(crate) struct DnsCollector(Arc<Shared>);

impl std::fmt::Debug for DnsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DnsCollector")
    }
}

impl prometheus_client::collector::Collector for DnsCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::MetricType;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let errors = self
            .0
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let addresses: Vec<(String, usize)> = self
            .0
            .addresses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(h, ips)| (h.clone(), ips.len()))
            .collect();
        {
            let mut family = encoder.encode_descriptor(
                "graylane_dns_lookup_errors",
                "Failed DNS lookups (timeout, SERVFAIL, NXDOMAIN, no address) of a name a version's endpoints use; its last addresses stay in use",
                None,
                MetricType::Counter,
            )?;
            for ((service, version, name), n) in &errors {
                let labels = [
                    ("service", service.as_str()),
                    ("version", version.as_str()),
                    ("name", name.as_str()),
                ];
                ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "graylane_dns_addresses",
            "Addresses a DNS name resolves to now (the last good answer)",
            None,
            MetricType::Gauge,
        )?;
        for (name, n) in &addresses {
            let labels = [("name", name.as_str())];
            ConstGauge::new(i64::try_from(*n).unwrap_or(i64::MAX))
                .encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
