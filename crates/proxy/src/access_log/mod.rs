//! The access log: one line per request, written off the request path.
//!
//! The request path only copies what the line needs into an [`Entry`] (one allocation, for a
//! sampled request of a gateway that logs) and offers it to its worker's own bounded queue
//! without waiting ([`Sink::push`]): a full queue drops the line and counts it
//! (`graylane_access_log_dropped_total`). A writer thread per log formats the lines (JSON or
//! nginx's combined format, writer.rs) into a buffered file or standard output, flushing at
//! least every 100 ms and whenever it runs out of lines. Without `access_log:` the request path
//! pays one branch.
//!
//! [`AccessLogs`] is the gateway's side: the log in use, replaced when a reload changes its
//! settings, reopened on SIGUSR1 (logrotate), flushed and closed at shutdown.

mod entry;
mod writer;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use graylane_config::{AccessLog, AccessLogFormat, AccessLogPath, Config};

pub(crate) use entry::{Entry, Facts, Text, Upstream};

/// Lines each worker's queue holds before new ones are dropped. The writer drains the queues
/// continuously while there are lines, and sleeps 10 ms when there are none: this absorbs a
/// burst of 100,000 requests a second per worker over a sleep.
const QUEUE: usize = 1024;

/// The counters of every access log the gateway has had (they outlive reloads).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Lines written.
    lines: AtomicU64,
    /// Lines dropped because their worker's queue was full.
    dropped: AtomicU64,
}

/// One access log in use: what the request path pushes lines into.
pub(crate) struct Sink {
    /// Requests are logged when a draw of the request path's random numbers is below this;
    /// `u64::MAX` logs every request without drawing.
    threshold: u64,
    /// One queue per worker, indexed by worker id: no worker contends with another.
    queues: Vec<SyncSender<Box<Entry>>>,
    counters: Arc<Counters>,
    shared: Arc<Shared>,
}

/// What the gateway and the writer thread share.
struct Shared {
    /// Set by SIGUSR1: the writer reopens its file.
    reopen: AtomicBool,
    /// Set at shutdown: the writer writes what is queued, flushes and ends.
    closing: AtomicBool,
}

impl Sink {
    /// Whether this request is logged (its share of `sample`).
    #[inline]
    pub(crate) fn sampled(&self) -> bool {
        self.threshold == u64::MAX || crate::rng::fastrand_u64() < self.threshold
    }

    /// Offers a finished line to worker `worker`'s queue; never waits.
    pub(crate) fn push(&self, worker: usize, entry: Box<Entry>) {
        let Some(queue) = self.queues.get(worker) else {
            return;
        };
        match queue.try_send(entry) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counters.dropped.fetch_add(1, Relaxed);
            }
        }
    }
}

/// The threshold a draw of 64 random bits is compared with to log a `sample` share.
fn threshold(sample: f64) -> u64 {
    if sample >= 1.0 {
        u64::MAX
    } else {
        // An `as` cast saturates; the share is in (0, 1).
        (sample * u64::MAX as f64) as u64
    }
}

/// The access log a running log was started with, and its writer.
struct Running {
    settings: AccessLog,
    sink: Arc<Sink>,
    writer: JoinHandle<()>,
}

/// The gateway's access log: the one in use, and what the command line says of it.
pub(crate) struct AccessLogs {
    workers: usize,
    counters: Arc<Counters>,
    /// `--access-log`: the path, which turns the log on whatever the configuration says.
    path: Option<AccessLogPath>,
    /// `--access-log-format`: the format, whatever the configuration says.
    format: Option<AccessLogFormat>,
    current: Mutex<Option<Running>>,
}

impl AccessLogs {
    /// The access log of `config` (as the command line amends it) opened, or none: an error
    /// names the file that cannot be opened.
    pub(crate) fn start(
        config: &Config,
        workers: usize,
        path: Option<AccessLogPath>,
        format: Option<AccessLogFormat>,
    ) -> Result<AccessLogs, OpenError> {
        let logs = AccessLogs {
            workers,
            counters: Arc::default(),
            path,
            format,
            current: Mutex::new(None),
        };
        if let Some(settings) = logs.settings(config) {
            let running = logs.open(settings)?;
            *logs.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(running);
        }
        Ok(logs)
    }

    /// The settings `config` gives, with the command line's path and format over them.
    fn settings(&self, config: &Config) -> Option<AccessLog> {
        let configured = config.access_log.clone();
        let mut settings = match (&self.path, configured) {
            (None, configured) => configured?,
            (Some(path), Some(configured)) => AccessLog {
                path: path.clone(),
                ..configured
            },
            (Some(path), None) => AccessLog {
                format: AccessLogFormat::Json,
                path: path.clone(),
                sample: 1.0,
            },
        };
        if let Some(format) = self.format {
            settings.format = format;
        }
        Some(settings)
    }

    fn open(&self, settings: AccessLog) -> Result<Running, OpenError> {
        let output = writer::Output::open(&settings.path).map_err(|source| OpenError {
            path: settings.path.clone(),
            source,
        })?;
        let shared = Arc::new(Shared {
            reopen: AtomicBool::new(false),
            closing: AtomicBool::new(false),
        });
        let (queues, receivers): (Vec<_>, Vec<Receiver<Box<Entry>>>) =
            (0..self.workers).map(|_| sync_channel(QUEUE)).unzip();
        let writer = writer::Writer {
            receivers,
            output,
            path: settings.path.clone(),
            format: settings.format,
            counters: Arc::clone(&self.counters),
            shared: Arc::clone(&shared),
        };
        let writer = std::thread::Builder::new()
            .name("graylane-access-log".to_string())
            .spawn(move || writer.run())
            .map_err(|source| OpenError {
                path: settings.path.clone(),
                source,
            })?;
        let sink = Arc::new(Sink {
            threshold: threshold(settings.sample),
            queues,
            counters: Arc::clone(&self.counters),
            shared,
        });
        Ok(Running {
            settings,
            sink,
            writer,
        })
    }

    /// The log for a snapshot of `config`: the one in use when its settings are unchanged,
    /// else a new one (the old one's writer ends once the requests still holding it are done).
    /// A file that cannot be opened is logged and the log in use kept.
    pub(crate) fn for_config(&self, config: &Config) -> Option<Arc<Sink>> {
        let settings = self.settings(config);
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let unchanged = match (&*current, &settings) {
            (Some(running), Some(settings)) => running.settings == *settings,
            (None, None) => true,
            _ => false,
        };
        if !unchanged {
            match settings.map(|s| self.open(s)).transpose() {
                // The old writer ends by itself once the requests still holding its sink
                // (on older snapshots) are done and their lines written.
                Ok(next) => *current = next,
                Err(e) => tracing::error!("{e}; the access log in use is kept"),
            }
        }
        current.as_ref().map(|r| Arc::clone(&r.sink))
    }

    /// Reopens the log's file (SIGUSR1, after logrotate moved it): lines from now on go to a
    /// new file at the path.
    pub(crate) fn reopen(&self) {
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(running) = &*current {
            running.sink.shared.reopen.store(true, Relaxed);
            running.writer.thread().unpark();
        }
    }

    /// Writes every queued line, flushes and stops the writer (the workers have stopped).
    pub(crate) fn close(&self) {
        let running = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(running) = running {
            running.sink.shared.closing.store(true, Relaxed);
            running.writer.thread().unpark();
            drop(running.sink);
            if running.writer.join().is_err() {
                tracing::error!("the access log writer panicked");
            }
        }
    }

    /// The counters' Prometheus collector.
    pub(crate) fn collector(&self) -> Arc<CountersCollector> {
        Arc::new(CountersCollector(Arc::clone(&self.counters)))
    }
}

/// An access log file that could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the access log {path}: {source}")]
pub struct OpenError {
    path: AccessLogPath,
    source: std::io::Error,
}

/// `graylane_access_log_lines_total` and `graylane_access_log_dropped_total`.
#[derive(Debug)]
pub(crate) struct CountersCollector(Arc<Counters>);

impl prometheus_client::collector::Collector for CountersCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        crate::metrics::encode_counters(
            &mut encoder,
            &[
                (
                    "graylane_access_log_lines",
                    "Access log lines written",
                    &self.0.lines,
                ),
                (
                    "graylane_access_log_dropped",
                    "Access log lines dropped because the writer fell behind (its queue was full)",
                    &self.0.dropped,
                ),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(queue: usize, workers: usize) -> (Sink, Vec<Receiver<Box<Entry>>>) {
        let (queues, receivers) = (0..workers).map(|_| sync_channel(queue)).unzip();
        let sink = Sink {
            threshold: u64::MAX,
            queues,
            counters: Arc::default(),
            shared: Arc::new(Shared {
                reopen: AtomicBool::new(false),
                closing: AtomicBool::new(false),
            }),
        };
        (sink, receivers)
    }

    #[test]
    fn a_full_queue_drops_the_line_and_counts_it_without_waiting() {
        let (sink, receivers) = sink(2, 2);
        for _ in 0..5 {
            sink.push(0, Box::default());
        }
        sink.push(1, Box::default());
        assert_eq!(sink.counters.dropped.load(Relaxed), 3);
        assert_eq!(receivers[0].try_iter().count(), 2);
        assert_eq!(
            receivers[1].try_iter().count(),
            1,
            "each worker has its own queue"
        );
    }

    #[test]
    fn the_sample_share_sets_the_threshold() {
        assert_eq!(threshold(1.0), u64::MAX);
        let half = threshold(0.5) as f64 / u64::MAX as f64;
        assert!((half - 0.5).abs() < 1e-9);
        assert!(threshold(1e-9) > 0);
    }
}
