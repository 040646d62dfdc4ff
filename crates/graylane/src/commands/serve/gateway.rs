//! Running a prepared gateway (`serve`, a fleet node, the demo): the control runtime, the
//! admin listener, the controller's background tasks (timed steps and analyses, the file
//! watch, a fleet node's followers), then on SIGTERM/Ctrl-C or a takeover the drain. SIGHUP
//! reloads the configuration; SIGUSR1 reopens the access log's file.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use graylane_config::Config;
use graylane_controller::metrics::ReleaseCollector;
use graylane_controller::{ControlError, Controller, Reloaded, Setup, webhook_targets};
use graylane_notify::Notifier;
use graylane_proxy::Gateway;
use tokio::signal::unix::{SignalKind, signal};

use super::{ConfigSource, GatewayPlane, Prepared, now_ms};
use crate::admin::auth::Tokens;
use crate::admin::{self, AdminState};
use crate::commands::takeover::{self, Successor};

/// How long a process being taken over lets its admin requests finish before it closes the
/// store under them.
const ADMIN_DRAIN: Duration = Duration::from_secs(5);

/// Why serving ends.
enum Stop {
    /// SIGTERM or Ctrl-C: stop accepting, drain, exit.
    Signal,
    /// A new process has the listening sockets: let it accept, close the store, drain, exit.
    TakenOver(Successor),
}

/// Runs a gateway until SIGTERM/SIGINT or a takeover, then drains it. Shared by `serve` and
/// `demo`.
pub(crate) fn run_gateway(
    prepared: Prepared,
    config: Config,
    source: ConfigSource,
) -> anyhow::Result<ExitCode> {
    let Prepared {
        gateway,
        admin: admin_socket,
        workers,
        granted,
    } = prepared;
    let mut tokens = Tokens::from_env(config.admin.as_ref().map_or(&[][..], |a| &a.tokens));
    tokens.extend(granted);
    let admin_limits = config.admin.as_ref().map(admin::Limits::from);
    let gateway = Arc::new(gateway);
    for addr in gateway.local_addrs() {
        tracing::info!(%addr, workers, "listening");
    }
    let runtime = crate::runtime::control_plane()?;
    let (mut term, mut int) = runtime.block_on(async {
        anyhow::Ok((
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        ))
    })?;
    let (controller, notifier, path, store, offer, fleet) = match source {
        ConfigSource::File(m) => runtime.block_on(async {
            // Always started, even with no webhooks: a reload may add some.
            let notifier = Some(Notifier::start(webhook_targets(&config)));
            if let Some(n) = &notifier {
                // Release transitions become spans too when `telemetry.otlp` is set.
                let traced = Arc::clone(&gateway);
                n.set_tap(Arc::new(move |event| {
                    if let Some(t) = graylane_proxy::ReleaseTransition::from_event(event) {
                        traced.trace_release_transition(t);
                    }
                }));
            }
            let local = m
                .fleet
                .as_ref()
                .map(|f| f.local.clone())
                .unwrap_or_default();
            let gateway_plane = Arc::new(GatewayPlane::new(Arc::clone(&gateway), local));
            let plane = crate::commands::fleet::plane(Arc::clone(&gateway_plane), m.fleet.as_ref());
            let controller = Controller::open(Setup {
                env: m.env.clone(),
                config_path: m.path.clone(),
                fleet: m.fleet.is_some(),
                store: Arc::clone(&m.store),
                plane: Arc::clone(&plane),
                notifier: notifier.clone(),
                yaml: m.yaml,
                file_text: m.file_text,
                config,
                now_ms: now_ms(),
            })?;
            tracing::info!(env = %m.env, revision = controller.current_revision(), "controller ready");
            anyhow::Ok((
                Some(Arc::new(controller)),
                notifier,
                m.watched.then_some((m.path, m.interval)),
                m.releasable,
                m.offer,
                m.fleet.map(|f| (f, gateway_plane)),
            ))
        })?,
    };
    let (fleet, fleet_node) = match fleet {
        Some((node, gateway_plane)) => (
            Some(node.fleet),
            Some((
                node.events,
                node.observations,
                node.incarnation,
                (node.registry, gateway_plane),
            )),
        ),
        None => (None, None),
    };
    if let Some(c) = &controller {
        gateway.metrics().add_collector(Arc::new(ReleaseCollector {
            controller: Arc::clone(c),
            notifier: notifier.clone(),
            now_ms,
        }));
    }
    if let (Some(c), Some(f)) = (&controller, &fleet) {
        gateway
            .metrics()
            .add_collector(Arc::new(crate::commands::fleet::FleetCollector {
                fleet: Arc::clone(f),
                controller: Arc::clone(c),
            }));
    }
    // The release state is applied: the first request (and the connections queued meanwhile)
    // is routed with it.
    gateway.start_accepting();
    let state = Arc::new(AdminState {
        metrics: Arc::clone(gateway.metrics()),
        ready: AtomicBool::new(true),
        controller: controller.clone(),
        gateway: Arc::clone(&gateway),
        tokens,
        fleet: fleet.clone(),
    });
    // Kept to hand the admin listener over along with the others.
    let admin_dup = admin_socket.as_ref().map(|s| s.try_clone()).transpose()?;
    let offer_path = offer
        .as_ref()
        .and_then(|o| o.local_addr().ok()?.as_pathname().map(Path::to_path_buf));
    let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let (background, admin_task, stop) = runtime.block_on(async {
        let mut tasks = Vec::new();
        let admin_task = match (admin_socket, admin_limits) {
            (Some(socket), Some(limits)) => {
                socket.set_nonblocking(true)?;
                let listener = tokio::net::TcpListener::from_std(socket)?;
                tracing::info!(addr = %listener.local_addr()?, "admin listening");
                let stopped = async move {
                    let _ = admin_stopped.await;
                };
                Some(tokio::spawn(admin::serve(
                    listener,
                    Arc::clone(&state),
                    limits,
                    stopped,
                )))
            }
            _ => None,
        };
        if let Some(c) = &controller {
            tasks.push(tokio::spawn(tick_releases(Arc::clone(c), fleet.clone())));
        }
        if let (Some(c), Some(f), Some((events, observations, incarnation, (registry, plane)))) =
            (&controller, &fleet, fleet_node)
        {
            tasks.push(tokio::spawn(crate::commands::fleet::follow_registry(
                registry, plane,
            )));
            tasks.push(tokio::spawn(crate::commands::fleet::follow(
                Arc::clone(c),
                events,
                observations,
            )));
            tasks.push(tokio::spawn(crate::commands::fleet::publish(
                Arc::clone(c),
                Arc::clone(f),
                incarnation,
                Arc::clone(&state),
            )));
        }
        if let (Some(c), Some((path, interval))) = (&controller, &path) {
            tasks.push(tokio::spawn(watch_file(
                Arc::clone(c),
                Arc::clone(&gateway),
                path.clone(),
                *interval,
            )));
        }
        let offer = offer.map(tokio::net::UnixListener::from_std).transpose()?;
        let successor = async {
            match offer {
                Some(offer) => {
                    takeover::wait_for_successor(offer, || {
                        let admin = admin_dup.as_ref().map(|s| s.try_clone()).transpose()?;
                        Ok((gateway.listening_sockets()?, admin))
                    })
                    .await
                }
                None => std::future::pending().await,
            }
        };
        tokio::pin!(successor);
        let mut hup = signal(SignalKind::hangup())?;
        let mut usr1 = signal(SignalKind::user_defined1())?;
        let stop = loop {
            tokio::select! {
                // logrotate's `postrotate kill -USR1`: the access log goes on in a new file.
                _ = usr1.recv() => gateway.reopen_access_log(),
                _ = term.recv() => break Stop::Signal,
                _ = int.recv() => break Stop::Signal,
                s = &mut successor => break Stop::TakenOver(s),
                _ = hup.recv() => {
                    if let (Some(c), Some((path, _))) = (&controller, &path) {
                        tracing::info!("SIGHUP: reloading {}", path.display());
                        reload(c, &gateway, path).await;
                    }
                    // Even when the configuration did not change: SIGHUP is how a rotated
                    // certificate is put in use at once (the file poll takes a second or two).
                    let g = Arc::clone(&gateway);
                    let _ = tokio::task::spawn_blocking(move || g.reload_certificates()).await;
                }
            }
        };
        anyhow::Ok((tasks, admin_task, stop))
    })?;
    drop(admin_dup);
    state.ready.store(false, Ordering::Relaxed);
    if let Some(f) = &fleet {
        // Leaving at once lets another node lead now rather than after the lease's TTL.
        f.leave();
    }
    let drained = runtime.block_on(async move {
        let mut background = background;
        let mut admin_task = admin_task;
        match stop {
            Stop::Signal => {
                tracing::info!("shutting down: draining in-flight requests");
                // No successor can take over a process that stops accepting.
                if let Some(p) = &offer_path {
                    let _ = std::fs::remove_file(p);
                }
            }
            Stop::TakenOver(successor) => {
                tracing::info!(
                    "a new process took the listeners over: closing the store, then draining in-flight requests"
                );
                let handing = Arc::clone(&gateway);
                let _ = tokio::task::spawn_blocking(move || handing.hand_over()).await;
                let _ = admin_stop.send(());
                for task in background.drain(..) {
                    task.abort();
                }
                if let Some(task) = admin_task.take()
                    && tokio::time::timeout(ADMIN_DRAIN, task).await.is_err()
                {
                    tracing::warn!("admin requests still running after {ADMIN_DRAIN:?}: closing the store under them");
                }
                if let Some(store) = &store {
                    let store = Arc::clone(store);
                    let _ = tokio::task::spawn_blocking(move || store.release()).await;
                }
                successor.released().await;
            }
        }
        // Drain with the runtime still running, so the admin listener keeps answering (/readyz
        // is 503 from now on) until the gateway has stopped.
        let drain = tokio::task::spawn_blocking({
            let gateway = Arc::clone(&gateway);
            move || gateway.shutdown()
        });
        // A second SIGTERM or Ctrl-C means "stop now", as people expect of a server.
        let drained = tokio::select! {
            _ = drain => true,
            _ = term.recv() => false,
            _ = int.recv() => false,
        };
        if let Some(n) = &notifier
            && !n.flush(Duration::from_secs(2)).await
        {
            tracing::warn!("some webhook events were not delivered before exit");
        }
        for task in background.into_iter().chain(admin_task) {
            task.abort();
        }
        drained
    });
    if !drained {
        tracing::warn!("second signal: exiting without waiting for in-flight requests");
        std::process::exit(1);
    }
    drop(runtime);
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Moves releases whose timed pause is over, runs the analyses whose interval is up and asks
/// the gates releases wait on. A short
/// period keeps a step's start (and a verdict) within a fraction of a second of its due time
/// without a timer per release. In a fleet only the leader does this.
async fn tick_releases(controller: Arc<Controller>, fleet: Option<Arc<graylane_etcd::Fleet>>) {
    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let c = Arc::clone(&controller);
        let fleet = fleet.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let leads = fleet.as_ref().is_none_or(|f| f.is_leader());
            if leads {
                if fleet.is_some() {
                    c.save_pending(now_ms());
                }
                c.tick(now_ms());
                c.analyze(now_ms());
                c.gates(now_ms());
            }
            c.sample_series(now_ms());
        })
        .await;
    }
}

async fn reload(controller: &Arc<Controller>, gateway: &Gateway, path: &Path) {
    let c = Arc::clone(controller);
    let outcome = tokio::task::spawn_blocking(move || c.file_changed(now_ms())).await;
    match outcome {
        Ok(Ok(Reloaded::Revision(revision))) => {
            gateway.metrics().record_reload(true);
            tracing::info!(
                revision,
                generation = gateway.snapshot().generation,
                "configuration reloaded from {}",
                path.display()
            );
        }
        Ok(Ok(Reloaded::Files { segments, geoip })) => {
            gateway.metrics().record_reload(true);
            if !segments.is_empty() {
                tracing::info!(
                    segments = %segments.join(", "),
                    generation = gateway.snapshot().generation,
                    "segment members reloaded from their files"
                );
            }
            if geoip {
                tracing::info!(
                    generation = gateway.snapshot().generation,
                    "GeoIP database reloaded"
                );
            }
        }
        Ok(Ok(Reloaded::Unchanged)) => tracing::debug!("{} is unchanged", path.display()),
        Ok(Err(ControlError::Invalid(errors))) => {
            gateway.metrics().record_reload(false);
            for e in &errors.errors {
                tracing::error!("reload rejected, the previous configuration keeps serving: {e}");
            }
        }
        Ok(Err(e)) => {
            gateway.metrics().record_reload(false);
            tracing::error!("reload failed, the previous configuration keeps serving: {e}");
        }
        Err(e) => tracing::error!("reload did not finish: {e}"),
    }
}

/// Reloads when the file, or a segment file or GeoIP database it names, changes. Polling (rather than inotify)
/// also catches editors and config-management tools that replace a file by renaming over it.
async fn watch_file(
    controller: Arc<Controller>,
    gateway: Arc<Gateway>,
    path: PathBuf,
    interval: Duration,
) {
    let stamps = |paths: &[PathBuf]| -> Vec<Option<(SystemTime, u64)>> {
        paths
            .iter()
            .map(|p| {
                let m = std::fs::metadata(p).ok()?;
                Some((m.modified().ok()?, m.len()))
            })
            .collect()
    };
    let watched = |c: &Controller| -> Vec<PathBuf> {
        std::iter::once(path.clone())
            .chain(c.data_files())
            .collect()
    };
    // Nothing seen yet: the first tick reloads, which records nothing unless the files changed
    // between the start-up read and now (a change in that window would otherwise be missed).
    let mut last_paths = Vec::new();
    let mut last_stamps = Vec::new();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let paths = watched(&controller);
        let now = stamps(&paths);
        if paths == last_paths && now == last_stamps {
            continue;
        }
        let Some(Some(_)) = now.first() else {
            // The configuration file is missing for a moment (being replaced): wait for it.
            continue;
        };
        let first = last_paths.is_empty();
        last_paths = paths;
        last_stamps = now;
        if !first {
            tracing::info!("{} or a file it names changed: reloading", path.display());
        }
        reload(&controller, &gateway, &path).await;
    }
}
