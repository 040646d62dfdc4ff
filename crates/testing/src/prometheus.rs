//! A real Prometheus server (Debian's `prometheus`, installed by `scripts/deps`) on loopback,
//! scraping one target every second; killed on drop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ports::with_fresh_port;

/// A `prometheus` process and its folder (configuration, data, log).
pub struct PrometheusServer {
    child: Child,
    dir: PathBuf,
    /// Its port.
    pub port: u16,
}

impl PrometheusServer {
    /// Starts Prometheus in `dir` (created; removed on drop), scraping `target` if given, and
    /// waits until it is ready.
    pub fn start(dir: &Path, target: Option<SocketAddr>) -> PrometheusServer {
        std::fs::create_dir_all(dir).expect("a folder for prometheus");
        write_config(dir, target);
        with_fresh_port("prometheus", |port| launch(dir, port))
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Scrapes `target` from now on (the configuration rewritten, then reloaded with SIGHUP).
    pub fn scrape(&self, target: SocketAddr) {
        write_config(&self.dir, Some(target));
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("kill(1)");
        assert!(status.success(), "kill -HUP prometheus");
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write_config(dir: &Path, target: Option<SocketAddr>) {
    let targets = target.map_or_else(String::new, |t| format!("'{t}'"));
    let yaml = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: graylane\n    static_configs:\n      - targets: [{targets}]\n"
    );
    let tmp = dir.join("prometheus.yml.tmp");
    std::fs::write(&tmp, yaml).expect("prometheus.yml");
    std::fs::rename(&tmp, dir.join("prometheus.yml")).expect("prometheus.yml");
}

fn launch(dir: &Path, port: u16) -> Result<PrometheusServer, String> {
    let log = dir.join(format!("prometheus-{port}.log"));
    let child = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("a log file"))
        .spawn()
        .expect("the prometheus binary (Debian package `prometheus`; scripts/deps installs it)");
    let mut server = PrometheusServer {
        child,
        dir: dir.to_path_buf(),
        port,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if ready(port) {
            return Ok(server);
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            let words = std::fs::read_to_string(&log).unwrap_or_default();
            // Dropping `server` would remove the folder the next attempt uses.
            std::mem::forget(server);
            return Err(format!(
                "prometheus exited ({status}) on port {port}:\n{words}"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = server.child.kill();
    let _ = server.child.wait();
    std::mem::forget(server);
    Err(format!("prometheus on port {port} not ready within 30 s"))
}

/// Whether `/-/ready` answers 200.
fn ready(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req =
        format!("GET /-/ready HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200")
}
