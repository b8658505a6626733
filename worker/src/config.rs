//! Worker settings: every one a flag and an environment variable.

use std::time::Duration;

use clap::Parser;
use prediction_contract::ModelName;
use prediction_runtime::nats_connection::NatsArgs;
use prediction_runtime::renamed_env::Renamed;
use prediction_runtime::telemetry::LogFormat;
use prediction_runtime::traces::TraceArgs;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "worker",
    version,
    about = "Serves model predictions on NATS (predict.<model>)."
)]
pub struct WorkerConfig {
    #[command(flatten)]
    pub nats: NatsArgs,

    /// Built-in models to serve (`price`, `echo`, `tiny-chat`, `tiny-embed`): repeat the flag or give a
    /// comma-separated list. Without it the worker serves `price`, unless it is
    /// given a `--model-config`, which then says everything it serves.
    #[arg(long = "model", env = "WORKER_MODELS", value_delimiter = ',')]
    pub models: Vec<ModelName>,

    /// A TOML manifest of ONNX models to serve (see models/models.toml).
    #[arg(long, env = "WORKER_MODEL_CONFIG")]
    pub model_config: Option<std::path::PathBuf>,

    /// How long a request for a batching model (ONNX) waits for others to join
    /// its batch.
    #[arg(long, env = "WORKER_BATCH_WINDOW", default_value = "1ms", value_parser = humantime::parse_duration)]
    pub batch_window: Duration,

    /// The most requests one inference call computes together; 1 turns batching off.
    #[arg(long, env = "WORKER_MAX_BATCH", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_batch: u16,

    /// Simulated compute time of the built-in `price` model.
    #[arg(long, env = "WORKER_LATENCY_MS", default_value_t = 1000)]
    pub latency_ms: u64,

    /// Time the built-in `tiny-chat` takes per token it streams.
    #[arg(long, env = "WORKER_TOKEN_INTERVAL_MS", default_value_t = 20)]
    pub token_interval_ms: u64,

    /// How many inference calls this worker runs at once (each of up to
    /// `--max-batch` requests for a batching model, one request otherwise).
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 64)]
    pub concurrency: usize,

    /// How many more requests may wait in this worker for a free slot. Past that it
    /// answers at once with a busy error (503), so the caller can try another
    /// worker instead of queueing behind a saturated one.
    #[arg(long, env = "WORKER_QUEUE_DEPTH", default_value_t = 256)]
    pub queue_depth: usize,

    /// How many requests may wait here before this worker turns away, with a busy
    /// reply, one whose caller offered to try another worker (the gateway does,
    /// with the `Avoid-Backlog` header, for up to two attempts when other workers
    /// serve the model). NATS hands each request to a random worker, so without
    /// this one worker can queue requests while another idles. Default: as many as
    /// run at once (`--concurrency`, times `--max-batch` for a batching model).
    /// Requests without the header wait.
    #[arg(long, env = "WORKER_REDIRECT_BACKLOG")]
    pub redirect_backlog: Option<usize>,

    /// Serve Prometheus metrics at `GET /metrics` on this address (e.g.
    /// `0.0.0.0:9100`): per model, requests by outcome, latency, batch sizes,
    /// and requests computing and waiting. Off when not given.
    #[arg(long, env = "WORKER_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,

    /// Write this worker's NATS service id to this file once it serves, so a
    /// container health check can ping exactly this worker.
    #[arg(long, env = "WORKER_ID_FILE")]
    pub id_file: Option<std::path::PathBuf>,

    /// Instead of serving: ping the worker whose id is in `--id-file` through NATS
    /// and exit 0 if it answers (for container health checks).
    #[arg(long, requires = "id_file")]
    pub health_check: bool,

    /// Log format.
    #[arg(long, env = "WORKER_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub traces: TraceArgs,

    /// The share of new traces to record, 0 to 1 (a trace the caller sampled
    /// is always continued). Without it the SDK reads `OTEL_TRACES_SAMPLER`
    /// and `OTEL_TRACES_SAMPLER_ARG` (default: every trace).
    #[arg(long, env = "WORKER_TRACE_SAMPLE_RATIO")]
    pub trace_sample_ratio: Option<f64>,
}

impl WorkerConfig {
    pub fn latency(&self) -> Duration {
        Duration::from_millis(self.latency_ms)
    }

    pub fn token_interval(&self) -> Duration {
        Duration::from_millis(self.token_interval_ms)
    }

    /// The built-in models to serve: those named, else `price` when there is no
    /// manifest either.
    pub fn builtin_model_names(&self) -> Vec<ModelName> {
        if self.models.is_empty() && self.model_config.is_none() {
            vec![ModelName::parse("price").expect("a valid constant name")]
        } else {
            self.models.clone()
        }
    }
}

/// The worker's environment variables renamed to follow the naming rule (see
/// `prediction_runtime::renamed_env`), still read under their old names.
pub const RENAMED_ENV: &[Renamed] = &[
    Renamed {
        old: "LOG_FORMAT",
        new: "WORKER_LOG_FORMAT",
        flag: "--log-format",
    },
    Renamed {
        old: "TRACE_SAMPLE_RATIO",
        new: "WORKER_TRACE_SAMPLE_RATIO",
        flag: "--trace-sample-ratio",
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_accept_repeated_flags_and_comma_lists() {
        let config =
            WorkerConfig::try_parse_from(["worker", "--model", "price,a", "--model", "b"]).unwrap();
        let names: Vec<_> = config.models.iter().map(ModelName::as_str).collect();
        assert_eq!(names, ["price", "a", "b"]);
        assert_eq!(config.builtin_model_names(), config.models);
    }

    #[test]
    fn defaults_serve_price_with_a_one_second_model() {
        let config = WorkerConfig::try_parse_from(["worker"]).unwrap();
        assert_eq!(
            config.builtin_model_names(),
            [ModelName::parse("price").unwrap()]
        );
        assert_eq!(config.latency(), Duration::from_secs(1));
        assert_eq!(config.batch_window, Duration::from_millis(1));
        assert_eq!(config.max_batch, 64);
    }

    #[test]
    fn a_manifest_alone_serves_only_its_models_and_builtins_can_join_it() {
        let alone = WorkerConfig::try_parse_from(["worker", "--model-config", "m.toml"]).unwrap();
        assert!(alone.builtin_model_names().is_empty());
        let both = WorkerConfig::try_parse_from([
            "worker",
            "--model-config",
            "m.toml",
            "--model",
            "price",
        ])
        .unwrap();
        assert_eq!(
            both.builtin_model_names(),
            [ModelName::parse("price").unwrap()]
        );
    }

    #[test]
    fn max_batch_zero_is_refused() {
        assert!(WorkerConfig::try_parse_from(["worker", "--max-batch", "0"]).is_err());
    }

    #[test]
    fn invalid_model_names_are_refused_at_startup() {
        assert!(WorkerConfig::try_parse_from(["worker", "--model", "a.b"]).is_err());
    }
}
