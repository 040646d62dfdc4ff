//! How a release splits its traffic right now: where its force rules send a request, and which
//! share of the 100,000 buckets each version gets.
//!
//! The configuration gives the split a release starts with ([`Routing::initial`]); the rollout
//! controller replaces it as the release moves (a canary's next step, a blue-green switch, an
//! abort). Shares are laid out in order over the buckets, so a canary's candidate always owns
//! the lowest buckets: growing its weight only ever moves users *towards* it.

use graylane_config::{Release, Strategy, Weight};

/// The traffic split of one release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routing {
    /// The version force rules send a request to; `None` turns them off (an aborted release).
    pub force_to: Option<usize>,
    /// Versions and their shares, in bucket order; the weights add up to 100%.
    pub shares: Vec<Share>,
    /// A mirror step: a request the baseline serves by its bucket is also copied to the
    /// candidate when its bucket is below this share (so the same users are copied all along
    /// the step); zero copies nothing.
    pub mirror: Weight,
}

/// One version's share of the bucketed traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    /// Index into the service's `versions`.
    pub version: usize,
    /// The version's share of the bucketed traffic.
    pub weight: Weight,
}

impl Routing {
    /// The split a release starts with: a canary's first step, a blue-green release's active
    /// version (test traffic forced to the preview), an experiment's variant weights.
    pub fn initial(release: &Release) -> Routing {
        match &release.strategy {
            Strategy::Canary => Routing {
                mirror: release.initial_mirror().unwrap_or(Weight::ZERO),
                ..Routing::canary(release, release.initial_weight())
            },
            Strategy::BlueGreen { .. } => Routing {
                force_to: Some(release.candidate),
                shares: vec![Share {
                    version: release.baseline,
                    weight: Weight::FULL,
                }],
                mirror: Weight::ZERO,
            },
            Strategy::Experiment { variants } => Routing {
                force_to: None,
                shares: variants
                    .iter()
                    .map(|v| Share {
                        version: v.version,
                        weight: v.weight,
                    })
                    .collect(),
                mirror: Weight::ZERO,
            },
        }
    }

    /// `weight` to the candidate (the lowest buckets), the rest to the baseline; force rules
    /// on; nothing mirrored.
    pub fn canary(release: &Release, weight: Weight) -> Routing {
        let rest =
            Weight::from_milli_percent(Weight::FULL.milli_percent() - weight.milli_percent());
        Routing {
            force_to: Some(release.candidate),
            shares: vec![
                Share {
                    version: release.candidate,
                    weight,
                },
                Share {
                    version: release.baseline,
                    weight: rest,
                },
            ],
            mirror: Weight::ZERO,
        }
    }

    /// Everything to `version`, force rules off.
    pub fn all_to(version: usize) -> Routing {
        Routing {
            force_to: None,
            shares: vec![Share {
                version,
                weight: Weight::FULL,
            }],
            mirror: Weight::ZERO,
        }
    }

    /// The share of `version` (zero when it has none).
    pub fn weight_of(&self, version: usize) -> Weight {
        let milli = self
            .shares
            .iter()
            .filter(|s| s.version == version)
            .map(|s| s.weight.milli_percent())
            .sum();
        Weight::from_milli_percent(milli)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(yaml_release: &str) -> Release {
        let yaml = format!(
            "listeners: [{{ bind: 127.0.0.1:8080 }}]
services:
  - name: web
    versions:
      blue: {{ endpoints: [127.0.0.1:9001] }}
      green: {{ endpoints: [127.0.0.1:9002] }}
      red: {{ endpoints: [127.0.0.1:9003] }}
    release: {yaml_release}
"
        );
        let config = graylane_config::load_str(&yaml, "t.yaml", std::path::Path::new("."))
            .unwrap_or_else(|e| panic!("{e}"));
        config.services[0].release.clone().expect("a release")
    }

    #[test]
    fn canary_puts_the_candidate_first_and_the_rest_on_the_baseline() {
        let r = release(
            "{ strategy: canary, baseline: blue, candidate: green, steps: [{ weight: 12.5 }] }",
        );
        let routing = Routing::initial(&r);
        assert_eq!(routing.force_to, Some(1));
        assert_eq!(routing.shares[0].version, 1);
        assert_eq!(routing.weight_of(1).milli_percent(), 12_500);
        assert_eq!(routing.weight_of(0).milli_percent(), 87_500);
        assert_eq!(routing.weight_of(2), Weight::ZERO);
    }

    #[test]
    fn blue_green_starts_on_active_with_test_traffic_forced_to_preview() {
        let r = release("{ strategy: blue_green, active: blue, preview: green }");
        let routing = Routing::initial(&r);
        assert_eq!(routing.force_to, Some(1));
        assert_eq!(routing.weight_of(0), Weight::FULL);
    }

    #[test]
    fn experiment_shares_follow_the_variants() {
        let r = release(
            "{ strategy: experiment, variants: [{ name: a, version: blue, weight: 50 }, { name: b, version: green, weight: 30 }, { name: c, version: red, weight: 20 }] }",
        );
        let routing = Routing::initial(&r);
        assert_eq!(routing.force_to, None);
        let weights: Vec<u32> = routing
            .shares
            .iter()
            .map(|s| s.weight.milli_percent())
            .collect();
        assert_eq!(weights, [50_000, 30_000, 20_000]);
    }

    #[test]
    fn a_canary_starting_with_a_mirror_step_keeps_users_on_the_baseline_and_copies_its_share() {
        let r = release(
            "{ strategy: canary, baseline: blue, candidate: green, steps: [{ mirror: 20 }, { weight: 100 }] }",
        );
        let routing = Routing::initial(&r);
        assert_eq!(routing.weight_of(1), Weight::ZERO);
        assert_eq!(routing.weight_of(0), Weight::FULL);
        assert_eq!(routing.mirror.milli_percent(), 20_000);
        assert_eq!(
            routing.force_to,
            Some(1),
            "force rules still reach the candidate"
        );
    }
}
