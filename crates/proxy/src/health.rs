//! Active health checks: a prober thread sends `GET <path>` to every endpoint of each version
//! with a `health_checks` policy, once per its interval, and reports the result to the
//! version's health state, which the request path reads to keep failing endpoints out of
//! rotation. Probes use their own short connections, never the request path's pool.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use graylane_config::HealthCheck;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::snapshot::Snapshot;

/// How often the prober looks for due probes.
const TICK: Duration = Duration::from_millis(100);

pub(crate) fn spawn_prober(
    snapshot: Arc<ArcSwap<Snapshot>>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<JoinHandle<std::io::Result<()>>> {
    std::thread::Builder::new()
        .name("graylane-health".to_string())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let mut due: HashMap<(usize, usize, SocketAddr), Instant> = HashMap::new();
                let mut ticker = tokio::time::interval(TICK);
                loop {
                    tokio::select! {
                        _ = ticker.tick() => {}
                        _ = shutdown.changed() => return Ok(()),
                    }
                    let snap = snapshot.load_full();
                    let now = Instant::now();
                    for (s, service) in snap.services.iter().enumerate() {
                        for (v, version) in service.versions.iter().enumerate() {
                            let (Some(check), Some(state)) =
                                (&version.guards.probe, &version.guards.health)
                            else {
                                continue;
                            };
                            for (i, endpoint) in version.endpoints.iter().enumerate() {
                                let key = (s, v, endpoint.addr);
                                if due.get(&key).is_some_and(|t| *t > now) {
                                    continue;
                                }
                                due.insert(key, now + check.interval);
                                let (check, state, addr) =
                                    (check.clone(), Arc::clone(state), endpoint.addr);
                                tokio::spawn(async move {
                                    let ok = probe(addr, &check).await;
                                    if let Some(healthy) = state.report(i, ok) {
                                        tracing::info!(%addr, healthy, "endpoint health changed");
                                    }
                                });
                            }
                        }
                    }
                }
            })
        })
}

/// One probe: the status line of `GET <path>` within the timeout, matched against `expect`.
async fn probe(addr: SocketAddr, check: &HealthCheck) -> bool {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let request = format!(
            "GET {} HTTP/1.1\r\nhost: {addr}\r\nuser-agent: graylane-health\r\nconnection: close\r\n\r\n",
            check.path
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 64];
        let mut len = 0;
        while len < 12 {
            let n = stream.read(&mut head[len..]).await.ok()?;
            if n == 0 {
                break;
            }
            len += n;
        }
        let line = std::str::from_utf8(&head[..len]).ok()?;
        line.strip_prefix("HTTP/1.")?.get(2..5)?.parse::<u16>().ok()
    };
    match tokio::time::timeout(check.timeout, exchange).await {
        Ok(Some(status)) => check.expect.contains(status),
        _ => false,
    }
}
