//! A segment whose members are kept current outside the configuration (a Redis set): the
//! compiled table sees every change at once, without being compiled again.

mod common;

use std::sync::{Arc, RwLock};

use common::{Req, config, decide};
use graylane_rules::{LiveSegment, RoutingTable};

#[derive(Debug, Default)]
struct Mirror(RwLock<Vec<String>>);

impl LiveSegment for Mirror {
    fn contains(&self, member: &str) -> bool {
        self.0.read().unwrap().iter().any(|m| m == member)
    }
}

const BODY: &str = "segments:
  beta: { source: redis, url: \"redis://127.0.0.1:6379\", key: graylane:beta }
services:
  - name: svc
    versions:
      stable: { endpoints: [127.0.0.1:9001] }
      canary: { endpoints: [127.0.0.1:9002] }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      force:
        - segment: { name: beta, key: \"header:X-User-Id\" }
      steps: [{ weight: 0 }]
";

fn version(t: &RoutingTable, user: &str) -> String {
    let d = decide(t, &Req::get("/").header("x-user-id", user));
    t.version_name(d.service, d.version).to_string()
}

#[test]
fn a_live_segment_is_read_on_every_request() {
    let mirror = Arc::new(Mirror::default());
    let live: Arc<dyn LiveSegment> = mirror.clone();
    let t = RoutingTable::compile_with(&config(BODY), &|name| {
        (name == "beta").then(|| Arc::clone(&live))
    });
    assert_eq!(version(&t, "u-7"), "stable");
    mirror.0.write().unwrap().push("u-7".to_string());
    assert_eq!(
        version(&t, "u-7"),
        "canary",
        "a member added after compiling counts"
    );
    mirror.0.write().unwrap().clear();
    assert_eq!(version(&t, "u-7"), "stable");
}

#[test]
fn without_its_mirror_a_redis_segment_is_empty() {
    let t = RoutingTable::compile(&config(BODY));
    assert_eq!(version(&t, "u-7"), "stable");
}
