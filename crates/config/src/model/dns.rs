//! Service discovery by DNS: endpoints given as names (`api.internal:8080`), and how they are
//! resolved (`dns:`). The data plane re-resolves them in the background and fills the
//! addresses in with [`crate::resolve_dns`]; nothing here does I/O.

use std::net::SocketAddr;
use std::time::Duration;

/// The top-level `dns:` section: where names are looked up, and how long answers are trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSettings {
    /// Name servers asked instead of `/etc/resolv.conf`'s; empty: the system's.
    pub servers: Vec<SocketAddr>,
    /// The most one lookup of a name may take, every server and retry included.
    pub timeout: Duration,
    /// Re-resolve every name this often instead of on its records' TTL; a service's or a
    /// version's `dns.refresh` overrides it.
    pub refresh: Option<Duration>,
    /// The longest a record's TTL is followed before the name is asked again.
    pub max_ttl: Duration,
}

impl DnsSettings {
    /// `timeout` when unset: 5 s.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
    /// `max_ttl` when unset: 60 s.
    pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(60);
    /// The shortest time between two lookups of a name, whatever its TTL (a TTL of 0 would
    /// otherwise ask in a loop).
    pub const MIN_TTL: Duration = Duration::from_secs(1);
    /// The longest `refresh` and `max_ttl` accepted.
    pub const MAX_REFRESH: Duration = Duration::from_secs(3600);
    /// The longest `timeout` accepted.
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
    /// The port of a server written without one.
    pub const DEFAULT_PORT: u16 = 53;
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            servers: Vec::new(),
            timeout: DnsSettings::DEFAULT_TIMEOUT,
            refresh: None,
            max_ttl: DnsSettings::DEFAULT_MAX_TTL,
        }
    }
}

/// An endpoint given as a DNS name: every A and AAAA address of `host`, at `port`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DnsName {
    /// The name, lower case, without a trailing dot.
    pub host: String,
    /// The port every address of the name is reached on.
    pub port: u16,
}

impl std::fmt::Display for DnsName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// A version's endpoints given as DNS names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionDns {
    /// The names, in configuration order.
    pub names: Vec<DnsName>,
    /// The endpoints given as addresses next to them; they stay whatever the names resolve to.
    pub fixed: Vec<SocketAddr>,
    /// The version's `dns.refresh`, else its service's, else the top-level one; `None`: on the
    /// records' TTL.
    pub refresh: Option<Duration>,
}
