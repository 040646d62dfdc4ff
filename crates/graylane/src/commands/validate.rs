//! `graylane validate FILE`

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use graylane_config::{Config, Strategy};

#[derive(Args)]
pub(crate) struct ValidateArgs {
    /// The configuration file to check.
    pub file: PathBuf,
}

pub(crate) fn run(args: ValidateArgs) -> anyhow::Result<ExitCode> {
    match graylane_config::load_file(&args.file) {
        Ok(config) => {
            println!("{}: ok: {}", args.file.display(), summary(&config));
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            for e in &errors.errors {
                eprintln!("error: {e}");
            }
            let n = errors.errors.len();
            eprintln!(
                "{}: {n} error{}",
                args.file.display(),
                if n == 1 { "" } else { "s" }
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

/// One line: listeners, services (with their releases), segments.
pub(crate) fn summary(config: &Config) -> String {
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    let releases: Vec<String> = config
        .services
        .iter()
        .filter_map(|s| {
            let r = s.release.as_ref()?;
            let version = |i: usize| s.versions[i].name.as_str();
            Some(match &r.strategy {
                Strategy::Canary => format!(
                    "{}: {} → {} at {}",
                    s.name,
                    version(r.baseline),
                    version(r.candidate),
                    r.initial_weight()
                ),
                Strategy::BlueGreen { .. } => format!(
                    "{}: blue-green {} → {}",
                    s.name,
                    version(r.baseline),
                    version(r.candidate)
                ),
                // An experiment splits by its variants' weights; it has no steps.
                Strategy::Experiment { variants } => format!(
                    "{}: experiment {}",
                    s.name,
                    variants
                        .iter()
                        .map(|v| format!("{} ({}) {}", v.name, version(v.version), v.weight))
                        .collect::<Vec<_>>()
                        .join(" · ")
                ),
            })
        })
        .collect();
    let mut line = format!(
        "{}, {}, {}",
        plural(config.listeners.len(), "listener"),
        plural(config.services.len(), "service"),
        plural(config.segments.len(), "segment"),
    );
    if !releases.is_empty() {
        line.push_str(&format!("; releases: {}", releases.join(", ")));
    }
    line
}
