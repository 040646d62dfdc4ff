//! What the etcd tests share: connecting to a test etcd, raw reads and writes that go around
//! graylane, the records the store takes, and bounded waiting.

#![allow(dead_code, unused_imports)] // Each test binary uses its own part of this module.

use std::time::Duration;

use etcd_client::GetOptions;
use graylane_etcd::{Etcd, EtcdOptions, EtcdStore};
use graylane_testing::etcd::EtcdServer;

pub(crate) use graylane_store::conformance::{new_audit, new_revision};
pub(crate) use graylane_testing::wait::wait_for;

/// A connection to `server` with graylane's keys under `prefix`, and a 1 s call timeout.
pub(crate) fn connect(server: &EtcdServer, prefix: &str) -> Etcd {
    let mut options = EtcdOptions::new(vec![server.url()]);
    options.prefix = prefix.to_string();
    options.timeout = Duration::from_secs(1);
    match Etcd::connect(&options) {
        Ok(etcd) => etcd,
        Err(e) => panic!("connecting to {}: {e}", server.url()),
    }
}

/// A store for `env` on its own connection (a node of its own).
pub(crate) fn open(server: &EtcdServer, prefix: &str, env: &str) -> EtcdStore {
    match EtcdStore::open(connect(server, prefix), env) {
        Ok(store) => store,
        Err(e) => panic!("opening {env} under {prefix}: {e}"),
    }
}

/// Writes a key directly, as another program (or a person with etcdctl) would.
pub(crate) fn put(etcd: &Etcd, key: &str, value: &[u8]) {
    let (key, value) = (key.to_string(), value.to_vec());
    etcd.call("a test's raw put", |mut c| async move {
        c.put(key, value, None).await.map(|_| ())
    })
    .unwrap();
}

/// Every key under `prefix` with its value and modification revision: a snapshot to compare
/// before and after an operation that must write nothing.
pub(crate) fn dump(etcd: &Etcd, prefix: &str) -> Vec<(String, Vec<u8>, i64)> {
    let prefix = prefix.to_string();
    etcd.call("a test's raw read", |mut c| async move {
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
    .unwrap()
}
