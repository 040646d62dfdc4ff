//! The demo's story, told once the gateway is up: synthetic users send light traffic through
//! the gateway, and the payment release is steered through the admin API as a person would
//! steer it. Its canary starts broken, the analysis rolls it back, the demo "deploys a fix"
//! and retries the release (`POST /api/v1/releases/payment/retry`, what `graylane retry
//! payment` sends), and the healthy canary is promoted step by step to every user. Each
//! transition is printed as it happens.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::upstreams::Faults;

/// The service whose release the story follows.
const SERVICE: &str = "payment";
/// Distinct users the traffic comes from (`X-User-Id: u-1` to `u-2000`), so bucketing spreads
/// them over the versions by the weight.
const USERS: u64 = 2000;
/// Requests per second at speed 1.
const RATE: u32 = 40;
/// How long the demo waits for its own admin API to answer.
const ADMIN_WAIT: Duration = Duration::from_secs(30);
/// How often the release is read back.
const POLL: Duration = Duration::from_millis(250);
/// Upper bound on one request of the demo's own.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest transition reason printed whole.
const REASON_CHARS: usize = 160;

/// The story's timings at a speed: speed 2 tells it twice as fast, with twice the traffic,
/// so the analysis sees as many requests per interval as at speed 1.
#[derive(Clone, Copy)]
pub(super) struct Pace {
    speed: u32,
}

impl Pace {
    pub(super) fn new(speed: u32) -> Pace {
        Pace { speed }
    }

    /// Requests per second the synthetic users send.
    pub(super) fn rate(self) -> u32 {
        RATE * self.speed
    }

    /// The analysis's interval.
    pub(super) fn interval(self) -> Duration {
        Duration::from_secs(5) / self.speed
    }

    /// Each step's pause.
    pub(super) fn pause(self) -> Duration {
        Duration::from_secs(10) / self.speed
    }

    /// How long the rolled-back release stays rolled back before the demo retries it, so the
    /// dashboard shows the rollback for a while.
    pub(super) fn fix_after(self) -> Duration {
        Duration::from_secs(10) / self.speed
    }
}

/// What the story needs to reach the gateway and steer the release.
pub(super) struct Story {
    pub(super) gateway: SocketAddr,
    pub(super) admin: SocketAddr,
    pub(super) token: String,
    pub(super) faults: Arc<Faults>,
    pub(super) pace: Pace,
}

/// Tells the story on a thread of its own.
pub(super) fn start(story: Story) -> std::io::Result<()> {
    crate::runtime::thread("graylane-demo-story", move || story.tell()).map(|_| ())
}

/// Where the release is in the story.
#[derive(PartialEq)]
enum Act {
    /// The broken canary, until the analysis rolls it back.
    Broken,
    /// The fixed canary, retried, until it completes.
    Fixed,
}

impl Story {
    fn tell(self) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(REQUEST_TIMEOUT))
            .build()
            .into();
        let admin = Admin {
            agent: agent.clone(),
            base: format!("http://{}/api/v1/releases/{SERVICE}", self.admin),
            bearer: format!("Bearer {}", self.token),
        };
        let waited = Instant::now();
        while admin.release().is_none() {
            if waited.elapsed() > ADMIN_WAIT {
                eprintln!(
                    "graylane demo: the admin API at {} does not answer; no traffic is sent",
                    self.admin
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Registered once the gateway has its own signal handlers, so a Ctrl-C always reaches it.
        let stop = match stop_on_signal() {
            Ok(stop) => stop,
            Err(e) => {
                eprintln!("graylane demo: cannot watch for Ctrl-C ({e}); no traffic is sent");
                return;
            }
        };
        let started = Instant::now();
        let traffic = Traffic {
            agent,
            url: format!("http://{}/api/payment/orders", self.gateway),
            rate: self.pace.rate(),
            stop: Arc::clone(&stop),
        };
        if let Err(e) = crate::runtime::thread("graylane-demo-traffic", move || traffic.send()) {
            eprintln!("graylane demo: cannot start the traffic: {e}");
            return;
        }
        say(
            started,
            &format!(
                "traffic started: {} requests a second from {USERS} users; the canary answers half of its payment requests with 503",
                self.pace.rate()
            ),
        );
        let mut act = Act::Broken;
        let mut printed = Printed::default();
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(POLL);
            let Some(release) = admin.release() else {
                continue;
            };
            let transitions = release["transitions"]
                .as_array()
                .map_or(&[][..], Vec::as_slice);
            for t in printed.fresh(transitions) {
                say(started, &transition(t, &release));
            }
            match (&act, release["state"].as_str()) {
                (Act::Broken, Some("aborted")) => {
                    let who = match transitions.last().and_then(|t| t["actor"].as_str()) {
                        Some("analysis") | None => {
                            "the analysis rolled the release back".to_owned()
                        }
                        Some(actor) => format!("{actor} aborted the release"),
                    };
                    say(
                        started,
                        &format!(
                            "{who}: every user is on stable; a fixed canary is deployed in {}s",
                            super::seconds(self.pace.fix_after())
                        ),
                    );
                    std::thread::sleep(self.pace.fix_after());
                    self.faults.fix();
                    match admin.retry() {
                        Ok(()) => say(
                            started,
                            "the fixed canary is deployed; the demo retries the release (POST /api/v1/releases/payment/retry, as `graylane retry payment` does)",
                        ),
                        Err(e) => say(started, &format!("the retry was refused: {e}")),
                    }
                    act = Act::Fixed;
                }
                (_, Some("completed")) => {
                    say(
                        started,
                        "the release completed: the canary is the stable version and has every user. The traffic goes on; Ctrl-C to stop.",
                    );
                    return;
                }
                _ => {}
            }
        }
    }
}

/// The admin API, as the demo's token reaches it.
struct Admin {
    agent: ureq::Agent,
    /// The release's URL.
    base: String,
    bearer: String,
}

impl Admin {
    /// The release as `GET /api/v1/releases/payment` answers it, if it answers.
    fn release(&self) -> Option<Value> {
        let mut response = self
            .agent
            .get(&self.base)
            .header("authorization", &self.bearer)
            .call()
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.body_mut().read_json().ok()
    }

    /// `POST /api/v1/releases/payment/retry`, with a reason for the audit log.
    fn retry(&self) -> Result<(), String> {
        let mut response = self
            .agent
            .post(format!("{}/retry", self.base))
            .header("authorization", &self.bearer)
            .send_json(serde_json::json!({ "reason": "the demo deployed a fixed canary" }))
            .map_err(|e| e.to_string())?;
        if response.status().is_success() {
            return Ok(());
        }
        let body: Value = response.body_mut().read_json().unwrap_or(Value::Null);
        Err(body["error"]
            .as_str()
            .map_or_else(|| response.status().to_string(), str::to_owned))
    }
}

/// Which transitions were printed, by time: the release lists its latest ones only, so their
/// count does not tell.
#[derive(Default)]
struct Printed {
    /// The newest printed transition's time.
    at_ms: i64,
    /// How many of the printed transitions have that time.
    at_same: usize,
}

impl Printed {
    /// The transitions of `all` (oldest first) not printed yet, now counted as printed.
    fn fresh<'a>(&mut self, all: &'a [Value]) -> Vec<&'a Value> {
        let mut fresh = Vec::new();
        let mut same = 0;
        for t in all {
            let at_ms = t["at_ms"].as_i64().unwrap_or(0);
            if at_ms == self.at_ms {
                same += 1;
                if same > self.at_same {
                    fresh.push(t);
                    self.at_same = same;
                }
            } else if at_ms > self.at_ms {
                fresh.push(t);
                self.at_ms = at_ms;
                self.at_same = 1;
                same = 1;
            }
        }
        fresh
    }
}

/// A transition as one line: who did what, the state and weight it left, and why.
fn transition(t: &Value, release: &Value) -> String {
    let reason = t["reason"].as_str().unwrap_or("");
    let reason = match reason.char_indices().nth(REASON_CHARS) {
        Some((cut, _)) => format!("{}…", &reason[..cut]),
        None => reason.to_owned(),
    };
    let step = t["step"].as_u64().unwrap_or(0) + 1;
    format!(
        "{} by {}: {} → {}, step {step}/{}, canary {}%{}{reason}",
        t["action"].as_str().unwrap_or("?"),
        t["actor"].as_str().unwrap_or("?"),
        t["from"].as_str().unwrap_or("?"),
        t["to"].as_str().unwrap_or("?"),
        release["steps"].as_u64().unwrap_or(0),
        t["weight"].as_f64().unwrap_or(0.0),
        if reason.is_empty() { "" } else { ": " },
    )
}

/// Prints `line` stamped with the time since the traffic started.
fn say(started: Instant, line: &str) {
    let s = started.elapsed().as_secs();
    println!("[{}:{:02}] {line}", s / 60, s % 60);
}

/// The synthetic users: one request at a time at a bounded rate, each from a user picked at
/// random.
struct Traffic {
    agent: ureq::Agent,
    url: String,
    rate: u32,
    stop: Arc<AtomicBool>,
}

impl Traffic {
    fn send(self) {
        let period = Duration::from_secs(1) / self.rate.max(1);
        let mut random = Random::seeded();
        let mut next = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            let user = format!("u-{}", random.next() % USERS + 1);
            // A failed request is part of the show (the broken canary); nothing to report.
            let request = self
                .agent
                .get(&self.url)
                .header("x-user-id", &user)
                .header("user-agent", "graylane-demo");
            if let Ok(mut response) = request.call() {
                // Read to the end, so the connection is reused.
                let _ = response.body_mut().read_to_vec();
            }
            next += period;
            let now = Instant::now();
            match next.checked_duration_since(now) {
                Some(wait) => std::thread::sleep(wait),
                // Behind (a slow answer): go on from now rather than send a burst to catch up.
                None => next = now,
            }
        }
    }
}

/// xorshift64: which user sends the next request needs spread, not secrecy.
struct Random(u64);

impl Random {
    fn seeded() -> Random {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Random(u64::from(nanos) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A flag set by SIGTERM or Ctrl-C, which the gateway drains on: the demo's own traffic stops
/// then rather than knock on a closing gateway.
fn stop_on_signal() -> std::io::Result<Arc<AtomicBool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let stop = Arc::new(AtomicBool::new(false));
    let runtime = crate::runtime::control_plane()?;
    let (mut term, mut int) = runtime.block_on(async {
        std::io::Result::Ok((
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        ))
    })?;
    let flag = Arc::clone(&stop);
    crate::runtime::thread("graylane-demo-stop", move || {
        runtime.block_on(async {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        });
        flag.store(true, Ordering::Relaxed);
    })?;
    Ok(stop)
}
