//! Fleet mode with real parts: a real etcd (Debian's etcd-server) on loopback, three
//! `graylane serve --etcd` nodes, real upstreams. Each test kills something a production fleet
//! loses (etcd, the leader, a node's link to etcd) and checks what users and operators see.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use graylane_etcd::testing::EtcdServer;
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

/// One node: its process and addresses.
struct Node {
    name: String,
    process: Graylane,
    proxy: SocketAddr,
    admin: SocketAddr,
}

/// etcd, two upstreams, the shared configuration file, and the nodes.
struct Fleet {
    etcd: EtcdServer,
    dir: PathBuf,
    file: PathBuf,
    stable: Upstream,
    canary: Upstream,
    nodes: Vec<Node>,
    ttl: &'static str,
}

impl Fleet {
    fn new(test: &str, first_pause: &str) -> Fleet {
        let etcd = EtcdServer::start();
        let dir = temp_dir(test);
        let file = dir.join("graylane.yaml");
        let (stable, canary) = (Upstream::start("stable"), Upstream::start("canary"));
        let yaml = fill(
            CONFIG,
            &[
                ("stable", stable.addr.to_string()),
                ("canary", canary.addr.to_string()),
                ("first_pause", first_pause.to_string()),
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
        let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let (proxy, admin) = (loopback(free_port()), loopback(free_port()));
        let node_dir = self.dir.join(name);
        std::fs::create_dir_all(&node_dir).unwrap();
        let (bind, admin_bind) = (proxy.to_string(), admin.to_string());
        let mut args = vec![
            "serve",
            "--etcd",
            endpoints,
            "--node",
            name,
            "--env",
            "prod",
            "--bind",
            &bind,
            "--admin-bind",
            &admin_bind,
            "--etcd-lease-ttl",
            self.ttl,
            "--workers",
            "1",
            "--drain-timeout",
            "2s",
            "--watch-interval",
            "100ms",
        ];
        let file = self.file.to_str().unwrap().to_string();
        if with_config {
            args.extend(["--config", file.as_str()]);
        }
        let process =
            Graylane::spawn_with_env(&node_dir, &args, &[("GRAYLANE_ADMIN_TOKEN", TOKEN)]);
        self.nodes.push(Node {
            name: name.to_string(),
            process,
            proxy,
            admin,
        });
        self.nodes.len() - 1
    }

    async fn start(test: &str, first_pause: &str) -> Fleet {
        let mut fleet = Fleet::new(test, first_pause);
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
        let admin = self.nodes[i].admin;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if try_get(admin, "/readyz", &[])
                .await
                .is_ok_and(|r| r.status == StatusCode::OK)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "node {} was not ready within 20 s:\n{}",
            self.nodes[i].name,
            self.nodes[i].process.logs()
        );
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
        let auth = format!("Bearer {TOKEN}");
        let r = try_get(
            self.nodes[i].admin,
            path,
            &[("authorization", auth.as_str())],
        )
        .await
        .ok()?;
        (r.status == StatusCode::OK).then(|| r.json())
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
        for &i in nodes {
            eventually_within(
                Duration::from_secs(5),
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
    let cluster = fleet.cluster(0).await;
    assert_eq!(cluster["mode"], "fleet");
    let names: Vec<&str> = cluster["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b", "c"], "{cluster}");
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
