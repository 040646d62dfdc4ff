//! The store against real files in temporary directories: the behaviours every store has
//! (`graylane_store::conformance`), then what is particular to a file: damage, locks, schema.

use std::fs;
use std::path::Path;

use graylane_store::conformance::{Backend, new_audit, new_revision};
use graylane_store::{RedbStore, RevisionSource, Store, StoreError};
use serde_json::json;

/// A store in a temporary folder, opened again on the same file each time.
struct Folder(tempfile::TempDir);

impl Backend for Folder {
    fn open(&mut self) -> Box<dyn Store> {
        Box::new(open(self.0.path()))
    }
}

graylane_store::store_conformance!(Folder(tempfile::tempdir().unwrap()));

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
fn a_new_store_has_no_environments() {
    let dir = tempfile::tempdir().unwrap();
    assert!(open(dir.path()).environments().unwrap().is_empty());
}

#[test]
fn revision_sources_are_named_and_serialised_as_the_api_shows_them() {
    let sources = [
        RevisionSource::File,
        RevisionSource::Api,
        RevisionSource::Revert { from: 7 },
    ];
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
