//! The embedded store behind `graylane serve --data-dir DIR`: configuration revisions, release
//! state and the audit log, kept per environment (`--env NAME`) in one database file,
//! `DIR/graylane.redb`.
//!
//! The controller talks to the [`Store`] trait only, so a shared backend (etcd, later) can take
//! the place of the embedded one. [`RedbStore`] is the embedded backend, on [redb]:
//!
//! - **Durability.** Every method that writes is one redb write transaction, committed with
//!   immediate durability (and two-phase commit) before it returns. A `kill -9` or power loss at
//!   any moment loses nothing a call returned `Ok` for; a write that was cut short is absent as a
//!   whole. That is why [`Store::record_release`] takes the audit entry with it: the release
//!   state and the record of who changed it are committed together or not at all.
//! - **Environments.** Every key starts with the environment's name, so environments share the
//!   file but never each other's data, and reading one environment is a range scan over its keys
//!   alone. Revision numbers and audit sequence numbers count from 1 in each environment.
//! - **Refusing damaged files.** A file that is not a redb database, fails redb's checksums, or
//!   carries a schema version this build does not know is reported as a [`StoreError`] and left
//!   exactly as it was: the store never resets or recreates it, since that would silently throw
//!   away the history an operator may still recover from a backup.
//!
//! Values are JSON (the data types here are `serde` types); release state is opaque bytes that
//! the controller encodes.
//!
//! ```
//! use graylane_store::{NewAuditEntry, NewRevision, RedbStore, RevisionSource, Store};
//!
//! let dir = tempfile::tempdir()?;
//! let store = RedbStore::open(dir.path())?;
//! let rev = store.add_revision(
//!     "prod",
//!     NewRevision {
//!         at_ms: 1_700_000_000_000,
//!         author: "alice".into(),
//!         message: "first config".into(),
//!         source: RevisionSource::File,
//!         yaml: "services: []\n".into(),
//!     },
//! )?;
//! assert_eq!(rev.n, 1);
//!
//! let audit = NewAuditEntry {
//!     at_ms: 1_700_000_001_000,
//!     actor: "alice".into(),
//!     action: "release.promote".into(),
//!     target: "checkout".into(),
//!     reason: "canary is healthy".into(),
//!     detail: serde_json::json!({ "weight": 25 }),
//! };
//! let entry = store.record_release("prod", "checkout", b"{\"step\":2}", audit)?;
//! assert_eq!(entry.seq, 1);
//! assert_eq!(store.releases("prod")?, vec![("checkout".to_string(), b"{\"step\":2}".to_vec())]);
//! assert!(store.releases("staging")?.is_empty());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#[cfg(feature = "testing")]
pub mod conformance;
mod error;
mod redb_store;

pub use error::StoreError;
pub use redb_store::RedbStore;

use serde::{Deserialize, Serialize};

/// What the controller needs from storage: the embedded redb store on one node, etcd in a fleet
/// (`graylane-etcd`), without the controller changing.
///
/// Every method that writes commits durably before it returns `Ok`, and writes either all of
/// its changes or none of them.
///
/// **Conditional writes.** In a fleet several nodes write the same release, so a change is
/// computed from a version of its state and saved only if that version is still the stored one
/// ([`Store::record_release_if`], [`Expect`]); the leader's own changes (timed steps, analysis
/// verdicts) are saved only while it still leads. A store with a single writer, as the embedded
/// one is (its file lock admits one process, and the controller writes under its own lock), has
/// nothing to compare: its default methods write unconditionally and report version 0.
pub trait Store: Send + Sync {
    /// Saves a new configuration revision for `env`, numbered one past the newest one (the
    /// first is 1), so that revision numbers are a gap-free history operators can name.
    fn add_revision(&self, env: &str, new: NewRevision) -> Result<Revision, StoreError>;

    /// [`Store::add_revision`], only while the newest revision of `env` is still `latest` (0:
    /// there is none); `None`, and nothing written, if another was added first. Two fleet nodes
    /// starting with the same file at once record it once. A store with a single writer has
    /// nothing to race with.
    fn add_revision_if(
        &self,
        env: &str,
        new: NewRevision,
        latest: u64,
    ) -> Result<Option<Revision>, StoreError> {
        let _ = latest;
        self.add_revision(env, new).map(Some)
    }

    /// Revision `n` of `env`, for showing or reverting to it; `None` if there is no such one.
    fn revision(&self, env: &str, n: u64) -> Result<Option<Revision>, StoreError>;

    /// The newest revision of `env`, which is the configuration to serve at startup.
    fn latest_revision(&self, env: &str) -> Result<Option<Revision>, StoreError>;

    /// Every revision of `env`, newest first, without the YAML: what a history listing needs,
    /// without reading every document.
    fn revisions(&self, env: &str) -> Result<Vec<RevisionMeta>, StoreError>;

    /// The saved state of every release in `env`, as `(service, state)` sorted by service, for
    /// resuming releases after a restart. The state bytes are the controller's own encoding.
    fn releases(&self, env: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Saves a release's state and its audit entry in ONE transaction (both or neither), so the
    /// audit log never misses a change and never records one that did not happen.
    fn record_release(
        &self,
        env: &str,
        service: &str,
        state: &[u8],
        audit: NewAuditEntry,
    ) -> Result<AuditEntry, StoreError>;

    /// Removes a release's state and records the audit entry in the same transaction. Removing
    /// a service that has no state still records the entry, so a retried delete is harmless.
    fn delete_release(
        &self,
        env: &str,
        service: &str,
        audit: NewAuditEntry,
    ) -> Result<AuditEntry, StoreError>;

    /// Every release of `env` with the version of its state that a conditional write names.
    fn release_versions(&self, env: &str) -> Result<Vec<StoredRelease>, StoreError> {
        Ok(self
            .releases(env)?
            .into_iter()
            .map(|(service, state)| StoredRelease {
                service,
                state,
                version: 0,
            })
            .collect())
    }

    /// [`Store::record_release`], only if `expect` still holds; returns the entry and the new
    /// version of the state. Otherwise [`StoreError::Conflict`] (another node changed the
    /// release) or [`StoreError::NotLeader`], and nothing is written.
    fn record_release_if(
        &self,
        env: &str,
        service: &str,
        state: &[u8],
        expect: Expect,
        audit: NewAuditEntry,
    ) -> Result<Recorded, StoreError> {
        let _ = expect;
        let entry = self.record_release(env, service, state, audit)?;
        Ok(Recorded { entry, version: 0 })
    }

    /// [`Store::delete_release`], only if `expect` still holds (as [`Store::record_release_if`]).
    fn delete_release_if(
        &self,
        env: &str,
        service: &str,
        expect: Expect,
        audit: NewAuditEntry,
    ) -> Result<AuditEntry, StoreError> {
        let _ = expect;
        self.delete_release(env, service, audit)
    }

    /// Appends an audit entry that goes with no state change (a login, a refused command, a
    /// configuration reload), numbered one past the newest entry of `env`.
    fn append_audit(&self, env: &str, entry: NewAuditEntry) -> Result<AuditEntry, StoreError>;

    /// The newest `limit` audit entries of `env`, newest first, so a page of recent activity
    /// costs `limit` reads however long the log is.
    fn audit(&self, env: &str, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.audit_matching(env, &AuditFilter::default(), limit)
    }

    /// The newest `limit` audit entries of `env` that match `filter`, newest first. The log is
    /// read newest first and only until `limit` entries matched, so finding a person's recent
    /// change costs reads back to it, not the whole log, even when the analysis writes an entry
    /// every second. A filter that matches fewer than `limit` entries reads the whole log of
    /// `env`: there is no index by actor, target or action.
    fn audit_matching(
        &self,
        env: &str,
        filter: &AuditFilter,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError>;

    /// Sets how much of each environment's audit log is kept: at most `max_entries` entries
    /// (0: no limit) no older than `max_age_ms` (0: no limit) before the newest one. Entries
    /// beyond it are removed as new ones are appended (a bounded number per append, so lowering
    /// the limit on a long log prunes it over several appends).
    fn set_audit_retention(&self, max_entries: u64, max_age_ms: i64);
    /// The environments that have any data, sorted, so an operator can see what a data
    /// directory holds before picking `--env`.
    fn environments(&self) -> Result<Vec<String>, StoreError>;
}

/// A release's saved state, with its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRelease {
    /// The service the release is of.
    pub service: String,
    /// The controller's encoding of the release.
    pub state: Vec<u8>,
    /// Changes whenever the state is written (etcd's modification revision of the key); 0 from
    /// a store with a single writer.
    pub version: u64,
}

/// What must still hold for a conditional release write to go ahead.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expect {
    /// The version of the state the change was computed from; 0: the release must have no
    /// stored state yet.
    pub version: u64,
    /// The change is the leader's own (a timed step, an analysis verdict): refused once this
    /// node no longer leads, so a deposed leader can never move a release.
    pub leader: bool,
}

/// A conditional write's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    /// The audit entry written with the state.
    pub entry: AuditEntry,
    /// The state's new version, for the next conditional write.
    pub version: u64,
}

/// A configuration revision to save; the store assigns its number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewRevision {
    /// When it was made, in Unix milliseconds (the caller's clock, so tests can fix it).
    pub at_ms: i64,
    /// Who made it.
    pub author: String,
    /// Why, as the author put it.
    pub message: String,
    /// Where it came from.
    pub source: RevisionSource,
    /// The whole configuration document, as written, so a revert restores it exactly.
    pub yaml: String,
}

/// Where a revision came from, so a history shows whether it was a file reload, an API edit or
/// a revert (and of which revision).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RevisionSource {
    /// Loaded from the configuration file.
    File,
    /// Submitted through the admin API.
    Api,
    /// A copy of an earlier revision, made to undo what came after it.
    Revert {
        /// The revision that was restored.
        from: u64,
    },
}

impl RevisionSource {
    /// The source's name as shown in listings and the API: `"file"`, `"api"` or `"revert"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            RevisionSource::File => "file",
            RevisionSource::Api => "api",
            RevisionSource::Revert { .. } => "revert",
        }
    }
}

/// A saved configuration revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Revision {
    /// Its number in its environment: 1 for the first, then one more for each.
    pub n: u64,
    /// When it was made, in Unix milliseconds.
    pub at_ms: i64,
    /// Who made it.
    pub author: String,
    /// Why, as the author put it.
    pub message: String,
    /// Where it came from.
    pub source: RevisionSource,
    /// The whole configuration document.
    pub yaml: String,
}

/// A revision without its document, for listings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevisionMeta {
    /// Its number in its environment.
    pub n: u64,
    /// When it was made, in Unix milliseconds.
    pub at_ms: i64,
    /// Who made it.
    pub author: String,
    /// Why, as the author put it.
    pub message: String,
    /// Where it came from.
    pub source: RevisionSource,
}

impl RevisionMeta {
    /// The whole revision: this record with its document, as a backend that keeps the two
    /// apart reads it back.
    pub fn with_document(self, yaml: String) -> Revision {
        Revision {
            n: self.n,
            at_ms: self.at_ms,
            author: self.author,
            message: self.message,
            source: self.source,
            yaml,
        }
    }
}

/// An audit entry to append; the store assigns its sequence number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewAuditEntry {
    /// When it happened, in Unix milliseconds.
    pub at_ms: i64,
    /// Who did it (a user, a token's name, or the controller itself).
    pub actor: String,
    /// What was done, e.g. `release.promote`.
    pub action: String,
    /// What it was done to, e.g. a service name.
    pub target: String,
    /// Why, as the actor put it.
    pub reason: String,
    /// Anything else worth keeping, as the action defines it.
    pub detail: serde_json::Value,
}

/// Which audit entries to return: each field that is set must equal the entry's field exactly;
/// the default matches every entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// What it was done to, e.g. a service name.
    pub target: Option<String>,
    /// Who did it.
    pub actor: Option<String>,
    /// What was done, e.g. `release.promote`.
    pub action: Option<String>,
}

impl AuditFilter {
    /// Whether an entry with these fields is one this filter asks for. The fields rather than an
    /// [`AuditEntry`], so that a backend can decide before decoding a whole entry.
    pub fn matches(&self, target: &str, actor: &str, action: &str) -> bool {
        let wanted = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        wanted(&self.target, target) && wanted(&self.actor, actor) && wanted(&self.action, action)
    }
}

/// A saved audit entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Its position in its environment's log: 1 for the first, then one more for each.
    pub seq: u64,
    /// When it happened, in Unix milliseconds.
    pub at_ms: i64,
    /// Who did it.
    pub actor: String,
    /// What was done.
    pub action: String,
    /// What it was done to.
    pub target: String,
    /// Why, as the actor put it.
    pub reason: String,
    /// Anything else worth keeping, as the action defines it.
    pub detail: serde_json::Value,
}
