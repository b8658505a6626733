use clap::Parser;
use gateway::{Application, GatewayConfig};
use prediction_contract::telemetry::init_tracing;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = GatewayConfig::parse();
    init_tracing(config.log_format);
    Application::build(config).await?.run_until_stopped().await
}
