//! The `graylane` binary: a thin command-line layer over the library crates.
//!
//! * `serve` — the gateway (data plane + admin listener + hot reload), see [`commands::serve`];
//! * `validate` — check a configuration file and report every error;
//! * `eval` — show which version a request would get, and why;
//! * `demo` — built-in upstreams and a sample release, for a first look;
//! * `register` — keep an instance of a service in the etcd service registry, see
//!   [`commands::register`];
//! * `status`, `promote`, `pause`, `resume`, `abort`, `retry`, `rollback`, `set-weight`,
//!   `history`, `diff`, `revert`, `apply`, `audit` — clients of a running gateway's admin API,
//!   see [`commands::client`];
//! * `fleet import` — copy a single node's store into etcd, see [`commands::import`].

mod admin;
mod commands;
mod logging;
mod runtime;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use commands::client::{audit, releases, revisions, segments};

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
    /// Start demo upstreams and a gateway, and show a canary rolled back, retried and promoted.
    Demo(commands::demo::DemoArgs),
    /// Show the releases (or one in detail) of a running gateway.
    Status(releases::StatusArgs),
    /// Move a release to its next step, or straight to 100% with --full.
    Promote(releases::PromoteArgs),
    /// Hold a release at its current step.
    Pause(releases::CommandArgs),
    /// Let a paused release go on.
    Resume(releases::CommandArgs),
    /// Send all traffic to the stable version at once.
    Abort(releases::CommandArgs),
    /// Start an aborted or rolled-back release again from its first step.
    Retry(releases::CommandArgs),
    /// Take a completed release back to the previous stable version.
    Rollback(releases::CommandArgs),
    /// Set the candidate's weight by hand until the next step.
    SetWeight(releases::SetWeightArgs),
    /// List the configuration's revisions, the current one marked `*`.
    History(revisions::HistoryArgs),
    /// Show what changed between two revisions.
    Diff(revisions::DiffArgs),
    /// Bring back an earlier revision's configuration.
    Revert(revisions::RevertArgs),
    /// Send a configuration file to the gateway: validated, written, recorded and applied.
    Apply(revisions::ApplyArgs),
    /// Show the audit log: release transitions and configuration changes, newest first.
    Audit(audit::AuditArgs),
    /// Add or remove members of a Redis segment (gray users).
    Segment(segments::SegmentArgs),
    /// Register an instance of a service in the etcd service registry until SIGTERM or Ctrl-C.
    Register(commands::register::RegisterArgs),
    /// Fleet mode's tools: `fleet import` moves a single node's store into etcd.
    #[command(subcommand)]
    Fleet(commands::import::FleetCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => commands::serve::run(args),
        Command::Validate(args) => commands::validate::run(args),
        Command::Eval(args) => commands::eval::run(args),
        Command::Demo(args) => commands::demo::run(args),
        Command::Status(args) => releases::status(args),
        Command::Promote(args) => releases::promote(args),
        Command::Pause(args) => releases::command(releases::Verb::Pause, args),
        Command::Resume(args) => releases::command(releases::Verb::Resume, args),
        Command::Abort(args) => releases::command(releases::Verb::Abort, args),
        Command::Retry(args) => releases::command(releases::Verb::Retry, args),
        Command::Rollback(args) => releases::command(releases::Verb::Rollback, args),
        Command::SetWeight(args) => releases::set_weight(args),
        Command::History(args) => revisions::history(args),
        Command::Diff(args) => revisions::diff(args),
        Command::Revert(args) => revisions::revert(args),
        Command::Apply(args) => revisions::apply(args),
        Command::Audit(args) => audit::audit(args),
        Command::Segment(args) => segments::edit(args),
        Command::Register(args) => commands::register::run(args),
        Command::Fleet(command) => commands::import::run(command),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("graylane: {e:#}");
            ExitCode::FAILURE
        }
    }
}
