//! Raw model → validated model. Every check runs even after an earlier one failed, so the user
//! sees every problem in one go; each problem names the key path it belongs to.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;

use crate::error::did_you_mean;
use crate::model::*;
use crate::raw::*;
use crate::redact::redact_url;

/// Deepest nesting of `all` / `any` / `not` accepted, so a hostile file cannot exhaust the stack.
const MAX_RULE_DEPTH: usize = 32;
/// Regexes beyond this compiled size are refused rather than slowing every request.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

pub(crate) struct Validator<'a> {
    base_dir: &'a Path,
    /// (key path, message)
    pub(crate) problems: Vec<(String, String)>,
    /// Where `trusted_only: true` was written: it needs a listener with `trusted_hops`.
    trusted_only_at: Vec<String>,
}

impl<'a> Validator<'a> {
    pub(crate) fn new(base_dir: &'a Path) -> Self {
        Validator {
            base_dir,
            problems: Vec::new(),
            trusted_only_at: Vec::new(),
        }
    }

    fn fail(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push((path.into(), message.into()));
    }

    /// Validates the whole document; `None` if anything was wrong (see `problems`).
    pub(crate) fn config(&mut self, raw: RawConfig) -> Option<Config> {
        let listeners = self.listeners(&raw.listeners);
        let admin = raw.admin.as_ref().and_then(|a| self.admin(a));
        self.check_overlaps(&listeners, admin.as_ref());
        let segments = self.segments(raw.segments);
        let upstream = self.upstream(raw.upstream.as_ref());
        let declared: Vec<String> = raw.services.iter().map(|s| s.name.clone()).collect();
        let services = self.services(raw.services, &segments, &upstream);
        let webhooks = self.webhooks(&raw.webhooks);
        let audit = self.audit(raw.audit.as_ref());
        let traffic_control = match raw.traffic_control {
            Some(tc) => self.traffic_control(tc, &services, &declared),
            None => TrafficControl::default(),
        };
        if !listeners.iter().any(|(_, l)| !l.trusted_hops.is_empty()) {
            for path in std::mem::take(&mut self.trusted_only_at) {
                self.fail(
                    path,
                    "`trusted_only: true` needs a listener with `trusted_hops`; without one it is never honoured",
                );
            }
        }
        if !self.problems.is_empty() {
            return None;
        }
        Some(Config {
            listeners: listeners.into_iter().map(|(_, l)| l).collect(),
            admin,
            segments,
            services,
            upstream,
            traffic_control,
            webhooks,
            audit,
        })
    }

    fn audit(&mut self, raw: Option<&RawAudit>) -> AuditRetention {
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

    fn listeners(&mut self, raw: &[RawListener]) -> Vec<(String, Listener)> {
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
            let tls = l.tls.as_ref().map(|t| Tls {
                cert: self.base_dir.join(&t.cert),
                key: self.base_dir.join(&t.key),
            });
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

    /// A key written `header:X-User-Id` or `{ key: "header:X-User-Id", trusted_only: true }`,
    /// at `at`: the key, and whether it counts only from trusted hops.
    fn trusted_key(&mut self, at: &str, raw: &RawKey) -> (Option<KeySpec>, bool) {
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

    fn path_policy(&mut self, path: &str, raw: Option<&RawPaths>) -> PathPolicy {
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

    /// A connection timeout: `default` when absent; zero would close every connection at once.
    fn positive_duration(&mut self, key: &str, raw: Option<&str>, default: Duration) -> Duration {
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

    fn max_connections(&mut self, key: &str, raw: Option<usize>, default: usize) -> usize {
        let max = raw.unwrap_or(default);
        if max == 0 {
            self.fail(key, "must be at least 1: 0 would refuse every client");
        }
        max
    }

    fn admin(&mut self, raw: &RawAdmin) -> Option<Admin> {
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

    fn env_var_name(&mut self, path: &str, var: &str) {
        if var.is_empty() || var.contains('=') || var.contains('\0') {
            self.fail(
                path,
                format!("`{var}` is not a valid environment variable name"),
            );
        }
    }

    fn webhooks(&mut self, raw: &[RawWebhook]) -> Vec<Webhook> {
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
    fn check_overlaps(&mut self, listeners: &[(String, Listener)], admin: Option<&Admin>) {
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

    fn segments(&mut self, raw: std::collections::BTreeMap<String, RawSegment>) -> Vec<Segment> {
        let mut out = Vec::new();
        for (name, seg) in raw {
            let path = format!("segments.{name}");
            if let Some(source) = seg.source.as_deref() {
                if source != "redis" {
                    self.fail(
                        format!("{path}.source"),
                        format!("unknown source `{source}`: use `redis` (or `values` / `file` without `source`)"),
                    );
                    continue;
                }
                if seg.values.is_some() || seg.file.is_some() {
                    self.fail(
                        path.clone(),
                        "a Redis segment takes `url` and `key`, not `values` or `file`",
                    );
                    continue;
                }
                let url = match &seg.url {
                    Some(u) => self.redis_url(&format!("{path}.url"), u),
                    None => {
                        self.fail(
                            format!("{path}.url"),
                            "a Redis segment needs `url`, e.g. redis://127.0.0.1:6379",
                        );
                        None
                    }
                };
                let key = seg.key.clone().filter(|k| !k.is_empty());
                if key.is_none() {
                    self.fail(
                        format!("{path}.key"),
                        "a Redis segment needs `key`: the set holding the members",
                    );
                }
                let refresh = self.duration_or(
                    &format!("{path}.refresh"),
                    seg.refresh.as_deref(),
                    Duration::from_secs(5),
                );
                let max_staleness = self.duration_or(
                    &format!("{path}.max_staleness"),
                    seg.max_staleness.as_deref(),
                    Duration::from_secs(300),
                );
                if let (Some(url), Some(key), Some(refresh), Some(max_staleness)) =
                    (url, key, refresh, max_staleness)
                {
                    out.push(Segment {
                        name,
                        members: Vec::new(),
                        source: SegmentSource::Redis {
                            url,
                            key,
                            refresh,
                            max_staleness,
                        },
                    });
                }
                continue;
            }
            for (k, set) in [
                ("url", seg.url.is_some()),
                ("key", seg.key.is_some()),
                ("refresh", seg.refresh.is_some()),
                ("max_staleness", seg.max_staleness.is_some()),
            ] {
                if set {
                    self.fail(
                        format!("{path}.{k}"),
                        format!("`{k}` is only used with `source: redis`"),
                    );
                }
            }
            match (seg.values, seg.file) {
                (Some(values), None) => out.push(Segment {
                    name,
                    members: values,
                    source: SegmentSource::Static,
                }),
                (None, Some(file)) => {
                    let full = self.base_dir.join(&file);
                    match std::fs::read_to_string(&full) {
                        Ok(text) => out.push(Segment {
                            name,
                            members: parse_member_file(&text),
                            source: SegmentSource::File(full),
                        }),
                        Err(e) => self.fail(
                            format!("{path}.file"),
                            format!("cannot read {}: {e}", full.display()),
                        ),
                    }
                }
                _ => self.fail(
                    path,
                    "a segment needs exactly one of `values` (a list) or `file` (one member per line)",
                ),
            }
        }
        out
    }

    fn upstream(&mut self, raw: Option<&RawUpstream>) -> UpstreamSettings {
        let mut s = UpstreamSettings::default();
        let Some(raw) = raw else { return s };
        if let Some(d) = &raw.connect_timeout {
            s.connect_timeout = self
                .duration("upstream.connect_timeout", d)
                .unwrap_or(s.connect_timeout);
        }
        if let Some(d) = &raw.request_timeout {
            s.request_timeout = self
                .duration("upstream.request_timeout", d)
                .unwrap_or(s.request_timeout);
        }
        if let Some(d) = &raw.idle_timeout {
            s.idle_timeout = self
                .duration("upstream.idle_timeout", d)
                .unwrap_or(s.idle_timeout);
        }
        if let Some(n) = raw.max_idle_per_endpoint {
            s.max_idle_per_endpoint = n;
        }
        s
    }

    fn services(
        &mut self,
        raw: Vec<RawService>,
        segments: &[Segment],
        upstream: &UpstreamSettings,
    ) -> Vec<Service> {
        let mut out: Vec<Service> = Vec::new();
        let mut seen: std::collections::HashMap<String, usize> = Default::default();
        // Match → the service that has it. A map, not a scan of `out`: a scan per service is
        // quadratic, seconds for a file with ten thousand services.
        let mut matches: std::collections::HashMap<MatchKey, usize> = Default::default();
        for (i, svc) in raw.into_iter().enumerate() {
            let path = format!("services[{i}]");
            if let Some(first) = seen.get(&svc.name) {
                self.fail(
                    format!("{path}.name"),
                    format!(
                        "duplicate service name `{}` (also services[{first}])",
                        svc.name
                    ),
                );
                continue;
            }
            seen.insert(svc.name.clone(), i);
            if let Some(s) = self.service(&path, svc, segments, upstream) {
                match matches.entry(match_key(&s.matcher)) {
                    std::collections::hash_map::Entry::Occupied(other) => {
                        let msg = format!(
                            "its match is the same as service `{}`'s, so one of them could never be chosen",
                            out[*other.get()].name
                        );
                        self.fail(format!("{path}.match"), msg);
                    }
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        slot.insert(out.len());
                    }
                }
                out.push(s);
            }
        }
        out
    }

    fn service(
        &mut self,
        path: &str,
        raw: RawService,
        segments: &[Segment],
        upstream: &UpstreamSettings,
    ) -> Option<Service> {
        let errors_before = self.problems.len();
        if !is_token(&raw.name) {
            self.fail(
                format!("{path}.name"),
                format!(
                    "`{}` is not a valid name: use letters, digits, `-`, `_` and `.`",
                    raw.name
                ),
            );
        }
        let matcher = self.service_match(&format!("{path}.match"), &raw.matcher);
        let versions = self.versions(path, raw.versions);
        let names: Vec<&str> = versions.iter().map(|v| v.name.as_str()).collect();
        let has_release = raw.release.is_some();
        let release = raw
            .release
            .and_then(|r| self.release(&format!("{path}.release"), r, &names, segments));
        let default_version = match (&release, &raw.default_version) {
            (Some(r), None) => Some(r.baseline),
            (_, Some(name)) => self.version_ref(&format!("{path}.default_version"), name, &names),
            (None, None) => {
                if let Some(i) = names.iter().position(|n| *n == "stable") {
                    Some(i)
                } else if names.len() == 1 {
                    Some(0)
                } else {
                    // A release that failed validation has its own error; it would have
                    // named the default version.
                    if !names.is_empty() && !has_release {
                        self.fail(
                            format!("{path}.default_version"),
                            "with several versions and no `stable` one, say which one gets the traffic with `default_version`",
                        );
                    }
                    None
                }
            }
        };
        let load_balancing = match raw.load_balancing.as_deref() {
            None | Some("round_robin") => LoadBalancing::RoundRobin,
            Some("least_request") => LoadBalancing::LeastRequest,
            Some(other) => {
                self.fail(
                    format!("{path}.load_balancing"),
                    format!(
                        "unknown load balancing `{other}`: use `round_robin` or `least_request`"
                    ),
                );
                LoadBalancing::RoundRobin
            }
        };
        let mut connect_timeout = upstream.connect_timeout;
        let mut request_timeout = upstream.request_timeout;
        if let Some(t) = &raw.timeouts {
            if let Some(d) = &t.connect {
                connect_timeout = self
                    .duration(&format!("{path}.timeouts.connect"), d)
                    .unwrap_or(connect_timeout);
            }
            if let Some(d) = &t.request {
                request_timeout = self
                    .duration(&format!("{path}.timeouts.request"), d)
                    .unwrap_or(request_timeout);
            }
        }
        if self.problems.len() > errors_before {
            return None;
        }
        Some(Service {
            name: raw.name,
            matcher: matcher?,
            versions,
            default_version: default_version?,
            load_balancing,
            connect_timeout,
            request_timeout,
            release,
        })
    }

    fn service_match(&mut self, path: &str, raw: &RawServiceMatch) -> Option<ServiceMatch> {
        let path_prefix = raw.path_prefix.clone().unwrap_or_else(|| "/".to_string());
        if !path_prefix.starts_with('/') {
            self.fail(
                format!("{path}.path_prefix"),
                format!("`{path_prefix}` must start with `/`"),
            );
        }
        let host = raw.host.as_ref().map(|h| {
            let h = h.to_ascii_lowercase();
            match h.rsplit_once(':') {
                Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name.to_string(),
                _ => h,
            }
        });
        let methods = raw
            .methods
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, m)| self.method(&format!("{path}.methods[{i}]"), m))
            .collect();
        Some(ServiceMatch {
            host,
            path_prefix,
            methods,
        })
    }

    fn versions(
        &mut self,
        path: &str,
        raw: std::collections::BTreeMap<String, RawVersion>,
    ) -> Vec<Version> {
        if raw.is_empty() {
            self.fail(
                format!("{path}.versions"),
                "a service needs at least one version, e.g. `stable: { endpoints: [\"127.0.0.1:9001\"] }`",
            );
        }
        let mut out = Vec::new();
        for (name, v) in raw {
            let vpath = format!("{path}.versions.{name}");
            if !is_token(&name) {
                self.fail(
                    vpath.clone(),
                    format!("`{name}` is not a valid version name: use letters, digits, `-`, `_` and `.`"),
                );
            }
            let (endpoints, registry) = match &v.endpoints {
                RawEndpoints::List(list) => {
                    if list.is_empty() {
                        self.fail(
                            format!("{vpath}.endpoints"),
                            "a version needs at least one endpoint (`host:port`), or a registry selector `{ registry: NAME }`",
                        );
                    }
                    let endpoints = list
                        .iter()
                        .enumerate()
                        .filter_map(|(i, e)| self.endpoint(&format!("{vpath}.endpoints[{i}]"), e))
                        .collect();
                    (endpoints, None)
                }
                RawEndpoints::Registry(selector) => (
                    Vec::new(),
                    Some(self.registry_selector(&format!("{vpath}.endpoints"), selector)),
                ),
            };
            if let Some(tag) = &v.tag
                && http::HeaderValue::from_str(tag).is_err()
            {
                self.fail(
                    format!("{vpath}.tag"),
                    format!("`{tag}` cannot be sent in a header"),
                );
            }
            out.push(Version {
                name,
                endpoints,
                tag: v.tag,
                registry,
            });
        }
        out
    }

    fn registry_selector(&mut self, path: &str, raw: &RawRegistrySelector) -> RegistrySelector {
        if !is_token(&raw.registry) {
            self.fail(
                format!("{path}.registry"),
                format!(
                    "`{}` is not a valid registry service name: use letters, digits, `-`, `_` and `.`",
                    raw.registry
                ),
            );
        }
        for (key, value) in &raw.labels {
            if key.is_empty() {
                self.fail(format!("{path}.labels"), "a label name may not be empty");
            } else if value.is_empty() {
                self.fail(
                    format!("{path}.labels.{key}"),
                    "a label value may not be empty; leave the label out to accept any value",
                );
            }
        }
        RegistrySelector {
            service: raw.registry.clone(),
            labels: raw.labels.clone(),
        }
    }

    fn release(
        &mut self,
        path: &str,
        raw: RawRelease,
        versions: &[&str],
        segments: &[Segment],
    ) -> Option<Release> {
        let errors_before = self.problems.len();
        let roles = self.strategy(path, &raw, versions);
        let force = raw
            .force
            .iter()
            .enumerate()
            .filter_map(|(i, r)| self.rule(&format!("{path}.force[{i}]"), r, segments, 0))
            .collect();
        let (bucket_by, bucket_by_trusted_only) = match &raw.bucket_by {
            Some(key) => self.trusted_key(&format!("{path}.bucket_by"), key),
            None => (Some(KeySpec::ClientIp), false),
        };
        if let Some(salt) = &raw.salt
            && salt.chars().any(char::is_control)
        {
            self.fail(
                format!("{path}.salt"),
                "the salt may not contain control characters",
            );
        }
        let sticky = raw.sticky.as_ref().and_then(|s| {
            if !is_token(&s.cookie) {
                self.fail(
                    format!("{path}.sticky.cookie"),
                    format!("`{}` is not a valid cookie name", s.cookie),
                );
            }
            let max_age = match &s.max_age {
                Some(d) => Some(self.duration(&format!("{path}.sticky.max_age"), d)?),
                None => None,
            };
            Some(Sticky {
                cookie: s.cookie.clone(),
                max_age,
            })
        });
        let steps = raw
            .steps
            .iter()
            .enumerate()
            .filter_map(|(i, s)| self.step(&format!("{path}.steps[{i}]"), s))
            .collect();
        let analysis = raw
            .analysis
            .as_ref()
            .and_then(|a| self.analysis(&format!("{path}.analysis"), a));
        if self.problems.len() > errors_before {
            return None;
        }
        let (strategy, baseline, candidate) = roles?;
        let salt = raw.salt.unwrap_or_else(|| match &strategy {
            Strategy::Experiment { variants } => variants
                .iter()
                .map(|v| v.name.as_str())
                .collect::<Vec<_>>()
                .join(","),
            _ => versions[candidate].to_string(),
        });
        Some(Release {
            strategy,
            baseline,
            candidate,
            force,
            bucket_by: bucket_by?,
            bucket_by_trusted_only,
            salt,
            sticky,
            steps,
            analysis,
            skip_rollback: raw.skip_rollback.unwrap_or(false),
        })
    }

    /// The strategy and the versions it names, as (strategy, baseline, candidate); reports
    /// keys that belong to another strategy, so a half-converted release is caught.
    fn strategy(
        &mut self,
        path: &str,
        raw: &RawRelease,
        versions: &[&str],
    ) -> Option<(Strategy, usize, usize)> {
        let present = [
            ("baseline", raw.baseline.is_some()),
            ("candidate", raw.candidate.is_some()),
            ("steps", !raw.steps.is_empty()),
            ("active", raw.active.is_some()),
            ("preview", raw.preview.is_some()),
            ("keep_previous", raw.keep_previous.is_some()),
            ("variants", !raw.variants.is_empty()),
            ("force", !raw.force.is_empty()),
        ];
        let (wanted, strategy_keys): (&[&str], &[&str]) = match raw.strategy.as_str() {
            "canary" => (
                &["baseline", "candidate", "steps"],
                &["baseline", "candidate", "steps", "force"],
            ),
            "blue_green" => (
                &["active", "preview"],
                &["active", "preview", "keep_previous", "force"],
            ),
            "experiment" => (&["variants"], &["variants"]),
            other => {
                let hint = did_you_mean(other, ["canary", "blue_green", "experiment"])
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_default();
                self.fail(
                    format!("{path}.strategy"),
                    format!("unknown strategy `{other}`: use `canary`, `blue_green` or `experiment`{hint}"),
                );
                return None;
            }
        };
        let strategy = raw.strategy.as_str();
        for (key, is_set) in present {
            if is_set && !strategy_keys.contains(&key) {
                self.fail(
                    format!("{path}.{key}"),
                    format!(
                        "`{key}` does not apply to strategy `{strategy}` (it takes: {})",
                        strategy_keys.join(", ")
                    ),
                );
            }
        }
        for key in wanted {
            if !present.iter().any(|(k, set)| k == key && *set) {
                let example = match *key {
                    "steps" => "a canary release needs at least one step, e.g. `steps: [{ weight: 5 }, { weight: 100 }]`".to_string(),
                    "variants" => "an experiment needs `variants`, e.g. `[{ name: a, version: stable, weight: 50 }, { name: b, version: v2, weight: 50 }]`".to_string(),
                    _ => format!("strategy `{strategy}` needs `{key}`: the name of one of the service's versions ({})", versions.join(", ")),
                };
                self.fail(format!("{path}.{key}"), example);
            }
        }
        let pair = |v: &mut Self, a: (&str, &Option<String>), b: (&str, &Option<String>)| {
            let first =
                a.1.as_ref()
                    .and_then(|n| v.version_ref(&format!("{path}.{}", a.0), n, versions));
            let second =
                b.1.as_ref()
                    .and_then(|n| v.version_ref(&format!("{path}.{}", b.0), n, versions));
            if first.is_some() && first == second {
                v.fail(
                    format!("{path}.{}", b.0),
                    format!("the {} must differ from the {}", b.0, a.0),
                );
                return None;
            }
            Some((first?, second?))
        };
        match strategy {
            "canary" => {
                let (b, c) = pair(
                    self,
                    ("baseline", &raw.baseline),
                    ("candidate", &raw.candidate),
                )?;
                Some((Strategy::Canary, b, c))
            }
            "blue_green" => {
                let (a, p) = pair(self, ("active", &raw.active), ("preview", &raw.preview))?;
                let keep_previous = match &raw.keep_previous {
                    Some(d) => self.duration(&format!("{path}.keep_previous"), d)?,
                    None => Strategy::DEFAULT_KEEP_PREVIOUS,
                };
                Some((Strategy::BlueGreen { keep_previous }, a, p))
            }
            _ => {
                let variants = self.variants(path, &raw.variants, versions)?;
                let (control, challenger) = (variants[0].version, variants[1].version);
                Some((Strategy::Experiment { variants }, control, challenger))
            }
        }
    }

    fn variants(
        &mut self,
        path: &str,
        raw: &[RawVariant],
        versions: &[&str],
    ) -> Option<Vec<Variant>> {
        if raw.is_empty() {
            // `strategy` has already asked for them.
            return None;
        }
        let errors_before = self.problems.len();
        if raw.len() < 2 {
            self.fail(
                format!("{path}.variants"),
                "an experiment needs at least two variants",
            );
        }
        let mut out: Vec<Variant> = Vec::new();
        let mut total = 0u32;
        for (i, v) in raw.iter().enumerate() {
            let vpath = format!("{path}.variants[{i}]");
            if !is_token(&v.name) {
                self.fail(
                    format!("{vpath}.name"),
                    format!(
                        "`{}` is not a valid variant name: use letters, digits, `-`, `_` and `.`",
                        v.name
                    ),
                );
            } else if raw[..i].iter().any(|o| o.name == v.name) {
                self.fail(
                    format!("{vpath}.name"),
                    format!("variant `{}` is named twice", v.name),
                );
            }
            let version = self.version_ref(&format!("{vpath}.version"), &v.version, versions);
            if let Some(other) = raw[..i].iter().find(|o| o.version == v.version) {
                self.fail(
                    format!("{vpath}.version"),
                    format!(
                        "version `{}` is already variant `{}`; each variant needs its own version",
                        v.version, other.name
                    ),
                );
            }
            let weight = Weight::from_percent(v.weight);
            if weight.is_none() {
                self.fail(
                    format!("{vpath}.weight"),
                    format!(
                        "weight {} must be a percentage from 0 to 100 in steps of at most 0.001",
                        v.weight
                    ),
                );
            }
            if let (Some(version), Some(weight)) = (version, weight) {
                total += weight.milli_percent();
                out.push(Variant {
                    name: v.name.clone(),
                    version,
                    weight,
                });
            }
        }
        if self.problems.len() > errors_before {
            return None;
        }
        if total != Weight::FULL.milli_percent() {
            self.fail(
                format!("{path}.variants"),
                format!(
                    "the variants' weights add up to {}%; they must add up to 100",
                    f64::from(total) / 1000.0
                ),
            );
            return None;
        }
        Some(out)
    }

    fn step(&mut self, path: &str, raw: &RawStep) -> Option<Step> {
        let weight = Weight::from_percent(raw.weight);
        if weight.is_none() {
            self.fail(
                format!("{path}.weight"),
                format!(
                    "weight {} must be a percentage from 0 to 100 in steps of at most 0.001",
                    raw.weight
                ),
            );
        }
        let pause = match raw.pause.as_deref() {
            None => Pause::None,
            Some("manual") => Pause::Manual,
            Some(d) => Pause::For(self.duration(&format!("{path}.pause"), d)?),
        };
        Some(Step {
            weight: weight?,
            pause,
        })
    }

    fn analysis(&mut self, path: &str, raw: &RawAnalysis) -> Option<Analysis> {
        let errors_before = self.problems.len();
        let interval = self.duration(&format!("{path}.interval"), &raw.interval);
        let on_failure = match raw.on_failure.as_deref() {
            None | Some("rollback") => Some(OnFailure::Rollback),
            Some("pause") => Some(OnFailure::Pause),
            Some(other) => {
                self.fail(
                    format!("{path}.on_failure"),
                    format!("unknown action `{other}`: use `rollback` or `pause`"),
                );
                None
            }
        };
        let failure_mode = match raw.failure_mode.as_deref() {
            None | Some("consecutive") => FailureMode::Consecutive,
            Some("total") => FailureMode::Total,
            Some(other) => {
                self.fail(
                    format!("{path}.failure_mode"),
                    format!("unknown mode `{other}`: use `consecutive` or `total`"),
                );
                FailureMode::Consecutive
            }
        };
        if raw.failure_limit == Some(0) {
            self.fail(format!("{path}.failure_limit"), "must be at least 1");
        }
        if raw.success_needed == Some(0) {
            self.fail(format!("{path}.success_needed"), "must be at least 1");
        }
        let confidence = raw.confidence.unwrap_or(0.95);
        if !(confidence > 0.5 && confidence < 1.0) {
            self.fail(
                format!("{path}.confidence"),
                format!("{confidence} must be between 0.5 and 1 (exclusive), e.g. 0.95"),
            );
        }
        let max_wait_without_data = match &raw.max_wait_without_data {
            Some(d) => self.duration(&format!("{path}.max_wait_without_data"), d),
            None => None,
        };
        let error_codes = match &raw.error_codes {
            None => vec![StatusRange { from: 500, to: 599 }],
            Some(codes) => codes
                .iter()
                .enumerate()
                .filter_map(|(i, c)| self.status_range(&format!("{path}.error_codes[{i}]"), c))
                .collect(),
        };
        let prometheus_url = match (raw.metrics_source.as_deref(), &raw.prometheus_url) {
            (None | Some("in_process"), None) => None,
            (Some("prometheus"), Some(url)) => {
                self.http_url(&format!("{path}.prometheus_url"), url)
            }
            (Some("prometheus"), None) => {
                self.fail(
                    format!("{path}.prometheus_url"),
                    "`metrics_source: prometheus` needs `prometheus_url`, e.g. http://127.0.0.1:9090",
                );
                None
            }
            (None | Some("in_process"), Some(_)) => {
                self.fail(
                    format!("{path}.prometheus_url"),
                    "`prometheus_url` is only used with `metrics_source: prometheus`",
                );
                None
            }
            (Some(other), _) => {
                self.fail(
                    format!("{path}.metrics_source"),
                    format!("unknown metrics source `{other}`: use `in_process` or `prometheus`"),
                );
                None
            }
        };
        let checks: Vec<Option<Check>> = raw
            .checks
            .iter()
            .enumerate()
            .map(|(i, c)| self.check(&format!("{path}.checks[{i}]"), c, prometheus_url.is_some()))
            .collect();
        if self.problems.len() > errors_before {
            return None;
        }
        Some(Analysis {
            interval: interval?,
            min_requests: raw.min_requests.unwrap_or(100),
            checks: checks.into_iter().collect::<Option<Vec<_>>>()?,
            failure_limit: raw.failure_limit.unwrap_or(1).max(1),
            failure_mode,
            success_needed: raw.success_needed.unwrap_or(1).max(1),
            on_failure: on_failure?,
            max_wait_without_data,
            confidence,
            error_codes,
            prometheus_url,
        })
    }

    /// `500`, `5xx` or `500-504`.
    fn status_range(&mut self, path: &str, text: &str) -> Option<StatusRange> {
        let t = text.trim();
        let range = if let Some(d) = t.strip_suffix("xx").filter(|d| d.len() == 1) {
            d.parse::<u16>().ok().map(|d| StatusRange {
                from: d * 100,
                to: d * 100 + 99,
            })
        } else if let Some((a, b)) = t.split_once('-') {
            match (a.trim().parse::<u16>(), b.trim().parse::<u16>()) {
                (Ok(from), Ok(to)) if from <= to => Some(StatusRange { from, to }),
                _ => None,
            }
        } else {
            t.parse::<u16>()
                .ok()
                .map(|c| StatusRange { from: c, to: c })
        };
        match range {
            Some(r) if (100..=599).contains(&r.from) && (100..=599).contains(&r.to) => Some(r),
            _ => {
                self.fail(
                    path,
                    format!("`{text}` is not a status, a class or a range: write `503`, `5xx` or `500-504`"),
                );
                None
            }
        }
    }

    fn http_url(&mut self, path: &str, text: &str) -> Option<http::Uri> {
        match text.parse::<http::Uri>() {
            Ok(u) if u.scheme_str() == Some("http") && u.host().is_some() => Some(u),
            _ => {
                self.fail(
                    path,
                    format!(
                        "`{}` is not an http URL like http://127.0.0.1:9090",
                        redact_url(text)
                    ),
                );
                None
            }
        }
    }

    fn check(&mut self, path: &str, c: &RawCheck, has_prometheus: bool) -> Option<Check> {
        let given: Vec<(&str, Option<f64>)> = vec![
            ("max", c.max),
            ("min", c.min),
            ("max_increase", c.max_increase),
            ("max_ms", c.max_ms),
            ("max_ratio", c.max_ratio),
            ("min_rps", c.min_rps),
            ("min_change", c.min_change),
        ];
        let metric = match (c.metric.as_deref(), &c.query) {
            (Some(m), None) => m,
            (None | Some("query"), Some(_)) => "query",
            (Some(m), Some(_)) => {
                self.fail(
                    format!("{path}.query"),
                    format!(
                        "a check has either `metric` or `query`; `{m}` is computed by graylane"
                    ),
                );
                return None;
            }
            (None, None) => {
                self.fail(
                    path.to_string(),
                    "a check needs `metric` (error_rate, latency_pNN, throughput, event_rate, event_mean) or a Prometheus `query`",
                );
                return None;
            }
        };
        let event = |v: &mut Self| -> Option<String> {
            match &c.event {
                Some(e) if !e.is_empty() => Some(e.clone()),
                _ => {
                    v.fail(
                        format!("{path}.event"),
                        format!("`{metric}` needs `event`: the name posted to /api/v1/events"),
                    );
                    None
                }
            }
        };
        let (check, allowed): (Option<Check>, &[&str]) = if metric == "error_rate" {
            (
                Some(Check::ErrorRate {
                    max: c.max,
                    max_increase: c.max_increase,
                }),
                &["max", "max_increase"],
            )
        } else if let Some(p) = metric.strip_prefix("latency_p") {
            let percentile = parse_percentile(p);
            if percentile.is_none() {
                self.fail(
                    format!("{path}.metric"),
                    format!(
                        "`{metric}`: the percentile must be between 0 and 100, e.g. `latency_p99`"
                    ),
                );
            }
            (
                percentile.map(|percentile| Check::Latency {
                    percentile,
                    max_ms: c.max_ms,
                    max_ratio: c.max_ratio,
                }),
                &["max_ms", "max_ratio"],
            )
        } else if metric == "throughput" {
            (
                c.min_rps.map(|min_rps| Check::Throughput { min_rps }),
                &["min_rps"],
            )
        } else if metric == "event_rate" || metric == "event_mean" {
            let event = event(self);
            let check = match (event, c.min_change) {
                (Some(event), Some(min_change)) if metric == "event_rate" => {
                    Some(Check::EventRate { event, min_change })
                }
                (Some(event), Some(min_change)) => Some(Check::EventMean { event, min_change }),
                _ => None,
            };
            (check, &["min_change"])
        } else if metric == "query" {
            if !has_prometheus {
                self.fail(
                    format!("{path}.query"),
                    "a `query` check needs `metrics_source: prometheus` and `prometheus_url` in the analysis",
                );
            }
            let query = c.query.clone().unwrap_or_default();
            if query.trim().is_empty() {
                self.fail(format!("{path}.query"), "the query is empty");
            }
            (
                Some(Check::Query {
                    name: c.name.clone().unwrap_or_else(|| query.clone()),
                    query,
                    max: c.max,
                    min: c.min,
                }),
                &["max", "min"],
            )
        } else {
            let hint = did_you_mean(
                metric,
                [
                    "error_rate",
                    "latency_p99",
                    "throughput",
                    "event_rate",
                    "event_mean",
                ],
            )
            .map(|s| format!("; did you mean `{s}`?"))
            .unwrap_or_default();
            self.fail(
                format!("{path}.metric"),
                format!(
                    "unknown metric `{metric}`: use `error_rate`, `latency_pNN`, `throughput`, `event_rate`, `event_mean`, or a Prometheus `query`{hint}"
                ),
            );
            return None;
        };
        if c.event.is_some() && !matches!(metric, "event_rate" | "event_mean") {
            self.fail(
                format!("{path}.event"),
                format!("`event` does not apply to `{metric}`"),
            );
        }
        let mut ok = true;
        for (key, value) in &given {
            match value {
                Some(_) if !allowed.contains(key) => {
                    ok = false;
                    self.fail(
                        format!("{path}.{key}"),
                        format!(
                            "`{key}` does not apply to `{metric}`; it takes {}",
                            allowed.join(", ")
                        ),
                    );
                }
                Some(v) if !v.is_finite() => {
                    ok = false;
                    self.fail(format!("{path}.{key}"), format!("{v} is not a number"));
                }
                // A change may be negative (a tolerated drop); a query's bounds may be too.
                Some(v) if *v < 0.0 && !matches!(*key, "min_change" | "max" | "min") => {
                    ok = false;
                    self.fail(
                        format!("{path}.{key}"),
                        format!("{v} must be a non-negative number"),
                    );
                }
                _ => {}
            }
        }
        if metric == "error_rate" {
            for (key, v) in [("max", c.max), ("max_increase", c.max_increase)] {
                if v.is_some_and(|v| v > 1.0) {
                    ok = false;
                    self.fail(
                        format!("{path}.{key}"),
                        "an error rate is a fraction from 0 to 1 (0.05 is 5%)",
                    );
                }
            }
        }
        if !given
            .iter()
            .any(|(k, v)| v.is_some() && allowed.contains(k))
        {
            ok = false;
            self.fail(
                path.to_string(),
                format!("`{metric}` needs a threshold: {}", allowed.join(" or ")),
            );
        }
        if ok { check } else { None }
    }

    /// A rule; one written with `trusted_only: true` is wrapped in [`Rule::TrustedOnly`].
    fn rule(
        &mut self,
        path: &str,
        raw: &RawRule,
        segments: &[Segment],
        depth: usize,
    ) -> Option<Rule> {
        let (kind, flag) = [
            ("header", raw.header.as_ref().and_then(|h| h.trusted_only)),
            ("cookie", raw.cookie.as_ref().and_then(|c| c.trusted_only)),
            ("query", raw.query.as_ref().and_then(|q| q.trusted_only)),
            ("semver", raw.semver.as_ref().and_then(|s| s.trusted_only)),
            ("country", raw.country.as_ref().and_then(|c| c.trusted_only)),
            ("segment", raw.segment.as_ref().and_then(|s| s.trusted_only)),
        ]
        .into_iter()
        .find(|(_, flag)| flag.is_some())
        .unwrap_or(("", None));
        let trusted_only = flag == Some(true);
        let flag_path = format!("{path}.{kind}.trusted_only");
        if trusted_only && matches!(kind, "cookie" | "query") {
            self.fail(
                flag_path,
                format!(
                    "`trusted_only` applies to what a hop in front of graylane sets (headers); a {kind} comes from the client"
                ),
            );
            return None;
        }
        let rule = self.rule_kind(path, raw, segments, depth)?;
        if !trusted_only {
            return Some(rule);
        }
        self.trusted_only_at.push(flag_path);
        Some(Rule::TrustedOnly(Box::new(rule)))
    }

    fn rule_kind(
        &mut self,
        path: &str,
        raw: &RawRule,
        segments: &[Segment],
        depth: usize,
    ) -> Option<Rule> {
        if depth > MAX_RULE_DEPTH {
            self.fail(
                path,
                format!("rules nest deeper than {MAX_RULE_DEPTH} levels"),
            );
            return None;
        }
        let kinds: Vec<&str> = [
            ("header", raw.header.is_some()),
            ("cookie", raw.cookie.is_some()),
            ("query", raw.query.is_some()),
            ("path", raw.path.is_some()),
            ("method", raw.method.is_some()),
            ("client_ip", raw.client_ip.is_some()),
            ("semver", raw.semver.is_some()),
            ("device", raw.device.is_some()),
            ("country", raw.country.is_some()),
            ("time", raw.time.is_some()),
            ("segment", raw.segment.is_some()),
            ("all", raw.all.is_some()),
            ("any", raw.any.is_some()),
            ("not", raw.not.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect();
        if kinds.len() != 1 {
            let msg = if kinds.is_empty() {
                "a rule needs one kind: header, cookie, query, path, method, client_ip, semver, device, country, time, segment, all, any or not".to_string()
            } else {
                format!(
                    "a rule has exactly one kind, this one has {}; combine them with `all: [...]`",
                    kinds.join(", ")
                )
            };
            self.fail(path, msg);
            return None;
        }
        let kind = kinds[0];
        let sub = format!("{path}.{kind}");
        if let Some(h) = &raw.header {
            let name = self.header_name(&format!("{sub}.name"), &h.name);
            let matcher = self.value_match(&sub, h);
            return Some(Rule::Header {
                name: name?,
                matcher: matcher?,
            });
        }
        if let Some(c) = &raw.cookie {
            if !is_token(&c.name) {
                self.fail(
                    format!("{sub}.name"),
                    format!("`{}` is not a valid cookie name", c.name),
                );
                return None;
            }
            let matcher = self.value_match(&sub, c)?;
            return Some(Rule::Cookie {
                name: c.name.clone(),
                matcher,
            });
        }
        if let Some(q) = &raw.query {
            if q.name.is_empty() || q.name.contains(['&', '=', '#']) {
                self.fail(
                    format!("{sub}.name"),
                    format!("`{}` is not a valid query parameter name", q.name),
                );
                return None;
            }
            let matcher = self.value_match(&sub, q)?;
            return Some(Rule::Query {
                name: q.name.clone(),
                matcher,
            });
        }
        if let Some(p) = &raw.path {
            return self.path_match(&sub, p).map(Rule::Path);
        }
        if let Some(m) = &raw.method {
            let methods: Vec<_> = m.clone_vec();
            let parsed: Vec<_> = methods
                .iter()
                .enumerate()
                .filter_map(|(i, m)| self.method(&format!("{sub}[{i}]"), m))
                .collect();
            return (parsed.len() == methods.len() && !parsed.is_empty())
                .then_some(Rule::Method(parsed));
        }
        if let Some(c) = &raw.client_ip {
            let cidrs = c.clone_vec();
            let parsed: Vec<_> = cidrs
                .iter()
                .enumerate()
                .filter_map(|(i, c)| self.cidr(&format!("{sub}[{i}]"), c))
                .collect();
            return (parsed.len() == cidrs.len() && !parsed.is_empty())
                .then_some(Rule::ClientIp(parsed));
        }
        if let Some(s) = &raw.semver {
            let header = self.header_name(&format!("{sub}.header"), &s.header);
            let range = match parse_semver_range(&s.range) {
                Ok(r) => Some(r),
                Err(e) => {
                    self.fail(format!("{sub}.range"), e);
                    None
                }
            };
            return Some(Rule::Semver {
                header: header?,
                range: range?,
                written: s.range.clone(),
            });
        }
        if let Some(d) = &raw.device {
            let names = d.clone_vec();
            let mut classes = Vec::new();
            for (i, n) in names.iter().enumerate() {
                match n.to_ascii_lowercase().as_str() {
                    "mobile" => classes.push(DeviceClass::Mobile),
                    "desktop" => classes.push(DeviceClass::Desktop),
                    "bot" => classes.push(DeviceClass::Bot),
                    _ => self.fail(
                        format!("{sub}[{i}]"),
                        format!("unknown device class `{n}`: use mobile, desktop or bot"),
                    ),
                }
            }
            return (classes.len() == names.len() && !classes.is_empty())
                .then_some(Rule::Device(classes));
        }
        if let Some(c) = &raw.country {
            let header = self.header_name(
                &format!("{sub}.header"),
                c.header.as_deref().unwrap_or("CF-IPCountry"),
            );
            let codes: Vec<String> = match (&c.equals, &c.one_of) {
                (Some(one), None) => vec![one.clone()],
                (None, Some(many)) if !many.is_empty() => many.clone(),
                _ => {
                    self.fail(
                        sub,
                        "a country rule needs exactly one of `equals` or `in` (ISO 3166 codes)",
                    );
                    return None;
                }
            };
            let mut ok = true;
            for code in &codes {
                if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_alphabetic()) {
                    ok = false;
                    self.fail(
                        sub.clone(),
                        format!("`{code}` is not a two-letter ISO 3166 country code"),
                    );
                }
            }
            let codes = codes.iter().map(|c| c.to_ascii_uppercase()).collect();
            return (ok).then_some(Rule::Country {
                header: header?,
                codes,
            });
        }
        if let Some(t) = &raw.time {
            let from = t
                .from
                .as_ref()
                .map(|s| self.timestamp(&format!("{sub}.from"), s));
            let until = t
                .until
                .as_ref()
                .map(|s| self.timestamp(&format!("{sub}.until"), s));
            if from.is_none() && until.is_none() {
                self.fail(
                    sub,
                    "a time rule needs `from`, `until` or both (RFC 3339 times)",
                );
                return None;
            }
            let from = from.map(|f| f.ok_or(())).transpose().ok()?;
            let until = until.map(|u| u.ok_or(())).transpose().ok()?;
            if let (Some(f), Some(u)) = (from, until)
                && f >= u
            {
                self.fail(format!("{sub}.until"), "`until` must be later than `from`");
                return None;
            }
            return Some(Rule::Time { from, until });
        }
        if let Some(s) = &raw.segment {
            let key = self.key_spec(&format!("{sub}.key"), &s.key);
            let segment = segments.iter().position(|seg| seg.name == s.name);
            if segment.is_none() {
                let hint = did_you_mean(&s.name, segments.iter().map(|s| s.name.as_str()))
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_default();
                self.fail(
                    format!("{sub}.name"),
                    format!("unknown segment `{}`{hint}", s.name),
                );
            }
            return Some(Rule::Segment {
                segment: segment?,
                key: key?,
            });
        }
        if let Some(list) = raw.all.as_ref().or(raw.any.as_ref()) {
            if list.is_empty() {
                self.fail(sub, format!("`{kind}` needs at least one rule"));
                return None;
            }
            let rules: Vec<_> = list
                .iter()
                .enumerate()
                .map(|(i, r)| self.rule(&format!("{sub}[{i}]"), r, segments, depth + 1))
                .collect();
            let rules = rules.into_iter().collect::<Option<Vec<_>>>()?;
            return Some(if kind == "all" {
                Rule::All(rules)
            } else {
                Rule::Any(rules)
            });
        }
        let inner = raw.not.as_ref()?;
        self.rule(&sub, inner, segments, depth + 1)
            .map(|r| Rule::Not(Box::new(r)))
    }

    fn value_match(&mut self, path: &str, raw: &RawValueRule) -> Option<ValueMatch> {
        let mut set = Vec::new();
        if raw.equals.is_some() {
            set.push("equals");
        }
        if raw.one_of.is_some() {
            set.push("in");
        }
        if raw.prefix.is_some() {
            set.push("prefix");
        }
        if raw.glob.is_some() {
            set.push("glob");
        }
        if raw.regex.is_some() {
            set.push("regex");
        }
        if raw.exists.is_some() {
            set.push("exists");
        }
        if raw.absent.is_some() {
            set.push("absent");
        }
        if set.len() != 1 {
            self.fail(
                path,
                format!(
                    "needs exactly one of equals, in, prefix, glob, regex, exists, absent (found {})",
                    if set.is_empty() { "none".to_string() } else { set.join(", ") }
                ),
            );
            return None;
        }
        if raw.exists == Some(false) || raw.absent == Some(false) {
            self.fail(
                format!("{path}.{}", set[0]),
                "write `exists: true` or `absent: true`; `false` would be the other one",
            );
            return None;
        }
        Some(match () {
            _ if raw.equals.is_some() => ValueMatch::Equals(raw.equals.clone()?),
            _ if raw.one_of.is_some() => ValueMatch::In(raw.one_of.clone()?),
            _ if raw.prefix.is_some() => ValueMatch::Prefix(raw.prefix.clone()?),
            _ if raw.glob.is_some() => ValueMatch::Glob(raw.glob.clone()?),
            _ if raw.regex.is_some() => {
                ValueMatch::Regex(self.regex(&format!("{path}.regex"), raw.regex.as_deref()?)?)
            }
            _ if raw.exists.is_some() => ValueMatch::Exists,
            _ => ValueMatch::Absent,
        })
    }

    fn path_match(&mut self, path: &str, raw: &RawPathRule) -> Option<PathMatch> {
        let set = [&raw.equals, &raw.prefix, &raw.glob, &raw.regex]
            .iter()
            .filter(|v| v.is_some())
            .count();
        if set != 1 {
            self.fail(
                path,
                "a path rule needs exactly one of equals, prefix, glob, regex",
            );
            return None;
        }
        if let Some(r) = &raw.regex {
            return self
                .regex(&format!("{path}.regex"), r)
                .map(PathMatch::Regex);
        }
        let (key, value) = match (&raw.equals, &raw.prefix, &raw.glob) {
            (Some(v), _, _) => ("equals", v),
            (_, Some(v), _) => ("prefix", v),
            (_, _, Some(v)) => ("glob", v),
            _ => return None,
        };
        if !value.starts_with('/') && !value.starts_with('*') {
            self.fail(
                format!("{path}.{key}"),
                format!("`{value}` must start with `/`"),
            );
            return None;
        }
        Some(match key {
            "equals" => PathMatch::Equals(value.clone()),
            "prefix" => PathMatch::Prefix(value.clone()),
            _ => PathMatch::Glob(value.clone()),
        })
    }

    fn traffic_control(
        &mut self,
        raw: RawTrafficControl,
        services: &[Service],
        declared: &[String],
    ) -> TrafficControl {
        let mut tc = TrafficControl::default();
        for (i, rl) in raw.rate_limits.iter().enumerate() {
            let path = format!("traffic_control.rate_limits[{i}]");
            if let Some(l) = self.rate_limit(&path, rl, services, declared) {
                tc.rate_limits.push(l);
            }
        }
        for (i, cb) in raw.circuit_breakers.iter().enumerate() {
            let path = format!("traffic_control.circuit_breakers[{i}]");
            if let Some(b) = self.circuit_breaker(&path, cb, services, declared) {
                tc.circuit_breakers.push(b);
            }
        }
        for (i, c) in raw.concurrency_limits.iter().enumerate() {
            let path = format!("traffic_control.concurrency_limits[{i}]");
            let target = self.target(&path, &c.service, c.version.as_deref(), services, declared);
            if c.max == 0 {
                self.fail(format!("{path}.max"), "must be at least 1");
            }
            if let Some((service, version)) = target
                && c.max > 0
            {
                tc.concurrency_limits.push(ConcurrencyLimit {
                    service,
                    version,
                    max: c.max,
                });
            }
        }
        for (i, r) in raw.retries.iter().enumerate() {
            let path = format!("traffic_control.retries[{i}]");
            if let Some(r) = self.retry(&path, r, services, declared) {
                tc.retries.push(r);
            }
        }
        for (i, o) in raw.outlier_detection.iter().enumerate() {
            let path = format!("traffic_control.outlier_detection[{i}]");
            let target = self.target(&path, &o.service, o.version.as_deref(), services, declared);
            let base = self.duration_or(
                &format!("{path}.base_ejection"),
                o.base_ejection.as_deref(),
                Duration::from_secs(30),
            );
            let max = self.duration_or(
                &format!("{path}.max_ejection"),
                o.max_ejection.as_deref(),
                Duration::from_secs(300),
            );
            if o.consecutive_failures == Some(0) {
                self.fail(format!("{path}.consecutive_failures"), "must be at least 1");
            }
            let percent = o.max_ejection_percent.unwrap_or(50);
            if percent > 100 {
                self.fail(
                    format!("{path}.max_ejection_percent"),
                    format!("{percent} is not a percentage from 0 to 100"),
                );
            }
            if let (Some((service, version)), Some(base), Some(max)) = (target, base, max)
                && percent <= 100
                && o.consecutive_failures != Some(0)
            {
                if max < base {
                    self.fail(
                        format!("{path}.max_ejection"),
                        "must not be shorter than base_ejection",
                    );
                    continue;
                }
                tc.outlier_detection.push(OutlierDetection {
                    service,
                    version,
                    consecutive_failures: o.consecutive_failures.unwrap_or(5),
                    base_ejection: base,
                    max_ejection: max,
                    max_ejection_percent: percent,
                });
            }
        }
        for (i, h) in raw.health_checks.iter().enumerate() {
            let path = format!("traffic_control.health_checks[{i}]");
            let target = self.target(&path, &h.service, h.version.as_deref(), services, declared);
            if !h.path.starts_with('/') {
                self.fail(
                    format!("{path}.path"),
                    format!("`{}` must start with /", h.path),
                );
            }
            let interval = self.duration_or(
                &format!("{path}.interval"),
                h.interval.as_deref(),
                Duration::from_secs(10),
            );
            let timeout = self.duration_or(
                &format!("{path}.timeout"),
                h.timeout.as_deref(),
                Duration::from_secs(1),
            );
            for (key, v) in [
                ("healthy_threshold", h.healthy_threshold),
                ("unhealthy_threshold", h.unhealthy_threshold),
            ] {
                if v == Some(0) {
                    self.fail(format!("{path}.{key}"), "must be at least 1");
                }
            }
            let expect = match &h.expect_status {
                Some(t) => self.status_range(&format!("{path}.expect_status"), t),
                None => Some(StatusRange { from: 200, to: 299 }),
            };
            if let (Some((service, version)), Some(interval), Some(timeout), Some(expect)) =
                (target, interval, timeout, expect)
                && h.path.starts_with('/')
                && h.healthy_threshold != Some(0)
                && h.unhealthy_threshold != Some(0)
            {
                tc.health_checks.push(HealthCheck {
                    service,
                    version,
                    path: h.path.clone(),
                    interval,
                    timeout,
                    healthy_threshold: h.healthy_threshold.unwrap_or(2),
                    unhealthy_threshold: h.unhealthy_threshold.unwrap_or(3),
                    expect,
                });
            }
        }
        tc
    }

    fn duration_or(
        &mut self,
        path: &str,
        text: Option<&str>,
        default: Duration,
    ) -> Option<Duration> {
        match text {
            Some(t) => self.duration(path, t),
            None => Some(default),
        }
    }

    /// A service, and optionally one of its versions (`None`: every version).
    fn target(
        &mut self,
        path: &str,
        service: &str,
        version: Option<&str>,
        services: &[Service],
        declared: &[String],
    ) -> Option<(usize, Option<usize>)> {
        let s = self.service_ref(&format!("{path}.service"), service, services, declared)?;
        match version {
            None => Some((s, None)),
            Some(v) => {
                let names: Vec<&str> = services[s]
                    .versions
                    .iter()
                    .map(|v| v.name.as_str())
                    .collect();
                let v = self.version_ref(&format!("{path}.version"), v, &names)?;
                Some((s, Some(v)))
            }
        }
    }

    fn rate_limit(
        &mut self,
        path: &str,
        rl: &RawRateLimit,
        services: &[Service],
        declared: &[String],
    ) -> Option<RateLimit> {
        let service = self.service_ref(&format!("{path}.service"), &rl.service, services, declared);
        let (key, key_trusted_only) = match &rl.key {
            Some(k) => {
                let (spec, trusted_only) = self.trusted_key(&format!("{path}.key"), k);
                (spec.map(Some), trusted_only)
            }
            None => (Some(None), false),
        };
        let rate = self.rate(&format!("{path}.rate"), &rl.rate);
        let headers_on_allowed = match rl.headers.as_deref() {
            None | Some("refused") => false,
            Some("always") => true,
            Some(other) => {
                self.fail(
                    format!("{path}.headers"),
                    format!("unknown choice `{other}`: use `refused` or `always`"),
                );
                false
            }
        };
        if rl.burst == Some(0) {
            self.fail(format!("{path}.burst"), "must be at least 1");
        }
        if let Some(p) = &rl.path_prefix
            && !p.starts_with('/')
        {
            self.fail(
                format!("{path}.path_prefix"),
                format!("`{p}` must start with /"),
            );
        }
        let backend = match rl.backend.as_deref() {
            None | Some("local") => {
                for (k, set) in [
                    ("redis_url", rl.redis_url.is_some()),
                    ("on_redis_error", rl.on_redis_error.is_some()),
                    ("timeout", rl.timeout.is_some()),
                ] {
                    if set {
                        self.fail(
                            format!("{path}.{k}"),
                            format!("`{k}` is only used with `backend: redis`"),
                        );
                    }
                }
                Some(LimitBackend::Local)
            }
            Some("redis") => {
                let url = match &rl.redis_url {
                    Some(u) => self.redis_url(&format!("{path}.redis_url"), u),
                    None => {
                        self.fail(
                            format!("{path}.redis_url"),
                            "`backend: redis` needs `redis_url`, e.g. redis://127.0.0.1:6379",
                        );
                        None
                    }
                };
                let timeout = self.duration_or(
                    &format!("{path}.timeout"),
                    rl.timeout.as_deref(),
                    Duration::from_millis(20),
                );
                let on_error = match rl.on_redis_error.as_deref() {
                    None | Some("allow") => Some(OnRedisError::Allow),
                    Some("deny") => Some(OnRedisError::Deny),
                    Some(other) => {
                        self.fail(
                            format!("{path}.on_redis_error"),
                            format!("unknown action `{other}`: use `allow` or `deny`"),
                        );
                        None
                    }
                };
                Some(LimitBackend::Redis {
                    url: url?,
                    timeout: timeout?,
                    on_error: on_error?,
                })
            }
            Some(other) => {
                self.fail(
                    format!("{path}.backend"),
                    format!("unknown backend `{other}`: use `local` or `redis`"),
                );
                None
            }
        };
        let (requests, per) = rate?;
        if rl.burst == Some(0) {
            return None;
        }
        Some(RateLimit {
            service: service?,
            path_prefix: rl.path_prefix.clone().filter(|p| p.starts_with('/')),
            key: key?,
            requests,
            per,
            burst: rl.burst.unwrap_or(requests).max(1),
            backend: backend?,
            headers_on_allowed,
            key_trusted_only,
        })
    }

    fn redis_url(&mut self, path: &str, url: &str) -> Option<String> {
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

    /// `5xx`, `503`, `500-504`, `connect_error`, `timeout`.
    fn failure_kinds(&mut self, path: &str, raw: Option<&Vec<String>>) -> Option<FailureKinds> {
        let Some(list) = raw else {
            return Some(FailureKinds::default());
        };
        let mut kinds = FailureKinds {
            statuses: Vec::new(),
            connect_errors: false,
            timeouts: false,
        };
        let mut ok = true;
        for (i, item) in list.iter().enumerate() {
            match item.as_str() {
                "connect_error" => kinds.connect_errors = true,
                "timeout" => kinds.timeouts = true,
                other => match self.status_range(&format!("{path}[{i}]"), other) {
                    Some(r) => kinds.statuses.push(r),
                    None => ok = false,
                },
            }
        }
        ok.then_some(kinds)
    }

    fn retry(
        &mut self,
        path: &str,
        r: &RawRetry,
        services: &[Service],
        declared: &[String],
    ) -> Option<Retry> {
        let service = self.service_ref(&format!("{path}.service"), &r.service, services, declared);
        let per_try_timeout = match &r.per_try_timeout {
            Some(t) => Some(self.duration(&format!("{path}.per_try_timeout"), t)?),
            None => None,
        };
        let retry_on = self.failure_kinds(&format!("{path}.retry_on"), r.retry_on.as_ref());
        let budget = r.budget.unwrap_or(0.2);
        if !(budget > 0.0 && budget <= 1.0) {
            self.fail(
                format!("{path}.budget"),
                format!("{budget} must be a fraction in (0, 1], e.g. 0.2"),
            );
        }
        if r.attempts == Some(0) {
            self.fail(
                format!("{path}.attempts"),
                "must be at least 1 (retries after the first try)",
            );
        }
        if r.attempts.is_some_and(|a| a > 10) {
            self.fail(format!("{path}.attempts"), "at most 10 retries");
        }
        let attempts = r.attempts.unwrap_or(1);
        if !(budget > 0.0 && budget <= 1.0 && (1..=10).contains(&attempts)) {
            return None;
        }
        Some(Retry {
            service: service?,
            attempts,
            per_try_timeout,
            retry_on: retry_on?,
            budget,
            min_concurrent: r.min_concurrent.unwrap_or(3),
        })
    }

    fn circuit_breaker(
        &mut self,
        path: &str,
        cb: &RawCircuitBreaker,
        services: &[Service],
        declared: &[String],
    ) -> Option<CircuitBreaker> {
        let service =
            self.service_ref(&format!("{path}.service"), &cb.service, services, declared)?;
        let names: Vec<&str> = services[service]
            .versions
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        let version = self.version_ref(&format!("{path}.version"), &cb.version, &names);
        let fallback = match &cb.fallback {
            Some(RawFallback::Version(f)) => {
                let idx = self.version_ref(&format!("{path}.fallback"), f, &names);
                if idx.is_some() && idx == version {
                    self.fail(
                        format!("{path}.fallback"),
                        "a version cannot fall back to itself",
                    );
                }
                Some(idx.map(Fallback::Version))
            }
            Some(RawFallback::Static(r)) => {
                Some(self.static_response(&format!("{path}.fallback"), r))
            }
            None => None,
        };
        let failure_on = self.failure_kinds(&format!("{path}.failure_on"), cb.failure_on.as_ref());
        let rate = |v: &mut Self, key: &str, value: Option<f64>, default: f64| -> Option<f64> {
            let x = value.unwrap_or(default);
            if !(x > 0.0 && x <= 1.0) {
                v.fail(
                    format!("{path}.{key}"),
                    format!("{x} must be a fraction in (0, 1], e.g. 0.5 for 50%"),
                );
                return None;
            }
            Some(x)
        };
        let failure_rate_threshold = rate(
            self,
            "failure_rate_threshold",
            cb.failure_rate_threshold,
            0.5,
        );
        let slow_call_rate_threshold = rate(
            self,
            "slow_call_rate_threshold",
            cb.slow_call_rate_threshold,
            1.0,
        );
        let slow_call_duration = cb
            .slow_call_duration
            .as_ref()
            .map(|d| self.duration(&format!("{path}.slow_call_duration"), d));
        let window = match &cb.window {
            None => Some(BreakerWindow::Count(100)),
            Some(w) if w.size == 0 => {
                self.fail(format!("{path}.window.size"), "must be at least 1");
                None
            }
            Some(w) => {
                match w.kind.as_str() {
                    "count" => Some(BreakerWindow::Count(w.size)),
                    "time" => Some(BreakerWindow::Time(Duration::from_secs(w.size.into()))),
                    other => {
                        self.fail(format!("{path}.window.kind"), format!("unknown window kind `{other}`: use `count` or `time` (size in seconds)"));
                        None
                    }
                }
            }
        };
        let open_for = match &cb.open_for {
            Some(d) => self.duration(&format!("{path}.open_for"), d),
            None => Some(Duration::from_secs(60)),
        };
        let minimum_calls = cb.minimum_calls.unwrap_or(match window {
            Some(BreakerWindow::Count(n)) => n,
            _ => 100,
        });
        Some(CircuitBreaker {
            service,
            version: version?,
            failure_rate_threshold: failure_rate_threshold?,
            slow_call_duration: slow_call_duration.map(|d| d.ok_or(())).transpose().ok()?,
            slow_call_rate_threshold: slow_call_rate_threshold?,
            minimum_calls,
            window: window?,
            open_for: open_for?,
            half_open_calls: cb.half_open_calls.unwrap_or(10).max(1),
            failure_on: failure_on?,
            fallback: fallback.map(|f| f.ok_or(())).transpose().ok()?,
            fallback_non_idempotent: cb.fallback_non_idempotent.unwrap_or(false),
        })
    }

    fn static_response(&mut self, path: &str, r: &RawStaticResponse) -> Option<Fallback> {
        let status = http::StatusCode::from_u16(r.status)
            .ok()
            .filter(|_| (200..=599).contains(&r.status));
        if status.is_none() {
            self.fail(
                format!("{path}.status"),
                format!("{} is not an HTTP status from 200 to 599", r.status),
            );
        }
        let mut headers = Vec::new();
        for (name, value) in &r.headers {
            let n = self.header_name(&format!("{path}.headers.{name}"), name);
            match http::HeaderValue::from_str(value) {
                Ok(v) => {
                    if let Some(n) = n {
                        headers.push((n, v));
                    }
                }
                Err(_) => self.fail(
                    format!("{path}.headers.{name}"),
                    format!("`{value}` is not a valid header value"),
                ),
            }
        }
        if headers.len() != r.headers.len() {
            return None;
        }
        Some(Fallback::Static(StaticResponse {
            status: status?,
            headers,
            body: r.body.clone().unwrap_or_default(),
        }))
    }

    // ----- leaf values -----

    fn socket_addr(&mut self, path: &str, s: &str) -> Option<SocketAddr> {
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

    fn endpoint(&mut self, path: &str, s: &str) -> Option<SocketAddr> {
        if s.starts_with("https://") {
            self.fail(
                path,
                format!("`{s}`: TLS to upstreams is not supported; use `host:port`"),
            );
            return None;
        }
        let hostport = s.strip_prefix("http://").unwrap_or(s).trim_end_matches('/');
        if let Ok(a) = hostport.parse::<SocketAddr>() {
            return Some(a);
        }
        match hostport.to_socket_addrs().map(|mut it| it.next()) {
            Ok(Some(a)) => Some(a),
            _ => {
                self.fail(
                    path,
                    format!("`{s}` is not a reachable `host:port` (e.g. 127.0.0.1:9001)"),
                );
                None
            }
        }
    }

    fn cidr(&mut self, path: &str, s: &str) -> Option<IpNet> {
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

    fn method(&mut self, path: &str, s: &str) -> Option<http::Method> {
        let upper = s.to_ascii_uppercase();
        match http::Method::from_bytes(upper.as_bytes()) {
            Ok(m) if !upper.is_empty() => Some(m),
            _ => {
                self.fail(path, format!("`{s}` is not an HTTP method"));
                None
            }
        }
    }

    fn header_name(&mut self, path: &str, s: &str) -> Option<HeaderName> {
        match HeaderName::from_bytes(s.as_bytes()) {
            Ok(h) => Some(h),
            Err(_) => {
                self.fail(path, format!("`{s}` is not a valid header name"));
                None
            }
        }
    }

    fn regex(&mut self, path: &str, s: &str) -> Option<regex::Regex> {
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

    fn duration(&mut self, path: &str, s: &str) -> Option<Duration> {
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

    fn timestamp(&mut self, path: &str, s: &str) -> Option<i64> {
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

    fn rate(&mut self, path: &str, s: &str) -> Option<(u32, Duration)> {
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

    fn key_spec(&mut self, path: &str, s: &str) -> Option<KeySpec> {
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

    fn version_ref(&mut self, path: &str, name: &str, versions: &[&str]) -> Option<usize> {
        let found = versions.iter().position(|v| *v == name);
        if found.is_none() {
            let hint = did_you_mean(name, versions.iter().copied())
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
            self.fail(
                path,
                format!(
                    "unknown version `{name}` (the service has: {}){hint}",
                    versions.join(", ")
                ),
            );
        }
        found
    }

    /// A service by name; a service that was declared but is itself invalid resolves to `None`
    /// without a second error, since its own problems are already reported.
    fn service_ref(
        &mut self,
        path: &str,
        name: &str,
        services: &[Service],
        declared: &[String],
    ) -> Option<usize> {
        let found = services.iter().position(|s| s.name == name);
        if found.is_none() && !declared.iter().any(|d| d == name) {
            let hint = did_you_mean(name, declared.iter().map(String::as_str))
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
            self.fail(path, format!("unknown service `{name}`{hint}"));
        }
        found
    }
}

impl OneOrMany {
    fn clone_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// What makes two services' matches the same: host, path prefix and methods.
type MatchKey = (Option<String>, String, Vec<http::Method>);

fn match_key(m: &ServiceMatch) -> MatchKey {
    (m.host.clone(), m.path_prefix.clone(), m.methods.clone())
}

/// Names that travel in headers and cookies: letters, digits, `-`, `_`, `.`.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn parse_member_file(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

fn parse_percentile(s: &str) -> Option<f64> {
    let p: f64 = s.parse().ok()?;
    (p > 0.0 && p < 100.0).then_some(p)
}

/// Accepts both Cargo's comma form (`>=2.1.0, <3.0.0`) and the npm/space form (`>=2.1.0 <3.0.0`).
pub(crate) fn parse_semver_range(s: &str) -> Result<semver::VersionReq, String> {
    if s.contains("||") {
        return Err(format!(
            "`{s}`: `||` is not supported; use an `any` rule of semver rules"
        ));
    }
    let normalized = if s.contains(',') {
        s.to_string()
    } else {
        let mut parts: Vec<String> = Vec::new();
        let mut pending_op = String::new();
        for tok in s.split_whitespace() {
            if tok.bytes().all(|b| b"<>=~^".contains(&b)) {
                pending_op.push_str(tok);
            } else {
                parts.push(format!("{pending_op}{tok}"));
                pending_op.clear();
            }
        }
        if !pending_op.is_empty() {
            return Err(format!("`{s}` ends with an operator and no version"));
        }
        parts.join(", ")
    };
    semver::VersionReq::parse(&normalized)
        .map_err(|e| format!("`{s}` is not a semver range like `>=2.1.0 <3.0.0`: {e}"))
}

pub(crate) fn resolve_base_dir(file: &Path) -> PathBuf {
    file.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
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
    use super::*;

    #[test]
    fn semver_space_and_comma_forms_agree() {
        let v = semver::Version::parse("2.5.1").unwrap();
        for s in [">=2.1.0 <3.0.0", ">=2.1.0, <3.0.0", ">= 2.1.0 < 3.0.0"] {
            let r = parse_semver_range(s).unwrap();
            assert!(r.matches(&v), "{s}");
            assert!(!r.matches(&semver::Version::parse("3.0.0").unwrap()), "{s}");
        }
        assert!(parse_semver_range(">=1 || <0.5").is_err());
        assert!(parse_semver_range(">=banana").is_err());
    }

    const SERVICE: &str =
        "services:\n  - name: web\n    versions: { stable: { endpoints: [127.0.0.1:9001] } }\n";

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
