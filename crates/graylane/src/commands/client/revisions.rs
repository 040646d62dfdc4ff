//! `graylane history`, `diff`, `revert` and `apply`: the configuration's revisions.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use graylane_api::{ApplyOutcome, DiffView, RevisionList};

use super::table::{render, to_second};
use super::{AdminArgs, Client};

#[derive(Args)]
pub(crate) struct HistoryArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Args)]
pub(crate) struct DiffArgs {
    /// The older revision.
    pub from: u64,
    /// The newer revision.
    pub to: u64,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Args)]
pub(crate) struct RevertArgs {
    /// The revision whose configuration to bring back (as a new revision).
    pub revision: u64,
    /// Only check it and show the diff; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Args)]
pub(crate) struct ApplyArgs {
    /// The configuration file to send.
    pub file: PathBuf,
    /// Only validate it and show the diff; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Recorded with the revision.
    #[arg(long, short)]
    pub message: Option<String>,
    #[command(flatten)]
    pub admin: AdminArgs,
}

pub(crate) fn history(args: HistoryArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.admin);
    let answer = client.get("/api/v1/config/revisions", &[])?;
    client.show(answer, |list: RevisionList| history_table(&list))
}

pub(crate) fn diff(args: DiffArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.admin);
    let query = [("from", args.from.to_string()), ("to", args.to.to_string())];
    let answer = client.get("/api/v1/config/diff", &query)?;
    client.show(answer, |d: DiffView| diff_text(&d.diff))
}

pub(crate) fn revert(args: RevertArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.admin);
    let answer = client.post(
        &format!("/api/v1/config/revert/{}", args.revision),
        &dry_run(args.dry_run),
        None,
    )?;
    let what = format!("revision {}", args.revision);
    client.show(answer, |c: ApplyOutcome| change_text(&what, &c))
}

pub(crate) fn apply(args: ApplyArgs) -> anyhow::Result<ExitCode> {
    let yaml = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let client = Client::new(&args.admin);
    let mut query = dry_run(args.dry_run);
    if let Some(message) = args.message {
        query.push(("message", message));
    }
    let answer = client.put_yaml("/api/v1/config", &query, &yaml)?;
    let what = args.file.display().to_string();
    client.show(answer, |c: ApplyOutcome| change_text(&what, &c))
}

fn dry_run(on: bool) -> Vec<(&'static str, String)> {
    if on {
        vec![("dry_run", "true".to_string())]
    } else {
        Vec::new()
    }
}

fn history_table(list: &RevisionList) -> String {
    if list.revisions.is_empty() {
        return "no revisions\n".to_string();
    }
    let rows: Vec<Vec<String>> = list
        .revisions
        .iter()
        .map(|r| {
            let current = if list.current == r.n { "*" } else { "" };
            vec![
                current.to_string(),
                r.n.to_string(),
                to_second(&r.at),
                r.author.clone(),
                r.source.to_string(),
                r.message.clone(),
            ]
        })
        .collect();
    render(&["", "N", "AT", "AUTHOR", "SOURCE", "MESSAGE"], &rows)
}

/// A diff as the server wrote it, ending with a newline; an empty one says so.
fn diff_text(diff: &str) -> String {
    if diff.is_empty() {
        "no changes\n".to_string()
    } else if diff.ends_with('\n') {
        diff.to_string()
    } else {
        format!("{diff}\n")
    }
}

/// The diff, then what became of `what` (a revision, a file).
fn change_text(what: &str, change: &ApplyOutcome) -> String {
    let mut out = diff_text(&change.diff);
    match (&change.revision, change.applied) {
        (Some(revision), true) => out.push_str(&format!("applied as revision {}\n", revision.n)),
        (None, true) => out.push_str("applied\n"),
        (_, false) => out.push_str(&format!("dry run: {what} is valid; nothing applied\n")),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn history_marks_the_current_revision_and_trims_times_to_the_second() {
        let list: RevisionList = serde_json::from_value(json!({
            "env": "default",
            "current": 3,
            "revisions": [
                { "n": 3, "at": "2026-11-22T10:00:00.000Z", "at_ms": 1795341600000_i64,
                  "author": "ci", "message": "raise the canary", "source": "api",
                  "reverted_from": null },
                { "n": 2, "at": "2026-11-21T09:30:12.345Z", "at_ms": 1795253412345_i64,
                  "author": "file", "message": "", "source": "file", "reverted_from": null },
                { "n": 1, "at": "2026-11-20T08:00:00.000Z", "at_ms": 1795161600000_i64,
                  "author": "alice", "message": "revert to revision 0", "source": "revert",
                  "reverted_from": 0 }
            ]
        }))
        .unwrap();
        assert_eq!(
            history_table(&list),
            "   N  AT                    AUTHOR  SOURCE  MESSAGE\n\
             *  3  2026-11-22T10:00:00Z  ci      api     raise the canary\n   \
             2  2026-11-21T09:30:12Z  file    file\n   \
             1  2026-11-20T08:00:00Z  alice   revert  revert to revision 0\n"
        );
    }

    #[test]
    fn a_change_shows_its_diff_then_its_fate() {
        let diff = "--- revision 3\n+++ revision 4\n@@ -1 +1 @@\n-a: 1\n+a: 2\n";
        let applied: ApplyOutcome = serde_json::from_value(json!({
            "applied": true,
            "valid": true,
            "revision": { "n": 4, "at": "2026-11-22T10:00:00.000Z", "at_ms": 1795341600000_i64,
                          "author": "ci", "message": "m", "source": "api", "reverted_from": null },
            "diff": diff,
        }))
        .unwrap();
        assert_eq!(
            change_text("graylane.yaml", &applied),
            format!("{diff}applied as revision 4\n")
        );

        let dry: ApplyOutcome = serde_json::from_value(
            json!({ "applied": false, "valid": true, "revision": null, "diff": "" }),
        )
        .unwrap();
        assert_eq!(
            change_text("revision 2", &dry),
            "no changes\ndry run: revision 2 is valid; nothing applied\n"
        );
    }

    #[test]
    fn a_diff_is_printed_as_is_with_a_final_newline() {
        assert_eq!(diff_text("-a\n+b"), "-a\n+b\n");
        assert_eq!(diff_text("-a\n+b\n"), "-a\n+b\n");
    }
}
