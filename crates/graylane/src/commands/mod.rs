//! One module per subcommand.

pub mod client;
pub mod demo;
pub mod eval;
pub mod fleet;
pub mod import;
pub mod register;
pub mod serve;
pub mod takeover;
pub mod validate;

/// Loads a configuration file, or prints every error in it (`error: file:line:col: key: why`)
/// and returns `None`.
pub fn load_or_report(path: &std::path::Path) -> Option<graylane_config::Config> {
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
