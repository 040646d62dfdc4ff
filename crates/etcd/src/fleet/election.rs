//! The leader election: a transaction that creates the leader key under this node's lease only
//! if it is absent, tried four times a second by a node that does not lead.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use tokio::sync::mpsc;

use super::{CAMPAIGN, Fleet, FleetEvent, Member};
use crate::keys::EnvKey;

impl Fleet {
    /// Applies one key of the environment (from the first read or the watch); `None` is a
    /// deletion.
    pub(super) fn take(
        &self,
        key: &[u8],
        value: Option<&[u8]>,
        mod_revision: i64,
        events: &mpsc::UnboundedSender<FleetEvent>,
    ) {
        let Ok(key) = std::str::from_utf8(key) else {
            return;
        };
        let Some(what) = self.keys.classify(key) else {
            return;
        };
        let send = |e| {
            let _ = events.send(e);
        };
        match (what, value) {
            (EnvKey::LatestRevision, Some(v)) => {
                if let Some(n) = std::str::from_utf8(v).ok().and_then(|s| s.parse().ok()) {
                    self.latest_revision.store(n, Ordering::Release);
                    send(FleetEvent::Revision(n));
                }
            }
            (EnvKey::Release(service), Some(v)) => send(FleetEvent::Release {
                service: service.to_string(),
                state: v.to_vec(),
                version: mod_revision as u64,
            }),
            (EnvKey::Leader, v) => {
                let name = v.map(|v| String::from_utf8_lossy(v).into_owned());
                if name.as_deref() != Some(self.node.name.as_str()) {
                    self.leading.store(0, Ordering::Release);
                }
                *self.leader.lock().unwrap_or_else(|e| e.into_inner()) = name;
            }
            (EnvKey::Member(node), Some(v)) => {
                if let Ok(m) = serde_json::from_slice::<Member>(v) {
                    self.members
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(node.to_string(), m);
                }
            }
            (EnvKey::Member(node), None) => {
                self.members
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(node);
            }
            // This node's own reports too: one left by its previous life (a restart within
            // the lease) holds counts the fleet's totals must keep.
            (EnvKey::Report(node), Some(v)) => send(FleetEvent::Report {
                node: node.to_string(),
                report: v.to_vec(),
            }),
            (EnvKey::Report(node), None) if node != self.node.name => {
                send(FleetEvent::ReportGone(node.to_string()))
            }
            _ => {}
        }
    }

    /// Tries to lead while no node does; steps down when the lease goes unconfirmed.
    pub(super) async fn campaign(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(CAMPAIGN);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let lease = self.lease.load(Ordering::Acquire);
            if self.leading.load(Ordering::Acquire) != 0 {
                if self.mono_ms() - self.lease_confirmed_ms.load(Ordering::Acquire)
                    >= self.step_down_ms()
                {
                    self.leading.store(0, Ordering::Release);
                    tracing::warn!(node = %self.node.name, "cannot confirm the fleet lease: no longer acting as leader");
                }
                continue;
            }
            let key = self.keys.leader();
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.clone(),
                    self.node.name.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                )])
                .or_else([TxnOp::get(key, None)]);
            let mut client = self.client.clone();
            let Ok(Ok(r)) = tokio::time::timeout(CAMPAIGN * 4, client.txn(txn)).await else {
                continue;
            };
            self.touch();
            let holder_lease = if r.succeeded() {
                lease
            } else {
                r.op_responses()
                    .into_iter()
                    .find_map(|op| match op {
                        etcd_client::TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.lease()),
                        _ => None,
                    })
                    .unwrap_or(0)
            };
            if holder_lease == lease
                && self.mono_ms() - self.lease_confirmed_ms.load(Ordering::Acquire)
                    < self.step_down_ms()
            {
                *self.leader.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(self.node.name.clone());
                self.leading.store(lease, Ordering::Release);
                tracing::info!(node = %self.node.name, "this node leads the fleet");
            }
        }
    }
}
