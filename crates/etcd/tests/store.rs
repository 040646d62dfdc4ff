//! `EtcdStore` against a real etcd: the same semantics as the embedded store, conditional
//! (fenced) release writes, concurrent writers on several nodes, foreign data, and etcd going
//! away and coming back.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{connect, dump, new_audit, new_revision, open, put};
use graylane_etcd::EtcdStore;
use graylane_testing::etcd::EtcdServer;
use graylane_store::{
    AuditEntry, AuditFilter, Expect, NewAuditEntry, Revision, RevisionSource, Store, StoreError,
};
use serde_json::json;

const P: &str = "/graylane";

fn seqs(store: &EtcdStore, env: &str, limit: usize) -> Vec<u64> {
    store
        .audit(env, limit)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect()
}

#[test]
fn revisions_are_numbered_from_one_per_environment() {
    let etcd = EtcdServer::start();
    let store = open(&etcd, P, "prod");

    for i in 1..=3 {
        let rev = store
            .add_revision("prod", new_revision(i, RevisionSource::Api))
            .unwrap();
        assert_eq!(rev.n, i as u64);
        assert_eq!(rev.yaml, format!("version: {i}\n"));
    }
    let staging = store
        .add_revision(
            "staging",
            new_revision(10, RevisionSource::Revert { from: 7 }),
        )
        .unwrap();
    assert_eq!(staging.n, 1, "each environment counts from 1");

    let prod: Vec<u64> = store
        .revisions("prod")
        .unwrap()
        .iter()
        .map(|r| r.n)
        .collect();
    assert_eq!(prod, [3, 2, 1], "newest first");
    let staging_list = store.revisions("staging").unwrap();
    assert_eq!(staging_list.len(), 1);
    assert_eq!(staging_list[0].message, "change 10");
    assert_eq!(staging_list[0].source, RevisionSource::Revert { from: 7 });

    assert_eq!(store.latest_revision("prod").unwrap().unwrap().n, 3);
    assert_eq!(
        store.latest_revision("staging").unwrap().unwrap().yaml,
        "version: 10\n"
    );
    let new = new_revision(2, RevisionSource::Api);
    assert_eq!(
        store.revision("prod", 2).unwrap().unwrap(),
        Revision {
            n: 2,
            at_ms: new.at_ms,
            author: new.author,
            message: new.message,
            source: new.source,
            yaml: new.yaml,
        }
    );
    assert_eq!(store.revision("prod", 4).unwrap(), None);
    assert_eq!(store.revision("staging", 2).unwrap(), None);
    assert_eq!(store.latest_revision("dev").unwrap(), None);
    assert!(store.revisions("dev").unwrap().is_empty());
}

#[test]
fn environments_are_isolated_and_listed_and_each_can_be_opened_afterwards() {
    let etcd = EtcdServer::start();
    let store = open(&etcd, P, "prod");

    // Names that are prefixes of each other must not bleed into one another's ranges.
    store
        .add_revision("prod", new_revision(1, RevisionSource::File))
        .unwrap();
    store
        .record_release(
            "prod-eu",
            "web",
            b"eu",
            new_audit(1, "release.start", "web"),
        )
        .unwrap();
    store
        .record_release("prod", "api", b"p", new_audit(2, "release.start", "api"))
        .unwrap();
    store
        .append_audit("a", new_audit(3, "login", "alice"))
        .unwrap();

    assert_eq!(store.environments().unwrap(), ["a", "prod", "prod-eu"]);
    assert_eq!(
        store.releases("prod").unwrap(),
        [("api".to_string(), b"p".to_vec())]
    );
    assert_eq!(
        store.releases("prod-eu").unwrap(),
        [("web".to_string(), b"eu".to_vec())]
    );
    assert!(store.releases("a").unwrap().is_empty());
    assert!(store.revisions("prod-eu").unwrap().is_empty());
    assert_eq!(seqs(&store, "prod", 10), [1]);
    assert_eq!(seqs(&store, "prod-eu", 10), [1]);
    assert_eq!(seqs(&store, "a", 10), [1]);

    // What one node wrote for another environment is that environment's, not foreign keys.
    for env in ["prod-eu", "a"] {
        let other = open(&etcd, P, env);
        assert_eq!(seqs(&other, env, 10), [1]);
    }
}

#[test]
fn a_new_connection_sees_everything_and_numbering_goes_on() {
    let etcd = EtcdServer::start();
    let (revisions, releases, audit) = {
        let store = open(&etcd, P, "prod");
        store
            .add_revision("prod", new_revision(1, RevisionSource::File))
            .unwrap();
        store
            .add_revision("prod", new_revision(2, RevisionSource::Revert { from: 1 }))
            .unwrap();
        store
            .record_release(
                "prod",
                "web",
                b"state-1",
                new_audit(1, "release.start", "web"),
            )
            .unwrap();
        (
            store.revisions("prod").unwrap(),
            store.releases("prod").unwrap(),
            store.audit("prod", 100).unwrap(),
        )
    };

    let store = open(&etcd, P, "prod");
    assert_eq!(store.revisions("prod").unwrap(), revisions);
    assert_eq!(store.releases("prod").unwrap(), releases);
    assert_eq!(store.audit("prod", 100).unwrap(), audit);
    assert_eq!(
        store.latest_revision("prod").unwrap().unwrap().yaml,
        "version: 2\n"
    );
    let next = store.add_revision("prod", new_revision(3, RevisionSource::Api));
    assert_eq!(next.unwrap().n, 3);
    let next = store.append_audit("prod", new_audit(3, "login", "alice"));
    assert_eq!(next.unwrap().seq, 2);
}

#[test]
fn record_release_saves_state_and_audit_together_and_delete_removes_it() {
    let etcd = EtcdServer::start();
    let store = open(&etcd, P, "prod");

    let entry = store
        .record_release(
            "prod",
            "web",
            b"step-1",
            new_audit(1, "release.start", "web"),
        )
        .unwrap();
    assert_eq!(entry.seq, 1);
    assert_eq!(entry.detail, json!({ "i": 1 }));
    store
        .record_release(
            "prod",
            "api",
            b"step-0",
            new_audit(2, "release.start", "api"),
        )
        .unwrap();
    let entry = store
        .record_release(
            "prod",
            "web",
            b"step-2",
            new_audit(3, "release.promote", "web"),
        )
        .unwrap();
    assert_eq!(entry.seq, 3);
    assert_eq!(
        store.releases("prod").unwrap(),
        [
            ("api".to_string(), b"step-0".to_vec()),
            ("web".to_string(), b"step-2".to_vec()),
        ],
        "sorted by service, latest state only"
    );
    assert_eq!(store.audit("prod", 10).unwrap()[0], entry);

    let entry = store
        .delete_release("prod", "web", new_audit(4, "release.delete", "web"))
        .unwrap();
    assert_eq!((entry.seq, entry.action.as_str()), (4, "release.delete"));
    assert_eq!(
        store.releases("prod").unwrap(),
        [("api".to_string(), b"step-0".to_vec())]
    );
    // A retried delete changes nothing but is still audited.
    let again = store
        .delete_release("prod", "web", new_audit(5, "release.delete", "web"))
        .unwrap();
    assert_eq!(again.seq, 5);
    assert_eq!(store.releases("prod").unwrap().len(), 1);
}

#[test]
fn audit_is_newest_first_and_limited() {
    let etcd = EtcdServer::start();
    let store = open(&etcd, P, "prod");
    for i in 1..=5 {
        let entry = store
            .append_audit("prod", new_audit(i, "login", "alice"))
            .unwrap();
        assert_eq!(entry.seq, i as u64);
    }
    store
        .append_audit("staging", new_audit(9, "login", "bob"))
        .unwrap();

    assert_eq!(seqs(&store, "prod", 2), [5, 4]);
    assert_eq!(seqs(&store, "prod", 100), [5, 4, 3, 2, 1]);
    assert_eq!(seqs(&store, "prod", usize::MAX), [5, 4, 3, 2, 1]);
    assert!(seqs(&store, "prod", 0).is_empty());
    assert_eq!(
        store.audit("prod", 1).unwrap()[0],
        AuditEntry {
            seq: 5,
            at_ms: 2_005,
            actor: "alice".into(),
            action: "login".into(),
            target: "alice".into(),
            reason: "reason 5".into(),
            detail: json!({ "i": 5 }),
        }
    );
    assert_eq!(seqs(&store, "staging", 10), [1]);
    assert!(store.audit("dev", 10).unwrap().is_empty());
}

#[test]
fn audit_matching_finds_the_newest_matches_across_pages_of_the_log() {
    let etcd = EtcdServer::start();
    let store = open(&etcd, P, "prod");
    let by = |i: i64, actor: &str, action: &str, target: &str| NewAuditEntry {
        actor: actor.into(),
        ..new_audit(i, action, target)
    };
    // bob's two changes are buried under more analysis verdicts than one page of the log.
    store
        .append_audit("prod", by(1, "bob", "release.promote", "payment"))
        .unwrap();
    store
        .append_audit("prod", by(2, "bob", "release.abort", "search"))
        .unwrap();
    for i in 3..=600 {
        store
            .append_audit("prod", by(i, "analysis", "analysis", "payment"))
            .unwrap();
    }
    store
        .append_audit("staging", by(601, "bob", "release.promote", "payment"))
        .unwrap();

    let seqs = |filter: AuditFilter, limit| -> Vec<u64> {
        store
            .audit_matching("prod", &filter, limit)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect()
    };
    let actor = |a: &str| AuditFilter {
        actor: Some(a.into()),
        ..AuditFilter::default()
    };
    assert_eq!(seqs(actor("bob"), 100), [2, 1], "older than the newest 598");
    assert_eq!(seqs(actor("bob"), 1), [2], "the limit counts matches");
    assert!(seqs(actor("bob"), 0).is_empty());
    assert_eq!(seqs(actor("analysis"), 3), [600, 599, 598]);
    assert!(seqs(actor("carol"), 100).is_empty());
    let all_analysis = seqs(actor("analysis"), 1_000);
    assert_eq!(
        all_analysis,
        (3..=600).rev().collect::<Vec<_>>(),
        "every page, in order"
    );
    let all_three = AuditFilter {
        target: Some("payment".into()),
        actor: Some("bob".into()),
        action: Some("release.promote".into()),
    };
    assert_eq!(seqs(all_three.clone(), 100), [1]);
    let none = AuditFilter {
        action: Some("release.abort".into()),
        ..all_three
    };
    assert!(seqs(none, 100).is_empty(), "every given field must match");
    assert_eq!(seqs(AuditFilter::default(), 5), [600, 599, 598, 597, 596]);
    assert_eq!(seqs(AuditFilter::default(), 300).len(), 300);
    assert_eq!(
        store.audit_matching("prod", &actor("bob"), 1).unwrap()[0],
        AuditEntry {
            seq: 2,
            at_ms: 2_002,
            actor: "bob".into(),
            action: "release.abort".into(),
            target: "search".into(),
            reason: "reason 2".into(),
            detail: json!({ "i": 2 }),
        }
    );
}

#[test]
fn the_audit_log_keeps_at_most_max_entries_per_environment_numbered_on() {
    let etcd = EtcdServer::start();
    let store = open(&etcd, P, "prod");
    store.set_audit_retention(5, 0);
    for i in 0..20 {
        store
            .append_audit("prod", new_audit(i, "login", "a"))
            .unwrap();
    }
    store
        .append_audit("staging", new_audit(0, "login", "a"))
        .unwrap();
    assert_eq!(seqs(&store, "prod", 100), [20, 19, 18, 17, 16]);
    assert_eq!(
        seqs(&store, "staging", 100),
        [1],
        "other environments keep theirs"
    );
}

#[test]
fn the_audit_log_drops_entries_older_than_max_age() {
    let etcd = EtcdServer::start();
    let store = open(&etcd, P, "prod");
    let at = |ms: i64| NewAuditEntry {
        at_ms: ms,
        ..new_audit(0, "login", "a")
    };
    for ms in [0, 1_000, 2_000, 3_000] {
        store.append_audit("prod", at(ms)).unwrap();
    }
    assert_eq!(
        seqs(&store, "prod", 100),
        [4, 3, 2, 1],
        "no retention keeps all"
    );
    store.set_audit_retention(0, 1_500);
    store.append_audit("prod", at(4_000)).unwrap();
    // 4_000 − 1_500 = 2_500: entries at 0, 1_000 and 2_000 are older.
    assert_eq!(seqs(&store, "prod", 100), [5, 4]);
}

/// The version `release_versions` reports for `service`.
fn version_of(store: &EtcdStore, service: &str) -> u64 {
    store
        .release_versions("prod")
        .unwrap()
        .into_iter()
        .find(|r| r.service == service)
        .map_or(0, |r| r.version)
}

fn expect(version: u64) -> Expect {
    Expect {
        version,
        leader: false,
    }
}

#[test]
fn a_conditional_write_from_the_stored_version_succeeds_and_returns_the_next_version() {
    let etcd = EtcdServer::start();
    let store = open(&etcd, P, "prod");
    let first = store
        .record_release_if(
            "prod",
            "web",
            b"s1",
            expect(0),
            new_audit(1, "release.start", "web"),
        )
        .unwrap();
    assert_eq!(first.entry.seq, 1);
    assert!(first.version > 0);
    assert_eq!(version_of(&store, "web"), first.version);

    let second = store
        .record_release_if(
            "prod",
            "web",
            b"s2",
            expect(first.version),
            new_audit(2, "release.promote", "web"),
        )
        .unwrap();
    assert!(second.version > first.version);
    assert_eq!(version_of(&store, "web"), second.version);
    let stored = store.release_versions("prod").unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].state, b"s2");

    let deleted = store
        .delete_release_if(
            "prod",
            "web",
            expect(second.version),
            new_audit(3, "release.removed", "web"),
        )
        .unwrap();
    assert_eq!(deleted.seq, 3);
    assert!(store.releases("prod").unwrap().is_empty());
}

#[test]
fn a_write_computed_from_a_stale_version_is_a_conflict_and_writes_nothing() {
    let etcd = EtcdServer::start();
    let a = open(&etcd, P, "prod");
    let b = open(&etcd, P, "prod");
    let v1 = a
        .record_release_if(
            "prod",
            "web",
            b"s1",
            expect(0),
            new_audit(1, "release.start", "web"),
        )
        .unwrap()
        .version;
    // Node b promotes from v1 first; node a's change, also computed from v1, must not land.
    b.record_release_if(
        "prod",
        "web",
        b"b",
        expect(v1),
        new_audit(2, "release.promote", "web"),
    )
    .unwrap();
    let before = dump(a.etcd(), P);
    let err = a
        .record_release_if(
            "prod",
            "web",
            b"a",
            expect(v1),
            new_audit(3, "release.abort", "web"),
        )
        .unwrap_err();
    match &err {
        StoreError::Conflict { service } => assert_eq!(service, "web"),
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert!(err.to_string().contains("release `web`"), "{err}");
    let err = a
        .delete_release_if(
            "prod",
            "web",
            expect(v1),
            new_audit(3, "release.removed", "web"),
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    assert_eq!(
        dump(a.etcd(), P),
        before,
        "nothing written, no audit entry either"
    );
    assert_eq!(seqs(&a, "prod", 10), [2, 1]);
    assert_eq!(a.releases("prod").unwrap()[0].1, b"b");
}

#[test]
fn expecting_version_zero_creates_the_release_only_when_it_is_absent() {
    let etcd = EtcdServer::start();
    let a = open(&etcd, P, "prod");
    let b = open(&etcd, P, "prod");
    a.record_release_if(
        "prod",
        "web",
        b"a",
        expect(0),
        new_audit(1, "release.start", "web"),
    )
    .unwrap();
    let before = dump(a.etcd(), P);
    let err = b
        .record_release_if(
            "prod",
            "web",
            b"b",
            expect(0),
            new_audit(2, "release.start", "web"),
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    assert_eq!(dump(a.etcd(), P), before);
    assert_eq!(a.releases("prod").unwrap()[0].1, b"a");
}

#[test]
fn a_leader_write_from_a_node_that_does_not_lead_is_refused_and_writes_nothing() {
    let etcd = EtcdServer::start();
    let store = open(&etcd, P, "prod");
    let v = store
        .record_release_if(
            "prod",
            "web",
            b"s1",
            expect(0),
            new_audit(1, "release.start", "web"),
        )
        .unwrap()
        .version;
    let before = dump(store.etcd(), P);
    let leader = Expect {
        version: v,
        leader: true,
    };
    let err = store
        .record_release_if(
            "prod",
            "web",
            b"s2",
            leader,
            new_audit(2, "release.promote", "web"),
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::NotLeader), "{err:?}");
    assert!(
        err.to_string().contains("no longer the fleet's leader"),
        "{err}"
    );
    let err = store
        .delete_release_if(
            "prod",
            "web",
            leader,
            new_audit(2, "release.removed", "web"),
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::NotLeader), "{err:?}");
    assert_eq!(dump(store.etcd(), P), before);
}

#[test]
fn two_nodes_appending_at_once_get_unique_gap_free_sequence_numbers() {
    let etcd = EtcdServer::start();
    let nodes = [
        Arc::new(open(&etcd, P, "prod")),
        Arc::new(open(&etcd, P, "prod")),
    ];
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let store = Arc::clone(&nodes[t % 2]);
            std::thread::spawn(move || {
                (0..50)
                    .map(|i| {
                        store
                            .append_audit("prod", new_audit(t as i64 * 100 + i, "login", "x"))
                            .unwrap()
                            .seq
                    })
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut got: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    got.sort_unstable();
    assert_eq!(
        got,
        (1..=200).collect::<Vec<_>>(),
        "each number once, none skipped"
    );
    let stored = nodes[1].audit("prod", 1_000).unwrap();
    assert_eq!(stored.len(), 200);
    assert_eq!(
        stored.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=200).rev().collect::<Vec<_>>()
    );
    // Each entry is stored under its own number with the content its writer gave it.
    let mut written: Vec<i64> = stored.iter().map(|e| e.at_ms).collect();
    written.sort_unstable();
    written.dedup();
    assert_eq!(written.len(), 200);
}

#[test]
fn a_prefix_holding_keys_graylane_did_not_write_is_refused_and_left_untouched() {
    let etcd = EtcdServer::start();
    let raw = connect(&etcd, "/elsewhere");
    put(&raw, "/apisix/routes/1", b"{\"uri\":\"/\"}");
    let before = dump(&raw, "/");
    let err = EtcdStore::open(connect(&etcd, "/apisix"), "prod")
        .err()
        .expect("foreign keys must be refused");
    assert!(matches!(err, StoreError::Foreign { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("/apisix/routes/1"),
        "names the key: {message}"
    );
    assert!(message.contains(&etcd.url()), "names etcd: {message}");
    assert!(message.contains("nothing was changed"), "{message}");
    assert_eq!(dump(&raw, "/"), before);
}

#[test]
fn a_schema_marker_of_another_version_is_refused_and_left_untouched() {
    let etcd = EtcdServer::start();
    let raw = connect(&etcd, P);
    put(&raw, "/graylane/schema", b"{\"graylane_schema\": 2}");
    put(&raw, "/graylane/env/prod/v2-thing", b"x");
    let before = dump(&raw, "/");
    let err = EtcdStore::open(connect(&etcd, P), "prod")
        .err()
        .expect("another schema must be refused");
    let message = err.to_string();
    assert!(
        message.contains("/graylane/schema"),
        "names the key: {message}"
    );
    assert!(message.contains("schema 2"), "{message}");
    assert_eq!(dump(&raw, "/"), before);

    put(&raw, "/graylane/schema", b"not json");
    let err = EtcdStore::open(connect(&etcd, P), "prod").err().unwrap();
    assert!(
        err.to_string().contains("not a graylane schema marker"),
        "{err}"
    );
}

#[test]
fn an_environment_whose_record_names_another_is_refused_and_left_untouched() {
    let etcd = EtcdServer::start();
    {
        let staging = open(&etcd, P, "staging");
        staging
            .add_revision("staging", new_revision(1, RevisionSource::File))
            .unwrap();
    }
    // Someone copied staging's keys under prod's name, meta record and all.
    let raw = connect(&etcd, P);
    for (key, value, _) in dump(&raw, "/graylane/env/staging/") {
        put(&raw, &key.replace("/env/staging/", "/env/prod/"), &value);
    }
    let before = dump(&raw, "/");
    let err = EtcdStore::open(connect(&etcd, P), "prod")
        .err()
        .expect("another environment's keys must be refused");
    let message = err.to_string();
    assert!(
        message.contains("/graylane/env/prod/meta"),
        "names the key: {message}"
    );
    assert!(message.contains("`staging`"), "{message}");
    assert_eq!(dump(&raw, "/"), before);

    // The same holds when a store opened on one environment is asked to write to it.
    let store = open(&etcd, P, "staging");
    let err = store
        .append_audit("prod", new_audit(1, "login", "a"))
        .unwrap_err();
    assert!(matches!(err, StoreError::Foreign { .. }), "{err:?}");
    assert_eq!(dump(&raw, "/"), before);
}

#[test]
fn keys_without_an_environment_record_are_refused() {
    let etcd = EtcdServer::start();
    drop(open(&etcd, P, "staging"));
    let raw = connect(&etcd, P);
    put(&raw, "/graylane/env/prod/releases/web", b"{}");
    let before = dump(&raw, "/");
    let err = EtcdStore::open(connect(&etcd, P), "prod").err().unwrap();
    let message = err.to_string();
    assert!(message.contains("/graylane/env/prod/"), "{message}");
    assert!(message.contains("no environment record"), "{message}");
    assert_eq!(dump(&raw, "/"), before);
}

#[test]
fn while_etcd_is_down_calls_fail_within_the_timeout_and_work_again_after_a_restart() {
    let mut etcd = EtcdServer::start();
    let store = open(&etcd, P, "prod");
    store
        .add_revision("prod", new_revision(1, RevisionSource::File))
        .unwrap();
    let v = store
        .record_release_if(
            "prod",
            "web",
            b"s1",
            expect(0),
            new_audit(1, "release.start", "web"),
        )
        .unwrap()
        .version;

    etcd.kill();
    for attempt in 0..3 {
        let start = Instant::now();
        let err = store
            .append_audit("prod", new_audit(2, "login", "a"))
            .unwrap_err();
        let took = start.elapsed();
        assert!(
            took < Duration::from_millis(2_500),
            "attempt {attempt} took {took:?}"
        );
        match &err {
            StoreError::Unavailable { endpoints, .. } => assert_eq!(endpoints, &etcd.url()),
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert!(err.to_string().contains(&etcd.url()), "{err}");
        let start = Instant::now();
        assert!(matches!(
            store.latest_revision("prod"),
            Err(StoreError::Unavailable { .. })
        ));
        assert!(start.elapsed() < Duration::from_millis(2_500));
    }

    etcd.restart();
    common::wait_for("the store answers again", Duration::from_secs(10), || {
        store.latest_revision("prod").is_ok()
    });
    assert_eq!(store.latest_revision("prod").unwrap().unwrap().n, 1);
    assert_eq!(
        seqs(&store, "prod", 10),
        [1],
        "the failed appends wrote nothing"
    );
    let next = store
        .record_release_if(
            "prod",
            "web",
            b"s2",
            expect(v),
            new_audit(2, "release.promote", "web"),
        )
        .unwrap();
    assert_eq!(next.entry.seq, 2);
    assert_eq!(store.releases("prod").unwrap()[0].1, b"s2");
}

#[test]
fn service_instances_registered_before_any_node_ran_do_not_make_the_prefix_foreign() {
    let etcd = EtcdServer::start();
    let raw = connect(&etcd, P);
    let instance = "/graylane/registry/payment/i-1";
    put(&raw, instance, b"{\"address\":\"127.0.0.1:9000\"}");
    let store = open(&etcd, P, "prod");
    store
        .add_revision("prod", new_revision(1, RevisionSource::File))
        .unwrap();
    let kept = dump(&raw, instance);
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].1, b"{\"address\":\"127.0.0.1:9000\"}");

    // Anything else beside them still does.
    let elsewhere = connect(&etcd, "/other");
    put(&elsewhere, "/other/registry/payment/i-1", b"{}");
    put(&elsewhere, "/other/aaa", b"x");
    let err = EtcdStore::open(connect(&etcd, "/other"), "prod")
        .err()
        .unwrap();
    assert!(err.to_string().contains("/other/aaa"), "{err}");
}
