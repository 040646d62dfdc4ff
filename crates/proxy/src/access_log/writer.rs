//! The access log's writer thread: it takes lines from every worker's queue, formats them (JSON
//! or nginx's combined format) and writes them through a buffer, whole lines at a time, flushed
//! at least every 100 ms and whenever the queues are empty. It reopens its file when asked
//! (SIGUSR1) and ends when its log is replaced and drained, or at shutdown.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use graylane_config::{AccessLogFormat, AccessLogPath};
use graylane_rules::Reason;

use super::entry::Entry;
use super::{Counters, Shared};

/// The longest a written line waits in the buffer.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// How long the writer sleeps when every queue is empty.
const IDLE: Duration = Duration::from_millis(10);

/// Where lines go.
pub(super) enum Output {
    Stdout(std::io::Stdout),
    File(File),
}

impl Output {
    /// Opens `path` for appending (creating the file), or standard output.
    pub(super) fn open(path: &AccessLogPath) -> std::io::Result<Output> {
        match path {
            AccessLogPath::Stdout => Ok(Output::Stdout(std::io::stdout())),
            AccessLogPath::File(p) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map(Output::File),
        }
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Output::Stdout(s) => s.write(buf),
            Output::File(f) => f.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Output::Stdout(s) => s.flush(),
            Output::File(f) => f.flush(),
        }
    }
}

/// The writer thread's state.
pub(super) struct Writer {
    pub(super) receivers: Vec<Receiver<Box<Entry>>>,
    pub(super) output: Output,
    pub(super) path: AccessLogPath,
    pub(super) format: AccessLogFormat,
    pub(super) counters: Arc<Counters>,
    pub(super) shared: Arc<Shared>,
}

impl Writer {
    /// Writes lines until every queue's sender is gone (the log was replaced and its last
    /// requests are done) or the gateway shuts down, then flushes.
    pub(super) fn run(self) {
        let Writer {
            receivers,
            output,
            path,
            format,
            counters,
            shared,
        } = self;
        let mut out = BufWriter::with_capacity(64 * 1024, output);
        let mut line = Vec::with_capacity(1024);
        let mut last_flush = Instant::now();
        let mut failing = false;
        loop {
            // Read before draining: lines queued before shutdown are all written.
            let closing = shared.closing.load(Relaxed);
            let mut written = 0u64;
            let mut open = 0;
            for rx in &receivers {
                // At most a queue's worth from each in turn, so no worker's lines wait long.
                for _ in 0..super::QUEUE {
                    match rx.try_recv() {
                        Ok(entry) => {
                            line.clear();
                            format_line(&mut line, &entry, format);
                            drop(entry);
                            let wrote = out.write_all(&line);
                            note(&mut failing, wrote, &path);
                            written += 1;
                        }
                        Err(TryRecvError::Empty) => {
                            open += 1;
                            break;
                        }
                        Err(TryRecvError::Disconnected) => break,
                    }
                }
            }
            counters.lines.fetch_add(written, Relaxed);
            if shared.reopen.swap(false, Relaxed) {
                note(&mut failing, out.flush(), &path);
                match Output::open(&path) {
                    Ok(fresh) => {
                        // The old handle's buffered lines were flushed just above.
                        let _ = std::mem::replace(out.get_mut(), fresh);
                        tracing::info!(%path, "access log reopened");
                    }
                    Err(e) => {
                        tracing::error!(%path, "cannot reopen the access log: {e}; writing on to the file open before")
                    }
                }
            }
            let idle = written == 0;
            if idle || last_flush.elapsed() >= FLUSH_EVERY {
                if !out.buffer().is_empty() {
                    note(&mut failing, out.flush(), &path);
                }
                last_flush = Instant::now();
            }
            if (closing || open == 0) && idle {
                note(&mut failing, out.flush(), &path);
                return;
            }
            if idle {
                std::thread::park_timeout(IDLE);
            }
        }
    }
}

/// Logs the first write error of a run of them, and the recovery.
fn note(failing: &mut bool, result: std::io::Result<()>, path: &AccessLogPath) {
    match result {
        Err(e) if !*failing => {
            *failing = true;
            tracing::error!(%path, "cannot write the access log: {e}");
        }
        Ok(()) if *failing => {
            *failing = false;
            tracing::info!(%path, "the access log is written again");
        }
        _ => {}
    }
}

/// Formats `entry` as one line, newline included.
pub(super) fn format_line(out: &mut Vec<u8>, entry: &Entry, format: AccessLogFormat) {
    match format {
        AccessLogFormat::Json => json(out, entry),
        AccessLogFormat::Combined => combined(out, entry),
    }
}

fn protocol(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), lower-case; `None`
/// when the header is malformed or the id all zeros.
fn trace_id(traceparent: &[u8]) -> Option<&str> {
    let id = traceparent.get(3..35)?;
    let well_formed = traceparent.len() >= 55
        && traceparent[2] == b'-'
        && traceparent[35] == b'-'
        && traceparent[..2].iter().all(u8::is_ascii_hexdigit)
        && id
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        && id.iter().any(|&b| b != b'0');
    well_formed.then(|| std::str::from_utf8(id).ok()).flatten()
}

fn reason_bucket(reason: Option<Reason>) -> Option<u32> {
    match reason? {
        Reason::Sticky { bucket, .. } | Reason::Bucket { bucket, .. } => Some(bucket),
        _ => None,
    }
}

fn millis(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

/// One JSON object: the field names are documented in the README and stay as they are.
fn json(out: &mut Vec<u8>, e: &Entry) {
    out.extend_from_slice(b"{\"time\":\"");
    rfc3339(out, e.at_ms);
    out.extend_from_slice(b"\",\"client\":\"");
    let _ = write!(out, "{}", e.client);
    out.extend_from_slice(b"\",\"method\":");
    json_text(out, e.method.bytes(), false);
    out.extend_from_slice(b",\"path\":");
    json_text(out, e.path.bytes(), e.path.cut());
    let _ = write!(
        out,
        ",\"protocol\":\"{}\",\"status\":{},\"bytes\":",
        protocol(e.http),
        e.status
    );
    match e.bytes {
        Some(n) => {
            let _ = write!(out, "{n}");
        }
        None => out.extend_from_slice(b"null"),
    }
    let _ = write!(
        out,
        ",\"duration_ms\":{:.3},\"upstream_ms\":",
        millis(e.duration)
    );
    match e.upstream {
        Some(d) => {
            let _ = write!(out, "{:.3}", millis(d));
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"service\":");
    json_text(out, e.service.bytes(), e.service.cut());
    out.extend_from_slice(b",\"version\":");
    json_text(out, e.version.bytes(), e.version.cut());
    out.extend_from_slice(b",\"reason\":");
    json_text(out, e.reason.map_or("", |r| r.label()).as_bytes(), false);
    out.extend_from_slice(b",\"bucket\":");
    match reason_bucket(e.reason) {
        Some(b) => {
            let _ = write!(out, "{b}");
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"lane\":");
    json_text(out, e.lane.bytes(), e.lane.cut());
    out.extend_from_slice(b",\"trace_id\":");
    json_text(
        out,
        trace_id(e.traceparent.bytes()).unwrap_or("").as_bytes(),
        false,
    );
    let _ = write!(
        out,
        ",\"fallback\":{},\"retries\":{},\"mirrored\":{},\"referer\":",
        e.fallback, e.retries, e.mirrored
    );
    json_text(out, e.referer.bytes(), e.referer.cut());
    out.extend_from_slice(b",\"user_agent\":");
    json_text(out, e.user_agent.bytes(), e.user_agent.cut());
    out.extend_from_slice(b"}\n");
}

/// A JSON string of bytes a client sent: invalid UTF-8 becomes U+FFFD, control characters
/// are escaped; `cut` appends `...`.
fn json_text(out: &mut Vec<u8>, bytes: &[u8], cut: bool) {
    out.push(b'"');
    for c in String::from_utf8_lossy(bytes).chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let mut buf = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    if cut {
        out.extend_from_slice(b"...");
    }
    out.push(b'"');
}

/// nginx's `combined` format, then graylane's fields as `key=value`:
///
/// ```text
/// $remote_addr - - [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent"
///   rt=$request_time urt=$upstream_response_time service= version= reason= bucket= lane= trace_id=
///   fallback= retries= mirrored=
/// ```
fn combined(out: &mut Vec<u8>, e: &Entry) {
    let _ = write!(out, "{} - - [", e.client);
    clf_time(out, e.at_ms);
    out.extend_from_slice(b"] \"");
    escaped(out, e.method.bytes(), false, false);
    out.push(b' ');
    escaped(out, e.path.bytes(), e.path.cut(), false);
    let _ = write!(out, " {}\" {} ", protocol(e.http), e.status);
    match e.bytes {
        Some(n) => {
            let _ = write!(out, "{n}");
        }
        None => out.push(b'-'),
    }
    out.extend_from_slice(b" \"");
    dash_or(out, e.referer.bytes(), e.referer.cut(), false);
    out.extend_from_slice(b"\" \"");
    dash_or(out, e.user_agent.bytes(), e.user_agent.cut(), false);
    let _ = write!(out, "\" rt={:.3} urt=", e.duration.as_secs_f64());
    match e.upstream {
        Some(d) => {
            let _ = write!(out, "{:.3}", d.as_secs_f64());
        }
        None => out.push(b'-'),
    }
    out.extend_from_slice(b" service=");
    dash_or(out, e.service.bytes(), e.service.cut(), true);
    out.extend_from_slice(b" version=");
    dash_or(out, e.version.bytes(), e.version.cut(), true);
    out.extend_from_slice(b" reason=");
    dash_or(
        out,
        e.reason.map_or("", |r| r.label()).as_bytes(),
        false,
        true,
    );
    out.extend_from_slice(b" bucket=");
    match reason_bucket(e.reason) {
        Some(b) => {
            let _ = write!(out, "{b}");
        }
        None => out.push(b'-'),
    }
    out.extend_from_slice(b" lane=");
    dash_or(out, e.lane.bytes(), e.lane.cut(), true);
    out.extend_from_slice(b" trace_id=");
    dash_or(
        out,
        trace_id(e.traceparent.bytes()).unwrap_or("").as_bytes(),
        false,
        true,
    );
    let _ = writeln!(
        out,
        " fallback={} retries={} mirrored={}",
        u8::from(e.fallback),
        e.retries,
        u8::from(e.mirrored)
    );
}

fn dash_or(out: &mut Vec<u8>, bytes: &[u8], cut: bool, space: bool) {
    if bytes.is_empty() {
        out.push(b'-');
    } else {
        escaped(out, bytes, cut, space);
    }
}

/// As nginx escapes variables in a log line: `"`, `\`, control and non-ASCII bytes as `\xHH`
/// (and, in a `key=value` field, spaces too, so the value stays one field).
fn escaped(out: &mut Vec<u8>, bytes: &[u8], cut: bool, space: bool) {
    for &b in bytes {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) || (space && b == b' ') {
            let _ = write!(out, "\\x{b:02X}");
        } else {
            out.push(b);
        }
    }
    if cut {
        out.extend_from_slice(b"...");
    }
}

/// The civil date and time (UTC) of a Unix time in milliseconds.
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    millis: u32,
}

impl Civil {
    /// Howard Hinnant's `civil_from_days`.
    fn of(unix_ms: i64) -> Civil {
        let secs = unix_ms.div_euclid(1000);
        let millis = unix_ms.rem_euclid(1000) as u32;
        let days = secs.div_euclid(86_400);
        let of_day = secs.rem_euclid(86_400) as u32;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Civil {
            year,
            month,
            day,
            hour: of_day / 3600,
            minute: of_day / 60 % 60,
            second: of_day % 60,
            millis,
        }
    }
}

/// `2024-05-01T12:00:00.123Z`
fn rfc3339(out: &mut Vec<u8>, unix_ms: i64) {
    let c = Civil::of(unix_ms);
    let _ = write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second, c.millis
    );
}

/// `01/May/2024:12:00:00 +0000`, nginx's `$time_local` (in UTC).
fn clf_time(out: &mut Vec<u8>, unix_ms: i64) {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let c = Civil::of(unix_ms);
    let month = MONTHS[(c.month as usize).saturating_sub(1) % 12];
    let _ = write!(
        out,
        "{:02}/{month}/{:04}:{:02}:{:02}:{:02} +0000",
        c.day, c.year, c.hour, c.minute, c.second
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        f(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn times_are_rfc3339_with_milliseconds_and_nginx_local_time_in_utc() {
        // 2024-02-29T23:59:58.007Z, a leap day.
        let ms = 1_709_251_198_007;
        assert_eq!(text(|o| rfc3339(o, ms)), "2024-02-29T23:59:58.007Z");
        assert_eq!(text(|o| clf_time(o, ms)), "29/Feb/2024:23:59:58 +0000");
        assert_eq!(text(|o| rfc3339(o, 0)), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn a_trace_id_is_taken_only_from_a_well_formed_traceparent() {
        let tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id(tp), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(
            trace_id(b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(
            trace_id(b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(trace_id(b"00-4bf92f35"), None);
    }

    #[test]
    fn hostile_bytes_are_escaped_in_both_formats() {
        assert_eq!(
            text(|o| json_text(o, b"/a\"b\\c\n\x01\xff", true)),
            r#""/a\"b\\c\n\u0001�...""#
        );
        assert_eq!(
            text(|o| escaped(o, b"/a\"b c\x01\xff", false, true)),
            r#"/a\x22b\x20c\x01\xFF"#
        );
    }
}
