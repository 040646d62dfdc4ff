//! `Fleet` against a real etcd: membership, leader election and its fencing, failover when the
//! leader leaves or dies, and the watch that tells each node what the others changed, through
//! etcd going away and coming back.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{connect, new_audit, new_revision, open, wait_for};
use etcd_client::GetOptions;
use graylane_etcd::{EtcdStore, Fleet, FleetEvent, NodeInfo};
use graylane_store::{Expect, RevisionSource, Store, StoreError};
use graylane_testing::etcd::EtcdServer;
use tokio::sync::mpsc::UnboundedReceiver;

const P: &str = "/graylane";
/// The shortest lease the fleet takes: failover tests wait for it to run out.
const TTL: Duration = Duration::from_secs(2);
const BOUND: Duration = Duration::from_secs(10);

/// One fleet node: its own connection (and client runtime), store and fleet membership.
struct Node {
    store: EtcdStore,
    fleet: Arc<Fleet>,
    events: UnboundedReceiver<FleetEvent>,
}

impl Node {
    fn join(etcd: &EtcdServer, name: &str) -> Node {
        let store = open(etcd, P, "prod");
        let (fleet, events) = Fleet::join(&store, "prod", info(name), TTL)
            .unwrap_or_else(|e| panic!("{name} joining: {e}"));
        Node {
            store,
            fleet,
            events,
        }
    }

    /// Stops the node as `kill -9` would: its client runtime, and with it the lease's
    /// keep-alive, stops, and nothing is given back to etcd.
    fn kill(self) {
        drop(self);
    }

    /// The events received so far.
    fn drain(&mut self) -> Vec<FleetEvent> {
        let mut out = Vec::new();
        while let Ok(e) = self.events.try_recv() {
            out.push(e);
        }
        out
    }

    /// Waits for an event `want` accepts, collecting everything received on the way.
    fn wait_event(&mut self, what: &str, mut want: impl FnMut(&FleetEvent) -> bool) -> FleetEvent {
        let mut seen = Vec::new();
        let deadline = Instant::now() + BOUND;
        loop {
            while let Ok(e) = self.events.try_recv() {
                if want(&e) {
                    return e;
                }
                seen.push(e);
            }
            assert!(
                Instant::now() < deadline,
                "{}: no {what} within {BOUND:?}; received {seen:?}",
                self.fleet.name()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn info(name: &str) -> NodeInfo {
    NodeInfo {
        name: name.to_string(),
        admin: Some(format!("127.0.0.1:9{}", name.len())),
    }
}

/// The one node that leads, once exactly one does and every node names it.
fn sole_leader(nodes: &[&Node]) -> Option<usize> {
    let leading: Vec<usize> = (0..nodes.len())
        .filter(|&i| nodes[i].fleet.is_leader())
        .collect();
    let [i] = leading[..] else { return None };
    let name = nodes[i].fleet.name();
    nodes
        .iter()
        .all(|n| n.fleet.cluster().leader.as_deref() == Some(name))
        .then_some(i)
}

fn wait_sole_leader(nodes: &[&Node]) -> usize {
    let mut leader = None;
    wait_for("exactly one node leads and all name it", BOUND, || {
        leader = sole_leader(nodes);
        leader.is_some()
    });
    leader.unwrap_or_default()
}

/// The lease the leader key is held under, read around graylane.
fn leader_lease(etcd: &EtcdServer) -> i64 {
    let raw = connect(etcd, "/raw");
    raw.call("reading the leader key", |mut c| async move {
        let r = c.get("/graylane/env/prod/leader", None).await?;
        Ok(r.kvs().first().map_or(0, |kv| kv.lease()))
    })
    .unwrap()
}

fn revoke(etcd: &EtcdServer, lease: i64) {
    let raw = connect(etcd, "/raw");
    raw.call("revoking a lease", move |mut c| async move {
        c.lease_revoke(lease).await.map(|_| ())
    })
    .unwrap();
}

fn leader_write(store: &EtcdStore, state: &[u8]) -> Result<u64, StoreError> {
    let version = store
        .release_versions("prod")?
        .into_iter()
        .find(|r| r.service == "web")
        .map_or(0, |r| r.version);
    let expect = Expect {
        version,
        leader: true,
    };
    store
        .record_release_if(
            "prod",
            "web",
            state,
            expect,
            new_audit(1, "release.promote", "web"),
        )
        .map(|r| r.version)
}

#[test]
fn of_three_nodes_exactly_one_leads_and_every_node_names_it_and_lists_all_members() {
    let etcd = EtcdServer::start();
    let nodes = [
        Node::join(&etcd, "a"),
        Node::join(&etcd, "b"),
        Node::join(&etcd, "c"),
    ];
    let all: Vec<&Node> = nodes.iter().collect();
    let took = Instant::now();
    let leader = wait_sole_leader(&all);
    assert!(
        took.elapsed() < Duration::from_secs(2),
        "{:?}",
        took.elapsed()
    );
    wait_for("every node lists the three members", BOUND, || {
        nodes.iter().all(|n| {
            let names: Vec<String> = n
                .fleet
                .cluster()
                .members
                .into_iter()
                .map(|m| m.name)
                .collect();
            names == ["a", "b", "c"]
        })
    });
    let view = nodes[(leader + 1) % 3].fleet.cluster();
    assert!(view.store_reachable);
    let member = view.members.iter().find(|m| m.name == "b").unwrap();
    assert_eq!(member.admin.as_deref(), Some("127.0.0.1:91"));
    // The lead holds: a second later it is still the same single leader.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(sole_leader(&all), Some(leader));
}

#[test]
fn a_second_node_with_a_taken_name_is_refused_with_a_clear_error() {
    let etcd = EtcdServer::start();
    let first = Node::join(&etcd, "edge-1");
    let store = open(&etcd, P, "prod");
    let err = Fleet::join(&store, "prod", info("edge-1"), TTL)
        .err()
        .expect("a taken name must be refused");
    let message = err.to_string();
    assert!(message.contains("`edge-1`"), "{message}");
    assert!(message.contains("another --node name"), "{message}");
    // The first node is undisturbed and still the only member.
    wait_for("edge-1 leads", BOUND, || first.fleet.is_leader());
    std::thread::sleep(Duration::from_millis(1_500));
    let names: Vec<String> = first
        .fleet
        .cluster()
        .members
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names, ["edge-1"]);
    assert!(first.fleet.is_leader());
    // Once it has left, the name is free again.
    first.fleet.leave();
    let (again, _events) = Fleet::join(&store, "prod", info("edge-1"), TTL).unwrap();
    wait_for("the new edge-1 leads", BOUND, || again.is_leader());
    again.leave();
}

#[test]
fn when_the_leader_leaves_another_node_leads_within_a_second() {
    let etcd = EtcdServer::start();
    let nodes = [
        Node::join(&etcd, "a"),
        Node::join(&etcd, "b"),
        Node::join(&etcd, "c"),
    ];
    let leader = wait_sole_leader(&nodes.iter().collect::<Vec<_>>());
    let gone = nodes[leader].fleet.name().to_string();
    let left = Instant::now();
    nodes[leader].fleet.leave();
    assert!(!nodes[leader].fleet.is_leader());
    let rest: Vec<&Node> = (0..3).filter(|&i| i != leader).map(|i| &nodes[i]).collect();
    wait_sole_leader(&rest);
    let took = left.elapsed();
    assert!(took < Duration::from_millis(1_000), "took {took:?}");
    wait_for("the others stop listing the node that left", BOUND, || {
        rest.iter()
            .all(|n| n.fleet.cluster().members.iter().all(|m| m.name != gone))
    });
}

#[test]
fn when_the_leader_is_killed_another_node_leads_within_the_lease_ttl() {
    let etcd = EtcdServer::start();
    let mut nodes: Vec<Node> = ["a", "b", "c"]
        .iter()
        .map(|n| Node::join(&etcd, n))
        .collect();
    let leader = wait_sole_leader(&nodes.iter().collect::<Vec<_>>());
    let dead = nodes.remove(leader);
    let dead_name = dead.fleet.name().to_string();
    // A release the leader was moving, to check the follower can move it afterwards.
    leader_write(&dead.store, b"step-1").unwrap();
    let killed = Instant::now();
    dead.kill();
    let rest: Vec<&Node> = nodes.iter().collect();
    let new = wait_sole_leader(&rest);
    let took = killed.elapsed();
    assert!(took < TTL + Duration::from_secs(1), "took {took:?}");
    assert_ne!(rest[new].fleet.name(), dead_name);
    leader_write(&rest[new].store, b"step-2").unwrap();
    assert_eq!(rest[new].store.releases("prod").unwrap()[0].1, b"step-2");
    wait_for(
        "the dead node's record expires with its lease",
        BOUND,
        || {
            rest.iter().all(|n| {
                n.fleet
                    .cluster()
                    .members
                    .iter()
                    .all(|m| m.name != dead_name)
            })
        },
    );
}

#[test]
fn a_deposed_leader_whose_lease_expired_cannot_write_and_the_new_leader_can() {
    let etcd = EtcdServer::start();
    let nodes = [Node::join(&etcd, "a"), Node::join(&etcd, "b")];
    let all: Vec<&Node> = nodes.iter().collect();
    let a = wait_sole_leader(&all);
    let b = 1 - a;
    leader_write(&nodes[a].store, b"by-a").unwrap();

    // The lease runs out behind the leader's back (etcd expired it while the node was paused).
    revoke(&etcd, leader_lease(&etcd));
    let err = leader_write(&nodes[a].store, b"stale").unwrap_err();
    assert!(matches!(err, StoreError::NotLeader), "{err:?}");

    wait_for("b leads", BOUND, || sole_leader(&all) == Some(b));
    let before = nodes[b].store.audit("prod", 100).unwrap();
    let err = leader_write(&nodes[a].store, b"stale").unwrap_err();
    assert!(matches!(err, StoreError::NotLeader), "{err:?}");
    assert_eq!(
        nodes[b].store.audit("prod", 100).unwrap(),
        before,
        "nothing written"
    );
    assert_eq!(nodes[b].store.releases("prod").unwrap()[0].1, b"by-a");
    leader_write(&nodes[b].store, b"by-b").unwrap();
    assert_eq!(nodes[a].store.releases("prod").unwrap()[0].1, b"by-b");

    // The deposed node takes a new lease and is a member again, following b.
    wait_for("a is listed again", BOUND, || {
        nodes[b]
            .fleet
            .cluster()
            .members
            .iter()
            .any(|m| m.name == nodes[a].fleet.name())
    });
    assert!(!nodes[a].fleet.is_leader());
}

#[test]
fn the_watch_delivers_releases_and_revisions_written_through_another_node() {
    let etcd = EtcdServer::start();
    let mut a = Node::join(&etcd, "a");
    let b = Node::join(&etcd, "b");
    a.drain();

    let rev = b
        .store
        .add_revision("prod", new_revision(1, RevisionSource::Api))
        .unwrap();
    let event = a.wait_event("revision", |e| matches!(e, FleetEvent::Revision(_)));
    assert_eq!(event, FleetEvent::Revision(rev.n));
    wait_for("a knows the newest revision", BOUND, || {
        a.fleet.cluster().latest_revision == rev.n
    });

    let expect = Expect {
        version: 0,
        leader: false,
    };
    let written = b
        .store
        .record_release_if(
            "prod",
            "web",
            b"step-1",
            expect,
            new_audit(1, "release.start", "web"),
        )
        .unwrap();
    let event = a.wait_event("release", |e| matches!(e, FleetEvent::Release { .. }));
    assert_eq!(
        event,
        FleetEvent::Release {
            service: "web".into(),
            state: b"step-1".to_vec(),
            version: written.version,
        },
        "the version is the one a conditional write names"
    );

    // A node joining later is told the current state first.
    let mut c = Node::join(&etcd, "c");
    let first = c.drain();
    assert!(first.contains(&FleetEvent::Revision(1)), "{first:?}");
    assert!(first.contains(&event), "{first:?}");
}

#[test]
fn the_watch_goes_on_after_etcd_restarts_without_missing_a_change() {
    let mut etcd = EtcdServer::start();
    let mut a = Node::join(&etcd, "a");
    let b = Node::join(&etcd, "b");
    b.store
        .add_revision("prod", new_revision(1, RevisionSource::Api))
        .unwrap();
    a.wait_event("revision 1", |e| *e == FleetEvent::Revision(1));

    etcd.kill();
    std::thread::sleep(Duration::from_secs(1));
    etcd.restart();
    // Written as soon as etcd is back, likely before a's watch is: it resumes from where it
    // stopped, so it sees every one of them, once and in order.
    wait_for("b writes again", BOUND, || {
        b.store
            .add_revision("prod", new_revision(2, RevisionSource::Api))
            .is_ok()
    });
    for i in 3..=20 {
        b.store
            .add_revision("prod", new_revision(i, RevisionSource::Api))
            .unwrap();
    }
    b.store
        .record_release(
            "prod",
            "web",
            b"after",
            new_audit(2, "release.start", "web"),
        )
        .unwrap();
    let mut revisions = Vec::new();
    let event = a.wait_event("the release", |e| {
        if let FleetEvent::Revision(n) = e {
            revisions.push(*n);
        }
        matches!(e, FleetEvent::Release { .. })
    });
    assert_eq!(revisions, (2..=20).collect::<Vec<u64>>());
    let FleetEvent::Release { service, state, .. } = event else {
        unreachable!()
    };
    assert_eq!(
        (service.as_str(), state.as_slice()),
        ("web", b"after".as_slice())
    );
    assert_eq!(a.fleet.cluster().latest_revision, 20);
}

#[test]
fn store_reachable_is_false_while_etcd_is_down_and_true_again_after() {
    let mut etcd = EtcdServer::start();
    let nodes = [Node::join(&etcd, "a"), Node::join(&etcd, "b")];
    let leader = wait_sole_leader(&nodes.iter().collect::<Vec<_>>());
    assert!(nodes.iter().all(|n| n.fleet.cluster().store_reachable));

    etcd.kill();
    wait_for("both nodes say the store is unreachable", BOUND, || {
        nodes.iter().all(|n| !n.fleet.cluster().store_reachable)
    });
    assert!(
        !nodes[leader].fleet.is_leader(),
        "a leader that cannot reach etcd stops acting as one"
    );
    // The view stays: a node serves on with what it last knew.
    let view = nodes[0].fleet.cluster();
    assert_eq!(view.members.len(), 2);

    etcd.restart();
    wait_for("both nodes reach the store again", BOUND, || {
        nodes.iter().all(|n| n.fleet.cluster().store_reachable)
    });
    wait_sole_leader(&nodes.iter().collect::<Vec<_>>());
}

#[test]
fn the_leader_key_and_member_record_live_under_the_nodes_lease_and_the_environment_record_does_not()
{
    let etcd = EtcdServer::start();
    let a = Node::join(&etcd, "a");
    wait_for("a leads", BOUND, || a.fleet.is_leader());
    let raw = connect(&etcd, "/raw");
    let keys = raw
        .call("reading the fleet keys", |mut c| async move {
            let r = c
                .get("/graylane/env/prod/", Some(GetOptions::new().with_prefix()))
                .await?;
            Ok(r.kvs()
                .iter()
                .map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), kv.lease()))
                .collect::<Vec<_>>())
        })
        .unwrap();
    let lease_of = |key: &str| keys.iter().find(|(k, _)| k == key).map(|(_, l)| *l);
    let member = lease_of("/graylane/env/prod/members/a").expect("a's record");
    assert_ne!(member, 0);
    assert_eq!(lease_of("/graylane/env/prod/leader"), Some(member));
    assert_eq!(
        lease_of("/graylane/env/prod/meta"),
        Some(0),
        "not under a lease"
    );
}

#[test]
fn a_nodes_status_and_report_reach_the_others_and_its_report_goes_when_it_leaves() {
    let etcd = EtcdServer::start();
    let mut a = Node::join(&etcd, "a");
    let b = Node::join(&etcd, "b");
    b.fleet.set_status(7, true);
    b.fleet.set_report(b"{\"requests\":3}".to_vec());
    wait_for("a sees b serving revision 7", BOUND, || {
        a.fleet
            .cluster()
            .members
            .iter()
            .any(|m| m.name == "b" && m.config_revision == 7 && m.ready)
    });
    let event = a.wait_event("b's report", |e| matches!(e, FleetEvent::Report { .. }));
    assert_eq!(
        event,
        FleetEvent::Report {
            node: "b".into(),
            report: b"{\"requests\":3}".to_vec(),
        }
    );
    // A node hears its own report too: after a restart, its previous life's is in etcd.
    a.fleet.set_report(b"{}".to_vec());
    let event = a.wait_event(
        "a's own report",
        |e| matches!(e, FleetEvent::Report { node, .. } if node == "a"),
    );
    assert_eq!(
        event,
        FleetEvent::Report {
            node: "a".into(),
            report: b"{}".to_vec(),
        }
    );
    b.fleet.leave();
    let event = a.wait_event("b's report gone", |e| {
        matches!(e, FleetEvent::ReportGone(_))
    });
    assert_eq!(event, FleetEvent::ReportGone("b".into()));
    wait_for("a no longer lists b", BOUND, || {
        a.fleet.cluster().members.iter().all(|m| m.name != "b")
    });
}

#[test]
fn a_watch_that_fell_behind_a_compaction_reads_everything_again() {
    let mut etcd = EtcdServer::start();
    let mut a = Node::join(&etcd, "a");
    let b = Node::join(&etcd, "b");
    b.store
        .add_revision("prod", new_revision(1, RevisionSource::Api))
        .unwrap();
    a.wait_event("revision 1", |e| *e == FleetEvent::Revision(1));

    etcd.kill();
    // Hold a's client runtime (one thread) while etcd comes back, so that a's watch resumes
    // only after the revisions it missed were compacted away.
    let (started_tx, started) = std::sync::mpsc::channel();
    let (resume, resume_rx) = std::sync::mpsc::channel::<()>();
    a.store.etcd().handle().spawn(async move {
        let _ = started_tx.send(());
        let _ = resume_rx.recv_timeout(BOUND);
    });
    started.recv_timeout(BOUND).unwrap();
    etcd.restart();
    wait_for("b writes again", BOUND, || {
        b.store
            .add_revision("prod", new_revision(2, RevisionSource::Api))
            .is_ok()
    });
    b.store
        .add_revision("prod", new_revision(3, RevisionSource::Api))
        .unwrap();
    let written = b
        .store
        .record_release(
            "prod",
            "web",
            b"missed",
            new_audit(1, "release.start", "web"),
        )
        .unwrap();
    assert_eq!(written.seq, 1);
    let raw = connect(&etcd, "/raw");
    raw.call("compacting", |mut c| async move {
        let now = c.get("/", None).await?.header().map_or(0, |h| h.revision());
        c.compact(now, None).await.map(|_| ())
    })
    .unwrap();
    resume.send(()).unwrap();

    a.wait_event("the resync", |e| *e == FleetEvent::Resynced);
    let after = a.wait_event("the release it missed", |e| {
        matches!(e, FleetEvent::Release { .. })
    });
    assert!(
        matches!(&after, FleetEvent::Release { state, .. } if state == b"missed"),
        "{after:?}"
    );
    wait_for("a knows revision 3", BOUND, || {
        a.fleet.cluster().latest_revision == 3
    });
    // And it goes on watching from there.
    b.store
        .add_revision("prod", new_revision(4, RevisionSource::Api))
        .unwrap();
    a.wait_event("revision 4", |e| *e == FleetEvent::Revision(4));
}

#[test]
fn the_leader_compacts_history_older_than_one_period() {
    let etcd = EtcdServer::start();
    let a = Node::join(&etcd, "a");
    wait_for("a to lead", BOUND, || a.fleet.is_leader());
    a.fleet.compact_history(Duration::from_millis(300));
    let url = etcd.url();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let old_revision_readable = || {
        runtime.block_on(async {
            let mut c = etcd_client::Client::connect([url.as_str()], None)
                .await
                .unwrap();
            c.get("x", Some(etcd_client::GetOptions::new().with_revision(2)))
                .await
                .is_ok()
        })
    };
    assert!(
        old_revision_readable(),
        "revision 2 is there before any compaction"
    );
    wait_for("revision 2 to be compacted away", BOUND, || {
        !old_revision_readable()
    });
}
