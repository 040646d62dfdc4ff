//! Releases: their strategy (canary, blue-green, experiment), variants, sticky cookies and steps.

use super::Validator;
use super::scalars::is_token;
use crate::error::did_you_mean;
use crate::model::*;
use crate::raw::*;

impl Validator<'_> {
    pub(super) fn release(
        &mut self,
        path: &str,
        raw: RawRelease,
        versions: &[&str],
        segments: &[Segment],
    ) -> Option<Release> {
        let errors_before = self.problems.len();
        let roles = self.strategy(path, &raw, versions);
        let force = raw
            .force
            .iter()
            .enumerate()
            .filter_map(|(i, r)| self.rule(&format!("{path}.force[{i}]"), r, segments, 0))
            .collect();
        let (bucket_by, bucket_by_trusted_only) = match &raw.bucket_by {
            Some(key) => self.trusted_key(&format!("{path}.bucket_by"), key),
            None => (Some(KeySpec::ClientIp), false),
        };
        if let Some(salt) = &raw.salt
            && salt.chars().any(char::is_control)
        {
            self.fail(
                format!("{path}.salt"),
                "the salt may not contain control characters",
            );
        }
        let sticky = raw.sticky.as_ref().and_then(|s| {
            if !is_token(&s.cookie) {
                self.fail(
                    format!("{path}.sticky.cookie"),
                    format!("`{}` is not a valid cookie name", s.cookie),
                );
            }
            let max_age = match &s.max_age {
                Some(d) => Some(self.duration(&format!("{path}.sticky.max_age"), d)?),
                None => None,
            };
            Some(Sticky {
                cookie: s.cookie.clone(),
                max_age,
            })
        });
        let (steps, adaptive) = self.steps(path, &raw);
        let mirror_methods = self.mirror_methods(
            &format!("{path}.mirror_methods"),
            raw.mirror_methods.as_deref(),
        );
        let analysis = raw
            .analysis
            .as_ref()
            .and_then(|a| self.analysis(&format!("{path}.analysis"), a));
        let gates = self.gates(path, &raw);
        if self.problems.len() > errors_before {
            return None;
        }
        let (strategy, baseline, candidate) = roles?;
        let salt = raw.salt.unwrap_or_else(|| match &strategy {
            Strategy::Experiment { variants } => variants
                .iter()
                .map(|v| v.name.as_str())
                .collect::<Vec<_>>()
                .join(","),
            _ => versions[candidate].to_string(),
        });
        Some(Release {
            strategy,
            baseline,
            candidate,
            force,
            bucket_by: bucket_by?,
            bucket_by_trusted_only,
            salt,
            sticky,
            steps,
            adaptive,
            mirror_methods,
            analysis,
            skip_rollback: raw.skip_rollback.unwrap_or(false),
            gates,
        })
    }

    /// The strategy and the versions it names, as (strategy, baseline, candidate); reports
    /// keys that belong to another strategy, so a half-converted release is caught.
    pub(super) fn strategy(
        &mut self,
        path: &str,
        raw: &RawRelease,
        versions: &[&str],
    ) -> Option<(Strategy, usize, usize)> {
        let present = [
            ("baseline", raw.baseline.is_some()),
            ("candidate", raw.candidate.is_some()),
            (
                "steps",
                !matches!(&raw.steps, RawSteps::List(steps) if steps.is_empty()),
            ),
            ("adaptive", raw.adaptive.is_some()),
            ("max_bad_requests", raw.max_bad_requests.is_some()),
            ("mirror_methods", raw.mirror_methods.is_some()),
            ("active", raw.active.is_some()),
            ("preview", raw.preview.is_some()),
            ("keep_previous", raw.keep_previous.is_some()),
            ("variants", !raw.variants.is_empty()),
            ("force", !raw.force.is_empty()),
        ];
        let (wanted, strategy_keys): (&[&str], &[&str]) = match raw.strategy.as_str() {
            "canary" => (
                &["baseline", "candidate", "steps"],
                &[
                    "baseline",
                    "candidate",
                    "steps",
                    "adaptive",
                    "max_bad_requests",
                    "mirror_methods",
                    "force",
                ],
            ),
            "blue_green" => (
                &["active", "preview"],
                &["active", "preview", "keep_previous", "force"],
            ),
            "experiment" => (&["variants"], &["variants"]),
            other => {
                let hint = did_you_mean(other, ["canary", "blue_green", "experiment"])
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_default();
                self.fail(
                    format!("{path}.strategy"),
                    format!("unknown strategy `{other}`: use `canary`, `blue_green` or `experiment`{hint}"),
                );
                return None;
            }
        };
        let strategy = raw.strategy.as_str();
        for (key, is_set) in present {
            if is_set && !strategy_keys.contains(&key) {
                self.fail(
                    format!("{path}.{key}"),
                    format!(
                        "`{key}` does not apply to strategy `{strategy}` (it takes: {})",
                        strategy_keys.join(", ")
                    ),
                );
            }
        }
        for key in wanted {
            if !present.iter().any(|(k, set)| k == key && *set) {
                let example = match *key {
                    "steps" => "a canary release needs at least one step, e.g. `steps: [{ weight: 5 }, { weight: 100 }]`".to_string(),
                    "variants" => "an experiment needs `variants`, e.g. `[{ name: a, version: stable, weight: 50 }, { name: b, version: v2, weight: 50 }]`".to_string(),
                    _ => format!("strategy `{strategy}` needs `{key}`: the name of one of the service's versions ({})", versions.join(", ")),
                };
                self.fail(format!("{path}.{key}"), example);
            }
        }
        let pair = |v: &mut Self, a: (&str, &Option<String>), b: (&str, &Option<String>)| {
            let first =
                a.1.as_ref()
                    .and_then(|n| v.version_ref(&format!("{path}.{}", a.0), n, versions));
            let second =
                b.1.as_ref()
                    .and_then(|n| v.version_ref(&format!("{path}.{}", b.0), n, versions));
            if first.is_some() && first == second {
                v.fail(
                    format!("{path}.{}", b.0),
                    format!("the {} must differ from the {}", b.0, a.0),
                );
                return None;
            }
            Some((first?, second?))
        };
        match strategy {
            "canary" => {
                let (b, c) = pair(
                    self,
                    ("baseline", &raw.baseline),
                    ("candidate", &raw.candidate),
                )?;
                Some((Strategy::Canary, b, c))
            }
            "blue_green" => {
                let (a, p) = pair(self, ("active", &raw.active), ("preview", &raw.preview))?;
                let keep_previous = match &raw.keep_previous {
                    Some(d) => self.duration(&format!("{path}.keep_previous"), d)?,
                    None => Strategy::DEFAULT_KEEP_PREVIOUS,
                };
                Some((Strategy::BlueGreen { keep_previous }, a, p))
            }
            _ => {
                let variants = self.variants(path, &raw.variants, versions)?;
                let (control, challenger) = (variants[0].version, variants[1].version);
                Some((Strategy::Experiment { variants }, control, challenger))
            }
        }
    }

    pub(super) fn variants(
        &mut self,
        path: &str,
        raw: &[RawVariant],
        versions: &[&str],
    ) -> Option<Vec<Variant>> {
        if raw.is_empty() {
            // `strategy` has already asked for them.
            return None;
        }
        let errors_before = self.problems.len();
        if raw.len() < 2 {
            self.fail(
                format!("{path}.variants"),
                "an experiment needs at least two variants",
            );
        }
        let mut out: Vec<Variant> = Vec::new();
        let mut total = 0u32;
        for (i, v) in raw.iter().enumerate() {
            let vpath = format!("{path}.variants[{i}]");
            if !is_token(&v.name) {
                self.fail(
                    format!("{vpath}.name"),
                    format!(
                        "`{}` is not a valid variant name: use letters, digits, `-`, `_` and `.`",
                        v.name
                    ),
                );
            } else if raw[..i].iter().any(|o| o.name == v.name) {
                self.fail(
                    format!("{vpath}.name"),
                    format!("variant `{}` is named twice", v.name),
                );
            }
            let version = self.version_ref(&format!("{vpath}.version"), &v.version, versions);
            if let Some(other) = raw[..i].iter().find(|o| o.version == v.version) {
                self.fail(
                    format!("{vpath}.version"),
                    format!(
                        "version `{}` is already variant `{}`; each variant needs its own version",
                        v.version, other.name
                    ),
                );
            }
            let weight = Weight::from_percent(v.weight);
            if weight.is_none() {
                self.fail(
                    format!("{vpath}.weight"),
                    format!(
                        "weight {} must be a percentage from 0 to 100 in steps of at most 0.001",
                        v.weight
                    ),
                );
            }
            if let (Some(version), Some(weight)) = (version, weight) {
                total += weight.milli_percent();
                out.push(Variant {
                    name: v.name.clone(),
                    version,
                    weight,
                });
            }
        }
        if self.problems.len() > errors_before {
            return None;
        }
        if total != Weight::FULL.milli_percent() {
            self.fail(
                format!("{path}.variants"),
                format!(
                    "the variants' weights add up to {}%; they must add up to 100",
                    f64::from(total) / 1000.0
                ),
            );
            return None;
        }
        Some(out)
    }

    /// A canary's steps: the listed ones, or for `steps: adaptive` one manual step at the
    /// `start` weight and the adaptive bounds.
    fn steps(&mut self, path: &str, raw: &RawRelease) -> (Vec<Step>, Option<Adaptive>) {
        let word = match &raw.steps {
            RawSteps::List(list) => {
                for (key, set) in [
                    ("adaptive", raw.adaptive.is_some()),
                    ("max_bad_requests", raw.max_bad_requests.is_some()),
                ] {
                    if set && raw.strategy == "canary" {
                        self.fail(
                            format!("{path}.{key}"),
                            format!(
                                "`{key}` applies only to `steps: adaptive`, not to a list of steps"
                            ),
                        );
                    }
                }
                let steps = list
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| self.step(&format!("{path}.steps[{i}]"), s))
                    .collect();
                return (steps, None);
            }
            RawSteps::Word(word) => word,
        };
        if word != "adaptive" {
            let hint = did_you_mean(word, ["adaptive"])
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
            self.fail(
                format!("{path}.steps"),
                format!("`{word}` is not a plan: write a list of steps, e.g. `[{{ weight: 5, pause: 10m }}, {{ weight: 100 }}]`, or `adaptive`{hint}"),
            );
            return (Vec::new(), None);
        }
        match &raw.analysis {
            None => self.fail(
                format!("{path}.analysis"),
                "`steps: adaptive` is paced by the analysis: this release needs an `analysis:` with an `interval` and `checks`",
            ),
            Some(a) if a.checks.is_empty() => self.fail(
                format!("{path}.analysis.checks"),
                "`steps: adaptive` grows the weight only while checks pass: list at least one check",
            ),
            Some(_) => {}
        }
        let Some(adaptive) = self.adaptive(path, raw) else {
            return (Vec::new(), None);
        };
        let step = Step {
            weight: adaptive.start,
            mirror: None,
            pause: Pause::Manual,
        };
        (vec![step], Some(adaptive))
    }

    /// `adaptive:` with its defaults, each bound checked with the others.
    fn adaptive(&mut self, path: &str, raw: &RawRelease) -> Option<Adaptive> {
        let errors_before = self.problems.len();
        let a = raw.adaptive.as_ref();
        let apath = format!("{path}.adaptive");
        let percent = |v: &mut Self, key: &str, given: Option<f64>, default: f64| {
            let p = given.unwrap_or(default);
            let w = Weight::from_percent(p).filter(|w| *w > Weight::ZERO);
            if w.is_none() {
                v.fail(
                    format!("{apath}.{key}"),
                    format!("{key} {p} must be a percentage above 0 and at most 100, in steps of at most 0.001"),
                );
            }
            w
        };
        let start = percent(
            self,
            "start",
            a.and_then(|a| a.start),
            Adaptive::DEFAULT_START,
        );
        let max = percent(self, "max", a.and_then(|a| a.max), Adaptive::DEFAULT_MAX);
        if let (Some(s), Some(m)) = (start, max)
            && s > m
        {
            self.fail(
                format!("{apath}.start"),
                format!(
                    "start {s} is above max {m}: the weight starts at `start` and grows to `max`"
                ),
            );
        }
        let grow = a.and_then(|a| a.grow).unwrap_or(Adaptive::DEFAULT_GROW);
        if !(grow > 1.0 && grow.is_finite()) {
            self.fail(
                format!("{apath}.grow"),
                format!(
                    "grow {grow} must be above 1 (2.0 doubles the weight at each passing interval)"
                ),
            );
        }
        let shrink = a.and_then(|a| a.shrink).unwrap_or(Adaptive::DEFAULT_SHRINK);
        if !(shrink > 0.0 && shrink < 1.0) {
            self.fail(
                format!("{apath}.shrink"),
                format!(
                    "shrink {shrink} must be between 0 and 1, both excluded (0.5 halves the weight)"
                ),
            );
        }
        let pause = |v: &mut Self, key: &str, given: Option<&String>, default| match given {
            Some(d) => v.duration(&format!("{apath}.{key}"), d),
            None => Some(default),
        };
        let min_pause = pause(
            self,
            "min_pause",
            a.and_then(|a| a.min_pause.as_ref()),
            Adaptive::DEFAULT_MIN_PAUSE,
        );
        let max_pause = pause(
            self,
            "max_pause",
            a.and_then(|a| a.max_pause.as_ref()),
            Adaptive::DEFAULT_MAX_PAUSE,
        );
        if let (Some(lo), Some(hi)) = (min_pause, max_pause)
            && lo > hi
        {
            self.fail(
                format!("{apath}.min_pause"),
                format!(
                    "min_pause {} is longer than max_pause {}",
                    humantime::format_duration(lo),
                    humantime::format_duration(hi)
                ),
            );
        }
        if raw.max_bad_requests == Some(0) {
            self.fail(
                format!("{path}.max_bad_requests"),
                "max_bad_requests must be at least 1 (leave it out for no exposure budget)",
            );
        }
        if self.problems.len() > errors_before {
            return None;
        }
        Some(Adaptive {
            start: start?,
            max: max?,
            grow,
            shrink,
            min_pause: min_pause?,
            max_pause: max_pause?,
            max_bad_requests: raw.max_bad_requests,
        })
    }

    pub(super) fn step(&mut self, path: &str, raw: &RawStep) -> Option<Step> {
        let (weight, mirror) = match (raw.weight, raw.mirror) {
            (Some(w), None) => {
                let weight = Weight::from_percent(w);
                if weight.is_none() {
                    self.fail(
                        format!("{path}.weight"),
                        format!(
                            "weight {w} must be a percentage from 0 to 100 in steps of at most 0.001"
                        ),
                    );
                }
                (weight, None)
            }
            (None, Some(m)) => {
                let mirror = Weight::from_percent(m).filter(|_| m >= 1.0);
                if mirror.is_none() {
                    self.fail(
                        format!("{path}.mirror"),
                        format!(
                            "mirror {m} must be a percentage from 1 to 100 in steps of at most 0.001"
                        ),
                    );
                }
                (Some(Weight::ZERO), Some(mirror))
            }
            (Some(_), Some(_)) => {
                self.fail(
                    format!("{path}.mirror"),
                    "a step has either `weight` (users on the candidate) or `mirror` (requests copied to it), not both",
                );
                (None, None)
            }
            (None, None) => {
                self.fail(
                    path,
                    "a step needs `weight` (percent of users on the candidate) or `mirror` (percent of requests copied to it), e.g. `{ mirror: 20, pause: 10m }`",
                );
                (None, None)
            }
        };
        let pause = match raw.pause.as_deref() {
            None => Pause::None,
            Some("manual") => Pause::Manual,
            Some(d) => Pause::For(self.duration(&format!("{path}.pause"), d)?),
        };
        Some(Step {
            weight: weight?,
            mirror: mirror.flatten(),
            pause,
        })
    }

    /// `mirror_methods`: the methods a mirror step copies; the safe ones by default.
    fn mirror_methods(&mut self, path: &str, raw: Option<&[String]>) -> Vec<http::Method> {
        let Some(raw) = raw else {
            return Release::DEFAULT_MIRROR_METHODS.to_vec();
        };
        if raw.is_empty() {
            self.fail(
                path,
                "list at least one method, e.g. `[GET, HEAD]`, or leave `mirror_methods` out for GET, HEAD and OPTIONS",
            );
        }
        raw.iter()
            .enumerate()
            .filter_map(|(i, m)| self.method(&format!("{path}[{i}]"), m))
            .collect()
    }
}
