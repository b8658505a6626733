//! Log setup shared by the gateway and the worker.

use std::sync::atomic::{AtomicU64, Ordering};

use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::prelude::*;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::log_writer::{BufferedLines, FlushGuard};
use crate::traces::{TraceArgs, TracerGuard, otel_layer};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Keeps the log writer thread and the trace exporter alive; dropping it
/// flushes the lines not yet written and the spans not yet sent.
#[derive(Debug)]
pub struct LogGuard {
    // Dropped in this order: the spans' export may log.
    _traces: TracerGuard,
    _lines: FlushGuard,
}

/// Installs the global subscriber: log lines, and traces when `traces` names
/// an OTLP endpoint (spans named `service_name` unless it says otherwise). The
/// level comes from `RUST_LOG` (default `info`) and filters only the lines.
/// Lines are buffered and written to stdout by a thread of their own (see
/// [`log_writer`](crate::log_writer)), so a request never waits for a write to
/// the terminal or a pipe; keep the returned guard until exit so the last
/// lines and spans go out. Safe to call more than once: later
/// calls leave the first subscriber in place. Call within a tokio runtime.
pub fn init_tracing(
    format: LogFormat,
    traces: &TraceArgs,
    sample_ratio: Option<f64>,
    service_name: &str,
) -> anyhow::Result<LogGuard> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let is_terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let (writer, lines) = BufferedLines::new(std::io::stdout());
    if !is_terminal {
        crate::log_writer::install_fast_lines(writer.clone(), format == LogFormat::Json);
    }
    // Colours only for a person at a terminal; escape codes cost time and clutter files.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(is_terminal);
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Text => fmt.with_filter(filter).boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).with_filter(filter).boxed(),
    };
    let (otel, traces) = otel_layer::<Registry>(traces, sample_ratio, service_name)?;
    // The spans of the request path are made only when traces are on (see
    // `traces::enabled`); the exporter sees those at info and above.
    let mut layers = vec![fmt];
    if let Some(otel) = otel {
        layers.push(otel.with_filter(LevelFilter::INFO).boxed());
    }
    let _ = tracing_subscriber::registry().with(layers).try_init();
    Ok(LogGuard {
        _traces: traces,
        _lines: lines,
    })
}

/// A URL, or a comma-separated list of them, fit for logs: any `user:password@`
/// part is replaced by `***@`.
pub fn redact_url(url: &str) -> String {
    // A list (cluster seeds, sentinels): each URL on its own, or the first one's
    // authority would run on into the next.
    if url.contains(',') {
        return url.split(',').map(redact_url).collect::<Vec<_>>().join(",");
    }
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let authority_end = url[scheme_end..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| scheme_end + i);
    match url[scheme_end..authority_end].rfind('@') {
        Some(at) => format!("{}***@{}", &url[..scheme_end], &url[scheme_end + at + 1..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn credentials_are_removed_from_urls() {
        assert_eq!(
            redact_url("redis://user:s3cret@cache:6379/0"),
            "redis://***@cache:6379/0"
        );
        assert_eq!(redact_url("nats://tok@nats:4222"), "nats://***@nats:4222");
        assert_eq!(redact_url("nats://nats:4222"), "nats://nats:4222");
        assert_eq!(
            redact_url("redis://:s3cret@a:1,redis://:s3cret@b:2"),
            "redis://***@a:1,redis://***@b:2"
        );
        assert_eq!(redact_url("redis://h/0?x=a@b"), "redis://h/0?x=a@b");
    }
}

/// A budget of log lines for one kind of event a client can cause at will (an
/// unknown model, a refused connection): at most [`LogBudget::LINES_PER_WINDOW`]
/// lines per [`LogBudget::WINDOW_MS`], so no client can flood the log; the first
/// line written after some were left out says how many.
///
/// Hand-written rather than a rate-limiting layer (tracing-throttle): a layer
/// filters every event, the request log's line included, on every request.
#[derive(Debug, Default)]
pub struct LogBudget {
    /// The window the count belongs to: unix milliseconds / `WINDOW_MS`.
    window: AtomicU64,
    lines: AtomicU64,
    suppressed: AtomicU64,
}

impl LogBudget {
    pub const WINDOW_MS: u64 = 10_000;
    pub const LINES_PER_WINDOW: u64 = 10;

    pub const fn new() -> Self {
        Self {
            window: AtomicU64::new(0),
            lines: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether a line may be written now: `Some(n)`, `n` lines having been left
    /// out since the last one written; `None`: leave this one out.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(prediction_contract::time::unix_now_ms())
    }

    fn allow_at(&self, now_ms: u64) -> Option<u64> {
        let window = now_ms / Self::WINDOW_MS;
        if self.window.swap(window, Ordering::Relaxed) != window {
            self.lines.store(0, Ordering::Relaxed);
        }
        if self.lines.fetch_add(1, Ordering::Relaxed) < Self::LINES_PER_WINDOW {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod budget_tests {
    use super::LogBudget;

    #[test]
    fn a_budget_lets_its_lines_through_then_counts_what_it_leaves_out() {
        let budget = LogBudget::new();
        let first_window = 1_000 * LogBudget::WINDOW_MS;
        let allowed: Vec<_> = (0..25)
            .filter_map(|_| budget.allow_at(first_window))
            .collect();
        assert_eq!(allowed, vec![0; 10]);
        // The next window's first line tells of the 15 left out.
        let next = first_window + LogBudget::WINDOW_MS;
        assert_eq!(budget.allow_at(next), Some(15));
        assert_eq!(budget.allow_at(next), Some(0));
    }
}
