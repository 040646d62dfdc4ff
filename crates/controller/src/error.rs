//! Everything the controller can refuse, each saying what was wrong and what would work.

use graylane_config::ConfigErrors;
use graylane_rollout::CommandError;
use graylane_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "unknown service `{service}`; services with a release: {}",
        list(services)
    )]
    UnknownService {
        service: String,
        services: Vec<String>,
    },
    #[error(
        "unknown variant `{variant}`; the experiment's variants: {}",
        list(variants)
    )]
    UnknownVariant {
        variant: String,
        variants: Vec<String>,
    },
    #[error(
        "weight {given} must be a percentage from 0 to 100 with at most three decimals (e.g. 12.5)"
    )]
    BadWeight { given: f64 },
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("there is no revision {n}; revisions go from 1 to {latest}")]
    NoSuchRevision { n: u64, latest: u64 },
    #[error("configuration rejected ({} error{}); nothing changed", .0.errors.len(), if .0.errors.len() == 1 { "" } else { "s" })]
    Invalid(ConfigErrors),
    #[error("cannot write the configuration file {path}: {source}; nothing changed")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    BadEvent(String),
    #[error(
        "`{field}` is {len} bytes long; the limit is {max} bytes: shorten it (link to details instead)"
    )]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error(
        "`{service}` is {} release, not an experiment",
        graylane_rollout::with_article(strategy)
    )]
    NotAnExperiment {
        service: String,
        strategy: &'static str,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "the stored state of release `{service}` cannot be read ({detail}); refusing to start rather than lose it — move the data dir away to start afresh"
    )]
    CorruptState { service: String, detail: String },
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "(none)".to_string()
    } else {
        names.join(", ")
    }
}
