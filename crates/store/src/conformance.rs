//! What every [`Store`] does, written once and run against each backend (redb in this crate's
//! tests, etcd in graylane-etcd's): revisions, releases and the audit log per environment,
//! what a reopened store keeps, and the audit log's retention. Behind the `testing` feature;
//! [`store_conformance!`](crate::store_conformance) makes one `#[test]` of each.
//!
//! Each function takes a [`Backend`] with no data yet and panics on the first difference.

use serde_json::json;

use crate::{AuditEntry, AuditFilter, NewAuditEntry, NewRevision, Revision, RevisionSource, Store};

/// A place a store keeps its data: a folder, an etcd prefix.
pub trait Backend {
    /// A store on this backend's data, the same data every time (the file opened again, a new
    /// connection). Callers drop the previous store first.
    fn open(&mut self) -> Box<dyn Store>;
}

/// Revision `i`: at `1_000 + i` ms, by `author-i`, with YAML `version: i`.
pub fn new_revision(i: i64, source: RevisionSource) -> NewRevision {
    NewRevision {
        at_ms: 1_000 + i,
        author: format!("author-{i}"),
        message: format!("change {i}"),
        source,
        yaml: format!("version: {i}\n"),
    }
}

/// Audit entry `i` by `alice`: at `2_000 + i` ms, detail `{"i": i}`.
pub fn new_audit(i: i64, action: &str, target: &str) -> NewAuditEntry {
    NewAuditEntry {
        at_ms: 2_000 + i,
        actor: "alice".into(),
        action: action.into(),
        target: target.into(),
        reason: format!("reason {i}"),
        detail: json!({ "i": i }),
    }
}

fn seqs(store: &dyn Store, env: &str, limit: usize) -> Vec<u64> {
    store
        .audit(env, limit)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect()
}

/// Revisions are numbered 1, 2, … in each environment, listed newest first, read one by one.
pub fn revisions_are_numbered_from_one_per_environment(backend: &mut dyn Backend) {
    let store = backend.open();
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

/// Environments whose names are prefixes of each other keep apart, and are listed by name.
pub fn environments_are_isolated_and_listed(backend: &mut dyn Backend) {
    let store = backend.open();
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
    assert_eq!(seqs(store.as_ref(), "prod", 10), [1]);
    assert_eq!(seqs(store.as_ref(), "prod-eu", 10), [1]);
    assert_eq!(seqs(store.as_ref(), "a", 10), [1]);
}

/// A store opened again on the same data has every revision, release and audit entry, and
/// numbers on where it stopped.
pub fn a_reopened_store_keeps_everything_and_numbers_on(backend: &mut dyn Backend) {
    let (revisions, releases, audit) = {
        let store = backend.open();
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
        store
            .append_audit("staging", new_audit(2, "config.reload", "-"))
            .unwrap();
        (
            store.revisions("prod").unwrap(),
            store.releases("prod").unwrap(),
            store.audit("prod", 100).unwrap(),
        )
    };

    let store = backend.open();
    assert_eq!(store.revisions("prod").unwrap(), revisions);
    assert_eq!(store.releases("prod").unwrap(), releases);
    assert_eq!(store.audit("prod", 100).unwrap(), audit);
    assert_eq!(store.environments().unwrap(), ["prod", "staging"]);
    assert_eq!(
        store.latest_revision("prod").unwrap().unwrap().yaml,
        "version: 2\n"
    );
    let next = store.add_revision("prod", new_revision(3, RevisionSource::Api));
    assert_eq!(next.unwrap().n, 3);
    let next = store.append_audit("prod", new_audit(3, "login", "alice"));
    assert_eq!(next.unwrap().seq, 2);
}

/// Recording a release saves its state and its audit entry together; the latest state wins.
pub fn record_release_saves_state_and_audit_together(backend: &mut dyn Backend) {
    let store = backend.open();
    let entry = store
        .record_release(
            "prod",
            "web",
            b"step-1",
            new_audit(1, "release.start", "web"),
        )
        .unwrap();
    assert_eq!(entry.seq, 1);
    assert_eq!(entry.action, "release.start");
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
}

/// Deleting a release removes its state (for good) and is audited, even when retried.
pub fn delete_release_removes_state_and_records_audit(backend: &mut dyn Backend) {
    let store = backend.open();
    store
        .record_release("prod", "web", b"s", new_audit(1, "release.start", "web"))
        .unwrap();
    store
        .record_release("prod", "api", b"s", new_audit(2, "release.start", "api"))
        .unwrap();

    let entry = store
        .delete_release("prod", "web", new_audit(3, "release.delete", "web"))
        .unwrap();
    assert_eq!((entry.seq, entry.action.as_str()), (3, "release.delete"));
    assert_eq!(
        store.releases("prod").unwrap(),
        [("api".to_string(), b"s".to_vec())]
    );
    // A retried delete changes nothing but is still audited.
    let again = store
        .delete_release("prod", "web", new_audit(4, "release.delete", "web"))
        .unwrap();
    assert_eq!(again.seq, 4);
    assert_eq!(store.releases("prod").unwrap().len(), 1);

    drop(store);
    let store = backend.open();
    assert_eq!(
        store.releases("prod").unwrap(),
        [("api".to_string(), b"s".to_vec())]
    );
}

/// The audit log reads newest first, at most `limit` entries, per environment.
pub fn audit_is_newest_first_and_limited(backend: &mut dyn Backend) {
    let store = backend.open();
    for i in 1..=5 {
        let entry = store
            .append_audit("prod", new_audit(i, "login", "alice"))
            .unwrap();
        assert_eq!(entry.seq, i as u64);
    }
    store
        .append_audit("staging", new_audit(9, "login", "bob"))
        .unwrap();

    let store = store.as_ref();
    assert_eq!(seqs(store, "prod", 2), [5, 4]);
    assert_eq!(seqs(store, "prod", 100), [5, 4, 3, 2, 1]);
    assert_eq!(seqs(store, "prod", usize::MAX), [5, 4, 3, 2, 1]);
    assert!(seqs(store, "prod", 0).is_empty());
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
    assert_eq!(seqs(store, "staging", 10), [1]);
    assert!(store.audit("dev", 10).unwrap().is_empty());
}

/// Filtered reads find the newest matching entries, however deep in the log (past one page
/// of a backend that reads it in pages), every given field matching exactly.
pub fn audit_matching_finds_the_newest_matches_across_the_log(backend: &mut dyn Backend) {
    let store = backend.open();
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
    assert!(seqs(actor("Bob"), 100).is_empty(), "exact match only");
    assert_eq!(
        seqs(actor("analysis"), 1_000),
        (3..=600).rev().collect::<Vec<_>>(),
        "every page, in order"
    );
    let target = |t: &str| AuditFilter {
        target: Some(t.into()),
        ..AuditFilter::default()
    };
    assert_eq!(seqs(target("search"), 100), [2]);
    assert_eq!(seqs(target("payment"), 1_000).len(), 599);
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
    assert_eq!(
        seqs(AuditFilter::default(), 5),
        [600, 599, 598, 597, 596],
        "the default filter is everything"
    );
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
    assert!(
        store
            .audit_matching("dev", &actor("bob"), 10)
            .unwrap()
            .is_empty()
    );
}

/// Every kind of revision source reads back as it was written, also after reopening.
pub fn revision_sources_round_trip(backend: &mut dyn Backend) {
    let sources = [
        RevisionSource::File,
        RevisionSource::Api,
        RevisionSource::Revert { from: 7 },
    ];
    {
        let store = backend.open();
        for (i, source) in sources.iter().enumerate() {
            let rev = store
                .add_revision("prod", new_revision(i as i64, source.clone()))
                .unwrap();
            assert_eq!(&rev.source, source);
        }
    }
    let store = backend.open();
    let listed: Vec<RevisionSource> = store
        .revisions("prod")
        .unwrap()
        .into_iter()
        .rev()
        .map(|r| r.source)
        .collect();
    assert_eq!(listed, sources);
    assert_eq!(
        store.revision("prod", 3).unwrap().unwrap().source,
        RevisionSource::Revert { from: 7 }
    );
}

/// With a maximum number of entries, each environment keeps its newest ones, numbered on.
pub fn the_audit_log_keeps_at_most_max_entries_per_environment_numbered_on(
    backend: &mut dyn Backend,
) {
    let store = backend.open();
    store.set_audit_retention(5, 0);
    for i in 0..20 {
        store
            .append_audit("prod", new_audit(i, "login", "a"))
            .unwrap();
    }
    store
        .append_audit("staging", new_audit(0, "login", "a"))
        .unwrap();
    assert_eq!(seqs(store.as_ref(), "prod", 100), [20, 19, 18, 17, 16]);
    assert_eq!(
        seqs(store.as_ref(), "staging", 100),
        [1],
        "other environments keep theirs"
    );
}

/// With a maximum age, entries older than that before the newest are dropped.
pub fn the_audit_log_drops_entries_older_than_max_age(backend: &mut dyn Backend) {
    let store = backend.open();
    let at = |ms: i64| NewAuditEntry {
        at_ms: ms,
        ..new_audit(0, "login", "a")
    };
    for ms in [0, 1_000, 2_000, 3_000] {
        store.append_audit("prod", at(ms)).unwrap();
    }
    assert_eq!(
        seqs(store.as_ref(), "prod", 100),
        [4, 3, 2, 1],
        "no retention keeps all"
    );
    store.set_audit_retention(0, 1_500);
    store.append_audit("prod", at(4_000)).unwrap();
    // 4_000 − 1_500 = 2_500: entries at 0, 1_000 and 2_000 are older.
    assert_eq!(seqs(store.as_ref(), "prod", 100), [5, 4]);
}

/// One `#[test]` per behaviour of [`crate::conformance`], each on a fresh backend from
/// `$backend` (an expression evaluated once per test, giving a
/// [`Backend`](crate::conformance::Backend)).
#[macro_export]
macro_rules! store_conformance {
    ($backend:expr) => {
        $crate::store_conformance!(@each $backend;
            revisions_are_numbered_from_one_per_environment,
            environments_are_isolated_and_listed,
            a_reopened_store_keeps_everything_and_numbers_on,
            record_release_saves_state_and_audit_together,
            delete_release_removes_state_and_records_audit,
            audit_is_newest_first_and_limited,
            audit_matching_finds_the_newest_matches_across_the_log,
            revision_sources_round_trip,
            the_audit_log_keeps_at_most_max_entries_per_environment_numbered_on,
            the_audit_log_drops_entries_older_than_max_age
        );
    };
    (@each $backend:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let mut backend = $backend;
                $crate::conformance::$name(&mut backend);
            }
        )*
    };
}
