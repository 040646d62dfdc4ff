//! The `dns:` keys as written: the top-level resolver section, and the `dns: { refresh }` a
//! service or a version may set for its endpoints given as DNS names.

use serde::Deserialize;

/// `dns:` at the top level: how endpoints given as DNS names (`api.internal:8080`) are
/// resolved and how often.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDns {
    /// `servers`: name servers, `IP` or `IP:port` (port 53 when left out), asked instead of
    /// those in `/etc/resolv.conf`.
    pub servers: Option<Vec<String>>,
    /// `timeout`: a duration, default `5s`: the most one lookup of a name may take, every
    /// server and retry included.
    pub timeout: Option<String>,
    /// `refresh`: a duration from `1s` to `1h`: re-resolve every name this often instead of on
    /// its records' TTL (nginx's `resolver ... valid=`).
    pub refresh: Option<String>,
    /// `max_ttl`: a duration from `1s` to `1h`, default `60s`: the longest a TTL is followed
    /// before the name is asked again.
    pub max_ttl: Option<String>,
}

/// A service's or a version's `dns:`: how often its endpoints given as DNS names are
/// re-resolved.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDnsRefresh {
    /// `refresh`: a duration from `1s` to `1h`, overriding the section above it.
    pub refresh: Option<String>,
}
