//! Services and their versions: upstream settings, service matches (and that no two services
//! claim the same one), endpoints and registry selectors, and references to services and versions.

use super::Validator;
use super::dns::ParsedEndpoint;
use super::scalars::is_token;
use crate::error::did_you_mean;
use crate::model::*;
use crate::raw::*;

impl Validator<'_> {
    pub(super) fn upstream(&mut self, raw: Option<&RawUpstream>) -> UpstreamSettings {
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

    pub(super) fn services(
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

    pub(super) fn service(
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
        let refresh = self.dns_refresh(path, raw.dns.as_ref(), self.dns_refresh);
        let versions = self.versions(path, raw.versions, refresh);
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
        let grpc_error_codes = self.grpc_error_codes(path, raw.grpc.as_ref());
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
            grpc_error_codes,
        })
    }

    pub(super) fn service_match(
        &mut self,
        path: &str,
        raw: &RawServiceMatch,
    ) -> Option<ServiceMatch> {
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

    pub(super) fn versions(
        &mut self,
        path: &str,
        raw: std::collections::BTreeMap<String, RawVersion>,
        dns_refresh: Option<std::time::Duration>,
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
            let (endpoints, registry, dns, protocol, hosts) = match &v.endpoints {
                RawEndpoints::List(list) => {
                    if list.is_empty() {
                        self.fail(
                            format!("{vpath}.endpoints"),
                            "a version needs at least one endpoint (`host:port`), or a registry selector `{ registry: NAME }`",
                        );
                    }
                    let (protocol, hosts) = self.endpoint_schemes(&vpath, &name, list);
                    let mut fixed = Vec::new();
                    let mut names = Vec::new();
                    for (i, e) in &hosts {
                        match self.endpoint(&format!("{vpath}.endpoints[{i}]"), e) {
                            Some(ParsedEndpoint::Addr(a)) => fixed.push(a),
                            Some(ParsedEndpoint::Name(n)) if !names.contains(&n) => names.push(n),
                            _ => {}
                        }
                    }
                    let refresh = self.dns_refresh(&vpath, v.dns.as_ref(), dns_refresh);
                    let dns = (!names.is_empty()).then(|| VersionDns {
                        names,
                        fixed: fixed.clone(),
                        refresh,
                    });
                    (fixed, None, dns, protocol, hosts)
                }
                RawEndpoints::Registry(selector) => (
                    Vec::new(),
                    Some(self.registry_selector(&format!("{vpath}.endpoints"), selector)),
                    None,
                    UpstreamProtocol::Http1,
                    Vec::new(),
                ),
            };
            let tls = self.upstream_tls(&vpath, v.tls.as_ref(), protocol, &hosts);
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
                dns,
                protocol,
                tls,
            });
        }
        out
    }

    pub(super) fn registry_selector(
        &mut self,
        path: &str,
        raw: &RawRegistrySelector,
    ) -> RegistrySelector {
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

    pub(super) fn version_ref(
        &mut self,
        path: &str,
        name: &str,
        versions: &[&str],
    ) -> Option<usize> {
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
    pub(super) fn service_ref(
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

/// What makes two services' matches the same: host, path prefix and methods.
type MatchKey = (Option<String>, String, Vec<http::Method>);

fn match_key(m: &ServiceMatch) -> MatchKey {
    (m.host.clone(), m.path_prefix.clone(), m.methods.clone())
}
