//! Structured fuzzing of rules: the input drives a generator that writes a configuration whose
//! services carry trees of force rules (every kind: header, cookie, query, path, method,
//! client_ip, semver, device, country, time, segment, all, any, not) with fuzzed strings mixed
//! with plausible ones. The text goes through `load_str`; a valid result is compiled with
//! `RoutingTable::compile` and asked to `decide` and `explain` a fixed request. Nothing may
//! panic.
//!
//! Set `FUZZ_SHOW_YAML=1` to print each generated configuration (e.g. when running a crash
//! input: `fuzz/target/.../rule_compile artifacts/rule_compile/crash-...`).

#![no_main]

use std::fmt::Write as _;
use std::path::Path;
use std::sync::OnceLock;

use arbitrary::{Result, Unstructured};
use graylane_rules::{RequestView, RoutingTable};
use http::{HeaderMap, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;

/// Deeper than the validator's limit (32) only rarely matters; a few levels more than it
/// exercises the "too deep" error without letting one input build a huge tree.
const MAX_DEPTH: usize = 36;
/// Rules in one generated file, so an input cannot make the text megabytes long.
const MAX_RULES: usize = 200;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let mut g = Gen {
        u: &mut u,
        rules: 0,
    };
    let Ok(yaml) = g.config() else { return };
    let show = std::env::var_os("FUZZ_SHOW_YAML").is_some();
    if show {
        eprintln!("----- generated config -----\n{yaml}");
    }
    let config = match graylane_config::load_str(&yaml, "fuzz.yaml", Path::new("/nonexistent")) {
        Ok(config) => config,
        Err(errors) => {
            if show {
                eprintln!("----- invalid -----\n{errors}");
            }
            return;
        }
    };
    if show {
        eprintln!("----- valid -----");
    }
    let table = RoutingTable::compile(&config);
    let fixed = fixed_request();
    let view = fixed.view();
    if let Some(d) = table.decide(&view) {
        assert!(
            d.service < config.services.len(),
            "service index out of range"
        );
        assert!(
            d.version < config.services[d.service].versions.len(),
            "version index out of range"
        );
        let _ = table.explain(&view, &d);
        assert_eq!(table.decide(&view), Some(d), "decide is not deterministic");
    }
});

// ----- the fixed request -----

struct Fixed {
    method: Method,
    headers: HeaderMap,
}

impl Fixed {
    fn view(&self) -> RequestView<'_> {
        RequestView {
            method: &self.method,
            host: Some("example.com"),
            path: "/api/payment/v2/charge",
            query: Some("variant=b&debug&u=a%2Bb&x=%zz"),
            headers: &self.headers,
            client_ip: "203.0.113.7".parse().unwrap(),
            now_unix_ms: 1_796_112_000_000, // 2026-12-01T08:00:00Z
            trusted_lane: None,
            trusted: false,
            random: 0,
        }
    }
}

/// A request with a bit of everything the rules look at; built once.
fn fixed_request() -> &'static Fixed {
    static FIXED: OnceLock<Fixed> = OnceLock::new();
    FIXED.get_or_init(|| {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("x-user-id", "u-1001"),
            ("x-release-phase", "canary"),
            ("x-app-version", "v2.5.1"),
            ("cf-ipcountry", "de"),
            ("cookie", "beta=1; graylane_lane=canary; uid=\"c-2\""),
            ("cookie", "other=x"),
            (
                "user-agent",
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148",
            ),
        ] {
            headers.append(name, HeaderValue::from_static(value));
        }
        Fixed {
            method: Method::POST,
            headers,
        }
    })
}

// ----- the generator -----

struct Gen<'a, 'b> {
    u: &'a mut Unstructured<'b>,
    rules: usize,
}

/// Plausible strings, so many generated configurations get past validation.
const WORDS: &[&str] = &[
    "",
    "canary",
    "stable",
    "staff",
    "beta",
    "x",
    "u-1001",
    "X-User-Id",
    "x-release-phase",
    "X-App-Version",
    "CF-IPCountry",
    "graylane_lane",
    "uid",
    "variant",
    "b",
    "a+b",
    "a%2Bb",
    "canary-*",
    "*-beta",
    "*beta*",
    "*",
    "**",
    "a*b?c",
    "?",
    "^(1|yes)$",
    "(",
    "[",
    "\\",
    "é",
    "✓",
    "\u{0}",
    "\t",
    "\n",
    ":",
    "/",
    "/api",
    "/api/payment",
    "/api/*",
    "*/charge",
    "GET",
    "post",
    "PATCH",
    "bogus method",
    "10.0.0.0/8",
    "203.0.113.7",
    "::1",
    "::ffff:1.2.3.4/120",
    "2001:db8::/32",
    "1.2.3.4/33",
    ">=2.1.0 <3.0.0",
    ">=2.1.0, <3.0.0",
    "^1",
    "~2.5",
    "*",
    ">= 2 < 3 ||",
    "1.0.0-alpha+build",
    "mobile",
    "desktop",
    "bot",
    "Bot",
    "tablet",
    "DE",
    "de",
    "AT",
    "D",
    "DEU",
    "2026-12-01T08:00:00Z",
    "2026-12-02T00:00:00+01:00",
    "1970-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999999Z",
    "0000-01-01T00:00:00Z",
    "2026-13-01T00:00:00Z",
    "header:X-User-Id",
    "cookie:uid",
    "query:u",
    "ip",
    "header:",
    "cookie:",
    "query:",
    "header:bad name",
    "5m",
    "manual",
    "1h30m",
    "0s",
    "99999999999999999h",
];

impl Gen<'_, '_> {
    fn pick<'w>(&mut self, list: &[&'w str]) -> Result<&'w str> {
        self.u.choose(list).copied()
    }

    /// A plausible word most of the time, else arbitrary text (any Unicode, control
    /// characters included).
    fn string(&mut self) -> Result<String> {
        if self.u.ratio(3, 4)? {
            return Ok(self.pick(WORDS)?.to_string());
        }
        let len = self.u.int_in_range(0..=24)?;
        let mut s = String::new();
        for _ in 0..len {
            s.push(self.u.arbitrary::<char>()?);
        }
        Ok(s)
    }

    /// A word from `likely` most of the time (nine in ten), else any string.
    fn one_of(&mut self, likely: &[&str]) -> Result<String> {
        if self.u.ratio(9, 10)? {
            Ok(self.pick(likely)?.to_string())
        } else {
            self.string()
        }
    }

    /// `valid` nearly always (fifteen in sixteen), else a word from `likely` or any string:
    /// for the parts every configuration needs right to reach the rules at all.
    fn mostly(&mut self, valid: &str, likely: &[&str]) -> Result<String> {
        if self.u.ratio(15, 16)? {
            Ok(valid.to_string())
        } else {
            self.one_of(likely)
        }
    }

    /// `true` nearly always, so `exists: false` (an error) stays rare.
    fn mostly_true(&mut self) -> Result<bool> {
        self.u.ratio(15, 16)
    }

    fn list(&mut self, likely: &[&str], max: usize) -> Result<String> {
        let n = self.u.int_in_range(0..=max)?;
        let mut items = Vec::new();
        for _ in 0..n {
            items.push(quote(&self.one_of(likely)?));
        }
        Ok(format!("[{}]", items.join(", ")))
    }

    /// `name: "x"` or a list, as YAML accepts both for method, client_ip and device.
    fn one_or_many(&mut self, likely: &[&str]) -> Result<String> {
        if self.u.arbitrary()? {
            Ok(quote(&self.one_of(likely)?))
        } else {
            self.list(likely, 4)
        }
    }

    fn config(&mut self) -> Result<String> {
        let mut y = String::from("listeners: [{ bind: \"127.0.0.1:8080\" }]\nsegments:\n");
        y.push_str("  staff: { values: [\"u-1001\", \"u-1002\"] }\n");
        if self.u.arbitrary()? {
            let name = self.one_of(&["vip", "staff2", "", "bad name"])?;
            let values = self.list(&["u-1001", "c-2", "203.0.113.7", "b", ""], 12)?;
            let _ = writeln!(y, "  {}: {{ values: {values} }}", quote(&name));
        }
        y.push_str("services:\n");
        let services = self.u.int_in_range(1..=3)?;
        for i in 0..services {
            self.service(&mut y, i)?;
        }
        Ok(y)
    }

    fn service(&mut self, y: &mut String, i: u8) -> Result<()> {
        let name = self.mostly(&format!("svc{i}"), &["svc0", "", "a b"])?;
        let _ = writeln!(y, "  - name: {}", quote(&name));
        let prefix = ["/", "/api", "/api/payment", "/api/payment/v2/charge"];
        let prefix = self.mostly(prefix[usize::from(i) % prefix.len()], &prefix)?;
        let _ = write!(y, "    match: {{ path_prefix: {}", quote(&prefix));
        if self.u.ratio(1, 4)? {
            let host = self.one_of(&["example.com", "EXAMPLE.com:8080", "example.com.", ""])?;
            let _ = write!(y, ", host: {}", quote(&host));
        }
        if self.u.ratio(1, 4)? {
            let methods = self.list(&["GET", "POST", "put"], 3)?;
            let _ = write!(y, ", methods: {methods}");
        }
        y.push_str(" }\n");
        y.push_str("    versions:\n");
        y.push_str("      stable: { endpoints: [\"127.0.0.1:9001\"] }\n");
        let _ = write!(y, "      canary: {{ endpoints: [\"127.0.0.1:9002\"]");
        if self.u.ratio(1, 4)? {
            let tag = self.one_of(&["v1.2.0", ""])?;
            let _ = write!(y, ", tag: {}", quote(&tag));
        }
        y.push_str(" }\n");
        if self.u.ratio(1, 8)? {
            return Ok(());
        }
        y.push_str("    release:\n      strategy: canary\n      baseline: stable\n");
        let candidate = self.mostly("canary", &["stable", "canary "])?;
        let _ = writeln!(y, "      candidate: {}", quote(&candidate));
        if self.u.arbitrary()? {
            let key = self.one_of(&["header:X-User-Id", "cookie:uid", "query:u", "ip"])?;
            let _ = writeln!(y, "      bucket_by: {}", quote(&key));
        }
        if self.u.ratio(1, 4)? {
            let salt = self.string()?;
            let _ = writeln!(y, "      salt: {}", quote(&salt));
        }
        if self.u.ratio(1, 3)? {
            let cookie = self.one_of(&["graylane_lane", "uid"])?;
            let _ = writeln!(y, "      sticky: {{ cookie: {} }}", quote(&cookie));
        }
        let steps = if self.u.ratio(1, 16)? {
            0
        } else {
            self.u.int_in_range(1..=3)?
        };
        y.push_str("      steps: [");
        for s in 0..steps {
            if s > 0 {
                y.push_str(", ");
            }
            let _ = write!(y, "{{ weight: {} }}", self.weight()?);
        }
        y.push_str("]\n      force:\n");
        let rules = self.u.int_in_range(0..=4)?;
        for _ in 0..rules {
            let rule = self.rule(0)?;
            let _ = writeln!(y, "        - {rule}");
        }
        Ok(())
    }

    fn weight(&mut self) -> Result<String> {
        Ok(match self.u.int_in_range(0..=7)? {
            0 => "0".to_string(),
            1 => "100".to_string(),
            2 => format!("{:?}", self.u.arbitrary::<f64>()?),
            _ => {
                let milli = self.u.int_in_range(0..=100_000u32)?;
                format!("{}.{:03}", milli / 1000, milli % 1000)
            }
        })
    }

    /// One rule in flow YAML.
    fn rule(&mut self, depth: usize) -> Result<String> {
        self.rules += 1;
        let leaf_only = depth >= MAX_DEPTH || self.rules >= MAX_RULES;
        let kinds = if leaf_only { 11 } else { 14 };
        Ok(match self.u.int_in_range(0..=kinds - 1)? {
            0 => {
                let name = self.one_of(&["X-Release-Phase", "x-user-id", "bad name", ""])?;
                format!("{{ header: {} }}", self.value_rule(&name)?)
            }
            1 => {
                let name = self.one_of(&["beta", "uid", "graylane_lane", "bad;name"])?;
                format!("{{ cookie: {} }}", self.value_rule(&name)?)
            }
            2 => {
                let name = self.one_of(&["variant", "u", "debug", "x", "a&b"])?;
                format!("{{ query: {} }}", self.value_rule(&name)?)
            }
            3 => {
                let key = self.pick(&["equals", "prefix", "glob", "regex"])?;
                let value =
                    self.one_of(&["/api/payment", "/api/*", "*/charge", "^/api/.*$", "("])?;
                format!("{{ path: {{ {key}: {} }} }}", quote(&value))
            }
            4 => format!(
                "{{ method: {} }}",
                self.one_or_many(&["GET", "post", "PUT"])?
            ),
            5 => {
                let nets = ["10.0.0.0/8", "203.0.113.0/24", "::/0", "2001:db8::1"];
                format!("{{ client_ip: {} }}", self.one_or_many(&nets)?)
            }
            6 => {
                let header = self.one_of(&["X-App-Version", "x-app-version"])?;
                let range = self.one_of(&[">=2.1.0 <3.0.0", ">=2, <3", "^2.5", "*", "<="])?;
                format!(
                    "{{ semver: {{ header: {}, range: {} }} }}",
                    quote(&header),
                    quote(&range)
                )
            }
            7 => format!(
                "{{ device: {} }}",
                self.one_or_many(&["mobile", "desktop", "bot", "MOBILE"])?
            ),
            8 => {
                let mut parts = Vec::new();
                if self.u.arbitrary()? {
                    let h = self.one_of(&["CF-IPCountry", "X-Country"])?;
                    parts.push(format!("header: {}", quote(&h)));
                }
                // Exactly one of `equals` and `in` is valid; neither or both rarely.
                let (equals, list) = match self.u.int_in_range(0..=15)? {
                    0 => (false, false),
                    1 => (true, true),
                    n => (n % 2 == 0, n % 2 == 1),
                };
                if equals {
                    parts.push(format!(
                        "equals: {}",
                        quote(&self.one_of(&["DE", "de", "AT"])?)
                    ));
                }
                if list {
                    parts.push(format!("in: {}", self.list(&["DE", "AT", "us"], 10)?));
                }
                format!("{{ country: {{ {} }} }}", parts.join(", "))
            }
            9 => {
                let times = [
                    "2026-12-01T08:00:00Z",
                    "2026-12-02T00:00:00+01:00",
                    "1970-01-01T00:00:00.001Z",
                    "9999-12-31T23:59:59Z",
                    "2026-12-01T08:00:00.5-23:59",
                ];
                let mut parts = Vec::new();
                if self.u.arbitrary()? {
                    parts.push(format!("from: {}", quote(&self.one_of(&times)?)));
                }
                if self.u.arbitrary()? {
                    parts.push(format!("until: {}", quote(&self.one_of(&times)?)));
                }
                format!("{{ time: {{ {} }} }}", parts.join(", "))
            }
            10 => {
                let name = self.mostly("staff", &["vip", "staff2", "Staff"])?;
                let key = self.one_of(&["header:X-User-Id", "cookie:uid", "query:u", "ip"])?;
                format!(
                    "{{ segment: {{ name: {}, key: {} }} }}",
                    quote(&name),
                    quote(&key)
                )
            }
            11 | 12 => {
                let kind = if self.u.arbitrary()? { "all" } else { "any" };
                let n = if self.u.ratio(1, 16)? {
                    0
                } else {
                    self.u.int_in_range(1..=3)?
                };
                let mut items = Vec::new();
                for _ in 0..n {
                    items.push(self.rule(depth + 1)?);
                }
                format!("{{ {kind}: [{}] }}", items.join(", "))
            }
            _ => format!("{{ not: {} }}", self.rule(depth + 1)?),
        })
    }

    /// `{ name: ..., <one matcher> }`, sometimes with no matcher or two.
    fn value_rule(&mut self, name: &str) -> Result<String> {
        let mut parts = vec![format!("name: {}", quote(name))];
        let count = match self.u.int_in_range(0..=31)? {
            0 => 0,
            1 => 2,
            _ => 1,
        };
        for _ in 0..count {
            let m = match self.u.int_in_range(0..=6)? {
                0 => format!("equals: {}", quote(&self.string()?)),
                1 => format!("in: {}", self.list(WORDS, 12)?),
                2 => format!("prefix: {}", quote(&self.string()?)),
                3 => format!("glob: {}", quote(&self.string()?)),
                4 => format!("regex: {}", quote(&self.string()?)),
                5 => format!("exists: {}", self.mostly_true()?),
                _ => format!("absent: {}", self.mostly_true()?),
            };
            parts.push(m);
        }
        Ok(format!("{{ {} }}", parts.join(", ")))
    }
}

/// `s` as a YAML double-quoted scalar: every character survives, control characters included.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if !yaml_printable(c) || ('\u{2028}'..='\u{2029}').contains(&c) => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// YAML's printable set (YAML 1.1 §5.1), which libyaml enforces even inside quotes.
fn yaml_printable(c: char) -> bool {
    matches!(c, '\u{20}'..='\u{7e}' | '\u{85}' | '\u{a0}'..='\u{d7ff}'
        | '\u{e000}'..='\u{fffd}' | '\u{10000}'..)
        && c != '\u{feff}'
}
