//! Fleet mode on etcd v3: many `graylane serve --etcd URL` nodes sharing one configuration and
//! one release state.
//!
//! - [`connect`]: the client, on a runtime of its own, with a timeout on every call.
//! - [`keys`]: where everything lives in etcd (the layout other tools may read).
//! - [`store`]: [`EtcdStore`], the controller's [`graylane_store::Store`] on etcd, with
//!   conditional (fenced) release writes.
//! - [`fleet`]: a node's membership (under a lease), leader election, and the watch that
//!   tells the node what other nodes changed.
//! - [`registry`]: service instances registered under their own leases, and the watch a node
//!   resolves `endpoints: { registry: ... }` versions from.
//! - [`shared`]: values every node must agree on (the sticky-cookie keys).

pub mod connect;
pub mod fleet;
pub mod import;
pub mod keys;
pub mod registry;
pub mod shared;
pub mod store;

pub use connect::{Etcd, EtcdOptions};
pub use fleet::{Fleet, FleetEvent, Member, NodeInfo};
pub use store::EtcdStore;
