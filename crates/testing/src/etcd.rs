//! A real etcd server for tests: Debian's `etcd-server` (`/usr/bin/etcd`, installed by
//! `scripts/deps`), listening on loopback only, with its data in a temporary directory that
//! outlives a kill so a test can restart it on the same data. etcd cannot be handed a socket: it
//! is started on a pair of candidate ports, and on another pair when it could not bind those.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// A running (or stopped) etcd on 127.0.0.1.
pub struct EtcdServer {
    child: Option<Child>,
    data: PathBuf,
    /// The client port.
    pub port: u16,
    peer_port: u16,
}

/// Ports handed out in this process, from a base that differs between processes so parallel
/// test binaries rarely collide; a port etcd cannot bind is detected and the next one tried.
/// They stay below Linux's ephemeral range (32768 and up), where any outgoing connection of a
/// busy machine may be holding a port.
static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

fn next_port() -> u16 {
    let _ = NEXT_PORT.compare_exchange(
        0,
        10_000 + (std::process::id() % 1_000) as u16 * 22,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    let p = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
    if p >= 32_000 { 10_000 + p % 22_000 } else { p }
}

impl EtcdServer {
    /// Starts etcd with a fresh data directory and waits until it answers.
    pub fn start() -> EtcdServer {
        let data = std::env::temp_dir().join(format!(
            "graylane-etcd-{}-{}",
            std::process::id(),
            next_port()
        ));
        let mut last_words = String::new();
        for _ in 0..20 {
            let (port, peer_port) = (next_port(), next_port());
            let mut server = EtcdServer {
                child: None,
                data: data.clone(),
                port,
                peer_port,
            };
            if server.spawn() {
                return server;
            }
            last_words = std::fs::read_to_string(log_of(&data)).unwrap_or_default();
        }
        panic!("etcd did not start on any of 20 port pairs; its last words:\n{last_words}");
    }

    /// `http://127.0.0.1:PORT`, what `--etcd` takes.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills etcd at once (SIGKILL), keeping its data.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports and data, after [`EtcdServer::kill`].
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "etcd is still running");
        let deadline = Instant::now() + Duration::from_secs(10);
        // The killed process's sockets may linger a moment.
        while !self.spawn() {
            assert!(
                Instant::now() < deadline,
                "etcd did not restart on its ports"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Where etcd keeps its data.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Starts the process and waits for it to accept connections; `false` if it exited (a port
    /// in use) or did not answer in time.
    fn spawn(&mut self) -> bool {
        let client = format!("http://127.0.0.1:{}", self.port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut child = Command::new("etcd")
            .arg("--name")
            .arg("test")
            .arg("--data-dir")
            .arg(&self.data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}")])
            .args(["--log-level", "error", "--logger", "zap"])
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(log_of(&self.data))
                    .map_or_else(|_| Stdio::null(), Stdio::from),
            )
            .spawn()
            .expect("etcd on PATH (Debian package etcd-server; scripts/deps installs it)");
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() && self.healthy() {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Whether etcd answers its health endpoint (it has a leader and serves reads).
    fn healthy(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let req = format!(
            "GET /health HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            self.port
        );
        if s.write_all(req.as_bytes()).is_err() {
            return false;
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.contains("\"health\":\"true\"")
    }
}

/// Where etcd's own messages go: beside its data, to say why a start failed.
fn log_of(data: &Path) -> PathBuf {
    data.with_extension("log")
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.data);
        let _ = std::fs::remove_file(log_of(&self.data));
    }
}
