//! Where the binary starts its tokio runtimes and its own threads, so that what kind of runtime
//! each command gets, and how a thread is named, is decided once.
//!
//! The binary's control-plane work — signals, the admin listener, the controller's timers and
//! file watch, a fleet node's followers, `register`'s lease, the demo's upstreams — runs on
//! current-thread runtimes from [`control_plane`]; blocking calls go to that runtime's
//! blocking pool.
//! The data plane's per-core workers are started by `graylane_proxy::Gateway`, and the etcd
//! client's runtime by `graylane_etcd`, each in its own crate.

use std::thread::JoinHandle;

use tokio::runtime::Runtime;

/// A current-thread runtime with I/O and timers, for a command's control-plane work.
pub(crate) fn control_plane() -> std::io::Result<Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Starts a thread named `name` (as `ps -L` and panics show it).
pub(crate) fn thread<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<JoinHandle<T>> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(work)
}
