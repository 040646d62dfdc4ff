//! Loopback ports without bind-drop-rebind races where it can be helped. In-process servers
//! bind `127.0.0.1:0` once and keep the listener; a server in another process that cannot be
//! handed a socket (redis, etcd, prometheus) is started on a candidate port with
//! [`with_fresh_port`], which tries another port when the server could not bind its own.

use std::net::{SocketAddr, TcpListener};

/// How many ports [`with_fresh_port`] tries before giving up.
pub const PORT_ATTEMPTS: usize = 20;

/// A loopback address nothing listens on (bound, then released): what a dead upstream looks
/// like. Another process could take it meanwhile, which would only make a refusal an answer;
/// the tests that use it check the refusal's consequences, which a taken port does not fake.
pub fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    listener.local_addr().expect("a bound address")
}

/// A loopback port the kernel just had free: a candidate for a server in another process,
/// which may lose it to someone else before it binds; [`with_fresh_port`] copes with that.
pub fn candidate_port() -> u16 {
    closed_port().port()
}

/// Runs `start` with candidate ports until it returns `Ok` (the server bound its port and
/// answers); an `Err` (the port was taken, the process exited) moves on to a fresh port. Panics
/// with the last error, naming `what`, after [`PORT_ATTEMPTS`] ports.
pub fn with_fresh_port<T>(what: &str, mut start: impl FnMut(u16) -> Result<T, String>) -> T {
    let mut last = String::new();
    for _ in 0..PORT_ATTEMPTS {
        match start(candidate_port()) {
            Ok(started) => return started,
            Err(e) => last = e,
        }
    }
    panic!("{what} did not start on any of {PORT_ATTEMPTS} ports; the last attempt: {last}");
}
