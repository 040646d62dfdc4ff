//! `EtcdStore` against a real etcd: the behaviours every store has
//! (`graylane_store::conformance`, as the embedded store), conditional
//! (fenced) release writes, concurrent writers on several nodes, foreign data, and etcd going
//! away and coming back.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{connect, dump, new_audit, new_revision, open, put};
use graylane_etcd::EtcdStore;
use graylane_store::conformance::Backend;
use graylane_store::{Expect, RevisionSource, Store, StoreError};
use graylane_testing::etcd::EtcdServer;

const P: &str = "/graylane";

fn seqs(store: &EtcdStore, env: &str, limit: usize) -> Vec<u64> {
    store
        .audit(env, limit)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect()
}

/// A store on a fresh etcd under [`P`], a new connection each time it is opened.
struct Prefix(EtcdServer);

impl Backend for Prefix {
    fn open(&mut self) -> Box<dyn Store> {
        Box::new(open(&self.0, P, "prod"))
    }
}

graylane_store::store_conformance!(Prefix(EtcdServer::start()));

#[test]
fn what_one_node_wrote_for_another_environment_is_that_environment_s_not_foreign_keys() {
    let etcd = EtcdServer::start();
    let store = open(&etcd, P, "prod");
    store
        .record_release(
            "prod-eu",
            "web",
            b"eu",
            new_audit(1, "release.start", "web"),
        )
        .unwrap();
    store
        .append_audit("a", new_audit(3, "login", "alice"))
        .unwrap();
    for env in ["prod-eu", "a"] {
        let other = open(&etcd, P, env);
        assert_eq!(seqs(&other, env, 10), [1]);
    }
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
