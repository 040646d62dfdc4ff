//! `graylane serve --access-log` as a process: lines in the file, logrotate's rename and
//! SIGUSR1 moving the next lines to a new file with none lost, a reload that turns the log on
//! from the configuration, and a file that cannot be opened refusing the start.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use http::StatusCode;

const CONFIG: &str = r#"
listeners:
  - bind: 127.0.0.1:0
services:
  - name: web
    versions:
      stable: { endpoints: ["{stable}"] }
{access_log}"#;

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

async fn wait_lines(path: &Path, n: usize) -> Vec<String> {
    eventually(&format!("{n} lines in {}", path.display()), || async {
        let got = lines(path);
        (got.len() >= n).then_some(got)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_after_logrotate_moves_the_file_starts_a_new_one_and_loses_no_line() {
    let dir = temp_dir("access-log-rotate");
    let stable = Upstream::start("stable");
    let file = dir.join("graylane.yaml");
    let yaml = fill(
        CONFIG,
        &[
            ("stable", stable.addr.to_string()),
            ("access_log", String::new()),
        ],
    );
    write_atomic(&file, &yaml);
    let log = dir.join("access.log");
    let rotated = dir.join("access.log.1");
    let mut process = spawn_in(
        &dir,
        &[
            "serve",
            "--config",
            file.to_str().unwrap(),
            "--workers",
            "2",
            "--drain-timeout",
            "2s",
            "--access-log",
            log.to_str().unwrap(),
            "--access-log-format",
            "combined",
        ],
    );
    let proxy = bound(&mut process, false).listeners[0];
    eventually("the proxy to answer", || async {
        let r = try_get(proxy, "/first", &[]).await.ok()?;
        (r.status == StatusCode::OK).then_some(())
    })
    .await;
    let first = wait_lines(&log, 1).await;
    assert!(
        first[0].starts_with("127.0.0.1 - - [") && first[0].contains("\"GET /first HTTP/1.1\" 200"),
        "{}",
        first[0]
    );
    std::fs::rename(&log, &rotated).unwrap();
    get(proxy, "/before-the-signal", &[]).await;
    wait_lines(&rotated, 2).await;
    process.signal("USR1");
    eventually("a new file at the path", || async {
        log.exists().then_some(())
    })
    .await;
    get(proxy, "/after-the-signal", &[]).await;
    let fresh = wait_lines(&log, 1).await;
    assert!(fresh[0].contains("/after-the-signal"), "{}", fresh[0]);
    process.signal("TERM");
    let status = process.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", process.logs());
    let old = lines(&rotated);
    assert_eq!(old.len(), 2, "{old:#?}");
    assert!(old[1].contains("/before-the-signal"));
    assert_eq!(lines(&log).len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_adds_access_log_starts_writing_it() {
    let dir = temp_dir("access-log-reload");
    let stable = Upstream::start("stable");
    let file = dir.join("graylane.yaml");
    let log = dir.join("json.log");
    let with = |access_log: String| {
        fill(
            CONFIG,
            &[
                ("stable", stable.addr.to_string()),
                ("access_log", access_log),
            ],
        )
    };
    write_atomic(&file, &with(String::new()));
    let mut process = spawn_in(
        &dir,
        &[
            "serve",
            "--config",
            file.to_str().unwrap(),
            "--workers",
            "1",
            "--watch-interval",
            "100ms",
        ],
    );
    let proxy = bound(&mut process, false).listeners[0];
    write_atomic(
        &file,
        &with(format!("access_log: {{ path: {} }}\n", log.display())),
    );
    let got = eventually("the reloaded access log to get a line", || async {
        let r = try_get(proxy, "/logged", &[]).await.ok()?;
        assert_eq!(r.status, StatusCode::OK);
        let got = lines(&log);
        (!got.is_empty()).then_some(got)
    })
    .await;
    let line: serde_json::Value = serde_json::from_str(&got[0]).unwrap();
    assert_eq!(line["path"], "/logged");
    assert_eq!(line["service"], "web");
    assert_eq!(line["version"], "stable");
    assert_eq!(line["reason"], "no_release");
    process.signal("TERM");
    process.wait_exit(Duration::from_secs(20));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serve_refuses_to_start_when_the_access_log_cannot_be_opened() {
    let dir = temp_dir("access-log-unwritable");
    let stable = Upstream::start("stable");
    let file = dir.join("graylane.yaml");
    let log = dir.join("missing-folder").join("access.log");
    write_atomic(
        &file,
        &fill(
            CONFIG,
            &[
                ("stable", stable.addr.to_string()),
                ("access_log", String::new()),
            ],
        ),
    );
    let mut process = spawn_in(
        &dir,
        &[
            "serve",
            "--config",
            file.to_str().unwrap(),
            "--access-log",
            log.to_str().unwrap(),
        ],
    );
    let status = process.wait_exit(COMMAND_DEADLINE);
    assert!(!status.success());
    let stderr = process.stderr();
    assert!(
        stderr.contains(&format!("cannot open the access log {}", log.display())),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
