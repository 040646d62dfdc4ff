//! Everything the controller can refuse, each saying what was wrong and what would work.

use graylane_config::ConfigErrors;
use graylane_rollout::CommandError;
use graylane_store::StoreError;

/// Why the controller refused a command, a configuration change or a question, or could not
/// carry it out. The message names what was wrong and, where there is a choice, what would work.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No release is configured for the service asked about.
    #[error(
        "unknown service `{service}`; services with a release: {}",
        list(services)
    )]
    UnknownService {
        /// The service asked about.
        service: String,
        /// The services that have a release, by name.
        services: Vec<String>,
    },
    /// An experiment was promoted with a winner that is none of its variants.
    #[error(
        "unknown variant `{variant}`; the experiment's variants: {}",
        list(variants)
    )]
    UnknownVariant {
        /// The variant asked for.
        variant: String,
        /// The experiment's variants, in configuration order.
        variants: Vec<String>,
    },
    /// A weight outside 0–100 percent, or with more than three decimals.
    #[error(
        "weight {given} must be a percentage from 0 to 100 with at most three decimals (e.g. 12.5)"
    )]
    BadWeight {
        /// The weight given, in percent.
        given: f64,
    },
    /// The command makes no sense in the release's current state.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// A revision number that was never recorded.
    #[error("there is no revision {n}; revisions go from 1 to {latest}")]
    NoSuchRevision {
        /// The number asked for.
        n: u64,
        /// The newest revision's number.
        latest: u64,
    },
    /// The configuration did not validate; nothing was changed.
    #[error("configuration rejected ({} error{}); nothing changed", .0.errors.len(), if .0.errors.len() == 1 { "" } else { "s" })]
    Invalid(ConfigErrors),
    /// A configuration changed through the API could not be written to the file.
    #[error("cannot write the configuration file {path}: {source}; nothing changed")]
    Write {
        /// The configuration file.
        path: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The configuration file could not be read for a reload.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The configuration file.
        path: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A business event that cannot be recorded: a non-finite value, a service without a
    /// release, or too many distinct event names.
    #[error("{0}")]
    BadEvent(String),
    /// A reason or message longer than [`crate::MAX_REASON_BYTES`].
    #[error(
        "`{field}` is {len} bytes long; the limit is {max} bytes: shorten it (link to details instead)"
    )]
    TooLong {
        /// The field, as the API names it (`reason`, `message`).
        field: &'static str,
        /// Its length, in bytes.
        len: usize,
        /// The limit, in bytes.
        max: usize,
    },
    /// Experiment results were asked for a release of another strategy.
    #[error(
        "`{service}` is {} release, not an experiment",
        graylane_rollout::with_article(strategy)
    )]
    NotAnExperiment {
        /// The service asked about.
        service: String,
        /// Its release's strategy (`canary`, `blue_green`).
        strategy: &'static str,
    },
    /// The store failed to read or persist something.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A release's stored state cannot be decoded, so it cannot be resumed.
    #[error(
        "the stored state of release `{service}` cannot be read ({detail}); refusing to start rather than lose it — move the data dir away to start afresh"
    )]
    CorruptState {
        /// The release's service.
        service: String,
        /// Why the state does not decode.
        detail: String,
    },
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "(none)".to_string()
    } else {
        names.join(", ")
    }
}
