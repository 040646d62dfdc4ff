//! `graylane validate FILE`

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use graylane_config::Config;

#[derive(Args)]
pub struct ValidateArgs {
    /// The configuration file to check.
    pub file: PathBuf,
}

pub fn run(args: ValidateArgs) -> anyhow::Result<ExitCode> {
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
pub fn summary(config: &Config) -> String {
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    let releases: Vec<String> = config
        .services
        .iter()
        .filter_map(|s| {
            let r = s.release.as_ref()?;
            Some(format!(
                "{}: {} → {} at {}",
                s.name,
                s.versions[r.baseline].name,
                s.versions[r.candidate].name,
                r.initial_weight()
            ))
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
