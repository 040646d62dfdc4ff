//! The store's writes: every change is one etcd transaction that numbers its audit entry by
//! comparing the audit counter, and (for a release) compares the version it was computed from
//! and the leader's lease. A writer that lost only the counter race reads it again and retries;
//! anything else is a conflict the caller decides again.

use std::sync::atomic::Ordering;

use etcd_client::{Compare, CompareOp, DeleteOptions, GetOptions, Txn, TxnOp};
use graylane_store::{
    AuditEntry, Expect, NewAuditEntry, NewRevision, Revision, RevisionMeta, StoreError,
};

use super::{EtcdStore, PAGE, RACES};
use crate::keys::Keys;

/// A write's release part.
pub(super) struct ReleaseWrite<'a> {
    pub(super) service: &'a str,
    /// `None`: delete it.
    pub(super) state: Option<&'a [u8]>,
    /// `None`: unconditional.
    pub(super) expect: Option<Expect>,
}

impl EtcdStore {
    /// Reads a decimal counter: its value and modification revision (0, 0 when absent).
    pub(super) fn counter(&self, key: &str, context: &str) -> Result<(u64, i64), StoreError> {
        let key = key.to_string();
        let got = self.etcd.call(context, |mut c| async move {
            let r = c.get(key, None).await?;
            Ok(r.kvs()
                .first()
                .map(|kv| (kv.value().to_vec(), kv.mod_revision())))
        })?;
        match got {
            None => Ok((0, 0)),
            Some((bytes, rev)) => {
                let n = std::str::from_utf8(&bytes)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| StoreError::Foreign {
                        endpoints: self.etcd.endpoints().to_string(),
                        detail: format!("the counter at {context} is not a number"),
                    })?;
                Ok((n, rev))
            }
        }
    }

    /// Appends `audit` with the release change `release`, in one transaction, retrying while
    /// only the audit counter moved. Returns the entry and the revision the write made.
    pub(super) fn write(
        &self,
        env: &str,
        release: Option<ReleaseWrite<'_>>,
        audit: NewAuditEntry,
        context: &str,
    ) -> Result<(AuditEntry, u64), StoreError> {
        self.check_env(env, true)?;
        let keys = self.keys(env);
        for _ in 0..RACES {
            let (seq, seq_rev) = self.counter(&keys.audit_seq(), context)?;
            let entry = AuditEntry {
                seq: seq + 1,
                at_ms: audit.at_ms,
                actor: audit.actor.clone(),
                action: audit.action.clone(),
                target: audit.target.clone(),
                reason: audit.reason.clone(),
                detail: audit.detail.clone(),
            };
            let mut when = vec![Compare::mod_revision(
                keys.audit_seq(),
                CompareOp::Equal,
                seq_rev,
            )];
            let mut then = vec![
                TxnOp::put(keys.audit_seq(), entry.seq.to_string(), None),
                TxnOp::put(
                    keys.audit(entry.seq),
                    serde_json::to_vec(&entry).unwrap_or_default(),
                    None,
                ),
            ];
            let mut lease = 0;
            if let Some(r) = &release {
                let key = keys.release(r.service);
                if let Some(expect) = r.expect {
                    when.push(Compare::mod_revision(
                        key.clone(),
                        CompareOp::Equal,
                        expect.version as i64,
                    ));
                    if expect.leader {
                        lease = self.leading.load(Ordering::Acquire);
                        if lease == 0 {
                            return Err(StoreError::NotLeader);
                        }
                        when.push(Compare::lease(keys.leader(), CompareOp::Equal, lease));
                    }
                }
                then.push(match r.state {
                    Some(state) => TxnOp::put(key, state.to_vec(), None),
                    None => TxnOp::delete(key, None),
                });
            }
            let release_key = release.as_ref().map(|r| keys.release(r.service));
            let leader_key = keys.leader();
            let outcome = self.etcd.call(context, move |mut c| async move {
                let mut otherwise = vec![TxnOp::get(leader_key, None)];
                if let Some(k) = release_key {
                    otherwise.push(TxnOp::get(k, None));
                }
                let r = c
                    .txn(Txn::new().when(when).and_then(then).or_else(otherwise))
                    .await?;
                let revision = r.header().map_or(0, |h| h.revision());
                let mut leader_lease = 0;
                let mut release_rev = 0;
                for (i, op) in r.op_responses().into_iter().enumerate() {
                    if let etcd_client::TxnOpResponse::Get(g) = op {
                        let kv = g.kvs().first();
                        if i == 0 {
                            leader_lease = kv.map_or(0, |kv| kv.lease());
                        } else {
                            release_rev = kv.map_or(0, |kv| kv.mod_revision());
                        }
                    }
                }
                Ok((r.succeeded(), revision, leader_lease, release_rev))
            })?;
            match outcome {
                (true, revision, _, _) => {
                    self.prune(&keys, &entry);
                    return Ok((entry, revision as u64));
                }
                (false, _, leader_lease, release_rev) => {
                    if let Some(r) = &release
                        && let Some(expect) = r.expect
                    {
                        if expect.leader && leader_lease != lease {
                            return Err(StoreError::NotLeader);
                        }
                        if release_rev as u64 != expect.version {
                            return Err(StoreError::Conflict {
                                service: r.service.to_string(),
                            });
                        }
                    }
                }
            }
        }
        Err(self.etcd.unavailable(
            context,
            format!("the audit counter kept moving ({RACES} tries)"),
        ))
    }

    /// Removes the audit entries the retention no longer keeps now that `newest` was appended,
    /// best effort: a failure leaves them for the next append. Old entries by age are removed
    /// [`PAGE`] at most per append, so lowering the retention on a long log prunes it over
    /// several appends.
    pub(super) fn prune(&self, keys: &Keys, newest: &AuditEntry) {
        let max_entries = self.max_audit_entries.load(Ordering::Relaxed);
        if max_entries > 0 && newest.seq > max_entries {
            let (from, to) = (keys.audit(0), keys.audit(newest.seq - max_entries + 1));
            let _ = self.etcd.call("pruning the audit log", |mut c| async move {
                c.delete(from, Some(DeleteOptions::new().with_range(to)))
                    .await
                    .map(|_| ())
            });
        }
        let max_age = self.max_audit_age_ms.load(Ordering::Relaxed);
        if max_age <= 0 {
            return;
        }
        let cutoff = newest.at_ms.saturating_sub(max_age);
        let (from, end) = (keys.audit(0), keys.audit(newest.seq));
        let oldest = self.etcd.call("pruning the audit log", |mut c| async move {
            let r = c
                .get(
                    from,
                    Some(GetOptions::new().with_range(end).with_limit(PAGE)),
                )
                .await?;
            Ok(r.kvs()
                .iter()
                .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
                .collect::<Vec<_>>())
        });
        let Ok(oldest) = oldest else { return };
        // The log is in time order but for clocks of different nodes: the first entry young
        // enough ends the pruning.
        let expired = oldest
            .iter()
            .take_while(|(_, value)| {
                serde_json::from_slice::<AuditEntry>(value).is_ok_and(|e| e.at_ms < cutoff)
            })
            .last();
        if let Some((last, _)) = expired {
            let (from, mut to) = (keys.audit(0).into_bytes(), last.clone());
            to.push(0);
            let _ = self.etcd.call("pruning the audit log", |mut c| async move {
                c.delete(from, Some(DeleteOptions::new().with_range(to)))
                    .await
                    .map(|_| ())
            });
        }
    }

    /// Adds `new` as the revision after the newest, if the newest is `expected` (any, for
    /// `None`) and did not change meanwhile; `None` if it did (nothing written).
    pub(super) fn add_revision_at(
        &self,
        env: &str,
        new: NewRevision,
        expected: Option<u64>,
    ) -> Result<Option<Revision>, StoreError> {
        self.check_env(env, true)?;
        let keys = self.keys(env);
        let (latest, latest_rev) = self.counter(&keys.latest_revision(), "adding a revision")?;
        if expected.is_some_and(|e| e != latest) {
            return Ok(None);
        }
        let n = latest + 1;
        let meta = RevisionMeta {
            n,
            at_ms: new.at_ms,
            author: new.author.clone(),
            message: new.message.clone(),
            source: new.source.clone(),
        };
        let txn = Txn::new()
            .when([Compare::mod_revision(
                keys.latest_revision(),
                CompareOp::Equal,
                latest_rev,
            )])
            .and_then([
                TxnOp::put(
                    keys.revision(n),
                    serde_json::to_vec(&meta).unwrap_or_default(),
                    None,
                ),
                TxnOp::put(keys.document(n), new.yaml.clone(), None),
                TxnOp::put(keys.latest_revision(), n.to_string(), None),
            ]);
        let ok = self.etcd.call("adding a revision", |mut c| async move {
            c.txn(txn).await.map(|r| r.succeeded())
        })?;
        if !ok {
            return Ok(None);
        }
        Ok(Some(Revision {
            n,
            at_ms: new.at_ms,
            author: new.author,
            message: new.message,
            source: new.source,
            yaml: new.yaml,
        }))
    }
}
