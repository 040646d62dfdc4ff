//! The service registry on a real etcd: registered instances appear in every watch with their
//! labels, leave at once when they deregister and within their TTL when they stop keeping
//! their lease alive, come back by themselves when their lease is lost; the watch resumes
//! after etcd is killed and restarted, and reads the registry again when it was cut off while
//! the changes it missed were compacted.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use etcd_client::Client;
use graylane_etcd::registry::{self, DEFAULT_PREFIX, Instance, RegistryWatch, Snapshot};
use graylane_testing::etcd::EtcdServer;

/// Bounds every wait, so a broken registry fails the test instead of hanging it.
const DEADLINE: Duration = Duration::from_secs(20);

fn instance(id: &str, port: u16, labels: &[(&str, &str)]) -> Instance {
    Instance {
        id: id.to_string(),
        address: SocketAddr::from(([127, 0, 0, 1], port)),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        weight: None,
    }
}

async fn client(etcd: &EtcdServer) -> Client {
    Client::connect([etcd.url()], None)
        .await
        .expect("etcd client connects")
}

/// The ids of `service`'s instances in the snapshot.
fn ids(snapshot: &Snapshot, service: &str) -> Vec<String> {
    snapshot
        .get(service)
        .map(|instances| instances.iter().map(|i| i.id.clone()).collect())
        .unwrap_or_default()
}

/// Waits until the watch's snapshot satisfies `check`; returns it and how long that took.
async fn until(
    watch: &RegistryWatch,
    what: &str,
    check: impl Fn(&Snapshot) -> bool,
) -> (Snapshot, Duration) {
    let started = Instant::now();
    let mut receiver = watch.receiver();
    loop {
        let snapshot = receiver.borrow_and_update().clone();
        if check(&snapshot) {
            return (snapshot, started.elapsed());
        }
        let left = DEADLINE.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, receiver.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => panic!("the watch ended while waiting for {what}"),
            Err(_) => panic!(
                "timed out after {DEADLINE:?} waiting for {what}; last snapshot: {:?}",
                watch.snapshot()
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_instances_appear_with_their_labels_and_a_deregistered_one_leaves_at_once() {
    let etcd = EtcdServer::start();
    let c = client(&etcd).await;
    let watch = registry::watch(c.clone(), DEFAULT_PREFIX).await.unwrap();
    assert!(watch.snapshot().is_empty());

    let stable = instance("stable-1", 9001, &[("version", "stable"), ("zone", "a")]);
    let canary = instance("canary-1", 9002, &[("version", "canary")]);
    let ttl = Duration::from_secs(30);
    let r1 = registry::register(c.clone(), DEFAULT_PREFIX, "payment", stable.clone(), ttl)
        .await
        .unwrap();
    let r2 = registry::register(c.clone(), DEFAULT_PREFIX, "payment", canary.clone(), ttl)
        .await
        .unwrap();
    assert_eq!(r2.key(), "/graylane/registry/payment/canary-1");

    let (snapshot, _) = until(&watch, "both instances", |s| {
        ids(s, "payment") == ["canary-1", "stable-1"]
    })
    .await;
    assert_eq!(snapshot["payment"], [canary.clone(), stable.clone()]);

    // A watch started now reads the same registry whole.
    let late = registry::watch(c.clone(), DEFAULT_PREFIX).await.unwrap();
    assert_eq!(late.snapshot(), snapshot);

    r2.deregister().await.unwrap();
    let (snapshot, took) = until(&watch, "the canary to leave", |s| {
        ids(s, "payment") == ["stable-1"]
    })
    .await;
    assert!(
        took < Duration::from_secs(2),
        "deregistering revokes the lease at once (took {took:?}, TTL {ttl:?})"
    );
    assert_eq!(snapshot["payment"], [stable]);

    r1.deregister().await.unwrap();
    until(&watch, "the registry to be empty", |s| s.is_empty()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_stops_keeping_its_lease_alive_leaves_within_its_ttl() {
    let etcd = EtcdServer::start();
    let c = client(&etcd).await;
    let watch = registry::watch(c.clone(), "/fleet-a").await.unwrap();
    let ttl = Duration::from_secs(2);
    let registration = registry::register(
        c.clone(),
        "/fleet-a",
        "payment",
        instance("p1", 9001, &[]),
        ttl,
    )
    .await
    .unwrap();
    until(&watch, "the instance", |s| ids(s, "payment") == ["p1"]).await;

    // Alive well past its TTL while the keep-alive runs.
    tokio::time::sleep(ttl * 2).await;
    assert_eq!(ids(&watch.snapshot(), "payment"), ["p1"]);

    // The process dies without deregistering: the keep-alive task stops with it.
    drop(registration);
    let (_, took) = until(&watch, "the instance to expire", |s| s.is_empty()).await;
    // etcd rounds a lease's expiry to its own tick; a second covers it.
    assert!(
        took <= ttl + Duration::from_secs(1),
        "left {took:?} after its keep-alive stopped (TTL {ttl:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_whose_lease_is_lost_registers_again_by_itself() {
    let etcd = EtcdServer::start();
    let mut c = client(&etcd).await;
    let watch = registry::watch(c.clone(), DEFAULT_PREFIX).await.unwrap();
    let registration = registry::register(
        c.clone(),
        DEFAULT_PREFIX,
        "payment",
        instance("p1", 9001, &[("version", "canary")]),
        Duration::from_secs(3),
    )
    .await
    .unwrap();
    until(&watch, "the instance", |s| ids(s, "payment") == ["p1"]).await;
    let first_lease = registration.lease_id();

    // As if the lease had expired while etcd was unreachable.
    c.lease_revoke(first_lease).await.unwrap();
    until(&watch, "the instance to leave with its lease", |s| {
        s.is_empty()
    })
    .await;
    let (snapshot, _) = until(&watch, "the instance to register again", |s| {
        ids(s, "payment") == ["p1"]
    })
    .await;
    assert_eq!(snapshot["payment"][0].labels["version"], "canary");
    // The key is put under the new lease just before the registration records the lease.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while registration.lease_id() == first_lease && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_ne!(registration.lease_id(), first_lease);
    registration.deregister().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_resumes_after_etcd_restarts_and_sees_what_changed_since() {
    let mut etcd = EtcdServer::start();
    let c = client(&etcd).await;
    let watch = registry::watch(c.clone(), DEFAULT_PREFIX).await.unwrap();
    let ttl = Duration::from_secs(10);
    let before = registry::register(
        c.clone(),
        DEFAULT_PREFIX,
        "payment",
        instance("before", 9001, &[]),
        ttl,
    )
    .await
    .unwrap();
    until(&watch, "the first instance", |s| {
        ids(s, "payment") == ["before"]
    })
    .await;

    tokio::task::block_in_place(|| {
        etcd.kill();
        std::thread::sleep(Duration::from_secs(1));
        etcd.restart();
    });

    // Changes made after the restart, by another client, reach the watch.
    let other = client(&etcd).await;
    let after = registry::register(
        other.clone(),
        DEFAULT_PREFIX,
        "search",
        instance("after", 9002, &[("zone", "b")]),
        ttl,
    )
    .await
    .unwrap();
    let (snapshot, _) = until(&watch, "the instance registered after the restart", |s| {
        ids(s, "search") == ["after"]
    })
    .await;
    assert_eq!(
        ids(&snapshot, "payment"),
        ["before"],
        "the first instance kept its lease alive across the restart"
    );

    before.deregister().await.unwrap();
    until(
        &watch,
        "the first instance to leave after the restart",
        |s| s.get("payment").is_none(),
    )
    .await;

    after.deregister().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_stays_through_an_etcd_restart_for_longer_than_its_ttl() {
    let mut etcd = EtcdServer::start();
    let c = client(&etcd).await;
    let watch = registry::watch(c.clone(), DEFAULT_PREFIX).await.unwrap();
    let ttl = Duration::from_secs(2);
    let kept = registry::register(
        c.clone(),
        DEFAULT_PREFIX,
        "payment",
        instance("kept", 9003, &[]),
        ttl,
    )
    .await
    .unwrap();
    until(&watch, "the instance", |s| ids(s, "payment") == ["kept"]).await;
    tokio::task::block_in_place(|| {
        etcd.kill();
        etcd.restart();
    });
    // Twice the TTL after the restart: only a keep-alive that found etcd again holds it.
    tokio::time::sleep(ttl * 2).await;
    let (snapshot, _) = until(&watch, "the kept instance", |s| {
        ids(s, "payment") == ["kept"]
    })
    .await;
    assert!(snapshot["payment"][0].labels.is_empty());
    kept.deregister().await.unwrap();
    until(&watch, "the instance to leave", |s| s.is_empty()).await;
}

/// A TCP relay to etcd that a test can cut (every connection through it dropped, new ones
/// closed at once) and restore: the watch's side of a network partition.
struct Relay {
    port: u16,
    cut: tokio::sync::watch::Sender<bool>,
}

impl Relay {
    async fn start(etcd_port: u16) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (cut, cut_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if *cut_rx.borrow() {
                    continue;
                }
                let mut cut_rx = cut_rx.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", etcd_port)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Relay { port, cut }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_cut_off_while_its_revision_was_compacted_reads_the_registry_again() {
    let etcd = EtcdServer::start();
    let relay = Relay::start(etcd.port).await;
    let watched = Client::connect([relay.url()], None).await.unwrap();
    let watch = registry::watch(watched, DEFAULT_PREFIX).await.unwrap();
    let mut c = client(&etcd).await;
    // Written as an app would, without the library: the documented key and value.
    c.put(
        "/graylane/registry/payment/old",
        r#"{"address":"127.0.0.1:9001"}"#,
        None,
    )
    .await
    .unwrap();
    until(&watch, "the old instance", |s| ids(s, "payment") == ["old"]).await;

    relay.set_cut(true);
    c.put(
        "/graylane/registry/payment/new",
        r#"{"address":"127.0.0.1:9002","labels":{"version":"canary"}}"#,
        None,
    )
    .await
    .unwrap();
    let deleted = c
        .delete("/graylane/registry/payment/old", None)
        .await
        .unwrap();
    c.compact(deleted.header().unwrap().revision(), None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        ids(&watch.snapshot(), "payment"),
        ["old"],
        "cut off, the watch keeps the last registry it saw"
    );

    relay.set_cut(false);
    let (snapshot, _) = until(&watch, "only the new instance", |s| {
        ids(s, "payment") == ["new"]
    })
    .await;
    assert_eq!(snapshot["payment"][0].labels["version"], "canary");

    // And it follows changes after reading the registry again.
    c.delete("/graylane/registry/payment/new", None)
        .await
        .unwrap();
    until(&watch, "the registry to be empty", |s| s.is_empty()).await;
}
