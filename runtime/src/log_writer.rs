//! Where log lines go: a buffer in memory that a thread of its own writes to
//! stdout every [`FLUSH_EVERY`], or at once when [`FLUSH_AT`] bytes wait (as
//! nginx's `access_log ... buffer=64k flush=1s` does), or when a line comes
//! after a quiet spell (nothing written for [`FLUSH_EVERY`]): so lines are
//! batched under load and seen at once otherwise. A request's line costs
//! a lock and a copy: no system call, no thread woken per line, which a
//! writer thread fed line by line (and stdout's line buffering) cost on every
//! request.
//!
//! Not lossy: past [`MOST_PENDING`] bytes waiting (stdout blocked, a flood of
//! lines), writers wait for the flush rather than drop lines. Dropping the
//! guard writes what is left.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long a line may wait in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// From this many bytes waiting, they are written at once.
pub const FLUSH_AT: usize = 64 * 1024;
/// The most bytes that may wait; writers wait past it.
pub const MOST_PENDING: usize = 1024 * 1024;

#[derive(Debug)]
struct Pending {
    bytes: Vec<u8>,
    closed: bool,
    /// Write at once: a line came after a quiet spell.
    urgent: bool,
    last_write: std::time::Instant,
}

impl Default for Pending {
    fn default() -> Self {
        let now = std::time::Instant::now();
        Self {
            bytes: Vec::new(),
            closed: false,
            urgent: false,
            // Long ago: the first line is written at once.
            last_write: now.checked_sub(Duration::from_secs(3600)).unwrap_or(now),
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    /// [`FLUSH_EVERY`], but in tests.
    every: Duration,
    pending: Mutex<Pending>,
    /// Wakes the flusher: enough bytes wait, or the writer closes.
    full: Condvar,
    /// Wakes writers waiting for room.
    drained: Condvar,
}

/// Makes the writers of log lines; clone it freely.
#[derive(Debug, Clone)]
pub struct BufferedLines {
    shared: Arc<Shared>,
}

/// Writes what is left and stops the flusher when dropped.
#[derive(Debug)]
pub struct FlushGuard {
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
}

impl BufferedLines {
    /// Lines buffered for `out`, which a thread of its own writes.
    pub fn new(out: impl Write + Send + 'static) -> (Self, FlushGuard) {
        Self::flushed_every(FLUSH_EVERY, out)
    }

    fn flushed_every(every: Duration, out: impl Write + Send + 'static) -> (Self, FlushGuard) {
        let shared = Arc::new(Shared {
            every,
            ..Shared::default()
        });
        let flusher = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("log-writer".into())
                .spawn(move || flush_until_closed(&shared, out))
                .expect("the log writer thread starts")
        };
        (
            Self {
                shared: Arc::clone(&shared),
            },
            FlushGuard {
                shared,
                flusher: Some(flusher),
            },
        )
    }
}

fn flush_until_closed(shared: &Shared, mut out: impl Write) {
    loop {
        let (bytes, closed) = {
            let pending = shared.pending.lock().expect("not poisoned");
            let (mut pending, _) = shared
                .full
                .wait_timeout_while(pending, shared.every, |pending| {
                    pending.bytes.len() < FLUSH_AT && !pending.closed && !pending.urgent
                })
                .expect("not poisoned");
            let bytes = std::mem::take(&mut pending.bytes);
            pending.urgent = false;
            if !bytes.is_empty() {
                pending.last_write = std::time::Instant::now();
            }
            (bytes, pending.closed)
        };
        shared.drained.notify_all();
        if !bytes.is_empty() {
            // Nowhere to report a failed write of the log itself.
            let _ = out.write_all(&bytes);
            let _ = out.flush();
        }
        if closed {
            return;
        }
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.shared.pending.lock().expect("not poisoned").closed = true;
        self.shared.full.notify_one();
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
    }
}

/// One writer, for one line.
#[derive(Debug)]
pub struct LineWriter {
    shared: Arc<Shared>,
}

impl Write for LineWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let pending = self.shared.pending.lock().expect("not poisoned");
        let mut pending = self
            .shared
            .drained
            .wait_while(pending, |pending| {
                !pending.closed
                    && !pending.bytes.is_empty()
                    && pending.bytes.len() + bytes.len() > MOST_PENDING
            })
            .expect("not poisoned");
        pending.bytes.extend_from_slice(bytes);
        if pending.bytes.len() >= FLUSH_AT {
            self.shared.full.notify_one();
        } else if !pending.urgent && pending.last_write.elapsed() >= self.shared.every {
            pending.urgent = true;
            self.shared.full.notify_one();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BufferedLines {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter {
            shared: Arc::clone(&self.shared),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    use super::tests_support::Collected;

    #[test]
    fn lines_are_written_together_within_the_flush_interval_and_all_on_drop() {
        let out = Collected::default();
        let (lines, guard) = BufferedLines::new(out.clone());
        for n in 0..1_000 {
            writeln!(lines.make_writer(), "line {n}").unwrap();
        }
        let started = Instant::now();
        while out.0.lock().unwrap().0.is_empty() {
            assert!(started.elapsed() < FLUSH_EVERY * 20, "nothing was written");
            std::thread::sleep(Duration::from_millis(5));
        }
        writeln!(lines.make_writer(), "the last").unwrap();
        drop(guard);
        let (bytes, writes) = out.0.lock().unwrap().clone();
        let text = String::from_utf8(bytes).unwrap();
        assert_eq!(text.lines().count(), 1_001);
        assert!(text.ends_with("the last\n"));
        assert!(writes < 100, "{writes} writes for 1 001 lines");
    }

    #[test]
    fn a_line_after_a_quiet_spell_is_written_at_once_not_at_the_next_flush() {
        let out = Collected::default();
        // A flush every minute: a line seen within seconds was written for itself.
        let every = Duration::from_secs(60);
        let (lines, _guard) = BufferedLines::flushed_every(every, out.clone());
        {
            let mut pending = lines.shared.pending.lock().unwrap();
            pending.last_write = Instant::now() - every;
        }
        writeln!(lines.make_writer(), "after a quiet spell").unwrap();
        let started = Instant::now();
        while out.0.lock().unwrap().0.is_empty() {
            assert!(started.elapsed() < Duration::from_secs(20), "not written");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_writer_past_the_bound_waits_for_the_flush_and_nothing_is_lost() {
        let out = Collected::default();
        let (lines, guard) = BufferedLines::new(out.clone());
        let line = vec![b'x'; 4096];
        for _ in 0..(MOST_PENDING / line.len()) * 3 {
            lines.make_writer().write_all(&line).unwrap();
        }
        drop(guard);
        assert_eq!(
            out.0.lock().unwrap().0.len(),
            (MOST_PENDING / 4096) * 3 * 4096
        );
    }
}

/// The fast path of the busiest line (one per request): written into the
/// buffer in the configured format by hand, where tracing's formatting
/// machinery (a visitor per field, `Debug` formatting, the time formatted
/// field by field) cost a quarter of a cache hit's instructions. Set by
/// `telemetry::init_tracing` when lines go to a pipe or a file; absent (the
/// caller logs through tracing instead) at a terminal, whose lines are
/// coloured, and before logging is set up.
#[derive(Debug)]
pub struct FastLines {
    lines: BufferedLines,
    json: bool,
}

static FAST_LINES: std::sync::OnceLock<FastLines> = std::sync::OnceLock::new();

/// Installs the fast path (once; later calls keep the first).
pub(crate) fn install_fast_lines(lines: BufferedLines, json: bool) {
    let _ = FAST_LINES.set(FastLines { lines, json });
}

/// A field's value, written as tracing writes it.
#[derive(Debug, Clone, Copy)]
pub enum Field<'a> {
    /// A string, quoted (`"/predict"`).
    Text(&'a str),
    /// A `Display` value written bare (`POST`).
    Bare(&'a str),
    Number(u64),
}

/// Writes an INFO line of `target` with `message` and `fields`, in the format
/// and to the buffer tracing's would use; `false` when the fast path is not
/// installed, for the caller to log through tracing. A field without a
/// value is left out, as tracing leaves out a `None`.
pub fn write_info(target: &str, message: &str, fields: &[(&str, Option<Field<'_>>)]) -> bool {
    let Some(fast) = FAST_LINES.get() else {
        return false;
    };
    let timestamp = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
    let line = format_line(fast.json, &timestamp, target, message, fields);
    let _ = fast.lines.make_writer().write_all(line.as_bytes());
    true
}

/// Text that needs no escaping, in a JSON string or a quoted field.
fn is_plain(text: &str) -> bool {
    text.bytes()
        .all(|byte| (byte.is_ascii_graphic() && byte != b'"' && byte != b'\\') || byte == b' ')
}

/// The line as tracing-subscriber's formatter writes it: its `Full` text
/// format, or its JSON with the event's fields flattened.
fn format_line(
    json: bool,
    timestamp: &str,
    target: &str,
    message: &str,
    fields: &[(&str, Option<Field<'_>>)],
) -> String {
    use std::fmt::Write as _;
    let mut line = String::with_capacity(256);
    let mut numbers = itoa::Buffer::new();
    if json {
        let _ = write!(
            line,
            r#"{{"timestamp":"{timestamp}","level":"INFO","message":"#
        );
        json_string(&mut line, message);
        for (name, value) in fields
            .iter()
            .filter_map(|(name, value)| Some((name, (*value)?)))
        {
            line.push_str(",\"");
            line.push_str(name);
            line.push_str("\":");
            match value {
                Field::Text(text) | Field::Bare(text) => json_string(&mut line, text),
                Field::Number(number) => line.push_str(numbers.format(number)),
            }
        }
        line.push_str(",\"target\":");
        json_string(&mut line, target);
        line.push_str("}\n");
    } else {
        let _ = write!(line, "{timestamp}  INFO {target}: {message}");
        for (name, value) in fields
            .iter()
            .filter_map(|(name, value)| Some((name, (*value)?)))
        {
            line.push(' ');
            line.push_str(name);
            line.push('=');
            match value {
                Field::Text(text) if is_plain(text) => {
                    line.push('"');
                    line.push_str(text);
                    line.push('"');
                }
                Field::Text(text) => {
                    let _ = write!(line, "{text:?}");
                }
                Field::Bare(text) => line.push_str(text),
                Field::Number(number) => line.push_str(numbers.format(number)),
            }
        }
        line.push('\n');
    }
    line
}

/// `text` as a JSON string, onto `out`.
fn json_string(out: &mut String, text: &str) {
    use std::fmt::Write as _;
    out.push('"');
    if is_plain(text) {
        out.push_str(text);
    } else {
        for character in text.chars() {
            match character {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                control if (control as u32) < 0x20 => {
                    let _ = write!(out, "\\u{:04x}", control as u32);
                }
                other => out.push(other),
            }
        }
    }
    out.push('"');
}

#[cfg(test)]
mod fast_tests {
    use tracing_subscriber::fmt::format::FmtSpan;
    use tracing_subscriber::prelude::*;

    use super::*;

    /// What tracing-subscriber writes for the same event, without its time.
    fn tracing_writes(json: bool) -> String {
        let out = tests_support::Collected::default();
        let writer = {
            let out = out.clone();
            move || out.clone()
        };
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(false)
            .with_span_events(FmtSpan::NONE)
            .without_time();
        let subscriber: Box<dyn tracing::Subscriber + Send + Sync> = if json {
            Box::new(tracing_subscriber::registry().with(layer.json().flatten_event(true)))
        } else {
            Box::new(tracing_subscriber::registry().with(layer))
        };
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                target: "gateway::request_log",
                method = %"POST",
                path = "/a \"b\"",
                status = 200u16,
                cache = None::<&str>,
                model = Some("price"),
                "request"
            );
        });
        String::from_utf8(out.0.lock().unwrap().0.clone()).unwrap()
    }

    const FIELDS: &[(&str, Option<Field<'static>>)] = &[
        ("method", Some(Field::Bare("POST"))),
        ("path", Some(Field::Text("/a \"b\""))),
        ("status", Some(Field::Number(200))),
        ("cache", None),
        ("model", Some(Field::Text("price"))),
    ];

    #[test]
    fn the_text_line_is_tracings_own() {
        let ours = format_line(false, "T", "gateway::request_log", "request", FIELDS);
        let theirs = tracing_writes(false);
        assert_eq!(ours.strip_prefix("T ").unwrap(), theirs);
    }

    #[test]
    fn the_json_line_holds_what_tracings_holds() {
        let ours: serde_json::Value = serde_json::from_str(&format_line(
            true,
            "T",
            "gateway::request_log",
            "request",
            FIELDS,
        ))
        .unwrap();
        let mut theirs: serde_json::Value = serde_json::from_str(&tracing_writes(true)).unwrap();
        theirs["timestamp"] = serde_json::json!("T");
        assert_eq!(ours, theirs);
    }
}

/// Collects what is written, and how many writes were made.
#[cfg(test)]
mod tests_support {
    use std::io;
    use std::sync::{Arc, Mutex};

    #[derive(Debug, Clone, Default)]
    pub(super) struct Collected(pub(super) Arc<Mutex<(Vec<u8>, usize)>>);

    impl io::Write for Collected {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let mut collected = self.0.lock().unwrap();
            collected.0.extend_from_slice(bytes);
            collected.1 += 1;
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
}
