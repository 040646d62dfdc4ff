//! The fleet part of `graylane status`: the leader and one line per member, from
//! `GET /api/v1/cluster`, with the members that lag behind the newest revision or went silent
//! flagged, so an operator sees at once which node serves an old configuration.

use graylane_api::Cluster;

use super::table::{or_dash, render, to_second};

/// The fleet as text: a summary line, a warning when this node cannot reach etcd, and the
/// members' table with a NOTE column that says who leads, which is this node, and who lags or
/// is stale.
pub(super) fn render_fleet(c: &Cluster) -> String {
    let newest = c
        .latest_revision
        .map_or_else(|| "-".to_string(), |n| n.to_string());
    let leader = c
        .leader
        .as_deref()
        .unwrap_or("none (an election is under way)");
    let mut out = format!(
        "fleet: leader {leader} · newest revision {newest} · {} member{}\n",
        c.members.len(),
        if c.members.len() == 1 { "" } else { "s" }
    );
    if !c.store_reachable {
        out.push_str(&format!(
            "this node ({}) cannot reach etcd: it serves its last configuration and state, and \
             what it shows of the fleet may be out of date\n",
            or_dash(c.node.as_deref())
        ));
    }
    let lagging = c.members.iter().filter(|m| m.lagging).count();
    let stale = c.members.iter().filter(|m| m.stale).count();
    if lagging > 0 {
        out.push_str(&format!(
            "{lagging} member{} behind revision {newest}\n",
            if lagging == 1 { " is" } else { "s are" }
        ));
    }
    if stale > 0 {
        out.push_str(&format!(
            "{stale} member{} not been heard from recently\n",
            if stale == 1 { " has" } else { "s have" }
        ));
    }
    let rows: Vec<Vec<String>> = c
        .members
        .iter()
        .map(|m| {
            let mut notes = Vec::new();
            if c.leader.as_deref() == Some(m.name.as_str()) {
                notes.push("leader".to_string());
            }
            if c.node.as_deref() == Some(m.name.as_str()) {
                notes.push("this node".to_string());
            }
            if m.lagging {
                notes.push(format!("LAGGING (revision {newest} is newest)"));
            }
            if m.stale {
                notes.push("STALE (not heard from)".to_string());
            }
            vec![
                m.name.clone(),
                or_dash(m.admin.as_deref()),
                m.config_revision.to_string(),
                if m.ready { "yes" } else { "no" }.to_string(),
                or_dash(Some(&to_second(&m.last_seen))),
                notes.join(" · "),
            ]
        })
        .collect();
    out.push_str(&render(
        &["NODE", "ADMIN", "REVISION", "READY", "LAST SEEN", "NOTE"],
        &rows,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use graylane_api::{ClusterMember, ClusterMode};

    fn member(name: &str, revision: u64, lagging: bool, stale: bool) -> ClusterMember {
        ClusterMember {
            name: name.to_string(),
            admin: Some(format!("127.0.0.1:99{revision}{}", name.len())),
            config_revision: revision,
            ready: !stale,
            last_seen: "2026-11-22T10:00:00.123Z".to_string(),
            lagging,
            stale,
        }
    }

    #[test]
    fn the_leader_this_node_and_a_lagging_stale_member_are_named() {
        let c = Cluster {
            mode: ClusterMode::Fleet,
            node: Some("a".into()),
            leader: Some("b".into()),
            latest_revision: Some(3),
            store_reachable: true,
            members: vec![
                member("a", 3, false, false),
                member("b", 3, false, false),
                member("c", 2, true, true),
            ],
        };
        assert_eq!(
            render_fleet(&c),
            "fleet: leader b · newest revision 3 · 3 members\n\
             1 member is behind revision 3\n\
             1 member has not been heard from recently\n\
             NODE  ADMIN           REVISION  READY  LAST SEEN             NOTE\n\
             a     127.0.0.1:9931  3         yes    2026-11-22T10:00:00Z  this node\n\
             b     127.0.0.1:9931  3         yes    2026-11-22T10:00:00Z  leader\n\
             c     127.0.0.1:9921  2         no     2026-11-22T10:00:00Z  LAGGING (revision 3 is newest) · STALE (not heard from)\n"
        );
    }

    #[test]
    fn a_node_cut_off_from_etcd_says_so_and_a_missing_leader_is_explained() {
        let c = Cluster {
            mode: ClusterMode::Fleet,
            node: Some("c".into()),
            leader: None,
            latest_revision: Some(1),
            store_reachable: false,
            members: vec![member("c", 1, false, true)],
        };
        let text = render_fleet(&c);
        assert!(
            text.starts_with(
                "fleet: leader none (an election is under way) · newest revision 1 · 1 member\n\
                 this node (c) cannot reach etcd:"
            ),
            "{text}"
        );
    }
}
