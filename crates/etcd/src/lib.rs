//! Fleet mode on etcd v3: many `graylane serve --etcd URL` nodes sharing one configuration and
//! one release state.

pub mod registry;
#[cfg(feature = "testing")]
pub mod testing;
