//! Listeners, the admin listener, webhooks and audit retention: bind addresses, TLS files,
//! trusted hops, connection limits and timeouts, and that no two of them bind the same address.

use std::net::SocketAddr;

use super::Validator;
use super::scalars::is_token;
use crate::model::*;
use crate::raw::*;
use crate::redact::redact_url;

impl Validator<'_> {
    pub(super) fn audit(&mut self, raw: Option<&RawAudit>) -> AuditRetention {
        let mut out = AuditRetention::default();
        let Some(raw) = raw else { return out };
        if let Some(n) = raw.max_entries {
            out.max_entries = n;
        }
        if let Some(text) = &raw.max_age {
            out.max_age = self.duration("audit.max_age", text);
            if out.max_age.is_some_and(|d| d.is_zero()) {
                self.fail(
                    "audit.max_age",
                    "`0s` would prune every entry; leave `max_age` out to keep entries of any age",
                );
            }
        }
        out
    }

    pub(super) fn listeners(&mut self, raw: &[RawListener]) -> Vec<(String, Listener)> {
        if raw.is_empty() {
            self.fail(
                "listeners",
                "at least one listener is required, e.g. `listeners: [{ bind: 127.0.0.1:8080 }]`",
            );
        }
        let mut out = Vec::new();
        for (i, l) in raw.iter().enumerate() {
            let path = format!("listeners[{i}]");
            let bind = self.socket_addr(&format!("{path}.bind"), &l.bind);
            let tls = l
                .tls
                .as_ref()
                .and_then(|t| self.tls(&format!("{path}.tls"), t));
            let trusted_hops = l
                .trusted_hops
                .iter()
                .enumerate()
                .filter_map(|(j, c)| self.cidr(&format!("{path}.trusted_hops[{j}]"), c))
                .collect();
            let header_read_timeout = self.positive_duration(
                &format!("{path}.header_read_timeout"),
                l.header_read_timeout.as_deref(),
                Listener::DEFAULT_HEADER_READ_TIMEOUT,
            );
            let max_connections = self.max_connections(
                &format!("{path}.max_connections"),
                l.max_connections,
                Listener::DEFAULT_MAX_CONNECTIONS,
            );
            let paths = self.path_policy(&path, l.paths.as_ref());
            let headers_with_underscores = match l.headers_with_underscores.as_deref() {
                None | Some("drop") => UnderscoreHeaders::Drop,
                Some("reject") => UnderscoreHeaders::Reject,
                Some("allow") => UnderscoreHeaders::Allow,
                Some(other) => {
                    self.fail(
                        format!("{path}.headers_with_underscores"),
                        format!("unknown choice `{other}`: use `drop`, `reject` or `allow`"),
                    );
                    UnderscoreHeaders::Drop
                }
            };
            if let Some(bind) = bind {
                out.push((
                    path,
                    Listener {
                        bind,
                        tls,
                        trusted_hops,
                        header_read_timeout,
                        max_connections,
                        paths,
                        headers_with_underscores,
                    },
                ));
            }
        }
        out
    }

    /// A listener's `tls:` at `at`, every certificate read and checked against its key.
    fn tls(&mut self, at: &str, raw: &RawTls) -> Option<Tls> {
        let pairs: Vec<(String, &str, &str, bool)> = match (&raw.cert, &raw.key, &raw.certificates)
        {
            (Some(cert), Some(key), None) => vec![(at.to_string(), cert, key, false)],
            (None, None, Some(list)) => {
                if list.is_empty() {
                    self.fail(
                        format!("{at}.certificates"),
                        "an empty list: give at least one `{ cert, key }`",
                    );
                }
                list.iter()
                    .enumerate()
                    .map(|(i, c)| {
                        let default = c.default == Some(true);
                        (
                            format!("{at}.certificates[{i}]"),
                            &*c.cert,
                            &*c.key,
                            default,
                        )
                    })
                    .collect()
            }
            (_, _, Some(_)) => {
                self.fail(
                    at,
                    "give either `cert` and `key` (one certificate) or `certificates` (several), not both",
                );
                return None;
            }
            (Some(_), None, None) => {
                self.fail(at, "`cert` needs its `key`");
                return None;
            }
            (None, Some(_), None) => {
                self.fail(at, "`key` needs its `cert`");
                return None;
            }
            (None, None, None) => {
                self.fail(
                    at,
                    "needs `cert` and `key`, or `certificates: [{ cert: ..., key: ... }]`",
                );
                return None;
            }
        };
        let mut default = None;
        let mut certificates = Vec::new();
        let mut ok = true;
        for (i, (entry, cert, key, is_default)) in pairs.into_iter().enumerate() {
            if is_default {
                if default.is_some() {
                    self.fail(
                        format!("{entry}.default"),
                        "a second `default: true`: only one certificate can be the default",
                    );
                }
                default.get_or_insert(i);
            }
            let certificate = TlsCertificate {
                cert: self.base_dir.join(cert),
                key: self.base_dir.join(key),
                at: entry,
            };
            if let Err(e) = crate::tls::load_certificate(&certificate.cert, &certificate.key) {
                self.fail(
                    format!("{}.{}", certificate.at, e.file.key_name()),
                    e.message,
                );
                ok = false;
            }
            certificates.push(certificate);
        }
        (ok && !certificates.is_empty()).then(|| Tls {
            certificates,
            default: default.unwrap_or(0),
        })
    }

    /// A key written `header:X-User-Id` or `{ key: "header:X-User-Id", trusted_only: true }`,
    /// at `at`: the key, and whether it counts only from trusted hops.
    pub(super) fn trusted_key(&mut self, at: &str, raw: &RawKey) -> (Option<KeySpec>, bool) {
        match raw {
            RawKey::Plain(k) => (self.key_spec(at, k), false),
            RawKey::Full(k) => {
                let spec = self.key_spec(&format!("{at}.key"), &k.key);
                let trusted_only = k.trusted_only == Some(true);
                if trusted_only {
                    if spec == Some(KeySpec::ClientIp) {
                        self.fail(
                            format!("{at}.trusted_only"),
                            "the client IP is not sent by anyone, so `trusted_only` does not apply to it",
                        );
                    }
                    self.trusted_only_at.push(format!("{at}.trusted_only"));
                }
                (spec, trusted_only)
            }
        }
    }

    pub(super) fn path_policy(&mut self, path: &str, raw: Option<&RawPaths>) -> PathPolicy {
        let mut policy = PathPolicy::default();
        let Some(raw) = raw else {
            return policy;
        };
        match raw.forward.as_deref() {
            None | Some("normalized") => {}
            Some("raw") => policy.forward_raw = true,
            Some(other) => self.fail(
                format!("{path}.paths.forward"),
                format!("unknown choice `{other}`: use `normalized` or `raw`"),
            ),
        }
        match raw.escaped_slashes.as_deref() {
            None | Some("reject") => {}
            Some("keep") => policy.escaped_slashes = EscapedSlashes::Keep,
            Some(other) => self.fail(
                format!("{path}.paths.escaped_slashes"),
                format!("unknown choice `{other}`: use `reject` or `keep`"),
            ),
        }
        policy
    }

    pub(super) fn max_connections(
        &mut self,
        key: &str,
        raw: Option<usize>,
        default: usize,
    ) -> usize {
        let max = raw.unwrap_or(default);
        if max == 0 {
            self.fail(key, "must be at least 1: 0 would refuse every client");
        }
        max
    }

    pub(super) fn admin(&mut self, raw: &RawAdmin) -> Option<Admin> {
        let bind = self.socket_addr("admin.bind", &raw.bind)?;
        let mut tokens = Vec::new();
        if let Some(var) = &raw.token_env {
            self.env_var_name("admin.token_env", var);
            tokens.push(ApiToken {
                name: "admin".to_string(),
                env: var.clone(),
                role: Role::Admin,
            });
        }
        for (i, t) in raw.tokens.iter().enumerate() {
            let path = format!("admin.tokens[{i}]");
            if !is_token(&t.name) {
                self.fail(
                    format!("{path}.name"),
                    format!(
                        "`{}` is not a valid token name: use letters, digits, `-`, `_` and `.`",
                        t.name
                    ),
                );
            } else if raw.tokens[..i].iter().any(|k| k.name == t.name)
                || (raw.token_env.is_some() && t.name == "admin")
            {
                self.fail(
                    format!("{path}.name"),
                    format!("token name `{}` is used twice", t.name),
                );
            }
            self.env_var_name(&format!("{path}.env"), &t.env);
            let role = match t.role.as_str() {
                "viewer" => Role::Viewer,
                "operator" => Role::Operator,
                "admin" => Role::Admin,
                other => {
                    self.fail(
                        format!("{path}.role"),
                        format!("unknown role `{other}`: use `viewer`, `operator` or `admin`"),
                    );
                    continue;
                }
            };
            tokens.push(ApiToken {
                name: t.name.clone(),
                env: t.env.clone(),
                role,
            });
        }
        Some(Admin {
            bind,
            tokens,
            header_read_timeout: self.positive_duration(
                "admin.header_read_timeout",
                raw.header_read_timeout.as_deref(),
                Admin::DEFAULT_HEADER_READ_TIMEOUT,
            ),
            idle_timeout: self.positive_duration(
                "admin.idle_timeout",
                raw.idle_timeout.as_deref(),
                Admin::DEFAULT_IDLE_TIMEOUT,
            ),
            request_timeout: self.positive_duration(
                "admin.request_timeout",
                raw.request_timeout.as_deref(),
                Admin::DEFAULT_REQUEST_TIMEOUT,
            ),
            max_connections: self.max_connections(
                "admin.max_connections",
                raw.max_connections,
                Admin::DEFAULT_MAX_CONNECTIONS,
            ),
        })
    }

    pub(super) fn env_var_name(&mut self, path: &str, var: &str) {
        if var.is_empty() || var.contains('=') || var.contains('\0') {
            self.fail(
                path,
                format!("`{var}` is not a valid environment variable name"),
            );
        }
    }

    pub(super) fn webhooks(&mut self, raw: &[RawWebhook]) -> Vec<Webhook> {
        let mut out = Vec::new();
        for (i, w) in raw.iter().enumerate() {
            let path = format!("webhooks[{i}]");
            let url = match w.url.parse::<http::Uri>() {
                Ok(u) if u.scheme_str() == Some("http") && u.host().is_some() => Some(u),
                Ok(u) if u.scheme_str() == Some("https") => {
                    self.fail(
                        format!("{path}.url"),
                        format!("`{}`: https webhooks are not supported yet; use http (e.g. to a local relay)", redact_url(&w.url)),
                    );
                    None
                }
                _ => {
                    self.fail(
                        format!("{path}.url"),
                        format!(
                            "`{}` is not an http URL like http://127.0.0.1:7000/hooks",
                            redact_url(&w.url)
                        ),
                    );
                    None
                }
            };
            let timeout = match &w.timeout {
                Some(t) => self.duration(&format!("{path}.timeout"), t),
                None => Some(Webhook::DEFAULT_TIMEOUT),
            };
            if let (Some(url), Some(timeout)) = (url, timeout) {
                out.push(Webhook {
                    url,
                    timeout,
                    retries: w.retries.unwrap_or(Webhook::DEFAULT_RETRIES),
                });
            }
        }
        out
    }

    /// Two sockets overlap when they share a port and either address covers the other.
    pub(super) fn check_overlaps(
        &mut self,
        listeners: &[(String, Listener)],
        admin: Option<&Admin>,
    ) {
        let mut binds: Vec<(String, SocketAddr)> = listeners
            .iter()
            .map(|(p, l)| (format!("{p}.bind"), l.bind))
            .collect();
        if let Some(a) = admin {
            binds.push(("admin.bind".to_string(), a.bind));
        }
        for i in 0..binds.len() {
            for j in 0..i {
                let (a, b) = (binds[j].1, binds[i].1);
                let same_family = a.is_ipv4() == b.is_ipv4();
                let covers = a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified();
                // Port 0 asks the kernel for a fresh port each time, so it never collides.
                if a.port() == b.port() && a.port() != 0 && same_family && covers {
                    let msg = format!("{b} overlaps {a} bound by `{}`", binds[j].0);
                    self.fail(binds[i].0.clone(), msg);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::validate::SERVICE;

    #[test]
    fn listener_limits_default_and_parse() {
        let yaml = format!(
            "listeners:\n  - bind: 127.0.0.1:8080\n  - bind: 127.0.0.1:8081\n    header_read_timeout: 300ms\n    max_connections: 4\n{SERVICE}"
        );
        let cfg = crate::load_str(&yaml, "t.yaml", Path::new(".")).unwrap();
        let (default, set) = (&cfg.listeners[0], &cfg.listeners[1]);
        assert_eq!(default.header_read_timeout, Duration::from_secs(10));
        assert_eq!(default.max_connections, 10_000);
        assert_eq!(set.header_read_timeout, Duration::from_millis(300));
        assert_eq!(set.max_connections, 4);
    }

    #[test]
    fn listener_limits_report_every_error_with_its_location() {
        let yaml = format!(
            "listeners:\n  - bind: 127.0.0.1:8080\n    header_read_timeout: soon\n    max_connections: 0\n  - bind: 127.0.0.1:8081\n    header_read_timeout: 0s\n{SERVICE}"
        );
        let err = crate::load_str(&yaml, "t.yaml", Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("t.yaml:3:5: listeners[0].header_read_timeout: `soon` is not a duration"),
            "{err}"
        );
        assert!(
            err.contains("t.yaml:4:5: listeners[0].max_connections: must be at least 1"),
            "{err}"
        );
        assert!(
            err.contains("t.yaml:6:5: listeners[1].header_read_timeout: must be more than 0"),
            "{err}"
        );

        let negative =
            format!("listeners:\n  - bind: 127.0.0.1:8080\n    max_connections: -1\n{SERVICE}");
        let err = crate::load_str(&negative, "t.yaml", Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(err.contains("listeners[0].max_connections"), "{err}");
    }
}
