//! The exporter thread: it drains every worker's queue, turns records into the SDK's
//! `SpanData` (a server span, a client span per attempt) and release transitions into spans of
//! their own, and hands them in batches to `opentelemetry-otlp`'s exporter on a current-thread
//! runtime of its own. One export is in flight at a time; meanwhile records wait in the queues
//! (and past their bound are dropped and counted). It ends when its tracer was replaced and
//! drained, or at shutdown.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use graylane_config::{Otlp, OtlpProtocol};
use graylane_rules::Reason;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter, SpanLinks};

use super::record::{Attempt, Ended, SpanRecord};
use super::{Counters, ReleaseTransition, Shared};

/// Spans sent in one export at most.
const BATCH: usize = 512;
/// How long the exporter sleeps when every queue is empty.
const IDLE: Duration = Duration::from_millis(50);
/// The most one export may take; the collector's share of a stuck export is this.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The exporter could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    #[error("{0}")]
    Build(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Tls(String),
}

/// The exporter thread's state.
pub(super) struct Exporter {
    receivers: Vec<Receiver<Box<SpanRecord>>>,
    events: Receiver<ReleaseTransition>,
    runtime: tokio::runtime::Runtime,
    exporter: opentelemetry_otlp::SpanExporter,
    scope: InstrumentationScope,
    counters: Arc<Counters>,
    shared: Arc<Shared>,
}

impl Exporter {
    /// Builds the OTLP exporter `settings` ask for and starts its thread.
    pub(super) fn start(
        settings: &Otlp,
        receivers: Vec<Receiver<Box<SpanRecord>>>,
        events: Receiver<ReleaseTransition>,
        counters: Arc<Counters>,
        shared: Arc<Shared>,
    ) -> Result<JoinHandle<()>, StartError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let mut exporter = {
            // The gRPC channel is made (lazily connecting) on the exporter's own runtime.
            let _entered = runtime.enter();
            build(settings)?
        };
        exporter.set_resource(
            &Resource::builder_empty()
                .with_service_name(settings.service_name.clone())
                .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                .build(),
        );
        let state = Exporter {
            receivers,
            events,
            runtime,
            exporter,
            scope: InstrumentationScope::builder("graylane")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            counters,
            shared,
        };
        Ok(std::thread::Builder::new()
            .name("graylane-traces".to_string())
            .spawn(move || state.run())?)
    }

    /// Exports until every queue's sender is gone (the tracer was replaced and its last
    /// requests are done) or the gateway shuts down, then exports what is left.
    fn run(self) {
        let mut batch = Vec::with_capacity(BATCH);
        let mut failing = false;
        loop {
            // Read before draining: spans queued before shutdown are all exported.
            let closing = self.shared.closing.load(Relaxed);
            let mut open = 0;
            for rx in &self.receivers {
                loop {
                    if batch.len() >= BATCH {
                        open += 1;
                        break;
                    }
                    match rx.try_recv() {
                        Ok(record) => spans(&record, &self.scope, &mut batch),
                        Err(TryRecvError::Empty) => {
                            open += 1;
                            break;
                        }
                        Err(TryRecvError::Disconnected) => break,
                    }
                }
            }
            loop {
                match self.events.try_recv() {
                    Ok(transition) => batch.push(release_span(&transition, &self.scope)),
                    Err(TryRecvError::Empty) => {
                        open += 1;
                        break;
                    }
                    Err(TryRecvError::Disconnected) => break,
                }
            }
            let idle = batch.is_empty();
            if !idle {
                self.export(&mut batch, &mut failing);
            }
            if (closing || open == 0) && idle {
                return;
            }
            if idle {
                std::thread::park_timeout(IDLE);
            }
        }
    }

    fn export(&self, batch: &mut Vec<SpanData>, failing: &mut bool) {
        let spans = batch.len() as u64;
        let sent = std::mem::replace(batch, Vec::with_capacity(BATCH));
        let result = self.runtime.block_on(async {
            tokio::time::timeout(EXPORT_TIMEOUT, self.exporter.export(sent)).await
        });
        match result {
            Ok(Ok(())) => {
                self.counters.exported.fetch_add(spans, Relaxed);
                if *failing {
                    *failing = false;
                    tracing::info!("spans are exported again");
                }
            }
            Ok(Err(e)) => self.failed(failing, &e.to_string()),
            Err(_) => self.failed(failing, "the collector did not answer in time"),
        }
    }

    /// Counts a failed export, and logs the first of a run of them.
    fn failed(&self, failing: &mut bool, error: &str) {
        self.counters.export_errors.fetch_add(1, Relaxed);
        if !*failing {
            *failing = true;
            tracing::warn!("cannot export spans to the OTLP collector: {error}");
        }
    }
}

/// The `opentelemetry-otlp` exporter of `settings`.
fn build(settings: &Otlp) -> Result<opentelemetry_otlp::SpanExporter, StartError> {
    let builder = opentelemetry_otlp::SpanExporter::builder();
    let exporter = match settings.protocol {
        OtlpProtocol::HttpProtobuf => {
            let base = settings.endpoint.to_string();
            let url = format!("{}/v1/traces", base.trim_end_matches('/'));
            let builder = builder
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(url)
                .with_timeout(EXPORT_TIMEOUT)
                .with_headers(headers(settings).collect::<HashMap<_, _>>());
            match &settings.tls {
                None => builder.build()?,
                Some(tls) => {
                    let connector = super::tls::https_connector(tls).map_err(StartError::Tls)?;
                    builder
                        .with_http_client(opentelemetry_http::hyper::HyperClient::new(
                            connector,
                            EXPORT_TIMEOUT,
                            None,
                        ))
                        .build()?
                }
            }
        }
        OtlpProtocol::Grpc => {
            // The configuration checked the names and values; gRPC metadata is made of the same.
            let mut metadata = http::HeaderMap::new();
            for (name, value) in headers(settings) {
                if let (Ok(name), Ok(value)) = (
                    http::HeaderName::from_bytes(name.as_bytes()),
                    http::HeaderValue::from_str(&value),
                ) {
                    metadata.insert(name, value);
                }
            }
            let metadata =
                opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(metadata);
            let builder = builder
                .with_tonic()
                .with_endpoint(settings.endpoint.to_string())
                .with_timeout(EXPORT_TIMEOUT)
                .with_metadata(metadata);
            match &settings.tls {
                None => builder.build()?,
                Some(tls) => builder.with_tls_config(super::tls::grpc(tls)).build()?,
            }
        }
    };
    Ok(exporter)
}

/// The headers sent with every export, `{ env: NAME }` ones read now; one whose variable is
/// unset is left out and logged.
fn headers(settings: &Otlp) -> impl Iterator<Item = (String, String)> + '_ {
    settings.headers.iter().filter_map(|(name, source)| {
        let value = source.resolve();
        if value.is_none() {
            tracing::warn!(header = %name, "telemetry.otlp.headers.{name}: its environment variable is unset or not a header value; the header is not sent");
        }
        Some((name.clone(), value?))
    })
}

/// The wall clock at `at`, measured from the record's start.
fn wall(record: &SpanRecord, at: std::time::Instant) -> SystemTime {
    record.start + at.saturating_duration_since(record.started)
}

fn context(trace_id: [u8; 16], span_id: [u8; 8], sampled: bool) -> SpanContext {
    let flags = if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    SpanContext::new(
        TraceId::from_bytes(trace_id),
        SpanId::from_bytes(span_id),
        flags,
        false,
        TraceState::default(),
    )
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn method(record: &SpanRecord) -> Cow<'static, str> {
    match record.method.bytes() {
        b"GET" => "GET".into(),
        b"POST" => "POST".into(),
        b"PUT" => "PUT".into(),
        b"DELETE" => "DELETE".into(),
        b"PATCH" => "PATCH".into(),
        b"HEAD" => "HEAD".into(),
        b"OPTIONS" => "OPTIONS".into(),
        // Semantic conventions: a method outside the known set is named `HTTP`.
        _ => "HTTP".into(),
    }
}

fn protocol_version(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        http::Version::HTTP_09 => "0.9",
        _ => "1.1",
    }
}

/// The server span of `record` and a client span per kept attempt, into `out`.
fn spans(record: &SpanRecord, scope: &InstrumentationScope, out: &mut Vec<SpanData>) {
    let name = method(record);
    let method_attr = KeyValue::new("http.request.method", text(record.method.bytes()));
    let snapshot = record.snapshot.as_deref();
    let service = record
        .decision
        .and_then(|d| Some((d, snapshot?.services.get(d.service)?)));
    let version_name = |index: usize| {
        service
            .and_then(|(_, s)| s.versions.get(index))
            .map(|v| v.name.clone())
    };
    let mut attributes = vec![
        method_attr.clone(),
        KeyValue::new("url.path", text(record.path.bytes())),
        KeyValue::new("url.scheme", if record.tls { "https" } else { "http" }),
        KeyValue::new("client.address", record.peer.to_string()),
        KeyValue::new("network.peer.address", record.peer.to_string()),
        KeyValue::new("network.protocol.version", protocol_version(record.http)),
        KeyValue::new("http.response.status_code", i64::from(record.status)),
    ];
    if !record.host.bytes().is_empty() {
        attributes.push(KeyValue::new("server.address", text(record.host.bytes())));
    }
    if let Some((decision, svc)) = service {
        attributes.push(KeyValue::new("graylane.service", svc.name.clone()));
        let answered = record.answered_by.unwrap_or(decision.version);
        if let Some(v) = version_name(answered) {
            attributes.push(KeyValue::new("graylane.version", v));
        }
        if let Some(v) = svc.versions.get(decision.version) {
            attributes.push(KeyValue::new(
                "graylane.lane",
                text(v.lane_header.as_bytes()),
            ));
        }
        attributes.push(KeyValue::new(
            "graylane.routing.reason",
            decision.reason.label(),
        ));
        if let Reason::Sticky { bucket, weight } | Reason::Bucket { bucket, weight, .. } =
            decision.reason
        {
            attributes.push(KeyValue::new("graylane.release.weight", weight.percent()));
            attributes.push(KeyValue::new("graylane.bucket", i64::from(bucket)));
        }
    }
    attributes.push(KeyValue::new("graylane.retries", i64::from(record.retries)));
    attributes.push(KeyValue::new("graylane.fallback", record.fallback));
    let error = record.status >= 500;
    if error {
        attributes.push(KeyValue::new("error.type", record.status.to_string()));
    }
    let end = record.start + record.duration;
    // A record kept only because it failed is exported as sampled: it is exported.
    let sampled = true;
    let server = SpanData {
        span_context: context(record.trace_id, record.span_id, sampled),
        parent_span_id: SpanId::from_bytes(record.parent),
        parent_span_is_remote: record.parent != [0; 8],
        span_kind: SpanKind::Server,
        name: name.clone(),
        start_time: record.start,
        end_time: end,
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: if error {
            Status::error(format!("answered {}", record.status))
        } else {
            Status::Unset
        },
        instrumentation_scope: scope.clone(),
    };
    out.push(server);
    let made = record.attempts_made;
    let request = Request {
        record,
        name,
        method: &method_attr,
        service: service.map(|(_, s)| s.name.as_str()),
        scope,
    };
    let mut previous: Option<&Attempt> = None;
    for (i, attempt) in record.attempts.iter().enumerate() {
        let Some(attempt) = attempt else { continue };
        // A retry is another try of the version the previous attempt went to; the first
        // attempt at a fallback is not.
        let retry = previous.is_some_and(|p| p.fallback == attempt.fallback);
        previous = Some(attempt);
        out.push(client_span(
            &request,
            attempt,
            (i as u32 + 1, made, retry),
            version_name(attempt.version),
        ));
    }
}

/// What every client span of a request shares.
struct Request<'a> {
    record: &'a SpanRecord,
    name: Cow<'static, str>,
    method: &'a KeyValue,
    service: Option<&'a str>,
    scope: &'a InstrumentationScope,
}

fn client_span(
    request: &Request<'_>,
    attempt: &Attempt,
    (number, made, retry): (u32, u32, bool),
    version: Option<String>,
) -> SpanData {
    let Request {
        record,
        method,
        service,
        scope,
        ..
    } = *request;
    let mut attributes = vec![
        method.clone(),
        KeyValue::new("server.address", attempt.addr.ip().to_string()),
        KeyValue::new("server.port", i64::from(attempt.addr.port())),
        KeyValue::new("network.peer.address", attempt.addr.ip().to_string()),
        KeyValue::new("network.peer.port", i64::from(attempt.addr.port())),
        KeyValue::new("url.path", text(record.path.bytes())),
        KeyValue::new("graylane.attempt", i64::from(number)),
        KeyValue::new("graylane.attempts", i64::from(made)),
        KeyValue::new("graylane.retry", retry),
        KeyValue::new("graylane.fallback", attempt.fallback),
    ];
    if let Some(service) = service {
        attributes.push(KeyValue::new("graylane.service", service.to_string()));
    }
    if let Some(version) = version {
        attributes.push(KeyValue::new("graylane.version", version));
    }
    let (status, error_type) = match attempt.ended {
        Ended::Status(code) => {
            attributes.push(KeyValue::new("http.response.status_code", i64::from(code)));
            if code >= 500 {
                (
                    Status::error(format!("answered {code}")),
                    Some(code.to_string()),
                )
            } else {
                (Status::Unset, None)
            }
        }
        Ended::Failed(kind) => (
            Status::error(format!("upstream failure: {}", kind.label())),
            Some(kind.label().to_string()),
        ),
        Ended::TimedOut => (
            Status::error("the upstream did not answer in time"),
            Some("timeout".to_string()),
        ),
        Ended::Running => (Status::Unset, None),
    };
    if let Some(error_type) = error_type {
        attributes.push(KeyValue::new("error.type", error_type));
    }
    SpanData {
        span_context: context(record.trace_id, attempt.span_id, true),
        parent_span_id: SpanId::from_bytes(record.span_id),
        parent_span_is_remote: false,
        span_kind: SpanKind::Client,
        name: request.name.clone(),
        start_time: wall(record, attempt.started),
        end_time: wall(record, attempt.ended_at),
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: scope.clone(),
    }
}

/// A release transition as a span of a trace of its own.
fn release_span(t: &ReleaseTransition, scope: &InstrumentationScope) -> SpanData {
    let mut trace_id = [0; 16];
    trace_id[..8].copy_from_slice(&crate::rng::fastrand_u64().max(1).to_be_bytes());
    trace_id[8..].copy_from_slice(&crate::rng::fastrand_u64().to_be_bytes());
    let span_id = crate::rng::fastrand_u64().max(1).to_be_bytes();
    let rolled_back = matches!(t.to.as_str(), "aborted" | "rolled_back");
    let mut attributes = vec![
        KeyValue::new("graylane.service", t.service.clone()),
        KeyValue::new("graylane.release.action", t.action.clone()),
        KeyValue::new("graylane.release.from", t.from.clone()),
        KeyValue::new("graylane.release.to", t.to.clone()),
        KeyValue::new("graylane.release.actor", t.actor.clone()),
        KeyValue::new("graylane.release.reason", t.reason.clone()),
    ];
    if let Some(step) = t.step {
        attributes.push(KeyValue::new("graylane.release.step", step as i64));
    }
    for (version, weight) in &t.weights {
        attributes.push(KeyValue::new(
            format!("graylane.release.weight.{version}"),
            *weight,
        ));
    }
    SpanData {
        span_context: context(trace_id, span_id, true),
        parent_span_id: SpanId::INVALID,
        parent_span_is_remote: false,
        span_kind: SpanKind::Internal,
        name: "release.transition".into(),
        start_time: t.at,
        end_time: t.at,
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: if rolled_back {
            Status::error(t.reason.clone())
        } else {
            Status::Unset
        },
        instrumentation_scope: scope.clone(),
    }
}
