//! A node's place in the fleet: its membership record and traffic report under a lease, the
//! leader election, and the watch that tells it what other nodes changed.
//!
//! - **Lease.** Each node holds one lease, kept alive every third of its TTL. Its membership
//!   record, its report and, while it leads, the leader key are attached to it, so a node that
//!   dies (`kill -9`) leaves all three when the lease runs out, and another node takes the
//!   lead. The TTL asked for (`--etcd-lease-ttl`, default 10 s) is the promise "another node
//!   leads within it": the lease is granted one second shorter (at least 2 s), the time etcd
//!   takes to notice an expired lease (it checks twice a second) and a follower its next
//!   campaign.
//! - **Election.** A node that does not lead tries, four times a second, to create the leader
//!   key under its lease (a transaction that succeeds only if the key is absent). The leader's
//!   own writes compare the leader key's lease with its own ([`crate::EtcdStore`]), so once its
//!   lease is gone it can write nothing. It also stops acting as leader by itself when its
//!   lease has not been confirmed for two thirds of the TTL (etcd unreachable), before etcd
//!   could have let the lease expire and another node lead.
//! - **Watch.** One watch over the environment's keys, resumed after errors from the last
//!   revision seen, so no change is missed; a watch whose revision was compacted reads
//!   everything again ([`FleetEvent::Resynced`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use graylane_store::StoreError;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::keys::Keys;
use crate::store::EtcdStore;

mod election;
mod lease;
mod watch;

/// How often a node refreshes its membership record and report.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A record older than this belongs to a node that stopped: its name may be taken again.
const SILENT_AFTER_MS: i64 = 3_000;
/// How often a follower tries to lead.
const CAMPAIGN: Duration = Duration::from_millis(250);
/// How long to wait before resuming a failed watch or keep-alive.
const BACKOFF: Duration = Duration::from_millis(250);

/// Who this node is.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// `--node`: unique in the fleet.
    pub name: String,
    /// The admin listener's address, for people and tools reading the membership.
    pub admin: Option<String>,
}

/// A node's membership record, as `GET /api/v1/cluster` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// The node's name (`--node`), unique in the fleet.
    pub name: String,
    /// The node's admin listener address, when it has one.
    pub admin: Option<String>,
    /// The configuration revision the node serves.
    pub config_revision: u64,
    /// Whether the node serves (its `/readyz`).
    pub ready: bool,
    /// When the node last wrote this record, in Unix milliseconds.
    pub seen_ms: i64,
    /// When the node started.
    pub started_ms: i64,
}

/// What another node changed, from the watch.
#[derive(Debug, Clone, PartialEq)]
pub enum FleetEvent {
    /// A configuration revision was recorded: the newest is now `n`.
    Revision(u64),
    /// A release's state was saved, at `version`.
    Release {
        /// The service whose release it is.
        service: String,
        /// The saved state, as the controller wrote it.
        state: Vec<u8>,
        /// The key's etcd mod revision: it grows with every save, so a stale event can be told
        /// apart.
        version: u64,
    },
    /// A node published its traffic report.
    Report {
        /// The node that published it.
        node: String,
        /// The report's JSON, as the node wrote it.
        report: Vec<u8>,
    },
    /// A node's report is gone (it left, or its lease expired).
    ReportGone(String),
    /// The watch had to start over (its revision was compacted): everything may have changed;
    /// the events that follow carry the current state.
    Resynced,
}

/// A fleet node's view of the fleet.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterView {
    /// The leading node, if one leads.
    pub leader: Option<String>,
    /// This node's name.
    pub node: String,
    /// Every member whose record this node has seen, by name.
    pub members: Vec<Member>,
    /// The newest revision etcd holds, as far as this node has heard.
    pub latest_revision: u64,
    /// When this node last heard from etcd (Unix milliseconds).
    pub store_contact_ms: i64,
    /// Whether that is recent enough to trust what this node knows (else it serves its last
    /// state and says it is stale).
    pub store_reachable: bool,
}

/// This node's membership, election and watch, running until [`Fleet::leave`], which also
/// gives its lease back so that the fleet sees the node leave at once.
pub struct Fleet {
    client: Client,
    keys: Keys,
    node: NodeInfo,
    ttl: Duration,
    handle: tokio::runtime::Handle,
    lease: AtomicI64,
    /// Shared with the store: the lease this node leads under, or 0.
    leading: Arc<AtomicI64>,
    /// The monotonic clock lease confirmations are measured on: a wall clock stepped back
    /// would keep a leader leading after its lease expired.
    clock: Instant,
    /// When the newest keep-alive etcd answered was *sent* ([`Fleet::clock`] ms): etcd
    /// extended the lease no earlier than that, so it lives at least a TTL from then.
    lease_confirmed_ms: AtomicI64,
    /// When etcd last answered anything (Unix ms).
    contact_ms: AtomicI64,
    latest_revision: AtomicU64,
    started_ms: i64,
    local: Mutex<Local>,
    members: Mutex<BTreeMap<String, Member>>,
    leader: Mutex<Option<String>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

#[derive(Default)]
struct Local {
    config_revision: u64,
    ready: bool,
    report: Option<Vec<u8>>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Fleet {
    /// Joins the fleet of `store`'s environment as `node`: takes a lease, refuses a name a live
    /// node already has, registers, and starts the keep-alive, the heartbeat, the election and
    /// the watch. Another node leads within `ttl` of this one dying (see the module's notes on
    /// the lease). Returns the fleet and the events of the watch.
    pub fn join(
        store: &EtcdStore,
        env: &str,
        node: NodeInfo,
        ttl: Duration,
    ) -> Result<(Arc<Fleet>, mpsc::UnboundedReceiver<FleetEvent>), StoreError> {
        // The membership keys must not be the first of an environment without its record.
        store.check_env(env, true)?;
        let etcd = store.etcd().clone();
        let keys = Keys::new(etcd.prefix(), env);
        let ttl_s = (ttl.as_secs() as i64 - 1).max(2);
        let member_key = keys.member(&node.name);
        let existing = etcd.call("checking the node name", {
            let member_key = member_key.clone();
            |mut c| async move {
                let r = c.get(member_key, None).await?;
                Ok(r.kvs()
                    .first()
                    .map(|kv| (kv.value().to_vec(), kv.mod_revision())))
            }
        })?;
        let mut expect_rev = 0;
        if let Some((bytes, rev)) = existing {
            if let Ok(m) = serde_json::from_slice::<Member>(&bytes) {
                let age = now_ms() - m.seen_ms;
                if age < SILENT_AFTER_MS {
                    return Err(StoreError::Foreign {
                        endpoints: etcd.endpoints().to_string(),
                        detail: format!(
                            "node name `{}` is taken by a running node (admin {}, seen {:.1} s ago): give this node another --node name (a stopped node's name is free {} s after it was last seen)",
                            node.name,
                            m.admin.as_deref().unwrap_or("none"),
                            age.max(0) as f64 / 1000.0,
                            SILENT_AFTER_MS / 1000
                        ),
                    });
                }
            }
            expect_rev = rev;
        }
        let clock = Instant::now();
        let lease = etcd.call("taking a lease", move |mut c| async move {
            c.lease_grant(ttl_s, None).await.map(|r| r.id())
        })?;
        let started_ms = now_ms();
        let fleet = Arc::new(Fleet {
            client: etcd.client(),
            keys: keys.clone(),
            node,
            ttl: Duration::from_secs(ttl_s as u64),
            handle: etcd.handle(),
            lease: AtomicI64::new(lease),
            leading: store.leading(),
            clock,
            lease_confirmed_ms: AtomicI64::new(0),
            contact_ms: AtomicI64::new(started_ms),
            latest_revision: AtomicU64::new(0),
            started_ms,
            local: Mutex::new(Local::default()),
            members: Mutex::new(BTreeMap::new()),
            leader: Mutex::new(None),
            tasks: Mutex::new(Vec::new()),
        });
        let record = fleet.record();
        let registered = etcd.call("registering the node", {
            let member_key = member_key.clone();
            move |mut c| async move {
                let r = c
                    .txn(
                        Txn::new()
                            .when([Compare::mod_revision(
                                member_key.clone(),
                                CompareOp::Equal,
                                expect_rev,
                            )])
                            .and_then([TxnOp::put(
                                member_key,
                                record,
                                Some(PutOptions::new().with_lease(lease)),
                            )]),
                    )
                    .await?;
                Ok(r.succeeded())
            }
        })?;
        if !registered {
            let _ = etcd.call("giving the lease back", move |mut c| async move {
                c.lease_revoke(lease).await.map(|_| ())
            });
            return Err(StoreError::Foreign {
                endpoints: etcd.endpoints().to_string(),
                detail: format!(
                    "node name `{}` was taken by another node starting at the same moment: give this node another --node name",
                    fleet.node.name
                ),
            });
        }
        // Everything there is now; the watch goes on from the next revision.
        let prefix = keys.env().to_string();
        let (kvs, revision) = etcd.call("reading the fleet", |mut c| async move {
            let r = c.get(prefix, Some(GetOptions::new().with_prefix())).await?;
            let revision = r.header().map_or(0, |h| h.revision());
            Ok((
                r.kvs()
                    .iter()
                    .map(|kv| (kv.key().to_vec(), kv.value().to_vec(), kv.mod_revision()))
                    .collect::<Vec<_>>(),
                revision,
            ))
        })?;
        let (events, receiver) = mpsc::unbounded_channel();
        for (key, value, rev) in kvs {
            fleet.take(&key, Some(&value), rev, &events);
        }
        let tasks = vec![
            fleet.handle.spawn(Arc::clone(&fleet).keep_alive()),
            fleet.handle.spawn(Arc::clone(&fleet).heartbeat()),
            fleet.handle.spawn(Arc::clone(&fleet).campaign()),
            fleet
                .handle
                .spawn(Arc::clone(&fleet).watch(revision + 1, events)),
        ];
        *fleet.tasks.lock().unwrap_or_else(|e| e.into_inner()) = tasks;
        Ok((fleet, receiver))
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.node.name
    }

    /// Whether this node leads now: it holds the leader key and its lease was confirmed
    /// recently enough that no other node can lead yet.
    pub fn is_leader(&self) -> bool {
        self.leading.load(Ordering::Acquire) != 0
            && self.mono_ms() - self.lease_confirmed_ms.load(Ordering::Acquire)
                < self.step_down_ms()
    }

    /// Whether etcd answered within the last few heartbeats.
    pub fn store_reachable(&self) -> bool {
        now_ms() - self.contact_ms.load(Ordering::Acquire) < SILENT_AFTER_MS
    }

    /// The newest configuration revision etcd holds, as far as this node has heard.
    pub fn latest_revision(&self) -> u64 {
        self.latest_revision.load(Ordering::Acquire)
    }

    /// Says which revision this node serves and whether it is ready; published with the next
    /// heartbeat.
    pub fn set_status(&self, config_revision: u64, ready: bool) {
        let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
        local.config_revision = config_revision;
        local.ready = ready;
    }

    /// This node's traffic report, published with the next heartbeat.
    pub fn set_report(&self, report: Vec<u8>) {
        self.local.lock().unwrap_or_else(|e| e.into_inner()).report = Some(report);
    }

    /// The fleet as this node knows it.
    pub fn cluster(&self) -> ClusterView {
        let mut members: Vec<Member> = self
            .members
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        // This node's own record is what it would publish now, even while etcd is away.
        let me = serde_json::from_slice::<Member>(&self.record()).ok();
        if let Some(me) = me {
            members.retain(|m| m.name != me.name);
            members.push(me);
            members.sort_by(|a, b| a.name.cmp(&b.name));
        }
        ClusterView {
            leader: self
                .leader
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            node: self.node.name.clone(),
            members,
            latest_revision: self.latest_revision.load(Ordering::Acquire),
            store_contact_ms: self.contact_ms.load(Ordering::Acquire),
            store_reachable: self.store_reachable(),
        }
    }

    /// Leaves the fleet at once: gives the lease back, which removes this node's record,
    /// report and (if it leads) the leader key, so another node leads without waiting for the
    /// TTL. Stops the background tasks.
    pub fn leave(&self) {
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
        self.leading.store(0, Ordering::Release);
        let lease = self.lease.load(Ordering::Acquire);
        let mut client = self.client.clone();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(2), client.lease_revoke(lease)).await;
            let _ = tx.send(());
        });
        let _ = rx.recv_timeout(Duration::from_secs(3));
    }

    fn mono_ms(&self) -> i64 {
        self.clock.elapsed().as_millis() as i64
    }

    fn step_down_ms(&self) -> i64 {
        self.ttl.as_millis() as i64 * 2 / 3
    }

    fn touch(&self) {
        self.contact_ms.store(now_ms(), Ordering::Release);
    }

    fn record(&self) -> Vec<u8> {
        let local = self.local.lock().unwrap_or_else(|e| e.into_inner());
        serde_json::to_vec(&Member {
            name: self.node.name.clone(),
            admin: self.node.admin.clone(),
            config_revision: local.config_revision,
            ready: local.ready,
            seen_ms: now_ms(),
            started_ms: self.started_ms,
        })
        .unwrap_or_default()
    }
}
