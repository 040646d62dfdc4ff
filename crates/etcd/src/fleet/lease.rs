//! The node's lease: kept alive every third of its TTL (a new one granted, and the records put
//! back, when it was lost), and the heartbeat that refreshes the membership record and report
//! under it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use etcd_client::{PutOptions, Txn, TxnOp};

use super::{BACKOFF, Fleet, HEARTBEAT};

impl Fleet {
    /// Keeps the lease alive; takes a new one (and registers again) if etcd let it expire.
    pub(super) async fn keep_alive(self: Arc<Self>) {
        let period = self.ttl / 3;
        loop {
            let lease = self.lease.load(Ordering::Acquire);
            let mut client = self.client.clone();
            let Ok(Ok((mut keeper, mut stream))) =
                tokio::time::timeout(period, client.lease_keep_alive(lease)).await
            else {
                tokio::time::sleep(BACKOFF).await;
                continue;
            };
            loop {
                let sent = self.mono_ms();
                if keeper.keep_alive().await.is_err() {
                    break;
                }
                match tokio::time::timeout(period, stream.message()).await {
                    Ok(Ok(Some(r))) if r.ttl() > 0 => {
                        self.lease_confirmed_ms.store(sent, Ordering::Release);
                        self.touch();
                    }
                    Ok(Ok(Some(_))) => {
                        // etcd let the lease expire (it was away longer than the TTL): this
                        // node's keys are gone and it leads no more.
                        self.leading.store(0, Ordering::Release);
                        self.renew_lease().await;
                        break;
                    }
                    _ => break,
                }
                tokio::time::sleep(period).await;
            }
            tokio::time::sleep(BACKOFF).await;
        }
    }

    pub(super) async fn renew_lease(&self) {
        let mut client = self.client.clone();
        let ttl = self.ttl.as_secs() as i64;
        let sent = self.mono_ms();
        if let Ok(Ok(r)) = tokio::time::timeout(self.ttl / 3, client.lease_grant(ttl, None)).await {
            self.lease.store(r.id(), Ordering::Release);
            self.lease_confirmed_ms.store(sent, Ordering::Release);
            tracing::warn!(node = %self.node.name, "the fleet lease had expired: joined again with a new one");
        }
    }

    /// Publishes the membership record and the report once a second.
    pub(super) async fn heartbeat(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(HEARTBEAT);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let lease = self.lease.load(Ordering::Acquire);
            let record = self.record();
            let report = self
                .local
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .report
                .clone();
            let mut ops = vec![TxnOp::put(
                self.keys.member(&self.node.name),
                record,
                Some(PutOptions::new().with_lease(lease)),
            )];
            if let Some(report) = report {
                ops.push(TxnOp::put(
                    self.keys.report(&self.node.name),
                    report,
                    Some(PutOptions::new().with_lease(lease)),
                ));
            }
            let mut client = self.client.clone();
            let put = tokio::time::timeout(HEARTBEAT, client.txn(Txn::new().and_then(ops))).await;
            if let Ok(Ok(_)) = put {
                self.touch();
            }
        }
    }
}
