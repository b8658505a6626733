//! Log setup shared by the gateway and the worker.

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Keeps the log writer thread alive; dropping it flushes the lines not yet written.
pub type LogGuard = tracing_appender::non_blocking::WorkerGuard;

/// Installs the global subscriber. The level comes from `RUST_LOG` (default `info`).
/// Lines are written to stdout by a thread of their own, so a request never waits
/// for a write to the terminal or a pipe; keep the returned guard until exit so the
/// last lines are flushed. Safe to call more than once: later calls leave the first
/// subscriber in place.
pub fn init_tracing(format: LogFormat) -> LogGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let is_terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    // Not lossy: under a flood of lines requests slow down rather than lose logs;
    // and a short queue, so a flood costs little memory.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(4_096)
        .finish(std::io::stdout());
    // Colours only for a person at a terminal; escape codes cost time and clutter files.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(is_terminal);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    guard
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
