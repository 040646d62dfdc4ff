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
use crate::events::{EventTotals, add_events};

/// The most unit hashes a report carries for one version, and that [`FleetObservations`] keeps
/// for one version of a node's earlier lives. Reports go to etcd every second, so this keeps
/// one small (about 90 KB of JSON per version at most, far below etcd's 1.5 MiB request
/// limit); a larger sample is thinned by raising its level, as the data plane's own table does.
/// The price: past ~4,000 users per version, the fleet-wide sample-ratio test sees a sample.
pub const MAX_REPORTED_UNITS: usize = 4_096;

/// The deepest sampling level: a level-`l` sample keeps the hashes whose top `l` bits are zero.
const MAX_LEVEL: u32 = 63;

/// A sample of the distinct units (bucketing keys) bucketed into one version: unit hashes, all
/// in the same 1 / 2^`level` share of the hash space (at level 0, every unit). Samples of the
/// same units at different levels compare once both are brought to the higher level.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawUnits")]
pub struct UnitHashes {
    /// The sampling level, 0 to 63: only hashes whose top `level` bits are zero are kept, so
    /// each stands for 2^`level` units.
    pub level: u32,
    /// The unit hashes, sorted ascending, without repeats.
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
    /// The service's name.
    pub service: String,
    /// The version's name.
    pub version: String,
    /// What the node's gateway saw of the version.
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
    /// The service's name.
    pub service: String,
    /// The version's name.
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
    /// The sample of distinct units bucketed into the version, at most
    /// [`MAX_REPORTED_UNITS`] hashes; absent when the node does not count them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub units: Option<UnitHashes>,
    /// Business events attributed to the version on the node, by event name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub events: BTreeMap<String, EventTotals>,
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

    pub(super) const BRIDGED: usize = 2;

    pub(super) fn is_empty(h: &Histogram) -> bool {
        h.counts().iter().all(|n| *n == 0)
    }

    pub(super) fn serialize<S: Serializer>(h: &Histogram, s: S) -> Result<S::Ok, S::Error> {
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

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Histogram, D::Error> {
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
    /// What is wrong there.
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
        // serde would also read a struct from an array of its fields' values.
        if bytes.trim_ascii_start().first() != Some(&b'{') {
            return Err(ReportError {
                path: ".".to_string(),
                message: "a report is a JSON object".to_string(),
            });
        }
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

    /// Adds the counts and events (not the units) to `o`.
    fn add_to(&self, o: &mut Observation) {
        add_codes(&mut o.codes, &self.codes);
        o.latency.merge(&self.latency);
        o.bucketed = o.bucketed.saturating_add(self.bucketed);
        add_events(&mut o.events, &self.events);
    }

    /// Adds `other`'s counts and units (an earlier life of the same node) to these.
    fn absorb(&mut self, other: &RouteReport) {
        add_codes(&mut self.codes, &other.codes);
        self.latency.merge(&other.latency);
        self.bucketed = self.bucketed.saturating_add(other.bucketed);
        add_events(&mut self.events, &other.events);
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
            events: BTreeMap::new(),
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
    /// Routes through `local` (this node's gateway) and observes through `fleet` (every
    /// node's figures).
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

#[cfg(test)]
mod tests {
    use super::*;
    use graylane_analysis::histogram::{BUCKETS, bucket_of};

    const MS: u64 = 1_000_000;

    fn histogram(times: &[(u64, u64)]) -> Histogram {
        let mut counts = vec![0; BUCKETS];
        for (nanos, n) in times {
            counts[bucket_of(*nanos)] += n;
        }
        Histogram::from_counts(&counts)
    }

    fn route(version: &str, codes: &[(u16, u64)], times: &[(u64, u64)]) -> RouteReport {
        RouteReport {
            service: "pay".to_string(),
            version: version.to_string(),
            codes: codes.iter().copied().collect(),
            latency: histogram(times),
            bucketed: codes.iter().map(|(_, n)| n).sum(),
            units: None,
            events: BTreeMap::new(),
        }
    }

    fn report(incarnation: u64, at_ms: i64, routes: Vec<RouteReport>) -> NodeReport {
        NodeReport {
            incarnation,
            at_ms,
            routes,
        }
    }

    fn observation(codes: &[(u16, u64)], times: &[(u64, u64)]) -> Observation {
        Observation {
            codes: codes.iter().copied().collect(),
            latency: histogram(times),
            bucketed: codes.iter().map(|(_, n)| n).sum(),
            events: BTreeMap::new(),
        }
    }

    fn requests(o: &Observation) -> u64 {
        o.codes.values().sum()
    }

    #[test]
    fn the_fleet_figures_of_a_version_are_the_sum_of_every_node_s() {
        let fleet = FleetObservations::new("a", 1);
        let local = observation(&[(200, 90), (500, 10)], &[(2 * MS, 100)]);
        assert_eq!(
            fleet.observe("pay", "canary", local.clone()).codes,
            local.codes,
            "alone, a node sees its own figures"
        );

        fleet.update(
            "b",
            report(
                7,
                1_000,
                vec![
                    route("canary", &[(200, 40), (503, 2)], &[(3 * MS, 42)]),
                    route("stable", &[(200, 1_000)], &[(MS, 1_000)]),
                ],
            ),
        );
        let two = fleet.observe("pay", "canary", local.clone());
        assert_eq!(two.codes, BTreeMap::from([(200, 130), (500, 10), (503, 2)]));
        assert_eq!(two.bucketed, 142);
        assert_eq!(two.latency, histogram(&[(2 * MS, 100), (3 * MS, 42)]));

        fleet.update(
            "c",
            report(
                3,
                1_000,
                vec![route("canary", &[(200, 8)], &[(90 * MS, 8)])],
            ),
        );
        let three = fleet.observe("pay", "canary", local);
        assert_eq!(
            three.codes,
            BTreeMap::from([(200, 138), (500, 10), (503, 2)])
        );
        assert_eq!(three.bucketed, 150);
        assert_eq!(
            three.latency,
            histogram(&[(2 * MS, 100), (3 * MS, 42), (90 * MS, 8)])
        );
        // Another version, and another service, are counted apart.
        let stable = fleet.observe("pay", "stable", Observation::default());
        assert_eq!(stable.codes, BTreeMap::from([(200, 1_000)]));
        assert_eq!(
            requests(&fleet.observe("other", "canary", Observation::default())),
            0
        );
    }

    #[test]
    fn a_node_that_restarts_keeps_what_it_counted_before() {
        let fleet = FleetObservations::new("a", 1);
        let canary = |fleet: &FleetObservations| {
            requests(&fleet.observe("pay", "canary", Observation::default()))
        };
        fleet.update(
            "b",
            report(1, 1_000, vec![route("canary", &[(200, 100)], &[])]),
        );
        fleet.update(
            "b",
            report(1, 2_000, vec![route("canary", &[(200, 150)], &[])]),
        );
        assert_eq!(canary(&fleet), 150);
        // A late copy of an earlier report of the same life would take counts back: ignored.
        fleet.update(
            "b",
            report(1, 1_500, vec![route("canary", &[(200, 120)], &[])]),
        );
        assert_eq!(canary(&fleet), 150);

        // b restarts: its counters begin again from zero.
        fleet.update(
            "b",
            report(2, 3_000, vec![route("canary", &[(200, 5)], &[])]),
        );
        assert_eq!(canary(&fleet), 155);
        fleet.update(
            "b",
            report(2, 4_000, vec![route("canary", &[(200, 30), (500, 1)], &[])]),
        );
        assert_eq!(canary(&fleet), 181);
        // And again, with a version the earlier lives did not have.
        fleet.update(
            "b",
            report(
                3,
                5_000,
                vec![
                    route("canary", &[(200, 2)], &[]),
                    route("stable", &[(200, 9)], &[]),
                ],
            ),
        );
        assert_eq!(canary(&fleet), 183);
        assert_eq!(
            requests(&fleet.observe("pay", "stable", Observation::default())),
            9
        );
    }

    #[test]
    fn a_node_that_leaves_stays_counted_and_goes_on_where_it_was_when_it_rejoins() {
        let fleet = FleetObservations::new("a", 1);
        let canary = |fleet: &FleetObservations| {
            requests(&fleet.observe("pay", "canary", Observation::default()))
        };
        fleet.update(
            "b",
            report(1, 1_000, vec![route("canary", &[(200, 100)], &[])]),
        );
        fleet.update(
            "c",
            report(1, 1_000, vec![route("canary", &[(200, 10)], &[])]),
        );
        assert_eq!(
            fleet.reporting(),
            vec![("b".to_string(), 1_000), ("c".to_string(), 1_000)]
        );

        fleet.remove("b");
        fleet.remove("nobody");
        assert_eq!(canary(&fleet), 110, "what b counted still counts");
        assert_eq!(fleet.reporting(), vec![("c".to_string(), 1_000)]);

        // b was only cut off: the same life's counters went on meanwhile.
        fleet.update(
            "b",
            report(1, 9_000, vec![route("canary", &[(200, 130)], &[])]),
        );
        assert_eq!(canary(&fleet), 140, "not counted twice");
        assert_eq!(fleet.reporting().len(), 2);

        // c leaves, and comes back restarted.
        fleet.remove("c");
        fleet.update(
            "c",
            report(2, 9_000, vec![route("canary", &[(200, 1)], &[])]),
        );
        assert_eq!(canary(&fleet), 141);
    }

    #[test]
    fn this_node_s_own_report_counts_only_from_an_earlier_life() {
        let fleet = FleetObservations::new("a", 2);
        // Its live counters are the local figures: its published copy of them is not added.
        fleet.update(
            "a",
            report(2, 1_000, vec![route("canary", &[(200, 50)], &[])]),
        );
        assert_eq!(
            requests(&fleet.observe("pay", "canary", Observation::default())),
            0
        );
        // What it counted before it restarted is.
        fleet.update(
            "a",
            report(1, 900, vec![route("canary", &[(200, 70)], &[])]),
        );
        assert_eq!(
            requests(&fleet.observe("pay", "canary", Observation::default())),
            70
        );
        assert!(fleet.reporting().is_empty(), "a past life is not a member");
    }

    fn units(level: u32, hashes: &[u64]) -> UnitHashes {
        UnitHashes {
            level,
            hashes: hashes.to_vec(),
        }
    }

    fn with_units(version: &str, u: UnitHashes) -> RouteReport {
        RouteReport {
            units: Some(u),
            ..route(version, &[(200, 1)], &[])
        }
    }

    #[test]
    fn a_unit_seen_on_two_nodes_counts_once() {
        let fleet = FleetObservations::new("a", 1);
        fleet.update(
            "b",
            report(
                1,
                1_000,
                vec![
                    with_units("a", units(0, &[3, 4])),
                    with_units("b", units(0, &[20])),
                ],
            ),
        );
        fleet.update(
            "c",
            report(1, 1_000, vec![with_units("a", units(0, &[1, 4, 5]))]),
        );
        let local = [units(0, &[1, 2, 3]), units(0, &[20, 21])];
        assert_eq!(
            fleet.units("pay", &["a", "b"], &local),
            (vec![5, 2], 0),
            "a: 1..=5; b: 20, 21"
        );
        assert_eq!(
            fleet.units("pay", &["a", "b", "c"], &[]),
            (vec![4, 1, 0], 0)
        );
    }

    #[test]
    fn unit_samples_at_different_levels_are_united_at_the_deepest() {
        // At level 1 only hashes whose top bit is 0 stay; at level 2, the top two bits.
        let top = 1u64 << 63;
        let second = 1u64 << 62;
        let fleet = FleetObservations::new("a", 1);
        fleet.update(
            "b",
            report(
                1,
                1_000,
                vec![
                    with_units("a", units(2, &[1, 7])),
                    with_units("b", units(0, &[9])),
                ],
            ),
        );
        let local = [units(1, &[1, 2, second | 3]), units(0, &[top | 4, 9, 10])];
        assert_eq!(
            fleet.units("pay", &["a", "b"], &local),
            (vec![3, 2], 2),
            "a: 1, 2, 7 (second | 3 is outside level 2); b: 9, 10 (top | 4 is outside)"
        );
    }

    #[test]
    fn the_units_of_a_node_s_earlier_lives_stay_united_with_its_current_one() {
        let fleet = FleetObservations::new("a", 1);
        fleet.update(
            "b",
            report(1, 1_000, vec![with_units("a", units(0, &[1, 2]))]),
        );
        fleet.update(
            "b",
            report(2, 2_000, vec![with_units("a", units(0, &[2, 3]))]),
        );
        fleet.update("b", report(3, 3_000, vec![with_units("a", units(0, &[4]))]));
        assert_eq!(fleet.units("pay", &["a"], &[]), (vec![4], 0));
    }

    /// A data plane with fixed figures, as a gateway's would be.
    struct Fixed(Vec<RouteFigures>);

    impl DataPlane for Fixed {
        fn apply(&self, _: Config, _: &BTreeMap<String, Routing>) {}
        fn set_routing(&self, _: &str, _: Routing) {}
        fn observe(&self, service: &str, version: &str) -> Observation {
            self.0
                .iter()
                .find(|f| f.service == service && f.version == version)
                .map(|f| f.observation.clone())
                .unwrap_or_default()
        }
        fn units(&self, _: &str, versions: &[&str]) -> (Vec<u64>, u32) {
            (vec![0; versions.len()], 0)
        }
        fn assign(&self, _: &str, _: &str) -> Option<String> {
            None
        }
        fn circuit_states(&self, _: &str) -> BTreeMap<String, &'static str> {
            BTreeMap::new()
        }
        fn local_figures(&self) -> Vec<RouteFigures> {
            self.0.clone()
        }
        fn local_units(&self, service: &str, version: &str) -> Option<UnitHashes> {
            self.0
                .iter()
                .find(|f| f.service == service && f.version == version)?
                .units
                .clone()
        }
    }

    fn figures(version: &str, observation: Observation, units: Option<UnitHashes>) -> RouteFigures {
        RouteFigures {
            service: "pay".to_string(),
            version: version.to_string(),
            observation,
            units,
        }
    }

    #[test]
    fn a_node_reports_its_own_figures_leaving_out_versions_that_saw_nothing() {
        let many: Vec<u64> = (1..=40_000u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        let local: Arc<dyn DataPlane> = Arc::new(Fixed(vec![
            figures(
                "canary",
                observation(&[(200, 5)], &[(MS, 5)]),
                Some(units(0, &many)),
            ),
            figures("stable", Observation::default(), None),
        ]));
        let fleet = Arc::new(FleetObservations::new("a", 1));
        fleet.update(
            "b",
            report(1, 1_000, vec![route("canary", &[(500, 9)], &[])]),
        );
        // Through a FleetPlane the report is still this node's alone.
        let plane = FleetPlane::new(local, Arc::clone(&fleet));
        let mine = super::report(&plane, 4, 2_000);
        assert_eq!((mine.incarnation, mine.at_ms), (4, 2_000));
        assert_eq!(mine.routes.len(), 1, "stable saw nothing");
        let canary = &mine.routes[0];
        assert_eq!(canary.codes, BTreeMap::from([(200, 5)]));
        let sample = canary.units.as_ref().unwrap();
        assert!(sample.hashes.len() <= MAX_REPORTED_UNITS);
        assert!(
            sample.level >= 2,
            "40 000 units thinned to a quarter or less"
        );
        assert!(sample.hashes.iter().all(|h| h >> (64 - sample.level) == 0));

        // While the plane the controller sees is the fleet's.
        assert_eq!(
            plane.observe("pay", "canary").codes,
            BTreeMap::from([(200, 5), (500, 9)])
        );
        let (counts, level) = plane.units("pay", &["canary"]);
        assert_eq!(level, 0, "b has no sample, this node's is exact");
        assert_eq!(counts, vec![40_000]);
    }

    #[test]
    fn a_report_of_four_versions_with_full_histograms_stays_small() {
        let full = Histogram::from_counts(
            &(0..BUCKETS as u64)
                .map(|i| 1 + (i * 7_919) % 999_999)
                .collect::<Vec<_>>(),
        );
        let routes = ["stable", "canary", "variant-b", "variant-c"]
            .into_iter()
            .map(|v| RouteReport {
                service: "checkout-service".to_string(),
                version: v.to_string(),
                codes: BTreeMap::from([
                    (200, 98_765_432),
                    (404, 12_345),
                    (500, 2_345),
                    (502, 17),
                    (503, 99),
                    (504, 3),
                ]),
                latency: full.clone(),
                bucketed: 98_780_241,
                units: None,
                events: BTreeMap::new(),
            })
            .collect();
        let r = report(1_767_225_600_123, 1_767_225_600_123, routes);
        let json = r.encode();
        assert!(json.len() < 8 * 1024, "{} bytes", json.len());
        assert_eq!(NodeReport::decode(&json).unwrap(), r);
    }

    #[test]
    fn empty_buckets_are_left_out_of_a_report() {
        let mut r = route(
            "canary",
            &[(200, 6)],
            &[(MS, 1), (1_100_000, 2), (5_000 * MS, 3)],
        );
        r.units = Some(units(0, &[5, 6]));
        let json = String::from_utf8(report(1, 2, vec![r.clone()]).encode()).unwrap();
        let (a, b, c) = (bucket_of(MS), bucket_of(1_100_000), bucket_of(5_000 * MS));
        assert_eq!(b, a + 1);
        assert!(
            json.contains(&format!(r#""latency":[[{a},1,2],[{c},3]]"#)),
            "{json}"
        );
        let zero = route("stable", &[], &[]);
        let json = String::from_utf8(report(1, 2, vec![zero.clone()]).encode()).unwrap();
        assert_eq!(
            json,
            r#"{"incarnation":1,"at_ms":2,"routes":[{"service":"pay","version":"stable"}]}"#
        );
        assert_eq!(
            NodeReport::decode(json.as_bytes()).unwrap().routes,
            vec![zero]
        );
        // A gap of up to two empty buckets stays inside a run: shorter than a new one.
        let gap = RouteReport {
            latency: Histogram::from_counts(&[0, 4, 0, 0, 5, 0, 0, 0, 6]),
            ..route("x", &[], &[])
        };
        let json = String::from_utf8(report(1, 2, vec![gap.clone()]).encode()).unwrap();
        assert!(json.contains(r#""latency":[[1,4,0,0,5],[8,6]]"#), "{json}");
        assert_eq!(
            NodeReport::decode(json.as_bytes()).unwrap().routes,
            vec![gap]
        );
    }

    #[test]
    fn a_report_in_a_newer_format_still_reads() {
        let json = br#"{
            "incarnation": 3, "at_ms": 10, "format": 2, "zone": "eu-1",
            "routes": [{
                "service": "pay", "version": "canary", "codes": {"200": 4},
                "latency": [[10, 4]], "bucketed": 4, "attempts": {"200": 9},
                "units": {"level": 0, "hashes": [9, 8, 8], "sketch": "abc"}
            }]
        }"#;
        let r = NodeReport::decode(json).unwrap();
        assert_eq!(r.incarnation, 3);
        assert_eq!(r.routes[0].codes, BTreeMap::from([(200, 4)]));
        assert_eq!(r.routes[0].latency.count(), 4);
        assert_eq!(r.routes[0].units, Some(units(0, &[8, 9])));
    }

    #[test]
    fn a_malformed_report_is_an_error_naming_where() {
        let error = |json: &str| NodeReport::decode(json.as_bytes()).unwrap_err();
        let route = |fields: &str| {
            format!(
                r#"{{"incarnation":1,"at_ms":1,"routes":[{{"service":"pay","version":"v1"}},{{"service":"pay","version":"v2",{fields}}}]}}"#
            )
        };

        let e = error(&route(r#""latency":[[200,1,2,3,4,5,6,7,8,9]]"#));
        assert_eq!(e.path, "routes[1].latency");
        assert!(e.message.contains("past the last bucket, 207"), "{e}");
        let e = error(&route(r#""latency":[[3]]"#));
        assert_eq!(e.path, "routes[1].latency");
        assert!(e.message.contains("at least one count"), "{e}");
        let e = error(&route(r#""latency":[[18446744073709551615,1]]"#));
        assert_eq!(e.path, "routes[1].latency");
        let e = error(&route(r#""codes":{"ok":3}"#));
        assert!(e.path.starts_with("routes[1].codes"), "{e}");
        let e = error(&route(r#""bucketed":-1"#));
        assert_eq!(e.path, "routes[1].bucketed");
        let e = error(&route(r#""units":{"level":64,"hashes":[]}"#));
        assert_eq!(e.path, "routes[1].units");
        assert!(e.message.contains("level 64"), "{e}");
        let e = error(&route(r#""version":"v1""#).replace(r#""version":"v2","#, ""));
        assert_eq!(e.path, "routes[1]");
        assert_eq!(e.message, "version `v1` of `pay` is reported twice");
        let e = error(r#"{"at_ms":1,"routes":[]}"#);
        assert!(e.message.contains("incarnation"), "{e}");
        assert!(e.to_string().starts_with("malformed node report at"), "{e}");
        error(r#"{"incarnation":1,"at_ms":1} trailing"#);
        error("");
        assert_eq!(error(" [1, 2]").message, "a report is a JSON object");
        error(r#"{"incarnation":1,"at_ms":1,"routes":[{"service":"pay"}]}"#);
    }

    #[test]
    fn an_oversized_unit_sample_in_a_report_is_thinned_on_reading() {
        let hashes: Vec<String> = (1..=30_000u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_string())
            .collect();
        let json = format!(
            r#"{{"incarnation":1,"at_ms":1,"routes":[{{"service":"pay","version":"a","units":{{"level":0,"hashes":[{}]}}}}]}}"#,
            hashes.join(",")
        );
        let r = NodeReport::decode(json.as_bytes()).unwrap();
        let u = r.routes[0].units.as_ref().unwrap();
        assert!(u.hashes.len() <= MAX_REPORTED_UNITS);
        // Thinned no further than needed: one level less would not fit.
        assert!(u.level >= 1, "{}", u.level);
        assert!(
            u.hashes.len() * 2 > MAX_REPORTED_UNITS / 2,
            "{}",
            u.hashes.len()
        );
    }
}
