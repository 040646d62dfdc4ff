//! A fleet node for the process-level tests: `graylane serve --etcd` on free loopback ports,
//! with its own working folder, killed if a test fails (tests/fleet.rs, tests/fleet_ops.rs).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use http::StatusCode;

use super::{Graylane, candidate_port, spawn_with_env, try_get};

/// How long a node may take to become ready: etcd, then a configuration, then the listeners.
pub(crate) const READY_WITHIN: Duration = Duration::from_secs(20);

/// One `graylane serve --etcd` process and its addresses.
pub(crate) struct FleetNode {
    pub name: String,
    pub process: Graylane,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
}

impl FleetNode {
    /// Starts node `name` on etcd `endpoints` in `dir/name`, its first listener and admin
    /// listener on free loopback ports (`--bind`, `--admin-bind`), one worker, with `args`
    /// after those and the environment variables `env` (tokens, the etcd password). Does not
    /// wait for it. Not port 0: a node tells the fleet its admin address as configured.
    pub(crate) fn spawn(
        dir: &Path,
        name: &str,
        endpoints: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> FleetNode {
        let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let (proxy, admin) = (loopback(candidate_port()), loopback(candidate_port()));
        let node_dir = dir.join(name);
        std::fs::create_dir_all(&node_dir).unwrap();
        let (bind, admin_bind) = (proxy.to_string(), admin.to_string());
        let mut all = vec![
            "serve",
            "--etcd",
            endpoints,
            "--node",
            name,
            "--bind",
            &bind,
            "--admin-bind",
            &admin_bind,
            "--workers",
            "1",
            "--drain-timeout",
            "2s",
        ];
        all.extend(args);
        FleetNode {
            name: name.to_string(),
            process: spawn_with_env(&node_dir, &all, env),
            proxy,
            admin,
        }
    }

    /// Waits until the node answers `/readyz` with 200; panics with its logs after
    /// [`READY_WITHIN`].
    pub(crate) async fn ready(&self) {
        let deadline = Instant::now() + READY_WITHIN;
        while Instant::now() < deadline {
            if try_get(self.admin, "/readyz", &[])
                .await
                .is_ok_and(|r| r.status == StatusCode::OK)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "node {} was not ready within {READY_WITHIN:?}:\n{}",
            self.name,
            self.process.logs()
        );
    }

    /// `GET path` on the admin API with `token`: the JSON body of a 200, else `None`.
    pub(crate) async fn get_json(&self, token: &str, path: &str) -> Option<serde_json::Value> {
        let auth = format!("Bearer {token}");
        let r = try_get(self.admin, path, &[("authorization", auth.as_str())])
            .await
            .ok()?;
        (r.status == StatusCode::OK).then(|| r.json())
    }
}
