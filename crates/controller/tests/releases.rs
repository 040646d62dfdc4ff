//! The controller on its own: a real store kept in memory, and a data plane that records what
//! the controller tells it, so each test reads what a gateway would have been asked to route.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use graylane_analysis::Histogram;
use graylane_analysis::histogram::bucket_of;
use graylane_api::states::ReleaseState;
use graylane_config::Config;
use graylane_controller::{Action, Actor, Controller, DataPlane, Observation, Setup};
use graylane_rules::Routing;
use graylane_store::{AuditFilter, RedbStore};

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
        - weight: 10
          pause: manual
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
"#;

/// A data plane that keeps every split it is given, and serves figures the test sets.
#[derive(Default)]
struct Recorder {
    /// Each split of `payment`, in the order the controller gave them (whole configurations
    /// and single releases alike).
    splits: Mutex<Vec<Routing>>,
    /// The canary's index among `payment`'s versions, from the configuration applied.
    canary: Mutex<Option<usize>>,
    figures: Mutex<BTreeMap<String, Observation>>,
}

impl Recorder {
    /// The canary's percent of `payment`'s traffic in the newest split.
    fn canary_percent(&self) -> f64 {
        let canary = self
            .canary
            .lock()
            .unwrap()
            .expect("a configuration applied");
        let splits = self.splits.lock().unwrap();
        let newest = splits.last().expect("the controller routed payment");
        newest
            .shares
            .iter()
            .filter(|s| s.version == canary)
            .map(|s| s.weight.percent())
            .sum()
    }

    /// Adds `n` answers of `status` to `version`, as traffic would.
    fn serve(&self, version: &str, status: u16, n: u64) {
        let mut figures = self.figures.lock().unwrap();
        let o = figures.entry(version.to_string()).or_default();
        *o.codes.entry(status).or_default() += n;
        let mut counts = o.latency.counts().to_vec();
        counts[bucket_of(5_000_000)] += n;
        o.latency = Histogram::from_counts(&counts);
        o.bucketed += n;
    }
}

impl DataPlane for Recorder {
    fn apply(&self, config: Config, routes: &BTreeMap<String, Routing>) {
        let payment = config.services.iter().find(|s| s.name == "payment");
        *self.canary.lock().unwrap() =
            payment.and_then(|s| s.versions.iter().position(|v| v.name == "canary"));
        if let Some(r) = routes.get("payment") {
            self.splits.lock().unwrap().push(r.clone());
        }
    }
    fn set_routing(&self, service: &str, routing: Routing) {
        if service == "payment" {
            self.splits.lock().unwrap().push(routing);
        }
    }
    fn observe(&self, service: &str, version: &str) -> Observation {
        if service != "payment" {
            return Observation::default();
        }
        self.figures
            .lock()
            .unwrap()
            .get(version)
            .cloned()
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
}

/// A controller for environment `prod` on a new in-memory store, telling `plane`.
fn controller(plane: Arc<Recorder>) -> Controller {
    let path = PathBuf::from("graylane.yaml");
    let config = graylane_config::load_text_for(CONFIG, &path).unwrap();
    Controller::open(Setup {
        env: "prod".to_string(),
        config_path: path,
        fleet: false,
        store: Arc::new(RedbStore::in_memory().unwrap()),
        plane,
        notifier: None,
        yaml: CONFIG.to_string(),
        file_text: None,
        config,
        now_ms: 0,
    })
    .unwrap()
}

const ALICE: Actor<'static> = Actor {
    name: "alice",
    reason: "looks good",
};

#[test]
fn starting_a_release_sends_the_first_step_s_weight_to_the_canary() {
    let plane = Arc::new(Recorder::default());
    let c = controller(Arc::clone(&plane));
    assert_eq!(plane.canary_percent(), 10.0);
    let release = c.release("payment", 0).unwrap();
    assert_eq!(
        (release.state, release.step),
        (ReleaseState::Progressing, 0)
    );
}

#[test]
fn promoting_moves_the_release_and_its_traffic_to_the_next_step() {
    let plane = Arc::new(Recorder::default());
    let c = controller(Arc::clone(&plane));
    let release = c.command("payment", Action::Promote, ALICE, 1_000).unwrap();
    assert_eq!(release.step, 1);
    assert_eq!(plane.canary_percent(), 50.0);
}

#[test]
fn an_abort_returns_all_traffic_to_stable() {
    let plane = Arc::new(Recorder::default());
    let c = controller(Arc::clone(&plane));
    c.command("payment", Action::Promote, ALICE, 1_000).unwrap();
    let release = c.command("payment", Action::Abort, ALICE, 2_000).unwrap();
    assert_eq!(release.state, ReleaseState::Aborted);
    assert_eq!(plane.canary_percent(), 0.0);
}

#[test]
fn a_rollback_after_a_full_promotion_returns_all_traffic_to_stable() {
    let plane = Arc::new(Recorder::default());
    let c = controller(Arc::clone(&plane));
    let release = c
        .command("payment", Action::PromoteFull, ALICE, 1_000)
        .unwrap();
    assert_eq!(release.state, ReleaseState::Completed);
    assert_eq!(plane.canary_percent(), 100.0);
    let release = c
        .command("payment", Action::Rollback, ALICE, 2_000)
        .unwrap();
    assert_eq!(release.state, ReleaseState::RolledBack);
    assert_eq!(plane.canary_percent(), 0.0);
}

#[test]
fn a_canary_failing_its_analysis_is_aborted_and_the_abort_is_in_the_audit_log() {
    let plane = Arc::new(Recorder::default());
    let c = controller(Arc::clone(&plane));
    assert_eq!(c.analyze(0), 0, "nothing to judge before any traffic");
    plane.serve("stable", 200, 300);
    plane.serve("canary", 200, 240);
    plane.serve("canary", 500, 60);
    assert_eq!(c.analyze(1_000), 1);

    assert_eq!(
        c.release("payment", 1_000).unwrap().state,
        ReleaseState::Aborted
    );
    assert_eq!(plane.canary_percent(), 0.0, "the canary gets no traffic");
    let audit = c.audit(&AuditFilter::default(), 20).unwrap();
    let abort = audit
        .iter()
        .find(|e| e.target == "payment" && e.action == "analysis_failed")
        .unwrap_or_else(|| panic!("no failed analysis of payment in the audit log: {audit:#?}"));
    assert_eq!((abort.actor.as_str(), abort.at_ms), ("analysis", 1_000));
}
