//! Leaf values shared by every section: durations, timestamps, rates, addresses, CIDRs, methods,
//! header names, regexes, key specs, names (tokens) and Redis URLs.

use std::net::SocketAddr;
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;

use super::Validator;
use crate::model::*;
use crate::raw::*;
use crate::redact::redact_url;

/// Regexes beyond this compiled size are refused rather than slowing every request.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

impl Validator<'_> {
    /// A connection timeout: `default` when absent; zero would close every connection at once.
    pub(super) fn positive_duration(
        &mut self,
        key: &str,
        raw: Option<&str>,
        default: Duration,
    ) -> Duration {
        let Some(d) = raw else {
            return default;
        };
        match self.duration(key, d) {
            Some(Duration::ZERO) => {
                self.fail(key, "must be more than 0");
                default
            }
            Some(d) => d,
            None => default,
        }
    }

    pub(super) fn redis_url(&mut self, path: &str, url: &str) -> Option<String> {
        let ok = url
            .strip_prefix("redis://")
            .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'));
        if !ok {
            self.fail(
                path,
                format!(
                    "`{}` is not a Redis URL like redis://127.0.0.1:6379",
                    redact_url(url)
                ),
            );
            return None;
        }
        if let Err(reason) = redis_client_reads(url) {
            self.fail(
                path,
                format!(
                    "`{}` is not a Redis URL the Redis client can use: {reason}",
                    redact_url(url)
                ),
            );
            return None;
        }
        Some(url.to_string())
    }

    pub(super) fn socket_addr(&mut self, path: &str, s: &str) -> Option<SocketAddr> {
        match s.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.fail(
                    path,
                    format!("`{s}` is not an address like 127.0.0.1:8080 or [::1]:8080"),
                );
                None
            }
        }
    }

    pub(super) fn cidr(&mut self, path: &str, s: &str) -> Option<IpNet> {
        if let Ok(net) = s.parse::<IpNet>() {
            return Some(net.trunc());
        }
        if let Ok(ip) = s.parse::<std::net::IpAddr>() {
            return Some(IpNet::from(ip));
        }
        self.fail(
            path,
            format!("`{s}` is not a CIDR like 10.0.0.0/8 or an IP address"),
        );
        None
    }

    pub(super) fn method(&mut self, path: &str, s: &str) -> Option<http::Method> {
        let upper = s.to_ascii_uppercase();
        match http::Method::from_bytes(upper.as_bytes()) {
            Ok(m) if !upper.is_empty() => Some(m),
            _ => {
                self.fail(path, format!("`{s}` is not an HTTP method"));
                None
            }
        }
    }

    pub(super) fn header_name(&mut self, path: &str, s: &str) -> Option<HeaderName> {
        match HeaderName::from_bytes(s.as_bytes()) {
            Ok(h) => Some(h),
            Err(_) => {
                self.fail(path, format!("`{s}` is not a valid header name"));
                None
            }
        }
    }

    pub(super) fn regex(&mut self, path: &str, s: &str) -> Option<regex::Regex> {
        match regex::RegexBuilder::new(s)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
        {
            Ok(r) => Some(r),
            Err(e) => {
                let why = e
                    .to_string()
                    .lines()
                    .last()
                    .unwrap_or_default()
                    .trim()
                    .to_string();
                self.fail(path, format!("invalid regex `{s}`: {why}"));
                None
            }
        }
    }

    pub(super) fn duration(&mut self, path: &str, s: &str) -> Option<Duration> {
        match humantime::parse_duration(s) {
            Ok(d) => Some(d),
            Err(e) => {
                self.fail(
                    path,
                    format!("`{s}` is not a duration like 30s, 5m or 1h30m ({e})"),
                );
                None
            }
        }
    }

    pub(super) fn timestamp(&mut self, path: &str, s: &str) -> Option<i64> {
        match time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
            Ok(t) => Some((t.unix_timestamp_nanos() / 1_000_000) as i64),
            Err(e) => {
                self.fail(
                    path,
                    format!("`{s}` is not an RFC 3339 time like 2026-12-01T08:00:00Z ({e})"),
                );
                None
            }
        }
    }

    pub(super) fn rate(&mut self, path: &str, s: &str) -> Option<(u32, Duration)> {
        let parsed = s.split_once('/').and_then(|(n, unit)| {
            let n: u32 = n.trim().parse().ok().filter(|n| *n > 0)?;
            let per = match unit.trim() {
                "s" | "sec" | "second" => Duration::from_secs(1),
                "m" | "min" | "minute" => Duration::from_secs(60),
                "h" | "hour" => Duration::from_secs(3600),
                _ => return None,
            };
            Some((n, per))
        });
        if parsed.is_none() {
            self.fail(
                path,
                format!("`{s}` is not a rate like 100/s, 6000/min or 10000/h"),
            );
        }
        parsed
    }

    pub(super) fn key_spec(&mut self, path: &str, s: &str) -> Option<KeySpec> {
        let parsed = match s.split_once(':') {
            None if s == "ip" => Some(KeySpec::ClientIp),
            Some(("header", name)) => HeaderName::from_bytes(name.as_bytes())
                .ok()
                .map(KeySpec::Header),
            Some(("cookie", name)) if is_token(name) => Some(KeySpec::Cookie(name.to_string())),
            Some(("query", name)) if !name.is_empty() => Some(KeySpec::Query(name.to_string())),
            _ => None,
        };
        if parsed.is_none() {
            self.fail(
                path,
                format!(
                    "`{s}` is not a key: use `header:NAME`, `cookie:NAME`, `query:NAME` or `ip`"
                ),
            );
        }
        parsed
    }
}

impl OneOrMany {
    pub(super) fn clone_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// Names that travel in headers and cookies: letters, digits, `-`, `_`, `.`.
pub(super) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Whether the Redis client reads `url` as written, and why not. An `@` after the authority is
/// refused even where the client would accept it (`redis://tok#en@host` connects to `tok`): it
/// is a password with an unencoded `/`, `?` or `#`, and the client would not send it.
fn redis_client_reads(url: &str) -> Result<(), String> {
    use redis::IntoConnectionInfo;
    const ENCODE: &str = "a password with `/`, `?`, `#`, `@` or `%` must be percent-encoded \
                          (`%2F`, `%3F`, `%23`, `%40`, `%25`)";
    url::Url::parse(url).map_err(|e| format!("{e}; {ENCODE}"))?;
    let authority = &url["redis://".len()..];
    let authority_end = authority.find(['/', '?', '#']).unwrap_or(authority.len());
    if authority[authority_end..].contains('@') {
        return Err(format!(
            "it has an `@` after its host, in the path, query or fragment; {ENCODE}"
        ));
    }
    url.into_connection_info().map(drop).map_err(|e| {
        let text = e.to_string();
        match text.split_once("- ") {
            Some((reason, _kind)) => reason.to_string(),
            None => text,
        }
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::validate::SERVICE;

    #[test]
    fn redis_urls_the_client_cannot_read_are_refused_without_their_secret() {
        let yaml = |url: &str| {
            format!(
                "listeners: [{{ bind: 127.0.0.1:8080 }}]\nsegments:\n  beta: {{ source: redis, url: \"{url}\", key: k }}\n{SERVICE}"
            )
        };
        for (url, why) in [
            (
                "redis://:Sec/ret1@127.0.0.1:16379",
                "must be percent-encoded",
            ),
            (
                "redis://:Sec#ret1@127.0.0.1:16379",
                "must be percent-encoded",
            ),
            (
                "redis://:Sec?ret1@127.0.0.1:16379",
                "must be percent-encoded",
            ),
            (
                "redis://tokSEC#ret1@127.0.0.1:16379",
                "an `@` after its host",
            ),
            ("redis://SEC/ret1@127.0.0.1:16379", "an `@` after its host"),
            ("redis://127.0.0.1:6379/zero", "Invalid database number"),
            ("redis://0.0.0.0:6379", "wildcard address"),
        ] {
            let err = crate::load_str(&yaml(url), "g.yaml", Path::new("."))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("g.yaml:3:") && err.contains("segments.beta.url") && err.contains(why),
                "{url}: {err}"
            );
            assert!(!err.contains("Sec") && !err.contains("ret1"), "{err}");
        }
        let encoded = "redis://:Sec%2Fret1@127.0.0.1:16379";
        assert!(crate::load_str(&yaml(encoded), "g.yaml", Path::new(".")).is_ok());
    }
}
