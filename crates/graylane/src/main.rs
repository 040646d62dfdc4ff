//! The `graylane` binary: a thin command-line layer over the library crates.
//!
//! * `serve` — the gateway (data plane + admin listener + hot reload), see [`commands::serve`];
//! * `validate` — check a configuration file and report every error;
//! * `eval` — show which version a request would get, and why;
//! * `demo` — built-in upstreams and a sample release, for a first look.

mod admin;
mod commands;
mod logging;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// graylane: progressive delivery gateway — canary, blue-green and A/B routing with live
/// analysis, rate limits and circuit breakers.
#[derive(Parser)]
#[command(name = "graylane", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway on a configuration file (reloads on change and on SIGHUP).
    Serve(commands::serve::ServeArgs),
    /// Check a configuration file: exit 0 with a summary, or 1 with every error.
    Validate(commands::validate::ValidateArgs),
    /// Show the service and version a request would be routed to, and why.
    Eval(commands::eval::EvalArgs),
    /// Start two demo upstreams and a gateway with a sample canary release.
    Demo(commands::demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => commands::serve::run(args),
        Command::Validate(args) => commands::validate::run(args),
        Command::Eval(args) => commands::eval::run(args),
        Command::Demo(args) => commands::demo::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("graylane: {e:#}");
            ExitCode::FAILURE
        }
    }
}
