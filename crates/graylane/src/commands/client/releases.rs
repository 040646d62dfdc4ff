//! `graylane status [SERVICE]` (on a fleet node, with the fleet's members under the releases)
//! and the release commands (`promote`, `pause`, `resume`, `abort`, `retry`, `rollback`,
//! `set-weight`).

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use graylane_api::{
    AdaptiveView, CircuitState, Cluster, ClusterMode, CommandBody, ReleaseList, ReleaseState,
    ReleaseView, WeightBody,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::cluster::render_fleet;
use super::table::{or_dash, percent, render, to_second};
use super::{AdminArgs, Client, segment};

#[derive(Args)]
pub(crate) struct StatusArgs {
    /// One service's release in detail: also the commands allowed now and the last
    /// transitions.
    pub service: Option<String>,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Args)]
pub(crate) struct CommandArgs {
    /// The service whose release to act on.
    pub service: String,
    /// Why; recorded with the transition in the audit log and sent to webhooks.
    #[arg(long)]
    pub reason: Option<String>,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Args)]
pub(crate) struct PromoteArgs {
    #[command(flatten)]
    pub command: CommandArgs,
    /// Go straight to 100% instead of to the next step.
    #[arg(long)]
    pub full: bool,
    /// The winning variant of an experiment.
    #[arg(long, value_name = "VARIANT")]
    pub variant: Option<String>,
}

#[derive(Args)]
pub(crate) struct SetWeightArgs {
    /// The service whose release to act on.
    pub service: String,
    /// The candidate's weight in percent, until the next step (the server checks the range).
    #[arg(value_parser = finite, allow_negative_numbers = true)]
    pub weight: f64,
    /// Why; recorded with the transition in the audit log and sent to webhooks.
    #[arg(long)]
    pub reason: Option<String>,
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// A number, and a real one: JSON has no NaN or infinity, so they could not even be sent.
fn finite(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(n) if n.is_finite() => Ok(n),
        _ => Err(format!(
            "`{text}` is not a weight: give a percentage from 0 to 100 with at most three \
             decimals, e.g. 12.5"
        )),
    }
}

/// The release commands without extras in their body.
#[derive(Clone, Copy)]
pub(crate) enum Verb {
    Pause,
    Resume,
    Abort,
    Retry,
    Rollback,
}

impl Verb {
    fn path(self) -> &'static str {
        match self {
            Verb::Pause => "pause",
            Verb::Resume => "resume",
            Verb::Abort => "abort",
            Verb::Retry => "retry",
            Verb::Rollback => "rollback",
        }
    }
}

pub(crate) fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.admin);
    match &args.service {
        None => {
            let mut answer = client.get("/api/v1/releases", &[])?;
            // A fleet node adds the fleet under the releases (and `--json` gets it as
            // `cluster`); a single node has nothing to add.
            match client.get("/api/v1/cluster", &[]) {
                Ok(cluster) if cluster["mode"] == "fleet" => {
                    if let Some(object) = answer.as_object_mut() {
                        object.insert("cluster".into(), cluster);
                    }
                }
                Ok(_) => {}
                Err(e) => eprintln!("graylane: the fleet is not shown: {e:#}"),
            }
            client.show(answer, |status: Status| {
                let mut out = overview(&status.list.releases);
                if let Some(cluster) = status.cluster.filter(|c| c.mode == ClusterMode::Fleet) {
                    out.push('\n');
                    out.push_str(&render_fleet(&cluster));
                }
                out
            })
        }
        Some(service) => {
            let answer = client.get(&format!("/api/v1/releases/{}", segment(service)), &[])?;
            client.show(answer, |release: ReleaseView| detail(&release))
        }
    }
}

pub(crate) fn command(verb: Verb, args: CommandArgs) -> anyhow::Result<ExitCode> {
    let body = CommandBody {
        reason: args.reason.clone(),
        ..CommandBody::default()
    };
    send(&args.service, &args.admin, verb.path(), &body)
}

pub(crate) fn promote(args: PromoteArgs) -> anyhow::Result<ExitCode> {
    let body = CommandBody {
        reason: args.command.reason.clone(),
        full: args.full.then_some(true),
        variant: args.variant,
    };
    send(&args.command.service, &args.command.admin, "promote", &body)
}

pub(crate) fn set_weight(args: SetWeightArgs) -> anyhow::Result<ExitCode> {
    let body = WeightBody {
        weight: json!(args.weight),
        reason: args.reason.clone(),
    };
    send(&args.service, &args.admin, "weight", &body)
}

/// `POST /api/v1/releases/{service}/{path}` with `body`; the answer is the release as it is
/// now.
fn send(
    service: &str,
    admin: &AdminArgs,
    path: &str,
    body: &impl Serialize,
) -> anyhow::Result<ExitCode> {
    let client = Client::new(admin);
    let answer = client.post(
        &format!("/api/v1/releases/{}/{path}", segment(service)),
        &[],
        Some(&serde_json::to_value(body)?),
    )?;
    client.show(answer, |release: ReleaseView| {
        format!("{}\n", outcome(&release))
    })
}

/// `GET /api/v1/releases`, with the fleet `status` adds under the releases on a fleet node.
#[derive(Deserialize)]
struct Status {
    #[serde(flatten)]
    list: ReleaseList,
    #[serde(default)]
    cluster: Option<Cluster>,
}

/// How many transitions `status SERVICE` shows; `--json` has all the API keeps.
const TRANSITIONS_SHOWN: usize = 10;

const OVERVIEW: [&str; 7] = [
    "SERVICE", "STRATEGY", "STATE", "STEP", "WEIGHTS", "STABLE", "PAUSE",
];

fn overview(releases: &[ReleaseView]) -> String {
    if releases.is_empty() {
        return "no releases\n".to_string();
    }
    let rows: Vec<Vec<String>> = releases.iter().map(overview_row).collect();
    render(&OVERVIEW, &rows)
}

fn overview_row(r: &ReleaseView) -> Vec<String> {
    vec![
        r.service.clone(),
        r.strategy.to_string(),
        r.state.to_string(),
        step(r),
        weights(r),
        r.stable.clone(),
        pause(r),
    ]
}

fn detail(r: &ReleaseView) -> String {
    let mut out = render(&OVERVIEW, &[overview_row(r)]);
    if r.weight_overridden {
        out.push_str(if r.adaptive.is_some() {
            "the weight is set by hand until `resume` hands it back to the analysis\n"
        } else {
            "the weight is set by hand until the next step\n"
        });
    }
    if let Some(a) = &r.adaptive {
        out.push_str(&adaptive(a, &r.candidate));
    }
    if let Some(g) = &r.gate {
        out.push_str(&format!("{} ({})\n", g.summary, g.kind));
    }
    if !r.variants.is_empty() {
        let rows: Vec<Vec<String>> = r
            .variants
            .iter()
            .map(|v| {
                vec![
                    v.name.clone(),
                    v.version.clone(),
                    percent(v.weight),
                    v.exposures.to_string(),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&render(
            &["VARIANT", "VERSION", "WEIGHT", "EXPOSURES"],
            &rows,
        ));
    }
    if let Some(srm) = &r.srm {
        if srm.flagged {
            out.push_str(&format!(
                "SAMPLE RATIO MISMATCH (p = {:.2e}): {}\n",
                srm.p_value, srm.reason
            ));
        } else {
            out.push_str(&format!(
                "sample ratio: as configured (p = {:.3})\n",
                srm.p_value
            ));
        }
    }
    let open: Vec<String> = r
        .circuits
        .iter()
        .filter(|(_, state)| **state != CircuitState::Closed)
        .map(|(version, state)| format!("{version} {state}"))
        .collect();
    if !open.is_empty() {
        out.push_str(&format!("circuit breakers: {}\n", open.join(", ")));
    }
    if let Some(a) = &r.analysis {
        out.push('\n');
        out.push_str(&format!(
            "analysis at {}: {} — {}\n",
            to_second(&a.at),
            a.decision,
            a.summary
        ));
    }
    out.push('\n');
    if r.allowed.is_empty() {
        out.push_str("allowed now: nothing\n");
    } else {
        let allowed: Vec<&str> = r
            .allowed
            .iter()
            .map(|a| graylane_rollout::as_typed(a))
            .collect();
        out.push_str(&format!("allowed now: {}\n", allowed.join(", ")));
    }
    out.push('\n');
    let total = r.transitions.len();
    if total == 0 {
        out.push_str("no transitions yet\n");
        return out;
    }
    let shown = &r.transitions[total.saturating_sub(TRANSITIONS_SHOWN)..];
    if shown.len() < total {
        out.push_str(&format!(
            "last {} of {total} transitions (--json for all):\n",
            shown.len()
        ));
    } else {
        out.push_str("transitions:\n");
    }
    let rows: Vec<Vec<String>> = shown
        .iter()
        .map(|t| {
            vec![
                to_second(&t.at),
                t.actor.clone(),
                t.action.clone(),
                format!("{} → {}", t.from, t.to),
                percent(t.weight),
                or_dash(Some(&t.reason)),
            ]
        })
        .collect();
    out.push_str(&render(
        &["AT", "ACTOR", "ACTION", "FROM → TO", "WEIGHT", "REASON"],
        &rows,
    ));
    out
}

/// An adaptive canary's bounds, exposure budget and path of weights.
fn adaptive(a: &AdaptiveView, candidate: &str) -> String {
    let budget = match a.max_bad_requests {
        Some(max) => format!(
            "exposure budget: {} of {max} requests spent",
            a.budget_spent
        ),
        None => format!(
            "exposure: {} requests served while the candidate looked worse (no budget)",
            a.budget_spent
        ),
    };
    let path: Vec<String> = a.path.iter().map(|t| percent(t.weight)).collect();
    format!(
        "adaptive: {} to {}, ×{} on a clear interval (×{} when clear since the last change too), ×{} leaning worse, a change at most every {}s\n{budget}\npath of {candidate}: {}\n",
        percent(a.start),
        percent(a.max),
        a.grow,
        a.grow * a.grow,
        a.shrink,
        a.min_pause_s,
        path.join(" → ")
    )
}

/// One line after a command: where the release stands now.
fn outcome(r: &ReleaseView) -> String {
    match r.state {
        ReleaseState::Progressing | ReleaseState::Paused => {
            let at = if r.adaptive.is_some() {
                " at an adaptive weight".to_string()
            } else if r.steps > 0 {
                format!(" at step {}", step(r))
            } else {
                String::new()
            };
            let traffic = match r.weights.get(&r.candidate) {
                Some(weight) => share(r, &r.candidate, *weight),
                None => weights(r),
            };
            let by_hand = if r.weight_overridden {
                " (set by hand)"
            } else {
                ""
            };
            format!("{}: {}{at}, {traffic}{by_hand}", r.service, r.state)
        }
        _ => format!("{}: {}, all traffic to {}", r.service, r.state, r.stable),
    }
}

/// The step as people count (the API's is 0-based); a completed release stays on its last.
fn step(r: &ReleaseView) -> String {
    if r.adaptive.is_some() {
        return "adaptive".to_string();
    }
    if r.steps == 0 {
        return "-".to_string();
    }
    format!("{}/{}", (r.step + 1).min(r.steps), r.steps)
}

/// Every version's share, the baseline first and the candidate second as people read a
/// canary, then any others by name.
fn weights(r: &ReleaseView) -> String {
    let first = [r.baseline.as_str(), r.candidate.as_str()];
    let mut order: Vec<&str> = first
        .into_iter()
        .filter(|name| r.weights.contains_key(*name))
        .collect();
    order.dedup();
    order.extend(
        r.weights
            .keys()
            .map(String::as_str)
            .filter(|name| !first.contains(name)),
    );
    if order.is_empty() {
        return "-".to_string();
    }
    let parts: Vec<String> = order
        .iter()
        .map(|name| share(r, name, r.weights[*name]))
        .collect();
    parts.join(" · ")
}

/// One version's share; a mirror step's candidate with the share of requests copied to it.
fn share(r: &ReleaseView, name: &str, weight: f64) -> String {
    match r.mirror {
        Some(mirror) if name == r.candidate => {
            format!("{name} {} (mirror {})", percent(weight), percent(mirror))
        }
        _ => format!("{name} {}", percent(weight)),
    }
}

/// The current step's pause while the release runs: the time left of a timed one (frozen while
/// the release is paused), `manual`, or `-`. A finished release waits for nothing.
fn pause(r: &ReleaseView) -> String {
    if !r.state.is_running() {
        return "-".to_string();
    }
    if let Some(g) = &r.gate {
        return format!(
            "gate {}: {}",
            g.kind,
            g.answer.as_deref().unwrap_or("asking")
        );
    }
    match (r.pause_remaining_s, &r.pause) {
        (Some(seconds), _) => {
            let whole = Duration::from_secs(seconds.max(0.0) as u64);
            let left = format!("{} left", humantime::format_duration(whole));
            if r.state == ReleaseState::Paused {
                format!("{left} once resumed")
            } else {
                left
            }
        }
        (None, Some(pause)) => pause.clone(),
        (None, None) => "-".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// A release as the server writes it.
    fn payment() -> Value {
        json!({
            "service": "payment",
            "env": "default",
            "strategy": "canary",
            "state": "paused",
            "step": 1,
            "steps": 4,
            "plan": [{ "weight": 0.0, "pause": "manual" }, { "weight": 5.0, "pause": "5m" },
                     { "weight": 50.0, "pause": "manual" }, { "weight": 100.0, "pause": null }],
            "baseline": "stable",
            "candidate": "canary",
            "stable": "stable",
            "weights": { "stable": 95.0, "canary": 5.0 },
            "weight_overridden": false,
            "pause": "5m",
            "pause_remaining_s": 241.5,
            "previous_kept_until": null,
            "allowed": ["resume", "promote", "promote_full", "abort", "set_weight"],
            "variants": [],
            "transitions": [
                { "at": "2026-11-22T10:00:00.000Z", "at_ms": 1795341600000_i64, "actor": "timer",
                  "action": "tick", "reason": "", "from": "progressing", "to": "progressing",
                  "step": 1, "weight": 5.0 },
                { "at": "2026-11-22T10:01:30.250Z", "at_ms": 1795341690250_i64, "actor": "alice",
                  "action": "pause", "reason": "checking the error rate", "from": "progressing",
                  "to": "paused", "step": 1, "weight": 5.0 }
            ],
            "analysis": null, "srm": null, "circuits": {}
        })
    }

    fn release(value: Value) -> ReleaseView {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn the_overview_has_one_aligned_row_per_release() {
        let search = json!({
            "service": "search", "env": "default", "strategy": "blue_green",
            "state": "completed", "step": 0, "steps": 0, "plan": [], "baseline": "blue",
            "candidate": "green", "stable": "green", "weights": { "blue": 0.0, "green": 100.0 },
            "weight_overridden": false, "pause": null, "pause_remaining_s": null,
            "previous_kept_until": null, "allowed": ["rollback"], "variants": [],
            "transitions": [], "analysis": null, "srm": null, "circuits": {}
        });
        let list: ReleaseList =
            serde_json::from_value(json!({ "env": "default", "releases": [payment(), search] }))
                .unwrap();
        assert_eq!(
            overview(&list.releases),
            "SERVICE  STRATEGY    STATE      STEP  WEIGHTS                 STABLE  PAUSE\n\
             payment  canary      paused     2/4   stable 95% · canary 5%  stable  4m 1s left once resumed\n\
             search   blue_green  completed  -     blue 0% · green 100%    green   -\n"
        );
        assert_eq!(overview(&[]), "no releases\n");
    }

    #[test]
    fn the_pause_column_counts_down_only_while_the_release_runs() {
        let mut value = payment();
        value["state"] = json!("progressing");
        assert_eq!(pause(&release(value.clone())), "4m 1s left");
        value["pause_remaining_s"] = Value::Null;
        value["pause"] = json!("manual");
        assert_eq!(pause(&release(value.clone())), "manual");
        // An aborted release is not waiting for its step's pause any more.
        value["state"] = json!("aborted");
        assert_eq!(pause(&release(value)), "-");
    }

    #[test]
    fn status_says_which_gate_a_release_waits_on_and_what_it_answered() {
        let mut value = payment();
        value["state"] = json!("progressing");
        value["gate"] = json!({
            "kind": "confirm_promotion", "url": "http://gates.internal/confirm",
            "answer": "503", "answered_at": "2026-11-22T10:02:00Z",
            "summary": "waiting on gate http://gates.internal/confirm: 503"
        });
        let r = release(value);
        assert_eq!(pause(&r), "gate confirm_promotion: 503");
        assert!(
            detail(&r).contains(
                "waiting on gate http://gates.internal/confirm: 503 (confirm_promotion)\n"
            ),
            "{}",
            detail(&r)
        );
    }

    #[test]
    fn the_detail_shows_the_analysis_and_a_sample_ratio_mismatch() {
        let mut value = payment();
        value["analysis"] = json!({
            "decision": "fail", "at": "2026-11-22T10:02:00.000Z",
            "summary": "fail: error_rate: error rate 9.4% [2.2%, 16.7%] vs 0.0%"
        });
        value["srm"] = json!({
            "statistic": 31.0, "p_value": 2.6e-8, "flagged": true,
            "reason": "exposures 5200/4800 vs weights 50/50"
        });
        let text = detail(&release(value));
        assert!(
            text.contains(
                "analysis at 2026-11-22T10:02:00Z: fail — fail: error_rate: error rate 9.4%"
            ),
            "{text}"
        );
        assert!(
            text.contains("SAMPLE RATIO MISMATCH (p = 2.60e-8): exposures 5200/4800"),
            "{text}"
        );
    }

    #[test]
    fn a_mirror_step_shows_the_share_copied_to_the_candidate() {
        let mut value = payment();
        value["weights"] = json!({ "stable": 100.0, "canary": 0.0 });
        value["mirror"] = json!(20.0);
        let r = release(value);
        assert_eq!(weights(&r), "stable 100% · canary 0% (mirror 20%)");
        assert_eq!(
            outcome(&r),
            "payment: paused at step 2/4, canary 0% (mirror 20%)"
        );
    }

    #[test]
    fn an_adaptive_release_shows_its_bounds_budget_and_path() {
        let mut value = payment();
        let change = |weight: f64, action: &str| {
            json!({
                "at": "2026-11-22T10:00:00Z", "at_ms": 0, "actor": "analysis",
                "action": action, "reason": "", "from": "progressing",
                "to": "progressing", "step": 0, "weight": weight
            })
        };
        value["adaptive"] = json!({
            "start": 1.0, "max": 100.0, "grow": 2.0, "shrink": 0.5,
            "min_pause_s": 30.0, "max_pause_s": 600.0,
            "budget_spent": 120, "max_bad_requests": 500,
            "path": [change(1.0, "start"), change(2.0, "grow"), change(4.0, "grow"), change(2.0, "shrink")]
        });
        let r = release(value);
        assert_eq!(step(&r), "adaptive");
        assert_eq!(
            outcome(&r),
            "payment: paused at an adaptive weight, canary 5%"
        );
        let text = detail(&r);
        assert!(
            text.contains("exposure budget: 120 of 500 requests spent\n"),
            "{text}"
        );
        assert!(
            text.contains("path of canary: 1% → 2% → 4% → 2%\n"),
            "{text}"
        );
    }

    #[test]
    fn the_detail_names_the_breakers_that_are_not_closed() {
        let mut value = payment();
        value["circuits"] = json!({ "canary": "open", "stable": "closed" });
        let text = detail(&release(value));
        assert!(text.contains("circuit breakers: canary open\n"), "{text}");
        assert!(!text.contains("stable closed"), "{text}");
    }

    #[test]
    fn the_detail_adds_the_allowed_commands_and_the_transitions() {
        assert_eq!(
            detail(&release(payment())),
            "SERVICE  STRATEGY  STATE   STEP  WEIGHTS                 STABLE  PAUSE\n\
             payment  canary    paused  2/4   stable 95% · canary 5%  stable  4m 1s left once resumed\n\
             \n\
             allowed now: resume, promote, promote --full, abort, set-weight\n\
             \n\
             transitions:\n\
             AT                    ACTOR  ACTION  FROM → TO                  WEIGHT  REASON\n\
             2026-11-22T10:00:00Z  timer  tick    progressing → progressing  5%      -\n\
             2026-11-22T10:01:30Z  alice  pause   progressing → paused       5%      checking the error rate\n"
        );
    }

    #[test]
    fn the_detail_shows_the_last_transitions_and_an_experiments_variants() {
        let mut value = payment();
        let one = value["transitions"][0].clone();
        value["transitions"] = Value::Array(vec![one; 12]);
        value["strategy"] = json!("experiment");
        value["variants"] = json!([
            { "name": "a", "version": "stable", "weight": 50.0, "exposures": 1234, "units": 600 },
            { "name": "b", "version": "canary", "weight": 50.0, "exposures": 1301, "units": 640 }
        ]);
        let text = detail(&release(value));
        assert!(
            text.contains(
                "VARIANT  VERSION  WEIGHT  EXPOSURES\n\
                 a        stable   50%     1234\n\
                 b        canary   50%     1301\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("last 10 of 12 transitions (--json for all):\n"),
            "{text}"
        );
        assert_eq!(text.matches("timer  tick").count(), 10, "{text}");
    }

    #[test]
    fn a_commands_outcome_is_one_line() {
        let mut value = payment();
        value["state"] = json!("progressing");
        assert_eq!(
            outcome(&release(value.clone())),
            "payment: progressing at step 2/4, canary 5%"
        );

        value["weights"] = json!({ "stable": 87.655, "canary": 12.345 });
        value["weight_overridden"] = json!(true);
        assert_eq!(
            outcome(&release(value.clone())),
            "payment: progressing at step 2/4, canary 12.345% (set by hand)"
        );

        value["state"] = json!("aborted");
        assert_eq!(
            outcome(&release(value.clone())),
            "payment: aborted, all traffic to stable"
        );

        value["state"] = json!("completed");
        value["stable"] = json!("canary");
        assert_eq!(
            outcome(&release(value)),
            "payment: completed, all traffic to canary"
        );
    }

    #[test]
    fn a_manual_or_absent_pause_is_shown_as_such() {
        let mut value = payment();
        value["pause_remaining_s"] = Value::Null;
        value["pause"] = json!("manual");
        assert_eq!(pause(&release(value.clone())), "manual");
        value["pause"] = Value::Null;
        assert_eq!(pause(&release(value)), "-");
    }

    #[test]
    fn a_weight_must_be_a_finite_number() {
        assert_eq!(finite("12.5"), Ok(12.5));
        assert_eq!(finite("-3"), Ok(-3.0));
        assert_eq!(
            finite("abc"),
            Err("`abc` is not a weight: give a percentage from 0 to 100 with at most three decimals, e.g. 12.5".to_string())
        );
        assert!(finite("NaN").is_err());
        assert!(finite("inf").is_err());
    }
}
