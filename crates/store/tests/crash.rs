//! `kill -9` while writing loses nothing that was committed.
//!
//! The tests run this test binary again as a child, selected by [`CHILD_ENV`], that writes to a
//! store and prints a line after each commit returns; the parent SIGKILLs it and checks the
//! store against what the child reported.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use graylane_store::{NewAuditEntry, NewRevision, RedbStore, RevisionSource, Store, StoreError};
use serde_json::json;

/// Set to `MODE:ROUND:DIR` in the child.
const CHILD_ENV: &str = "GRAYLANE_STORE_CRASH_CHILD";
/// Starts each line the child reports, since libtest's own output shares its stdout (and the
/// first report lands on the end of libtest's "test crash_child ... " line).
const REPORT: &str = "crash-child-report: ";
const ENV: &str = "prod";
/// Upper bounds for every loop here, so a broken child or parent still ends.
const MAX_ITERATIONS: u64 = 5_000;
const DEADLINE: Duration = Duration::from_secs(60);

fn revision_yaml(round: u64, i: u64) -> String {
    format!("round: {round}\niteration: {i}\n")
}

/// The child's side. Does nothing in a normal test run.
#[test]
fn crash_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut parts = spec.splitn(3, ':');
    let (Some(mode), Some(round), Some(dir)) = (parts.next(), parts.next(), parts.next()) else {
        panic!("bad {CHILD_ENV}: {spec}");
    };
    let round: u64 = round.parse().unwrap();
    let store = RedbStore::open(Path::new(dir)).unwrap_or_else(|e| panic!("child: {e}"));
    let mut out = std::io::stdout().lock();
    let started = Instant::now();
    match mode {
        // Revisions and releases, as fast as it can, until it is killed.
        "loop" => {
            for i in 1..=MAX_ITERATIONS {
                if started.elapsed() > DEADLINE {
                    break;
                }
                let rev = store
                    .add_revision(
                        ENV,
                        NewRevision {
                            at_ms: i as i64,
                            author: "crash-test".into(),
                            message: format!("round {round}"),
                            source: RevisionSource::Api,
                            yaml: revision_yaml(round, i),
                        },
                    )
                    .unwrap_or_else(|e| panic!("child: {e}"));
                writeln!(out, "{REPORT}rev {} {i}", rev.n).unwrap();
                out.flush().unwrap();
                let audit = NewAuditEntry {
                    at_ms: i as i64,
                    actor: "crash-test".into(),
                    action: "release.set".into(),
                    target: "web".into(),
                    reason: String::new(),
                    detail: json!({ "round": round, "i": i }),
                };
                let state = format!("{round}/{i}");
                store
                    .record_release(ENV, "web", state.as_bytes(), audit)
                    .unwrap_or_else(|e| panic!("child: {e}"));
                writeln!(out, "{REPORT}release {i}").unwrap();
                out.flush().unwrap();
            }
        }
        // Exactly 20 revisions, then wait to be killed without closing the database.
        "twenty" => {
            for i in 1..=20 {
                store
                    .add_revision(
                        ENV,
                        NewRevision {
                            at_ms: i,
                            author: "crash-test".into(),
                            message: String::new(),
                            source: RevisionSource::File,
                            yaml: format!("document {i:02}\n"),
                        },
                    )
                    .unwrap_or_else(|e| panic!("child: {e}"));
            }
            writeln!(out, "{REPORT}done").unwrap();
            out.flush().unwrap();
            while started.elapsed() < DEADLINE {
                thread::sleep(Duration::from_millis(50));
            }
        }
        other => panic!("unknown child mode {other}"),
    }
}

/// Runs the child and returns it with a channel of its reports (closed when it exits).
fn spawn_child(mode: &str, round: u64, dir: &Path) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{mode}:{round}:{}", dir.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let Some((_, report)) = line.split_once(REPORT) else {
                continue;
            };
            if tx.send(report.to_string()).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Receives reports until `enough` says so, failing if the child stops or the deadline passes.
fn wait_for(lines: &mpsc::Receiver<String>, enough: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    while !enough(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(e) => {
                panic!("child stopped early or is stuck ({e:?}) after {seen:?}; see its stderr")
            }
        }
    }
    seen
}

/// SIGKILLs the child (Child::kill on Unix: no destructor runs, the database is not closed)
/// and returns the reports that were still in the pipe when it died.
fn kill(mut child: Child, lines: mpsc::Receiver<String>) -> Vec<String> {
    child.kill().unwrap();
    child.wait().unwrap();
    lines.iter().collect()
}

fn open(dir: &Path) -> RedbStore {
    RedbStore::open(dir).unwrap_or_else(|e| panic!("reopening after the kill: {e}"))
}

#[test]
fn kill_9_loses_no_committed_write() {
    let dir = tempfile::tempdir().unwrap();
    // Every revision any child reported as committed: n -> its document.
    let mut committed: BTreeMap<u64, String> = BTreeMap::new();
    // Kill at different depths so the signal lands at different points of a commit.
    for (round, kill_after) in [(1, 15), (2, 40), (3, 70)] {
        let (child, lines) = spawn_child("loop", round, dir.path());
        let mut reports = wait_for(&lines, |seen| seen.len() >= kill_after);
        reports.extend(kill(child, lines));

        let mut last_release = 0;
        for line in &reports {
            let fields: Vec<&str> = line.split(' ').collect();
            match fields.as_slice() {
                ["rev", n, i] => {
                    let (n, i): (u64, u64) = (n.parse().unwrap(), i.parse().unwrap());
                    committed.insert(n, revision_yaml(round, i));
                }
                ["release", i] => last_release = i.parse().unwrap(),
                _ => panic!("unexpected report {line:?}"),
            }
        }

        let store = open(dir.path());
        for (n, yaml) in &committed {
            let rev = store.revision(ENV, *n).unwrap();
            assert_eq!(
                rev.map(|r| r.yaml).as_ref(),
                Some(yaml),
                "revision {n} was reported committed"
            );
        }
        // No holes: what is there is 1..=latest, whether or not the last one was reported.
        let ns: Vec<u64> = store.revisions(ENV).unwrap().iter().map(|r| r.n).collect();
        let latest = ns.first().copied().unwrap_or(0);
        assert!(latest >= *committed.keys().last().unwrap());
        assert_eq!(ns, (1..=latest).rev().collect::<Vec<_>>());

        // The release state and its audit entry were committed together: the newest entry
        // describes exactly the state that is stored.
        let audit = store.audit(ENV, usize::MAX).unwrap();
        let seqs: Vec<u64> = audit.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=audit.len() as u64).rev().collect::<Vec<_>>());
        let newest = &audit[0];
        let (audit_round, audit_i) = (
            newest.detail["round"].as_u64().unwrap(),
            newest.detail["i"].as_u64().unwrap(),
        );
        assert_eq!(audit_round, round);
        assert!(
            audit_i >= last_release,
            "release {last_release} was reported committed"
        );
        assert_eq!(
            store.releases(ENV).unwrap(),
            [(
                "web".to_string(),
                format!("{audit_round}/{audit_i}").into_bytes()
            )]
        );
    }
}

#[test]
fn damage_after_a_kill_is_reported_not_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let (child, lines) = spawn_child("twenty", 0, dir.path());
    wait_for(&lines, |seen| seen.iter().any(|l| l == "done"));
    // While the child holds the store, another process cannot open it.
    let err = RedbStore::open(dir.path()).expect_err("the child has the store open");
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    kill(child, lines);
    let file = dir.path().join("graylane.redb");
    let crashed = fs::read(&file).unwrap();

    // The file as the kill left it opens with all 20 revisions.
    let intact = tempfile::tempdir().unwrap();
    fs::write(intact.path().join("graylane.redb"), &crashed).unwrap();
    assert_eq!(open(intact.path()).revisions(ENV).unwrap().len(), 20);

    // Damage the newest revision's document, which only the last commit references. redb's
    // recovery after a crash may fall back to the commit before the last one; that must not
    // happen silently to a commit that was acknowledged.
    let mut damaged = crashed;
    let marker = b"document 20\n";
    let at = damaged
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("the document is stored uncompressed");
    damaged[at + 9] ^= 0x01;
    fs::write(&file, &damaged).unwrap();

    let err = RedbStore::open(dir.path()).expect_err("damaged file must be refused");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(
        fs::read(&file).unwrap() == damaged,
        "the refused file was modified"
    );
}
