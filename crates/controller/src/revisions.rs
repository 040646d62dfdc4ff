//! The environment's configuration: every applied text is a numbered revision; a change from the
//! file, the API or a revert is checked, recorded, applied and announced here, and revisions can be
//! listed, diffed and audited.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use graylane_config::{Config, SegmentSource};
use graylane_notify::WebhookTarget;
use graylane_store::{AuditFilter, NewAuditEntry, NewRevision, RevisionSource, Store};

use crate::controller::{Controller, Reloaded, State};
use crate::error::ControlError;
use crate::releases::{Resume, routes};
use crate::view::{self, audit_view, full_revision_view, revision_view};
use graylane_api::{ApplyOutcome, AuditView, RevisionView};

impl Controller {
    /// The file changed on disk, or a SIGHUP asked for a reload: validates and applies it as a
    /// revision by `file`. Text equal to the current revision (such as the API's own write)
    /// records nothing, but the segment files and the GeoIP database it names are read again:
    /// members added to or removed from a `file:` segment, and a new database, take effect
    /// without an edit of the configuration. A segment file that cannot be read, or a database
    /// that is not one, rejects the reload, so the old members and database keep serving.
    ///
    /// The file is read under the same lock the API's writes of it hold: text read before an
    /// API write and applied after it would bring the configuration it replaced back.
    pub fn file_changed(&self, now_ms: i64) -> Result<Reloaded, ControlError> {
        let mut state = self.lock();
        let yaml =
            std::fs::read_to_string(&self.config_path).map_err(|source| ControlError::Read {
                path: self.config_path.display().to_string(),
                source,
            })?;
        // Compared with the file as last read, not with the configuration in effect: on a
        // fleet node that one may be a newer revision from another node, which an unchanged
        // file must not undo.
        if yaml == state.file_text {
            return self.reread_files(&mut state, now_ms);
        }
        let config = self.load(&yaml)?;
        let n = self.apply_config(
            &mut state,
            config,
            yaml.clone(),
            ("file", "file changed", RevisionSource::File),
            now_ms,
        )?;
        state.file_text = yaml;
        Ok(Reloaded::Revision(n))
    }

    /// The files the current configuration reads besides itself — its `file:` segments' and
    /// its `geoip:` database: what the file watcher watches besides the configuration file.
    pub fn data_files(&self) -> Vec<PathBuf> {
        let state = self.lock();
        state
            .config
            .segments
            .iter()
            .filter_map(|s| match &s.source {
                SegmentSource::File(path) => Some(path.clone()),
                _ => None,
            })
            .chain(state.config.geoip.as_ref().map(|g| g.database.clone()))
            .collect()
    }

    fn reread_files(&self, state: &mut State, now_ms: i64) -> Result<Reloaded, ControlError> {
        if state.config.geoip.is_none()
            && !state
                .config
                .segments
                .iter()
                .any(|s| matches!(s.source, SegmentSource::File(_)))
        {
            return Ok(Reloaded::Unchanged);
        }
        let config = self.load(&state.yaml)?;
        let geoip = match (&state.config.geoip, &config.geoip) {
            (Some(old), Some(new)) => old.countries != new.countries,
            _ => false,
        };
        let changed: Vec<String> = config
            .segments
            .iter()
            .filter(|new| {
                state
                    .config
                    .segments
                    .iter()
                    .find(|old| old.name == new.name)
                    .is_none_or(|old| old.members != new.members)
            })
            .map(|s| s.name.clone())
            .collect();
        if changed.is_empty() && !geoip {
            return Ok(Reloaded::Unchanged);
        }
        if !changed.is_empty() {
            self.store.append_audit(
                &self.env,
                NewAuditEntry {
                    at_ms: now_ms,
                    actor: "file".to_string(),
                    action: "segments.reloaded".to_string(),
                    target: changed.join(","),
                    reason: "segment file changed".to_string(),
                    detail: serde_json::Value::Null,
                },
            )?;
        }
        if geoip {
            self.store.append_audit(
                &self.env,
                NewAuditEntry {
                    at_ms: now_ms,
                    actor: "file".to_string(),
                    action: "geoip.reloaded".to_string(),
                    target: "geoip".to_string(),
                    reason: "GeoIP database file changed".to_string(),
                    detail: serde_json::Value::Null,
                },
            )?;
        }
        self.plane.apply(config.clone(), &routes(&state.releases));
        state.config = Arc::new(config);
        Ok(Reloaded::Files {
            segments: changed,
            geoip,
        })
    }

    /// A configuration from the API: validated, written to the file, recorded, applied.
    /// With `dry_run`, only validated and compared.
    pub fn put_config(
        &self,
        yaml: &str,
        author: &str,
        message: &str,
        dry_run: bool,
        now_ms: i64,
    ) -> Result<ApplyOutcome, ControlError> {
        check_reason("message", message)?;
        self.propose(yaml, author, message, RevisionSource::Api, dry_run, now_ms)
    }

    /// Applies revision `n`'s text again, as a new revision.
    pub fn revert(
        &self,
        n: u64,
        author: &str,
        dry_run: bool,
        now_ms: i64,
    ) -> Result<ApplyOutcome, ControlError> {
        let rev = self.revision_text(n)?;
        self.propose(
            &rev,
            author,
            &format!("revert to revision {n}"),
            RevisionSource::Revert { from: n },
            dry_run,
            now_ms,
        )
    }

    /// Every revision of the configuration, newest first, without its YAML.
    pub fn revisions(&self) -> Result<Vec<RevisionView>, ControlError> {
        Ok(self
            .store
            .revisions(&self.env)?
            .iter()
            .map(revision_view)
            .collect())
    }

    /// Revision `n` with its YAML.
    pub fn revision(&self, n: u64) -> Result<RevisionView, ControlError> {
        match self.store.revision(&self.env, n)? {
            Some(rev) => Ok(full_revision_view(&rev)),
            None => Err(self.no_such_revision(n)),
        }
    }

    /// Unified diff of revision `from`'s text to revision `to`'s.
    pub fn diff(&self, from: u64, to: u64) -> Result<String, ControlError> {
        let a = self.revision_text(from)?;
        let b = self.revision_text(to)?;
        Ok(unified_diff(
            &a,
            &b,
            &format!("revision {from}"),
            &format!("revision {to}"),
        ))
    }

    /// The newest `limit` audit entries that match `filter`, newest first.
    pub fn audit(
        &self,
        filter: &AuditFilter,
        limit: usize,
    ) -> Result<Vec<AuditView>, ControlError> {
        Ok(self
            .store
            .audit_matching(&self.env, filter, limit)?
            .iter()
            .map(audit_view)
            .collect())
    }

    /// Parses and validates a configuration text for this controller. Versions that follow the
    /// service registry need a fleet node (the registry is in etcd): a single node refuses
    /// them here, whatever the text came from, rather than serve them with no endpoints.
    pub(crate) fn load(&self, yaml: &str) -> Result<Config, ControlError> {
        let config = graylane_config::load_text_for(yaml, &self.config_path)
            .map_err(ControlError::Invalid)?;
        if !self.fleet {
            let errors = registry_outside_a_fleet(&config, &self.config_path);
            if !errors.is_empty() {
                return Err(ControlError::Invalid(graylane_config::ConfigErrors {
                    errors,
                }));
            }
        }
        Ok(config)
    }

    fn revision_text(&self, n: u64) -> Result<String, ControlError> {
        match self.store.revision(&self.env, n)? {
            Some(rev) => Ok(rev.yaml),
            None => Err(self.no_such_revision(n)),
        }
    }

    fn no_such_revision(&self, n: u64) -> ControlError {
        ControlError::NoSuchRevision {
            n,
            latest: self.lock().revision,
        }
    }

    fn propose(
        &self,
        yaml: &str,
        author: &str,
        message: &str,
        source: RevisionSource,
        dry_run: bool,
        now_ms: i64,
    ) -> Result<ApplyOutcome, ControlError> {
        // Held across the file write, so the file watcher sees the new text only once it is
        // the current revision, and does not record it a second time.
        let mut state = self.lock();
        let config = self.load(yaml)?;
        let diff = unified_diff(
            &state.yaml,
            yaml,
            &format!("revision {}", state.revision),
            "proposed",
        );
        if dry_run || yaml == state.yaml {
            return Ok(ApplyOutcome {
                applied: false,
                valid: true,
                revision: None,
                diff,
            });
        }
        if !self.fleet {
            write_atomically(&self.config_path, yaml).map_err(|source| ControlError::Write {
                path: self.config_path.display().to_string(),
                source,
            })?;
            state.file_text = yaml.to_string();
        }
        let n = self.apply_config(
            &mut state,
            config,
            yaml.to_string(),
            (author, message, source),
            now_ms,
        )?;
        let revision = self.store.revision(&self.env, n)?.map(|r| {
            let mut v = full_revision_view(&r);
            v.yaml = None;
            v
        });
        Ok(ApplyOutcome {
            applied: true,
            valid: true,
            revision,
            diff,
        })
    }

    /// Records `yaml` as a revision, reconciles the releases with `config` and applies both.
    fn apply_config(
        &self,
        state: &mut State,
        config: Config,
        yaml: String,
        (author, message, source): (&str, &str, RevisionSource),
        now_ms: i64,
    ) -> Result<u64, ControlError> {
        retain_audit(self.store.as_ref(), &config);
        let (releases, started) = self.reconcile(
            &config,
            Resume::Running(&state.releases, &state.config),
            author,
            true,
            now_ms,
        )?;
        let rev = self.store.add_revision(
            &self.env,
            NewRevision {
                at_ms: now_ms,
                author: author.to_string(),
                message: message.to_string(),
                source,
                yaml: yaml.clone(),
            },
        )?;
        self.store
            .append_audit(&self.env, config_audit(&rev.n, author, message, now_ms))?;
        self.plane.apply(config.clone(), &routes(&releases));
        state.releases = releases;
        state.config = Arc::new(config);
        state.yaml = yaml;
        state.revision = rev.n;
        if let Some(n) = &self.notifier {
            // Before announcing: a webhook added by this revision hears about it.
            n.set_targets(webhook_targets(&state.config));
        }
        self.announce_config(rev.n, author, message, now_ms);
        self.announce_starts(state, &started);
        Ok(rev.n)
    }

    pub(crate) fn announce_config(&self, revision: u64, author: &str, message: &str, now_ms: i64) {
        if let Some(n) = &self.notifier {
            n.notify(serde_json::json!({
                "event": "config.applied",
                "env": self.env,
                "revision": revision,
                "author": author,
                "message": message,
                "at": view::rfc3339(now_ms),
            }));
        }
    }
}

/// The longest `reason` of a command (and `message` of a configuration change) accepted, in
/// bytes: enough for a paragraph and a link, while the audit log, which keeps every reason,
/// stays bounded.
pub const MAX_REASON_BYTES: usize = 1024;

/// Refuses a reason longer than [`MAX_REASON_BYTES`] rather than cutting it: a cut reason
/// could lose exactly the part that explains the change.
pub(crate) fn check_reason(field: &'static str, text: &str) -> Result<(), ControlError> {
    if text.len() > MAX_REASON_BYTES {
        return Err(ControlError::TooLong {
            field,
            len: text.len(),
            max: MAX_REASON_BYTES,
        });
    }
    Ok(())
}

/// Hands `config`'s audit retention to the store.
pub(crate) fn retain_audit(store: &dyn Store, config: &Config) {
    let max_age_ms = config
        .audit
        .max_age
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    store.set_audit_retention(config.audit.max_entries, max_age_ms);
}

/// The receivers of `config.webhooks`, as the notifier takes them.
pub fn webhook_targets(config: &Config) -> Vec<WebhookTarget> {
    config
        .webhooks
        .iter()
        .map(|w| WebhookTarget {
            url: w.url.clone(),
            timeout: w.timeout,
            retries: w.retries,
            backoff: WebhookTarget::DEFAULT_BACKOFF,
        })
        .collect()
}

/// An error for each version of `config` that follows the service registry, for a node
/// without one.
pub fn registry_outside_a_fleet(config: &Config, path: &Path) -> Vec<graylane_config::ConfigError> {
    let mut errors = Vec::new();
    for (i, service) in config.services.iter().enumerate() {
        for version in &service.versions {
            if let Some(selector) = &version.registry {
                errors.push(graylane_config::ConfigError {
                    file: path.display().to_string(),
                    line: None,
                    column: None,
                    key: format!("services[{i}].versions.{}.endpoints.registry", version.name),
                    message: format!(
                        "`{}` is looked up in the service registry, which needs fleet mode: run `graylane serve --etcd URL`",
                        selector.service
                    ),
                });
            }
        }
    }
    errors
}

pub(crate) fn config_audit(
    revision: &u64,
    author: &str,
    message: &str,
    now_ms: i64,
) -> NewAuditEntry {
    NewAuditEntry {
        at_ms: now_ms,
        actor: author.to_string(),
        action: "config.apply".to_string(),
        target: "config".to_string(),
        reason: message.to_string(),
        detail: serde_json::json!({ "revision": revision }),
    }
}

/// Unified diff with three lines of context, headed `--- from` / `+++ to`.
pub fn unified_diff(a: &str, b: &str, from: &str, to: &str) -> String {
    similar::TextDiff::from_lines(a, b)
        .unified_diff()
        .context_radius(3)
        .header(from, to)
        .to_string()
}

/// Writes `text` to `path` so that a reader (or a crash) sees the old file or the new one,
/// never half of one: a temporary file in the same folder, flushed, then renamed over.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map_or_else(|| "config".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.graylane-tmp"));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename itself is durable only once the folder is synced.
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
