//! graylane's rule engine: the part of the data plane that turns a request into a
//! `(service, version)` decision.
//!
//! It is pure on purpose — no I/O, no async, no locks — so the proxy, the `graylane eval` CLI and
//! in-process users (a `tower` layer, OFREP) all get the same answer for the same request.
//!
//! * [`RoutingTable::compile`] turns a validated [`graylane_config::Config`] into a table whose
//!   rules are compiled once (glob → prefix/suffix checks, segments → hash sets);
//! * [`RoutingTable::decide`] picks the service and the version for a [`RequestView`], without
//!   allocating;
//! * [`RoutingTable::explain`] says why, for people;
//! * [`path`] puts request paths in their normal form before anything matches on them;
//! * [`CookieKeys`] sign and verify sticky cookies, which carry a bucket (see
//!   [`RoutingTable::set_cookie_keys`]);
//! * [`bucket`] is the deterministic, monotonic hash bucketing behind weights (see
//!   `docs/bucketing.md`);
//! * [`flags`] evaluates feature flags, and releases read as flags, for an application's
//!   context (OFREP on the admin listener).
//!
//! ```
//! use graylane_rules::{Reason, RequestView, RoutingTable};
//!
//! let yaml = "listeners: [{ bind: 127.0.0.1:8080 }]
//! services:
//!   - name: web
//!     versions:
//!       stable: { endpoints: [127.0.0.1:9001] }
//!       canary: { endpoints: [127.0.0.1:9002] }
//!     release:
//!       strategy: canary
//!       baseline: stable
//!       candidate: canary
//!       force: [{ header: { name: X-Canary, equals: \"yes\" } }]
//!       steps: [{ weight: 0 }]
//! ";
//! let config = graylane_config::load_str(yaml, "doc.yaml", std::path::Path::new(".")).unwrap();
//! let table = RoutingTable::compile(&config);
//!
//! let mut headers = http::HeaderMap::new();
//! headers.insert("x-canary", http::HeaderValue::from_static("yes"));
//! let req = RequestView {
//!     method: &http::Method::GET,
//!     host: Some("example.com"),
//!     path: "/",
//!     query: None,
//!     headers: &headers,
//!     client_ip: "203.0.113.7".parse().unwrap(),
//!     now_unix_ms: 0,
//!     trusted_lane: None,
//!     trusted: false,
//!     trusted_hops: &[],
//!     random: 0,
//! };
//! let decision = table.decide(&req).unwrap();
//! assert_eq!(table.version_name(decision.service, decision.version), "canary");
//! assert_eq!(decision.reason, Reason::Forced { rule: 0 });
//! ```

pub mod bucket;
mod decision;
mod describe;
pub mod flags;
mod matcher;
pub mod path;
mod request;
mod routing;
mod sticky;
mod table;

pub use decision::{Decision, KeyUsed, Reason};
pub use matcher::LiveSegment;
pub use request::RequestView;
pub use routing::{Routing, Share};
pub use sticky::{CookieKeys, CookieKeysError, MIN_KEY_LEN, StickyValue};
pub use table::RoutingTable;
