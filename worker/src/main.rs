use clap::Parser;
use prediction_runtime::renamed_env::command_line;
use prediction_runtime::telemetry::init_tracing;
use worker::config::RENAMED_ENV;
use worker::{Worker, WorkerConfig};

// A faster allocator than glibc's for the many small, short-lived allocations of
// request handling.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (args, renamed) = command_line(RENAMED_ENV);
    let config = WorkerConfig::parse_from(args);
    let _log_guard = init_tracing(
        config.log_format,
        &config.traces,
        config.trace_sample_ratio,
        "worker",
    )?;
    for warning in renamed {
        tracing::warn!("{warning}");
    }
    if config.health_check {
        return worker::startup::health_check(&config).await;
    }
    Worker::build(&config).await?.run_until_stopped().await
}
