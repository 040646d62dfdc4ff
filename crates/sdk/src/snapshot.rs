//! A snapshot of the gateway's flags and release splits, compiled by graylane's own rule
//! engine (`graylane-rules`), so a context gets exactly the variant and version the gateway
//! gives it: the same matchers, segments and bucket hashing, not a copy of them.

use std::path::Path;

use graylane_api::{FlagSnapshot, ReleaseSplit};
use graylane_config::{Config, Weight};
use graylane_rules::flags::{EvalContext, FlagError, FlagReason, RELEASE_PREFIX};
use graylane_rules::{Routing, RoutingTable, Share};

/// Why a snapshot cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// The answer is not the snapshot's JSON.
    #[error("the snapshot is not graylane's snapshot JSON: {0}")]
    Json(String),
    /// Its configuration does not validate (a gateway newer than this SDK, or garbage).
    #[error("the snapshot's configuration does not validate: {0}")]
    Config(String),
    /// A release's split names a service or version the configuration does not have.
    #[error("the snapshot's split of `{service}` {problem}")]
    Split {
        /// The service.
        service: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// What a flag or release gives a context.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// The variant's value (a release's: its version's name, as a string).
    pub value: serde_json::Value,
    /// The variant's name (a release's: the version).
    pub variant: String,
    /// Why: `TARGETING_MATCH`, `SPLIT`, `DEFAULT` or `DISABLED`, as OFREP says it.
    pub reason: FlagReason,
}

/// Why a flag could not be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// No snapshot has arrived yet and no offline default was given.
    #[error("no snapshot from graylane yet, and no offline default")]
    NoSnapshot,
    /// No flag has this key (or no service this name).
    #[error("no such flag (or service)")]
    NotFound,
    /// The flag splits by bucket and the context has no targeting key (nor the bucketing
    /// attribute).
    #[error(
        "the flag splits its contexts by bucket, and this context has no targeting key (nor the bucketing attribute)"
    )]
    TargetingKeyMissing,
}

impl From<FlagError> for EvalError {
    fn from(e: FlagError) -> EvalError {
        match e {
            FlagError::NotFound => EvalError::NotFound,
            FlagError::TargetingKeyMissing => EvalError::TargetingKeyMissing,
        }
    }
}

/// The flags and releases of one snapshot, compiled.
#[derive(Debug, Clone)]
pub struct Snapshot {
    revision: u64,
    table: RoutingTable,
    releases: Vec<ReleaseSplit>,
}

impl Snapshot {
    /// Reads `GET /api/v1/flags/snapshot`'s JSON (as the gateway sent it, or saved to a file
    /// for an offline default).
    pub fn from_json(json: &[u8]) -> Result<Snapshot, SnapshotError> {
        let wire: FlagSnapshot =
            serde_json::from_slice(json).map_err(|e| SnapshotError::Json(e.to_string()))?;
        Snapshot::from_wire(&wire)
    }

    /// Compiles a snapshot document.
    pub fn from_wire(wire: &FlagSnapshot) -> Result<Snapshot, SnapshotError> {
        let config = graylane_config::load_str(&wire.config, "the flag snapshot", Path::new("."))
            .map_err(|e| SnapshotError::Config(e.to_string()))?;
        let mut table = RoutingTable::compile(&config);
        for split in &wire.releases {
            let (index, routing) = routing(&config, split)?;
            table.set_routing(index, routing);
        }
        Ok(Snapshot {
            revision: wire.revision,
            table,
            releases: wire.releases.clone(),
        })
    }

    /// A snapshot of a configuration file's flags and releases at their first step: an offline
    /// default an application ships with, used until the gateway answers.
    pub fn from_config(config: &Config) -> Snapshot {
        Snapshot {
            revision: 0,
            table: RoutingTable::compile(config),
            releases: Vec::new(),
        }
    }

    /// The configuration revision it was taken from (0 for [`Snapshot::from_config`]).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Each release's state, step and split as the gateway sent them (none for
    /// [`Snapshot::from_config`]).
    pub fn releases(&self) -> &[ReleaseSplit] {
        &self.releases
    }

    /// What `ctx` gets from flag `key` (or `release.SERVICE`) now.
    pub fn flag(&self, key: &str, ctx: &EvalContext) -> Result<Evaluation, EvalError> {
        let e = self.table.evaluate_flag(key, ctx, now_unix_ms())?;
        Ok(Evaluation {
            value: e.value.into_owned(),
            variant: e.variant.to_string(),
            reason: e.reason,
        })
    }

    /// The version of `service` a request from `ctx` gets now: its force rules, then its
    /// split, bucketed on its `bucket_by` as the context holds it (else the targeting key).
    pub fn release(&self, service: &str, ctx: &EvalContext) -> Result<Evaluation, EvalError> {
        self.table
            .service_index(service)
            .ok_or(EvalError::NotFound)?;
        self.flag(&format!("{RELEASE_PREFIX}{service}"), ctx)
    }
}

/// The table index of `split`'s service and its routing.
fn routing(config: &Config, split: &ReleaseSplit) -> Result<(usize, Routing), SnapshotError> {
    let fail = |problem: String| SnapshotError::Split {
        service: split.service.clone(),
        problem,
    };
    let index = config
        .services
        .iter()
        .position(|s| s.name == split.service)
        .ok_or_else(|| fail("names no service of the configuration".into()))?;
    let service = &config.services[index];
    if service.release.is_none() {
        return Err(fail("is for a service without a release".into()));
    }
    let version = |name: &str| {
        service
            .versions
            .iter()
            .position(|v| v.name == name)
            .ok_or_else(|| fail(format!("names no version `{name}`")))
    };
    let weight = |milli: u32| {
        (milli <= Weight::FULL.milli_percent())
            .then(|| Weight::from_milli_percent(milli))
            .ok_or_else(|| fail(format!("has a share of {milli} thousandths of a percent")))
    };
    let shares = split
        .shares
        .iter()
        .map(|s| {
            Ok(Share {
                version: version(&s.version)?,
                weight: weight(s.milli_percent)?,
            })
        })
        .collect::<Result<Vec<_>, SnapshotError>>()?;
    let total: u64 = shares
        .iter()
        .map(|s| u64::from(s.weight.milli_percent()))
        .sum();
    if total > u64::from(Weight::FULL.milli_percent()) {
        return Err(fail(format!("adds up to {total} thousandths of a percent")));
    }
    let routing = Routing {
        force_to: split.force_to.as_deref().map(version).transpose()?,
        shares,
        mirror: weight(split.mirror_milli_percent)?,
    };
    Ok((index, routing))
}

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
