//! OpenTelemetry traces: a server span per request and a client span per upstream attempt,
//! exported over OTLP off the request path.
//!
//! The request path decides whether a request is traced (the caller's sampled flag, else the
//! `sample` share of new trace ids; with `always_on_error`, every request is recorded in case
//! it fails), copies what the spans need into a fixed-size [`SpanRecord`] (record.rs) — one
//! allocation per traced request, nothing formatted — and offers it to its worker's bounded
//! queue without waiting ([`Tracer::push`]): a full queue drops it and counts it
//! (`graylane_trace_spans_dropped_total`). An upstream attempt of a traced request carries a
//! `traceparent` whose parent is graylane's client span, so the upstream's spans nest under it.
//!
//! An exporter thread (export.rs) drains the queues, builds the SDK's `SpanData` and hands them
//! in batches to `opentelemetry-otlp`'s exporter (`http/protobuf` or `grpc`) on its own small
//! runtime; an `https://` collector is verified as tls.rs says. A collector that is down, slow
//! or shows a certificate that does not verify costs a failed export
//! (`graylane_trace_export_errors_total`) and, while an export waits, dropped spans; never a
//! request's time. Without `telemetry.otlp` the request path pays one branch.
//!
//! [`Traces`] is the gateway's side: the tracer in use, replaced when a reload changes its
//! settings, and release transitions exported as spans of their own.

mod export;
mod record;
mod tls;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use graylane_config::{Config, Otlp};

pub(crate) use record::{Sampling, SpanRecord, TraceCell};

/// Records each worker's queue holds before new ones are dropped; the exporter drains them
/// every 50 ms at most, and at once while an export is not in flight.
const QUEUE: usize = 2048;

/// Release transitions waiting for the exporter.
const EVENTS: usize = 256;

/// The counters of every tracer the gateway has had (they outlive reloads).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Spans the collector accepted.
    exported: AtomicU64,
    /// Spans dropped because their worker's queue was full.
    dropped: AtomicU64,
    /// Exports that failed (collector unreachable, refused, too slow).
    export_errors: AtomicU64,
}

/// A release's transition (a step, a promotion, a rollback, a pause, an analysis verdict), as
/// the controller announces it: exported as a `release.transition` span.
#[derive(Debug, Clone)]
pub struct ReleaseTransition {
    /// The service whose release moved.
    pub service: String,
    /// What happened (the controller's action: `advance`, `promote`, `rollback`, ...).
    pub action: String,
    /// The release's state before.
    pub from: String,
    /// The release's state after.
    pub to: String,
    /// The step it is on after, if any.
    pub step: Option<u64>,
    /// Who moved it (`controller`, an operator's token name).
    pub actor: String,
    /// Why, in the controller's words.
    pub reason: String,
    /// Each version's weight after, in percent.
    pub weights: Vec<(String, f64)>,
    /// When it happened.
    pub at: std::time::SystemTime,
}

impl ReleaseTransition {
    /// The transition a `release.transition` webhook event describes; `None` for any other
    /// event.
    pub fn from_event(event: &serde_json::Value) -> Option<ReleaseTransition> {
        if event.get("event")?.as_str()? != "release.transition" {
            return None;
        }
        let text = |key: &str| {
            event
                .get(key)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string()
        };
        Some(ReleaseTransition {
            service: text("service"),
            action: text("action"),
            from: text("from"),
            to: text("to"),
            step: event.get("step").and_then(serde_json::Value::as_u64),
            actor: text("actor"),
            reason: text("reason"),
            weights: event
                .get("weights")
                .and_then(|w| w.as_object())
                .map(|w| {
                    w.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
                        .collect()
                })
                .unwrap_or_default(),
            at: std::time::SystemTime::now(),
        })
    }
}

/// One tracer in use: what the request path pushes records into.
pub(crate) struct Tracer {
    pub(crate) sampling: Sampling,
    /// One queue per worker, indexed by worker id: no worker contends with another.
    queues: Vec<SyncSender<Box<SpanRecord>>>,
    events: SyncSender<ReleaseTransition>,
    counters: Arc<Counters>,
    shared: Arc<Shared>,
}

/// What the gateway and the exporter thread share.
struct Shared {
    /// Set at shutdown: the exporter exports what is queued and ends.
    closing: AtomicBool,
}

impl Tracer {
    /// Offers a finished record to worker `worker`'s queue; never waits.
    pub(crate) fn push(&self, worker: usize, record: Box<SpanRecord>) {
        let Some(queue) = self.queues.get(worker) else {
            return;
        };
        if let Err(TrySendError::Full(r) | TrySendError::Disconnected(r)) = queue.try_send(record) {
            self.counters.dropped.fetch_add(spans_of(&r), Relaxed);
        }
    }
}

/// The spans a record becomes: its server span and a client span per kept attempt.
fn spans_of(record: &SpanRecord) -> u64 {
    1 + record.attempts.iter().flatten().count() as u64
}

/// The threshold the low 64 bits of a new trace id are compared with to sample a `sample`
/// share (as OpenTelemetry's trace-id ratio sampler does).
fn threshold(sample: f64) -> u64 {
    if sample >= 1.0 {
        u64::MAX
    } else {
        // An `as` cast saturates; the share is in [0, 1).
        (sample * u64::MAX as f64) as u64
    }
}

/// A tracer and its exporter thread, with the settings it was started with.
struct Running {
    settings: Otlp,
    tracer: Arc<Tracer>,
    exporter: JoinHandle<()>,
}

/// The gateway's traces: the tracer in use, replaced when a reload changes `telemetry.otlp`.
pub(crate) struct Traces {
    workers: usize,
    counters: Arc<Counters>,
    current: Mutex<Option<Running>>,
}

impl Traces {
    /// No tracer yet: [`Traces::for_config`] starts one when the configuration asks.
    pub(crate) fn new(workers: usize) -> Traces {
        Traces {
            workers,
            counters: Arc::default(),
            current: Mutex::new(None),
        }
    }

    /// The tracer for a snapshot of `config`: the one in use when its settings are unchanged,
    /// else a new one (the old exporter ends once the requests still holding it are done and
    /// their spans exported). An exporter that cannot start is logged and tracing stays off.
    pub(crate) fn for_config(&self, config: &Config) -> Option<Arc<Tracer>> {
        let settings = config.telemetry.as_ref().and_then(|t| t.otlp.clone());
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let unchanged = match (&*current, &settings) {
            (Some(running), Some(settings)) => running.settings == *settings,
            (None, None) => true,
            _ => false,
        };
        if !unchanged {
            // The old exporter ends by itself once the requests still holding its tracer (on
            // older snapshots) are done and their spans exported.
            *current = settings.and_then(|s| match self.open(s) {
                Ok(running) => Some(running),
                Err(e) => {
                    tracing::error!("cannot start the trace exporter: {e}; no spans are exported");
                    None
                }
            });
        }
        current.as_ref().map(|r| Arc::clone(&r.tracer))
    }

    fn open(&self, settings: Otlp) -> Result<Running, export::StartError> {
        let shared = Arc::new(Shared {
            closing: AtomicBool::new(false),
        });
        let (queues, receivers): (Vec<_>, Vec<Receiver<Box<SpanRecord>>>) =
            (0..self.workers).map(|_| sync_channel(QUEUE)).unzip();
        let (events, event_rx) = sync_channel(EVENTS);
        let exporter = export::Exporter::start(
            &settings,
            receivers,
            event_rx,
            Arc::clone(&self.counters),
            Arc::clone(&shared),
        )?;
        let tracer = Arc::new(Tracer {
            sampling: Sampling {
                threshold: threshold(settings.sample),
                always_on_error: settings.always_on_error,
            },
            queues,
            events,
            counters: Arc::clone(&self.counters),
            shared,
        });
        Ok(Running {
            settings,
            tracer,
            exporter,
        })
    }

    /// Exports a release transition as a span, when traces are on; never waits.
    pub(crate) fn release_transition(&self, transition: ReleaseTransition) {
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(running) = &*current
            && running.tracer.events.try_send(transition).is_err()
        {
            self.counters.dropped.fetch_add(1, Relaxed);
        }
    }

    /// Exports every queued record and stops the exporter (the workers have stopped).
    pub(crate) fn close(&self) {
        let running = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(running) = running {
            running.tracer.shared.closing.store(true, Relaxed);
            running.exporter.thread().unpark();
            drop(running.tracer);
            if running.exporter.join().is_err() {
                tracing::error!("the trace exporter panicked");
            }
        }
    }

    /// The counters' Prometheus collector.
    pub(crate) fn collector(&self) -> Arc<CountersCollector> {
        Arc::new(CountersCollector(Arc::clone(&self.counters)))
    }
}

/// `graylane_trace_spans_exported_total`, `graylane_trace_spans_dropped_total` and
/// `graylane_trace_export_errors_total`.
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
                    "graylane_trace_spans_exported",
                    "Spans the OTLP collector accepted",
                    &self.0.exported,
                ),
                (
                    "graylane_trace_spans_dropped",
                    "Spans dropped because the exporter fell behind (its queue was full)",
                    &self.0.dropped,
                ),
                (
                    "graylane_trace_export_errors",
                    "Span exports that failed (the collector unreachable, refusing or too slow)",
                    &self.0.export_errors,
                ),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_the_record_and_counts_its_spans_without_waiting() {
        let (queues, receivers): (Vec<_>, Vec<Receiver<Box<SpanRecord>>>) =
            (0..2).map(|_| sync_channel(2)).unzip();
        let (events, _event_rx) = sync_channel(1);
        let tracer = Tracer {
            sampling: Sampling {
                threshold: u64::MAX,
                always_on_error: false,
            },
            queues,
            events,
            counters: Arc::default(),
            shared: Arc::new(Shared {
                closing: AtomicBool::new(false),
            }),
        };
        for _ in 0..5 {
            tracer.push(0, Box::default());
        }
        tracer.push(1, Box::default());
        assert_eq!(tracer.counters.dropped.load(Relaxed), 3);
        assert_eq!(receivers[0].try_iter().count(), 2);
        assert_eq!(receivers[1].try_iter().count(), 1);
    }

    #[test]
    fn the_sample_share_sets_the_threshold() {
        assert_eq!(threshold(1.0), u64::MAX);
        assert_eq!(threshold(0.0), 0);
        let share = threshold(0.01) as f64 / u64::MAX as f64;
        assert!((share - 0.01).abs() < 1e-9);
    }
}
