//! One module per subcommand.

pub(crate) mod client;
pub(crate) mod demo;
pub(crate) mod eval;
pub(crate) mod fleet;
pub(crate) mod import;
pub(crate) mod register;
pub(crate) mod serve;
pub(crate) mod takeover;
pub(crate) mod validate;

/// Loads a configuration file, or prints every error in it (`error: file:line:col: key: why`)
/// and returns `None`.
pub(crate) fn load_or_report(path: &std::path::Path) -> Option<graylane_config::Config> {
    match graylane_config::load_file(path) {
        Ok(config) => Some(config),
        Err(errors) => {
            for e in &errors.errors {
                eprintln!("error: {e}");
            }
            None
        }
    }
}
