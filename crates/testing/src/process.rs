//! The `graylane` binary as a child process: bounded in time, killed if a test fails, its
//! output kept in files, and the addresses it bound read from what it logs, so a test can ask
//! it to bind port 0 instead of guessing a free port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What a finished command printed.
#[derive(Debug)]
pub struct Output {
    /// How it ended.
    pub status: ExitStatus,
    /// Everything it wrote to stdout.
    pub stdout: String,
    /// Everything it wrote to stderr.
    pub stderr: String,
}

impl Output {
    /// The exit code, if it exited (rather than being killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// A number unique in this test process, for file names.
pub fn unique() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::SeqCst)
}

/// The addresses a `graylane serve` reported binding: its gateway listeners in configuration
/// order, and its admin listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    /// Every gateway listener.
    pub listeners: Vec<SocketAddr>,
    /// The admin listener, if it has one.
    pub admin: Option<SocketAddr>,
}

/// A running `graylane` process; killed when dropped, so a failing test leaves nothing behind.
/// Its output goes to files (never a pipe nobody reads, which could block it).
pub struct Graylane {
    child: Child,
    out: PathBuf,
    err: PathBuf,
    exited: Option<ExitStatus>,
}

impl Graylane {
    /// Runs the binary `bin` with `args` in `dir` (so the default `graylane-data` store lands
    /// there) with extra environment variables `env` (admin tokens), logging as text.
    pub fn spawn(bin: &str, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Graylane {
        let n = unique();
        let out = dir.join(format!("stdout-{n}.txt"));
        let err = dir.join(format!("stderr-{n}.txt"));
        let child = Command::new(bin)
            .args(args)
            .current_dir(dir)
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("a stdout file"))
            .stderr(std::fs::File::create(&err).expect("a stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"));
        Graylane {
            child,
            out,
            err,
            exited: None,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it wrote to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// What it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Both outputs, for failure messages.
    pub fn logs(&self) -> String {
        format!("--- stdout\n{}--- stderr\n{}", self.stdout(), self.stderr())
    }

    /// Waits until the process has logged the addresses it listens on (`listening` and, with
    /// `admin`, `admin listening`), and returns them. Panics with its logs if it exits first
    /// or takes longer than `limit`.
    pub fn listening(&mut self, admin: bool, limit: Duration) -> Bound {
        let until = Instant::now() + limit;
        loop {
            let bound = parse_bound(&self.stderr());
            if !bound.listeners.is_empty() && (!admin || bound.admin.is_some()) {
                return bound;
            }
            if let Some(status) = self.try_exit() {
                panic!(
                    "graylane exited ({status}) before it was listening\n{}",
                    self.logs()
                );
            }
            if Instant::now() > until {
                panic!(
                    "graylane did not say where it listens within {limit:?}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status if the process has ended.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("the child's status");
        }
        self.exited
    }

    /// Sends a signal by name (`TERM`, `HUP`, ...) with `kill(1)`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.pid().to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill -s {name} {} failed", self.pid());
    }

    /// Waits for the process to end; kills it and panics after `deadline`.
    pub fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = self.try_exit() {
                return status;
            }
            if Instant::now() > until {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("graylane did not exit within {deadline:?}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Panics with the logs if the process has ended.
    #[track_caller]
    pub fn assert_running(&mut self) {
        if let Some(status) = self.try_exit() {
            panic!("graylane exited early ({status})\n{}", self.logs());
        }
    }
}

impl Drop for Graylane {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The addresses in the log lines `listening addr=...` and `admin listening addr=...`, as
/// text (coloured or not) or JSON logs.
pub fn parse_bound(log: &str) -> Bound {
    let mut bound = Bound {
        listeners: Vec::new(),
        admin: None,
    };
    for line in log.lines() {
        let line = &strip_ansi(line);
        let (message, addr) = if line.trim_start().starts_with('{') {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let message = v["message"].as_str().unwrap_or_default().to_string();
            let Some(addr) = v["addr"].as_str().and_then(|a| a.parse().ok()) else {
                continue;
            };
            (message, addr)
        } else {
            let Some((before, after)) = line.split_once(" addr=") else {
                continue;
            };
            let Some(addr) = after
                .split_whitespace()
                .next()
                .and_then(|a| a.parse::<SocketAddr>().ok())
            else {
                continue;
            };
            let message = if before.ends_with(": admin listening") {
                "admin listening"
            } else if before.ends_with(": listening") {
                "listening"
            } else {
                continue;
            };
            (message.to_string(), addr)
        };
        match message.as_str() {
            "listening" => bound.listeners.push(addr),
            "admin listening" => bound.admin = Some(addr),
            _ => {}
        }
    }
    bound
}

/// `line` without terminal colour sequences (`ESC [ ... m`), which a log written with colours
/// puts around field names.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_addresses_are_read_from_text_json_and_coloured_logs() {
        let text = "2026-01-01T00:00:00Z  INFO graylane::commands::serve: listening addr=127.0.0.1:4001 workers=1\n\
                    2026-01-01T00:00:00Z  INFO graylane::commands::serve: admin listening addr=127.0.0.1:4002\n";
        let json = r#"{"timestamp":"x","level":"INFO","message":"listening","addr":"127.0.0.1:4001","workers":1}
{"timestamp":"x","level":"INFO","message":"admin listening","addr":"127.0.0.1:4002"}"#;
        let coloured = "\u{1b}[32m INFO\u{1b}[0m \u{1b}[2mgraylane::commands::serve\u{1b}[0m\u{1b}[2m:\u{1b}[0m listening \u{1b}[3maddr\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:4001 \u{1b}[3mworkers\u{1b}[0m\u{1b}[2m=\u{1b}[0m1\n\
                        \u{1b}[32m INFO\u{1b}[0m \u{1b}[2mgraylane::commands::serve\u{1b}[0m\u{1b}[2m:\u{1b}[0m admin listening \u{1b}[3maddr\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:4002\n";
        let expected = Bound {
            listeners: vec!["127.0.0.1:4001".parse().unwrap()],
            admin: Some("127.0.0.1:4002".parse().unwrap()),
        };
        for log in [text, json, coloured] {
            assert_eq!(parse_bound(log), expected, "{log}");
        }
    }
}
