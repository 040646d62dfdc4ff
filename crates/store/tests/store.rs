//! The store against real files in temporary directories.

use std::fs;
use std::path::Path;

use graylane_store::{
    AuditFilter, NewAuditEntry, NewRevision, RedbStore, RevisionSource, Store, StoreError,
};
use serde_json::json;

fn new_revision(i: i64, source: RevisionSource) -> NewRevision {
    NewRevision {
        at_ms: 1_000 + i,
        author: format!("author-{i}"),
        message: format!("change {i}"),
        source,
        yaml: format!("version: {i}\n"),
    }
}

fn new_audit(i: i64, action: &str, target: &str) -> NewAuditEntry {
    NewAuditEntry {
        at_ms: 2_000 + i,
        actor: "alice".into(),
        action: action.into(),
        target: target.into(),
        reason: format!("reason {i}"),
        detail: json!({ "i": i }),
    }
}

fn open(dir: &Path) -> RedbStore {
    match RedbStore::open(dir) {
        Ok(store) => store,
        Err(e) => panic!("opening {}: {e}", dir.display()),
    }
}

fn db_file(dir: &Path) -> std::path::PathBuf {
    dir.join("graylane.redb")
}

#[test]
fn revisions_are_numbered_from_one_per_environment() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());

    for i in 1..=3 {
        let rev = store
            .add_revision("prod", new_revision(i, RevisionSource::Api))
            .unwrap();
        assert_eq!(rev.n, i as u64);
        assert_eq!(rev.yaml, format!("version: {i}\n"));
    }
    let staging = store
        .add_revision("staging", new_revision(10, RevisionSource::File))
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

    assert_eq!(store.latest_revision("prod").unwrap().unwrap().n, 3);
    assert_eq!(
        store.latest_revision("staging").unwrap().unwrap().yaml,
        "version: 10\n"
    );
    let second = store.revision("prod", 2).unwrap().unwrap();
    assert_eq!(second, {
        let new = new_revision(2, RevisionSource::Api);
        graylane_store::Revision {
            n: 2,
            at_ms: new.at_ms,
            author: new.author,
            message: new.message,
            source: new.source,
            yaml: new.yaml,
        }
    });
    assert_eq!(store.revision("prod", 4).unwrap(), None);
    assert_eq!(store.revision("staging", 2).unwrap(), None);
    assert_eq!(store.latest_revision("dev").unwrap(), None);
    assert!(store.revisions("dev").unwrap().is_empty());
}

#[test]
fn environments_are_isolated_and_listed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert!(store.environments().unwrap().is_empty());

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
    let seqs = |env| -> Vec<u64> {
        store
            .audit(env, 10)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect()
    };
    assert_eq!(seqs("prod"), [1]);
    assert_eq!(seqs("prod-eu"), [1]);
    assert_eq!(seqs("a"), [1]);
}

#[test]
fn reopening_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (revisions, releases, audit) = {
        let store = open(dir.path());
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

    let store = open(dir.path());
    assert_eq!(store.revisions("prod").unwrap(), revisions);
    assert_eq!(store.releases("prod").unwrap(), releases);
    assert_eq!(store.audit("prod", 100).unwrap(), audit);
    assert_eq!(store.environments().unwrap(), ["prod", "staging"]);
    assert_eq!(
        store.latest_revision("prod").unwrap().unwrap().yaml,
        "version: 2\n"
    );
    // Numbering continues where it stopped.
    assert_eq!(
        store
            .add_revision("prod", new_revision(3, RevisionSource::Api))
            .unwrap()
            .n,
        3
    );
    assert_eq!(
        store
            .append_audit("prod", new_audit(3, "login", "alice"))
            .unwrap()
            .seq,
        2
    );
}

#[test]
fn record_release_saves_state_and_audit_together() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());

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

#[test]
fn delete_release_removes_state_and_records_audit() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .record_release("prod", "web", b"s", new_audit(1, "release.start", "web"))
        .unwrap();
    store
        .record_release("prod", "api", b"s", new_audit(2, "release.start", "api"))
        .unwrap();

    let entry = store
        .delete_release("prod", "web", new_audit(3, "release.delete", "web"))
        .unwrap();
    assert_eq!(entry.seq, 3);
    assert_eq!(entry.action, "release.delete");
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
    let store = open(dir.path());
    assert_eq!(
        store.releases("prod").unwrap(),
        [("api".to_string(), b"s".to_vec())]
    );
}

#[test]
fn audit_is_newest_first_and_limited() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for i in 1..=5 {
        let entry = store
            .append_audit("prod", new_audit(i, "login", "alice"))
            .unwrap();
        assert_eq!(entry.seq, i as u64);
    }
    store
        .append_audit("staging", new_audit(9, "login", "bob"))
        .unwrap();

    let seqs = |limit| -> Vec<u64> {
        store
            .audit("prod", limit)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect()
    };
    assert_eq!(seqs(2), [5, 4]);
    assert_eq!(seqs(100), [5, 4, 3, 2, 1]);
    assert_eq!(seqs(usize::MAX), [5, 4, 3, 2, 1]);
    assert!(seqs(0).is_empty());

    let newest = &store.audit("prod", 1).unwrap()[0];
    assert_eq!(
        newest,
        &graylane_store::AuditEntry {
            seq: 5,
            at_ms: 2_005,
            actor: "alice".into(),
            action: "login".into(),
            target: "alice".into(),
            reason: "reason 5".into(),
            detail: json!({ "i": 5 }),
        }
    );
    assert!(store.audit("dev", 10).unwrap().is_empty());
}

#[test]
fn audit_matching_returns_the_newest_matching_entries() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let by = |i: i64, actor: &str, action: &str, target: &str| NewAuditEntry {
        actor: actor.into(),
        ..new_audit(i, action, target)
    };
    // bob's two changes are buried under the analysis' verdicts, as in a real log.
    store
        .append_audit("prod", by(1, "bob", "release.promote", "payment"))
        .unwrap();
    store
        .append_audit("prod", by(2, "bob", "release.abort", "search"))
        .unwrap();
    for i in 3..=20 {
        store
            .append_audit("prod", by(i, "analysis", "analysis", "payment"))
            .unwrap();
    }
    store
        .append_audit("staging", by(21, "bob", "release.promote", "payment"))
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

    assert_eq!(seqs(actor("bob"), 100), [2, 1], "older than the newest 18");
    assert_eq!(seqs(actor("bob"), 1), [2], "the limit counts matches");
    assert!(seqs(actor("bob"), 0).is_empty());
    assert_eq!(seqs(actor("analysis"), 3), [20, 19, 18]);
    assert!(seqs(actor("carol"), 100).is_empty());
    assert!(seqs(actor("Bob"), 100).is_empty(), "exact match only");
    let service = |t: &str| AuditFilter {
        target: Some(t.into()),
        ..AuditFilter::default()
    };
    assert_eq!(seqs(service("search"), 100), [2]);
    assert_eq!(seqs(service("payment"), 100).len(), 19);
    let all_three = AuditFilter {
        target: Some("payment".into()),
        actor: Some("bob".into()),
        action: Some("release.promote".into()),
    };
    assert_eq!(seqs(all_three.clone(), 100), [1]);
    assert!(
        seqs(
            AuditFilter {
                action: Some("release.abort".into()),
                ..all_three
            },
            100
        )
        .is_empty(),
        "every given field must match"
    );
    assert_eq!(
        seqs(AuditFilter::default(), 5),
        [20, 19, 18, 17, 16],
        "the default filter is everything"
    );
    assert_eq!(
        store.audit_matching("prod", &actor("bob"), 1).unwrap()[0],
        graylane_store::AuditEntry {
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

#[test]
fn revision_source_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let sources = [
        RevisionSource::File,
        RevisionSource::Api,
        RevisionSource::Revert { from: 7 },
    ];
    {
        let store = open(dir.path());
        for (i, source) in sources.iter().enumerate() {
            let rev = store
                .add_revision("prod", new_revision(i as i64, source.clone()))
                .unwrap();
            assert_eq!(&rev.source, source);
        }
    }
    let store = open(dir.path());
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

    let names: Vec<&str> = sources.iter().map(RevisionSource::as_str).collect();
    assert_eq!(names, ["file", "api", "revert"]);
    assert_eq!(
        serde_json::to_value(RevisionSource::Revert { from: 7 }).unwrap(),
        json!({ "kind": "revert", "from": 7 })
    );
    assert_eq!(
        serde_json::to_value(RevisionSource::File).unwrap(),
        json!({ "kind": "file" })
    );
}

/// Fails with where two files first differ, rather than printing megabytes of bytes.
fn assert_unchanged(path: &Path, before: &[u8]) {
    let after = fs::read(path).unwrap();
    let first_difference = before.iter().zip(&after).position(|(a, b)| a != b);
    assert!(
        after.len() == before.len() && first_difference.is_none(),
        "{} changed: {} bytes before, {} after, first difference at {first_difference:?}",
        path.display(),
        before.len(),
        after.len(),
    );
}

/// Writes `bytes` as the database file, fails to open it, and checks the file is unchanged.
fn assert_refused_untouched(bytes: &[u8]) -> StoreError {
    let dir = tempfile::tempdir().unwrap();
    fs::write(db_file(dir.path()), bytes).unwrap();
    let err = RedbStore::open(dir.path()).expect_err("a damaged file must not open");
    assert_unchanged(&db_file(dir.path()), bytes);
    err
}

#[test]
fn garbage_file_is_corrupt_and_left_untouched() {
    let garbage: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let err = assert_refused_untouched(&garbage);
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("graylane.redb"), "{message}");
    assert!(message.contains("refusing to start"), "{message}");
    assert!(message.contains("move it away"), "{message}");

    let err = assert_refused_untouched(b"not a database");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
}

#[test]
fn damaged_database_is_corrupt_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        for i in 1..=20 {
            store
                .add_revision("prod", new_revision(i, RevisionSource::Api))
                .unwrap();
        }
    }
    let mut bytes = fs::read(db_file(dir.path())).unwrap();
    // Keep redb's magic number and overwrite everything after it: the header and every page.
    for (i, b) in bytes.iter_mut().enumerate().skip(9) {
        *b = (i as u8).wrapping_mul(31) ^ 0x5a;
    }
    let err = assert_refused_untouched(&bytes);
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
}

#[test]
fn data_dir_that_is_a_file_fails_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("data");
    fs::write(&not_a_dir, b"a file").unwrap();
    let err = RedbStore::open(&not_a_dir).unwrap_err();
    match &err {
        StoreError::Open { path, .. } => assert_eq!(path, &not_a_dir),
        other => panic!("expected Open, got {other:?}"),
    }
    assert!(err.to_string().contains(&not_a_dir.display().to_string()));
    assert_eq!(fs::read(&not_a_dir).unwrap(), b"a file");

    // A directory where the database file should be fails the same way.
    fs::create_dir(db_file(dir.path())).unwrap();
    let err = RedbStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
}

#[test]
fn second_open_while_the_first_is_open_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path());
    first
        .add_revision("prod", new_revision(1, RevisionSource::File))
        .unwrap();

    let err = RedbStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    assert!(err.to_string().contains("already in use"), "{err}");

    // The failed open must not have disturbed the first one, nor left the lock behind.
    first
        .add_revision("prod", new_revision(2, RevisionSource::File))
        .unwrap();
    drop(first);
    let again = open(dir.path());
    assert_eq!(again.latest_revision("prod").unwrap().unwrap().n, 2);
}

#[test]
fn unknown_schema_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = redb::Database::create(db_file(dir.path())).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(redb::TableDefinition::<&str, u64>::new("meta"))
            .unwrap()
            .insert("schema_version", 99)
            .unwrap();
        txn.commit().unwrap();
    }
    let err = RedbStore::open(dir.path()).unwrap_err();
    match &err {
        StoreError::SchemaVersion {
            found, expected, ..
        } => assert_eq!((*found, *expected), (99, 1)),
        other => panic!("expected SchemaVersion, got {other:?}"),
    }
    assert!(err.to_string().contains("schema version 99"), "{err}");

    // redb's integrity check on open commits its own bookkeeping, so the bytes may move, but
    // the newer build's data must still be there for it.
    let db = redb::Database::create(db_file(dir.path())).unwrap();
    let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
    let meta = txn
        .open_table(redb::TableDefinition::<&str, u64>::new("meta"))
        .unwrap();
    let version = redb::ReadableTable::get(&meta, "schema_version")
        .unwrap()
        .unwrap();
    assert_eq!(version.value(), 99);
}

#[test]
fn damaged_page_is_corrupt_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        for i in 1..=20 {
            store
                .add_revision("prod", new_revision(i, RevisionSource::Api))
                .unwrap();
        }
    }
    // Flip one bit of a stored document, as a failing disk would: its page no longer matches
    // its checksum. (tests/crash.rs covers the same after a kill, when redb could otherwise
    // fall back to the previous commit.)
    let mut bytes = fs::read(db_file(dir.path())).unwrap();
    let marker = b"version: 20\n";
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("the document is stored uncompressed");
    bytes[at + 9] ^= 0x01;
    let err = assert_refused_untouched(&bytes);
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
}

#[test]
fn foreign_redb_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = redb::Database::create(db_file(dir.path())).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(redb::TableDefinition::<u64, u64>::new("something_else"))
            .unwrap()
            .insert(1, 2)
            .unwrap();
        txn.commit().unwrap();
    }
    let err = RedbStore::open(dir.path()).unwrap_err();
    match &err {
        StoreError::Corrupt { detail, .. } => {
            assert!(detail.contains("not a graylane store"), "{detail}")
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn undecodable_value_is_a_decode_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        store
            .append_audit("prod", new_audit(1, "login", "alice"))
            .unwrap();
    }
    {
        // What a build with another audit layout, but the same schema version, would leave.
        let db = redb::Database::create(db_file(dir.path())).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(redb::TableDefinition::<(&str, u64), &[u8]>::new("audit"))
            .unwrap()
            .insert(("prod", 1), b"{not json".as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let store = open(dir.path());
    let err = store.audit("prod", 10).unwrap_err();
    match &err {
        StoreError::Decode { table, key, .. } => {
            assert_eq!(*table, "audit");
            assert_eq!(key, "(\"prod\", 1)");
        }
        other => panic!("expected Decode, got {other:?}"),
    }
    assert!(err.to_string().contains("graylane.redb"), "{err}");
}
