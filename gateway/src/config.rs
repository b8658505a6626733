//! Gateway settings: every one a flag and an environment variable.

use prediction_runtime::traces::TraceArgs;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use prediction_contract::ModelName;
use prediction_runtime::nats_connection::NatsArgs;
use prediction_runtime::renamed_env::Renamed;
use prediction_runtime::telemetry::LogFormat;

use crate::auth::TokenSources;
use crate::cache::{CacheSettings, RedisMode, RedisSettings};
use crate::model_call::ModelCallSettings;
use crate::state::Settings;
use prediction_runtime::http_server::{
    ConnectionLimits, default_connection_threads, default_max_connections,
};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "gateway",
    version,
    about = "HTTP gateway: answers predictions from Redis, asks NATS model workers on a miss."
)]
pub struct GatewayConfig {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub nats: NatsArgs,

    /// Redis holding the cached predictions. Credentials may go in the URL
    /// (`redis://user:password@host:6379`); `rediss://` asks for TLS. With
    /// `--redis-mode cluster`, a comma-separated list of seed nodes; with
    /// `sentinel`, of the sentinels.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,

    /// How that Redis is deployed: `standalone` (one server), `cluster` (Redis
    /// Cluster) or `sentinel` (a master and replicas behind sentinels).
    #[arg(long, env = "REDIS_MODE", value_enum, default_value = "standalone")]
    pub redis_mode: RedisMode,

    /// The master the sentinels monitor, with `--redis-mode sentinel`.
    #[arg(long, env = "REDIS_SENTINEL_MASTER")]
    pub redis_sentinel_master: Option<String>,

    /// PEM file of the CA that signed the Redis server's certificate (for
    /// `rediss://` URLs); the system's trust store is used otherwise.
    #[arg(long, env = "REDIS_TLS_CA")]
    pub redis_tls_ca: Option<std::path::PathBuf>,

    /// How long a client waits for a model's answer before getting 504.
    #[arg(long, env = "GATEWAY_REQUEST_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// For a model whose workers send no heartbeats (third-party workers): after
    /// this long without an answer (or twice the model's slowest answer seen, if
    /// longer) the request is sent once more, as a worker may have died holding
    /// it; the first answer wins. Default: half the request timeout. Workers that
    /// send heartbeats (this project's) are asked again only when they fall
    /// silent.
    #[arg(long, env = "GATEWAY_ATTEMPT_TIMEOUT", value_parser = humantime::parse_duration)]
    pub attempt_timeout: Option<Duration>,

    /// Model calls this gateway makes at once; past it requests get 503 with
    /// Retry-After instead of queueing.
    #[arg(long, env = "GATEWAY_MAX_INFLIGHT", default_value_t = 1024)]
    pub max_inflight: usize,

    /// How long the list of served models (from the workers' service info) is
    /// reused before the workers are asked again.
    #[arg(long, env = "GATEWAY_DISCOVERY_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub discovery_interval: Duration,

    /// How long a prediction stays fresh when its model does not say.
    #[arg(long, env = "GATEWAY_CACHE_TTL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub cache_ttl: Duration,

    /// The longest freshness a model may set for its predictions.
    #[arg(long, env = "GATEWAY_MAX_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub max_ttl: Duration,

    /// How long after its freshness a prediction is still served (`X-Cache: STALE`)
    /// while one refresh runs, or when the model fails. 0 turns it off.
    #[arg(long, env = "GATEWAY_STALE_TTL", default_value = "0s", value_parser = humantime::parse_duration)]
    pub stale_ttl: Duration,

    /// How long a hot prediction may be served from this gateway's memory without
    /// asking Redis; bounds how long a purge takes to reach every gateway.
    #[arg(long, env = "GATEWAY_LOCAL_TTL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub local_ttl: Duration,

    /// Predictions kept in this gateway's memory. 0 turns the in-process tier off.
    #[arg(long, env = "GATEWAY_LOCAL_CAPACITY", default_value_t = 10_000)]
    pub local_capacity: u64,

    /// Expiry of the lock one gateway holds while computing a prediction for all;
    /// it is extended while the computation runs, so this bounds only how long a
    /// crashed gateway blocks the key.
    #[arg(long, env = "GATEWAY_LOCK_TTL", default_value = "3s", value_parser = humantime::parse_duration)]
    pub lock_ttl: Duration,

    /// Token the purge routes require (`Authorization: Bearer <token>`). Unset:
    /// purges need an API token if there are any, else they are open. A flag's
    /// value shows in the process list: prefer the environment or a file.
    #[arg(long, env = "GATEWAY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// A file holding the admin token (a mounted secret), instead of
    /// `--admin-token`.
    #[arg(long, env = "GATEWAY_ADMIN_TOKEN_FILE", conflicts_with = "admin_token")]
    pub admin_token_file: Option<std::path::PathBuf>,

    /// Tokens the prediction routes accept (`Authorization: Bearer <token>`):
    /// repeat the flag or comma-separate, so tokens can be rotated. Unset: open.
    /// An empty token (a trailing comma) stops the gateway at startup.
    #[arg(
        long = "api-token",
        env = "GATEWAY_API_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_tokens: Vec<String>,

    /// A file of API tokens, one a line (a mounted secret); added to
    /// `--api-token`'s.
    #[arg(long, env = "GATEWAY_API_TOKENS_FILE")]
    pub api_token_file: Option<std::path::PathBuf>,

    /// Whether `/metrics` and `/openapi.json` need a token too.
    #[arg(long, env = "GATEWAY_PROTECT_METRICS")]
    pub protect_metrics: bool,

    /// Let every API token share the OpenAI routes' cached answers. By default
    /// they are partitioned by token: two tokens never share an answer.
    #[arg(long, env = "GATEWAY_OPENAI_SHARED_CACHE")]
    pub openai_shared_cache: bool,

    /// The model `POST /predict` (the original API) is routed to.
    #[arg(long, env = "GATEWAY_DEFAULT_MODEL", default_value = "price")]
    pub default_model: ModelName,

    /// Prefix of every Redis key, so deployments can share one Redis.
    #[arg(long, env = "GATEWAY_KEY_PREFIX", default_value = "")]
    pub key_prefix: String,

    /// Largest request body accepted, in bytes. The default leaves room for headers
    /// within NATS's default 1 MiB max_payload.
    #[arg(long, env = "GATEWAY_MAX_BODY", default_value_t = 512 * 1024)]
    pub max_body: usize,

    /// How long a client may take to send a request: a new connection its first
    /// one, an HTTP/1.1 request its head from its first byte, and then any
    /// request its whole body. A client slower than that (a slowloris) is
    /// disconnected (or, for a body, answered 400), so slow clients cannot hold
    /// the gateway's connections.
    #[arg(long, env = "GATEWAY_CLIENT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub client_timeout: Duration,

    /// How long a connection may stay open with no request in progress once it
    /// has served one (keep-alive). Keep it above the idle timeout of a load
    /// balancer in front (60 s on most), so the balancer closes first.
    #[arg(long, env = "GATEWAY_IDLE_TIMEOUT", default_value = "75s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// Requests an HTTP/1 connection serves before it is closed (its last
    /// response says `Connection: close`; the client opens another), as
    /// nginx's `keepalive_requests`: a connection cannot hold its thread's
    /// place for ever, and a new one is placed afresh. 0: no limit.
    #[arg(
        long,
        env = "GATEWAY_MAX_REQUESTS_PER_CONNECTION",
        default_value_t = 1000
    )]
    pub max_requests_per_connection: u64,

    /// Connections open at once; one accepted beyond it is closed at once.
    /// Default: the open-file limit (raised to its hard limit at startup) less
    /// an eighth, kept for NATS, Redis and files.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Threads that serve the HTTP connections, each with a runtime of its
    /// own: a connection stays on one, its requests never moved between
    /// threads. Default: one per core. 0 serves them on the main runtime's
    /// threads (tokio's work-stealing scheduler), which NATS and Redis share.
    #[arg(long, env = "GATEWAY_HTTP_THREADS")]
    pub http_threads: Option<usize>,

    /// How long a Redis command may take before the gateway answers without the cache.
    #[arg(long, env = "GATEWAY_REDIS_TIMEOUT", default_value = "250ms", value_parser = humantime::parse_duration)]
    pub redis_timeout: Duration,

    /// Log format.
    #[arg(long, env = "GATEWAY_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub traces: TraceArgs,

    /// The share of new traces to record, 0 to 1 (a trace the caller sampled
    /// is always continued). Without it the SDK reads `OTEL_TRACES_SAMPLER`
    /// and `OTEL_TRACES_SAMPLER_ARG` (default: every trace).
    #[arg(long, env = "GATEWAY_TRACE_SAMPLE_RATIO")]
    pub trace_sample_ratio: Option<f64>,
}

/// The gateway's environment variables renamed to follow the naming rule (see
/// `prediction_runtime::renamed_env`), still read under their old names.
pub const RENAMED_ENV: &[Renamed] = &[
    Renamed {
        old: "GATEWAY_REDIS_MODE",
        new: "REDIS_MODE",
        flag: "--redis-mode",
    },
    Renamed {
        old: "GATEWAY_REDIS_SENTINEL_MASTER",
        new: "REDIS_SENTINEL_MASTER",
        flag: "--redis-sentinel-master",
    },
    Renamed {
        old: "LOG_FORMAT",
        new: "GATEWAY_LOG_FORMAT",
        flag: "--log-format",
    },
    Renamed {
        old: "TRACE_SAMPLE_RATIO",
        new: "GATEWAY_TRACE_SAMPLE_RATIO",
        flag: "--trace-sample-ratio",
    },
];

impl GatewayConfig {
    /// The attempt timeout in force: the configured one, else half the deadline.
    pub fn attempt_timeout(&self) -> Duration {
        self.attempt_timeout.unwrap_or(self.request_timeout / 2)
    }
}

impl From<&GatewayConfig> for ConnectionLimits {
    fn from(config: &GatewayConfig) -> Self {
        Self {
            max_connections: config
                .max_connections
                .unwrap_or_else(default_max_connections),
            client_timeout: config.client_timeout,
            idle_timeout: config.idle_timeout,
            max_requests: config.max_requests_per_connection,
            connection_threads: config
                .http_threads
                .unwrap_or_else(default_connection_threads),
        }
    }
}

impl From<&GatewayConfig> for RedisSettings {
    fn from(config: &GatewayConfig) -> Self {
        Self {
            mode: config.redis_mode,
            url: config.redis_url.clone(),
            sentinel_master: config.redis_sentinel_master.clone(),
            tls_ca: config.redis_tls_ca.clone(),
            timeout: config.redis_timeout,
            lock_ttl: config.lock_ttl,
            key_prefix: config.key_prefix.clone(),
        }
    }
}

impl From<&GatewayConfig> for CacheSettings {
    fn from(config: &GatewayConfig) -> Self {
        Self {
            stale_ttl: config.stale_ttl,
            local_capacity: config.local_capacity,
            local_ttl: config.local_ttl,
        }
    }
}

impl From<&GatewayConfig> for ModelCallSettings {
    fn from(config: &GatewayConfig) -> Self {
        Self {
            cache_ttl: config.cache_ttl,
            max_ttl: config.max_ttl,
            attempt_timeout: config.attempt_timeout(),
            max_inflight: config.max_inflight,
        }
    }
}

impl From<&GatewayConfig> for Settings {
    fn from(config: &GatewayConfig) -> Self {
        Self {
            default_model: config.default_model.clone(),
            max_body: config.max_body,
            client_timeout: config.client_timeout,
            openai_shared_cache: config.openai_shared_cache,
        }
    }
}

impl<'a> From<&'a GatewayConfig> for TokenSources<'a> {
    fn from(config: &'a GatewayConfig) -> Self {
        Self {
            api: &config.api_tokens,
            api_file: config.api_token_file.as_deref(),
            admin: config.admin_token.as_deref(),
            admin_file: config.admin_token_file.as_deref(),
            protect_metrics: config.protect_metrics,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documentation() {
        let config = GatewayConfig::try_parse_from(["gateway"]).unwrap();
        assert_eq!(config.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(config.request_timeout, Duration::from_secs(5));
        assert_eq!(config.cache_ttl, Duration::from_secs(60));
        assert_eq!(config.default_model.as_str(), "price");
        assert_eq!(config.max_body, 524_288);
        assert_eq!(config.attempt_timeout(), Duration::from_millis(2_500));
    }

    #[test]
    fn durations_read_human_units() {
        let config = GatewayConfig::try_parse_from([
            "gateway",
            "--request-timeout",
            "500ms",
            "--cache-ttl",
            "2m",
        ])
        .unwrap();
        assert_eq!(config.request_timeout, Duration::from_millis(500));
        assert_eq!(config.cache_ttl, Duration::from_secs(120));
    }

    #[test]
    fn an_invalid_default_model_is_refused() {
        assert!(GatewayConfig::try_parse_from(["gateway", "--default-model", "a.*"]).is_err());
    }
}
