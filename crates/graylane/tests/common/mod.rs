//! Helpers shared by the process-level tests: running the built `graylane` binary (bounded in
//! time, killed if a test fails), a test upstream, and a small HTTP/1.1 client.

// Each test binary includes this module and uses a different subset of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

pub(crate) mod fleet;

/// Upper bound on one HTTP exchange.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound on waiting for something to become true (a process to be ready, a reload).
pub(crate) const POLL_DEADLINE: Duration = Duration::from_secs(10);
/// Upper bound on a command that should finish by itself (validate, eval).
pub(crate) const COMMAND_DEADLINE: Duration = Duration::from_secs(30);

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

/// A free loopback port: bound by the kernel's choice, then released for the child to use.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Replaces each `{key}` in `template` by its value.
pub(crate) fn fill(template: &str, values: &[(&str, String)]) -> String {
    let mut out = template.to_string();
    for (k, v) in values {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// What a finished command printed.
#[derive(Debug)]
pub(crate) struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub(crate) fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// Runs `graylane ARGS` to completion (killed after [`COMMAND_DEADLINE`]).
pub(crate) fn run(args: &[&str]) -> Output {
    run_with_env(args, &[])
}

/// [`run`] with extra environment variables (such as `GRAYLANE_TOKEN`).
pub(crate) fn run_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let dir = temp_dir(&format!("run-{}", unique()));
    let mut p = Graylane::spawn_with_env(&dir, args, env);
    let status = p.wait_exit(COMMAND_DEADLINE);
    let out = Output {
        status,
        stdout: p.stdout(),
        stderr: p.stderr(),
    };
    let _ = std::fs::remove_dir_all(&dir);
    out
}

fn unique() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::SeqCst)
}

/// A running `graylane` process; killed when dropped, so a failing test leaves nothing behind.
/// Its output goes to files (never a pipe nobody reads, which could block it).
pub(crate) struct Graylane {
    child: Child,
    out: PathBuf,
    err: PathBuf,
    exited: Option<ExitStatus>,
}

impl Graylane {
    pub(crate) fn spawn_in(dir: &Path, args: &[&str]) -> Graylane {
        Graylane::spawn_with_env(dir, args, &[])
    }

    /// Runs in `dir` (so the default `graylane-data` store lands there) with extra
    /// environment variables (admin tokens).
    pub(crate) fn spawn_with_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Graylane {
        let n = unique();
        let out = dir.join(format!("stdout-{n}.txt"));
        let err = dir.join(format!("stderr-{n}.txt"));
        let child = Command::new(BIN)
            .args(args)
            .current_dir(dir)
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
        Graylane {
            child,
            out,
            err,
            exited: None,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    pub(crate) fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Both outputs, for failure messages.
    pub(crate) fn logs(&self) -> String {
        format!("--- stdout\n{}--- stderr\n{}", self.stdout(), self.stderr())
    }

    /// The exit status if the process has ended.
    pub(crate) fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().unwrap();
        }
        self.exited
    }

    /// Sends a signal by name (`TERM`, `HUP`, ...) with `kill(1)`.
    pub(crate) fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.pid().to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill -s {name} {} failed", self.pid());
    }

    /// Waits for the process to end; kills it and panics after `deadline`.
    pub(crate) fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = self.try_exit() {
                return status;
            }
            if Instant::now() > until {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("graylane did not exit within {deadline:?}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Panics with the logs if the process has ended.
    #[track_caller]
    pub(crate) fn assert_running(&mut self) {
        if let Some(status) = self.try_exit() {
            panic!("graylane exited early ({status})\n{}", self.logs());
        }
    }
}

impl Drop for Graylane {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Test upstream
// ---------------------------------------------------------------------------------------------

/// A request header the test upstream obeys: hold the answer until [`Upstream::release`].
pub(crate) const HOLD_HEADER: &str = "x-test-hold";

struct UpstreamState {
    received: AtomicU64,
    released: tokio::sync::watch::Sender<bool>,
    /// Every n-th request is answered 500 (0: none).
    fail_every: AtomicU64,
}

/// A test upstream on 127.0.0.1 answering `{"version": NAME, "path", "headers": {...}}`, on its
/// own thread and runtime; stopped (listener and connections closed) when dropped.
pub(crate) struct Upstream {
    pub addr: SocketAddr,
    state: Arc<UpstreamState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Upstream {
    pub(crate) fn start(name: &'static str) -> Upstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(UpstreamState {
            received: AtomicU64::new(0),
            released: tokio::sync::watch::channel(false).0,
            fail_every: AtomicU64::new(0),
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let thread_state = Arc::clone(&state);
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener).unwrap();
                tokio::select! {
                    _ = accept_loop(listener, name, thread_state) => {}
                    _ = stop_rx => {}
                }
            });
        });
        Upstream {
            addr,
            state,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Requests received so far (counted as soon as their headers arrive).
    pub(crate) fn received(&self) -> u64 {
        self.state.received.load(Ordering::SeqCst)
    }

    /// Answers every `n`-th request from now on with a 500 (0: none).
    pub(crate) fn fail_every(&self, n: u64) {
        self.state.fail_every.store(n, Ordering::SeqCst);
    }

    /// Lets every held request (and any later one) be answered.
    pub(crate) fn release(&self) {
        self.state.released.send_replace(true);
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, name: &'static str, state: Arc<UpstreamState>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(req, name, Arc::clone(&state)));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    name: &'static str,
    state: Arc<UpstreamState>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let n = state.received.fetch_add(1, Ordering::SeqCst) + 1;
    let fail_every = state.fail_every.load(Ordering::SeqCst);
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in req.headers() {
        headers.insert(
            k.as_str().to_string(),
            String::from_utf8_lossy(v.as_bytes()).into_owned(),
        );
    }
    if req.headers().contains_key(HOLD_HEADER) {
        let mut released = state.released.subscribe();
        // Bounded, so a test that forgets to release cannot hang forever.
        let _ = tokio::time::timeout(Duration::from_secs(30), released.wait_for(|r| *r)).await;
    }
    let json = serde_json::json!({
        "version": name,
        "path": req.uri().to_string(),
        "headers": headers,
    });
    let mut resp = Response::new(Full::new(Bytes::from(json.to_string())));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if fail_every > 0 && n.is_multiple_of(fail_every) {
        *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    }
    Ok(resp)
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub(crate) struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub(crate) fn version(&self) -> Option<&str> {
        self.headers
            .get("x-graylane-version")
            .and_then(|v| v.to_str().ok())
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }
}

/// One GET on a new connection, bounded by [`REQUEST_TIMEOUT`].
pub(crate) async fn try_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    try_request(addr, http::Method::GET, path, headers, Bytes::new()).await
}

/// Any request with a body, on a new connection, bounded by [`REQUEST_TIMEOUT`].
pub(crate) async fn request(
    addr: SocketAddr,
    method: http::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    try_request(addr, method, path, headers, body.into())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

pub(crate) async fn try_request(
    addr: SocketAddr,
    method: http::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Reply, String> {
    let exchange = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(header::HOST, addr.to_string());
        for (k, v) in headers {
            req = req.header(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let req = req.body(Full::new(body)).unwrap();
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?
            .to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("{method} {path} via {addr}: no answer within {REQUEST_TIMEOUT:?}"))?
}

pub(crate) async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    try_get(addr, path, headers)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The value of the sample `series` in a Prometheus text exposition, if present.
pub(crate) fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

/// Polls `check` until it returns `Some`, up to [`POLL_DEADLINE`]; panics naming `what`.
pub(crate) async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_within(POLL_DEADLINE, what, check).await
}

/// [`eventually`] with its own bound, for what takes several analysis intervals of real
/// traffic (slower on a loaded machine, never unbounded).
pub(crate) async fn eventually_within<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// A served gateway
// ---------------------------------------------------------------------------------------------

/// A `graylane serve` process on free loopback ports in front of two test upstreams, `stable`
/// and `canary`; its working folder (and store) is the test's own. Killed if dropped.
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
    /// `{port}`, `{admin}`, `{stable}` and `{canary}`; starts serve with `env` (admin tokens)
    /// and waits for its admin listener.
    pub(crate) async fn start(
        test: &str,
        template: &str,
        extra: &[(&str, String)],
        env: &[(&str, &str)],
    ) -> Served {
        let dir = temp_dir(test);
        let file = dir.join("graylane.yaml");
        let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let (proxy, admin) = (loopback(free_port()), loopback(free_port()));
        let (stable, canary) = (Upstream::start("stable"), Upstream::start("canary"));
        let yaml = fill(
            &fill(template, extra),
            &[
                ("port", proxy.port().to_string()),
                ("admin", admin.port().to_string()),
                ("stable", stable.addr.to_string()),
                ("canary", canary.addr.to_string()),
            ],
        );
        write_atomic(&file, &yaml);
        let process = Graylane::spawn_with_env(
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

/// A `redis-server` on loopback `port`, keeping nothing on disk, with a password when given;
/// ready (it answers `PING`) when `start` returns, killed on drop.
pub(crate) struct RedisServer {
    child: Child,
    pub port: u16,
}

impl RedisServer {
    pub(crate) fn start(port: u16, password: Option<&str>) -> RedisServer {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"]);
        if let Some(password) = password {
            command.args(["--requirepass", password]);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (scripts/deps installs it)");
        let redis = RedisServer { child, port };
        for _ in 0..200 {
            let mut ping = Command::new("redis-cli");
            ping.args(["-p", &port.to_string()]);
            if let Some(password) = password {
                ping.args(["--no-auth-warning", "-a", password]);
            }
            let out = ping
                .arg("PING")
                .output()
                .expect("redis-cli (Debian package redis-tools, with redis-server)");
            if String::from_utf8_lossy(&out.stdout).trim() == "PONG" {
                return redis;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server did not answer on port {port}");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
