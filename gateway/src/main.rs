use clap::Parser;
use gateway::{Application, GatewayConfig};
use prediction_contract::telemetry::init_tracing;

// A faster allocator than glibc's for the many small, short-lived allocations of
// request handling.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = GatewayConfig::parse();
    let _log_guard = init_tracing(config.log_format, &config.traces, "gateway")?;
    Application::build(config).await?.run_until_stopped().await
}
