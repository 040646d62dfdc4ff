//! `file:` segments as a user edits them: the real binary re-reads a segment file when it
//! changes and on SIGHUP, without any edit of the configuration, and keeps the old members when
//! the file cannot be read.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use http::StatusCode;

const TOKEN: &str = "segment-files-viewer-token";

const CONFIG: &str = r#"
listeners:
  - bind: 127.0.0.1:{port}
admin:
  bind: 127.0.0.1:{admin}
  tokens:
    - { name: viewer, env: GRAYLANE_TEST_TOKEN_VIEWER, role: viewer }
segments:
  beta: { file: beta.txt }
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
      force:
        - segment: { name: beta, key: "header:X-User-Id" }
      bucket_by: "header:X-User-Id"
      steps:
        - weight: 0
          pause: manual
"#;

/// A `graylane serve` process whose `beta.txt` segment file starts with `u-1`.
struct Gateway {
    process: Graylane,
    dir: PathBuf,
    file: PathBuf,
    proxy: SocketAddr,
    admin: SocketAddr,
    _upstreams: (Upstream, Upstream),
}

impl Gateway {
    async fn start(test: &str, watch_interval: &str) -> Gateway {
        let dir = temp_dir(test);
        let file = dir.join("graylane.yaml");
        let (stable, canary) = (Upstream::start("stable"), Upstream::start("canary"));
        write_atomic(&dir.join("beta.txt"), "u-1\n");
        let yaml = fill(
            CONFIG,
            &[
                ("port", "0".to_string()),
                ("admin", "0".to_string()),
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
                watch_interval,
            ],
            &[("GRAYLANE_TEST_TOKEN_VIEWER", TOKEN)],
        );
        let listening = bound(&mut process, true);
        let (proxy, admin) = (listening.listeners[0], listening.admin.unwrap());
        let gateway = Gateway {
            process,
            dir,
            file,
            proxy,
            admin,
            _upstreams: (stable, canary),
        };
        // The admin listener answers once the signal handlers are installed (SIGHUP before
        // then would end the process).
        eventually("the gateway to answer", || async {
            let ready = try_get(gateway.admin, "/readyz", &[]).await.ok()?;
            let r = try_get(gateway.proxy, "/api/payment/x", &[]).await.ok()?;
            (ready.status == StatusCode::OK && r.status == StatusCode::OK).then_some(())
        })
        .await;
        assert_eq!(gateway.version_of("u-1").await, "canary");
        assert_eq!(gateway.version_of("u-2").await, "stable");
        gateway
    }

    async fn version_of(&self, user: &str) -> String {
        let r = get(self.proxy, "/api/payment/x", &[("X-User-Id", user)]).await;
        assert_eq!(r.status, StatusCode::OK, "{user}: {r:?}");
        r.version().unwrap_or("").to_string()
    }

    async fn api(&self, path: &str) -> Reply {
        let auth = format!("Bearer {TOKEN}");
        let r = get(self.admin, path, &[("authorization", auth.as_str())]).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {r:?}");
        r
    }

    async fn stop(mut self) {
        self.process.assert_running();
        self.process.signal("TERM");
        let status = self.process.wait_exit(Duration::from_secs(20));
        assert_eq!(status.code(), Some(0), "{}", self.process.logs());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_added_to_a_segment_file_is_forced_to_the_canary_without_a_config_edit() {
    let served = Gateway::start("segment-watch", "100ms").await;
    let yaml_before = std::fs::read_to_string(&served.file).unwrap();

    write_atomic(&served.dir.join("beta.txt"), "u-1\nu-2\n");
    eventually("u-2 to be forced to the canary", || async {
        (served.version_of("u-2").await == "canary").then_some(())
    })
    .await;
    assert_eq!(std::fs::read_to_string(&served.file).unwrap(), yaml_before);

    // No new revision: the configuration's text did not change; the audit log says why the
    // routing did.
    let revisions = served.api("/api/v1/config/revisions").await.json();
    assert_eq!(revisions["current"], 1, "{revisions}");
    let audit = served.api("/api/v1/audit").await.text();
    assert!(
        audit.contains("segments.reloaded") && audit.contains("beta"),
        "{audit}"
    );

    // A user removed from the file goes back to bucketing (weight 0: stable).
    write_atomic(&served.dir.join("beta.txt"), "u-2\n");
    eventually("u-1 to leave the canary", || async {
        (served.version_of("u-1").await == "stable").then_some(())
    })
    .await;
    assert_eq!(served.version_of("u-2").await, "canary");

    // A segment file that cannot be read keeps the members last read, and says why.
    std::fs::remove_file(served.dir.join("beta.txt")).unwrap();
    eventually("the failed reload to be logged", || async {
        let logs = served.process.logs();
        (logs.contains("reload rejected") && logs.contains("beta.txt")).then_some(())
    })
    .await;
    assert_eq!(served.version_of("u-2").await, "canary");
    assert_eq!(served.version_of("u-1").await, "stable");
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_segment_files_when_the_configuration_is_unchanged() {
    // The watcher looks once an hour: only the signal can reload here.
    let served = Gateway::start("segment-hup", "1h").await;

    write_atomic(&served.dir.join("beta.txt"), "u-1\nu-2\n");
    assert_eq!(
        served.version_of("u-2").await,
        "stable",
        "nothing reloads before the signal"
    );
    served.process.signal("HUP");
    eventually("SIGHUP to force u-2 to the canary", || async {
        (served.version_of("u-2").await == "canary").then_some(())
    })
    .await;
    served.stop().await;
}
