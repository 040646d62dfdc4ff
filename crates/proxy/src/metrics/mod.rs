//! Request metrics, recorded without locks on the request path.
//!
//! Every (service, version) pair gets one [`RouteStats`], resolved once when a routing snapshot
//! is built, so a request never looks up a label set. Inside it each worker thread owns a
//! cache-line-aligned `Slot` of plain atomics that only that thread writes; a scrape sums the
//! slots. Counters live in [`Metrics`] (not in the snapshot), so they survive reloads.
//!
//! The per-request recording is in route.rs, the distinct-unit samples of experiments in
//! units.rs, and the Prometheus exposition of it all in exposition.rs.

mod exposition;
mod route;
mod units;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use graylane_analysis::histogram;
use prometheus_client::collector::Collector;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub use route::{Event, LATENCY_BUCKETS, RouteStats};

use exposition::{RouteCollector, Shared};
use route::Slot;
use units::UnitSample;

/// What one (service, version) has done since the gateway started: the raw material of the
/// analysis, which diffs two of these to judge a window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// The version's upstream exchanges by status (a failed one as its 502/504), including
    /// those that were retried or fell back: how the version itself behaved, not what clients
    /// ended up with.
    pub codes: BTreeMap<u16, u64>,
    /// Exchange times in [`histogram`]'s layout.
    pub latency: Vec<u64>,
    /// Requests routed to the version by bucketing (an experiment's exposures).
    pub bucketed: u64,
}

/// The distinct units one (service, version) has seen, its workers' samples taken together: the
/// unit hashes held, sorted and distinct, all within the same 1 / 2^`level` share of the hash
/// space (at level 0, every unit).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitHashes {
    /// The sampling level: only hashes whose top `level` bits are zero are kept, so each held
    /// hash stands for 2^`level` units.
    pub level: u32,
    /// The unit hashes held, sorted ascending, without repeats.
    pub hashes: Vec<u64>,
}

/// One (service, version)'s figures, as [`Metrics::export`] gives them.
#[derive(Debug, Clone, PartialEq)]
pub struct Exported {
    /// The service's name.
    pub service: String,
    /// The version's name.
    pub version: String,
    /// Its request counts and latency histogram, every worker's summed.
    pub observed: Observed,
    /// `None` for a version whose units are not counted (not an experiment's).
    pub units: Option<UnitHashes>,
}

type ReloadFamily = Family<[(&'static str, &'static str); 1], Counter>;

/// Every metric graylane exports. Cheap to share (`Arc`).
pub struct Metrics {
    workers: usize,
    routes: Mutex<BTreeMap<(String, String), Arc<RouteStats>>>,
    /// Metrics of other parts (the controller's), encoded at scrape time.
    extra: Mutex<Vec<Arc<dyn Collector>>>,
    reloads: ReloadFamily,
    open_connections: Gauge,
    registry: Registry,
}

impl Metrics {
    /// Metrics for `workers` request threads (plus one slot for work done off them).
    pub fn new(workers: usize) -> Arc<Metrics> {
        let reloads = ReloadFamily::default();
        let open_connections = Gauge::default();
        let mut registry = Registry::default();
        registry.register(
            "graylane_config_reloads",
            "Configuration reloads by result (ok or error)",
            reloads.clone(),
        );
        registry.register(
            "graylane_open_connections",
            "Client connections currently open",
            open_connections.clone(),
        );
        Arc::new(Metrics {
            workers: workers + 1,
            routes: Mutex::default(),
            extra: Mutex::default(),
            reloads,
            open_connections,
            registry,
        })
    }

    /// The stats of (`service`, `version`), created on first use and kept across reloads.
    pub fn route(&self, service: &str, version: &str) -> Arc<RouteStats> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes
            .entry((service.to_string(), version.to_string()))
            .or_insert_with(|| {
                Arc::new(RouteStats {
                    service: service.to_string(),
                    version: version.to_string(),
                    slots: (0..self.workers).map(|_| Slot::default()).collect(),
                    units: OnceLock::new(),
                    upgraded: Default::default(),
                })
            })
            .clone()
    }

    /// Everything recorded for `version` of `service` so far (zeros if nothing was).
    pub fn observe(&self, service: &str, version: &str) -> Observed {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let Some(r) = routes
            .get(&(service.to_string(), version.to_string()))
            .cloned()
        else {
            return Observed {
                latency: vec![0; histogram::BUCKETS],
                ..Observed::default()
            };
        };
        drop(routes);
        r.observed()
    }

    /// What [`Metrics::observe`] gives for every (service, version) seen so far, each with its
    /// unit sample: what a fleet node publishes about itself. Reads every counter and unit
    /// table, so it is for a periodic task, never the request path.
    pub fn export(&self) -> Vec<Exported> {
        self.routes_snapshot()
            .iter()
            .map(|r| Exported {
                service: r.service.clone(),
                version: r.version.clone(),
                observed: r.observed(),
                units: r.unit_hashes(),
            })
            .collect()
    }

    /// The unit sample of `version` of `service` (see [`Metrics::distinct_units`]); `None` when
    /// its units are not counted or it has seen nothing.
    pub fn unit_hashes(&self, service: &str, version: &str) -> Option<UnitHashes> {
        let route = {
            let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
            routes
                .get(&(service.to_string(), version.to_string()))
                .cloned()
        };
        route?.unit_hashes()
    }

    /// Requests bucketed into `version` of `service` (on the release's key or the client IP):
    /// an experiment's exposures.
    pub fn bucketed(&self, service: &str, version: &str) -> u64 {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes
            .get(&(service.to_string(), version.to_string()))
            .map_or(0, |r| r.bucketed())
    }

    /// The distinct units (bucketing keys: users) bucketed into each of `versions` of `service`
    /// since the gateway started, as `(counts, level)`. Up to a few thousand units per version
    /// and worker the counts are exact (`level` 0); beyond that each count is of the units whose
    /// key hash falls in the same 1 / 2^`level` share of the hash space, a uniform sample of
    /// the units, the same for every version — so the counts compare with each other (the
    /// sample-ratio-mismatch test) exactly as the full counts would, and `count << level`
    /// estimates the full one. A user who sends many requests counts once.
    pub fn distinct_units(&self, service: &str, versions: &[&str]) -> (Vec<u64>, u32) {
        let samples: Vec<UnitHashes> = versions
            .iter()
            .map(|v| self.unit_hashes(service, v).unwrap_or_default())
            .collect();
        let level = samples.iter().map(|s| s.level).max().unwrap_or(0);
        let counts = samples
            .iter()
            .map(|s| {
                s.hashes
                    .iter()
                    .filter(|h| UnitSample::kept(**h, level))
                    .count() as u64
            })
            .collect();
        (counts, level)
    }

    /// Adds metrics that another part computes at scrape time.
    pub fn add_collector(&self, collector: Arc<dyn Collector>) {
        self.extra
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(collector);
    }

    /// Counts a configuration reload in `graylane_config_reloads_total`, as `result="ok"` when
    /// `ok` and `result="error"` otherwise.
    pub fn record_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.reloads.get_or_create(&[("result", result)]).inc();
    }

    /// A client connection was accepted: raises `graylane_open_connections`.
    pub fn connection_opened(&self) {
        self.open_connections.inc();
    }

    /// A client connection was closed: lowers `graylane_open_connections`.
    pub fn connection_closed(&self) {
        self.open_connections.dec();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let routes = RouteCollector(self.routes_snapshot());
        let mut registry = Registry::default();
        registry.register_collector(Box::new(routes));
        for extra in self.extra.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            registry.register_collector(Box::new(Shared(Arc::clone(extra))));
        }
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry);
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &registry);
        out.push_str("# EOF\n");
        out
    }

    fn routes_snapshot(&self) -> Vec<Arc<RouteStats>> {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes.values().cloned().collect()
    }
}

/// Encodes plain counters kept in atomics (`name`, without `_total`; `help`; the value): the
/// counters of the gateway's background writers, read at scrape time.
pub(crate) fn encode_counters(
    encoder: &mut prometheus_client::encoding::DescriptorEncoder<'_>,
    counters: &[(&str, &str, &std::sync::atomic::AtomicU64)],
) -> Result<(), std::fmt::Error> {
    use prometheus_client::encoding::EncodeMetric;
    use prometheus_client::metrics::MetricType;
    use prometheus_client::metrics::counter::ConstCounter;
    for (name, help, value) in counters {
        let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        ConstCounter::new(value.load(std::sync::atomic::Ordering::Relaxed)).encode(metric)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use graylane_rules::{Decision, Reason};

    use super::units::tests::hash;
    use super::*;

    fn bucketed(unit: u64) -> Decision {
        Decision {
            service: 0,
            version: 0,
            reason: Reason::Bucket {
                bucket: 0,
                weight: graylane_config::Weight::ZERO,
                key: graylane_rules::KeyUsed::Configured,
            },
            pin: None,
            unit,
        }
    }

    #[test]
    fn an_export_holds_every_version_with_what_observe_and_distinct_units_see() {
        let metrics = Metrics::new(2);
        let canary = metrics.route("pay", "canary");
        canary.count_units();
        for worker in 0..3 {
            canary.record_served(worker, 200, Duration::from_millis(3));
            // The same user on every worker counts once.
            canary.record_decision(worker, &bucketed(hash(7)));
            canary.record_decision(worker, &bucketed(hash(worker as u64 + 100)));
        }
        canary.record_served(0, 503, Duration::from_millis(40));
        metrics
            .route("pay", "stable")
            .record_served(1, 200, Duration::from_millis(2));

        let exported = metrics.export();
        assert_eq!(exported.len(), 2);
        let by_version = |v: &str| exported.iter().find(|e| e.version == v).unwrap();
        let canary = by_version("canary");
        assert_eq!(canary.observed, metrics.observe("pay", "canary"));
        assert_eq!(canary.observed.codes, BTreeMap::from([(200, 3), (503, 1)]));
        assert_eq!(canary.observed.bucketed, 6);
        let units = canary.units.as_ref().unwrap();
        assert_eq!(units.level, 0);
        assert_eq!(units.hashes.len(), 4);
        assert!(units.hashes.is_sorted());
        assert_eq!(
            metrics.distinct_units("pay", &["canary", "stable"]),
            (vec![4, 0], 0)
        );
        assert_eq!(by_version("stable").units, None, "stable counts no units");
        assert_eq!(metrics.unit_hashes("pay", "canary").as_ref(), Some(units));
        assert_eq!(metrics.unit_hashes("pay", "nothing"), None);
    }
}
