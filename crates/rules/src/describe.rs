//! Human descriptions of rules, for [`RoutingTable::explain`](crate::RoutingTable::explain).
//!
//! They are built once from the configuration (not from the compiled matchers), so they read
//! the way the user wrote the rule: `header x-release-phase glob "canary-*"`, not the prefix
//! check it compiled to.

use std::fmt::Write as _;

use graylane_config::{Config, PathMatch, Rule, ValueMatch};

/// `rule` in words; `config` resolves segment indices to names and says whether `country`
/// rules ask a GeoIP database.
pub(crate) fn describe(rule: &Rule, config: &Config) -> String {
    let mut out = String::new();
    write_rule(&mut out, rule, config);
    out
}

fn write_rule(out: &mut String, rule: &Rule, config: &Config) {
    // Writing to a String cannot fail, hence the ignored fmt::Results below.
    match rule {
        Rule::Header { name, matcher } => {
            let _ = write!(out, "header {name} ");
            write_value(out, matcher);
        }
        Rule::Cookie { name, matcher } => {
            let _ = write!(out, "cookie {name} ");
            write_value(out, matcher);
        }
        Rule::Query { name, matcher } => {
            let _ = write!(out, "query parameter {name} ");
            write_value(out, matcher);
        }
        Rule::Path(p) => {
            let _ = match p {
                PathMatch::Equals(s) => write!(out, "path equals {s:?}"),
                PathMatch::Prefix(s) => write!(out, "path starts with {s:?}"),
                PathMatch::Glob(s) => write!(out, "path matches glob {s:?}"),
                PathMatch::Regex(r) => write!(out, "path matches regex {:?}", r.as_str()),
            };
        }
        Rule::Method(methods) => {
            out.push_str("method is ");
            write_list(out, methods.iter().map(http::Method::as_str), " or ");
        }
        Rule::ClientIp(nets) => {
            let nets: Vec<String> = nets.iter().map(ToString::to_string).collect();
            out.push_str("client IP is in ");
            write_list(out, nets.iter().map(String::as_str), ", ");
        }
        Rule::Semver {
            header, written, ..
        } => {
            let _ = write!(out, "header {header} is a version in {written:?}");
        }
        Rule::Device(classes) => {
            out.push_str("device (from User-Agent) is ");
            write_list(out, classes.iter().map(|c| c.as_str()), " or ");
        }
        Rule::Country { header, codes } if config.geoip.is_some() => {
            let _ = write!(out, "country (GeoIP database, else header {header}) is ");
            write_list(out, codes.iter().map(String::as_str), " or ");
        }
        Rule::Country { header, codes } => {
            let _ = write!(out, "country (header {header}) is ");
            write_list(out, codes.iter().map(String::as_str), " or ");
        }
        Rule::Time { from, until } => {
            out.push_str("time is");
            if let Some(f) = from {
                let _ = write!(out, " from {}", utc(*f));
            }
            if let Some(u) = until {
                let _ = write!(out, " until {}", utc(*u));
            }
        }
        Rule::Segment { segment, key } => {
            let name = config
                .segments
                .get(*segment)
                .map_or("?", |s| s.name.as_str());
            let _ = write!(out, "{key} is in segment {name}");
        }
        Rule::All(rules) => write_group(out, "all of", rules, config),
        Rule::Any(rules) => write_group(out, "any of", rules, config),
        Rule::Not(rule) => {
            out.push_str("not (");
            write_rule(out, rule, config);
            out.push(')');
        }
        Rule::TrustedOnly(rule) => {
            write_rule(out, rule, config);
            out.push_str(" (from a trusted hop)");
        }
    }
}

fn write_value(out: &mut String, m: &ValueMatch) {
    let _ = match m {
        ValueMatch::Equals(s) => write!(out, "equals {s:?}"),
        ValueMatch::In(list) => write!(out, "in {list:?}"),
        ValueMatch::Prefix(s) => write!(out, "starts with {s:?}"),
        ValueMatch::Glob(s) => write!(out, "matches glob {s:?}"),
        ValueMatch::Regex(r) => write!(out, "matches regex {:?}", r.as_str()),
        ValueMatch::Exists => write!(out, "is present"),
        ValueMatch::Absent => write!(out, "is absent"),
    };
}

fn write_group(out: &mut String, what: &str, rules: &[Rule], config: &Config) {
    out.push_str(what);
    out.push_str(" (");
    for (i, r) in rules.iter().enumerate() {
        if i > 0 {
            out.push_str("; ");
        }
        write_rule(out, r, config);
    }
    out.push(')');
}

fn write_list<'a>(out: &mut String, items: impl Iterator<Item = &'a str>, sep: &str) {
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push_str(sep);
        }
        out.push_str(item);
    }
}

/// Unix milliseconds as an RFC 3339 UTC time (`2026-12-01T08:00:00Z`, with `.mmm` when the
/// milliseconds are not zero).
pub(crate) fn utc(unix_ms: i64) -> String {
    let secs = unix_ms.div_euclid(1000);
    let ms = unix_ms.rem_euclid(1000);
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (sod / 3600, sod % 3600 / 60, sod % 60);
    if ms == 0 {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
    } else {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{ms:03}Z")
    }
}

/// Days since 1970-01-01 → proleptic Gregorian (year, month, day); Howard Hinnant's
/// `civil_from_days`, exact for every i64 day count a timestamp in milliseconds can produce.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    // d is in 1..=31 and m in 1..=12 by construction.
    (y, m as u32, d as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formatting() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_796_112_000_000), "2026-12-01T08:00:00Z");
        assert_eq!(utc(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(utc(-1), "1969-12-31T23:59:59.999Z");
    }
}
