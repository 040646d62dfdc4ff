//! Raw model → validated model. Every check runs even after an earlier one failed, so the user
//! sees every problem in one go; each problem names the key path it belongs to.
//!
//! One file per section: [`listeners`] (and admin), [`segments`], [`geoip`], [`access_log`], [`telemetry`],
//! [`services`] (versions, endpoints, registry selectors), [`dns`] (the `dns:` keys, endpoints
//! given as DNS names), [`releases`] (strategies, steps), [`analysis`], [`gates`] (a release's
//! webhooks), [`rules`] (matchers),
//! [`flags`] (feature flags: variants, targeting rules, rollout), [`traffic`]
//! (traffic control), [`upstream`] (endpoint schemes, upstream `tls:`, `grpc:`) and
//! [`scalars`] (the leaf values they share).

mod access_log;
mod analysis;
mod dns;
mod flags;
mod gates;
mod geoip;
mod listeners;
mod releases;
mod rules;
mod scalars;
mod segments;
mod services;
mod telemetry;
mod traffic;
mod upstream;

use std::path::{Path, PathBuf};

use crate::model::*;
use crate::raw::*;

/// Collects every problem in a document while turning it into the validated model.
pub(crate) struct Validator<'a> {
    base_dir: &'a Path,
    /// (key path, message)
    pub(crate) problems: Vec<(String, String)>,
    /// Where `trusted_only: true` was written: it needs a listener with `trusted_hops`.
    trusted_only_at: Vec<String>,
    /// The top-level `dns.refresh`, which services and versions inherit.
    dns_refresh: Option<std::time::Duration>,
}

impl<'a> Validator<'a> {
    pub(crate) fn new(base_dir: &'a Path) -> Self {
        Validator {
            base_dir,
            problems: Vec::new(),
            trusted_only_at: Vec::new(),
            dns_refresh: None,
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
        let dns = self.dns(raw.dns.as_ref());
        self.dns_refresh = dns.refresh;
        let declared: Vec<String> = raw.services.iter().map(|s| s.name.clone()).collect();
        let services = self.services(raw.services, &segments, &upstream);
        let webhooks = self.webhooks(&raw.webhooks);
        let audit = self.audit(raw.audit.as_ref());
        let geoip = raw.geoip.as_ref().and_then(|g| self.geoip(g));
        let access_log = raw.access_log.as_ref().and_then(|a| self.access_log(a));
        let telemetry = raw.telemetry.as_ref().map(|t| self.telemetry(t));
        let flags = self.flags(raw.flags, &segments);
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
            dns,
            geoip,
            access_log,
            telemetry,
            flags,
        })
    }
}

/// The directory that relative paths in the file at `file` resolve against.
pub(crate) fn resolve_base_dir(file: &Path) -> PathBuf {
    file.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A service for tests that need one valid service beside what they test.
#[cfg(test)]
const SERVICE: &str =
    "services:\n  - name: web\n    versions: { stable: { endpoints: [127.0.0.1:9001] } }\n";
