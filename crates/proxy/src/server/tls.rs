//! Listener TLS: each TLS listener's certificates, chosen per handshake by the name the client
//! asks for (SNI), and read again when their files change or on a reload.
//!
//! The acceptor never changes: its rustls configuration resolves the certificate through
//! [`ListenerCerts`], which holds the loaded certificates behind an `ArcSwap`. A rotation swaps
//! that pointer, so the next handshake gets the new certificate and open connections, which
//! finished their handshake long ago, are not touched.
//!
//! Files are polled (modification time, length and inode, every [`POLL`]) rather than watched
//! with inotify: a stat is cheap, and polling sees Kubernetes' secret updates, which swap a
//! symlink to a new folder, as well as files written in place. A change is read once the files
//! have stayed the same for one poll, so a certificate and its key copied one after the other
//! are read together rather than as a mismatched pair. A pair that does not load keeps the old
//! one serving; the error is logged once per change of the files and counted in
//! `graylane_tls_reload_errors_total`.

use std::fmt;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use graylane_config::tls::{LoadedCertificate, load_certificate, name_matches};
use graylane_config::{Tls, TlsCertificate};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// How often the certificate and key files are looked at.
const POLL: Duration = Duration::from_secs(1);

/// The certificates one listener serves, and what its file watch knows.
pub(crate) struct ListenerCerts {
    /// The listener's `bind` address: the `listener` label of its metrics.
    listener: SocketAddr,
    serving: ArcSwap<Serving>,
    /// The reload's bookkeeping; a handshake never takes this lock.
    files: Mutex<Files>,
    reload_errors: AtomicU64,
}

/// The certificates in use, in configuration order.
struct Serving {
    certificates: Vec<LoadedCertificate>,
    default: usize,
}

impl Serving {
    /// The certificate for the name a client asked for: one naming it exactly, else one whose
    /// wildcard covers it (as nginx prefers), else the default.
    fn choose(&self, asked: Option<&str>) -> &Arc<CertifiedKey> {
        let found = asked.and_then(|asked| {
            let covers = |exact: bool| {
                self.certificates.iter().find(|c| {
                    c.names
                        .iter()
                        .any(|n| n.starts_with("*.") != exact && name_matches(n, asked))
                })
            };
            covers(true).or_else(|| covers(false))
        });
        &found.unwrap_or(&self.certificates[self.default]).key
    }
}

/// The files of one listener's certificates as last read.
struct Files {
    tls: Tls,
    /// Per certificate, in the order of `tls.certificates`.
    watched: Vec<Watched>,
}

/// What the poll knows of one certificate's two files.
struct Watched {
    /// As they were when the certificate in use was read.
    loaded: Stamp,
    /// As the last poll saw them.
    seen: Stamp,
    /// As they were when reading them last failed: not tried (nor reported) again until they
    /// change.
    failed: Option<Stamp>,
}

/// The certificate's and the key's modification time, length and inode (`None`: not there).
type Stamp = [Option<(SystemTime, u64, u64)>; 2];

fn stamp(c: &TlsCertificate) -> Stamp {
    let of = |p: &Path| {
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len(), m.ino()))
    };
    [of(&c.cert), of(&c.key)]
}

impl ListenerCerts {
    /// Reads every certificate of `tls` for the listener bound at `listener`.
    pub(crate) fn load(listener: SocketAddr, tls: &Tls) -> std::io::Result<Arc<ListenerCerts>> {
        let mut certificates = Vec::new();
        let mut watched = Vec::new();
        for c in &tls.certificates {
            let stamp = stamp(c);
            certificates.push(read(c).map_err(std::io::Error::other)?);
            watched.push(Watched {
                loaded: stamp,
                seen: stamp,
                failed: None,
            });
        }
        Ok(Arc::new(ListenerCerts {
            listener,
            serving: ArcSwap::from_pointee(Serving {
                certificates,
                default: tls.default,
            }),
            files: Mutex::new(Files {
                tls: tls.clone(),
                watched,
            }),
            reload_errors: AtomicU64::new(0),
        }))
    }

    /// A TLS acceptor offering h2 and http/1.1 that serves these certificates as they are at
    /// each handshake.
    pub(crate) fn acceptor(self: &Arc<Self>) -> std::io::Result<TlsAcceptor> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(std::io::Error::other)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// Reads the certificates whose files changed and have stayed the same since the last poll.
    fn poll(&self) {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let Files { tls, watched } = &mut *files;
        let mut changed = Vec::new();
        for (i, (c, w)) in tls.certificates.iter().zip(watched.iter_mut()).enumerate() {
            let now = stamp(c);
            let settled = now == w.seen;
            w.seen = now;
            if settled && now != w.loaded && w.failed != Some(now) {
                changed.push(i);
            }
        }
        if !changed.is_empty() {
            self.reread(&mut files, &changed, "changed on disk");
        }
    }

    /// Reads every certificate again: those of `tls` when the configuration names other
    /// files, else the same files. A pair that does not load keeps the one it would replace.
    pub(crate) fn reload(&self, tls: Option<&Tls>) {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tls) = tls
            && (tls.certificates != files.tls.certificates || tls.default != files.tls.default)
        {
            return self.replace(&mut files, tls);
        }
        let all: Vec<usize> = (0..files.tls.certificates.len()).collect();
        self.reread(&mut files, &all, "reload");
    }

    fn reread(&self, files: &mut Files, which: &[usize], why: &str) {
        let current = self.serving.load_full();
        let mut certificates = current.certificates.clone();
        let mut swapped = false;
        for &i in which {
            let c = &files.tls.certificates[i];
            let w = &mut files.watched[i];
            let now = stamp(c);
            w.seen = now;
            match read(c) {
                Ok(loaded) => {
                    tracing::info!(listener = %self.listener, cert = %c.cert.display(), names = ?loaded.names, "TLS certificate read ({why})");
                    certificates[i] = loaded;
                    w.loaded = now;
                    w.failed = None;
                    swapped = true;
                }
                Err(e) => {
                    self.failed(&e);
                    w.failed = Some(now);
                }
            }
        }
        if swapped {
            self.serving.store(Arc::new(Serving {
                certificates,
                default: current.default,
            }));
        }
    }

    /// Serves the certificates of a new configuration, all of them or (if any fails) none.
    fn replace(&self, files: &mut Files, tls: &Tls) {
        let mut certificates = Vec::new();
        let mut watched = Vec::new();
        for c in &tls.certificates {
            let now = stamp(c);
            match read(c) {
                Ok(loaded) => certificates.push(loaded),
                Err(e) => return self.failed(&e),
            }
            watched.push(Watched {
                loaded: now,
                seen: now,
                failed: None,
            });
        }
        tracing::info!(listener = %self.listener, certificates = certificates.len(), "TLS certificates read (new configuration)");
        self.serving.store(Arc::new(Serving {
            certificates,
            default: tls.default,
        }));
        *files = Files {
            tls: tls.clone(),
            watched,
        };
    }

    fn failed(&self, error: &str) {
        self.reload_errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!(listener = %self.listener, "TLS certificate not reloaded, the previous one keeps serving: {error}");
    }
}

/// One certificate, or the error naming where it is configured and the file at fault.
fn read(c: &TlsCertificate) -> Result<LoadedCertificate, String> {
    load_certificate(&c.cert, &c.key).map_err(|e| format!("{}.{}: {e}", c.at, e.file.key_name()))
}

impl ResolvesServerCert for ListenerCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let serving = self.serving.load();
        Some(Arc::clone(serving.choose(hello.server_name())))
    }
}

impl fmt::Debug for ListenerCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenerCerts")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

/// Polls the files of every TLS listener's certificates until `shutdown`; `None` when no
/// listener has TLS.
pub(crate) fn spawn_watch(
    listeners: Vec<Arc<ListenerCerts>>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<Option<JoinHandle<std::io::Result<()>>>> {
    if listeners.is_empty() {
        return Ok(None);
    }
    let handle = std::thread::Builder::new()
        .name("graylane-tls".to_string())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()?;
            runtime.block_on(async move {
                let mut ticker = tokio::time::interval(POLL);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = ticker.tick() => {}
                        _ = shutdown.changed() => return Ok(()),
                    }
                    for l in &listeners {
                        l.poll();
                    }
                }
            })
        })?;
    Ok(Some(handle))
}

/// `graylane_tls_reload_errors_total` and `graylane_tls_certificate_expiry_seconds` of every
/// TLS listener.
pub(crate) struct TlsCollector(pub(crate) Vec<Arc<ListenerCerts>>);

impl fmt::Debug for TlsCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TlsCollector").field(&self.0.len()).finish()
    }
}

impl prometheus_client::collector::Collector for TlsCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::MetricType;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        {
            let mut errors = encoder.encode_descriptor(
                "graylane_tls_reload_errors",
                "Certificate reloads that failed (unreadable file, no certificate, key not the certificate's); the previous certificate kept serving",
                None,
                MetricType::Counter,
            )?;
            for l in &self.0 {
                let listener = l.listener.to_string();
                ConstCounter::new(l.reload_errors.load(Ordering::Relaxed))
                    .encode(errors.encode_family(&[("listener", listener.as_str())])?)?;
            }
        }
        let mut expiry = encoder.encode_descriptor(
            "graylane_tls_certificate_expiry_seconds",
            "When each certificate a listener serves expires (its notAfter), in seconds since the Unix epoch; name is its first DNS name",
            None,
            MetricType::Gauge,
        )?;
        for l in &self.0 {
            let listener = l.listener.to_string();
            let serving = l.serving.load();
            for c in &serving.certificates {
                let name = c.names.first().map_or("", String::as_str);
                let labels = [("listener", listener.as_str()), ("name", name)];
                ConstGauge::new(c.not_after).encode(expiry.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
