//! What the process-level tests share beyond `graylane-testing`: the built `graylane` binary
//! (run to completion, or served on loopback ports it picks and reports), its fixtures and
//! working folders.

// Each test binary includes this module and uses a different subset of it.
#![allow(dead_code, unused_imports)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::StatusCode;

pub(crate) use graylane_testing::http::*;
pub(crate) use graylane_testing::ports::{candidate_port, closed_port};
pub(crate) use graylane_testing::process::{Bound, Graylane, Output, unique};
pub(crate) use graylane_testing::redis::RedisServer;
pub(crate) use graylane_testing::upstream::{HOLD_HEADER, Upstream};
pub(crate) use graylane_testing::wait::{eventually, eventually_within};
pub(crate) use graylane_testing::{POLL_DEADLINE, REQUEST_TIMEOUT, fill, metric_value};

pub(crate) mod fleet;

/// Upper bound on a command that should finish by itself (validate, eval).
pub(crate) const COMMAND_DEADLINE: Duration = Duration::from_secs(30);

/// The `graylane` binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_graylane");

/// A test fixture's path.
pub(crate) fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A fresh folder under the target's temporary folder for one test.
pub(crate) fn temp_dir(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("graylane-cli-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Replaces a file's contents in one step (write a sibling, rename over), as editors and
/// config-management tools do, so a watcher never reads half a file.
pub(crate) fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Runs `graylane ARGS` to completion (killed after [`COMMAND_DEADLINE`]).
pub(crate) fn run(args: &[&str]) -> Output {
    run_with_env(args, &[])
}

/// [`run`] with extra environment variables (such as `GRAYLANE_TOKEN`).
pub(crate) fn run_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let dir = temp_dir(&format!("run-{}", unique()));
    let mut p = spawn_with_env(&dir, args, env);
    let status = p.wait_exit(COMMAND_DEADLINE);
    let out = Output {
        status,
        stdout: p.stdout(),
        stderr: p.stderr(),
    };
    let _ = std::fs::remove_dir_all(&dir);
    out
}

/// `graylane ARGS` running in `dir`.
pub(crate) fn spawn_in(dir: &Path, args: &[&str]) -> Graylane {
    spawn_with_env(dir, args, &[])
}

/// `graylane ARGS` running in `dir` (so the default `graylane-data` store lands there) with
/// extra environment variables (admin tokens).
pub(crate) fn spawn_with_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Graylane {
    Graylane::spawn(BIN, dir, args, env)
}

/// Waits until a `graylane serve` says where it listens (its admin listener too when `admin`).
pub(crate) fn bound(process: &mut Graylane, admin: bool) -> Bound {
    process.listening(admin, Duration::from_secs(20))
}

// ---------------------------------------------------------------------------------------------
// A served gateway
// ---------------------------------------------------------------------------------------------

/// A `graylane serve` process on loopback ports it picked, in front of two test upstreams,
/// `stable` and `canary`; its working folder (and store) is the test's own. Killed if dropped.
pub(crate) struct Served {
    pub process: Graylane,
    pub dir: PathBuf,
    pub file: PathBuf,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub stable: Upstream,
    pub canary: Upstream,
}

impl Served {
    /// Writes `template` with `extra` filled in first (its values may use the others), then
    /// `{stable}` and `{canary}`, and `{port}` and `{admin}` as 0; starts serve with `env`
    /// (admin tokens), reads the ports it bound from its log and waits for its admin listener.
    pub(crate) async fn start(
        test: &str,
        template: &str,
        extra: &[(&str, String)],
        env: &[(&str, &str)],
    ) -> Served {
        Served::start_on(test, template, extra, env, (0, 0)).await
    }

    /// [`Served::start`] with the ports written in the file, for a test that restarts serve
    /// where a client (a browser) expects it. They are candidate ports, which another process
    /// could take before serve binds them: use [`Served::start`] unless the ports must last.
    pub(crate) async fn start_restartable(
        test: &str,
        template: &str,
        extra: &[(&str, String)],
        env: &[(&str, &str)],
    ) -> Served {
        let ports = (candidate_port(), candidate_port());
        Served::start_on(test, template, extra, env, ports).await
    }

    async fn start_on(
        test: &str,
        template: &str,
        extra: &[(&str, String)],
        env: &[(&str, &str)],
        (port, admin): (u16, u16),
    ) -> Served {
        let dir = temp_dir(test);
        let file = dir.join("graylane.yaml");
        let (stable, canary) = (Upstream::start("stable"), Upstream::start("canary"));
        let yaml = fill(
            &fill(template, extra),
            &[
                ("port", port.to_string()),
                ("admin", admin.to_string()),
                ("stable", stable.addr.to_string()),
                ("canary", canary.addr.to_string()),
            ],
        );
        write_atomic(&file, &yaml);
        let mut process = spawn_with_env(
            &dir,
            &[
                "serve",
                "--config",
                file.to_str().unwrap(),
                "--workers",
                "1",
                "--drain-timeout",
                "2s",
                "--watch-interval",
                "100ms",
            ],
            env,
        );
        let listening = bound(&mut process, true);
        let (proxy, admin) = (
            listening.listeners[0],
            listening.admin.expect("an admin listener"),
        );
        let served = Served {
            process,
            dir,
            file,
            proxy,
            admin,
            stable,
            canary,
        };
        eventually("the admin API to answer", || async {
            let r = try_get(served.admin, "/readyz", &[]).await.ok()?;
            (r.status == StatusCode::OK).then_some(())
        })
        .await;
        served
    }

    /// An admin API call with `token` (none when empty).
    pub(crate) async fn api(
        &self,
        method: http::Method,
        path: &str,
        token: &str,
        body: &str,
    ) -> Reply {
        let auth = format!("Bearer {token}");
        let headers: Vec<(&str, &str)> = if token.is_empty() {
            vec![]
        } else {
            vec![("authorization", auth.as_str())]
        };
        request(self.admin, method, path, &headers, body.to_string()).await
    }

    /// SIGTERM, a clean exit, and the folder removed.
    pub(crate) async fn stop(mut self) {
        self.process.assert_running();
        self.process.signal("TERM");
        let status = self.process.wait_exit(Duration::from_secs(20));
        assert_eq!(status.code(), Some(0), "{}", self.process.logs());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
