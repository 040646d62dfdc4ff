//! `graylane fleet import`: copies what a single node kept (its revisions, release states and
//! audit log) into an empty environment in etcd, keeping every number, so that a fleet started
//! on it resumes each release where the single node left it and the history reads the same.
//!
//! The ordinary [`Store`](graylane_store::Store) writes number what they write; an import must
//! keep the numbers it is given, so it writes the keys of [`crate::keys`] directly, in
//! transactions of at most [`MAX_OPS`] operations and about [`MAX_BYTES`] bytes (etcd's default
//! limits are 128 operations and 1.5 MiB a request). Each transaction requires the environment's
//! counters (`revision`, `audit-seq`) to be absent, and the last one writes them: a node sees a
//! revision only once every document is there, and a writer that slipped in during the import
//! makes the rest of it fail instead of mixing two histories silently.

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use graylane_store::{AuditEntry, Revision, RevisionMeta, StoreError};

use crate::connect::Etcd;
use crate::keys::Keys;
use crate::store::EtcdStore;

/// Operations per transaction, below etcd's default `--max-txn-ops` (128).
pub const MAX_OPS: usize = 120;
/// Value bytes per transaction, below etcd's default `--max-request-bytes` (1.5 MiB); a single
/// larger value goes in a transaction of its own.
pub const MAX_BYTES: usize = 1 << 20;

/// One environment's data, as a single node's store holds it.
#[derive(Debug, Clone, Default)]
pub struct EnvData {
    /// The environment's name (`--env`).
    pub env: String,
    /// Every revision, with its document, in any order.
    pub revisions: Vec<Revision>,
    /// Every release's state (the controller's encoding), by service.
    pub releases: Vec<(String, Vec<u8>)>,
    /// The audit log, in any order.
    pub audit: Vec<AuditEntry>,
}

/// What was written for one environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// The environment.
    pub env: String,
    /// Revisions copied.
    pub revisions: usize,
    /// Release states copied.
    pub releases: usize,
    /// Audit entries copied.
    pub audit: usize,
    /// Whether the cookie keys were copied (`false`: none given, or etcd had some already,
    /// which are kept since fleet nodes may be signing with them).
    pub cookie_keys: bool,
}

/// Why an import did not happen, or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// etcd did not answer, or holds data of another schema or environment.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The environment already has data in etcd; nothing was written.
    #[error(
        "refusing to import into etcd at {endpoints}: environment `{env}` already holds revisions, releases or audit entries (such as {key}); `fleet import` fills only an empty environment, so nothing was written: import into another --env or --etcd-prefix, or delete {prefix} first"
    )]
    NotEmpty {
        /// The etcd endpoints.
        endpoints: String,
        /// The environment.
        env: String,
        /// One key found there.
        key: String,
        /// The environment's key prefix.
        prefix: String,
    },
    /// Another writer changed the environment while it was being imported.
    #[error(
        "the import into environment `{env}` was interrupted: something else wrote to {prefix} while it ran (a fleet node with --config, or another import), and {written} of its transactions were already written; stop every node of that environment, delete {prefix} and import again"
    )]
    Interrupted {
        /// The environment.
        env: String,
        /// The environment's key prefix.
        prefix: String,
        /// Transactions of this environment written before the one refused.
        written: usize,
    },
}

/// Copies every environment of `envs` into etcd under `etcd`'s prefix, keeping revision and
/// audit numbers, and `cookie_keys` (the single node's key file) for each environment that has
/// none yet. Refuses ([`ImportError::NotEmpty`]) before writing anything if any of them already
/// has a revision, release or audit entry in etcd; checks the prefix's schema and each
/// environment's record as a node does ([`EtcdStore::open`]).
pub fn import(
    etcd: &Etcd,
    envs: &[EnvData],
    cookie_keys: Option<&str>,
) -> Result<Vec<Imported>, ImportError> {
    let Some(first) = envs.first() else {
        return Ok(Vec::new());
    };
    for data in envs {
        if let Some(key) = first_data_key(etcd, &data.env)? {
            let keys = Keys::new(etcd.prefix(), &data.env);
            return Err(ImportError::NotEmpty {
                endpoints: etcd.endpoints().to_string(),
                env: data.env.clone(),
                key,
                prefix: keys.env().to_string(),
            });
        }
    }
    let store = EtcdStore::open(etcd.clone(), &first.env)?;
    for data in envs {
        store.check_env(&data.env, true)?;
    }
    envs.iter()
        .map(|data| import_env(etcd, data, cookie_keys))
        .collect()
}

/// A key of `env` that holds a revision, a release or audit, if there is one.
fn first_data_key(etcd: &Etcd, env: &str) -> Result<Option<String>, StoreError> {
    let keys = Keys::new(etcd.prefix(), env);
    let ranges = [
        keys.latest_revision(),
        keys.revisions(),
        keys.documents(),
        keys.releases(),
        keys.audit_seq(),
        keys.audits(),
    ];
    etcd.call(
        "checking that the environment is empty",
        |mut c| async move {
            for key in ranges {
                // The counters are single keys; the rest end in `/` and are prefixes.
                let options = GetOptions::new().with_keys_only().with_limit(1);
                let options = if key.ends_with('/') {
                    options.with_prefix()
                } else {
                    options
                };
                let r = c.get(key, Some(options)).await?;
                if let Some(kv) = r.kvs().first() {
                    return Ok(Some(String::from_utf8_lossy(kv.key()).into_owned()));
                }
            }
            Ok(None)
        },
    )
}

fn import_env(
    etcd: &Etcd,
    data: &EnvData,
    cookie_keys: Option<&str>,
) -> Result<Imported, ImportError> {
    let keys = Keys::new(etcd.prefix(), &data.env);
    let mut puts: Vec<(String, Vec<u8>)> = Vec::new();
    let mut audit: Vec<&AuditEntry> = data.audit.iter().collect();
    audit.sort_by_key(|e| e.seq);
    for entry in &audit {
        puts.push((keys.audit(entry.seq), to_json(entry)));
    }
    let mut revisions: Vec<&Revision> = data.revisions.iter().collect();
    revisions.sort_by_key(|r| r.n);
    for r in &revisions {
        let meta = RevisionMeta {
            n: r.n,
            at_ms: r.at_ms,
            author: r.author.clone(),
            message: r.message.clone(),
            source: r.source.clone(),
        };
        puts.push((keys.document(r.n), r.yaml.clone().into_bytes()));
        puts.push((keys.revision(r.n), to_json(&meta)));
    }
    for (service, state) in &data.releases {
        puts.push((keys.release(service), state.clone()));
    }
    // The counters last: until they are there, a node sees no revision and numbers no entry.
    if let Some(last) = audit.last() {
        puts.push((keys.audit_seq(), last.seq.to_string().into_bytes()));
    }
    if let Some(last) = revisions.last() {
        puts.push((keys.latest_revision(), last.n.to_string().into_bytes()));
    }
    let batches = batches(puts);
    for (written, batch) in batches.into_iter().enumerate() {
        let guard = [
            Compare::create_revision(keys.latest_revision(), CompareOp::Equal, 0),
            Compare::create_revision(keys.audit_seq(), CompareOp::Equal, 0),
        ];
        let ops: Vec<TxnOp> = batch
            .into_iter()
            .map(|(key, value)| TxnOp::put(key, value, None))
            .collect();
        let txn = Txn::new().when(guard).and_then(ops);
        let ok = etcd.call("importing", |mut c| async move {
            c.txn(txn).await.map(|r| r.succeeded())
        })?;
        if !ok {
            return Err(ImportError::Interrupted {
                env: data.env.clone(),
                prefix: keys.env().to_string(),
                written,
            });
        }
    }
    let cookie_keys = match cookie_keys {
        Some(text) => {
            let key = keys.cookie_keys();
            let text = text.to_string();
            etcd.call("importing the cookie keys", |mut c| async move {
                c.txn(
                    Txn::new()
                        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                        .and_then([TxnOp::put(key, text, None)]),
                )
                .await
                .map(|r| r.succeeded())
            })?
        }
        None => false,
    };
    Ok(Imported {
        env: data.env.clone(),
        revisions: revisions.len(),
        releases: data.releases.len(),
        audit: audit.len(),
        cookie_keys,
    })
}

fn to_json(value: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// `puts` in order, cut into transactions within [`MAX_OPS`] and [`MAX_BYTES`].
fn batches(puts: Vec<(String, Vec<u8>)>) -> Vec<Vec<(String, Vec<u8>)>> {
    let mut out: Vec<Vec<(String, Vec<u8>)>> = Vec::new();
    let mut bytes = 0;
    for put in puts {
        let size = put.0.len() + put.1.len();
        let full = out
            .last()
            .is_none_or(|b| b.len() == MAX_OPS || (!b.is_empty() && bytes + size > MAX_BYTES));
        if full {
            out.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        if let Some(batch) = out.last_mut() {
            batch.push(put);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(n: usize, size: usize) -> (String, Vec<u8>) {
        (format!("k{n}"), vec![b'x'; size])
    }

    #[test]
    fn transactions_stay_within_etcds_operation_and_size_limits_in_order() {
        let many: Vec<_> = (0..250).map(|n| put(n, 10)).collect();
        let sizes: Vec<usize> = batches(many).iter().map(Vec::len).collect();
        assert_eq!(sizes, [MAX_OPS, MAX_OPS, 10]);

        let big = vec![put(0, MAX_BYTES / 2), put(1, MAX_BYTES / 2), put(2, 10)];
        let cut = batches(big);
        assert_eq!(cut.len(), 2);
        assert_eq!(cut[0][0].0, "k0");
        assert_eq!(cut[1][0].0, "k1");
        assert_eq!(cut[1][1].0, "k2");
    }

    #[test]
    fn a_value_larger_than_the_byte_budget_goes_alone() {
        let cut = batches(vec![put(0, 1), put(1, MAX_BYTES + 1), put(2, 1)]);
        let sizes: Vec<usize> = cut.iter().map(Vec::len).collect();
        assert_eq!(sizes, [1, 1, 1]);
    }
}
