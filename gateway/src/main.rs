use clap::Parser;
use gateway::config::RENAMED_ENV;
use gateway::{Application, GatewayConfig};
use prediction_runtime::renamed_env::command_line;
use prediction_runtime::telemetry::init_tracing;

// A faster allocator than glibc's for the many small, short-lived allocations of
// request handling.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (args, renamed) = command_line(RENAMED_ENV);
    let config = GatewayConfig::parse_from(args);
    let _log_guard = init_tracing(
        config.log_format,
        &config.traces,
        config.trace_sample_ratio,
        "gateway",
    )?;
    for warning in renamed {
        tracing::warn!("{warning}");
    }
    Application::build(config).await?.run_until_stopped().await
}
