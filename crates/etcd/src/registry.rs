//! The service registry on etcd: instances of a service register themselves under a lease,
//! with labels, and gateways follow them.
//!
//! Key layout: `{prefix}/registry/{service}/{instance-id}` holds the JSON
//! `{"address": "127.0.0.1:9000", "labels": {"version": "canary"}, "weight": 1}` (`labels` and
//! `weight` optional), put under the instance's own lease: when the instance stops keeping the
//! lease alive, etcd deletes the key and the instance leaves every gateway's rotation.
//!
//! * [`register`] puts an instance and keeps its lease alive in a task, re-registering when the
//!   lease is lost; [`Registration::deregister`] revokes the lease so it leaves at once.
//! * [`watch`] follows the whole registry and hands out the current [`Snapshot`] on each
//!   change, through a [`tokio::sync::watch`] channel; feed it to
//!   [`graylane_config::resolve_registry`] to get the configuration to apply.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use etcd_client::{
    Client, EventType, GetOptions, KeyValue, PutOptions, WatchOptions, WatchResponse,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch as channel};
use tokio::task::JoinHandle;

/// The key prefix `graylane` uses when none is given (`--etcd-prefix`).
pub const DEFAULT_PREFIX: &str = "/graylane";

/// Every registered instance, by service name; each service's instances sorted by id.
pub type Snapshot = BTreeMap<String, Vec<Instance>>;

/// One registered instance of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Unique within its service; the last segment of its key.
    pub id: String,
    /// Where its requests go.
    pub address: SocketAddr,
    /// What a version's selector matches on, e.g. `version: canary`, `zone: a`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `0` keeps the instance registered but out of rotation (draining).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

impl graylane_config::RegistryInstance for Instance {
    fn address(&self) -> SocketAddr {
        self.address
    }

    fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }

    fn weight(&self) -> Option<u32> {
        self.weight
    }
}

/// The value stored at an instance's key: the instance without its id, which the key holds.
/// Other fields an app writes (its own metadata) are ignored.
#[derive(Serialize, Deserialize)]
struct Record {
    address: SocketAddr,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    weight: Option<u32>,
}

/// Why registering or watching failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// etcd refused the request or could not be reached.
    #[error("the config store (etcd) failed: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// etcd did not answer within this long.
    #[error("the config store (etcd) did not answer within {0:?}")]
    Timeout(Duration),
    /// A service name or instance id is not letters, digits, `-`, `_` and `.`.
    #[error("invalid {what} `{value}`: {why}")]
    Invalid {
        /// What the value is: `service name` or `instance id`.
        what: &'static str,
        /// The value given.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

type Result<T> = std::result::Result<T, RegistryError>;

/// Keys under which every instance is registered: `{prefix}/registry/`.
pub fn registry_prefix(prefix: &str) -> String {
    format!("{}/registry/", prefix.trim_end_matches('/'))
}

/// The key of instance `id` of `service`.
pub fn instance_key(prefix: &str, service: &str, id: &str) -> String {
    format!("{}{service}/{id}", registry_prefix(prefix))
}

/// Whether `name` may be a service name or an instance id: letters, digits, `-`, `_` and `.`
/// (what a version's selector may name, and safe as a key segment).
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn check_name(what: &'static str, value: &str) -> Result<()> {
    if is_valid_name(value) {
        Ok(())
    } else {
        Err(RegistryError::Invalid {
            what,
            value: value.to_string(),
            why: "use letters, digits, `-`, `_` and `.`",
        })
    }
}

/// How long one etcd call may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest wait between attempts to reach etcd again.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
const MIN_BACKOFF: Duration = Duration::from_millis(100);

async fn bounded<T>(
    call: impl Future<Output = std::result::Result<T, etcd_client::Error>>,
) -> Result<T> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(RegistryError::Timeout(CALL_TIMEOUT)),
    }
}

/// Revokes `lease`, trying again for up to [`CALL_TIMEOUT`]: with several endpoints, a call
/// may land on one that is down. A lease that no longer exists took its key with it: done.
async fn revoke(client: &Client, lease: i64) -> Result<()> {
    let mut client = client.clone();
    let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
    let mut backoff = MIN_BACKOFF;
    loop {
        match bounded(client.lease_revoke(lease)).await {
            Ok(_) => return Ok(()),
            Err(RegistryError::Etcd(etcd_client::Error::GRpcStatus(status)))
                if status.message().contains("lease not found") =>
            {
                return Ok(());
            }
            Err(e) if tokio::time::Instant::now() + backoff >= deadline => return Err(e),
            Err(_) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// An instance kept registered by a background task. Dropping it stops the keep-alive without
/// revoking the lease: the instance then leaves when the lease expires (within its TTL).
pub struct Registration {
    key: String,
    lease: Arc<AtomicI64>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<()>>>,
}

impl Registration {
    /// The instance's key in etcd.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The lease the key is held under now (it changes when the task re-registers).
    pub fn lease_id(&self) -> i64 {
        self.lease.load(Ordering::Relaxed)
    }

    /// Stops keeping the instance alive and revokes its lease, so etcd deletes its key at once.
    /// If etcd cannot be reached the error says so; the key then goes when the lease expires.
    pub async fn deregister(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Registers `instance` as an instance of `service` under a new lease of `ttl` (rounded up to
/// whole seconds, at least 1 s), and keeps the lease alive in a task. If the lease is lost (it
/// expired while etcd was unreachable), the task registers the instance again under a new
/// one. Errors when the names are not valid or etcd does not accept the first registration.
pub async fn register(
    client: Client,
    prefix: &str,
    service: &str,
    instance: Instance,
    ttl: Duration,
) -> Result<Registration> {
    check_name("service name", service)?;
    check_name("instance id", &instance.id)?;
    let key = instance_key(prefix, service, &instance.id);
    let value = serde_json::to_vec(&Record {
        address: instance.address,
        labels: instance.labels,
        weight: instance.weight,
    })
    .map_err(|e| etcd_client::Error::InvalidArgs(e.to_string()))?;
    let ttl_secs = i64::try_from(
        ttl.as_secs()
            .saturating_add(u64::from(ttl.subsec_nanos() > 0)),
    )
    .unwrap_or(i64::MAX)
    .max(1);
    let keeper = Keeper {
        client,
        key: key.clone(),
        value,
        ttl_secs,
        lease: Arc::new(AtomicI64::new(0)),
    };
    keeper.put_under_new_lease().await?;
    let lease = Arc::clone(&keeper.lease);
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(keeper.run(stopped));
    Ok(Registration {
        key,
        lease,
        stop: Some(stop),
        task: Some(task),
    })
}

/// The task that keeps one instance registered.
struct Keeper {
    client: Client,
    key: String,
    value: Vec<u8>,
    ttl_secs: i64,
    lease: Arc<AtomicI64>,
}

/// How one step of keeping an instance registered ended.
enum Step {
    /// Registered again under a new lease.
    Registered,
    /// etcd says the lease no longer exists (it expired while etcd was unreachable): register
    /// again.
    Lost,
    /// etcd could not be reached or the stream broke: try the same lease again after a while.
    Failed(String),
}

impl Keeper {
    async fn put_under_new_lease(&self) -> Result<()> {
        let mut client = self.client.clone();
        let lease = bounded(client.lease_grant(self.ttl_secs, None)).await?.id();
        let put = bounded(client.put(
            self.key.as_bytes(),
            self.value.clone(),
            Some(PutOptions::new().with_lease(lease)),
        ))
        .await;
        if let Err(e) = put {
            let _ = bounded(client.lease_revoke(lease)).await;
            return Err(e);
        }
        let old = self.lease.swap(lease, Ordering::Relaxed);
        if old != 0 {
            // The old lease holds no key any more; let it go rather than wait for it to expire.
            let _ = bounded(client.lease_revoke(old)).await;
        }
        Ok(())
    }

    async fn run(self, mut stopped: oneshot::Receiver<()>) -> Result<()> {
        let mut backoff = MIN_BACKOFF;
        let mut lost = false;
        loop {
            let began = tokio::time::Instant::now();
            let step = async {
                if lost {
                    match self.put_under_new_lease().await {
                        Ok(()) => Step::Registered,
                        Err(e) => Step::Failed(format!("registering again failed: {e}")),
                    }
                } else {
                    self.keep(self.lease.load(Ordering::Relaxed)).await
                }
            };
            let step = tokio::select! {
                _ = &mut stopped => break,
                step = step => step,
            };
            if began.elapsed() > MAX_BACKOFF {
                // The step went well for a while before it ended: not a run of failures.
                backoff = MIN_BACKOFF;
            }
            match step {
                Step::Registered => {
                    tracing::info!(key = %self.key, "registered again under a new lease");
                    lost = false;
                    backoff = MIN_BACKOFF;
                    continue;
                }
                Step::Lost => {
                    tracing::warn!(key = %self.key, "the registration's lease was lost; registering again");
                    lost = true;
                    continue;
                }
                Step::Failed(why) => {
                    tracing::warn!(key = %self.key, "keeping the registration alive failed: {why}");
                }
            }
            tokio::select! {
                _ = &mut stopped => break,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        revoke(&self.client, self.lease.load(Ordering::Relaxed)).await
    }

    /// Keeps `lease` alive, a keep-alive every third of the TTL (so two may go missing before
    /// it expires), until etcd says it is gone or cannot be reached.
    async fn keep(&self, lease: i64) -> Step {
        let client = self.client.clone();
        let interval = Duration::from_millis((self.ttl_secs as u64).saturating_mul(1000) / 3);
        let (mut keeper, mut responses) =
            match bounded(client.lease_client().keep_alive(lease)).await {
                Ok(pair) => pair,
                // The client's own check of etcd's first answer: the lease does not exist.
                Err(RegistryError::Etcd(etcd_client::Error::LeaseKeepAliveError(_))) => {
                    return Step::Lost;
                }
                Err(e) => return Step::Failed(e.to_string()),
            };
        loop {
            tokio::time::sleep(interval).await;
            if let Err(e) = keeper.keep_alive().await {
                return Step::Failed(e.to_string());
            }
            match tokio::time::timeout(CALL_TIMEOUT, responses.message()).await {
                Ok(Ok(Some(answer))) if answer.ttl() > 0 => {}
                Ok(Ok(Some(_))) => return Step::Lost,
                Ok(Ok(None)) => return Step::Failed("the keep-alive stream ended".into()),
                Ok(Err(e)) => return Step::Failed(e.to_string()),
                Err(_) => return Step::Failed("no keep-alive answer in time".into()),
            }
        }
    }
}

/// Follows every registered instance. Dropping it stops following.
pub struct RegistryWatch {
    receiver: channel::Receiver<Snapshot>,
    task: JoinHandle<()>,
}

impl RegistryWatch {
    /// The registry as last seen.
    pub fn snapshot(&self) -> Snapshot {
        self.receiver.borrow().clone()
    }

    /// A receiver that sees each new snapshot (`changed().await`, then `borrow_and_update()`);
    /// it ends (`changed` errs) when this watch is dropped.
    pub fn receiver(&self) -> channel::Receiver<Snapshot> {
        self.receiver.clone()
    }
}

impl Drop for RegistryWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads every instance registered under `prefix`, then follows changes from the next
/// revision in a task. After an error (etcd down) the task watches again from the last
/// revision it saw; if that revision was compacted meanwhile it reads the whole registry again.
/// A snapshot is published only when the set of instances changed. Errors when the first read
/// fails.
pub async fn watch(client: Client, prefix: &str) -> Result<RegistryWatch> {
    let mut follower = Follower {
        client,
        keys: registry_prefix(prefix),
        instances: BTreeMap::new(),
        revision: 0,
    };
    follower.read_all().await?;
    let (sender, receiver) = channel::channel(follower.snapshot());
    let task = tokio::spawn(follower.run(sender));
    Ok(RegistryWatch { receiver, task })
}

/// The watch task's state: every instance by key, and the revision they are current at.
struct Follower {
    client: Client,
    keys: String,
    instances: BTreeMap<String, (String, Instance)>,
    revision: i64,
}

/// Why following the watch stream stopped.
enum FollowEnd {
    /// The revision to continue from was compacted: read everything again.
    Compacted,
    Failed(String),
}

/// With no message for this long, the watch asks etcd for a progress report; with none for
/// twice as long the connection counts as lost.
const WATCH_IDLE: Duration = Duration::from_secs(10);

impl Follower {
    async fn read_all(&mut self) -> Result<()> {
        let mut client = self.client.clone();
        let response =
            bounded(client.get(self.keys.as_bytes(), Some(GetOptions::new().with_prefix())))
                .await?;
        self.instances.clear();
        for kv in response.kvs() {
            self.put(kv);
        }
        self.revision = response.header().map_or(0, |h| h.revision());
        Ok(())
    }

    fn snapshot(&self) -> Snapshot {
        let mut out = Snapshot::new();
        for (service, instance) in self.instances.values() {
            out.entry(service.clone())
                .or_default()
                .push(instance.clone());
        }
        for instances in out.values_mut() {
            instances.sort_by(|a, b| a.id.cmp(&b.id));
        }
        out
    }

    /// Takes in a put key; one that does not parse is left out (and logged), not fatal: one
    /// bad entry must not hide the rest of the registry.
    fn put(&mut self, kv: &KeyValue) {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        self.instances.remove(&key);
        // Read leniently: any id without a `/` is kept, though `register` writes only names.
        let Some((service, id)) = key
            .strip_prefix(&self.keys)
            .and_then(|rest| rest.split_once('/'))
            .filter(|(service, id)| !service.is_empty() && !id.is_empty() && !id.contains('/'))
        else {
            tracing::warn!(%key, "ignoring a registry key not of the form {{service}}/{{instance-id}}");
            return;
        };
        match serde_json::from_slice::<Record>(kv.value()) {
            Ok(record) => {
                let instance = Instance {
                    id: id.to_string(),
                    address: record.address,
                    labels: record.labels,
                    weight: record.weight,
                };
                let service = service.to_string();
                self.instances.insert(key, (service, instance));
            }
            Err(e) => {
                tracing::warn!(%key, "ignoring a registry entry that is not an instance: {e}")
            }
        }
    }

    async fn run(mut self, sender: channel::Sender<Snapshot>) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let end = self.follow(&sender, &mut backoff).await;
            match end {
                FollowEnd::Compacted => {
                    tracing::info!(
                        revision = self.revision,
                        "the registry's revision was compacted; reading it whole again"
                    );
                    loop {
                        match self.read_all().await {
                            Ok(()) => break,
                            Err(e) => {
                                tracing::warn!("reading the registry failed: {e}");
                                tokio::time::sleep(backoff).await;
                                backoff = (backoff * 2).min(MAX_BACKOFF);
                            }
                        }
                    }
                    self.publish(&sender);
                    continue;
                }
                FollowEnd::Failed(why) => {
                    tracing::warn!(
                        revision = self.revision,
                        "watching the registry failed: {why}; watching again"
                    );
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn publish(&self, sender: &channel::Sender<Snapshot>) {
        let snapshot = self.snapshot();
        sender.send_if_modified(|current| {
            if *current == snapshot {
                false
            } else {
                *current = snapshot;
                true
            }
        });
    }

    /// Watches from the revision after the last one seen until the stream fails.
    async fn follow(
        &mut self,
        sender: &channel::Sender<Snapshot>,
        backoff: &mut Duration,
    ) -> FollowEnd {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(self.revision + 1);
        let mut client = self.client.clone();
        let mut stream = match bounded(client.watch(self.keys.as_bytes(), Some(options))).await {
            Ok(stream) => stream,
            Err(e) => return FollowEnd::Failed(e.to_string()),
        };
        let mut asked_progress = false;
        loop {
            let message = match tokio::time::timeout(WATCH_IDLE, stream.message()).await {
                Ok(Ok(Some(message))) => message,
                Ok(Ok(None)) => return FollowEnd::Failed("the watch stream ended".into()),
                Ok(Err(e)) => return FollowEnd::Failed(e.to_string()),
                Err(_) if asked_progress => {
                    return FollowEnd::Failed(format!(
                        "no answer from etcd in {:?}",
                        WATCH_IDLE * 2
                    ));
                }
                Err(_) => {
                    if let Err(e) = stream.request_progress().await {
                        return FollowEnd::Failed(e.to_string());
                    }
                    asked_progress = true;
                    continue;
                }
            };
            asked_progress = false;
            *backoff = MIN_BACKOFF;
            if message.canceled() {
                return if message.compact_revision() > 0 {
                    FollowEnd::Compacted
                } else {
                    FollowEnd::Failed(format!(
                        "etcd cancelled the watch: {}",
                        message.cancel_reason()
                    ))
                };
            }
            self.take_in(&message);
            self.publish(sender);
        }
    }

    fn take_in(&mut self, message: &WatchResponse) {
        if message.events().is_empty() {
            // A progress report: every change up to its revision has been sent.
            if !message.created()
                && let Some(header) = message.header()
            {
                self.revision = self.revision.max(header.revision());
            }
            return;
        }
        for event in message.events() {
            let Some(kv) = event.kv() else { continue };
            match event.event_type() {
                EventType::Put => self.put(kv),
                EventType::Delete => {
                    self.instances
                        .remove(String::from_utf8_lossy(kv.key()).as_ref());
                }
            }
            self.revision = self.revision.max(kv.mod_revision());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_documented_layout_whatever_the_prefix_ends_with() {
        assert_eq!(
            instance_key("/graylane", "payment", "host-9000"),
            "/graylane/registry/payment/host-9000"
        );
        assert_eq!(
            instance_key("/graylane/", "payment", "a"),
            "/graylane/registry/payment/a"
        );
        assert_eq!(registry_prefix(DEFAULT_PREFIX), "/graylane/registry/");
    }

    #[test]
    fn the_stored_value_is_the_documented_json() {
        let record = Record {
            address: "127.0.0.1:9000".parse().unwrap(),
            labels: BTreeMap::from([("version".to_string(), "canary".to_string())]),
            weight: Some(1),
        };
        assert_eq!(
            serde_json::to_string(&record).unwrap(),
            r#"{"address":"127.0.0.1:9000","labels":{"version":"canary"},"weight":1}"#
        );
        let bare: Record =
            serde_json::from_str(r#"{"address":"[::1]:80","owner":"team-a"}"#).unwrap();
        assert!(bare.labels.is_empty() && bare.weight.is_none());
    }

    #[test]
    fn names_that_would_change_the_key_layout_are_refused() {
        for bad in ["", "a/b", "pay ment"] {
            let err = check_name("instance id", bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid instance id"), "{err}");
        }
        assert!(check_name("service name", "payment-v2.eu_1").is_ok());
    }
}
