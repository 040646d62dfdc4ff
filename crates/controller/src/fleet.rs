//! Fleet-wide figures. In a fleet every node publishes a [`NodeReport`] of what it has counted
//! per (service, version) about once a second ([`report`]); the leader keeps the latest report of
//! every other node in [`FleetObservations`], and its controller sees releases through a
//! [`FleetPlane`], which adds those figures to the local node's own. So the analysis, an
//! experiment's results and the live series are about the whole fleet's traffic, not one node's
//! share. No I/O here: publishing the reports and watching them is the fleet wiring's.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use graylane_analysis::Histogram;
use graylane_config::Config;
use graylane_rules::Routing;
use serde::{Deserialize, Serialize};

use crate::analysis::Observation;
use crate::controller::DataPlane;

/// The most unit hashes a report carries for one version, and that [`FleetObservations`] keeps
/// for one version of a node's earlier lives: the bound of one data-plane worker's unit table.
/// A larger sample is thinned by raising its level, as that table does itself.
pub const MAX_REPORTED_UNITS: usize = 12_288;

/// The deepest sampling level: a level-`l` sample keeps the hashes whose top `l` bits are zero.
const MAX_LEVEL: u32 = 63;

/// A sample of the distinct units (bucketing keys) bucketed into one version: unit hashes, all
/// in the same 1 / 2^`level` share of the hash space (at level 0, every unit). Samples of the
/// same units at different levels compare once both are brought to the higher level.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawUnits")]
pub struct UnitHashes {
    pub level: u32,
    pub hashes: Vec<u64>,
}

#[derive(Deserialize)]
struct RawUnits {
    level: u32,
    #[serde(default)]
    hashes: Vec<u64>,
}

impl TryFrom<RawUnits> for UnitHashes {
    type Error = String;

    /// Reads a sample as another node wrote it: its hashes outside its level's share are
    /// dropped and an oversized one is thinned, so a report cannot make this node keep more.
    fn try_from(raw: RawUnits) -> Result<UnitHashes, String> {
        if raw.level > MAX_LEVEL {
            return Err(format!(
                "unit sample level {} is deeper than the deepest, {MAX_LEVEL}",
                raw.level
            ));
        }
        let mut units = UnitHashes {
            level: raw.level,
            hashes: raw.hashes,
        };
        units.hashes.retain(|h| UnitHashes::kept(*h, raw.level));
        units.normalize();
        units.cap(MAX_REPORTED_UNITS);
        Ok(units)
    }
}

impl UnitHashes {
    fn kept(hash: u64, level: u32) -> bool {
        level == 0 || hash >> (64 - level) == 0
    }

    /// Brings the sample to `level` if that is deeper: only the hashes in its share stay.
    fn raise(&mut self, level: u32) {
        let level = level.min(MAX_LEVEL);
        if level > self.level {
            self.level = level;
            self.hashes.retain(|h| Self::kept(*h, level));
        }
    }

    fn normalize(&mut self) {
        self.hashes.sort_unstable();
        self.hashes.dedup();
    }

    /// Raises the level until at most `max` hashes remain.
    fn cap(&mut self, max: usize) {
        while self.hashes.len() > max && self.level < MAX_LEVEL {
            self.raise(self.level + 1);
        }
    }

    /// Adds `other`'s units, both brought to the deeper level first so the result is one
    /// sample: a unit in both counts once.
    fn union(&mut self, other: &UnitHashes) {
        let level = self.level.max(other.level);
        self.raise(level);
        self.hashes
            .extend(other.hashes.iter().filter(|h| UnitHashes::kept(**h, level)));
        self.normalize();
    }
}

/// One node's figures for one (service, version) since the node started, as
/// [`DataPlane::local_figures`] gives them.
#[derive(Debug, Clone, Default)]
pub struct RouteFigures {
    pub service: String,
    pub version: String,
    pub observation: Observation,
    /// `None` for a version whose units the node does not count (not an experiment's).
    pub units: Option<UnitHashes>,
}

/// What one node has counted, as it publishes it to the fleet (JSON, see [`NodeReport::encode`]).
/// Readers ignore fields they do not know, so a newer node's report still reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    /// Changes whenever the node starts: its counters then begin again from zero.
    pub incarnation: u64,
    /// When the figures were taken (ms since the Unix epoch).
    pub at_ms: i64,
    /// Every (service, version) the node has seen anything of.
    #[serde(default)]
    pub routes: Vec<RouteReport>,
}

/// One (service, version) of a [`NodeReport`]: running totals since the node started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RouteReport {
    pub service: String,
    pub version: String,
    /// The version's upstream exchanges by status.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub codes: BTreeMap<u16, u64>,
    /// Exchange times; written as runs of buckets, `[first bucket, count, count, ...]`, with
    /// the long stretches of empty buckets left out.
    #[serde(default, with = "runs", skip_serializing_if = "runs::is_empty")]
    pub latency: Histogram,
    /// Requests routed to the version by bucketing.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bucketed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub units: Option<UnitHashes>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A histogram as runs of consecutive buckets: `[[first bucket, count, ...], ...]`. Up to
/// [`runs::BRIDGED`] empty buckets between two counted ones stay inside a run (a `0` is shorter
/// than starting a new run).
mod runs {
    use graylane_analysis::Histogram;
    use graylane_analysis::histogram::BUCKETS;
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub const BRIDGED: usize = 2;

    pub fn is_empty(h: &Histogram) -> bool {
        h.counts().iter().all(|n| *n == 0)
    }

    pub fn serialize<S: Serializer>(h: &Histogram, s: S) -> Result<S::Ok, S::Error> {
        let mut runs: Vec<Vec<u64>> = Vec::new();
        let mut next = 0;
        for (i, n) in h.counts().iter().enumerate().filter(|(_, n)| **n > 0) {
            match runs.last_mut() {
                Some(run) if i - next <= BRIDGED => {
                    run.extend(std::iter::repeat_n(0, i - next));
                    run.push(*n);
                }
                _ => runs.push(vec![i as u64, *n]),
            }
            next = i + 1;
        }
        runs.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Histogram, D::Error> {
        let runs = Vec::<Vec<u64>>::deserialize(d)?;
        let mut counts = vec![0u64; BUCKETS];
        for run in runs {
            let Some((&start, run)) = run.split_first().filter(|(_, r)| !r.is_empty()) else {
                return Err(D::Error::custom(
                    "a latency run needs its first bucket and at least one count",
                ));
            };
            let start = usize::try_from(start).unwrap_or(usize::MAX);
            if start.saturating_add(run.len()) > BUCKETS {
                return Err(D::Error::custom(format!(
                    "the latency run from bucket {start} with {} counts ends past the last \
                     bucket, {}",
                    run.len(),
                    BUCKETS - 1
                )));
            }
            for (slot, n) in counts[start..].iter_mut().zip(run) {
                *slot = slot.saturating_add(*n);
            }
        }
        Ok(Histogram::from_counts(&counts))
    }
}

/// A report that cannot be read: where in it, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed node report at `{path}`: {message}")]
pub struct ReportError {
    /// The JSON path of the bad part, such as `routes[2].latency`.
    pub path: String,
    pub message: String,
}

impl NodeReport {
    /// The report as compact JSON, for the config store.
    pub fn encode(&self) -> Vec<u8> {
        // Cannot fail: every map key is a number or a string.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a report another node published. Unknown fields are ignored (a newer node's);
    /// anything malformed, or one (service, version) twice, is an error naming where.
    pub fn decode(bytes: &[u8]) -> Result<NodeReport, ReportError> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let report: NodeReport =
            serde_path_to_error::deserialize(&mut de).map_err(|e| ReportError {
                path: e.path().to_string(),
                message: e.into_inner().to_string(),
            })?;
        de.end().map_err(|e| ReportError {
            path: ".".to_string(),
            message: e.to_string(),
        })?;
        for (i, r) in report.routes.iter().enumerate() {
            if report.routes[..i]
                .iter()
                .any(|o| o.is_for(&r.service, &r.version))
            {
                return Err(ReportError {
                    path: format!("routes[{i}]"),
                    message: format!(
                        "version `{}` of `{}` is reported twice",
                        r.version, r.service
                    ),
                });
            }
        }
        Ok(report)
    }
}

impl RouteReport {
    fn is_for(&self, service: &str, version: &str) -> bool {
        self.service == service && self.version == version
    }

    /// Adds the counts (not the units) to `o`.
    fn add_to(&self, o: &mut Observation) {
        add_codes(&mut o.codes, &self.codes);
        o.latency.merge(&self.latency);
        o.bucketed = o.bucketed.saturating_add(self.bucketed);
    }

    /// Adds `other`'s counts and units (an earlier life of the same node) to these.
    fn absorb(&mut self, other: &RouteReport) {
        add_codes(&mut self.codes, &other.codes);
        self.latency.merge(&other.latency);
        self.bucketed = self.bucketed.saturating_add(other.bucketed);
        if let Some(theirs) = &other.units {
            let ours = self.units.get_or_insert_with(UnitHashes::default);
            ours.union(theirs);
            ours.cap(MAX_REPORTED_UNITS);
        }
    }
}

fn add_codes(into: &mut BTreeMap<u16, u64>, from: &BTreeMap<u16, u64>) {
    for (code, n) in from {
        let slot = into.entry(*code).or_default();
        *slot = slot.saturating_add(*n);
    }
}

/// This node's report: what `plane` has counted here (through a [`FleetPlane`] too, which gives
/// the local figures only), at `at_ms`, in its `incarnation`. Versions that saw nothing are left
/// out, and unit samples are thinned to [`MAX_REPORTED_UNITS`].
pub fn report(plane: &dyn DataPlane, incarnation: u64, at_ms: i64) -> NodeReport {
    let routes = plane
        .local_figures()
        .into_iter()
        .filter(|f| {
            !f.observation.codes.is_empty()
                || f.observation.latency.count() > 0
                || f.observation.bucketed > 0
                || f.units
                    .as_ref()
                    .is_some_and(|u| *u != UnitHashes::default())
        })
        .map(|f| RouteReport {
            service: f.service,
            version: f.version,
            codes: f.observation.codes,
            latency: f.observation.latency,
            bucketed: f.observation.bucketed,
            units: f.units.map(|mut u| {
                u.normalize();
                u.cap(MAX_REPORTED_UNITS);
                u
            }),
        })
        .collect();
    NodeReport {
        incarnation,
        at_ms,
        routes,
    }
}

/// What the other nodes of the fleet have counted: each one's latest report, plus what its
/// earlier lives counted. Totals only ever grow, as the analysis (which takes differences over
/// time) needs: a node that restarts (a new incarnation, counters from zero) has its last
/// report of the old life kept in a per-node retired base, and a node that leaves stays counted.
pub struct FleetObservations {
    node: String,
    incarnation: u64,
    nodes: Mutex<BTreeMap<String, Node>>,
}

#[derive(Default)]
struct Node {
    latest: Option<NodeReport>,
    /// The sum of the node's earlier lives, per (service, version).
    retired: Vec<RouteReport>,
    /// It left the fleet (or is an earlier life of this node).
    left: bool,
}

impl Node {
    fn routes<'a>(
        &'a self,
        service: &'a str,
        version: &'a str,
    ) -> impl Iterator<Item = &'a RouteReport> + 'a {
        self.retired
            .iter()
            .chain(self.latest.iter().flat_map(|l| l.routes.iter()))
            .filter(move |r| r.is_for(service, version))
    }

    fn retire(&mut self, old: NodeReport) {
        for route in old.routes {
            match self
                .retired
                .iter_mut()
                .find(|r| r.is_for(&route.service, &route.version))
            {
                Some(r) => r.absorb(&route),
                None => self.retired.push(route),
            }
        }
    }
}

impl FleetObservations {
    /// The other nodes' figures as seen from `node` in its `incarnation`: this node's own
    /// reports of that incarnation are ignored (its live counters are counted instead), those
    /// of an earlier one (read back after a restart) are kept as a past life.
    pub fn new(node: &str, incarnation: u64) -> FleetObservations {
        FleetObservations {
            node: node.to_string(),
            incarnation,
            nodes: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Node>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `node` published `report`. An older report of the same incarnation than the one held is
    /// ignored (its counts would go backwards); one of a new incarnation retires the old life's.
    pub fn update(&self, node: &str, report: NodeReport) {
        let own = node == self.node;
        if own && report.incarnation == self.incarnation {
            return;
        }
        let mut nodes = self.lock();
        let n = nodes.entry(node.to_string()).or_default();
        match n.latest.take() {
            Some(held) if held.incarnation == report.incarnation && held.at_ms > report.at_ms => {
                n.latest = Some(held);
                return;
            }
            Some(held) if held.incarnation != report.incarnation => n.retire(held),
            _ => {}
        }
        n.latest = Some(report);
        n.left = own;
    }

    /// `node` left the fleet. What it counted stays in the totals; should it come back in the
    /// same incarnation (it was only cut off), its reports go on from where they were.
    pub fn remove(&self, node: &str) {
        if let Some(n) = self.lock().get_mut(node) {
            n.left = true;
        }
    }

    /// The other nodes in the fleet whose reports are counted, with when their latest was
    /// taken (nodes that left and this node's earlier lives still count, but are not listed).
    pub fn reporting(&self) -> Vec<(String, i64)> {
        self.lock()
            .iter()
            .filter(|(_, n)| !n.left)
            .filter_map(|(name, n)| Some((name.clone(), n.latest.as_ref()?.at_ms)))
            .collect()
    }

    /// `local` (this node's figures of `version` of `service`) plus every other node's:
    /// statuses summed, latency histograms added, exposures summed.
    pub fn observe(&self, service: &str, version: &str, local: Observation) -> Observation {
        let mut out = local;
        for node in self.lock().values() {
            for r in node.routes(service, version) {
                r.add_to(&mut out);
            }
        }
        out
    }

    /// The distinct units bucketed into each of `versions` of `service` over the whole fleet,
    /// as `(counts, level)` like [`DataPlane::units`]: every node's sample of a version (and
    /// `local[i]`, this node's of `versions[i]`) brought to the deepest level among all of them,
    /// then united, so a user seen on two nodes counts once.
    pub fn units(&self, service: &str, versions: &[&str], local: &[UnitHashes]) -> (Vec<u64>, u32) {
        let nodes = self.lock();
        let samples: Vec<Vec<&UnitHashes>> = versions
            .iter()
            .enumerate()
            .map(|(i, version)| {
                local
                    .get(i)
                    .into_iter()
                    .chain(
                        nodes
                            .values()
                            .flat_map(|n| n.routes(service, version))
                            .filter_map(|r| r.units.as_ref()),
                    )
                    .collect()
            })
            .collect();
        let level = samples
            .iter()
            .flatten()
            .map(|u| u.level.min(MAX_LEVEL))
            .max()
            .unwrap_or(0);
        let counts = samples
            .iter()
            .map(|of_version| {
                let mut all: Vec<u64> = of_version
                    .iter()
                    .flat_map(|u| u.hashes.iter().copied())
                    .filter(|h| UnitHashes::kept(*h, level))
                    .collect();
                all.sort_unstable();
                all.dedup();
                all.len() as u64
            })
            .collect();
        (counts, level)
    }
}

/// The data plane of a fleet's node as its controller sees it: routing goes to the local
/// gateway, while what a version did (and its distinct units) is the whole fleet's, this node's
/// live figures plus the other nodes' reports.
pub struct FleetPlane {
    local: Arc<dyn DataPlane>,
    fleet: Arc<FleetObservations>,
}

impl FleetPlane {
    pub fn new(local: Arc<dyn DataPlane>, fleet: Arc<FleetObservations>) -> FleetPlane {
        FleetPlane { local, fleet }
    }
}

impl DataPlane for FleetPlane {
    fn apply(&self, config: Config, routes: &BTreeMap<String, Routing>) {
        self.local.apply(config, routes);
    }

    fn set_routing(&self, service: &str, routing: Routing) {
        self.local.set_routing(service, routing);
    }

    fn observe(&self, service: &str, version: &str) -> Observation {
        self.fleet
            .observe(service, version, self.local.observe(service, version))
    }

    fn units(&self, service: &str, versions: &[&str]) -> (Vec<u64>, u32) {
        let local: Vec<UnitHashes> = versions
            .iter()
            .map(|v| self.local.local_units(service, v).unwrap_or_default())
            .collect();
        self.fleet.units(service, versions, &local)
    }

    fn assign(&self, service: &str, key: &str) -> Option<String> {
        self.local.assign(service, key)
    }

    fn circuit_states(&self, service: &str) -> BTreeMap<String, &'static str> {
        self.local.circuit_states(service)
    }

    fn local_figures(&self) -> Vec<RouteFigures> {
        self.local.local_figures()
    }

    fn local_units(&self, service: &str, version: &str) -> Option<UnitHashes> {
        self.local.local_units(service, version)
    }
}
