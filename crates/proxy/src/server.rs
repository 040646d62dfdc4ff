//! Thread-per-core serving: each worker thread runs its own current-thread Tokio runtime with
//! its own `SO_REUSEPORT` listener socket per configured listener, its own upstream pool and
//! its own metrics slot, so requests on different cores share nothing but the routing
//! snapshot (read through a per-thread cache) and relaxed counters.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, Cache};
use graylane_config::Listener;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::handler::{ConnInfo, Worker, handle};
use crate::metrics::Metrics;
use crate::pool::UpstreamPool;
use crate::snapshot::{LocalSnapshot, Snapshot};

/// How long a client may take to send a request's headers (slowloris protection).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// One listener as a worker serves it.
pub(crate) struct BoundListener {
    pub socket: std::net::TcpListener,
    pub config: Listener,
    pub tls: Option<TlsAcceptor>,
}

/// Binds `count` sockets to the same address with `SO_REUSEPORT`, so the kernel spreads
/// connections across workers. Port 0 is resolved by the first socket and reused by the rest.
pub(crate) fn bind_reuseport(
    addr: SocketAddr,
    count: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut out = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count {
        let domain = socket2::Domain::for_address(addr);
        let socket =
            socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_tcp_nodelay(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        let listener: std::net::TcpListener = socket.into();
        addr = listener.local_addr()?;
        out.push(listener);
    }
    Ok(out)
}

/// Loads a listener's certificate chain and key into a TLS acceptor offering h2 and http/1.1.
pub(crate) fn tls_acceptor(tls: &graylane_config::Tls) -> std::io::Result<TlsAcceptor> {
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let cert_pem = std::fs::read(&tls.cert).map_err(|e| {
        invalid(format!(
            "cannot read certificate {}: {e}",
            tls.cert.display()
        ))
    })?;
    let key_pem = std::fs::read(&tls.key)
        .map_err(|e| invalid(format!("cannot read key {}: {e}", tls.key.display())))?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("{}: {e}", tls.cert.display())))?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| invalid(format!("{}: {e}", tls.key.display())))?
        .ok_or_else(|| invalid(format!("{}: no private key found", tls.key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| invalid(format!("{}: {e}", tls.cert.display())))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Everything a worker thread starts with.
pub(crate) struct WorkerSetup {
    pub id: usize,
    pub listeners: Vec<BoundListener>,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub metrics: Arc<Metrics>,
    pub shutdown: watch::Receiver<bool>,
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

#[derive(Clone, Copy)]
struct LocalExec;

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
    });
    let current = Rc::new(Arc::clone(&setup.snapshot.load()));
    let snapshot = Rc::new(SnapshotCache {
        cache: RefCell::new(Cache::new(Arc::clone(&setup.snapshot))),
        current: RefCell::new(current),
    });
    let mut builder = auto::Builder::new(LocalExec);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let builder = Rc::new(builder);
    let open = Rc::new(Cell::new(0usize));
    let drained = Rc::new(tokio::sync::Notify::new());

    let mut accept_loops = Vec::new();
    for bound in setup.listeners {
        let listener = TcpListener::from_std(bound.socket)?;
        let ctx = AcceptCtx {
            listener: Rc::new(bound.config),
            tls: bound.tls,
            worker: Rc::clone(&worker),
            snapshot: Rc::clone(&snapshot),
            builder: Rc::clone(&builder),
            metrics: Arc::clone(&setup.metrics),
            shutdown: setup.shutdown.clone(),
            open: Rc::clone(&open),
            drained: Rc::clone(&drained),
        };
        accept_loops.push(tokio::task::spawn_local(accept_loop(listener, ctx)));
    }
    for l in accept_loops {
        let _ = l.await;
    }
    // Listeners are closed now; wait for in-flight connections to finish their requests.
    let deadline = tokio::time::sleep(setup.drain_timeout);
    tokio::pin!(deadline);
    while open.get() > 0 {
        tokio::select! {
            _ = drained.notified() => {}
            _ = &mut deadline => {
                tracing::warn!(worker = setup.id, open = open.get(), "drain timeout: closing remaining connections");
                break;
            }
        }
    }
    Ok(())
}

struct AcceptCtx {
    listener: Rc<Listener>,
    tls: Option<TlsAcceptor>,
    worker: Rc<Worker>,
    snapshot: Rc<SnapshotCache>,
    builder: Rc<auto::Builder<LocalExec>>,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
    open: Rc<Cell<usize>>,
    drained: Rc<tokio::sync::Notify>,
}

async fn accept_loop(listener: TcpListener, ctx: AcceptCtx) {
    let ctx = Rc::new(ctx);
    let mut shutdown = ctx.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let trusted = ctx
            .listener
            .trusted_hops
            .iter()
            .any(|net| net.contains(&peer.ip()));
        let info = Rc::new(ConnInfo {
            peer,
            tls: ctx.tls.is_some(),
            trusted,
        });
        ctx.open.set(ctx.open.get() + 1);
        ctx.metrics.connection_opened();
        let ctx = Rc::clone(&ctx);
        tokio::task::spawn_local(async move {
            match &ctx.tls {
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(tls) => serve_connection(TokioIo::new(tls), info, &ctx).await,
                    Err(e) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                },
                None => serve_connection(TokioIo::new(stream), info, &ctx).await,
            }
            ctx.metrics.connection_closed();
            ctx.open.set(ctx.open.get() - 1);
            if ctx.open.get() == 0 {
                ctx.drained.notify_waiters();
            }
        });
    }
}

async fn serve_connection<I>(io: I, info: Rc<ConnInfo>, ctx: &Rc<AcceptCtx>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
{
    let service = {
        let ctx = Rc::clone(ctx);
        service_fn(move |req| {
            let snapshot = ctx.snapshot.get();
            let worker = Rc::clone(&ctx.worker);
            let info = Rc::clone(&info);
            async move { Ok::<_, std::convert::Infallible>(handle(snapshot, worker, info, req).await) }
        })
    };
    let conn = ctx.builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut shutdown = ctx.shutdown.clone();
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = shutdown.wait_for(|stop| *stop) => {}
    }
    // Finish the request in flight, then close; keep-alive clients reconnect elsewhere.
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}
