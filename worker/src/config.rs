//! Worker settings: every one a flag and an environment variable.

use std::time::Duration;

use clap::Parser;
use prediction_contract::ModelName;
use prediction_contract::nats_connection::NatsArgs;
use prediction_contract::telemetry::LogFormat;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "worker",
    version,
    about = "Serves model predictions on NATS (predict.<model>)."
)]
pub struct WorkerConfig {
    #[command(flatten)]
    pub nats: NatsArgs,

    /// Models to serve: repeat the flag or give a comma-separated list.
    #[arg(
        long = "model",
        env = "WORKER_MODELS",
        value_delimiter = ',',
        default_value = "price"
    )]
    pub models: Vec<ModelName>,

    /// Simulated compute time of the built-in `price` model.
    #[arg(long, env = "WORKER_LATENCY_MS", default_value_t = 1000)]
    pub latency_ms: u64,

    /// How many predictions this worker computes at once.
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 64)]
    pub concurrency: usize,

    /// How many more requests may wait in this worker for a free slot. Past that it
    /// answers at once with a busy error (503), so the caller can try another
    /// worker instead of queueing behind a saturated one.
    #[arg(long, env = "WORKER_QUEUE_DEPTH", default_value_t = 256)]
    pub queue_depth: usize,

    /// Write this worker's NATS service id to this file once it serves, so a
    /// container health check can ping exactly this worker.
    #[arg(long, env = "WORKER_ID_FILE")]
    pub id_file: Option<std::path::PathBuf>,

    /// Instead of serving: ping the worker whose id is in `--id-file` through NATS
    /// and exit 0 if it answers (for container health checks).
    #[arg(long, requires = "id_file")]
    pub health_check: bool,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl WorkerConfig {
    pub fn latency(&self) -> Duration {
        Duration::from_millis(self.latency_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_accept_repeated_flags_and_comma_lists() {
        let config =
            WorkerConfig::try_parse_from(["worker", "--model", "price,a", "--model", "b"]).unwrap();
        let names: Vec<_> = config.models.iter().map(ModelName::as_str).collect();
        assert_eq!(names, ["price", "a", "b"]);
    }

    #[test]
    fn defaults_serve_price_with_a_one_second_model() {
        let config = WorkerConfig::try_parse_from(["worker"]).unwrap();
        assert_eq!(config.models, [ModelName::parse("price").unwrap()]);
        assert_eq!(config.latency(), Duration::from_secs(1));
    }

    #[test]
    fn invalid_model_names_are_refused_at_startup() {
        assert!(WorkerConfig::try_parse_from(["worker", "--model", "a.b"]).is_err());
    }
}
