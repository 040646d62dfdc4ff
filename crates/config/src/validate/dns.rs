//! The `dns:` section, a service's or version's `dns.refresh`, and endpoints given as DNS
//! names (`api.internal:8080`).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::Validator;
use crate::model::*;
use crate::raw::*;

/// One entry of a version's `endpoints` list.
pub(super) enum ParsedEndpoint {
    /// An address, used as it is.
    Addr(SocketAddr),
    /// A DNS name, re-resolved at run time.
    Name(DnsName),
}

impl Validator<'_> {
    pub(super) fn dns(&mut self, raw: Option<&RawDns>) -> DnsSettings {
        let mut s = DnsSettings::default();
        let Some(raw) = raw else { return s };
        for (i, server) in raw.servers.iter().flatten().enumerate() {
            if let Some(addr) = self.dns_server(&format!("dns.servers[{i}]"), server) {
                s.servers.push(addr);
            }
        }
        if raw.servers.as_ref().is_some_and(Vec::is_empty) {
            self.fail(
                "dns.servers",
                "an empty list would ask no server; leave `servers` out to use /etc/resolv.conf",
            );
        }
        if let Some(d) = &raw.timeout
            && let Some(d) = self.duration("dns.timeout", d)
        {
            if d.is_zero() || d > DnsSettings::MAX_TIMEOUT {
                self.fail(
                    "dns.timeout",
                    format!(
                        "must be more than 0 and at most {}",
                        humantime::format_duration(DnsSettings::MAX_TIMEOUT)
                    ),
                );
            } else {
                s.timeout = d;
            }
        }
        s.refresh = self.dns_interval("dns.refresh", raw.refresh.as_deref());
        if let Some(d) = self.dns_interval("dns.max_ttl", raw.max_ttl.as_deref()) {
            s.max_ttl = d;
        }
        s
    }

    /// A service's or version's `dns.refresh`; `inherited` when it sets none.
    pub(super) fn dns_refresh(
        &mut self,
        path: &str,
        raw: Option<&RawDnsRefresh>,
        inherited: Option<Duration>,
    ) -> Option<Duration> {
        let Some(refresh) = raw.and_then(|r| r.refresh.as_deref()) else {
            return inherited;
        };
        self.dns_interval(&format!("{path}.dns.refresh"), Some(refresh))
            .or(inherited)
    }

    /// A refresh interval or TTL ceiling: from [`DnsSettings::MIN_TTL`] to
    /// [`DnsSettings::MAX_REFRESH`].
    fn dns_interval(&mut self, path: &str, raw: Option<&str>) -> Option<Duration> {
        let d = self.duration(path, raw?)?;
        if d < DnsSettings::MIN_TTL || d > DnsSettings::MAX_REFRESH {
            self.fail(
                path,
                format!(
                    "`{}` is out of range: from {} to {}",
                    raw.unwrap_or_default(),
                    humantime::format_duration(DnsSettings::MIN_TTL),
                    humantime::format_duration(DnsSettings::MAX_REFRESH)
                ),
            );
            return None;
        }
        Some(d)
    }

    fn dns_server(&mut self, path: &str, s: &str) -> Option<SocketAddr> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Some(addr);
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Some(SocketAddr::new(ip, DnsSettings::DEFAULT_PORT));
        }
        self.fail(
            path,
            format!(
                "`{s}` is not a name server address like 10.0.0.2, 10.0.0.2:53 or [fd00::2]:53 (an IP address: a name would need DNS to be found)"
            ),
        );
        None
    }

    /// An endpoint, its scheme already taken off (`endpoint_schemes`): an address, or a DNS
    /// name with its port.
    pub(super) fn endpoint(&mut self, path: &str, s: &str) -> Option<ParsedEndpoint> {
        let hostport = s.trim_end_matches('/');
        if let Ok(a) = hostport.parse::<SocketAddr>() {
            return Some(ParsedEndpoint::Addr(a));
        }
        let example = "like 127.0.0.1:9001 or api.internal:8080";
        let Some((host, port)) = hostport.rsplit_once(':') else {
            self.fail(
                path,
                format!("`{s}` has no port: write the endpoint as `host:port`, {example}"),
            );
            return None;
        };
        let Some(port) = port.parse::<u16>().ok().filter(|p| *p != 0) else {
            self.fail(
                path,
                format!("`{s}`: `{port}` is not a port from 1 to 65535 ({example})"),
            );
            return None;
        };
        match dns_host(host) {
            Ok(host) => Some(ParsedEndpoint::Name(DnsName { host, port })),
            Err(why) => {
                self.fail(
                    path,
                    format!("`{s}` is not an endpoint `host:port` {example}: {why}"),
                );
                None
            }
        }
    }
}

/// `host` as a DNS name: lower case, without a trailing dot; why it is not one otherwise.
fn dns_host(host: &str) -> Result<String, &'static str> {
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    if host.is_empty() || host.len() > 253 {
        return Err("a host name has 1 to 253 characters");
    }
    let mut all_numeric = true;
    for label in host.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("each dot-separated part of a host name has 1 to 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            || label.starts_with('-')
            || label.ends_with('-')
        {
            return Err(
                "a host name has letters, digits, `-` and `_`, and no part starts or ends with `-`",
            );
        }
        all_numeric &= label.bytes().all(|b| b.is_ascii_digit());
    }
    if all_numeric {
        return Err("it is neither an IP address nor a host name");
    }
    Ok(host)
}
