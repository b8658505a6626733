//! Log setup shared by the gateway and the worker.

use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::prelude::*;
use tracing_subscriber::{EnvFilter, Layer, Registry};

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
    _lines: tracing_appender::non_blocking::WorkerGuard,
}

/// Installs the global subscriber: log lines, and traces when `traces` names
/// an OTLP endpoint (spans named `service_name` unless it says otherwise). The
/// level comes from `RUST_LOG` (default `info`) and filters only the lines.
/// Lines are written to stdout by a thread of their own, so a request never
/// waits for a write to the terminal or a pipe; keep the returned guard until
/// exit so the last lines and spans go out. Safe to call more than once: later
/// calls leave the first subscriber in place. Call within a tokio runtime.
pub fn init_tracing(
    format: LogFormat,
    traces: &TraceArgs,
    service_name: &str,
) -> anyhow::Result<LogGuard> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let is_terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    // Not lossy: under a flood of lines requests slow down rather than lose logs;
    // and a short queue, so a flood costs little memory.
    let (writer, lines) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(4_096)
        .finish(std::io::stdout());
    // Colours only for a person at a terminal; escape codes cost time and clutter files.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(is_terminal);
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Text => fmt.with_filter(filter).boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).with_filter(filter).boxed(),
    };
    let (otel, traces) = otel_layer::<Registry>(traces, service_name)?;
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
