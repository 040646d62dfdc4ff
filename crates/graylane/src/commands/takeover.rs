//! `graylane serve --takeover`: a new process takes the listening sockets and the store over
//! from the process running on the same `--data-dir`, so that an upgrade or a restart refuses no
//! connection and fails no request (as Envoy's hot restart and Pingora's graceful upgrade do).
//!
//! The running process listens on `<data-dir>/takeover.sock`. One takeover is one connection:
//!
//! 1. running → new: one JSON line, `{"listeners": ["ADDR", ...], "admin": "ADDR" | null}`, with
//!    the listening sockets attached in the same order, the admin listener's last (SCM_RIGHTS).
//!    Both processes now hold the same sockets; only the running one accepts.
//! 2. The new process sets up everything that can fail (listeners it must bind itself, TLS
//!    certificates, the admin listener), then sends `drain`. If it fails first, it just closes
//!    the connection and the running process keeps serving as if nothing happened.
//! 3. running: stops accepting (the kernel queues new connections on the shared sockets), stops
//!    its controller and admin listener, closes the store and answers `released`. Then it
//!    answers every request it has read, closes its connections cleanly and exits 0.
//! 4. new: opens the store, applies the release state and starts accepting, queue first.

use std::io::{BufRead, BufReader, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use graylane_store::{
    AuditEntry, AuditFilter, NewAuditEntry, NewRevision, RedbStore, Revision, RevisionMeta, Store,
    StoreError,
};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// The most sockets one takeover carries (listeners and the admin listener).
const MAX_SOCKETS: usize = 64;
/// The most the JSON line may take.
const MAX_HEADER: usize = 64 * 1024;
/// How long the running process waits for the new one to say `drain` once it has the sockets.
const DECIDE_WAIT: Duration = Duration::from_secs(30);

/// Where the running process offers its sockets.
pub(crate) fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("takeover.sock")
}

#[derive(Serialize, Deserialize)]
struct Offer {
    listeners: Vec<SocketAddr>,
    admin: Option<SocketAddr>,
}

// ---------------------------------------------------------------------------------------------
// The new process
// ---------------------------------------------------------------------------------------------

/// The process being taken over, with the sockets it sent.
pub(crate) struct Predecessor {
    stream: BufReader<UnixStream>,
    path: PathBuf,
    pub listeners: Vec<TcpListener>,
    pub admin: Option<TcpListener>,
}

impl Predecessor {
    /// Connects to the process serving `data_dir` and receives its listening sockets.
    pub(crate) fn connect(data_dir: &Path) -> anyhow::Result<Predecessor> {
        let path = socket_path(data_dir);
        let stream = UnixStream::connect(&path).with_context(|| {
            format!(
                "--takeover: no running graylane to take over with --data-dir {} (cannot connect to {})",
                data_dir.display(),
                path.display()
            )
        })?;
        stream.set_read_timeout(Some(DECIDE_WAIT))?;
        let fail = |what: String| anyhow::anyhow!("--takeover via {}: {what}", path.display());
        let mut bytes = vec![0u8; MAX_HEADER];
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let received = rustix::net::recvmsg(
            &stream,
            &mut [IoSliceMut::new(&mut bytes)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .map_err(|e| fail(format!("receiving the sockets: {e}")))?;
        let mut fds: Vec<OwnedFd> = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = message {
                fds.extend(rights);
            }
        }
        bytes.truncate(received.bytes);
        let mut stream = BufReader::new(stream);
        // The line normally arrives whole with the sockets; read on if it did not.
        while !bytes.contains(&b'\n') && bytes.len() < MAX_HEADER {
            let mut more = Vec::new();
            let n = (&mut stream)
                .take((MAX_HEADER - bytes.len()) as u64)
                .read_until(b'\n', &mut more)?;
            if n == 0 {
                return Err(fail("the running process closed the connection".into()));
            }
            bytes.extend(more);
        }
        let line = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
        let offer: Offer = serde_json::from_slice(line)
            .map_err(|e| fail(format!("unreadable offer from the running process: {e}")))?;
        let expected = offer.listeners.len() + usize::from(offer.admin.is_some());
        if fds.len() != expected {
            return Err(fail(format!(
                "the running process sent {} sockets for {expected} listeners",
                fds.len()
            )));
        }
        let mut sockets = fds.into_iter().map(TcpListener::from);
        let listeners = sockets.by_ref().take(offer.listeners.len()).collect();
        let admin = sockets.next();
        Ok(Predecessor {
            stream,
            path,
            listeners,
            admin,
        })
    }

    /// The inherited admin listener if it is bound to `addr`; it is closed otherwise.
    pub(crate) fn take_admin(&mut self, addr: SocketAddr) -> Option<TcpListener> {
        let admin = self.admin.take()?;
        (admin.local_addr().ok()? == addr).then_some(admin)
    }

    /// Tells the running process to stop accepting and to close the store; returns once it has
    /// (or has exited), waiting at most `wait`.
    pub(crate) fn drain(mut self, wait: Duration) -> anyhow::Result<()> {
        let path = self.path.clone();
        let stream = self.stream.get_mut();
        stream.set_read_timeout(Some(wait))?;
        stream
            .write_all(b"drain\n")
            .with_context(|| format!("--takeover via {}: asking to drain", path.display()))?;
        let mut answer = String::new();
        match self.stream.read_line(&mut answer) {
            // An empty answer: the process exited, which released the store too.
            Ok(_) if answer.is_empty() || answer.trim() == "released" => Ok(()),
            Ok(_) => anyhow::bail!(
                "--takeover via {}: unexpected answer {:?}",
                path.display(),
                answer.trim()
            ),
            Err(e) => anyhow::bail!(
                "--takeover via {}: the running process did not release the store within {wait:?}: {e}",
                path.display()
            ),
        }
    }
}

/// Opens the store, waiting up to `wait` while another process still has it open (the process
/// being taken over, closing it).
pub(crate) fn open_store(data_dir: &Path, wait: Duration) -> Result<RedbStore, StoreError> {
    let until = Instant::now() + wait;
    loop {
        match RedbStore::open(data_dir) {
            Err(StoreError::Locked { .. }) if Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The running process
// ---------------------------------------------------------------------------------------------

/// Offers this process's sockets to a successor. Bind only while holding the store: then no
/// other process serves this data directory, and a socket file left there is stale.
pub(crate) fn listen(data_dir: &Path) -> anyhow::Result<std::os::unix::net::UnixListener> {
    let path = socket_path(data_dir);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
    let listener = std::os::unix::net::UnixListener::bind(&path)
        .with_context(|| format!("cannot listen for a takeover on {}", path.display()))?;
    // Whoever connects gets the listening sockets and can stop this process: its user only.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {} to this user", path.display()))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// A successor that has the sockets and asked this process to drain.
pub(crate) struct Successor(tokio::net::UnixStream);

impl Successor {
    /// Tells the successor the store is closed.
    pub(crate) async fn released(mut self) {
        if let Err(e) = self.0.write_all(b"released\n").await {
            tracing::warn!("cannot tell the new process the store is closed: {e}");
        }
    }
}

/// Waits for a new process to take over, offering it what `sockets` returns (the listeners,
/// then the admin listener). A new process that gives up is logged and waited past.
pub(crate) async fn wait_for_successor<F>(
    listener: tokio::net::UnixListener,
    sockets: F,
) -> Successor
where
    F: Fn() -> std::io::Result<(Vec<TcpListener>, Option<TcpListener>)>,
{
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("takeover socket: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match offer(stream, &sockets).await {
            Ok(Some(successor)) => return successor,
            Ok(None) => tracing::warn!(
                "a new process took the listening sockets but did not take over; still serving"
            ),
            Err(e) => tracing::warn!("takeover failed, still serving: {e}"),
        }
    }
}

async fn offer<F>(stream: tokio::net::UnixStream, sockets: &F) -> anyhow::Result<Option<Successor>>
where
    F: Fn() -> std::io::Result<(Vec<TcpListener>, Option<TcpListener>)>,
{
    let (listeners, admin) = sockets()?;
    let header = Offer {
        listeners: listeners
            .iter()
            .map(TcpListener::local_addr)
            .collect::<std::io::Result<_>>()?,
        admin: admin.as_ref().map(TcpListener::local_addr).transpose()?,
    };
    let mut line = serde_json::to_vec(&header)?;
    line.push(b'\n');
    let fds: Vec<BorrowedFd<'_>> = listeners.iter().chain(&admin).map(AsFd::as_fd).collect();
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    anyhow::ensure!(
        control.push(SendAncillaryMessage::ScmRights(&fds)),
        "too many sockets to send"
    );
    let sent = stream
        .async_io(tokio::io::Interest::WRITABLE, || {
            rustix::net::sendmsg(
                &stream,
                &[IoSlice::new(&line)],
                &mut control,
                SendFlags::empty(),
            )
            .map_err(std::io::Error::from)
        })
        .await?;
    let mut stream = tokio::io::BufReader::new(stream);
    if sent < line.len() {
        stream.get_mut().write_all(&line[sent..]).await?;
    }
    let mut answer = String::new();
    match tokio::time::timeout(DECIDE_WAIT, stream.read_line(&mut answer)).await {
        Ok(Ok(_)) if answer.trim() == "drain" => Ok(Some(Successor(stream.into_inner()))),
        Ok(_) | Err(_) => Ok(None),
    }
}

/// The store, until this process hands it to its successor: [`ReleasableStore::release`] closes
/// the database file (its lock with it), and every later call fails as if another process had
/// it open, which it then does.
pub(crate) struct ReleasableStore {
    path: PathBuf,
    inner: RwLock<Option<Arc<RedbStore>>>,
}

impl ReleasableStore {
    pub(crate) fn new(store: RedbStore, data_dir: &Path) -> ReleasableStore {
        ReleasableStore {
            path: data_dir.join("graylane.redb"),
            inner: RwLock::new(Some(Arc::new(store))),
        }
    }

    /// Closes the store once the calls in progress are done.
    pub(crate) fn release(&self) {
        let store = self.inner.write().unwrap_or_else(|e| e.into_inner()).take();
        drop(store);
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&RedbStore) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let guard = self.inner.read().unwrap_or_else(|e| e.into_inner());
        match guard.as_deref() {
            Some(store) => f(store),
            None => Err(StoreError::Locked {
                path: self.path.clone(),
            }),
        }
    }
}

impl Store for ReleasableStore {
    fn add_revision(&self, env: &str, new: NewRevision) -> Result<Revision, StoreError> {
        self.with(|s| s.add_revision(env, new))
    }

    fn revision(&self, env: &str, n: u64) -> Result<Option<Revision>, StoreError> {
        self.with(|s| s.revision(env, n))
    }

    fn latest_revision(&self, env: &str) -> Result<Option<Revision>, StoreError> {
        self.with(|s| s.latest_revision(env))
    }

    fn revisions(&self, env: &str) -> Result<Vec<RevisionMeta>, StoreError> {
        self.with(|s| s.revisions(env))
    }

    fn releases(&self, env: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.with(|s| s.releases(env))
    }

    fn record_release(
        &self,
        env: &str,
        service: &str,
        state: &[u8],
        audit: NewAuditEntry,
    ) -> Result<AuditEntry, StoreError> {
        self.with(|s| s.record_release(env, service, state, audit))
    }

    fn delete_release(
        &self,
        env: &str,
        service: &str,
        audit: NewAuditEntry,
    ) -> Result<AuditEntry, StoreError> {
        self.with(|s| s.delete_release(env, service, audit))
    }

    fn append_audit(&self, env: &str, entry: NewAuditEntry) -> Result<AuditEntry, StoreError> {
        self.with(|s| s.append_audit(env, entry))
    }

    fn audit_matching(
        &self,
        env: &str,
        filter: &AuditFilter,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        self.with(|s| s.audit_matching(env, filter, limit))
    }

    fn set_audit_retention(&self, max_entries: u64, max_age_ms: i64) {
        // A released store takes no more writes, so it has nothing left to prune.
        let _ = self.with(|s| {
            s.set_audit_retention(max_entries, max_age_ms);
            Ok(())
        });
    }

    fn environments(&self) -> Result<Vec<String>, StoreError> {
        self.with(|s| s.environments())
    }
}
