//! `graylane audit`: who did what to which release or configuration, newest first.

use std::process::ExitCode;

use clap::Args;
use graylane_api::{AuditList, AuditView};

use super::table::{or_dash, render, to_second};
use super::{AdminArgs, Client};

#[derive(Args)]
pub(crate) struct AuditArgs {
    /// At most this many matching entries (the server's default when absent).
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    /// Only entries about this service (`config` for configuration changes).
    #[arg(long, value_name = "S")]
    pub service: Option<String>,
    /// Only entries by this actor (a token's name, `controller` or `analysis`).
    #[arg(long, value_name = "A")]
    pub actor: Option<String>,
    /// Only entries of this action, e.g. `promote` or `config.apply`.
    #[arg(long, value_name = "K")]
    pub action: Option<String>,
    #[command(flatten)]
    pub admin: AdminArgs,
}

pub(crate) fn audit(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.admin);
    // The server filters, so that entries older than the newest `limit` are found too.
    let query: Vec<(&str, String)> = [
        ("limit", args.limit.map(|n| n.to_string())),
        ("service", args.service),
        ("actor", args.actor),
        ("action", args.action),
    ]
    .into_iter()
    .filter_map(|(name, value)| Some((name, value?)))
    .collect();
    let answer = client.get("/api/v1/audit", &query)?;
    client.show(answer, |log: AuditList| audit_table(&log.entries))
}

fn audit_table(entries: &[AuditView]) -> String {
    if entries.is_empty() {
        return "no audit entries\n".to_string();
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.seq.to_string(),
                to_second(&e.at),
                e.actor.clone(),
                e.action.clone(),
                or_dash(Some(&e.target)),
                e.reason.clone(),
            ]
        })
        .collect();
    render(&["SEQ", "AT", "ACTOR", "ACTION", "TARGET", "REASON"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn entries_are_one_row_each_newest_first_as_sent() {
        let log: AuditList = serde_json::from_value(json!({
            "env": "default",
            "entries": [
                { "seq": 12, "at": "2026-11-22T10:05:00.500Z", "at_ms": 1795341900500_i64,
                  "actor": "alice", "action": "promote", "target": "payment",
                  "reason": "looks good", "detail": { "step": 2 } },
                { "seq": 11, "at": "2026-11-22T10:00:00.000Z", "at_ms": 1795341600000_i64,
                  "actor": "ci", "action": "config.apply", "target": "config", "reason": "",
                  "detail": {} }
            ]
        }))
        .unwrap();
        assert_eq!(
            audit_table(&log.entries),
            "SEQ  AT                    ACTOR  ACTION        TARGET   REASON\n\
             12   2026-11-22T10:05:00Z  alice  promote       payment  looks good\n\
             11   2026-11-22T10:00:00Z  ci     config.apply  config\n"
        );
        assert_eq!(audit_table(&[]), "no audit entries\n");
    }
}
