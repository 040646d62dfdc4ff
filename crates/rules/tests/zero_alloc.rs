//! `decide()` must not allocate: a counting global allocator (per thread, so tests can run in
//! parallel) checks the hot paths. Each case runs once first, because the regex engine
//! allocates its per-thread cache on first use.

#![allow(
    unsafe_code,
    reason = "a global allocator is an unsafe trait; this one only counts and delegates to the system's"
)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use common::{Req, keyed_table, sticky_value};
use graylane_rules::{KeyUsed, Reason, RoutingTable};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    // `try_with`: the allocator may run while a thread's locals are being torn down.
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: every call is forwarded unchanged to the system allocator; counting has no effect on
// the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Warms `table` up on `req`, checks the decision's reason, then asserts 100 more decisions
/// allocate nothing.
fn assert_no_alloc(table: &RoutingTable, req: &Req, reason: impl Fn(Reason) -> bool) {
    let view = req.view();
    let first = table.decide(&view).expect("a service matches");
    assert!(reason(first.reason), "unexpected reason {:?}", first.reason);
    let before = ALLOCATIONS.with(Cell::get);
    for _ in 0..100 {
        std::hint::black_box(table.decide(std::hint::black_box(&view)));
    }
    let allocations = ALLOCATIONS.with(Cell::get) - before;
    assert_eq!(
        allocations, 0,
        "decide() allocated {allocations} times in 100 calls"
    );
}

/// The allocator really counts (otherwise every other test here would pass vacuously).
#[test]
fn the_counter_counts() {
    let before = ALLOCATIONS.with(Cell::get);
    std::hint::black_box(vec![1u8; 10]);
    assert!(ALLOCATIONS.with(Cell::get) > before);
}

fn release(force: &str, bucket_by: &str) -> RoutingTable {
    keyed_table(&release_yaml(force, bucket_by))
}

fn release_yaml(force: &str, bucket_by: &str) -> String {
    format!(
        "segments:
  staff: {{ values: [u-1001, u-1002, u-1003] }}
services:
  - name: other
    match: {{ path_prefix: /other }}
    versions: {{ stable: {{ endpoints: [127.0.0.1:9001] }} }}
  - name: payment
    match: {{ path_prefix: /api/payment }}
    versions: {{ stable: {{ endpoints: [127.0.0.1:9001] }}, canary: {{ endpoints: [127.0.0.1:9002] }} }}
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      force: [{force}]
      bucket_by: \"{bucket_by}\"
      sticky: {{ cookie: graylane_lane }}
      steps: [{{ weight: 5 }}]
"
    )
}

fn req() -> Req {
    Req::get("/api/payment/charge")
}

fn forced(r: Reason) -> bool {
    r == Reason::Forced { rule: 0 }
}

#[test]
fn header_rule() {
    let t = release(
        "{ header: { name: x-release-phase, equals: canary } }",
        "header:x-user-id",
    );
    assert_no_alloc(&t, &req().header("x-release-phase", "canary"), forced);
    assert_no_alloc(&t, &req().header("x-user-id", "u-42"), |r| !forced(r));
}

#[test]
fn header_glob_and_regex_rules() {
    let t = release("{ header: { name: x-build, glob: \"rc-?-*\" } }", "ip");
    assert_no_alloc(&t, &req().header("x-build", "rc-1-eu"), forced);
    let t = release(
        "{ header: { name: x-build, regex: \"^rc-[0-9]+$\" } }",
        "ip",
    );
    assert_no_alloc(&t, &req().header("x-build", "rc-17"), forced);
}

#[test]
fn cookie_rule() {
    let t = release(
        "{ cookie: { name: beta, equals: \"yes\" } }",
        "header:x-user-id",
    );
    let r = req()
        .header("cookie", "session=abc; theme=dark")
        .header("cookie", "beta=yes");
    assert_no_alloc(&t, &r, forced);
    assert_no_alloc(&t, &req().header("cookie", "beta=no; x=1"), |r| !forced(r));
}

#[test]
fn segment_rule() {
    let t = release(
        "{ segment: { name: staff, key: \"header:x-user-id\" } }",
        "header:x-user-id",
    );
    assert_no_alloc(&t, &req().header("x-user-id", "u-1002"), forced);
    let t = release("{ segment: { name: staff, key: ip } }", "header:x-user-id");
    assert_no_alloc(&t, &req().ip("2001:db8::7"), |r| !forced(r));
}

#[test]
fn query_rule_with_decoding() {
    let t = release("{ query: { name: variant, equals: \"b c\" } }", "query:uid");
    assert_no_alloc(&t, &req().query("x=1&variant=b%20c"), forced);
    assert_no_alloc(&t, &req().query("uid=a%2Bb"), |r| !forced(r));
}

#[test]
fn bucketing_and_fallback() {
    let t = release(
        "{ header: { name: x-never, exists: true } }",
        "header:x-user-id",
    );
    assert_no_alloc(&t, &req().header("x-user-id", "user-17"), |r| {
        matches!(
            r,
            Reason::Bucket {
                key: KeyUsed::Configured,
                ..
            }
        )
    });
    let fallback = |r| {
        matches!(
            r,
            Reason::Bucket {
                key: KeyUsed::FallbackIp,
                ..
            }
        )
    };
    // Without cookie keys a sticky release falls back to the client IP, formatted on the stack.
    let unkeyed = common::table(&release_yaml(
        "{ header: { name: x-never, exists: true } }",
        "header:x-user-id",
    ));
    assert_no_alloc(&unkeyed, &req().ip("203.0.113.7"), fallback);
    assert_no_alloc(
        &unkeyed,
        &req().ip("2001:db8:85a3::8a2e:370:7334"),
        fallback,
    );
    let t = release("{ header: { name: x-never, exists: true } }", "cookie:uid");
    assert_no_alloc(&t, &req().header("cookie", "uid=\"abc\""), |r| {
        matches!(
            r,
            Reason::Bucket {
                key: KeyUsed::Configured,
                ..
            }
        )
    });
}

#[test]
fn sticky_cookie_verification_and_lane() {
    let t = release(
        "{ header: { name: x-never, exists: true } }",
        "header:x-user-id",
    );
    let cookie = format!("session=abc; graylane_lane={}", sticky_value(&t, 1, 1_234));
    assert_no_alloc(&t, &req().header("cookie", &cookie), |r| {
        matches!(r, Reason::Sticky { bucket: 1_234, .. })
    });
    // A forged cookie costs a failed verification, still on the stack.
    let forged = "graylane_lane=v1.1234.00000000000000000000000000000000";
    assert_no_alloc(&t, &req().header("cookie", forged).random(7), |r| {
        matches!(
            r,
            Reason::Bucket {
                key: KeyUsed::Random,
                ..
            }
        )
    });
    assert_no_alloc(&t, &req().lane("canary"), |r| r == Reason::Lane);
    assert_no_alloc(&t, &Req::get("/other"), |r| r == Reason::NoRelease);
}

#[test]
fn signing_a_sticky_cookie() {
    let t = release(
        "{ header: { name: x-never, exists: true } }",
        "header:x-user-id",
    );
    std::hint::black_box(t.sticky_value(1, 5));
    let before = ALLOCATIONS.with(Cell::get);
    for b in 0..100 {
        std::hint::black_box(t.sticky_value(1, std::hint::black_box(b)));
    }
    assert_eq!(ALLOCATIONS.with(Cell::get) - before, 0);
}

#[test]
fn country_rule_with_a_geoip_database() {
    let dir = tempfile::tempdir().unwrap();
    graylane_testing::geoip::write_country_db(
        &dir.path().join("c.mmdb"),
        &[("198.51.100.0/24", "DE")],
    )
    .unwrap();
    let yaml = format!(
        "listeners: [{{ bind: 127.0.0.1:8080 }}]\ngeoip: {{ database: c.mmdb }}\n{}",
        release_yaml("{ country: { equals: DE } }", "header:x-user-id")
    );
    let config = graylane_config::load_str(&yaml, "t.yaml", dir.path()).unwrap();
    let t = RoutingTable::compile(&config);
    assert_no_alloc(&t, &req(), forced);
    let mut elsewhere = req().header("cf-ipcountry", "FR");
    elsewhere.ip = "192.0.2.1".parse().unwrap();
    assert_no_alloc(&t, &elsewhere, |r| !forced(r));
}

#[test]
fn ten_constraints() {
    let t = release(
        "{ all: [
            { header: { name: x-release-phase, equals: canary } },
            { cookie: { name: beta, prefix: y } },
            { query: { name: v, in: [a, b] } },
            { path: { prefix: /api/ } },
            { method: [GET, POST] },
            { client_ip: [10.0.0.0/8] },
            { semver: { header: x-app-version, range: \">=2.1.0 <3.0.0\" } },
            { device: mobile },
            { country: { in: [US, CA] } },
            { time: { from: \"2020-01-01T00:00:00Z\" } } ] }",
        "header:x-user-id",
    );
    let r = req()
        .header("x-release-phase", "canary")
        .header("cookie", "beta=yes")
        .query("v=b")
        .ip("10.2.3.4")
        .header("x-app-version", "v2.4.0")
        .header(
            "user-agent",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0) Mobile/15E148",
        )
        .header("cf-ipcountry", "us");
    assert_no_alloc(&t, &r, forced);
}

#[test]
fn thousand_service_table() {
    let mut body = String::from("services:\n");
    for i in 0..1000 {
        body.push_str(&format!(
            "  - name: s{i}\n    match: {{ path_prefix: /s/{i}/ }}\n    versions: {{ stable: {{ endpoints: [127.0.0.1:9001] }} }}\n"
        ));
    }
    let t = common::table(&body);
    assert_no_alloc(&t, &Req::get("/s/777/x"), |r| r == Reason::NoRelease);
    let miss = Req::get("/nowhere");
    assert!(t.decide(&miss.view()).is_none());
}
