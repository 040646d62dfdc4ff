//! [`EtcdStore`]: the controller's [`Store`] on etcd, shared by every node of a fleet.
//!
//! Every write is one etcd transaction. An audit entry is numbered by comparing the audit
//! counter's modification revision, so concurrent writers on several nodes each get their own
//! number (a writer that lost the race reads the counter again and retries). A release write
//! also compares the release key's modification revision with the version the change was
//! computed from ([`Expect::version`]), and a leader's write compares the leader key's lease
//! with this node's ([`Expect::leader`]): a deposed leader, or a node that missed another's
//! change, writes nothing.
//!
//! This file opens an environment's keys and reads; `write.rs` has the transactions.

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use etcd_client::{Compare, CompareOp, GetOptions, SortOrder, SortTarget, Txn, TxnOp};
use graylane_store::{
    AuditEntry, AuditFilter, Expect, NewAuditEntry, NewRevision, Recorded, Revision, RevisionMeta,
    Store, StoreError, StoredRelease,
};
use serde::{Deserialize, Serialize};

use crate::connect::Etcd;
use crate::keys::{Keys, SCHEMA};

mod write;

use write::ReleaseWrite;

/// How many times a write retries when only the audit counter moved under it.
const RACES: usize = 32;
/// Audit entries read per page when filtering.
const PAGE: i64 = 256;

/// The [`Store`] of a fleet node.
pub struct EtcdStore {
    etcd: Etcd,
    /// The lease this node leads under, 0 while it does not lead: what a leader's write
    /// compares the leader key with. Set by [`crate::Fleet`].
    leading: Arc<AtomicI64>,
    max_audit_age_ms: AtomicI64,
    max_audit_entries: AtomicU64,
    /// Environments whose record was found (or written) to be this environment's.
    checked_envs: Mutex<HashSet<String>>,
}

#[derive(Serialize, Deserialize)]
struct SchemaRecord {
    graylane_schema: u64,
}

#[derive(Serialize, Deserialize)]
struct EnvRecord {
    env: String,
}

impl EtcdStore {
    /// Opens `env`'s keys under the connection's prefix: checks that what is there is
    /// graylane's, of this schema and of this environment (or writes the markers on an empty
    /// prefix). Anything else is refused with [`StoreError::Foreign`] and left untouched. Any
    /// other environment the store is asked about is checked the same way on first use.
    pub fn open(etcd: Etcd, env: &str) -> Result<EtcdStore, StoreError> {
        let keys = Keys::new(etcd.prefix(), env);
        let foreign = |detail: String| StoreError::Foreign {
            endpoints: etcd.endpoints().to_string(),
            detail,
        };
        let schema_key = keys.schema();
        let prefix = format!("{}/", keys.prefix());
        // Service instances may register (`graylane register`) before any node has run: keys
        // under the registry do not make a prefix foreign.
        let registry = keys.registry();
        let (schema, any) = etcd.call("checking the schema", {
            let (schema_key, prefix, registry) =
                (schema_key.clone(), prefix.clone(), registry.clone());
            |mut c| async move {
                let schema = c.get(schema_key, None).await?;
                // Every read at the schema read's revision: one snapshot, so a marker written
                // by a node starting at the same moment is seen by both reads or by neither.
                let at = schema.header().map_or(0, |h| h.revision());
                let first_in = |from: Vec<u8>, to: Vec<u8>| {
                    let mut c = c.clone();
                    async move {
                        let r = c
                            .get(
                                from,
                                Some(
                                    GetOptions::new()
                                        .with_range(to)
                                        .with_keys_only()
                                        .with_limit(1)
                                        .with_revision(at),
                                ),
                            )
                            .await?;
                        Ok::<_, etcd_client::Error>(
                            r.kvs()
                                .first()
                                .map(|kv| String::from_utf8_lossy(kv.key()).into_owned()),
                        )
                    }
                };
                let before = first_in(prefix.clone().into_bytes(), registry.clone().into_bytes());
                let after = first_in(prefix_end(&registry), prefix_end(&prefix));
                Ok((
                    schema.kvs().first().map(|kv| kv.value().to_vec()),
                    before.await?.or(after.await?),
                ))
            }
        })?;
        match schema {
            Some(bytes) => match serde_json::from_slice::<SchemaRecord>(&bytes) {
                Ok(r) if r.graylane_schema == SCHEMA => {}
                Ok(r) => {
                    return Err(foreign(format!(
                        "{schema_key} says schema {}, but this graylane reads schema {SCHEMA}: run a graylane release that reads it, or use another --etcd-prefix",
                        r.graylane_schema
                    )));
                }
                Err(_) => {
                    return Err(foreign(format!(
                        "{schema_key} holds `{}`, not a graylane schema marker: the prefix is used by something else; pass another --etcd-prefix",
                        String::from_utf8_lossy(&bytes)
                    )));
                }
            },
            None => {
                if let Some(key) = any {
                    return Err(foreign(format!(
                        "{prefix} holds keys graylane did not write (such as {key}) and no schema marker; pass another --etcd-prefix"
                    )));
                }
                let marker = serde_json::to_vec(&SchemaRecord {
                    graylane_schema: SCHEMA,
                })
                .unwrap_or_default();
                etcd.call("writing the schema marker", {
                    let schema_key = schema_key.clone();
                    |mut c| async move {
                        c.txn(
                            Txn::new()
                                .when([Compare::create_revision(
                                    schema_key.clone(),
                                    CompareOp::Equal,
                                    0,
                                )])
                                .and_then([TxnOp::put(schema_key, marker, None)]),
                        )
                        .await
                        .map(|_| ())
                    }
                })?;
            }
        }
        let store = EtcdStore {
            etcd,
            leading: Arc::new(AtomicI64::new(0)),
            max_audit_age_ms: AtomicI64::new(0),
            max_audit_entries: AtomicU64::new(0),
            checked_envs: Mutex::new(HashSet::new()),
        };
        store.check_env(env, true)?;
        Ok(store)
    }

    /// Checks that `env`'s keys are graylane's and this environment's, once per store: its
    /// environment record names it, or it has no keys at all. A write (`create`) to an empty
    /// environment first writes the record, so that the keys it leaves are recognised when a
    /// node opens that environment later. Anything else is [`StoreError::Foreign`], and nothing
    /// is written.
    pub(crate) fn check_env(&self, env: &str, create: bool) -> Result<(), StoreError> {
        if self.checked_envs().contains(env) {
            return Ok(());
        }
        let keys = self.keys(env);
        let foreign = |detail: String| StoreError::Foreign {
            endpoints: self.etcd.endpoints().to_string(),
            detail,
        };
        let meta_key = keys.meta();
        let env_prefix = keys.env().to_string();
        // The record is read again after a lost race to create it.
        for _ in 0..2 {
            let (meta, any) = self.etcd.call("checking the environment", {
                let (meta_key, env_prefix) = (meta_key.clone(), env_prefix.clone());
                |mut c| async move {
                    let meta = c.get(meta_key, None).await?;
                    // One snapshot (see the schema check).
                    let at = meta.header().map_or(0, |h| h.revision());
                    let any = c
                        .get(
                            env_prefix,
                            Some(
                                GetOptions::new()
                                    .with_prefix()
                                    .with_keys_only()
                                    .with_limit(1)
                                    .with_revision(at),
                            ),
                        )
                        .await?;
                    Ok((
                        meta.kvs().first().map(|kv| kv.value().to_vec()),
                        any.kvs()
                            .first()
                            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned()),
                    ))
                }
            })?;
            match meta {
                Some(bytes) => {
                    return match serde_json::from_slice::<EnvRecord>(&bytes) {
                        Ok(r) if r.env == env => {
                            self.checked_envs().insert(env.to_string());
                            Ok(())
                        }
                        Ok(r) => Err(foreign(format!(
                            "{meta_key} belongs to environment `{}`, not `{env}`: its keys were copied or written by hand; nothing of it will be used",
                            r.env
                        ))),
                        Err(_) => Err(foreign(format!(
                            "{meta_key} holds `{}`, not graylane's environment record",
                            String::from_utf8_lossy(&bytes)
                        ))),
                    };
                }
                None => {
                    if let Some(key) = any {
                        return Err(foreign(format!(
                            "{env_prefix} holds keys (such as {key}) but no environment record ({meta_key}): they were not written by graylane"
                        )));
                    }
                    if !create {
                        return Ok(());
                    }
                    let record = serde_json::to_vec(&EnvRecord {
                        env: env.to_string(),
                    })
                    .unwrap_or_default();
                    let created = self.etcd.call("writing the environment record", {
                        let meta_key = meta_key.clone();
                        |mut c| async move {
                            c.txn(
                                Txn::new()
                                    .when([Compare::create_revision(
                                        meta_key.clone(),
                                        CompareOp::Equal,
                                        0,
                                    )])
                                    .and_then([TxnOp::put(meta_key, record, None)]),
                            )
                            .await
                            .map(|r| r.succeeded())
                        }
                    })?;
                    if created {
                        self.checked_envs().insert(env.to_string());
                        return Ok(());
                    }
                }
            }
        }
        Err(self.etcd.unavailable(
            "checking the environment",
            format!("{meta_key} kept changing"),
        ))
    }

    fn checked_envs(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.checked_envs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection.
    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    /// Where the fleet sets the lease this node leads under (0: not leading).
    pub fn leading(&self) -> Arc<AtomicI64> {
        Arc::clone(&self.leading)
    }

    fn keys(&self, env: &str) -> Keys {
        Keys::new(self.etcd.prefix(), env)
    }

    fn decode<T: for<'de> Deserialize<'de>>(
        &self,
        key: &str,
        bytes: &[u8],
    ) -> Result<T, StoreError> {
        serde_json::from_slice(bytes).map_err(|e| StoreError::Foreign {
            endpoints: self.etcd.endpoints().to_string(),
            detail: format!("the value at {key} cannot be read ({e}): it was written by an incompatible graylane or by hand"),
        })
    }

    fn revision_at(&self, env: &str, n: u64) -> Result<Option<Revision>, StoreError> {
        let keys = self.keys(env);
        let (meta_key, doc_key) = (keys.revision(n), keys.document(n));
        let got = self.etcd.call("reading a revision", {
            let (meta_key, doc_key) = (meta_key.clone(), doc_key.clone());
            |mut c| async move {
                let meta = c.get(meta_key, None).await?;
                let doc = c.get(doc_key, None).await?;
                Ok((
                    meta.kvs().first().map(|kv| kv.value().to_vec()),
                    doc.kvs().first().map(|kv| kv.value().to_vec()),
                ))
            }
        })?;
        let (Some(meta), Some(doc)) = got else {
            return Ok(None);
        };
        let meta: RevisionMeta = self.decode(&meta_key, &meta)?;
        let yaml = String::from_utf8(doc).map_err(|_| StoreError::Foreign {
            endpoints: self.etcd.endpoints().to_string(),
            detail: format!("{doc_key} is not UTF-8 text"),
        })?;
        Ok(Some(meta.with_document(yaml)))
    }

    /// Every key-value under `prefix`, with modification revisions.
    fn range(
        &self,
        prefix: String,
        context: &str,
    ) -> Result<Vec<(String, Vec<u8>, i64)>, StoreError> {
        self.etcd.call(context, |mut c| async move {
            let r = c.get(prefix, Some(GetOptions::new().with_prefix())).await?;
            Ok(r.kvs()
                .iter()
                .map(|kv| {
                    (
                        String::from_utf8_lossy(kv.key()).into_owned(),
                        kv.value().to_vec(),
                        kv.mod_revision(),
                    )
                })
                .collect())
        })
    }
}

/// The first key after every key that starts with `prefix`.
pub(crate) fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Store for EtcdStore {
    fn add_revision(&self, env: &str, new: NewRevision) -> Result<Revision, StoreError> {
        for _ in 0..RACES {
            if let Some(rev) = self.add_revision_at(env, new.clone(), None)? {
                return Ok(rev);
            }
        }
        Err(self.etcd.unavailable(
            "adding a revision",
            format!("the revision counter kept moving ({RACES} tries)"),
        ))
    }

    fn add_revision_if(
        &self,
        env: &str,
        new: NewRevision,
        latest: u64,
    ) -> Result<Option<Revision>, StoreError> {
        self.add_revision_at(env, new, Some(latest))
    }

    fn revision(&self, env: &str, n: u64) -> Result<Option<Revision>, StoreError> {
        self.check_env(env, false)?;
        self.revision_at(env, n)
    }

    fn latest_revision(&self, env: &str) -> Result<Option<Revision>, StoreError> {
        self.check_env(env, false)?;
        let (n, _) = self.counter(
            &self.keys(env).latest_revision(),
            "reading the newest revision",
        )?;
        if n == 0 {
            return Ok(None);
        }
        self.revision_at(env, n)
    }

    fn revisions(&self, env: &str) -> Result<Vec<RevisionMeta>, StoreError> {
        self.check_env(env, false)?;
        let mut out = Vec::new();
        for (key, value, _) in self.range(self.keys(env).revisions(), "listing revisions")? {
            out.push(self.decode::<RevisionMeta>(&key, &value)?);
        }
        out.reverse();
        Ok(out)
    }

    fn releases(&self, env: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(self
            .release_versions(env)?
            .into_iter()
            .map(|r| (r.service, r.state))
            .collect())
    }

    fn release_versions(&self, env: &str) -> Result<Vec<StoredRelease>, StoreError> {
        self.check_env(env, false)?;
        let prefix = self.keys(env).releases();
        Ok(self
            .range(prefix.clone(), "listing releases")?
            .into_iter()
            .map(|(key, state, rev)| StoredRelease {
                service: key[prefix.len()..].to_string(),
                state,
                version: rev as u64,
            })
            .collect())
    }

    fn record_release(
        &self,
        env: &str,
        service: &str,
        state: &[u8],
        audit: NewAuditEntry,
    ) -> Result<AuditEntry, StoreError> {
        let release = ReleaseWrite {
            service,
            state: Some(state),
            expect: None,
        };
        Ok(self
            .write(env, Some(release), audit, "recording a release")?
            .0)
    }

    fn record_release_if(
        &self,
        env: &str,
        service: &str,
        state: &[u8],
        expect: Expect,
        audit: NewAuditEntry,
    ) -> Result<Recorded, StoreError> {
        let release = ReleaseWrite {
            service,
            state: Some(state),
            expect: Some(expect),
        };
        let (entry, version) = self.write(env, Some(release), audit, "recording a release")?;
        Ok(Recorded { entry, version })
    }

    fn delete_release(
        &self,
        env: &str,
        service: &str,
        audit: NewAuditEntry,
    ) -> Result<AuditEntry, StoreError> {
        let release = ReleaseWrite {
            service,
            state: None,
            expect: None,
        };
        Ok(self
            .write(env, Some(release), audit, "deleting a release")?
            .0)
    }

    fn delete_release_if(
        &self,
        env: &str,
        service: &str,
        expect: Expect,
        audit: NewAuditEntry,
    ) -> Result<AuditEntry, StoreError> {
        let release = ReleaseWrite {
            service,
            state: None,
            expect: Some(expect),
        };
        Ok(self
            .write(env, Some(release), audit, "deleting a release")?
            .0)
    }

    fn append_audit(&self, env: &str, entry: NewAuditEntry) -> Result<AuditEntry, StoreError> {
        Ok(self
            .write(env, None, entry, "appending to the audit log")?
            .0)
    }

    fn audit_matching(
        &self,
        env: &str,
        filter: &AuditFilter,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        self.check_env(env, false)?;
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let start = self.keys(env).audits();
        let mut end = prefix_end(&start);
        loop {
            let page = self.etcd.call("reading the audit log", {
                let (start, end) = (start.clone(), end.clone());
                |mut c| async move {
                    let r = c
                        .get(
                            start,
                            Some(
                                GetOptions::new()
                                    .with_range(end)
                                    .with_sort(SortTarget::Key, SortOrder::Descend)
                                    .with_limit(PAGE),
                            ),
                        )
                        .await?;
                    Ok(r.kvs()
                        .iter()
                        .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
                        .collect::<Vec<_>>())
                }
            })?;
            let full = page.len() as i64 == PAGE;
            for (key, value) in &page {
                let entry: AuditEntry = self.decode(&String::from_utf8_lossy(key), value)?;
                if filter.matches(&entry.target, &entry.actor, &entry.action) {
                    out.push(entry);
                    if out.len() == limit {
                        return Ok(out);
                    }
                }
            }
            match page.last() {
                Some((key, _)) if full => end = key.clone(),
                _ => return Ok(out),
            }
        }
    }

    fn set_audit_retention(&self, max_entries: u64, max_age_ms: i64) {
        self.max_audit_entries.store(max_entries, Ordering::Relaxed);
        self.max_audit_age_ms.store(max_age_ms, Ordering::Relaxed);
    }

    fn environments(&self) -> Result<Vec<String>, StoreError> {
        let prefix = Keys::new(self.etcd.prefix(), "").envs();
        let keys = self.etcd.call("listing environments", {
            let prefix = prefix.clone();
            |mut c| async move {
                let r = c
                    .get(
                        prefix,
                        Some(GetOptions::new().with_prefix().with_keys_only()),
                    )
                    .await?;
                Ok(r.kvs()
                    .iter()
                    .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
                    .collect::<Vec<_>>())
            }
        })?;
        let mut envs: Vec<String> = keys
            .iter()
            .filter_map(|k| k[prefix.len()..].split('/').next().map(str::to_string))
            .collect();
        envs.sort();
        envs.dedup();
        Ok(envs)
    }
}
