//! Thread-per-core serving: each worker thread runs its own current-thread Tokio runtime, its
//! own upstream pool and its own metrics slot, so requests on different cores share nothing but
//! the routing snapshot (read through a per-thread cache) and relaxed counters.
//!
//! Each listener is ONE listening socket, bound without `SO_REUSEPORT` so that a second process
//! on the same address fails with "address in use" instead of silently taking half the
//! connections. Every worker accepts from its own duplicate of that socket (one accept queue,
//! as nginx without `reuseport`), and the same socket can be handed to a successor process
//! (`graylane serve --takeover`) with its queue intact. With one queue, whichever worker wakes
//! first may accept a whole burst of connections, so the [`Balancer`] hands each accepted
//! connection to the worker with the fewest (as Envoy's exact connection balancer does).
//!
//! Draining ([`Phase`]): an HTTP/1.1 connection is never closed while its client may be sending
//! a request on it. Every response after the drain begins says `Connection: close`, and only a
//! connection idle for [`DRAIN_IDLE_GRACE`] is closed; HTTP/2 connections get a GOAWAY.

pub(crate) mod tls;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::{ArcSwap, Cache};
use futures_util::FutureExt;
use graylane_config::Listener;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use crate::deadline::Deadlines;
use crate::handler::{ConnInfo, Tunnel, Worker, forwarded_for, handle};
use crate::metrics::Metrics;
use crate::snapshot::{LocalSnapshot, Snapshot};
use crate::upstream::UpstreamPool;

/// The most an HTTP/1.1 request line and headers may take. hyper answers a longer head with
/// `431`; without this cap it would buffer ~400 KiB and forward it. (HTTP/2 keeps hyper's own
/// 16 KiB header list limit.) The figure is Envoy's 60 KiB default, rounded up.
const MAX_REQUEST_HEAD_BYTES: usize = 64 * 1024;

/// How long a draining HTTP/1.1 connection may sit idle before it is closed. A client that sends
/// its next request within this gets an answer (with `Connection: close`) rather than a
/// connection closed under its request.
const DRAIN_IDLE_GRACE: Duration = Duration::from_secs(1);

/// Where the gateway is in its life; every worker follows it through a watch channel. Ordered:
/// each phase comes after the ones above it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    /// Listening (the kernel completes and queues connections) but not accepting yet: the
    /// process is still getting its release state, so nothing is routed without it.
    Held,
    Serving,
    /// A successor process has the listening sockets: stop accepting and leave the queued
    /// connections to it; finish the connections already accepted.
    HandedOver,
    /// No successor: accept what the kernel has already queued (those clients sent their
    /// requests before the shutdown), then stop; finish every accepted connection.
    Stopping,
}

/// One listener as a worker serves it.
pub(crate) struct BoundListener {
    /// This worker's duplicate of the listener's one socket.
    pub socket: std::net::TcpListener,
    pub config: Listener,
    pub tls: Option<TlsAcceptor>,
    /// Shared by every worker's socket for this listener.
    pub connections: Arc<ConnectionLimit>,
}

/// The open connections of one listener, counted across all workers so `max_connections` is
/// exact. A connection beyond the limit is accepted and closed at once, as Envoy's listener
/// connection limit does: refusing to accept instead would leave it waiting in the kernel's
/// backlog, and the client would see a hang rather than an error it can retry elsewhere.
pub(crate) struct ConnectionLimit {
    open: AtomicUsize,
    max: usize,
}

impl ConnectionLimit {
    pub(crate) fn new(max: usize) -> Arc<ConnectionLimit> {
        Arc::new(ConnectionLimit {
            open: AtomicUsize::new(0),
            max,
        })
    }

    /// A slot for one more connection, or `None` when the listener is full.
    fn try_acquire(self: &Arc<Self>) -> Option<ConnectionSlot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| ConnectionSlot(Arc::clone(self)))
    }
}

/// Frees its connection's place in the limit when the connection task ends, however it ends.
struct ConnectionSlot(Arc<ConnectionLimit>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The open connections of every worker, and a way to hand a worker a connection another one
/// accepted. Counts include connections on their way to a worker, so a worker never stops
/// draining with one still coming.
pub(crate) struct Balancer {
    open: Vec<AtomicUsize>,
    /// Accept loops (one per worker and listener) that may still accept.
    pub(crate) accepting: AtomicUsize,
    inboxes: Vec<mpsc::UnboundedSender<Handed>>,
}

/// A connection accepted by one worker for another: its socket (off the accepting worker's
/// runtime), its peer, and which listener (by index) it came in on.
pub(crate) struct Handed {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    listener: usize,
}

impl Balancer {
    /// A balancer for `workers` workers serving `listeners` listeners, and each worker's inbox.
    pub(crate) fn new(
        workers: usize,
        listeners: usize,
    ) -> (Arc<Balancer>, Vec<mpsc::UnboundedReceiver<Handed>>) {
        let (inboxes, receivers) = (0..workers).map(|_| mpsc::unbounded_channel()).unzip();
        let balancer = Balancer {
            open: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
            accepting: AtomicUsize::new(workers * listeners),
            inboxes,
        };
        (Arc::new(balancer), receivers)
    }

    /// The worker that gets the next connection `me` accepts, counted for it: `me` unless
    /// another has fewer connections.
    fn pick(&self, me: usize) -> usize {
        let mut best = (me, self.open[me].load(Ordering::Relaxed));
        for (w, open) in self.open.iter().enumerate() {
            let n = open.load(Ordering::Relaxed);
            if n < best.1 {
                best = (w, n);
            }
        }
        self.open[best.0].fetch_add(1, Ordering::AcqRel);
        best.0
    }

    /// Counts a connection worker `w` has finished with; true when it was its last.
    fn closed(&self, w: usize) -> bool {
        self.open[w].fetch_sub(1, Ordering::AcqRel) == 1
    }
}

/// Binds the listening socket of `addr`, exclusively: no `SO_REUSEPORT`, so the bind fails with
/// `AddrInUse` while any other socket listens there. `SO_REUSEADDR` only lets a restart bind
/// while connections of the previous process are in TIME_WAIT.
pub(crate) fn bind_exclusive(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Everything a worker thread starts with.
pub(crate) struct WorkerSetup {
    pub id: usize,
    pub listeners: Vec<BoundListener>,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub metrics: Arc<Metrics>,
    pub phase: watch::Receiver<Phase>,
    pub balancer: Arc<Balancer>,
    /// Connections other workers accepted for this one.
    pub inbox: mpsc::UnboundedReceiver<Handed>,
    pub drain_timeout: Duration,
    pub max_idle_per_endpoint: usize,
    pub idle_timeout: Duration,
}

/// The current snapshot as seen by one thread: an uncontended check of the shared pointer,
/// and an `Rc` (not an atomic `Arc` count) handed to each request.
struct SnapshotCache {
    cache: RefCell<Cache<Arc<ArcSwap<Snapshot>>, Arc<Snapshot>>>,
    current: RefCell<LocalSnapshot>,
}

impl SnapshotCache {
    fn get(&self) -> LocalSnapshot {
        let mut cache = self.cache.borrow_mut();
        let latest = cache.load();
        let mut current = self.current.borrow_mut();
        if !Arc::ptr_eq(&current, latest) {
            *current = Rc::new(Arc::clone(latest));
        }
        Rc::clone(&current)
    }
}

/// Runs hyper's connection tasks (server and upstream client) on the worker's own thread.
#[derive(Clone, Copy)]
pub(crate) struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: std::future::Future + 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

/// Runs one worker until shutdown is signalled and its connections have drained.
pub(crate) fn run_worker(setup: WorkerSetup) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, serve(setup))
}

async fn serve(setup: WorkerSetup) -> std::io::Result<()> {
    let worker = Rc::new(Worker {
        id: setup.id,
        pool: UpstreamPool::new(setup.max_idle_per_endpoint, setup.idle_timeout),
        deadlines: Rc::new(Deadlines::default()),
    });
    tokio::task::spawn_local(Rc::clone(&worker.deadlines).sweep());
    let current = Rc::new(Arc::clone(&setup.snapshot.load()));
    let snapshot = Rc::new(SnapshotCache {
        cache: RefCell::new(Cache::new(Arc::clone(&setup.snapshot))),
        current: RefCell::new(current),
    });
    let drained = Rc::new(tokio::sync::Notify::new());
    let draining = Rc::new(Cell::new(false));

    let mut listeners = Vec::new();
    let mut ctxs = Vec::new();
    for bound in setup.listeners {
        listeners.push(TcpListener::from_std(bound.socket)?);
        ctxs.push(Rc::new(AcceptCtx {
            builder: connection_builder(&bound.config),
            listener: Rc::new(bound.config),
            tls: bound.tls,
            connections: bound.connections,
            worker: Rc::clone(&worker),
            snapshot: Rc::clone(&snapshot),
            metrics: Arc::clone(&setup.metrics),
            phase: setup.phase.clone(),
            draining: Rc::clone(&draining),
            balancer: Arc::clone(&setup.balancer),
            index: ctxs.len(),
            drained: Rc::clone(&drained),
        }));
    }
    let accept_loops: Vec<_> = listeners
        .into_iter()
        .zip(&ctxs)
        .map(|(listener, ctx)| tokio::task::spawn_local(accept_loop(listener, Rc::clone(ctx))))
        .collect();
    let accepting = async {
        for l in accept_loops {
            let _ = l.await;
        }
    };
    tokio::pin!(accepting);
    let mut inbox = setup.inbox;
    loop {
        tokio::select! {
            _ = &mut accepting => break,
            Some(handed) = inbox.recv() => serve_handed(&ctxs, handed),
        }
    }
    // Not accepting any more, so take no more connections from the others either (they serve
    // what they accept themselves from now on), but serve those already sent.
    inbox.close();
    while let Some(handed) = inbox.recv().await {
        serve_handed(&ctxs, handed);
    }
    // Wait for in-flight connections to finish their requests. The count is shared: another
    // worker may briefly count a connection for this one before finding the inbox closed, so it
    // is also looked at now and then, not only when a connection here closes.
    let open = || setup.balancer.open[setup.id].load(Ordering::Acquire);
    let deadline = tokio::time::sleep(setup.drain_timeout);
    tokio::pin!(deadline);
    while open() > 0 {
        tokio::select! {
            _ = drained.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = &mut deadline => {
                tracing::warn!(worker = setup.id, open = open(), "drain timeout: closing remaining connections");
                break;
            }
        }
    }
    Ok(())
}

/// Serves a connection another worker accepted for this one.
fn serve_handed(ctxs: &[Rc<AcceptCtx>], handed: Handed) {
    let Some(ctx) = ctxs.get(handed.listener) else {
        return;
    };
    match tokio::net::TcpStream::from_std(handed.stream) {
        Ok(stream) => spawn_connection(ctx, stream, handed.peer),
        Err(e) => {
            tracing::warn!(peer = %handed.peer, "cannot serve a connection: {e}");
            ctx.balancer.closed(ctx.worker.id);
        }
    }
}

/// The HTTP settings of one listener; built per listener because the header read timeout is
/// a listener setting.
fn connection_builder(listener: &Listener) -> auto::Builder<LocalExec> {
    let mut builder = auto::Builder::new(LocalExec);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(listener.header_read_timeout)
        .max_buf_size(MAX_REQUEST_HEAD_BYTES)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    builder
}

struct AcceptCtx {
    listener: Rc<Listener>,
    tls: Option<TlsAcceptor>,
    connections: Arc<ConnectionLimit>,
    worker: Rc<Worker>,
    snapshot: Rc<SnapshotCache>,
    builder: auto::Builder<LocalExec>,
    metrics: Arc<Metrics>,
    phase: watch::Receiver<Phase>,
    /// Set once this worker drains: HTTP/1.1 responses then carry `Connection: close`. A `Cell`
    /// so the request path reads it without the watch channel's lock.
    draining: Rc<Cell<bool>>,
    balancer: Arc<Balancer>,
    /// This listener's place in the configuration (and in every worker's list).
    index: usize,
    /// Notified when this worker's last connection closes.
    drained: Rc<tokio::sync::Notify>,
}

async fn accept_loop(listener: TcpListener, ctx: Rc<AcceptCtx>) {
    let mut phase = ctx.phase.clone();
    if phase.wait_for(|p| *p != Phase::Held).await.is_ok() {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = phase.wait_for(|p| *p >= Phase::HandedOver) => break,
            };
            match accepted {
                Ok((stream, peer)) => dispatch(&ctx, stream, peer),
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    ctx.balancer.accepting.fetch_sub(1, Ordering::AcqRel);
    ctx.draining.set(true);
    if *phase.borrow() != Phase::Stopping {
        return;
    }
    // The kernel resets the connections still queued when the socket closes, yet their clients
    // connected (and most likely sent a request) before the shutdown: answer them too. A plain
    // accept, not the runtime's, so none is missed for want of a readiness event.
    let Ok(listener) = listener.into_std() else {
        return;
    };
    while let Ok((stream, peer)) = listener.accept() {
        match stream
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpStream::from_std(stream))
        {
            Ok(stream) => {
                ctx.balancer.open[ctx.worker.id].fetch_add(1, Ordering::AcqRel);
                spawn_connection(&ctx, stream, peer);
            }
            Err(e) => tracing::warn!(%peer, "cannot serve a queued connection: {e}"),
        }
    }
}

/// What a connection's tasks know about it.
#[derive(Default)]
struct ConnState {
    /// Requests begun on it.
    requests: Cell<u64>,
    /// It speaks HTTP/2, which has GOAWAY for draining.
    http2: Cell<bool>,
}

/// Serves a connection this worker accepted, or hands it to a worker with fewer.
fn dispatch(ctx: &Rc<AcceptCtx>, stream: tokio::net::TcpStream, peer: SocketAddr) {
    let me = ctx.worker.id;
    let target = ctx.balancer.pick(me);
    if target == me {
        return spawn_connection(ctx, stream, peer);
    }
    let handed = match stream.into_std() {
        Ok(stream) => Handed {
            stream,
            peer,
            listener: ctx.index,
        },
        Err(e) => {
            tracing::warn!(%peer, "cannot hand a connection over: {e}");
            ctx.balancer.closed(target);
            return;
        }
    };
    if let Err(mpsc::error::SendError(handed)) = ctx.balancer.inboxes[target].send(handed) {
        // That worker has stopped accepting: serve it here.
        ctx.balancer.closed(target);
        ctx.balancer.open[me].fetch_add(1, Ordering::AcqRel);
        match tokio::net::TcpStream::from_std(handed.stream) {
            Ok(stream) => spawn_connection(ctx, stream, peer),
            Err(e) => {
                tracing::warn!(%peer, "cannot serve a connection: {e}");
                ctx.balancer.closed(me);
            }
        }
    }
}

/// Serves a connection already counted for this worker, and uncounts it when it ends.
fn spawn_connection(ctx: &Rc<AcceptCtx>, stream: tokio::net::TcpStream, peer: SocketAddr) {
    let Some(slot) = ctx.connections.try_acquire() else {
        // Logged at debug: at warn, a flood of connections would flood the log too.
        tracing::debug!(%peer, limit = ctx.listener.max_connections, "listener full: closing the new connection");
        if ctx.balancer.closed(ctx.worker.id) {
            ctx.drained.notify_waiters();
        }
        return;
    };
    let _ = stream.set_nodelay(true);
    let trusted = ctx
        .listener
        .trusted_hops
        .iter()
        .any(|net| net.contains(&peer.ip()));
    let info = Rc::new(ConnInfo {
        peer,
        forwarded_for: forwarded_for(peer),
        tls: ctx.tls.is_some(),
        trusted,
        listener: Rc::clone(&ctx.listener),
        paths: ctx.listener.paths,
        underscores: ctx.listener.headers_with_underscores,
        tunnel: Tunnel::default(),
    });
    ctx.metrics.connection_opened();
    let ctx = Rc::clone(ctx);
    tokio::task::spawn_local(async move {
        let state = Rc::new(ConnState::default());
        let conn_info = Rc::clone(&info);
        let connection = async {
            match &ctx.tls {
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(tls) => serve_connection(TokioIo::new(tls), info, &ctx, &state).await,
                    Err(e) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                },
                None => serve_connection(TokioIo::new(stream), info, &ctx, &state).await,
            }
        };
        // hyper's header read timeout only starts once it knows the connection is
        // HTTP/1.1; the TLS handshake, the HTTP/2 detection and an HTTP/2 connection's
        // first request have no deadline of their own. A client that sends nothing (or a
        // few bytes) must not hold a connection slot forever, so the first request has to
        // arrive within the same timeout. Later requests are hyper's business.
        // Once a request has arrived this is never ready again, and it looks only at the
        // counter: the connection's task wakes several times per request, and polling the timer
        // each time would cost more than the request's own routing decision.
        let mut first_deadline =
            std::pin::pin!(tokio::time::sleep(ctx.listener.header_read_timeout));
        let first_request = std::future::poll_fn(|cx| {
            if state.requests.get() > 0 {
                // No waker needed: this branch has nothing left to wait for.
                return std::task::Poll::Pending;
            }
            first_deadline.as_mut().poll(cx)
        });
        tokio::select! {
            _ = connection => {}
            _ = first_request => tracing::debug!(%peer, "no request within the header read timeout: closing"),
        }
        // A connection that switched protocols lives on as its tunnel: it keeps its place in
        // the limit and the drain (which gives it the drain timeout) until the tunnel ends.
        conn_info.tunnel.finished().await;
        drop(slot);
        ctx.metrics.connection_closed();
        if ctx.balancer.closed(ctx.worker.id) {
            ctx.drained.notify_waiters();
        }
    });
}

async fn serve_connection<I>(io: I, info: Rc<ConnInfo>, ctx: &Rc<AcceptCtx>, state: &Rc<ConnState>)
where
    // `Send` because hyper's upgrade hands the connection over as a `Send` object; every
    // connection here (TCP, TLS over TCP) is.
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = {
        let ctx = Rc::clone(ctx);
        let state = Rc::clone(state);
        service_fn(move |req| {
            state.requests.set(state.requests.get() + 1);
            let http1 = req.version() < http::Version::HTTP_2;
            if !http1 {
                state.http2.set(true);
            }
            let snapshot = ctx.snapshot.get();
            let worker = Rc::clone(&ctx.worker);
            let info = Rc::clone(&info);
            let draining = Rc::clone(&ctx.draining);
            // A combinator, not an `async` block: one more level would move the request into
            // its future and the response out of it again.
            handle(snapshot, worker, info, req).map(move |mut resp| {
                // A `101` hands the connection over to its tunnel: it has no next request to
                // close after.
                if http1 && draining.get() && resp.status() != http::StatusCode::SWITCHING_PROTOCOLS
                {
                    // hyper closes the connection once this response is written, so the
                    // client sends its next request on a new connection (to the successor).
                    resp.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                }
                Ok::<_, std::convert::Infallible>(resp)
            })
        })
    };
    let conn = ctx.builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let mut phase = ctx.phase.clone();
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = phase.wait_for(|p| *p >= Phase::HandedOver) => {}
    }
    ctx.draining.set(true);
    if !state.http2.get() {
        // Closing an idle HTTP/1.1 connection races the request its client may be sending on
        // it (the client sees a reset). Until the connection has been idle for a while, keep
        // answering: each response closes it (`Connection: close`).
        let mut seen = state.requests.get();
        loop {
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = tokio::time::sleep(DRAIN_IDLE_GRACE) => {}
            }
            let now = state.requests.get();
            if now == seen {
                break;
            }
            seen = now;
        }
    }
    // Closes the connection if idle; otherwise finishes the request in flight, then closes (an
    // HTTP/2 connection: GOAWAY, then its open streams finish).
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}
