//! Values every node of a fleet must agree on and any node may be the first to need: the first
//! node to ask makes one, the others read it.

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use graylane_store::StoreError;

use crate::connect::Etcd;
use crate::keys::Keys;

/// The sticky-cookie signing keys of `env` (the text `GRAYLANE_COOKIE_KEYS` would hold), made
/// with `make` if no node stored any yet: cookies signed by one node verify on every other.
pub fn cookie_keys(
    etcd: &Etcd,
    env: &str,
    make: impl FnOnce() -> String,
) -> Result<String, StoreError> {
    let key = Keys::new(etcd.prefix(), env).cookie_keys();
    let fresh = make();
    etcd.call("reading the cookie keys", move |mut c| async move {
        // Created only if absent; either way the stored value comes back.
        let r = c
            .txn(
                Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([
                        TxnOp::put(key.clone(), fresh, None),
                        TxnOp::get(key.clone(), None),
                    ])
                    .or_else([TxnOp::get(key, None)]),
            )
            .await?;
        Ok(r.op_responses()
            .into_iter()
            .find_map(|op| match op {
                etcd_client::TxnOpResponse::Get(g) => g
                    .kvs()
                    .first()
                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
                _ => None,
            })
            .unwrap_or_default())
    })
}
