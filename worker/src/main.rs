use clap::Parser;
use prediction_contract::telemetry::init_tracing;
use worker::{Worker, WorkerConfig};

// A faster allocator than glibc's for the many small, short-lived allocations of
// request handling.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = WorkerConfig::parse();
    let _log_guard = init_tracing(config.log_format, &config.traces, "worker")?;
    if config.health_check {
        return worker::startup::health_check(&config).await;
    }
    Worker::build(&config).await?.run_until_stopped().await
}
