//! [`RedbStore`]: the [`Store`] on one redb file (the crate's documentation says what it
//! promises). This file opens the database, checks its schema and holds the tables; `audit.rs`
//! numbers and prunes audit entries, and `op.rs` turns a redb failure into an error naming the
//! file, the action and the environment.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard};

use redb::backends::FileBackend;
use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
    TableError, WriteTransaction,
};
use serde::Deserialize;

mod audit;
mod op;

use audit::AuditKeys;
use op::{Op, OrFail, encode};

use crate::{
    AuditEntry, AuditFilter, NewAuditEntry, NewRevision, Revision, RevisionMeta, Store, StoreError,
};

/// The database file's name inside the data directory.
const FILE_NAME: &str = "graylane.redb";

/// The layout of the tables below. Bump it, and teach `open` to migrate or refuse, whenever a
/// table or a stored value changes shape.
const SCHEMA_VERSION: u64 = 1;
const SCHEMA_VERSION_KEY: &str = "schema_version";

/// Holds the schema version. Its definition must never change, so that every build can read the
/// version of any file and refuse it cleanly.
const META: TableDefinition<'static, &str, u64> = TableDefinition::new("meta");
/// Every environment that was ever written to. Nothing is ever removed from an environment
/// without writing an audit entry to it, so "has any data" never turns false again and a set
/// kept on write is exact.
const ENVIRONMENTS: TableDefinition<'static, &str, ()> = TableDefinition::new("environments");
/// `(env, n)` → JSON [`RevisionMeta`]. The document lives in its own table so that listing the
/// history does not read every document.
const REVISIONS: TableDefinition<'static, (&str, u64), &[u8]> = TableDefinition::new("revisions");
/// `(env, n)` → the revision's YAML, as UTF-8.
const REVISION_YAML: TableDefinition<'static, (&str, u64), &[u8]> =
    TableDefinition::new("revision_yaml");
/// `(env, service)` → the controller's opaque release state.
const RELEASES: TableDefinition<'static, (&str, &str), &[u8]> = TableDefinition::new("releases");
/// `(env, seq)` → JSON [`AuditEntry`].
const AUDIT: TableDefinition<'static, (&str, u64), &[u8]> = TableDefinition::new("audit");

/// redb's page cache limit. The store is control-plane data read at startup and on admin
/// requests, so it gets a small share of the gateway's memory rather than redb's 1 GiB default.
const CACHE_BYTES: usize = 64 << 20;

/// The embedded [`Store`]: one redb file, `DIR/graylane.redb`, holding every environment.
///
/// It holds an exclusive lock on the file while it is open, so a second `graylane serve` on the
/// same data directory fails with [`StoreError::Locked`] instead of both writing release state.
pub struct RedbStore {
    /// `None` only between dropping a database that failed a write and opening it again.
    db: RwLock<Option<Database>>,
    path: PathBuf,
    /// Set by an I/O error (a full disk): redb refuses every later transaction of that
    /// `Database` (`PreviousIo`), so the next operation opens the file again, and keeps trying
    /// until that works, so the store recovers by itself once space is freed.
    broken: AtomicBool,
    /// Audit entries older than this are pruned; 0 keeps them all.
    max_audit_age_ms: AtomicI64,
    /// Audit entries kept per environment; 0 keeps them all.
    max_audit_entries: AtomicU64,
}

/// An open transaction together with the lock that keeps its database from being reopened
/// under it.
struct Held<'a, T> {
    txn: T,
    _db: RwLockReadGuard<'a, Option<Database>>,
}

impl<T> std::ops::Deref for Held<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.txn
    }
}

impl fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens the store in `dir`, creating the directory and an empty store if there is none.
    ///
    /// Opening checks every page of an existing file against its checksum, so damage is found
    /// here, at startup, rather than as a wrong answer later; a file that fails is reported as
    /// [`StoreError::Corrupt`] and left as it was.
    pub fn open(dir: &Path) -> Result<RedbStore, StoreError> {
        if dir.exists() && !dir.is_dir() {
            return Err(StoreError::Open {
                path: dir.to_path_buf(),
                cause: std::io::Error::new(
                    std::io::ErrorKind::NotADirectory,
                    "it is a file, not a directory",
                ),
            });
        }
        fs::create_dir_all(dir).map_err(|source| StoreError::Open {
            path: dir.to_path_buf(),
            cause: source,
        })?;
        let path = dir.join(FILE_NAME);
        let db = open_database(&path)?;
        RedbStore::with_database(db, path)
    }

    /// A store in memory only, empty and gone when dropped: a real store (the same tables and
    /// transactions as on disk) for the tests of what uses one.
    pub fn in_memory() -> Result<RedbStore, StoreError> {
        let path = PathBuf::from(":memory:");
        let op = Op::new(&path, "creating a database in memory", None);
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| op.open_failed(e.into()))?;
        RedbStore::with_database(db, path)
    }

    /// The store over an opened database (`path` names it in errors), its schema checked or
    /// written.
    fn with_database(db: Database, path: PathBuf) -> Result<RedbStore, StoreError> {
        let store = RedbStore {
            db: RwLock::new(Some(db)),
            path,
            broken: AtomicBool::new(false),
            max_audit_age_ms: AtomicI64::new(0),
            max_audit_entries: AtomicU64::new(0),
        };
        store.check_schema()?;
        Ok(store)
    }

    /// The database, opened again first if an earlier write failed on I/O.
    fn db(&self, op: &Op<'_>) -> Result<RwLockReadGuard<'_, Option<Database>>, StoreError> {
        if self.broken.load(Ordering::Acquire) {
            let mut db = self.db.write().unwrap_or_else(|e| e.into_inner());
            if self.broken.load(Ordering::Acquire) {
                // The old handle holds the file lock: drop it before opening again.
                *db = None;
                *db = Some(open_database(&self.path)?);
                self.broken.store(false, Ordering::Release);
            }
        }
        let db = self.db.read().unwrap_or_else(|e| e.into_inner());
        if db.is_none() {
            return Err(op.fail(redb::Error::PreviousIo));
        }
        Ok(db)
    }

    /// Remembers an I/O failure, so the next operation reopens the database.
    fn note<T>(&self, out: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(StoreError::Io { .. }) = &out {
            self.broken.store(true, Ordering::Release);
        }
        out
    }

    /// Accepts a file at [`SCHEMA_VERSION`], sets up a new one, and refuses anything else.
    fn check_schema(&self) -> Result<(), StoreError> {
        let op = Op::new(&self.path, "reading the schema version", None);
        let txn = self.read(&op)?;
        let found = match txn.open_table(META) {
            Ok(meta) => meta
                .get(SCHEMA_VERSION_KEY)
                .or_fail(&op)?
                .map(|v| v.value()),
            Err(TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(op.fail(e.into())),
        };
        match found {
            Some(SCHEMA_VERSION) => Ok(()),
            Some(found) => Err(StoreError::SchemaVersion {
                path: self.path.clone(),
                found,
                expected: SCHEMA_VERSION,
            }),
            None => {
                let empty = txn.list_tables().or_fail(&op)?.next().is_none()
                    && txn.list_multimap_tables().or_fail(&op)?.next().is_none();
                if !empty {
                    return Err(StoreError::Corrupt {
                        path: self.path.clone(),
                        detail: "it is a redb database, but not a graylane store: it has tables and no schema version".into(),
                    });
                }
                drop(txn);
                self.initialize()
            }
        }
    }

    /// Creates every table with the schema version, so later reads can open tables without
    /// treating a missing one as empty, and so a file always says which layout it has.
    fn initialize(&self) -> Result<(), StoreError> {
        let op = Op::new(&self.path, "creating an empty store", None);
        let Held { txn, _db } = self.begin_write(&op)?;
        txn.open_table(META)
            .or_fail(&op)?
            .insert(SCHEMA_VERSION_KEY, SCHEMA_VERSION)
            .or_fail(&op)?;
        txn.open_table(ENVIRONMENTS).or_fail(&op)?;
        txn.open_table(REVISIONS).or_fail(&op)?;
        txn.open_table(REVISION_YAML).or_fail(&op)?;
        txn.open_table(RELEASES).or_fail(&op)?;
        txn.open_table(AUDIT).or_fail(&op)?;
        txn.commit().or_fail(&op)
    }

    fn begin_write(&self, op: &Op<'_>) -> Result<Held<'_, WriteTransaction>, StoreError> {
        let db = self.note(self.db(op))?;
        let Some(handle) = db.as_ref() else {
            return Err(op.fail(redb::Error::PreviousIo));
        };
        let mut txn = self.note(handle.begin_write().or_fail(op))?;
        // Immediate is redb's default; set anyway, since `kill -9` losing nothing that was
        // acknowledged rests on it.
        txn.set_durability(Durability::Immediate).or_fail(op)?;
        // With one-phase commit, redb cannot tell a commit torn by a crash from a committed
        // one damaged later, and on open rolls both back to the previous commit. Two-phase
        // commit (one more fsync) leaves only the second, which the open then reports as
        // corruption instead of silently dropping an acknowledged write.
        txn.set_two_phase_commit(true);
        Ok(Held { txn, _db: db })
    }

    /// Runs `body` in one write transaction for `env` and commits it durably; an error from
    /// `body` drops the transaction, which aborts it, so nothing of it is written.
    fn write<T>(
        &self,
        op: &Op<'_>,
        env: &str,
        body: impl FnOnce(&WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let held = self.begin_write(op)?;
        let out = (|| {
            held.txn
                .open_table(ENVIRONMENTS)
                .or_fail(op)?
                .insert(env, ())
                .or_fail(op)?;
            body(&held.txn)
        })();
        let out = self.note(out)?;
        let Held { txn, _db } = held;
        self.note(txn.commit().or_fail(op))?;
        Ok(out)
    }

    fn read(&self, op: &Op<'_>) -> Result<Held<'_, ReadTransaction>, StoreError> {
        let db = self.note(self.db(op))?;
        let Some(handle) = db.as_ref() else {
            return Err(op.fail(redb::Error::PreviousIo));
        };
        let txn = self.note(handle.begin_read().or_fail(op))?;
        Ok(Held { txn, _db: db })
    }

    fn read_revision(
        &self,
        op: &Op<'_>,
        txn: &ReadTransaction,
        env: &str,
        n: u64,
    ) -> Result<Option<Revision>, StoreError> {
        let Some(meta) = txn
            .open_table(REVISIONS)
            .or_fail(op)?
            .get((env, n))
            .or_fail(op)?
        else {
            return Ok(None);
        };
        let meta: RevisionMeta =
            self.decode("revisions", || format!("({env:?}, {n})"), meta.value())?;
        let yaml = txn
            .open_table(REVISION_YAML)
            .or_fail(op)?
            .get((env, n))
            .or_fail(op)?
            .ok_or_else(|| StoreError::Corrupt {
                path: self.path.clone(),
                detail: format!("revision {n} of environment {env:?} has no document"),
            })?;
        let yaml = String::from_utf8(yaml.value().to_vec()).map_err(|e| StoreError::Decode {
            path: self.path.clone(),
            table: "revision_yaml",
            key: format!("({env:?}, {n})"),
            detail: e.to_string(),
        })?;
        Ok(Some(meta.with_document(yaml)))
    }

    fn decode<'de, T: Deserialize<'de>>(
        &self,
        table: &'static str,
        key: impl FnOnce() -> String,
        bytes: &'de [u8],
    ) -> Result<T, StoreError> {
        serde_json::from_slice(bytes).map_err(|e| StoreError::Decode {
            path: self.path.clone(),
            table,
            key: key(),
            detail: e.to_string(),
        })
    }
}

impl Store for RedbStore {
    fn set_audit_retention(&self, max_entries: u64, max_age_ms: i64) {
        self.max_audit_entries.store(max_entries, Ordering::Relaxed);
        self.max_audit_age_ms
            .store(max_age_ms.max(0), Ordering::Relaxed);
    }

    fn add_revision(&self, env: &str, new: NewRevision) -> Result<Revision, StoreError> {
        let op = Op::new(&self.path, "adding a revision", Some(env));
        self.write(&op, env, |txn| {
            let mut metas = txn.open_table(REVISIONS).or_fail(&op)?;
            let n = self.next_number(&op, &metas, env, "revision numbers")?;
            let meta = RevisionMeta {
                n,
                at_ms: new.at_ms,
                author: new.author,
                message: new.message,
                source: new.source,
            };
            metas
                .insert((env, n), encode(&op, &meta)?.as_slice())
                .or_fail(&op)?;
            txn.open_table(REVISION_YAML)
                .or_fail(&op)?
                .insert((env, n), new.yaml.as_bytes())
                .or_fail(&op)?;
            Ok(meta.with_document(new.yaml))
        })
    }

    fn revision(&self, env: &str, n: u64) -> Result<Option<Revision>, StoreError> {
        let op = Op::new(&self.path, "reading a revision", Some(env));
        let txn = self.read(&op)?;
        self.read_revision(&op, &txn, env, n)
    }

    fn latest_revision(&self, env: &str) -> Result<Option<Revision>, StoreError> {
        let op = Op::new(&self.path, "reading the latest revision", Some(env));
        let txn = self.read(&op)?;
        let last = txn
            .open_table(REVISIONS)
            .or_fail(&op)?
            .range((env, 0)..=(env, u64::MAX))
            .or_fail(&op)?
            .next_back()
            .transpose()
            .or_fail(&op)?
            .map(|(key, _)| key.value().1);
        match last {
            None => Ok(None),
            Some(n) => self.read_revision(&op, &txn, env, n),
        }
    }

    fn revisions(&self, env: &str) -> Result<Vec<RevisionMeta>, StoreError> {
        let op = Op::new(&self.path, "listing revisions", Some(env));
        let txn = self.read(&op)?;
        let table = txn.open_table(REVISIONS).or_fail(&op)?;
        let mut out = Vec::new();
        for row in table.range((env, 0)..=(env, u64::MAX)).or_fail(&op)?.rev() {
            let (key, value) = row.or_fail(&op)?;
            let n = key.value().1;
            out.push(self.decode("revisions", || format!("({env:?}, {n})"), value.value())?);
        }
        Ok(out)
    }

    fn releases(&self, env: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let op = Op::new(&self.path, "listing releases", Some(env));
        let txn = self.read(&op)?;
        let table = txn.open_table(RELEASES).or_fail(&op)?;
        let mut out = Vec::new();
        // "" sorts before every service name, and the environment's keys end where the first
        // key of another environment starts.
        for row in table.range((env, "")..).or_fail(&op)? {
            let (key, value) = row.or_fail(&op)?;
            let (key_env, service) = key.value();
            if key_env != env {
                break;
            }
            out.push((service.to_string(), value.value().to_vec()));
        }
        Ok(out)
    }

    fn record_release(
        &self,
        env: &str,
        service: &str,
        state: &[u8],
        audit: NewAuditEntry,
    ) -> Result<AuditEntry, StoreError> {
        let op = Op::new(&self.path, "recording a release", Some(env));
        self.write(&op, env, |txn| {
            txn.open_table(RELEASES)
                .or_fail(&op)?
                .insert((env, service), state)
                .or_fail(&op)?;
            self.append_in(&op, txn, env, audit)
        })
    }

    fn delete_release(
        &self,
        env: &str,
        service: &str,
        audit: NewAuditEntry,
    ) -> Result<AuditEntry, StoreError> {
        let op = Op::new(&self.path, "deleting a release", Some(env));
        self.write(&op, env, |txn| {
            txn.open_table(RELEASES)
                .or_fail(&op)?
                .remove((env, service))
                .or_fail(&op)?;
            self.append_in(&op, txn, env, audit)
        })
    }

    fn append_audit(&self, env: &str, entry: NewAuditEntry) -> Result<AuditEntry, StoreError> {
        let op = Op::new(&self.path, "appending to the audit log", Some(env));
        self.write(&op, env, |txn| self.append_in(&op, txn, env, entry))
    }

    fn audit_matching(
        &self,
        env: &str,
        filter: &AuditFilter,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let op = Op::new(&self.path, "reading the audit log", Some(env));
        let mut out = Vec::new();
        // The loop below stops on reaching the limit after a match, which 0 never is.
        if limit == 0 {
            return Ok(out);
        }
        let txn = self.read(&op)?;
        let table = txn.open_table(AUDIT).or_fail(&op)?;
        for row in table.range((env, 0)..=(env, u64::MAX)).or_fail(&op)?.rev() {
            let (key, value) = row.or_fail(&op)?;
            let seq = key.value().1;
            let at = || format!("({env:?}, {seq})");
            let keys: AuditKeys<'_> = self.decode("audit", at, value.value())?;
            if !filter.matches(&keys.target, &keys.actor, &keys.action) {
                continue;
            }
            out.push(self.decode("audit", at, value.value())?);
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }

    fn environments(&self) -> Result<Vec<String>, StoreError> {
        let op = Op::new(&self.path, "listing environments", None);
        let txn = self.read(&op)?;
        let table = txn.open_table(ENVIRONMENTS).or_fail(&op)?;
        let mut out = Vec::new();
        for row in table.iter().or_fail(&op)? {
            let (key, _) = row.or_fail(&op)?;
            out.push(key.value().to_string());
        }
        Ok(out)
    }
}

/// Opens the database file at `path`, checking every page against its checksum.
fn open_database(path: &Path) -> Result<Database, StoreError> {
    // Opened here rather than by redb so that failing to open the file (permissions, a
    // directory in its place) is told apart from failing to read a database out of it.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            cause: source,
        })?;
    let op = Op::new(path, "opening the database", None);
    let backend = FileBackend::new(file).map_err(|e| op.open_failed(e.into()))?;
    // redb trusts a cleanly closed file and may panic on one damaged since; the check turns
    // that damage into an error. It reads the whole file, which is small here.
    Database::builder()
        .set_check_integrity_on_open(true)
        .set_cache_size(CACHE_BYTES)
        .create_with_backend(backend)
        .map_err(|e| op.open_failed(e.into()))
}
