//! A release's `gates:`: the webhooks asked before (or after) it moves — their kind, URL,
//! timeout and retries, and which strategies each kind fits.

use std::time::Duration;

use super::Validator;
use crate::error::did_you_mean;
use crate::model::*;
use crate::raw::*;
use crate::redact_url;

impl Validator<'_> {
    pub(super) fn gates(&mut self, path: &str, raw: &RawRelease) -> Vec<Gate> {
        let canary_steps = raw.strategy == "canary" && !matches!(&raw.steps, RawSteps::Word(_));
        raw.gates
            .iter()
            .enumerate()
            .filter_map(|(i, g)| self.gate(&format!("{path}.gates[{i}]"), g, canary_steps))
            .collect()
    }

    fn gate(&mut self, path: &str, raw: &RawGate, canary_steps: bool) -> Option<Gate> {
        let kind = GateKind::ALL.into_iter().find(|k| k.as_str() == raw.kind);
        match kind {
            None => {
                let hint = did_you_mean(&raw.kind, GateKind::ALL.map(GateKind::as_str))
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_default();
                self.fail(
                    format!("{path}.kind"),
                    format!(
                        "unknown gate kind `{}`: use `pre_rollout`, `pre_step`, `confirm_promotion` or `post_rollback`{hint}",
                        raw.kind
                    ),
                );
            }
            Some(k @ (GateKind::PreStep | GateKind::ConfirmPromotion)) if !canary_steps => {
                self.fail(
                    format!("{path}.kind"),
                    format!(
                        "a `{}` gate needs a canary with listed `steps`: a blue-green switch and an experiment's winner are promoted by hand, and `steps: adaptive` moves its weight each interval; `pre_rollout` and `post_rollback` fit every release",
                        k.as_str()
                    ),
                );
            }
            Some(_) => {}
        }
        let url = match raw.url.parse::<http::Uri>() {
            Ok(u)
                if matches!(u.scheme_str(), Some("http" | "https"))
                    && u.host().is_some_and(|h| !h.is_empty()) =>
            {
                Some(u)
            }
            _ => {
                self.fail(
                    format!("{path}.url"),
                    format!(
                        "`{}` is not an http:// or https:// URL like http://127.0.0.1:7000/gate",
                        redact_url(&raw.url)
                    ),
                );
                None
            }
        };
        let timeout = match &raw.timeout {
            Some(t) => self.duration(&format!("{path}.timeout"), t),
            None => Some(Gate::DEFAULT_TIMEOUT),
        };
        let timeout = timeout.filter(|t| {
            let fits = (Duration::from_millis(1)..=Gate::MAX_TIMEOUT).contains(t);
            if !fits {
                self.fail(
                    format!("{path}.timeout"),
                    format!(
                        "{t:?} is out of range: a gate's timeout is at least 1ms and at most {}s",
                        Gate::MAX_TIMEOUT.as_secs()
                    ),
                );
            }
            fits
        });
        let retries = raw.retries.unwrap_or(Gate::DEFAULT_RETRIES);
        if retries > Gate::MAX_RETRIES {
            self.fail(
                format!("{path}.retries"),
                format!(
                    "{retries} retries is too many: at most {}, each holding the release for up to the timeout",
                    Gate::MAX_RETRIES
                ),
            );
            return None;
        }
        Some(Gate {
            kind: kind?,
            url: url?,
            timeout: timeout?,
            retries,
        })
    }
}
