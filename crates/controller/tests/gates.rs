//! Release gates asked by the controller: real HTTP gate servers on loopback (the shared test
//! upstream, whose status the test sets), a real in-memory store, and a data plane that keeps
//! the splits it is given. Each kind of gate moves, holds or stops the release as documented,
//! and every answer is in the audit log.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use graylane_api::AuditView;
use graylane_api::states::ReleaseState;
use graylane_config::Config;
use graylane_controller::{Action, Actor, Controller, DataPlane, Observation, Setup};
use graylane_rules::Routing;
use graylane_store::{AuditFilter, RedbStore};
use graylane_testing::ports::closed_port;
use graylane_testing::upstream::Upstream;

/// Keeps the newest split of `web`.
#[derive(Default)]
struct Plane {
    newest: Mutex<Option<Routing>>,
}

impl Plane {
    /// The candidate's (version index 1) percent in the newest split.
    fn candidate_percent(&self) -> f64 {
        let newest = self.newest.lock().unwrap();
        let routing = newest.as_ref().expect("the controller routed web");
        routing
            .shares
            .iter()
            .filter(|s| s.version == 1)
            .map(|s| s.weight.percent())
            .sum()
    }
}

impl DataPlane for Plane {
    fn apply(&self, _: Config, routes: &BTreeMap<String, Routing>) {
        *self.newest.lock().unwrap() = routes.get("web").cloned();
    }
    fn set_routing(&self, _: &str, routing: Routing) {
        *self.newest.lock().unwrap() = Some(routing);
    }
    fn observe(&self, _: &str, _: &str) -> Observation {
        Observation::default()
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

/// A canary of `web` from `v1` to `v2`: 10% for `first` (a pause), 50% for a second, then
/// 100%, with `gates` (YAML list entries) and `extra` release keys.
fn open(gates: &str, extra: &str, first: &str) -> (Controller, Arc<Plane>) {
    let yaml = format!(
        "listeners: [{{ bind: 127.0.0.1:8080 }}]
services:
  - name: web
    versions:
      v1: {{ endpoints: [127.0.0.1:9001] }}
      v2: {{ endpoints: [127.0.0.1:9002] }}
    release:
      strategy: canary
      baseline: v1
      candidate: v2
{extra}      steps: [{{ weight: 10, pause: {first} }}, {{ weight: 50, pause: 1s }}, {{ weight: 100 }}]
      gates:
{gates}"
    );
    let path = PathBuf::from("graylane.yaml");
    let config = graylane_config::load_text_for(&yaml, &path).unwrap();
    let plane = Arc::new(Plane::default());
    let c = Controller::open(Setup {
        env: "prod".to_string(),
        config_path: path,
        fleet: false,
        store: Arc::new(RedbStore::in_memory().unwrap()),
        plane: plane.clone(),
        notifier: None,
        yaml,
        file_text: None,
        config,
        now_ms: 0,
    })
    .unwrap();
    (c, plane)
}

fn gate(kind: &str, url: &str) -> String {
    format!("        - {{ kind: {kind}, url: \"{url}\", timeout: 1s, retries: 1 }}\n")
}

/// Runs gate passes at `now_ms` until `done` holds (at most 10 s of real time).
fn settle(c: &Controller, now_ms: i64, what: &str, done: impl Fn(&Controller) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        c.gates(now_ms);
        if done(c) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within 10s; release: {:#?}",
            c.release("web", now_ms)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn gate_audit(c: &Controller) -> Vec<AuditView> {
    let filter = AuditFilter {
        action: Some("gate".to_string()),
        ..AuditFilter::default()
    };
    c.audit(&filter, 50).unwrap()
}

fn state(c: &Controller, now_ms: i64) -> ReleaseState {
    c.release("web", now_ms).unwrap().state
}

#[test]
fn a_passing_pre_rollout_gate_starts_the_release_and_hears_what_it_starts() {
    let server = Upstream::start("gate");
    let url = format!("http://{}/pre", server.addr);
    let (c, plane) = open(&gate("pre_rollout", &url), "", "1m");
    assert_eq!(
        plane.candidate_percent(),
        0.0,
        "nothing before the gate answers"
    );
    let view = c.release("web", 0).unwrap();
    assert_eq!(
        view.gate.as_ref().unwrap().summary,
        format!("waiting on gate {url}")
    );

    settle(&c, 1_000, "the gate passes", |c| {
        c.release("web", 1_000).unwrap().gate.is_none()
    });
    assert_eq!(plane.candidate_percent(), 10.0);
    let seen = server.seen();
    let body: serde_json::Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(seen[0].method, "POST");
    assert_eq!(body["kind"], "pre_rollout");
    assert_eq!(body["service"], "web");
    assert_eq!(
        (body["from"].as_str(), body["to"].as_str()),
        (Some("v1"), Some("v2"))
    );
    assert_eq!(body["phase"], "progressing");
    let audit = gate_audit(&c);
    assert_eq!(
        audit[0].reason,
        format!("pre_rollout gate {url} answered 200")
    );
    assert_eq!(audit[0].detail["status"], 200);
    assert!(audit[0].detail["body"].as_str().unwrap().contains("gate"));
}

#[test]
fn a_failing_pre_rollout_gate_aborts_the_release_before_it_sends_anything() {
    let server = Upstream::start("gate");
    server.set_status(503);
    let url = format!("http://{}/pre", server.addr);
    let (c, plane) = open(&gate("pre_rollout", &url), "", "1m");
    settle(&c, 1_000, "the release stops", |c| {
        state(c, 1_000) == ReleaseState::Aborted
    });
    assert_eq!(plane.candidate_percent(), 0.0);
    assert_eq!(server.received(), 2, "asked once and retried once");
    let release = c.release("web", 1_000).unwrap();
    let last = release.transitions.last().unwrap();
    assert_eq!(last.action, "gate_failed");
    assert_eq!(last.reason, format!("pre_rollout gate {url} answered 503"));
}

#[test]
fn a_failing_pre_step_gate_fails_the_step_and_on_failure_pause_holds_it() {
    let server = Upstream::start("gate");
    server.set_status(500);
    let url = format!("http://{}/step", server.addr);
    let (c, plane) = open(&gate("pre_step", &url), "", "1s");
    assert_eq!(
        c.tick(1_000),
        1,
        "the pause is over: the widening waits on the gate"
    );
    assert_eq!(
        plane.candidate_percent(),
        10.0,
        "held at the step it was on"
    );
    settle(&c, 1_000, "the step fails", |c| {
        state(c, 1_000) == ReleaseState::Aborted
    });
    assert_eq!(plane.candidate_percent(), 0.0);

    let (c, plane) = open(&gate("pre_step", &url), "      skip_rollback: true\n", "1s");
    c.tick(1_000);
    settle(&c, 1_000, "the release pauses", |c| {
        state(c, 1_000) == ReleaseState::Paused
    });
    assert_eq!(plane.candidate_percent(), 10.0, "paused where it was");
    c.command("web", Action::Promote, ACTOR, 2_000).unwrap();
    assert_eq!(
        plane.candidate_percent(),
        50.0,
        "a person's promote is not gated"
    );
}

const ACTOR: Actor<'static> = Actor {
    name: "alice",
    reason: "",
};

#[test]
fn a_confirm_gate_holds_the_release_until_it_answers_2xx_then_promotes() {
    let server = Upstream::start("gate");
    server.set_status(503);
    let url = format!("http://{}/confirm", server.addr);
    let (c, plane) = open(&gate("confirm_promotion", &url), "", "1s");
    c.tick(1_000);
    c.tick(2_000);
    assert_eq!(plane.candidate_percent(), 50.0);
    settle(&c, 2_000, "the gate answers", |c| {
        c.release("web", 2_000)
            .unwrap()
            .gate
            .is_some_and(|g| g.answer.is_some())
    });
    let view = c.release("web", 2_000).unwrap();
    assert_eq!(view.state, ReleaseState::Progressing);
    let gate = view.gate.unwrap();
    assert_eq!(gate.kind, "confirm_promotion");
    assert_eq!(gate.summary, format!("waiting on gate {url}: 503"));
    assert_eq!(plane.candidate_percent(), 50.0, "held at its weight");

    server.set_status(200);
    let asked = server.received();
    c.gates(3_000);
    std::thread::sleep(Duration::from_millis(100));
    c.gates(3_000);
    assert_eq!(
        server.received(),
        asked,
        "not asked again before the interval"
    );
    settle(&c, 12_000, "the release completes", |c| {
        state(c, 12_000) == ReleaseState::Completed
    });
    assert_eq!(plane.candidate_percent(), 100.0);
    let reasons: Vec<String> = gate_audit(&c).into_iter().map(|e| e.reason).collect();
    assert!(
        reasons.iter().any(|r| r.ends_with("answered 503")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.ends_with("answered 200")),
        "{reasons:?}"
    );
}

#[test]
fn a_post_rollback_gate_is_told_of_an_abort_and_its_answer_is_recorded() {
    let server = Upstream::start("gate");
    server.set_status(404);
    let url = format!("http://{}/after", server.addr);
    let (c, _plane) = open(&gate("post_rollback", &url), "", "1m");
    c.command("web", Action::Abort, ACTOR, 1_000).unwrap();
    settle(&c, 1_000, "the gate is told", |c| {
        c.release("web", 1_000).unwrap().gate.is_none()
    });
    let body: serde_json::Value = serde_json::from_slice(&server.seen()[0].body).unwrap();
    assert_eq!(
        (body["kind"].as_str(), body["phase"].as_str()),
        (Some("post_rollback"), Some("aborted"))
    );
    assert_eq!(
        state(&c, 1_000),
        ReleaseState::Aborted,
        "its answer changes nothing"
    );
    assert_eq!(
        gate_audit(&c)[0].reason,
        format!("post_rollback gate {url} answered 404")
    );
}

#[test]
fn an_unreachable_gate_counts_as_failing_and_says_why() {
    let url = format!("http://{}/pre", closed_port());
    let (c, _plane) = open(&gate("pre_rollout", &url), "", "1m");
    settle(&c, 1_000, "the release stops", |c| {
        state(c, 1_000) == ReleaseState::Aborted
    });
    let audit = gate_audit(&c);
    assert!(
        audit[0]
            .reason
            .starts_with(&format!("pre_rollout gate {url} answered unreachable: ")),
        "{}",
        audit[0].reason
    );
    assert_eq!(audit[0].detail["attempts"], 2);
    assert_eq!(audit[0].detail["status"], serde_json::Value::Null);
}
