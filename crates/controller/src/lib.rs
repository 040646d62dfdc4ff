//! graylane's release controller: the one place that changes a release or the configuration.
//!
//! * [`Controller`] holds one environment: its configuration (every applied text is a
//!   numbered revision in the [`graylane_store::Store`]) and its releases, each a
//!   [`graylane_rollout::Rollout`] state machine. Commands, timed steps and configuration
//!   changes are checked, persisted, handed to the [`DataPlane`] as a routing, and announced to
//!   webhooks — in that order, so a change the store refuses never reaches traffic, and a
//!   crash never loses one that did.
//! * Release gates (`gates:`) are asked off the request path and off the lock by
//!   [`Controller::gates`], their answers applied and audited on the next pass.
//! * [`view`] turns that state into the admin API's documents (the `graylane-api` crate's
//!   types).
//! * [`fleet`] merges, in a fleet, every node's published figures into what the analysis sees.
//! * [`metrics::ReleaseCollector`] exports every release's state and weights to Prometheus.
//!
//! Restarting on the same store resumes every release at the same step and weight; a timed
//! pause counts wall-clock time, so the time graylane was down counts towards it.

mod analysis;
mod controller;
mod error;
pub mod events;
pub mod experiment;
pub mod fleet;
mod following;
mod gates;
pub mod metrics;
pub mod prometheus;
mod releases;
mod revisions;
pub mod series;
pub mod view;

pub use analysis::Observation;
pub use controller::{Action, Actor, Controller, DataPlane, Reloaded, Setup};
pub use error::ControlError;
pub use revisions::{MAX_REASON_BYTES, registry_outside_a_fleet, unified_diff, webhook_targets};
