//! Every rule kind, positive and negative, through the public API: a release whose only force
//! rule is the one under test, at weight 0, sends a request to the candidate iff the rule
//! matches.

mod common;

use common::{Req, decide, force_table};
use graylane_rules::Reason;
use http::Method;

/// Asserts `rule` matches every request in `yes` and none in `no`.
fn check(rule: &str, yes: &[Req], no: &[Req]) {
    let table = force_table(rule);
    for (i, req) in yes.iter().enumerate() {
        let d = decide(&table, req);
        assert_eq!(
            d.reason,
            Reason::Forced { rule: 0 },
            "{rule}: yes[{i}] did not match"
        );
        assert_eq!(table.version_name(d.service, d.version), "canary");
    }
    for (i, req) in no.iter().enumerate() {
        let d = decide(&table, req);
        assert_ne!(
            d.reason,
            Reason::Forced { rule: 0 },
            "{rule}: no[{i}] matched"
        );
        assert_eq!(table.version_name(d.service, d.version), "stable");
    }
}

fn get() -> Req {
    Req::get("/orders/17")
}

#[test]
fn header_equals() {
    check(
        "{ header: { name: X-Release-Phase, equals: canary } }",
        &[
            get().header("x-release-phase", "canary"),
            get().header("X-RELEASE-PHASE", "canary"),
            // Sent twice: any value may match.
            get()
                .header("x-release-phase", "stable")
                .header("x-release-phase", "canary"),
        ],
        &[
            get(),
            get().header("x-release-phase", "Canary"),
            get().header("x-release-phase", "canary2"),
            get().header("x-release-phase", ""),
            get().header("x-other", "canary"),
        ],
    );
}

#[test]
fn header_in() {
    check(
        "{ header: { name: x-team, in: [payments, risk] } }",
        &[
            get().header("x-team", "payments"),
            get().header("x-team", "risk"),
        ],
        &[get().header("x-team", "search"), get()],
    );
}

#[test]
fn header_in_long_list() {
    let list: Vec<String> = (0..50).map(|i| format!("tenant-{i}")).collect();
    check(
        &format!(
            "{{ header: {{ name: x-tenant, in: [{}] }} }}",
            list.join(", ")
        ),
        &[
            get().header("x-tenant", "tenant-0"),
            get().header("x-tenant", "tenant-49"),
        ],
        &[
            get().header("x-tenant", "tenant-50"),
            get().header("x-tenant", "tenant-"),
        ],
    );
}

#[test]
fn header_prefix() {
    check(
        "{ header: { name: x-build, prefix: rc- } }",
        &[
            get().header("x-build", "rc-1"),
            get().header("x-build", "rc-"),
        ],
        &[
            get().header("x-build", "rc"),
            get().header("x-build", "x-rc-1"),
            get(),
        ],
    );
}

#[test]
fn header_glob() {
    check(
        "{ header: { name: x-release-phase, glob: \"canary-*\" } }",
        &[
            get().header("x-release-phase", "canary-"),
            get().header("x-release-phase", "canary-eu-1"),
        ],
        &[
            get().header("x-release-phase", "canary"),
            get().header("x-release-phase", "pre-canary-1"),
            get(),
        ],
    );
    check(
        "{ header: { name: x-build, glob: \"v?.*-rc*\" } }",
        &[
            get().header("x-build", "v2.1-rc3"),
            get().header("x-build", "v9.-rc"),
        ],
        &[
            get().header("x-build", "v21.0-rc1"),
            get().header("x-build", "v2.1"),
        ],
    );
}

#[test]
fn header_regex() {
    check(
        r#"{ header: { name: x-user-id, regex: "^u-[0-9]{4}$" } }"#,
        &[get().header("x-user-id", "u-1234")],
        &[
            get().header("x-user-id", "u-12345"),
            get().header("x-user-id", "x-1234"),
            get(),
        ],
    );
}

#[test]
fn header_exists_and_absent() {
    check(
        "{ header: { name: x-debug, exists: true } }",
        &[get().header("x-debug", "1"), get().header("x-debug", "")],
        &[get(), get().header("x-debugging", "1")],
    );
    check(
        "{ header: { name: x-debug, absent: true } }",
        &[get(), get().header("x-debugging", "1")],
        &[get().header("x-debug", "1"), get().header("x-debug", "")],
    );
}

#[test]
fn non_utf8_header_values_never_match_a_value_test() {
    let bad: &[u8] = b"canary\xff";
    for rule in [
        "{ header: { name: x-phase, equals: \"canary\\xff\" } }",
        "{ header: { name: x-phase, prefix: canary } }",
        "{ header: { name: x-phase, glob: \"*\" } }",
        "{ header: { name: x-phase, regex: \".*\" } }",
    ] {
        check(rule, &[], &[get().header_bytes("x-phase", bad)]);
    }
    // Presence is still presence.
    check(
        "{ header: { name: x-phase, exists: true } }",
        &[get().header_bytes("x-phase", bad)],
        &[],
    );
}

#[test]
fn utf8_header_values_are_compared_as_text() {
    check(
        "{ header: { name: x-city, equals: Zürich } }",
        &[get().header_bytes("x-city", "Zürich".as_bytes())],
        &[get().header("x-city", "Zurich")],
    );
}

#[test]
fn cookie_values() {
    check(
        "{ cookie: { name: beta, equals: \"yes\" } }",
        &[
            get().header("cookie", "beta=yes"),
            get().header("cookie", "a=1; beta=yes; b=2"),
            get().header("cookie", "a=1").header("cookie", "beta=yes"),
            get().header("cookie", "beta=\"yes\""),
            get().header("cookie", "  beta = yes ;"),
            get().header("cookie", "beta=no; beta=yes"),
        ],
        &[
            get(),
            get().header("cookie", "beta=no"),
            get().header("cookie", "notbeta=yes"),
            get().header("cookie", "beta"),
            get().header("x-cookie", "beta=yes"),
            get().header("cookie", "a=beta=yes"),
        ],
    );
}

#[test]
fn cookie_regex_glob_exists_absent() {
    check(
        "{ cookie: { name: session, regex: \"^s[0-9]+$\" } }",
        &[get().header("cookie", "session=s42")],
        &[get().header("cookie", "session=x42"), get()],
    );
    check(
        "{ cookie: { name: group, glob: \"*-beta\" } }",
        &[get().header("cookie", "group=eu-beta")],
        &[get().header("cookie", "group=eu-beta2")],
    );
    check(
        "{ cookie: { name: optin, exists: true } }",
        &[
            get().header("cookie", "optin="),
            get().header("cookie", "x=1; optin=1"),
        ],
        &[get(), get().header("cookie", "optins=1")],
    );
    check(
        "{ cookie: { name: optout, absent: true } }",
        &[get(), get().header("cookie", "x=1")],
        &[get().header("cookie", "optout=1")],
    );
}

#[test]
fn garbage_cookies_do_not_panic_or_match() {
    let garbage: [&[u8]; 8] = [
        b"",
        b";;;;",
        b"=",
        b"beta",
        b"===;beta;=yes",
        b"beta=\xff\xfe",
        b"\x80\x81=yes",
        b"beta=\"yes",
    ];
    let reqs: Vec<Req> = garbage
        .iter()
        .map(|g| get().header_bytes("cookie", g))
        .collect();
    check("{ cookie: { name: beta, equals: \"yes\" } }", &[], &reqs);
    check("{ cookie: { name: beta, regex: \".\" } }", &[], &reqs[..6]);
}

#[test]
fn query_parameters() {
    check(
        "{ query: { name: variant, equals: b } }",
        &[
            get().query("variant=b"),
            get().query("x=1&variant=b"),
            get().query("variant=a&variant=b"),
            get().query("variant=%62"),
        ],
        &[
            get(),
            get().query(""),
            get().query("variant=bb"),
            get().query("variants=b"),
            get().query("variant"),
            get().query("x=variant=b"),
        ],
    );
}

#[test]
fn query_values_are_decoded_names_are_raw() {
    check(
        "{ query: { name: q, equals: \"a b/c\" } }",
        &[get().query("q=a+b%2Fc"), get().query("q=a%20b/c")],
        &[get().query("q=a+b%2fx"), get().query("%71=a+b%2Fc")],
    );
    // A stray `%` stays literal; a decoded value that is not UTF-8 never matches.
    check(
        "{ query: { name: p, prefix: \"100%\" } }",
        &[get().query("p=100%"), get().query("p=100%zz")],
        &[get().query("p=%ff100%")],
    );
}

#[test]
fn query_exists_absent_glob() {
    check(
        "{ query: { name: debug, exists: true } }",
        &[
            get().query("debug"),
            get().query("debug="),
            get().query("a=1&debug=0"),
        ],
        &[get(), get().query("debugx=1")],
    );
    check(
        "{ query: { name: debug, absent: true } }",
        &[get(), get().query("a=1")],
        &[get().query("debug")],
    );
    check(
        "{ query: { name: ref, glob: \"*campaign*\" } }",
        &[get().query("ref=spring-campaign-7")],
        &[get().query("ref=spring")],
    );
}

#[test]
fn path_rules() {
    check(
        "{ path: { equals: /orders/17 } }",
        &[Req::get("/orders/17")],
        &[Req::get("/orders/17/"), Req::get("/orders/1")],
    );
    check(
        "{ path: { prefix: /orders/ } }",
        &[Req::get("/orders/17"), Req::get("/orders/")],
        &[Req::get("/orders"), Req::get("/v2/orders/1")],
    );
    check(
        "{ path: { glob: \"/orders/*/items\" } }",
        &[Req::get("/orders/17/items"), Req::get("/orders//items")],
        &[Req::get("/orders/17/items/3"), Req::get("/orders/items")],
    );
    check(
        "{ path: { regex: \"^/orders/[0-9]+$\" } }",
        &[Req::get("/orders/17")],
        &[Req::get("/orders/x"), Req::get("/orders/17/items")],
    );
}

#[test]
fn method_rule() {
    check(
        "{ method: [POST, put] }",
        &[get().method(Method::POST), get().method(Method::PUT)],
        &[get(), get().method(Method::DELETE)],
    );
    check("{ method: HEAD }", &[get().method(Method::HEAD)], &[get()]);
}

#[test]
fn client_ip_rule() {
    check(
        "{ client_ip: [10.0.0.0/8, \"2001:db8::/32\", 192.0.2.7] }",
        &[
            get().ip("10.1.2.3"),
            get().ip("2001:db8:1::5"),
            get().ip("192.0.2.7"),
            // What a dual-stack listener reports for an IPv4 client.
            get().ip("::ffff:10.9.9.9"),
        ],
        &[
            get().ip("11.0.0.1"),
            get().ip("2001:db9::1"),
            get().ip("192.0.2.8"),
            get().ip("::1"),
        ],
    );
}

#[test]
fn semver_rule() {
    check(
        "{ semver: { header: X-App-Version, range: \">=2.1.0 <3.0.0\" } }",
        &[
            get().header("x-app-version", "2.1.0"),
            get().header("x-app-version", "v2.9.13"),
            get().header("x-app-version", " 2.5.1 "),
            get()
                .header("x-app-version", "garbage")
                .header("x-app-version", "2.2.0"),
        ],
        &[
            get(),
            get().header("x-app-version", "3.0.0"),
            get().header("x-app-version", "2.0.9"),
            get().header("x-app-version", "2.1"),
            get().header("x-app-version", "banana"),
            get().header("x-app-version", "vv2.1.0"),
            get().header_bytes("x-app-version", b"2.1.0\xff"),
        ],
    );
}

const IPHONE: &str =
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148";
const ANDROID: &str =
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/120.0 Mobile Safari/537.36";
const FIREFOX: &str =
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0";
const GOOGLEBOT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";

#[test]
fn device_rule() {
    let ua = |s: &str| get().header("user-agent", s);
    check(
        "{ device: mobile }",
        &[ua(IPHONE), ua(ANDROID)],
        &[ua(FIREFOX), ua(GOOGLEBOT), get()],
    );
    check(
        "{ device: desktop }",
        &[ua(FIREFOX), ua("curl/8.5.0")],
        &[
            ua(IPHONE),
            ua(GOOGLEBOT),
            get(),
            get().header_bytes("user-agent", b"Firefox\xff"),
        ],
    );
    check(
        "{ device: [bot] }",
        &[
            ua(GOOGLEBOT),
            ua("Mozilla/5.0 HeadlessChrome/120"),
            ua("some-CRAWLER/1.0"),
        ],
        &[ua(FIREFOX), ua(IPHONE), get()],
    );
    check(
        "{ device: [mobile, bot] }",
        &[ua(IPHONE), ua(GOOGLEBOT)],
        &[ua(FIREFOX), get()],
    );
}

#[test]
fn country_rule() {
    check(
        "{ country: { in: [us, CA] } }",
        &[
            get().header("cf-ipcountry", "US"),
            get().header("cf-ipcountry", "ca"),
            get().header("cf-ipcountry", " us "),
        ],
        &[
            get(),
            get().header("cf-ipcountry", "DE"),
            get().header("x-country", "US"),
        ],
    );
    check(
        "{ country: { header: X-Country, equals: de } }",
        &[get().header("x-country", "DE")],
        &[
            get().header("cf-ipcountry", "DE"),
            get().header("x-country", "DEU"),
        ],
    );
}

#[test]
fn time_rule() {
    // 2026-12-01T08:00:00Z and 2026-12-02T08:00:00Z.
    let (from, until) = (1_796_112_000_000, 1_796_198_400_000);
    check(
        "{ time: { from: \"2026-12-01T08:00:00Z\", until: \"2026-12-02T08:00:00Z\" } }",
        &[get().now(from), get().now(until - 1)],
        &[get().now(from - 1), get().now(until)],
    );
    check(
        "{ time: { from: \"2026-12-01T08:00:00Z\" } }",
        &[get().now(from), get().now(i64::MAX)],
        &[get().now(from - 1)],
    );
    check(
        "{ time: { until: \"2026-12-01T08:00:00Z\" } }",
        &[get().now(from - 1), get().now(i64::MIN)],
        &[get().now(from)],
    );
}

#[test]
fn segment_rule_by_header_cookie_query_and_ip() {
    check(
        "{ segment: { name: staff, key: \"header:X-User-Id\" } }",
        &[
            get().header("x-user-id", "u-1001"),
            get().header("x-user-id", "u-1002"),
        ],
        &[
            get(),
            get().header("x-user-id", "u-1003"),
            get().header("x-user-id", "U-1001"),
            get().header("x-user-id", ""),
            get().header_bytes("x-user-id", b"u-1001\xff"),
            get().header("cookie", "uid=u-1001"),
        ],
    );
    check(
        "{ segment: { name: staff, key: \"cookie:uid\" } }",
        &[get().header("cookie", "a=1; uid=u-1001")],
        &[get(), get().header("cookie", "uid=u-9")],
    );
    check(
        "{ segment: { name: staff, key: \"query:user\" } }",
        &[get().query("user=u-1002"), get().query("user=u%2D1002")],
        &[get(), get().query("user=u-1")],
    );
    let table = common::table(
        "segments:
  office: { values: [203.0.113.7, \"2001:db8::1\"] }
services:
  - name: svc
    versions: { stable: { endpoints: [127.0.0.1:9001] }, canary: { endpoints: [127.0.0.1:9002] } }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      force: [{ segment: { name: office, key: ip } }]
      steps: [{ weight: 0 }]
",
    );
    for (ip, forced) in [
        ("203.0.113.7", true),
        ("::ffff:203.0.113.7", true),
        ("2001:db8::1", true),
        ("2001:db8::2", false),
        ("203.0.113.8", false),
    ] {
        let d = decide(&table, &get().ip(ip));
        assert_eq!(d.reason == Reason::Forced { rule: 0 }, forced, "{ip}");
    }
}

#[test]
fn all_any_not() {
    let canary = |r: Req| r.header("x-phase", "canary");
    let mobile = |r: Req| r.header("user-agent", IPHONE);
    check(
        "{ all: [{ header: { name: x-phase, equals: canary } }, { device: mobile }] }",
        &[mobile(canary(get()))],
        &[canary(get()), mobile(get()), get()],
    );
    check(
        "{ any: [{ header: { name: x-phase, equals: canary } }, { device: mobile }] }",
        &[mobile(canary(get())), canary(get()), mobile(get())],
        &[get()],
    );
    check(
        "{ not: { header: { name: x-phase, equals: canary } } }",
        &[get(), get().header("x-phase", "stable")],
        &[canary(get())],
    );
    check(
        "{ all: [{ any: [{ method: POST }, { query: { name: force, exists: true } }] }, { not: { client_ip: 10.0.0.0/8 } }] }",
        &[get().method(Method::POST), get().query("force")],
        &[get(), get().method(Method::POST).ip("10.0.0.1")],
    );
}

#[test]
fn first_matching_force_rule_is_reported() {
    let table = common::table(
        "services:
  - name: svc
    versions: { stable: { endpoints: [127.0.0.1:9001] }, canary: { endpoints: [127.0.0.1:9002] } }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      force:
        - { header: { name: x-a, exists: true } }
        - { header: { name: x-b, exists: true } }
      steps: [{ weight: 0 }]
",
    );
    let both = get().header("x-a", "1").header("x-b", "1");
    assert_eq!(decide(&table, &both).reason, Reason::Forced { rule: 0 });
    let second = get().header("x-b", "1");
    assert_eq!(decide(&table, &second).reason, Reason::Forced { rule: 1 });
}
