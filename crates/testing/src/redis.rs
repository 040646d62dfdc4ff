//! A real `redis-server` on loopback (`scripts/deps` installs it), keeping nothing on disk,
//! with a password when asked; killed on drop.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ports::with_fresh_port;

/// A `redis-server` process on 127.0.0.1.
pub struct RedisServer {
    child: Option<Child>,
    password: Option<String>,
    /// Its port.
    pub port: u16,
}

impl RedisServer {
    /// An empty server on a port of its own, answering `PING` when this returns.
    pub fn start() -> RedisServer {
        RedisServer::start_with(None)
    }

    /// [`RedisServer::start`] with `requirepass` set to `password` when given.
    pub fn start_with(password: Option<&str>) -> RedisServer {
        with_fresh_port("redis-server", |port| RedisServer::launch(port, password))
    }

    /// On `port`, e.g. to bring a killed server back where its clients expect it; panics if
    /// it cannot bind it.
    pub fn start_on(port: u16) -> RedisServer {
        RedisServer::launch(port, None).unwrap_or_else(|e| panic!("{e}"))
    }

    fn launch(port: u16, password: Option<&str>) -> Result<RedisServer, String> {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"]);
        if let Some(password) = password {
            command.args(["--requirepass", password]);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (run scripts/deps)");
        let mut server = RedisServer {
            child: Some(child),
            password: password.map(str::to_string),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if server.answers() {
                return Ok(server);
            }
            let child = server.child.as_mut().expect("just started");
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "redis-server exited ({status}) on port {port}, most likely taken"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("redis-server on port {port} not ready within 10 s"))
    }

    /// `redis://127.0.0.1:PORT` (without the password).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    /// SIGKILL, like a crash; waits for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts an empty one on the same port.
    pub fn restart(&mut self) {
        self.kill();
        let fresh = RedisServer::launch(self.port, self.password.as_deref())
            .unwrap_or_else(|e| panic!("restarting: {e}"));
        *self = fresh;
    }

    /// SIGSTOP: the server keeps its connections open and stops answering.
    pub fn pause(&self) {
        signal(self.pid(), "-STOP");
    }

    /// SIGCONT.
    pub fn resume(&self) {
        signal(self.pid(), "-CONT");
    }

    /// A separate connection for the test's own commands.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        let url = match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}", self.port),
            None => self.url(),
        };
        redis::Client::open(url)
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test redis")
    }

    /// A counter from `INFO`: e.g. `("commandstats", "cmdstat_evalsha", "calls")` or
    /// `("stats", "total_connections_received", "")`.
    pub async fn info_number(&self, section: &str, line: &str, field: &str) -> u64 {
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

    /// Whether it answers `PING` (after `AUTH` when it has a password): `+PONG`, or `+OK`
    /// then `+PONG`.
    fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut expected = Vec::new();
        if let Some(password) = &self.password {
            let auth = format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{password}\r\n", password.len());
            if s.write_all(auth.as_bytes()).is_err() {
                return false;
            }
            expected.extend_from_slice(b"+OK\r\n");
        }
        expected.extend_from_slice(b"+PONG\r\n");
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = vec![0u8; expected.len()];
        s.read_exact(&mut buf).is_ok() && buf == expected
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
