//! graylane's data plane: an HTTP/1.1 and HTTP/2 reverse proxy that routes each request to a
//! service version chosen by the rule engine (`graylane-rules`).
//!
//! The request path, from the socket in:
//!
//! ```text
//! server (thread per core, one shared listener, TLS, drain)    server.rs
//!   ├─ listener certificates: SNI, rotation                    server/tls.rs
//!   └─ handler: the request path, one phase after another      handler/mod.rs
//!        1 refuse what is malformed                             handler/refuse.rs
//!        2 route: the rule engine's service and version         handler/route.rs
//!        3 limits: rate limits, the 429                         handler/limits.rs
//!        4 read the start of the body within the deadline,
//!          or an upgrade's handshake and tunnel (WebSocket)     handler/upgrade.rs
//!        5 forward: pick an endpoint, or attempts with          handler/balance.rs
//!          breakers, retries and fallbacks                      handler/attempts.rs
//!        6 respond: stamp, map failures to 502/504, count       handler/respond.rs
//!        7 log: the access log line, queued per worker;         access_log/
//!          formatted and written by its own thread              access_log/writer.rs
//!          and the spans (server, client per attempt),          telemetry/record.rs
//!          exported over OTLP by their own thread               telemetry/export.rs
//!        ├─ guards: traffic-control policies and their state    guards/
//!        ├─ snapshot: routing table + per-version values        snapshot.rs
//!        ├─ upstream: per-thread pool, in-task HTTP/1.1 client  upstream/
//!        │   and hyper's for h2c:// and https:// endpoints      upstream/client.rs
//!        ├─ grpc: gRPC responses counted by their grpc-status   grpc.rs
//!        ├─ forward: the headers an upstream receives           forward.rs
//!        ├─ hop_by_hop: the fields that never cross the hop     hop_by_hop.rs
//!        ├─ deadline: request timeouts, one sweeper per worker  deadline.rs
//!        ├─ body: streamed upstream body or a local one         body.rs
//!        ├─ metrics: per-thread lock-free counters              metrics/
//!        └─ clock and random numbers of the request path        clock.rs, rng.rs
//! ```
//!
//! A prober thread runs the active health checks (health.rs), and a resolver thread keeps the
//! addresses of endpoints given as DNS names current (discovery.rs). [`Gateway`] ties them together
//! and is what the binary drives: start, apply a new configuration atomically, reload from a
//! file, shut down with a drain.

mod access_log;
mod body;
mod clock;
pub mod cookie_keys;
mod deadline;
mod discovery;
mod forward;
#[doc(hidden)]
pub mod fuzzing;
mod gateway;
mod grpc;
pub mod guards;
mod handler;
mod health;
mod hop_by_hop;
pub mod metrics;
mod rng;
mod server;
pub mod snapshot;
mod telemetry;
mod upstream;

pub use access_log::OpenError as AccessLogError;
pub use forward::X_GRAYLANE_LANE;
pub use gateway::{Gateway, GatewayOptions, SegmentError, StartError, UnknownRelease};
pub use handler::{X_GRAYLANE_FALLBACK, X_GRAYLANE_VERSION};
pub use metrics::{Exported, Metrics, Observed, UnitHashes};
pub use snapshot::Snapshot;
pub use telemetry::ReleaseTransition;
