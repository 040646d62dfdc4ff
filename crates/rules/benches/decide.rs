//! One routing decision under different rule shapes. Goals: ≤ 100 ns for a header rule,
//! ≤ 1 µs for a rule of ten constraints.
//!
//! `cargo bench -p graylane-rules -- --warm-up-time 1 --measurement-time 3`

#[path = "../tests/common/mod.rs"]
mod common;

use common::{Req, table};
use criterion::{Criterion, criterion_group, criterion_main};
use graylane_rules::{Reason, RoutingTable};
use std::hint::black_box;

fn release(force: &str, segments: &str) -> RoutingTable {
    table(&format!(
        "{segments}
services:
  - name: payment
    match: {{ path_prefix: /api/payment }}
    versions: {{ stable: {{ endpoints: [127.0.0.1:9001] }}, canary: {{ endpoints: [127.0.0.1:9002] }} }}
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      force: [{force}]
      bucket_by: \"header:x-user-id\"
      sticky: {{ cookie: graylane_lane }}
      steps: [{{ weight: 5 }}]
"
    ))
}

/// A request with the headers a browser typically sends, so header lookups are not trivially
/// cheap.
fn browser_request() -> Req {
    Req::get("/api/payment/charge")
        .host("shop.example.com")
        .header("accept", "application/json")
        .header("accept-language", "en-US,en;q=0.9")
        .header("accept-encoding", "gzip, deflate, br")
        .header("cookie", "session=9f8e7d6c5b4a; theme=dark; beta=yes")
        .header("x-user-id", "u-000777")
        .header(
            "user-agent",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
        )
}

fn bench(c: &mut Criterion, name: &str, table: &RoutingTable, req: &Req, expect: Reason) {
    let view = req.view();
    let decision = table.decide(&view).expect("a service matches");
    assert_eq!(decision.reason, expect, "{name}");
    c.bench_function(name, |b| b.iter(|| table.decide(black_box(&view))));
}

fn decide(c: &mut Criterion) {
    let forced = Reason::Forced { rule: 0 };

    let t = release("{ header: { name: x-release-phase, equals: canary } }", "");
    let req = browser_request().header("x-release-phase", "canary");
    bench(c, "header_rule", &t, &req, forced);

    let t = release(
        "{ all: [
            { header: { name: x-release-phase, equals: canary } },
            { cookie: { name: beta, equals: \"yes\" } },
            { query: { name: v, in: [a, b] } },
            { path: { prefix: /api/ } },
            { method: [GET, POST] },
            { client_ip: [10.0.0.0/8] },
            { semver: { header: x-app-version, range: \">=2.1.0 <3.0.0\" } },
            { device: mobile },
            { country: { in: [US, CA] } },
            { time: { from: \"2020-01-01T00:00:00Z\" } } ] }",
        "",
    );
    let req = browser_request()
        .header("x-release-phase", "canary")
        .header("x-app-version", "2.4.1")
        .header("cf-ipcountry", "US")
        .query("v=b")
        .ip("10.2.3.4");
    bench(c, "ten_constraints", &t, &req, forced);

    let members: Vec<String> = (0..1000).map(|i| format!("u-{i:06}")).collect();
    let segments = format!("segments:\n  staff: {{ values: [{}] }}", members.join(", "));
    let t = release(
        "{ segment: { name: staff, key: \"header:x-user-id\" } }",
        &segments,
    );
    bench(c, "segment_1000_members", &t, &browser_request(), forced);

    let t = release("{ header: { name: x-release-phase, equals: canary } }", "");
    let bucketed = t.decide(&browser_request().view()).map(|d| d.reason);
    let Some(reason @ Reason::Bucket { .. }) = bucketed else {
        panic!("expected bucketing, got {bucketed:?}")
    };
    bench(c, "bucketing", &t, &browser_request(), reason);

    let mut body = String::from("services:\n");
    for i in 0..1000 {
        // Prefixes of several lengths and depths, so the index probes more than one length.
        let prefix = match i % 4 {
            0 => format!("/svc-{i}"),
            1 => format!("/team-{}/svc-{i}", i % 7),
            2 => format!("/api/v{}/svc-{i}/", i % 3),
            _ => format!("/org/{}/team/{}/svc-{i}", i % 5, i % 11),
        };
        body.push_str(&format!(
            "  - name: s{i}\n    match: {{ path_prefix: \"{prefix}\" }}\n    versions: {{ stable: {{ endpoints: [127.0.0.1:9001] }} }}\n"
        ));
    }
    let t = table(&body);
    let req = Req::get("/org/2/team/8/svc-987/orders/17").host("shop.example.com");
    bench(c, "services_1000", &t, &req, Reason::NoRelease);
}

criterion_group!(benches, decide);
criterion_main!(benches);
