//! The audit log's table: numbering new entries, and pruning the oldest past the retention
//! (by count and by age) in small batches.

use std::borrow::Cow;
use std::sync::atomic::Ordering;

use redb::{ReadableTable, WriteTransaction};
use serde::Deserialize;

use super::{AUDIT, Op, OrFail, RedbStore, encode};
use crate::{AuditEntry, NewAuditEntry, StoreError};

/// Pruning work done by one append at most, so that lowering the retention on a long log
/// costs several writes a little each rather than one write a lot.
const PRUNE_BATCH: usize = 64;

/// The fields of a stored [`AuditEntry`] that an [`AuditFilter`] compares, borrowed from the
/// value without building the rest: a filter may pass over thousands of analysis verdicts, whose
/// `detail` is the bulk of each entry, before it finds a match.
#[derive(Deserialize)]
pub(super) struct AuditKeys<'a> {
    #[serde(borrow)]
    pub(super) target: Cow<'a, str>,
    #[serde(borrow)]
    pub(super) actor: Cow<'a, str>,
    #[serde(borrow)]
    pub(super) action: Cow<'a, str>,
}

/// The time of a stored audit entry, read without the rest of it.
#[derive(Deserialize)]
struct AtMs {
    at_ms: i64,
}

impl RedbStore {
    /// Appends `entry` to `env`'s audit log inside `txn`, numbered one past the newest entry.
    pub(super) fn append_in(
        &self,
        op: &Op<'_>,
        txn: &WriteTransaction,
        env: &str,
        entry: NewAuditEntry,
    ) -> Result<AuditEntry, StoreError> {
        let mut audit = txn.open_table(AUDIT).or_fail(op)?;
        let seq = self.next_number(op, &audit, env, "audit sequence numbers")?;
        let entry = AuditEntry {
            seq,
            at_ms: entry.at_ms,
            actor: entry.actor,
            action: entry.action,
            target: entry.target,
            reason: entry.reason,
            detail: entry.detail,
        };
        audit
            .insert((env, seq), encode(op, &entry)?.as_slice())
            .or_fail(op)?;
        self.prune_audit(op, &mut audit, env, seq, entry.at_ms)?;
        Ok(entry)
    }

    /// Removes up to [`PRUNE_BATCH`] of `env`'s oldest audit entries that the retention no
    /// longer keeps, now that `newest_seq` (written at `newest_ms`) was appended.
    pub(super) fn prune_audit(
        &self,
        op: &Op<'_>,
        audit: &mut redb::Table<'_, (&'static str, u64), &'static [u8]>,
        env: &str,
        newest_seq: u64,
        newest_ms: i64,
    ) -> Result<(), StoreError> {
        let max_entries = self.max_audit_entries.load(Ordering::Relaxed);
        let max_age_ms = self.max_audit_age_ms.load(Ordering::Relaxed);
        if max_entries == 0 && max_age_ms == 0 {
            return Ok(());
        }
        let keep_from = if max_entries > 0 {
            newest_seq.saturating_sub(max_entries - 1)
        } else {
            0
        };
        let cutoff_ms = (max_age_ms > 0).then(|| newest_ms.saturating_sub(max_age_ms));
        let mut doomed = Vec::new();
        for row in audit.range((env, 0)..(env, newest_seq)).or_fail(op)? {
            if doomed.len() == PRUNE_BATCH {
                break;
            }
            let (key, value) = row.or_fail(op)?;
            let seq = key.value().1;
            let too_many = seq < keep_from;
            let too_old = match cutoff_ms {
                Some(cutoff) => {
                    let at: AtMs =
                        self.decode("audit", || format!("({env:?}, {seq})"), value.value())?;
                    at.at_ms < cutoff
                }
                None => false,
            };
            if !(too_many || too_old) {
                break;
            }
            doomed.push(seq);
        }
        for seq in doomed {
            audit.remove((env, seq)).or_fail(op)?;
        }
        Ok(())
    }

    /// One past the largest number `env` has in `table` (1 for none): per-environment numbering
    /// that needs no counter of its own, since the last key is one step from the range's end.
    pub(super) fn next_number(
        &self,
        op: &Op<'_>,
        table: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
        env: &str,
        what: &str,
    ) -> Result<u64, StoreError> {
        let last = table
            .range((env, 0)..=(env, u64::MAX))
            .or_fail(op)?
            .next_back()
            .transpose()
            .or_fail(op)?;
        match last {
            None => Ok(1),
            Some((key, _)) => key
                .value()
                .1
                .checked_add(1)
                .ok_or_else(|| StoreError::Corrupt {
                    path: self.path.clone(),
                    detail: format!("the {what} of environment {env:?} are exhausted"),
                }),
        }
    }
}
