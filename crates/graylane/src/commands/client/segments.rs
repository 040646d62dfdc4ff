//! `graylane segment NAME --add M --remove M`: edits the members of a Redis segment (the gray
//! users) through the admin API.

use std::process::ExitCode;

use clap::Args;
use graylane_api::{SegmentEdit, SegmentEdited};

use super::{AdminArgs, Client, segment};

#[derive(Args)]
pub(crate) struct SegmentArgs {
    /// The segment (one with `source: redis`).
    pub name: String,
    /// A member to add (repeat for more).
    #[arg(long, value_name = "MEMBER")]
    pub add: Vec<String>,
    /// A member to remove (repeat for more).
    #[arg(long, value_name = "MEMBER")]
    pub remove: Vec<String>,
    #[command(flatten)]
    pub admin: AdminArgs,
}

pub(crate) fn edit(args: SegmentArgs) -> anyhow::Result<ExitCode> {
    if args.add.is_empty() && args.remove.is_empty() {
        anyhow::bail!("nothing to do: give --add MEMBER and/or --remove MEMBER");
    }
    let client = Client::new(&args.admin);
    let body = SegmentEdit {
        add: args.add,
        remove: args.remove,
    };
    let answer = client.post(
        &format!("/api/v1/segments/{}/members", segment(&args.name)),
        &[],
        Some(&serde_json::to_value(body)?),
    )?;
    client.show(answer, |e: SegmentEdited| outcome(&e))
}

fn outcome(e: &SegmentEdited) -> String {
    format!("{}: {} added, {} removed\n", e.segment, e.added, e.removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_outcome_says_what_changed() {
        let e: SegmentEdited =
            serde_json::from_value(json!({"segment": "beta", "added": 2, "removed": 0})).unwrap();
        assert_eq!(outcome(&e), "beta: 2 added, 0 removed\n");
    }
}
