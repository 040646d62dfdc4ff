//! Fleet mode with real parts: a real etcd (Debian's etcd-server) on loopback, three
//! `graylane serve --etcd` nodes, real upstreams. Each test kills something a production fleet
//! loses (etcd, the leader, a node's link to etcd) and checks what users and operators see.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::fleet::FleetNode;
use common::*;
use graylane_testing::etcd::EtcdServer;
use http::{Method, StatusCode};

const TOKEN: &str = "fleet-test-token";

const CONFIG: &str = r#"
listeners:
  - bind: 127.0.0.1:1
admin:
  bind: 127.0.0.1:2
  token_env: GRAYLANE_ADMIN_TOKEN
services:
  - name: payment
    match: { path_prefix: /api/payment }
    versions:
      stable: { endpoints: ["{stable}"] }
      canary: { endpoints: ["{canary}"] }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      bucket_by: "header:X-User-Id"
      steps:
        - weight: 10
          pause: {first_pause}
        - weight: 50
          pause: manual
        - weight: 100
"#;

/// Three steps without pauses, moved on (or rolled back) by the analysis alone.
const ANALYSED: &str = r#"
listeners:
  - bind: 127.0.0.1:1
admin:
  bind: 127.0.0.1:2
  token_env: GRAYLANE_ADMIN_TOKEN
services:
  - name: payment
    match: { path_prefix: /api/payment }
    versions:
      stable: { endpoints: ["{stable}"] }
      canary: { endpoints: ["{canary}"] }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      bucket_by: "header:X-User-Id"
      steps:
        - weight: 30
        - weight: 60
        - weight: 100
      analysis:
        interval: 500ms
        min_requests: 40
        success_needed: 2
        failure_limit: 1
        checks:
          - metric: error_rate
            max_increase: 0.02
"#;

/// etcd, two upstreams, the shared configuration file, and the nodes.
struct Fleet {
    etcd: EtcdServer,
    dir: PathBuf,
    file: PathBuf,
    stable: Upstream,
    canary: Upstream,
    nodes: Vec<FleetNode>,
    ttl: &'static str,
}

impl Fleet {
    fn new(test: &str, template: &str, first_pause: &str) -> Fleet {
        Fleet::new_filled(
            test,
            &fill(template, &[("first_pause", first_pause.to_string())]),
        )
    }

    /// A fleet whose configuration is `template` with `{stable}` and `{canary}` filled in.
    fn new_filled(test: &str, template: &str) -> Fleet {
        let etcd = EtcdServer::start();
        let dir = temp_dir(test);
        let file = dir.join("graylane.yaml");
        let (stable, canary) = (Upstream::start("stable"), Upstream::start("canary"));
        let yaml = fill(
            template,
            &[
                ("stable", stable.addr.to_string()),
                ("canary", canary.addr.to_string()),
            ],
        );
        write_atomic(&file, &yaml);
        Fleet {
            etcd,
            dir,
            file,
            stable,
            canary,
            nodes: Vec::new(),
            ttl: "3s",
        }
    }

    /// Starts node `name` (with the configuration file when `with_config`) and returns its
    /// index; does not wait for it.
    fn spawn(&mut self, name: &str, with_config: bool, endpoints: &str) -> usize {
        let config = ["--config", self.file.to_str().unwrap()].map(str::to_string);
        let extra: Vec<&str> = if with_config {
            config.iter().map(String::as_str).collect()
        } else {
            Vec::new()
        };
        self.spawn_with(name, endpoints, &extra, "")
    }

    /// Starts node `name` with the configuration file, `extra` arguments and, unless empty,
    /// `password` for etcd.
    fn spawn_with(&mut self, name: &str, endpoints: &str, extra: &[&str], password: &str) -> usize {
        let mut args = vec![
            "--env",
            "prod",
            "--etcd-lease-ttl",
            self.ttl,
            "--watch-interval",
            "100ms",
        ];
        args.extend(extra);
        let mut env = vec![("GRAYLANE_ADMIN_TOKEN", TOKEN)];
        if !password.is_empty() {
            env.push(("GRAYLANE_ETCD_PASSWORD", password));
        }
        let node = FleetNode::spawn(&self.dir, name, endpoints, &args, &env);
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    async fn start(test: &str, first_pause: &str) -> Fleet {
        Fleet::start_with(test, CONFIG, first_pause).await
    }

    async fn start_with(test: &str, template: &str, first_pause: &str) -> Fleet {
        let mut fleet = Fleet::new(test, template, first_pause);
        let url = fleet.etcd.url();
        for name in ["a", "b", "c"] {
            fleet.spawn(name, true, &url);
        }
        for i in 0..3 {
            fleet.ready(i).await;
        }
        fleet
    }

    async fn ready(&self, i: usize) {
        self.nodes[i].ready().await;
    }

    async fn api(&self, i: usize, method: Method, path: &str, body: &str) -> Reply {
        let auth = format!("Bearer {TOKEN}");
        request(
            self.nodes[i].admin,
            method,
            path,
            &[
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
            ],
            body.to_string(),
        )
        .await
    }

    async fn try_api(&self, i: usize, path: &str) -> Option<serde_json::Value> {
        self.nodes[i].get_json(TOKEN, path).await
    }

    async fn release(&self, i: usize) -> serde_json::Value {
        self.try_api(i, "/api/v1/releases/payment")
            .await
            .expect("the release")
    }

    async fn cluster(&self, i: usize) -> serde_json::Value {
        self.try_api(i, "/api/v1/cluster")
            .await
            .expect("the cluster")
    }

    /// Waits until every running node in `nodes` shows the release at `step` in `state`.
    async fn converged(&self, nodes: &[usize], step: u64, state: &str) {
        self.converged_within(Duration::from_secs(5), nodes, step, state)
            .await;
    }

    async fn converged_within(&self, limit: Duration, nodes: &[usize], step: u64, state: &str) {
        for &i in nodes {
            eventually_within(
                limit,
                &format!("node {} to show step {step} {state}", self.nodes[i].name),
                || async move {
                    let r = self.try_api(i, "/api/v1/releases/payment").await?;
                    (r["step"] == step && r["state"] == state).then_some(())
                },
            )
            .await;
        }
    }

    /// The leader's index, once every node in `nodes` agrees on it.
    async fn leader(&self, nodes: &[usize]) -> usize {
        let name = eventually_within(Duration::from_secs(15), "one agreed leader", || async {
            let mut names = Vec::new();
            for &i in nodes {
                names.push(
                    self.try_api(i, "/api/v1/cluster").await?["leader"]
                        .as_str()?
                        .to_string(),
                );
            }
            names.dedup();
            (names.len() == 1).then(|| names.remove(0))
        })
        .await;
        self.nodes.iter().position(|n| n.name == name).unwrap()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends requests round-robin through `proxies` until `stop`, counting answers that are not
/// 200 (and failed exchanges) as failures.
fn load(
    proxies: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
) -> (tokio::task::JoinHandle<()>, Arc<AtomicU64>, Arc<AtomicU64>) {
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (s, f) = (Arc::clone(&sent), Arc::clone(&failed));
    let task = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut n = 0usize;
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let proxy = proxies[n % proxies.len()];
            let user = format!("u-{n}");
            let ok = try_get(proxy, "/api/payment/x", &[("x-user-id", user.as_str())])
                .await
                .is_ok_and(|r| r.status == StatusCode::OK);
            s.fetch_add(1, Ordering::Relaxed);
            if !ok {
                f.fetch_add(1, Ordering::Relaxed);
            }
            n += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    (task, sent, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_sent_to_any_node_takes_effect_on_every_node_and_one_leader_advances_timed_steps()
{
    let fleet = Fleet::start("fleet-command", "1s").await;
    assert_eq!(fleet.cluster(0).await["mode"], "fleet");
    // Each node hears of the others through the watch, a moment after they are ready.
    let view = &fleet;
    eventually("node a to list every member", || async move {
        let cluster = view.try_api(0, "/api/v1/cluster").await?;
        let names: Vec<&str> = cluster["members"]
            .as_array()?
            .iter()
            .filter_map(|m| m["name"].as_str())
            .collect();
        (names == ["a", "b", "c"]).then_some(())
    })
    .await;
    let leader = fleet.leader(&[0, 1, 2]).await;
    // The 1 s pause of step 0 ends once, by the leader's hand, and every node follows.
    fleet.converged(&[0, 1, 2], 1, "progressing").await;
    let timed = fleet
        .api(0, Method::GET, "/api/v1/audit?action=tick&limit=10", "")
        .await
        .json();
    assert_eq!(
        timed["entries"].as_array().map(Vec::len),
        Some(1),
        "{timed}"
    );
    // A command to a follower is seen by all.
    let follower = (leader + 1) % 3;
    let r = fleet
        .api(
            follower,
            Method::POST,
            "/api/v1/releases/payment/promote",
            r#"{"reason":"looks good"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    fleet.converged(&[0, 1, 2], 2, "completed").await;
    // And each node routes by it: everyone reaches the candidate through every node.
    for node in &fleet.nodes {
        for user in ["u-1", "u-2", "u-3"] {
            let r = get(node.proxy, "/api/payment/x", &[("x-user-id", user)]).await;
            assert_eq!(r.version(), Some("canary"), "via {}", node.name);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_etcd_down_under_load_no_request_fails_commands_get_503_and_nothing_advances_until_it_is_back()
 {
    let mut fleet = Fleet::start("fleet-etcd-down", "2s").await;
    fleet.leader(&[0, 1, 2]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let proxies = fleet.nodes.iter().map(|n| n.proxy).collect();
    let (load_task, sent, failed) = load(proxies, Arc::clone(&stop));
    tokio::time::sleep(Duration::from_millis(300)).await;
    fleet.etcd.kill();
    let down = Instant::now();
    // A command is refused, naming the store, and changes nothing.
    let r = fleet
        .api(
            1,
            Method::POST,
            "/api/v1/releases/payment/pause",
            r#"{"reason":"x"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert!(r.text().contains("etcd"), "{}", r.text());
    // The 2 s pause runs out while etcd is away: no node may move the release.
    while down.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for i in 0..3 {
            let r = fleet.release(i).await;
            assert_eq!(
                r["step"], 0,
                "node {} moved with etcd down: {r}",
                fleet.nodes[i].name
            );
            assert_eq!(r["state"], "progressing");
        }
    }
    let cluster = fleet.cluster(2).await;
    assert_eq!(cluster["store_reachable"], false, "{cluster}");
    fleet.etcd.restart();
    // Everything resumes by itself: the overdue step is taken once, by the leader.
    fleet
        .converged_within(Duration::from_secs(20), &[0, 1, 2], 1, "progressing")
        .await;
    stop.store(true, Ordering::Relaxed);
    load_task.await.unwrap();
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(sent > 200, "only {sent} requests were sent");
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed while etcd was down"
    );
    assert!(fleet.stable.received() + fleet.canary.received() >= sent);
    // Nothing committed was lost, and commands work again.
    let audit = fleet
        .api(0, Method::GET, "/api/v1/audit?limit=50", "")
        .await
        .json();
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"start") && actions.contains(&"config.apply"),
        "{actions:?}"
    );
    assert_eq!(
        actions.iter().filter(|a| **a == "tick").count(),
        1,
        "{actions:?}"
    );
    let r = fleet
        .api(
            2,
            Method::POST,
            "/api/v1/releases/payment/promote",
            r#"{"reason":"back"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    fleet.converged(&[0, 1, 2], 2, "completed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_within_the_lease_ttl_and_the_release_keeps_its_step_and_pause()
{
    let fleet = Fleet::start("fleet-leader-killed", "6s").await;
    let leader = fleet.leader(&[0, 1, 2]).await;
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let before = fleet.release(others[0]).await;
    assert_eq!(before["step"], 0);
    fleet.nodes[leader].process.signal("KILL");
    let killed = Instant::now();
    let next = eventually_within(Duration::from_secs(10), "another node to lead", || async {
        let c = fleet.try_api(others[0], "/api/v1/cluster").await?;
        let name = c["leader"].as_str()?.to_string();
        (name != fleet.nodes[leader].name).then_some(name)
    })
    .await;
    let failover = killed.elapsed();
    // The TTL is 3 s: the lease runs out, then a follower wins within its next campaign.
    assert!(
        failover < Duration::from_secs(5),
        "failover took {failover:?}"
    );
    assert!(others.iter().any(|&i| fleet.nodes[i].name == next));
    // Same step, and the pause keeps its end: it moves on about 6 s after it began, not 6 s
    // after the new leader took over.
    let r = fleet.release(others[1]).await;
    assert_eq!(r["step"], 0, "{r}");
    fleet
        .converged_within(Duration::from_secs(10), &others, 1, "progressing")
        .await;
    let moved = killed.elapsed();
    assert!(
        moved < Duration::from_secs(8),
        "the step moved {moved:?} after the kill"
    );
    let audit = fleet
        .api(
            others[0],
            Method::GET,
            "/api/v1/audit?action=tick&limit=10",
            "",
        )
        .await
        .json();
    assert_eq!(
        audit["entries"].as_array().map(Vec::len),
        Some(1),
        "{audit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_late_without_a_file_catches_up_before_it_is_ready() {
    let mut fleet = Fleet::new("fleet-late", CONFIG, "manual");
    let url = fleet.etcd.url();
    // A node with no configuration anywhere waits, saying it is not ready.
    let waiting = fleet.spawn("c", false, &url);
    let admin = fleet.nodes[waiting].admin;
    let r = eventually("the waiting node to answer", || async {
        try_get(admin, "/readyz", &[]).await.ok()
    })
    .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    fleet.spawn("a", true, &url);
    fleet.ready(1).await;
    // Changes made before the late node serves: a promote and a new revision.
    let r = fleet
        .api(
            1,
            Method::POST,
            "/api/v1/releases/payment/promote",
            r#"{"reason":"go"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    fleet.ready(0).await;
    let late = fleet.release(0).await;
    assert_eq!(late["step"], 1, "{late}");
    let cluster = fleet.cluster(0).await;
    let me = cluster["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "c")
        .cloned()
        .unwrap();
    assert_eq!(
        me["config_revision"], cluster["latest_revision"],
        "{cluster}"
    );
    assert_eq!(me["lagging"], false);
    // It routes by the shared state.
    let r = get(
        fleet.nodes[0].proxy,
        "/api/payment/x",
        &[("x-user-id", "u-1")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_with_a_taken_name_refuses_to_start() {
    let mut fleet = Fleet::start("fleet-same-name", "manual").await;
    let url = fleet.etcd.url();
    let twin = fleet.spawn("b", true, &url);
    let status = fleet.nodes[twin].process.wait_exit(Duration::from_secs(20));
    assert!(!status.success());
    let logs = fleet.nodes[twin].process.logs();
    assert!(logs.contains("node name `b` is taken"), "{logs}");
    // The running `b` is untouched: the fleet still has its three members (as b hears them).
    let view = &fleet;
    eventually("b to list three members", || async move {
        let cluster = view.try_api(1, "/api/v1/cluster").await?;
        (cluster["members"].as_array()?.len() == 3).then_some(())
    })
    .await;
    assert!(
        fleet.nodes[1].process.try_exit().is_none(),
        "b is still running"
    );
}

async fn etcd_put(url: &str, key: &str, value: &str) {
    let mut c = etcd_client::Client::connect([url], None).await.unwrap();
    c.put(key, value, None).await.unwrap();
}

async fn etcd_keys(url: &str) -> Vec<(String, String)> {
    let mut c = etcd_client::Client::connect([url], None).await.unwrap();
    let r = c
        .get("", Some(etcd_client::GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    r.kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                kv.value_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_in_etcd_that_is_not_this_environments_is_refused_and_left_untouched() {
    let cases = [
        // Someone else's keys under the prefix.
        vec![("/graylane/app/setting", "on")],
        // A newer graylane's layout.
        vec![("/graylane/schema", r#"{"graylane_schema": 99}"#)],
        // Another environment's data copied under this one's keys.
        vec![
            ("/graylane/schema", r#"{"graylane_schema": 1}"#),
            ("/graylane/env/prod/meta", r#"{"env": "staging"}"#),
            ("/graylane/env/prod/revision", "7"),
        ],
    ];
    let expected = [
        "/graylane/app/setting",
        "schema 99",
        "environment `staging`",
    ];
    for (case, want) in cases.iter().zip(expected) {
        let mut fleet = Fleet::new("fleet-foreign", CONFIG, "manual");
        let url = fleet.etcd.url();
        for (k, v) in case {
            etcd_put(&url, k, v).await;
        }
        let before = etcd_keys(&url).await;
        let i = fleet.spawn("a", true, &url);
        let status = fleet.nodes[i].process.wait_exit(Duration::from_secs(20));
        assert!(!status.success());
        let logs = fleet.nodes[i].process.logs();
        assert!(
            logs.contains(want) && logs.contains("nothing was changed"),
            "{logs}"
        );
        assert_eq!(etcd_keys(&url).await, before, "etcd was changed");
    }
}

/// A TCP relay to etcd that can be cut, as a network partition of one node would.
struct Link {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    connections: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Link {
    async fn to(target: SocketAddr) -> Link {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, conns) = (Arc::clone(&cut), Arc::clone(&connections));
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if c.load(Ordering::Relaxed) {
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns.lock().unwrap().push(task);
            }
        });
        Link {
            addr,
            cut,
            connections,
        }
    }

    fn cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::Relaxed);
        if cut {
            for task in self.connections.lock().unwrap().drain(..) {
                task.abort();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_etcd_keeps_serving_says_it_is_stale_and_catches_up_when_back() {
    let mut fleet = Fleet::new("fleet-partition", CONFIG, "manual");
    let url = fleet.etcd.url();
    fleet.spawn("a", true, &url);
    fleet.spawn("b", true, &url);
    let link = Link::to(SocketAddr::from(([127, 0, 0, 1], fleet.etcd.port))).await;
    let cut_off = fleet.spawn("c", true, &format!("http://{}", link.addr));
    for i in 0..3 {
        fleet.ready(i).await;
    }
    link.cut(true);
    // It serves on with what it knows, and says it is stale.
    let cluster = eventually_within(
        Duration::from_secs(10),
        "c to call itself stale",
        || async {
            let c = fleet.try_api(cut_off, "/api/v1/cluster").await?;
            (c["store_reachable"] == false).then_some(c)
        },
    )
    .await;
    let me = cluster["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "c")
        .cloned();
    assert_eq!(me.unwrap()["stale"], true, "{cluster}");
    let metrics = get(fleet.nodes[cut_off].admin, "/metrics", &[])
        .await
        .text();
    assert_eq!(
        metric_value(&metrics, "graylane_fleet_store_reachable"),
        Some(0.0),
        "{metrics}"
    );
    for _ in 0..20 {
        let r = get(
            fleet.nodes[cut_off].proxy,
            "/api/payment/x",
            &[("x-user-id", "u-1")],
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    // The rest of the fleet goes on without it.
    let r = fleet
        .api(
            0,
            Method::POST,
            "/api/v1/releases/payment/promote",
            r#"{"reason":"go"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    fleet.converged(&[0, 1], 1, "progressing").await;
    assert_eq!(fleet.release(cut_off).await["step"], 0);
    // Back: it catches up by itself.
    link.cut(false);
    fleet
        .converged_within(Duration::from_secs(15), &[cut_off], 1, "progressing")
        .await;
    eventually_within(
        Duration::from_secs(10),
        "c to hear from etcd again",
        || async {
            let c = fleet.try_api(cut_off, "/api/v1/cluster").await?;
            (c["store_reachable"] == true).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_rolls_back_a_failing_candidate_on_traffic_it_never_served() {
    let fleet = Fleet::start_with("fleet-analysis-fail", ANALYSED, "").await;
    let leader = fleet.leader(&[0, 1, 2]).await;
    fleet.canary.fail_every(2);
    // Every request goes through the two followers: the leader judges their traffic only.
    let stop = Arc::new(AtomicBool::new(false));
    let proxies = (0..3)
        .filter(|i| *i != leader)
        .map(|i| fleet.nodes[i].proxy)
        .collect();
    let (load_task, _, _) = load(proxies, Arc::clone(&stop));
    for i in 0..3 {
        eventually_within(
            Duration::from_secs(20),
            "every node to show it aborted",
            || async {
                let r = fleet.try_api(i, "/api/v1/releases/payment").await?;
                (r["state"] == "aborted").then_some(())
            },
        )
        .await;
    }
    // Aborted means every user is back on the baseline, on every node.
    for node in &fleet.nodes {
        let r = get(node.proxy, "/api/payment/x", &[("x-user-id", "u-7")]).await;
        assert_eq!(r.version(), Some("stable"), "via {}", node.name);
    }
    stop.store(true, Ordering::Relaxed);
    load_task.await.unwrap();
    let audit = fleet
        .api(
            leader,
            Method::GET,
            "/api/v1/audit?actor=analysis&limit=5",
            "",
        )
        .await
        .json();
    assert!(!audit["entries"].as_array().unwrap().is_empty(), "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_promotes_a_healthy_candidate_step_by_step_on_the_fleets_traffic() {
    let fleet = Fleet::start_with("fleet-analysis-pass", ANALYSED, "").await;
    let leader = fleet.leader(&[0, 1, 2]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let proxies = (0..3)
        .filter(|i| *i != leader)
        .map(|i| fleet.nodes[i].proxy)
        .collect();
    let (load_task, _, failed) = load(proxies, Arc::clone(&stop));
    fleet
        .converged_within(Duration::from_secs(30), &[0, 1, 2], 2, "completed")
        .await;
    stop.store(true, Ordering::Relaxed);
    load_task.await.unwrap();
    assert_eq!(failed.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_logs_in_to_an_etcd_with_authentication_and_a_wrong_password_is_refused_clearly() {
    let mut fleet = Fleet::new("fleet-auth", CONFIG, "manual");
    let url = fleet.etcd.url();
    {
        let mut c = etcd_client::Client::connect([url.as_str()], None)
            .await
            .unwrap();
        c.user_add("root", "s3cret", None).await.unwrap();
        c.user_grant_role("root", "root").await.unwrap();
        c.auth_enable().await.unwrap();
    }
    let spawn_as = |fleet: &mut Fleet, name: &str, password: &str| {
        let before = fleet.nodes.len();
        let file = fleet.file.to_str().unwrap().to_string();
        let extra = ["--etcd-user", "root", "--config", file.as_str()];
        let i = fleet.spawn_with(name, &url, &extra, password);
        assert_eq!(i, before);
        i
    };
    let wrong = spawn_as(&mut fleet, "a", "nope");
    let status = fleet.nodes[wrong]
        .process
        .wait_exit(Duration::from_secs(20));
    assert!(!status.success());
    let logs = fleet.nodes[wrong].process.logs();
    assert!(
        logs.contains(&url) && logs.contains("authentication failed"),
        "{logs}"
    );
    let right = spawn_as(&mut fleet, "b", "s3cret");
    fleet.ready(right).await;
    assert_eq!(fleet.cluster(right).await["leader"], "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_sent_to_one_node_reaches_all_and_a_restart_with_an_unchanged_file_keeps_it()
 {
    let mut fleet = Fleet::start("fleet-config", "manual").await;
    let edited = std::fs::read_to_string(&fleet.file)
        .unwrap()
        .replace("- weight: 50", "- weight: 40");
    let auth = format!("Bearer {TOKEN}");
    let r = request(
        fleet.nodes[1].admin,
        Method::PUT,
        "/api/v1/config?message=smaller%20second%20step",
        &[
            ("authorization", auth.as_str()),
            ("content-type", "application/yaml"),
        ],
        edited.clone(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let revision = r.json()["revision"]["n"].as_u64().unwrap();
    let view = &fleet;
    for i in 0..3 {
        eventually_within(
            Duration::from_secs(5),
            "every node to serve the edit",
            || async move {
                let r = view.try_api(i, "/api/v1/releases/payment").await?;
                (r["plan"][1]["weight"] == 40.0).then_some(())
            },
        )
        .await;
    }
    // The API does not write a fleet node's file: etcd is the configuration's home.
    assert!(
        std::fs::read_to_string(&fleet.file)
            .unwrap()
            .contains("- weight: 50")
    );
    // Node a restarts with its (unchanged) file: the edit stays, no revision is pushed.
    fleet.nodes[0].process.signal("TERM");
    fleet.nodes[0].process.wait_exit(Duration::from_secs(20));
    let url = fleet.etcd.url();
    let again = fleet.spawn("a", true, &url);
    fleet.ready(again).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let release = fleet.release(again).await;
    assert_eq!(release["plan"][1]["weight"], 40.0, "{release}");
    let cluster = fleet.cluster(again).await;
    assert_eq!(
        cluster["latest_revision"].as_u64(),
        Some(revision),
        "{cluster}"
    );
    // A change to the file is pushed, from the node that has it, to every node.
    write_atomic(&fleet.file, &edited.replace("- weight: 40", "- weight: 30"));
    let view = &fleet;
    for i in [1, 2, again] {
        eventually_within(
            Duration::from_secs(10),
            "every node to serve the file",
            || async move {
                let r = view.try_api(i, "/api/v1/releases/payment").await?;
                (r["plan"][1]["weight"] == 30.0).then_some(())
            },
        )
        .await;
    }
}

/// A canary whose instances come from the service registry, at 100% from the start.
const REGISTRY: &str = r#"
listeners:
  - bind: 127.0.0.1:1
admin:
  bind: 127.0.0.1:2
  token_env: GRAYLANE_ADMIN_TOKEN
services:
  - name: payment
    match: { path_prefix: /api/payment }
    versions:
      stable: { endpoints: ["{stable}"] }
      canary: { endpoints: { registry: payment, labels: { version: canary } } }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      steps:
        - weight: 100
          pause: manual{first_pause}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_follows_its_instances_in_the_registry_as_they_come_and_go() {
    let mut fleet = Fleet::new("fleet-registry", REGISTRY, "");
    let url = fleet.etcd.url();
    fleet.spawn("a", true, &url);
    fleet.spawn("b", true, &url);
    fleet.ready(0).await;
    fleet.ready(1).await;
    let status_everywhere = |want: StatusCode| {
        let proxies: Vec<SocketAddr> = fleet.nodes.iter().map(|n| n.proxy).collect();
        async move {
            for proxy in proxies {
                let r = try_get(proxy, "/api/payment/x", &[]).await.ok()?;
                if r.status != want {
                    return None;
                }
            }
            Some(())
        }
    };
    // No canary instance yet: its share has nowhere to go.
    eventually("no canary instance to answer 503", || {
        status_everywhere(StatusCode::SERVICE_UNAVAILABLE)
    })
    .await;
    // An instance of another version does not count.
    let dir = fleet.dir.clone();
    let register = |labels: &str, address: String| {
        spawn_in(
            &dir,
            &[
                "register",
                "--etcd",
                &url,
                "--service",
                "payment",
                "--address",
                &address,
                "--label",
                labels,
                "--ttl",
                "2s",
            ],
        )
    };
    let mut other = register("version=stable", fleet.stable.addr.to_string());
    let mut canary = register("version=canary", fleet.canary.addr.to_string());
    eventually("every node to route to the registered canary", || {
        status_everywhere(StatusCode::OK)
    })
    .await;
    let r = get(fleet.nodes[1].proxy, "/api/payment/x", &[]).await;
    assert_eq!(r.version(), Some("canary"));
    // It leaves at once when it deregisters.
    canary.signal("TERM");
    assert!(canary.wait_exit(Duration::from_secs(10)).success());
    let left = Instant::now();
    eventually("the canary to leave rotation", || {
        status_everywhere(StatusCode::SERVICE_UNAVAILABLE)
    })
    .await;
    assert!(
        left.elapsed() < Duration::from_secs(2),
        "{:?}",
        left.elapsed()
    );
    // A killed instance leaves when its lease (2 s) runs out.
    let canary = register("version=canary", fleet.canary.addr.to_string());
    eventually("the canary to be back", || {
        status_everywhere(StatusCode::OK)
    })
    .await;
    canary.signal("KILL");
    eventually_within(Duration::from_secs(6), "the dead canary to leave", || {
        status_everywhere(StatusCode::SERVICE_UNAVAILABLE)
    })
    .await;
    other.signal("TERM");
    other.wait_exit(Duration::from_secs(10));
}

#[test]
fn a_single_node_refuses_a_configuration_that_follows_the_registry() {
    let dir = temp_dir("single-registry");
    let file = dir.join("graylane.yaml");
    write_atomic(
        &file,
        &fill(
            REGISTRY,
            &[
                ("stable", "127.0.0.1:9".to_string()),
                ("first_pause", String::new()),
            ],
        ),
    );
    let out = run(&[
        "serve",
        "--config",
        file.to_str().unwrap(),
        "--data-dir",
        dir.join("data").to_str().unwrap(),
    ]);
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("services[0].versions.canary.endpoints.registry")
            && out.stderr.contains("needs fleet mode"),
        "{}",
        out.stderr
    );
    assert!(!dir.join("data").exists(), "nothing was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_follower_drops_out_and_comes_back_to_the_current_state() {
    let mut fleet = Fleet::start("fleet-follower-killed", "manual").await;
    let leader = fleet.leader(&[0, 1, 2]).await;
    let follower = (leader + 1) % 3;
    let name = fleet.nodes[follower].name.clone();
    let name = name.as_str();
    let others: Vec<usize> = (0..3).filter(|i| *i != follower).collect();
    fleet.nodes[follower].process.signal("KILL");
    // The others go on: a command reaches both, and the dead node leaves the membership once
    // its lease runs out.
    let r = fleet
        .api(
            leader,
            Method::POST,
            "/api/v1/releases/payment/promote",
            r#"{"reason":"go"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    fleet.converged(&others, 1, "progressing").await;
    let view = &fleet;
    eventually_within(
        Duration::from_secs(10),
        "the dead node to leave",
        || async move {
            let c = view.try_api(leader, "/api/v1/cluster").await?;
            let members = c["members"].as_array()?;
            members.iter().all(|m| m["name"] != name).then_some(())
        },
    )
    .await;
    assert_eq!(
        fleet.leader(&others).await,
        leader,
        "a follower's death moves no lead"
    );
    // Started again under its name, it serves the current state.
    let url = fleet.etcd.url();
    let name = fleet.nodes[follower].name.clone();
    let back = fleet.spawn(&name, true, &url);
    fleet.ready(back).await;
    assert_eq!(fleet.release(back).await["step"], 1);
}

const REDIS_LIMITED: &str = r#"
listeners:
  - bind: 127.0.0.1:1
admin:
  bind: 127.0.0.1:2
  token_env: GRAYLANE_ADMIN_TOKEN
services:
  - name: payment
    match: { path_prefix: /pay }
    versions:
      stable: { endpoints: ["{stable}"] }
      canary: { endpoints: ["{canary}"] }
traffic_control:
  rate_limits:
    - service: payment
      key: "header:X-User-Id"
      rate: 10/s
      burst: 10
      backend: redis
      redis_url: "redis://127.0.0.1:{redis}"
      timeout: 100ms
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_nodes_share_a_redis_rate_limit_as_single_nodes_do() {
    let redis = RedisServer::start();
    let redis_port = redis.port;
    let template = fill(REDIS_LIMITED, &[("redis", redis_port.to_string())]);
    let mut fleet = Fleet::new_filled("fleet-redis", &template);
    let url = fleet.etcd.url();
    fleet.spawn("a", true, &url);
    fleet.spawn("b", true, &url);
    fleet.ready(0).await;
    fleet.ready(1).await;
    for node in &fleet.nodes {
        let admin = node.admin;
        let proxy = node.proxy;
        eventually("a check answered by Redis", || async move {
            let errors = || async {
                let metrics = get(admin, "/metrics", &[]).await.text();
                metric_value(&metrics, "graylane_ratelimit_redis_errors_total")
            };
            let before = errors().await;
            let r = get(proxy, "/pay", &[("x-user-id", "warm-up")]).await;
            let after = errors().await;
            (r.status == StatusCode::OK && before.is_some() && after == before).then_some(())
        })
        .await;
    }
    let mut allowed = 0;
    for i in 0..40 {
        let r = get(fleet.nodes[i % 2].proxy, "/pay", &[("x-user-id", "u-1")]).await;
        match r.status {
            StatusCode::OK => allowed += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        (10..=15).contains(&allowed),
        "{allowed} of 40 allowed by two fleet nodes sharing a 10/s limit"
    );
}

#[test]
fn takeover_is_refused_for_a_fleet_node_with_what_to_do_instead() {
    let out = run(&[
        "serve",
        "--etcd",
        "http://127.0.0.1:1",
        "--node",
        "a",
        "--takeover",
    ]);
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("--takeover replaces a single node"),
        "{}",
        out.stderr
    );
}
