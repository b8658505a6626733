//! The fast path of the busiest line, one per request: written into the
//! log's buffer by hand, in the format tracing's would use.

use std::io::Write as _;

use tracing_subscriber::fmt::MakeWriter as _;

use super::BufferedLines;

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
    LINE.with_borrow_mut(|(line, clock)| {
        line.clear();
        let timestamp = clock.now();
        format_line(line, fast.json, timestamp, target, message, fields);
        let _ = fast.lines.make_writer().write_all(line.as_bytes());
    });
    true
}

thread_local! {
    /// Each thread's line, written and copied into the buffer: no allocation
    /// per line; and its clock, which formats the date once a second.
    static LINE: std::cell::RefCell<(String, Rfc3339Clock)> =
        std::cell::RefCell::new((String::with_capacity(256), Rfc3339Clock::default()));
}

/// The time as tracing writes it (RFC 3339, UTC, microseconds:
/// `2026-12-06T13:20:07.330786Z`), its date and time of day formatted once
/// per second and the microseconds written into them.
#[derive(Debug, Default)]
struct Rfc3339Clock {
    second: u64,
    /// `2026-12-06T13:20:07.000000Z` of `second`.
    text: String,
}

impl Rfc3339Clock {
    fn now(&mut self) -> &str {
        self.at(std::time::SystemTime::now())
    }

    fn at(&mut self, time: std::time::SystemTime) -> &str {
        let since_epoch = time
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let second = since_epoch.as_secs();
        if self.text.is_empty() || second != self.second {
            self.second = second;
            self.text = humantime::format_rfc3339_micros(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(second),
            )
            .to_string();
        }
        // The six digits before the final `Z`.
        let micros = since_epoch.subsec_micros();
        let digits_at = self.text.len() - 7;
        let mut digits = [b'0'; 6];
        let mut rest = micros;
        for digit in digits.iter_mut().rev() {
            *digit = b'0' + u8::try_from(rest % 10).unwrap_or(0);
            rest /= 10;
        }
        self.text.replace_range(
            digits_at..digits_at + 6,
            std::str::from_utf8(&digits).unwrap_or("000000"),
        );
        &self.text
    }
}

/// Text that needs no escaping, in a JSON string or a quoted field.
fn is_plain(text: &str) -> bool {
    text.bytes()
        .all(|byte| (byte.is_ascii_graphic() && byte != b'"' && byte != b'\\') || byte == b' ')
}

/// The line as tracing-subscriber's formatter writes it: its `Full` text
/// format, or its JSON with the event's fields flattened.
fn format_line(
    line: &mut String,
    json: bool,
    timestamp: &str,
    target: &str,
    message: &str,
    fields: &[(&str, Option<Field<'_>>)],
) {
    use std::fmt::Write as _;
    let mut numbers = itoa::Buffer::new();
    // A field without a value is left out, as tracing leaves out a `None`.
    let present = fields
        .iter()
        .filter_map(|(name, value)| Some((*name, (*value)?)));
    if json {
        line.push_str(r#"{"timestamp":""#);
        line.push_str(timestamp);
        line.push_str(r#"","level":"INFO","message":"#);
        json_string(line, message);
        for (name, value) in present {
            line.push_str(",\"");
            line.push_str(name);
            line.push_str("\":");
            match value {
                Field::Text(text) | Field::Bare(text) => json_string(line, text),
                Field::Number(number) => line.push_str(numbers.format(number)),
            }
        }
        line.push_str(",\"target\":");
        json_string(line, target);
        line.push_str("}\n");
    } else {
        line.push_str(timestamp);
        line.push_str("  INFO ");
        line.push_str(target);
        line.push_str(": ");
        line.push_str(message);
        for (name, value) in present {
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
mod tests {
    use tracing_subscriber::fmt::format::FmtSpan;
    use tracing_subscriber::prelude::*;

    use super::*;

    /// What tracing-subscriber writes for the same event, without its time.
    fn tracing_writes(json: bool) -> String {
        let out = super::super::tests_support::Collected::default();
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
        let mut ours = String::new();
        format_line(
            &mut ours,
            false,
            "T",
            "gateway::request_log",
            "request",
            FIELDS,
        );
        let theirs = tracing_writes(false);
        assert_eq!(ours.strip_prefix("T ").unwrap(), theirs);
    }

    #[test]
    fn the_json_line_holds_what_tracings_holds() {
        let mut line = String::new();
        format_line(
            &mut line,
            true,
            "T",
            "gateway::request_log",
            "request",
            FIELDS,
        );
        let ours: serde_json::Value = serde_json::from_str(&line).unwrap();
        let mut theirs: serde_json::Value = serde_json::from_str(&tracing_writes(true)).unwrap();
        theirs["timestamp"] = serde_json::json!("T");
        assert_eq!(ours, theirs);
    }

    #[test]
    fn the_time_is_humantimes_to_the_microsecond_across_seconds() {
        let mut clock = Rfc3339Clock::default();
        let start = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_796_562_060);
        for offset_us in [
            0,
            1,
            999_999,
            1_000_000,
            1_000_007,
            61_234_567,
            86_400_000_000,
        ] {
            let time = start + std::time::Duration::from_micros(offset_us);
            let expected = humantime::format_rfc3339_micros(time).to_string();
            assert_eq!(clock.at(time), expected, "{offset_us} µs after");
        }
    }
}
