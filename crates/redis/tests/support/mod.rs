//! A real `redis-server` on a free loopback port, killed on drop; `scripts/deps` installs
//! it.

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct RedisServer {
    child: Option<Child>,
    pub port: u16,
}

impl RedisServer {
    pub(crate) fn start() -> RedisServer {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        RedisServer::start_on(port)
    }

    /// On `port`, e.g. to bring a killed server back where its clients expect it. Empty: the
    /// server keeps nothing on disk.
    pub(crate) fn start_on(port: u16) -> RedisServer {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (run scripts/deps)");
        let server = RedisServer {
            child: Some(child),
            port,
        };
        server.wait_ready();
        server
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    /// Answers PING within 10 s, or panics.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if ping(self.port) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} not ready within 10 s", self.port);
    }

    /// SIGKILL, like a crash; waits for the process to be gone.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts an empty one on the same port.
    pub(crate) fn restart(&mut self) {
        self.kill();
        let fresh = RedisServer::start_on(self.port);
        *self = fresh;
    }

    /// SIGSTOP: the server keeps its connections open and stops answering.
    pub(crate) fn pause(&self) {
        signal(self.pid(), "-STOP");
    }

    /// SIGCONT.
    pub(crate) fn resume(&self) {
        signal(self.pid(), "-CONT");
    }

    /// A separate connection for the test's own commands.
    pub(crate) async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test redis")
    }

    /// A counter from `INFO`: e.g. `("commandstats", "cmdstat_evalsha", "calls")` or
    /// `("stats", "total_connections_received", "")`.
    pub(crate) async fn info_number(&self, section: &str, line: &str, field: &str) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg(section)
            .query_async(&mut self.conn().await)
            .await
            .expect("INFO");
        for l in info.lines() {
            let Some(value) = l.strip_prefix(line).and_then(|r| r.strip_prefix(':')) else {
                continue;
            };
            if field.is_empty() {
                return value.trim().parse().expect("a number");
            }
            for part in value.split(',') {
                if let Some(n) = part.strip_prefix(field).and_then(|r| r.strip_prefix('=')) {
                    return n.trim().parse().expect("a number");
                }
            }
        }
        0
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // SIGKILL: works on a paused server too.
        self.kill();
    }
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill(1)");
    assert!(status.success(), "kill {sig} {pid}");
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// Polls `cond` every 10 ms until it holds or `limit` passes; returns how long it took.
pub(crate) async fn eventually(
    limit: Duration,
    mut cond: impl FnMut() -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if cond() {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
