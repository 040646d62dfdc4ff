//! The store at the edge of its resources: a full disk it recovers from by itself once space is
//! freed (on a real, tiny tmpfs), and lowering the audit log's retention on a long log (the
//! retention itself is in `graylane_store::conformance`, run by tests/store.rs).

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

use graylane_store::{NewAuditEntry, NewRevision, RedbStore, RevisionSource, Store, StoreError};

fn revision(i: usize, yaml_bytes: usize) -> NewRevision {
    NewRevision {
        at_ms: 1_000 + i as i64,
        author: "alice".into(),
        message: format!("change {i}"),
        source: RevisionSource::File,
        yaml: format!("# {i}\n{}\n", "x".repeat(yaml_bytes)),
    }
}

fn audit(at_ms: i64) -> NewAuditEntry {
    NewAuditEntry {
        at_ms,
        actor: "alice".into(),
        action: "release.promote".into(),
        target: "checkout".into(),
        reason: format!("at {at_ms}"),
        detail: serde_json::Value::Null,
    }
}

/// A tmpfs of `size` mounted on a fresh folder, unmounted when dropped.
struct TinyDisk {
    dir: PathBuf,
}

impl TinyDisk {
    /// `None` (with the reason printed) where mounting is not permitted: not root, or a
    /// sandbox without CAP_SYS_ADMIN.
    fn mount(test: &str, size: &str) -> Option<TinyDisk> {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("store-{}-{test}", std::process::id()));
        let _ = fs::create_dir_all(&dir);
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(TinyDisk { dir }),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs here ({}), so the full-disk test cannot run",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount(8) ({e}), so the full-disk test cannot run");
                None
            }
        }
    }

    /// Writes a file until the disk is full.
    fn fill(&self) -> PathBuf {
        let path = self.dir.join("filler");
        let mut file = fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 16 * 1024];
        for _ in 0..100_000 {
            if file.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = file.sync_all();
        path
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn is_io(e: &StoreError) -> bool {
    matches!(e, StoreError::Io { .. })
}

#[test]
fn after_a_full_disk_the_store_writes_again_once_space_is_freed_without_reopening() {
    let Some(disk) = TinyDisk::mount("full", "4m") else {
        return;
    };
    let data = disk.dir.join("data");
    let store = RedbStore::open(&data).unwrap();
    for i in 0..3 {
        store.add_revision("prod", revision(i, 100)).unwrap();
    }
    let filler = disk.fill();

    // Large revisions make the file grow, which a full disk refuses.
    let mut failures = Vec::new();
    for i in 3..40 {
        match store.add_revision("prod", revision(i, 256 * 1024)) {
            Ok(_) => {}
            Err(e) => failures.push(e),
        }
        if failures.len() >= 2 {
            break;
        }
    }
    assert!(
        failures.len() >= 2,
        "writes on a full disk must fail: {failures:?}"
    );
    for e in &failures {
        assert!(is_io(e), "a full disk is an I/O error: {e}");
        assert!(
            e.to_string().contains("check the disk (free space"),
            "the message says what to do: {e}"
        );
    }

    fs::remove_file(&filler).unwrap();
    let rev = store
        .add_revision("prod", revision(99, 100))
        .unwrap_or_else(|e| panic!("the store must write again once space is freed: {e}"));
    let revisions = store.revisions("prod").unwrap();
    assert_eq!(revisions[0].n, rev.n);
    assert!(
        revisions.iter().any(|r| r.n == 1) && revisions.iter().any(|r| r.n == 3),
        "what was written before the disk filled is still there: {revisions:?}"
    );
    assert_eq!(
        store.latest_revision("prod").unwrap().map(|r| r.message),
        Some("change 99".to_string())
    );
    drop(store);
    // And the file is sound for the next start.
    let reopened = RedbStore::open(&data).unwrap();
    assert_eq!(reopened.revisions("prod").unwrap()[0].n, rev.n);
}

fn temp(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("store-{}-{test}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

fn seqs(store: &RedbStore, env: &str) -> Vec<u64> {
    let mut s: Vec<u64> = store
        .audit(env, 10_000)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    s.sort_unstable();
    s
}

#[test]
fn lowering_the_retention_on_a_long_log_prunes_it_over_several_appends() {
    let dir = temp("retention-batch");
    let store = RedbStore::open(&dir).unwrap();
    for i in 0..300 {
        store.append_audit("prod", audit(i)).unwrap();
    }
    store.set_audit_retention(10, 0);
    store.append_audit("prod", audit(300)).unwrap();
    let after_one = seqs(&store, "prod").len();
    assert!(
        after_one < 301 && after_one > 10,
        "one append prunes a bounded batch: {after_one}"
    );
    for i in 0..10 {
        store.append_audit("prod", audit(301 + i)).unwrap();
    }
    assert_eq!(seqs(&store, "prod"), (302..=311).collect::<Vec<_>>());
    let _ = fs::remove_dir_all(&dir);
}
