//! The watch over the environment's keys, resumed from the last revision seen so no change is
//! missed (read again from scratch after a compaction), and the leader's periodic compaction of
//! etcd's history.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, GetOptions, WatchOptions};
use tokio::sync::mpsc;

use super::{BACKOFF, Fleet, FleetEvent};

impl Fleet {
    /// While this node leads, compacts etcd's history every `every` to the revision it saw one
    /// period before, as Kubernetes' API server does: the heartbeats and traffic reports write
    /// every second, and etcd keeps every old version of a key until compacted, so without
    /// this its database would grow until it hits its quota. A watch that falls further behind
    /// than one period reads everything again ([`FleetEvent::Resynced`]). Zero: never (for an
    /// etcd compacted by its own `--auto-compaction-retention`, or shared with tools that
    /// compact it).
    pub fn compact_history(self: &Arc<Self>, every: Duration) {
        if every.is_zero() {
            return;
        }
        let task = self.handle.spawn(Arc::clone(self).compact(every));
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
    }

    pub(super) async fn compact(self: Arc<Self>, every: Duration) {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut previous: Option<i64> = None;
        loop {
            ticker.tick().await;
            let mut client = self.client.clone();
            // Any read says which revision etcd is at.
            let Ok(Ok(r)) = tokio::time::timeout(every, client.get(self.keys.leader(), None)).await
            else {
                continue;
            };
            let now = r.header().map_or(0, |h| h.revision());
            if let Some(revision) = previous
                && self.is_leader()
            {
                match tokio::time::timeout(every, client.compact(revision, None)).await {
                    Ok(Ok(_)) => tracing::debug!(revision, "compacted etcd's history"),
                    // Already compacted further (by etcd itself or another tool): fine.
                    Ok(Err(e)) => tracing::debug!(revision, "no compaction: {e}"),
                    Err(_) => {}
                }
            }
            previous = Some(now);
        }
    }

    /// Follows the environment's keys from `next`, resuming after errors without a gap.
    pub(super) async fn watch(
        self: Arc<Self>,
        mut next: i64,
        events: mpsc::UnboundedSender<FleetEvent>,
    ) {
        loop {
            let mut client = self.client.clone();
            let options = WatchOptions::new().with_prefix().with_start_revision(next);
            let Ok(mut stream) = client.watch(self.keys.env(), Some(options)).await else {
                tokio::time::sleep(BACKOFF).await;
                continue;
            };
            while let Ok(Some(r)) = stream.message().await {
                self.touch();
                if r.canceled() {
                    if r.compact_revision() > 0 {
                        next = self.resync(&events).await.unwrap_or(next);
                    }
                    break;
                }
                for e in r.events() {
                    let Some(kv) = e.kv() else { continue };
                    let value = match e.event_type() {
                        EventType::Put => Some(kv.value()),
                        EventType::Delete => None,
                    };
                    self.take(kv.key(), value, kv.mod_revision(), &events);
                    next = next.max(kv.mod_revision() + 1);
                }
            }
            tokio::time::sleep(BACKOFF).await;
        }
    }

    /// Reads everything again after the watch's revision was compacted away; returns the
    /// revision to watch from.
    pub(super) async fn resync(&self, events: &mpsc::UnboundedSender<FleetEvent>) -> Option<i64> {
        let mut client = self.client.clone();
        let r = client
            .get(self.keys.env(), Some(GetOptions::new().with_prefix()))
            .await
            .ok()?;
        let _ = events.send(FleetEvent::Resynced);
        self.members
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let leader_key = self.keys.leader();
        if !r.kvs().iter().any(|kv| kv.key() == leader_key.as_bytes()) {
            // The leader key went away while the watch was behind: no deletion will come.
            self.take(leader_key.as_bytes(), None, 0, events);
        }
        for kv in r.kvs() {
            self.take(kv.key(), Some(kv.value()), kv.mod_revision(), events);
        }
        Some(r.header().map_or(0, |h| h.revision()) + 1)
    }
}
