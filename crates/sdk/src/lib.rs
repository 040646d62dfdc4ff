//! graylane for the services behind it.
//!
//! **Lane consistency across hops.** graylane sends every upstream request an
//! `x-graylane-lane` header naming the version it routed the request to, and honours that
//! header from a listener's `trusted_hops`. [`LaneLayer`] reads it on a service's server (into
//! the request's extensions and, for the handler's duration, [`Lane::current`]);
//! [`PropagateLaneLayer`] sets it on the service's outbound calls. A request that entered on the
//! canary lane then reaches the canary of every service it calls through graylane, and a stable
//! request stays stable.
//!
//! **Local evaluation.** [`Client`] pulls `GET /api/v1/flags/snapshot` from the admin listener
//! (polling with `If-None-Match`) and evaluates flags and releases in-process with graylane's
//! own rule engine: a context gets exactly the variant, and the version, the gateway (and its
//! OFREP endpoint) gives it. The last good snapshot stays in use while graylane is down or
//! answers garbage, its age says how current it is ([`Freshness`]), and an offline default
//! ([`Options::offline`]) answers before the first snapshot.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use graylane_sdk::{Client, EvalContext, Lane, LaneLayer, Options, PropagateLaneLayer};
//! use tower_layer::Layer;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! // Server side: wrap the app (any tower service taking `http::Request`s, an axum Router too).
//! # let app = tower_service_fn();
//! let app = LaneLayer::new().layer(app);
//! // Client side: wrap the HTTP client the handlers call other services with.
//! # let http_client = tower_service_fn();
//! let outbound = PropagateLaneLayer::new().layer(http_client);
//! // In a handler: the lane the request came in on.
//! let lane = Lane::current().unwrap_or_default();
//! println!("on lane {:?}", lane.lane());
//!
//! // Flags and releases, evaluated locally.
//! let flags = Client::start(
//!     Options::new("http://127.0.0.1:9900")
//!         .token(std::env::var("GRAYLANE_TOKEN")?)
//!         .poll_interval(Duration::from_secs(5))
//!         .max_staleness(Duration::from_secs(60)),
//! )?;
//! let user = EvalContext::new(Some("user-42".into()), vec![("plan".into(), "pro".into())])?;
//! if flags.bool_flag("new-checkout", &user, false) {
//!     // ...
//! }
//! let payment = flags.release("payment", &user)?.evaluation.variant;
//! println!("user-42 is on payment {payment}");
//! # let _ = (app, outbound);
//! # Ok(())
//! # }
//! # fn tower_service_fn() -> Echo { Echo }
//! # #[derive(Clone)] struct Echo;
//! # impl tower_service::Service<http::Request<()>> for Echo {
//! #     type Response = http::Response<()>;
//! #     type Error = std::convert::Infallible;
//! #     type Future = std::future::Ready<Result<http::Response<()>, std::convert::Infallible>>;
//! #     fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
//! #         std::task::Poll::Ready(Ok(()))
//! #     }
//! #     fn call(&mut self, _: http::Request<()>) -> Self::Future {
//! #         std::future::ready(Ok(http::Response::new(())))
//! #     }
//! # }
//! ```
//!
//! The lane header is honoured by graylane only from its `trusted_hops`: list the addresses
//! services call it from. A service reachable other than through graylane should not trust an
//! inbound lane either (a client could pick one); [`Lane::from_headers`] accepts only values
//! that can be version names.

mod client;
mod fetch;
mod lane;
mod layers;
mod snapshot;

pub use client::{Answer, BadUrl, Client, Freshness, Options, Refreshed, Status};
pub use graylane_api::{FlagSnapshot, ReleaseSplit, ReleaseState, SplitShare};
pub use graylane_rules::flags::{EvalContext, FlagReason, InvalidContext};
pub use lane::{LANE_HEADER, Lane, VERSION_HEADER};
pub use layers::{LaneLayer, LaneService, PropagateLane, PropagateLaneLayer};
pub use snapshot::{EvalError, Evaluation, Snapshot, SnapshotError};
