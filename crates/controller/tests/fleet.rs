//! Fleet-wide analysis through a real controller (on a real store): the leader's controller sees
//! its data plane through a `FleetPlane`, so a candidate that fails only on another node is
//! rolled back, and an experiment's units and sample-ratio check are the whole fleet's.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use graylane_analysis::Histogram;
use graylane_analysis::histogram::bucket_of;
use graylane_config::Config;
use graylane_controller::events::EventTotals;
use graylane_controller::fleet::{
    FleetObservations, FleetPlane, NodeReport, RouteFigures, RouteReport, UnitHashes, report,
};
use graylane_controller::{Controller, DataPlane, Observation, Setup};
use graylane_rules::Routing;
use graylane_store::RedbStore;

const CONFIG: &str = r#"
listeners:
  - bind: 127.0.0.1:8080
services:
  - name: payment
    match: { path_prefix: /api/payment }
    versions:
      stable: { endpoints: ["127.0.0.1:9001"] }
      canary: { endpoints: ["127.0.0.1:9002"] }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      steps:
        - weight: 50
          pause: manual
        - weight: 100
      analysis:
        interval: 1s
        min_requests: 40
        failure_limit: 1
        checks:
          - metric: error_rate
            max_increase: 0.02
  - name: search
    match: { path_prefix: /search }
    versions:
      a: { endpoints: ["127.0.0.1:9001"] }
      b: { endpoints: ["127.0.0.1:9002"] }
    release:
      strategy: experiment
      bucket_by: "header:X-User-Id"
      variants:
        - { name: control, version: a, weight: 50 }
        - { name: treatment, version: b, weight: 50 }
"#;

/// One node's gateway figures, set by the test as traffic would.
#[derive(Default)]
struct Node {
    figures: Mutex<BTreeMap<(String, String), RouteFigures>>,
}

impl Node {
    /// Adds `n` answers of `status`, each taking `ms`, to `version` of `service`.
    fn serve(&self, service: &str, version: &str, status: u16, n: u64, ms: u64) {
        let mut figures = self.figures.lock().unwrap();
        let f = figures
            .entry((service.to_string(), version.to_string()))
            .or_insert_with(|| RouteFigures {
                service: service.to_string(),
                version: version.to_string(),
                ..RouteFigures::default()
            });
        *f.observation.codes.entry(status).or_default() += n;
        let mut counts = f.observation.latency.counts().to_vec();
        counts[bucket_of(ms * 1_000_000)] += n;
        f.observation.latency = Histogram::from_counts(&counts);
        f.observation.bucketed += n;
    }

    /// Users `users` were bucketed into `version` of `service`.
    fn see_users(&self, service: &str, version: &str, users: impl Iterator<Item = u64>) {
        self.serve(service, version, 200, 0, 1);
        let mut figures = self.figures.lock().unwrap();
        let f = figures
            .get_mut(&(service.to_string(), version.to_string()))
            .unwrap();
        let units = f.units.get_or_insert_with(UnitHashes::default);
        units.hashes.extend(users.map(user_hash));
    }
}

/// A user's bucketing-key hash (splitmix64's finalizer: well spread, as the real one).
fn user_hash(user: u64) -> u64 {
    let mut z = user.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl DataPlane for Node {
    fn apply(&self, _: Config, _: &BTreeMap<String, Routing>) {}
    fn set_routing(&self, _: &str, _: Routing) {}
    fn observe(&self, service: &str, version: &str) -> Observation {
        self.figures
            .lock()
            .unwrap()
            .get(&(service.to_string(), version.to_string()))
            .map(|f| f.observation.clone())
            .unwrap_or_default()
    }
    fn units(&self, service: &str, versions: &[&str]) -> (Vec<u64>, u32) {
        let counts = versions
            .iter()
            .map(|v| {
                self.local_units(service, v)
                    .map_or(0, |u| u.hashes.len() as u64)
            })
            .collect();
        (counts, 0)
    }
    /// Every user of the experiment is in its treatment (version `b`), for business events.
    fn assign(&self, service: &str, _: &str) -> Option<String> {
        (service == "search").then(|| "b".to_string())
    }
    fn circuit_states(&self, _: &str) -> BTreeMap<String, &'static str> {
        BTreeMap::new()
    }
    fn local_figures(&self) -> Vec<RouteFigures> {
        self.figures.lock().unwrap().values().cloned().collect()
    }
    fn local_units(&self, service: &str, version: &str) -> Option<UnitHashes> {
        self.figures
            .lock()
            .unwrap()
            .get(&(service.to_string(), version.to_string()))?
            .units
            .clone()
    }
}

/// Node `a`, the leader: its controller on a store in `dir`, seeing the fleet through a
/// `FleetPlane` over its own gateway `local`.
fn leader(dir: &Path, local: Arc<Node>, fleet: Arc<FleetObservations>) -> Controller {
    let path = dir.join("graylane.yaml");
    std::fs::write(&path, CONFIG).unwrap();
    let config = graylane_config::load_text_for(CONFIG, &path).unwrap();
    Controller::open(Setup {
        env: "prod".to_string(),
        config_path: path,
        fleet: false,
        store: Arc::new(RedbStore::open(&dir.join("data")).unwrap()),
        plane: Arc::new(FleetPlane::new(local, fleet)),
        notifier: None,
        yaml: CONFIG.to_string(),
        file_text: None,
        config,
        now_ms: 0,
    })
    .unwrap()
}

/// Node `b` publishes its report, as the fleet wiring carries it: JSON through the store.
fn publish(fleet: &FleetObservations, name: &str, node: &Node, at_ms: i64) {
    let json = report(node, 11, at_ms).encode();
    fleet.update(name, NodeReport::decode(&json).unwrap());
}

/// Both nodes serve the step: node `a` only successes, node `b` `b_errors` failures of the
/// candidate's 300. Returns the release's state after the analysis judged the step.
fn judge_step(b_errors: u64) -> String {
    let dir = tempfile::tempdir().unwrap();
    let a = Arc::new(Node::default());
    let b = Node::default();
    let fleet = Arc::new(FleetObservations::new("a", 1));
    // Traffic before the step began is not the step's.
    b.serve("payment", "canary", 500, 1_000, 5);
    publish(&fleet, "b", &b, 0);
    let controller = leader(dir.path(), Arc::clone(&a), Arc::clone(&fleet));
    assert_eq!(
        controller.analyze(0),
        0,
        "the step's totals so far are its zero"
    );

    for node in [a.as_ref(), &b] {
        node.serve("payment", "stable", 200, 300, 5);
    }
    a.serve("payment", "canary", 200, 300, 5);
    b.serve("payment", "canary", 200, 300 - b_errors, 5);
    b.serve("payment", "canary", 500, b_errors, 5);
    publish(&fleet, "b", &b, 900);
    assert_eq!(controller.analyze(1_000), 1);
    controller
        .release("payment", 1_000)
        .unwrap()
        .state
        .to_string()
}

#[test]
fn a_candidate_failing_only_on_another_node_is_rolled_back() {
    assert_eq!(judge_step(60), "aborted");
}

#[test]
fn a_candidate_healthy_on_every_node_goes_on() {
    assert_eq!(judge_step(0), "progressing");
}

#[test]
fn an_experiment_counts_the_fleet_s_units_once_each_and_checks_their_ratio() {
    let dir = tempfile::tempdir().unwrap();
    let a = Arc::new(Node::default());
    let b = Node::default();
    let fleet = Arc::new(FleetObservations::new("a", 1));
    let controller = leader(dir.path(), Arc::clone(&a), Arc::clone(&fleet));
    // Node a alone looks balanced...
    a.see_users("search", "a", 0..500);
    a.see_users("search", "b", 10_000..10_500);
    let results = controller.experiment_results("search").unwrap();
    assert!(!results.srm.flagged, "{}", results.srm.reason);

    // ...but node b buckets the users it sees (half of them also seen on a) all into `a`.
    b.see_users("search", "a", 250..1_000);
    b.serve("search", "a", 200, 750, 3);
    publish(&fleet, "b", &b, 1_000);
    let results = controller.experiment_results("search").unwrap();
    let units: Vec<u64> = results.variants.iter().map(|v| v.units).collect();
    assert_eq!(
        units,
        vec![1_000, 500],
        "a user seen on both nodes counts once"
    );
    assert_eq!(results.variants[0].requests, 750);
    assert!(results.srm.flagged, "{}", results.srm.reason);
}

#[test]
fn business_events_posted_to_another_node_count_in_the_fleet_s_results() {
    let dir = tempfile::tempdir().unwrap();
    let a = Arc::new(Node::default());
    let fleet = Arc::new(FleetObservations::new("a", 1));
    let controller = leader(dir.path(), Arc::clone(&a), Arc::clone(&fleet));
    a.see_users("search", "b", 0..10);
    let purchases = EventTotals {
        count: 3,
        sum: 30.0,
        sum_sq: 300.0,
    };
    let mut b = NodeReport {
        incarnation: 7,
        at_ms: 1_000,
        routes: vec![RouteReport {
            service: "search".to_string(),
            version: "b".to_string(),
            events: BTreeMap::from([("purchase".to_string(), purchases)]),
            ..RouteReport::default()
        }],
    };
    fleet.update("b", NodeReport::decode(&b.encode()).unwrap());
    let treatment = |c: &Controller| {
        let results = c.experiment_results("search").unwrap();
        let v = results
            .variants
            .iter()
            .find(|v| v.name == "treatment")
            .cloned()
            .unwrap();
        v.events.get("purchase").map(|e| (e.count, e.mean))
    };
    assert_eq!(treatment(&controller), Some((3, Some(10.0))));
    // Node b restarts: its counters start again, and what it counted before stays counted.
    b.incarnation = 8;
    b.at_ms = 2_000;
    b.routes[0].events.insert(
        "purchase".to_string(),
        EventTotals {
            count: 1,
            sum: 50.0,
            sum_sq: 2_500.0,
        },
    );
    fleet.update("b", NodeReport::decode(&b.encode()).unwrap());
    assert_eq!(treatment(&controller), Some((4, Some(20.0))));
    // An event posted to this node goes into its own report, for the others.
    controller
        .post_event("search", "u-1", "purchase", Some(2.0))
        .unwrap();
    let own = controller.fleet_report(1, 3_000);
    let route = own
        .routes
        .iter()
        .find(|r| r.service == "search" && r.version == "b")
        .unwrap();
    assert_eq!(route.events["purchase"].count, 1);
    assert_eq!(treatment(&controller), Some((5, Some(16.4))));
}
