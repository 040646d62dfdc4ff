//! The CLI can read what the server writes: each response document, in the JSON the server
//! sends, reads into its type and writes back identical (no field renamed, dropped or added),
//! and a state word from a newer server is kept rather than refused.

use std::fmt::Debug;

use graylane_analysis::{Decision, Judgement, sample_ratio_mismatch};
use graylane_api::{
    AnalysisView, ApplyOutcome, AuditList, Cluster, DiffView, ErrorBody, EvalAnswer,
    EventsRecorded, ExperimentResults, ReleaseList, ReleaseState, ReleaseView, RevisionList,
    RevisionView, SegmentEdited, SeriesView, Strategy, Whoami,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// Reads `document` as a `T` and writes it back; the two must be the same JSON.
fn reads_back<T: Serialize + DeserializeOwned + PartialEq + Debug>(document: Value) -> T {
    let read: T =
        serde_json::from_value(document.clone()).unwrap_or_else(|e| panic!("{e}: {document:#}"));
    assert_eq!(serde_json::to_value(&read).unwrap(), document);
    read
}

fn canary() -> Value {
    json!({
        "service": "payment", "env": "default", "strategy": "canary", "state": "paused",
        "step": 1, "steps": 3,
        "plan": [
            { "weight": 0.0, "pause": "manual" },
            { "weight": 20.0, "pause": "5m" },
            { "weight": 100.0, "pause": null }
        ],
        "baseline": "stable", "candidate": "canary", "stable": "stable",
        "weights": { "canary": 20.0, "stable": 80.0 },
        "weight_overridden": false, "pause": "5m", "pause_remaining_s": 241.5,
        "previous_kept_until": null,
        "allowed": ["resume", "promote", "promote_full", "abort", "set_weight"],
        "variants": [],
        "transitions": [{
            "at": "2026-11-22T10:01:30.250Z", "at_ms": 1_795_341_690_250_i64, "actor": "alice",
            "action": "pause", "reason": "checking the error rate", "from": "progressing",
            "to": "paused", "step": 1, "weight": 20.0
        }],
        "analysis": {
            "decision": "hold", "summary": "hold: 12 requests of 100",
            "at": "2026-11-22T10:02:00.000Z"
        },
        "srm": null,
        "circuits": { "canary": "half_open", "stable": "closed" }
    })
}

fn experiment() -> Value {
    let srm = serde_json::to_value(sample_ratio_mismatch(&[510, 490], &[50.0, 50.0])).unwrap();
    json!({
        "service": "search", "env": "default", "strategy": "experiment", "state": "progressing",
        "step": 0, "steps": 1, "plan": [{ "weight": 50.0, "pause": "manual" }],
        "baseline": "a", "candidate": "b", "stable": "a",
        "weights": { "a": 50.0, "b": 50.0 }, "weight_overridden": false,
        "pause": "manual", "pause_remaining_s": null,
        "previous_kept_until": "2026-11-22T10:07:00.000Z",
        "allowed": ["promote_variant", "abort"],
        "variants": [
            { "name": "control", "version": "a", "weight": 50.0, "exposures": 1234, "units": 510 },
            { "name": "treatment", "version": "b", "weight": 50.0, "exposures": 1301, "units": 490 }
        ],
        "transitions": [], "analysis": null, "srm": srm, "circuits": {}
    })
}

#[test]
fn releases_read_back_as_the_server_wrote_them() {
    let list: ReleaseList = reads_back(json!({
        "env": "default",
        "releases": [canary(), experiment()]
    }));
    assert_eq!(list.releases[0].state, ReleaseState::Paused);
    assert_eq!(list.releases[1].strategy, Strategy::Experiment);
    reads_back::<ReleaseView>(canary());
}

#[test]
fn analysis_series_events_and_experiment_results_read_back() {
    let judgement = serde_json::to_value(Judgement {
        at_ms: 1_795_341_720_000,
        results: Vec::new(),
        decision: Decision::Hold {
            reason: "12 requests of 100".to_string(),
        },
        passes: 0,
        failures: 0,
    })
    .unwrap();
    reads_back::<AnalysisView>(json!({
        "service": "payment", "configured": true, "interval_s": 30.0,
        "checks": ["error_rate", "latency_p99"],
        "latest": judgement.clone(), "history": [judgement]
    }));
    reads_back::<SeriesView>(json!({
        "service": "payment", "interval_s": 1.0,
        "versions": { "canary": [
            { "t_ms": 1_795_341_690_000_i64, "rps": 12.0, "error_rate": 0.0, "p50_ms": 3.5, "p99_ms": 9.0 },
            { "t_ms": 1_795_341_691_000_i64, "rps": 0.0, "error_rate": null, "p50_ms": null, "p99_ms": null }
        ] }
    }));
    reads_back::<EventsRecorded>(json!({ "recorded": [
        { "service": "search", "version": "b", "variant": "treatment" },
        { "service": "payment", "version": "stable", "variant": null }
    ] }));
    let srm = serde_json::to_value(sample_ratio_mismatch(&[510, 490], &[50.0, 50.0])).unwrap();
    reads_back::<ExperimentResults>(json!({
        "service": "search", "control": "control",
        "variants": [{
            "name": "control", "version": "a", "weight": 50.0, "exposures": 1234, "units": 510,
            "requests": 1234, "errors": 3, "error_rate": 0.0024, "latency_p50_ms": 4.0,
            "latency_p99_ms": 20.0,
            "events": { "purchase": { "count": 40, "mean": 12.5 }, "refund": { "count": 0, "mean": null } },
            "comparisons": []
        }],
        "srm": srm
    }));
}

#[test]
fn revisions_diffs_and_changes_read_back() {
    let file = json!({
        "n": 1, "at": "2026-11-22T09:00:00.000Z", "at_ms": 1_795_338_000_000_i64,
        "author": "file", "message": "started", "source": "file", "reverted_from": null
    });
    let revert = json!({
        "n": 3, "at": "2026-11-22T09:30:00.000Z", "at_ms": 1_795_339_800_000_i64,
        "author": "ada", "message": "revert to 1", "source": "revert", "reverted_from": 1
    });
    let list: RevisionList = reads_back(json!({
        "env": "default", "current": 3, "revisions": [revert.clone(), file]
    }));
    // The YAML is only written when one revision is asked for.
    assert!(list.revisions.iter().all(|r| r.yaml.is_none()));
    let mut one = revert.clone();
    one["yaml"] = json!("listeners: []\n");
    reads_back::<RevisionView>(one);
    reads_back::<DiffView>(json!({ "from": 1, "to": 3, "diff": "-a\n+b\n" }));
    reads_back::<ApplyOutcome>(json!({
        "applied": true, "valid": true, "revision": revert, "diff": "-a\n+b\n"
    }));
    reads_back::<ApplyOutcome>(json!({
        "applied": false, "valid": true, "revision": null, "diff": ""
    }));
}

#[test]
fn the_audit_the_fleet_and_the_rest_read_back() {
    reads_back::<AuditList>(json!({
        "env": "default",
        "entries": [{
            "seq": 12, "at": "2026-11-22T10:05:00.500Z", "at_ms": 1_795_341_900_500_i64,
            "actor": "alice", "action": "promote", "target": "payment", "reason": "looks good",
            "detail": { "step": 2, "weights": { "canary": 50.0 } }
        }]
    }));
    reads_back::<Cluster>(json!({
        "mode": "fleet", "node": "a", "leader": "b", "latest_revision": 3,
        "store_reachable": true,
        "members": [{
            "name": "a", "admin": "127.0.0.1:9900", "config_revision": 3, "ready": true,
            "last_seen": "2026-11-22T10:00:00.123Z", "lagging": false, "stale": false
        }]
    }));
    reads_back::<Cluster>(json!({
        "mode": "single", "node": null, "leader": null, "latest_revision": 1,
        "store_reachable": true, "members": []
    }));
    reads_back::<Whoami>(json!({ "name": "otto", "role": "operator" }));
    reads_back::<SegmentEdited>(json!({ "segment": "beta", "added": 2, "removed": 0 }));
    reads_back::<EvalAnswer>(json!({
        "service": "payment", "version": "canary", "reason": "bucket",
        "explanation": "bucket 1234 < 20%", "bucket": 1234, "weight_percent": 20.0,
        "key": "configured"
    }));
    reads_back::<EvalAnswer>(json!({ "service": null, "version": null, "reason": "no_route" }));
    reads_back::<ErrorBody>(json!({
        "error": "token `grafana` has role viewer", "code": "forbidden",
        "required_role": "admin"
    }));
    reads_back::<ErrorBody>(json!({
        "error": "the configuration is invalid (1 error); nothing changed",
        "code": "invalid_config",
        "errors": ["graylane.yaml:3:5: listeners[0].bind: not an address"]
    }));
}

#[test]
fn a_state_a_newer_server_names_is_kept_as_sent_not_refused() {
    let mut newer = canary();
    newer["strategy"] = json!("shadow");
    newer["state"] = json!("soaking");
    newer["transitions"][0]["to"] = json!("soaking");
    newer["analysis"]["decision"] = json!("extend");
    newer["circuits"]["canary"] = json!("probing");
    let release: ReleaseView = reads_back(newer);
    assert_eq!(release.state, ReleaseState::Unknown("soaking".to_string()));
    assert_eq!(release.state.to_string(), "soaking");
    assert!(!release.state.is_running());
    assert_eq!(release.strategy.as_str(), "shadow");
    assert_eq!(release.transitions[0].to.as_str(), "soaking");
    assert_eq!(release.analysis.unwrap().decision.as_str(), "extend");
    assert_eq!(release.circuits["canary"].as_str(), "probing");
}
