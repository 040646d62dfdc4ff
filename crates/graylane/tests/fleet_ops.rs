//! Operating a fleet, with real parts (a real etcd from Debian's etcd-server, real
//! `graylane serve` processes): `graylane status` showing the fleet's leader and members with
//! a lagging, silent node and a lost etcd flagged; the dashboard's account of the same answer;
//! and `graylane fleet import` moving a single node's releases, revisions and audit into etcd
//! for a fleet to resume.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::fleet::FleetNode;
use common::*;
use graylane_etcd::{Etcd, EtcdOptions, EtcdStore};
use graylane_store::{RedbStore, Store};
use graylane_testing::etcd::EtcdServer;
use http::{Method, StatusCode};
use serde_json::Value;

const TOKEN: &str = "fleet-ops-token";

const CONFIG: &str = r#"
listeners:
  - bind: 127.0.0.1:{port}
admin:
  bind: 127.0.0.1:{admin}
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
          pause: manual
        - weight: 50
          pause: manual
        - weight: 100
"#;

/// Starts a fleet node of environment `prod` on free loopback ports, with `config` pushed if
/// given.
fn spawn_node(dir: &Path, name: &str, etcd: &str, config: Option<&Path>) -> FleetNode {
    // Long enough that a silent member is still listed when it turns stale (3 s).
    let mut args = vec!["--env", "prod", "--etcd-lease-ttl", "15s"];
    let file = config.map(|f| f.to_str().unwrap().to_string());
    if let Some(file) = &file {
        args.extend(["--config", file.as_str()]);
    }
    FleetNode::spawn(dir, name, etcd, &args, &[("GRAYLANE_ADMIN_TOKEN", TOKEN)])
}

async fn api_get(node: &FleetNode, path: &str) -> Option<Value> {
    node.get_json(TOKEN, path).await
}

fn status(admin: SocketAddr, json: bool) -> Output {
    let url = format!("http://{admin}");
    let mut args = vec!["status", "--admin", url.as_str()];
    if json {
        args.push("--json");
    }
    run_with_env(&args, &[("GRAYLANE_TOKEN", TOKEN)])
}

/// The line of `status`'s fleet table for `node`.
fn member_line<'a>(text: &'a str, node: &str) -> &'a str {
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(node) && l.contains("127.0.0.1:"))
        .unwrap_or_else(|| panic!("no line for member {node}:\n{text}"))
}

fn config_yaml(dir: &Path) -> (PathBuf, String, Upstream, Upstream) {
    let (stable, canary) = (Upstream::start("stable"), Upstream::start("canary"));
    let yaml = fill(
        CONFIG,
        &[
            ("port", "1".to_string()),
            ("admin", "2".to_string()),
            ("stable", stable.addr.to_string()),
            ("canary", canary.addr.to_string()),
        ],
    );
    let file = dir.join("graylane.yaml");
    write_atomic(&file, &yaml);
    (file, yaml, stable, canary)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_leader_and_members_and_flags_a_lagging_silent_node_and_a_lost_etcd() {
    let mut etcd = EtcdServer::start();
    let dir = temp_dir("fleet-ops-status");
    let (file, yaml, _stable, _canary) = config_yaml(&dir);
    // a pushes the file as revision 1 before the others join with the same file.
    let mut nodes = vec![spawn_node(&dir, "a", &etcd.url(), Some(&file))];
    nodes[0].ready().await;
    for name in ["b", "c"] {
        nodes.push(spawn_node(&dir, name, &etcd.url(), Some(&file)));
    }
    for node in &nodes {
        node.ready().await;
    }
    // Every member reports its revision and readiness at its next heartbeat.
    let mut last = Value::Null;
    let deadline = Instant::now() + Duration::from_secs(10);
    let leader = loop {
        if let Some(c) = api_get(&nodes[0], "/api/v1/cluster").await {
            let members = c["members"].as_array().cloned().unwrap_or_default();
            let settled = members.len() == 3
                && members
                    .iter()
                    .all(|m| m["ready"] == true && m["config_revision"] == 1);
            if let (true, Some(leader)) = (settled, c["leader"].as_str()) {
                break leader.to_string();
            }
            last = c;
        }
        assert!(
            Instant::now() < deadline,
            "no leader, or not every member ready at revision 1 within 10 s: {last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let out = status(nodes[0].admin, false);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let text = out.stdout;
    assert!(text.contains("payment"), "the releases come first:\n{text}");
    assert!(
        text.contains(&format!(
            "fleet: leader {leader} · newest revision 1 · 3 members"
        )),
        "{text}"
    );
    assert!(member_line(&text, "a").contains("this node"), "{text}");
    assert!(member_line(&text, &leader).contains("leader"), "{text}");
    for name in ["a", "b", "c"] {
        let line = member_line(&text, name);
        assert!(
            line.contains(" 1 ") && line.contains("yes"),
            "{name} serves revision 1 and is ready:\n{text}"
        );
        assert!(
            !line.contains("LAGGING") && !line.contains("STALE"),
            "{text}"
        );
    }

    // c freezes, and a new revision is made: c is behind it and silent.
    nodes[2].process.signal("STOP");
    let edited = yaml.replace("weight: 50", "weight: 40");
    let auth = format!("Bearer {TOKEN}");
    let r = request(
        nodes[0].admin,
        Method::PUT,
        "/api/v1/config",
        &[
            ("authorization", auth.as_str()),
            ("content-type", "application/yaml"),
        ],
        edited,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    eventually_within(Duration::from_secs(10), "c lagging and stale", || async {
        let c = api_get(&nodes[0], "/api/v1/cluster").await?;
        let m = c["members"]
            .as_array()?
            .iter()
            .find(|m| m["name"] == "c")?
            .clone();
        (m["lagging"] == true && m["stale"] == true).then_some(())
    })
    .await;
    let text = status(nodes[0].admin, false).stdout;
    assert!(text.contains("1 member is behind revision 2"), "{text}");
    assert!(
        text.contains("1 member has not been heard from recently"),
        "{text}"
    );
    let c = member_line(&text, "c");
    assert!(
        c.contains(" 1 ") && c.contains("LAGGING") && c.contains("STALE"),
        "{text}"
    );
    assert!(!member_line(&text, "a").contains("LAGGING"), "{text}");

    let json: Value = serde_json::from_str(&status(nodes[0].admin, true).stdout).unwrap();
    assert_eq!(json["releases"][0]["service"], "payment", "{json}");
    assert_eq!(json["cluster"]["mode"], "fleet", "{json}");
    assert_eq!(json["cluster"]["latest_revision"], 2, "{json}");
    let c = json["cluster"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "c")
        .unwrap();
    assert_eq!(
        (c["lagging"].clone(), c["stale"].clone()),
        (true.into(), true.into())
    );

    // The page's account of the same answer (run by node: see `dashboard_summary`).
    let summary = dashboard_summary(&json["cluster"]);
    assert_eq!(summary["alerts"].as_array().unwrap().len(), 2, "{summary}");
    let marks = |name: &str| -> Vec<String> {
        summary["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap()["marks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["text"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(marks("c"), ["lagging", "stale"], "{summary}");
    assert!(marks(&leader).contains(&"leader".to_string()), "{summary}");
    assert!(marks("a").contains(&"this node".to_string()), "{summary}");

    // etcd goes away: the node says it cannot reach it.
    etcd.kill();
    eventually_within(Duration::from_secs(15), "a to lose etcd", || async {
        let c = api_get(&nodes[0], "/api/v1/cluster").await?;
        (c["store_reachable"] == false).then_some(())
    })
    .await;
    let text = status(nodes[0].admin, false).stdout;
    assert!(text.contains("this node (a) cannot reach etcd"), "{text}");
    nodes[2].process.signal("CONT");
    let _ = std::fs::remove_dir_all(&dir);
}

/// What the dashboard's fleet.js makes of `cluster` (its `fleetSummary`), run by node on the
/// page's own files: the decision of what the page shows, without a browser.
fn dashboard_summary(cluster: &Value) -> Value {
    let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/dashboard/js");
    let dir = temp_dir("fleet-ops-page");
    // The page's modules are ES modules without a package.json of their own.
    std::fs::write(dir.join("package.json"), r#"{"type":"module"}"#).unwrap();
    for file in ["fleet.js", "dom.js"] {
        std::fs::copy(assets.join(file), dir.join(file)).unwrap();
    }
    let script = format!(
        "import {{ fleetSummary }} from './fleet.js';\n\
         process.stdout.write(JSON.stringify(fleetSummary({cluster})));\n"
    );
    std::fs::write(dir.join("run.js"), script).unwrap();
    let out = Command::new("node")
        .arg("run.js")
        .current_dir(&dir)
        .output()
        .expect("node runs the dashboard's code (scripts/deps installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_dashboard_shows_nothing_of_a_fleet_on_a_single_node() {
    let summary = dashboard_summary(&serde_json::json!({
        "mode": "single", "node": null, "leader": null, "latest_revision": 3,
        "store_reachable": true, "members": []
    }));
    assert_eq!(summary, Value::Null);
}

fn etcd_for(url: &str) -> Etcd {
    Etcd::connect(&EtcdOptions::new(vec![url.to_string()])).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_nodes_releases_revisions_and_audit_move_into_etcd_and_a_fleet_resumes_them() {
    let served = Served::start(
        "fleet-ops-import",
        CONFIG,
        &[],
        &[("GRAYLANE_ADMIN_TOKEN", TOKEN)],
    )
    .await;
    let data_dir = served.dir.join("graylane-data");
    let r = served
        .api(
            Method::POST,
            "/api/v1/releases/payment/promote",
            TOKEN,
            r#"{"reason":"looks good"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let promoted = r.json();
    assert_eq!(promoted["step"], 1);
    let edited = std::fs::read_to_string(&served.file)
        .unwrap()
        .replace("weight: 100", "weight: 100\n      # second revision");
    let r = served
        .api(Method::PUT, "/api/v1/config", TOKEN, &edited)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let single_history = served
        .api(Method::GET, "/api/v1/config/revisions", TOKEN, "")
        .await
        .json();
    let etcd = EtcdServer::start();
    let url = etcd.url();
    let data = data_dir.to_str().unwrap();

    // While the single node runs, its store is locked: nothing is copied.
    let out = run(&["fleet", "import", "--data-dir", data, "--etcd", &url]);
    assert_eq!(out.code(), Some(1), "{}", out.stdout);
    assert!(
        out.stderr.contains("in use by a running graylane")
            && out.stderr.contains("stop the single node"),
        "{}",
        out.stderr
    );

    let mut process = served.process;
    process.signal("TERM");
    assert_eq!(process.wait_exit(Duration::from_secs(20)).code(), Some(0));
    let single = RedbStore::open(&data_dir).unwrap();
    let (revisions, releases, audit) = (
        single.revisions("default").unwrap(),
        single.releases("default").unwrap(),
        single.audit("default", usize::MAX).unwrap(),
    );
    let yamls: Vec<_> = revisions
        .iter()
        .map(|m| single.revision("default", m.n).unwrap().unwrap())
        .collect();
    drop(single);
    assert_eq!(revisions.len(), 2);
    assert!(audit.len() >= 2, "{audit:?}");

    let out = run(&["fleet", "import", "--data-dir", data, "--etcd", &url]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains(&format!(
            "imported environment default: 2 revisions (newest 2), 1 release, {} audit entries (newest {}), and the cookie keys",
            audit.len(),
            audit[0].seq
        )),
        "{}",
        out.stdout
    );

    // etcd holds the same history, numbers and all. (The store's client blocks on a runtime
    // of its own, so it runs off this test's runtime.)
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let fleet_store = EtcdStore::open(etcd_for(&url), "default").unwrap();
                assert_eq!(fleet_store.revisions("default").unwrap(), revisions);
                for revision in &yamls {
                    assert_eq!(
                        fleet_store
                            .revision("default", revision.n)
                            .unwrap()
                            .as_ref(),
                        Some(revision)
                    );
                }
                assert_eq!(fleet_store.releases("default").unwrap(), releases);
                assert_eq!(fleet_store.audit("default", usize::MAX).unwrap(), audit);
            })
            .join()
            .unwrap();
    });

    // A second import would mix two histories: refused, nothing written.
    let keys_before = etcd_keys(&url).await;
    let out = run(&["fleet", "import", "--data-dir", data, "--etcd", &url]);
    assert_eq!(out.code(), Some(1), "{}", out.stdout);
    assert!(
        out.stderr.contains("environment `default` already holds")
            && out.stderr.contains("nothing was written"),
        "{}",
        out.stderr
    );
    assert_eq!(etcd_keys(&url).await, keys_before);

    // A fleet node without a file serves the imported revision and resumes the release.
    let dir = temp_dir("fleet-ops-import-node");
    let node = FleetNode::spawn(&dir, "n1", &url, &[], &[("GRAYLANE_ADMIN_TOKEN", TOKEN)]);
    node.ready().await;
    let release = api_get(&node, "/api/v1/releases/payment").await.unwrap();
    for field in ["step", "state", "weights", "stable", "candidate"] {
        assert_eq!(release[field], promoted[field], "{field}: {release}");
    }
    let history = api_get(&node, "/api/v1/config/revisions").await.unwrap();
    assert_eq!(history, single_history);
    let log = api_get(&node, "/api/v1/audit?service=payment&limit=50")
        .await
        .unwrap();
    assert!(
        log["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["reason"] == "looks good"),
        "the promotion is in the fleet's audit log: {log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&served.dir);
}

#[test]
fn importing_a_directory_without_a_store_says_so_and_creates_nothing() {
    let dir = temp_dir("fleet-ops-no-store");
    let missing = dir.join("nothing-here");
    let out = run(&[
        "fleet",
        "import",
        "--data-dir",
        missing.to_str().unwrap(),
        "--etcd",
        "http://127.0.0.1:1",
    ]);
    assert_eq!(out.code(), Some(1));
    assert!(
        out.stderr.contains("graylane.redb") && out.stderr.contains("--data-dir must name"),
        "{}",
        out.stderr
    );
    assert!(
        !missing.exists(),
        "the import created {}",
        missing.display()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every key in etcd.
async fn etcd_keys(url: &str) -> Vec<String> {
    let mut client = etcd_client::Client::connect([url], None).await.unwrap();
    let r = client
        .get(
            "",
            Some(
                etcd_client::GetOptions::new()
                    .with_all_keys()
                    .with_keys_only(),
            ),
        )
        .await
        .unwrap();
    r.kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect()
}
