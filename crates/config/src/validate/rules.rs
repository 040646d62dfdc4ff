//! Routing rules and their matchers: `all` / `any` / `not` nesting, header, cookie, query, path,
//! method, CIDR, semver and device matches, segment references.

use super::Validator;
use super::scalars::is_token;
use crate::error::did_you_mean;
use crate::model::*;
use crate::raw::*;

/// Deepest nesting of `all` / `any` / `not` accepted, so a hostile file cannot exhaust the stack.
const MAX_RULE_DEPTH: usize = 32;

impl Validator<'_> {
    /// A rule; one written with `trusted_only: true` is wrapped in [`Rule::TrustedOnly`].
    pub(super) fn rule(
        &mut self,
        path: &str,
        raw: &RawRule,
        segments: &[Segment],
        depth: usize,
    ) -> Option<Rule> {
        let (kind, flag) = [
            ("header", raw.header.as_ref().and_then(|h| h.trusted_only)),
            ("cookie", raw.cookie.as_ref().and_then(|c| c.trusted_only)),
            ("query", raw.query.as_ref().and_then(|q| q.trusted_only)),
            ("semver", raw.semver.as_ref().and_then(|s| s.trusted_only)),
            ("country", raw.country.as_ref().and_then(|c| c.trusted_only)),
            ("segment", raw.segment.as_ref().and_then(|s| s.trusted_only)),
        ]
        .into_iter()
        .find(|(_, flag)| flag.is_some())
        .unwrap_or(("", None));
        let trusted_only = flag == Some(true);
        let flag_path = format!("{path}.{kind}.trusted_only");
        if trusted_only && matches!(kind, "cookie" | "query") {
            self.fail(
                flag_path,
                format!(
                    "`trusted_only` applies to what a hop in front of graylane sets (headers); a {kind} comes from the client"
                ),
            );
            return None;
        }
        let rule = self.rule_kind(path, raw, segments, depth)?;
        if !trusted_only {
            return Some(rule);
        }
        self.trusted_only_at.push(flag_path);
        Some(Rule::TrustedOnly(Box::new(rule)))
    }

    pub(super) fn rule_kind(
        &mut self,
        path: &str,
        raw: &RawRule,
        segments: &[Segment],
        depth: usize,
    ) -> Option<Rule> {
        if depth > MAX_RULE_DEPTH {
            self.fail(
                path,
                format!("rules nest deeper than {MAX_RULE_DEPTH} levels"),
            );
            return None;
        }
        let kinds: Vec<&str> = [
            ("header", raw.header.is_some()),
            ("cookie", raw.cookie.is_some()),
            ("query", raw.query.is_some()),
            ("path", raw.path.is_some()),
            ("method", raw.method.is_some()),
            ("client_ip", raw.client_ip.is_some()),
            ("semver", raw.semver.is_some()),
            ("device", raw.device.is_some()),
            ("country", raw.country.is_some()),
            ("time", raw.time.is_some()),
            ("segment", raw.segment.is_some()),
            ("all", raw.all.is_some()),
            ("any", raw.any.is_some()),
            ("not", raw.not.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect();
        if kinds.len() != 1 {
            let msg = if kinds.is_empty() {
                "a rule needs one kind: header, cookie, query, path, method, client_ip, semver, device, country, time, segment, all, any or not".to_string()
            } else {
                format!(
                    "a rule has exactly one kind, this one has {}; combine them with `all: [...]`",
                    kinds.join(", ")
                )
            };
            self.fail(path, msg);
            return None;
        }
        let kind = kinds[0];
        let sub = format!("{path}.{kind}");
        if let Some(h) = &raw.header {
            let name = self.header_name(&format!("{sub}.name"), &h.name);
            let matcher = self.value_match(&sub, h);
            return Some(Rule::Header {
                name: name?,
                matcher: matcher?,
            });
        }
        if let Some(c) = &raw.cookie {
            if !is_token(&c.name) {
                self.fail(
                    format!("{sub}.name"),
                    format!("`{}` is not a valid cookie name", c.name),
                );
                return None;
            }
            let matcher = self.value_match(&sub, c)?;
            return Some(Rule::Cookie {
                name: c.name.clone(),
                matcher,
            });
        }
        if let Some(q) = &raw.query {
            if q.name.is_empty() || q.name.contains(['&', '=', '#']) {
                self.fail(
                    format!("{sub}.name"),
                    format!("`{}` is not a valid query parameter name", q.name),
                );
                return None;
            }
            let matcher = self.value_match(&sub, q)?;
            return Some(Rule::Query {
                name: q.name.clone(),
                matcher,
            });
        }
        if let Some(p) = &raw.path {
            return self.path_match(&sub, p).map(Rule::Path);
        }
        if let Some(m) = &raw.method {
            let methods: Vec<_> = m.clone_vec();
            let parsed: Vec<_> = methods
                .iter()
                .enumerate()
                .filter_map(|(i, m)| self.method(&format!("{sub}[{i}]"), m))
                .collect();
            return (parsed.len() == methods.len() && !parsed.is_empty())
                .then_some(Rule::Method(parsed));
        }
        if let Some(c) = &raw.client_ip {
            let cidrs = c.clone_vec();
            let parsed: Vec<_> = cidrs
                .iter()
                .enumerate()
                .filter_map(|(i, c)| self.cidr(&format!("{sub}[{i}]"), c))
                .collect();
            return (parsed.len() == cidrs.len() && !parsed.is_empty())
                .then_some(Rule::ClientIp(parsed));
        }
        if let Some(s) = &raw.semver {
            let header = self.header_name(&format!("{sub}.header"), &s.header);
            let range = match parse_semver_range(&s.range) {
                Ok(r) => Some(r),
                Err(e) => {
                    self.fail(format!("{sub}.range"), e);
                    None
                }
            };
            return Some(Rule::Semver {
                header: header?,
                range: range?,
                written: s.range.clone(),
            });
        }
        if let Some(d) = &raw.device {
            let names = d.clone_vec();
            let mut classes = Vec::new();
            for (i, n) in names.iter().enumerate() {
                match n.to_ascii_lowercase().as_str() {
                    "mobile" => classes.push(DeviceClass::Mobile),
                    "desktop" => classes.push(DeviceClass::Desktop),
                    "bot" => classes.push(DeviceClass::Bot),
                    _ => self.fail(
                        format!("{sub}[{i}]"),
                        format!("unknown device class `{n}`: use mobile, desktop or bot"),
                    ),
                }
            }
            return (classes.len() == names.len() && !classes.is_empty())
                .then_some(Rule::Device(classes));
        }
        if let Some(c) = &raw.country {
            let header = self.header_name(
                &format!("{sub}.header"),
                c.header.as_deref().unwrap_or("CF-IPCountry"),
            );
            let codes: Vec<String> = match (&c.equals, &c.one_of) {
                (Some(one), None) => vec![one.clone()],
                (None, Some(many)) if !many.is_empty() => many.clone(),
                _ => {
                    self.fail(
                        sub,
                        "a country rule needs exactly one of `equals` or `in` (ISO 3166 codes)",
                    );
                    return None;
                }
            };
            let mut ok = true;
            for code in &codes {
                if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_alphabetic()) {
                    ok = false;
                    self.fail(
                        sub.clone(),
                        format!("`{code}` is not a two-letter ISO 3166 country code"),
                    );
                }
            }
            let codes = codes.iter().map(|c| c.to_ascii_uppercase()).collect();
            return (ok).then_some(Rule::Country {
                header: header?,
                codes,
            });
        }
        if let Some(t) = &raw.time {
            let from = t
                .from
                .as_ref()
                .map(|s| self.timestamp(&format!("{sub}.from"), s));
            let until = t
                .until
                .as_ref()
                .map(|s| self.timestamp(&format!("{sub}.until"), s));
            if from.is_none() && until.is_none() {
                self.fail(
                    sub,
                    "a time rule needs `from`, `until` or both (RFC 3339 times)",
                );
                return None;
            }
            let from = from.map(|f| f.ok_or(())).transpose().ok()?;
            let until = until.map(|u| u.ok_or(())).transpose().ok()?;
            if let (Some(f), Some(u)) = (from, until)
                && f >= u
            {
                self.fail(format!("{sub}.until"), "`until` must be later than `from`");
                return None;
            }
            return Some(Rule::Time { from, until });
        }
        if let Some(s) = &raw.segment {
            let key = self.key_spec(&format!("{sub}.key"), &s.key);
            let segment = segments.iter().position(|seg| seg.name == s.name);
            if segment.is_none() {
                let hint = did_you_mean(&s.name, segments.iter().map(|s| s.name.as_str()))
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_default();
                self.fail(
                    format!("{sub}.name"),
                    format!("unknown segment `{}`{hint}", s.name),
                );
            }
            return Some(Rule::Segment {
                segment: segment?,
                key: key?,
            });
        }
        if let Some(list) = raw.all.as_ref().or(raw.any.as_ref()) {
            if list.is_empty() {
                self.fail(sub, format!("`{kind}` needs at least one rule"));
                return None;
            }
            let rules: Vec<_> = list
                .iter()
                .enumerate()
                .map(|(i, r)| self.rule(&format!("{sub}[{i}]"), r, segments, depth + 1))
                .collect();
            let rules = rules.into_iter().collect::<Option<Vec<_>>>()?;
            return Some(if kind == "all" {
                Rule::All(rules)
            } else {
                Rule::Any(rules)
            });
        }
        let inner = raw.not.as_ref()?;
        self.rule(&sub, inner, segments, depth + 1)
            .map(|r| Rule::Not(Box::new(r)))
    }

    pub(super) fn value_match(&mut self, path: &str, raw: &RawValueRule) -> Option<ValueMatch> {
        let mut set = Vec::new();
        if raw.equals.is_some() {
            set.push("equals");
        }
        if raw.one_of.is_some() {
            set.push("in");
        }
        if raw.prefix.is_some() {
            set.push("prefix");
        }
        if raw.glob.is_some() {
            set.push("glob");
        }
        if raw.regex.is_some() {
            set.push("regex");
        }
        if raw.exists.is_some() {
            set.push("exists");
        }
        if raw.absent.is_some() {
            set.push("absent");
        }
        if set.len() != 1 {
            self.fail(
                path,
                format!(
                    "needs exactly one of equals, in, prefix, glob, regex, exists, absent (found {})",
                    if set.is_empty() { "none".to_string() } else { set.join(", ") }
                ),
            );
            return None;
        }
        if raw.exists == Some(false) || raw.absent == Some(false) {
            self.fail(
                format!("{path}.{}", set[0]),
                "write `exists: true` or `absent: true`; `false` would be the other one",
            );
            return None;
        }
        Some(match () {
            _ if raw.equals.is_some() => ValueMatch::Equals(raw.equals.clone()?),
            _ if raw.one_of.is_some() => ValueMatch::In(raw.one_of.clone()?),
            _ if raw.prefix.is_some() => ValueMatch::Prefix(raw.prefix.clone()?),
            _ if raw.glob.is_some() => ValueMatch::Glob(raw.glob.clone()?),
            _ if raw.regex.is_some() => {
                ValueMatch::Regex(self.regex(&format!("{path}.regex"), raw.regex.as_deref()?)?)
            }
            _ if raw.exists.is_some() => ValueMatch::Exists,
            _ => ValueMatch::Absent,
        })
    }

    pub(super) fn path_match(&mut self, path: &str, raw: &RawPathRule) -> Option<PathMatch> {
        let set = [&raw.equals, &raw.prefix, &raw.glob, &raw.regex]
            .iter()
            .filter(|v| v.is_some())
            .count();
        if set != 1 {
            self.fail(
                path,
                "a path rule needs exactly one of equals, prefix, glob, regex",
            );
            return None;
        }
        if let Some(r) = &raw.regex {
            return self
                .regex(&format!("{path}.regex"), r)
                .map(PathMatch::Regex);
        }
        let (key, value) = match (&raw.equals, &raw.prefix, &raw.glob) {
            (Some(v), _, _) => ("equals", v),
            (_, Some(v), _) => ("prefix", v),
            (_, _, Some(v)) => ("glob", v),
            _ => return None,
        };
        if !value.starts_with('/') && !value.starts_with('*') {
            self.fail(
                format!("{path}.{key}"),
                format!("`{value}` must start with `/`"),
            );
            return None;
        }
        Some(match key {
            "equals" => PathMatch::Equals(value.clone()),
            "prefix" => PathMatch::Prefix(value.clone()),
            _ => PathMatch::Glob(value.clone()),
        })
    }
}

/// Accepts both Cargo's comma form (`>=2.1.0, <3.0.0`) and the npm/space form (`>=2.1.0 <3.0.0`).
fn parse_semver_range(s: &str) -> Result<semver::VersionReq, String> {
    if s.contains("||") {
        return Err(format!(
            "`{s}`: `||` is not supported; use an `any` rule of semver rules"
        ));
    }
    let normalized = if s.contains(',') {
        s.to_string()
    } else {
        let mut parts: Vec<String> = Vec::new();
        let mut pending_op = String::new();
        for tok in s.split_whitespace() {
            if tok.bytes().all(|b| b"<>=~^".contains(&b)) {
                pending_op.push_str(tok);
            } else {
                parts.push(format!("{pending_op}{tok}"));
                pending_op.clear();
            }
        }
        if !pending_op.is_empty() {
            return Err(format!("`{s}` ends with an operator and no version"));
        }
        parts.join(", ")
    };
    semver::VersionReq::parse(&normalized)
        .map_err(|e| format!("`{s}` is not a semver range like `>=2.1.0 <3.0.0`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semver_space_and_comma_forms_agree() {
        let v = semver::Version::parse("2.5.1").unwrap();
        for s in [">=2.1.0 <3.0.0", ">=2.1.0, <3.0.0", ">= 2.1.0 < 3.0.0"] {
            let r = parse_semver_range(s).unwrap();
            assert!(r.matches(&v), "{s}");
            assert!(!r.matches(&semver::Version::parse("3.0.0").unwrap()), "{s}");
        }
        assert!(parse_semver_range(">=1 || <0.5").is_err());
        assert!(parse_semver_range(">=banana").is_err());
    }
}
