//! Prometheus metrics, served at `GET /metrics`.
//!
//! Each [`Application`](crate::Application) has a registry of its own, so several
//! gateways in one process (as in the tests) count separately.

use prediction_runtime::http_server::ConnectionMetrics;
use prediction_runtime::metrics::{LATENCY_BUCKETS, registry_of, render};
use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// The gateway's metrics. Cheap to clone (every field is a shared handle).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Prediction requests by model and outcome: hit, stale, miss, coalesced,
    /// bypass, error. The `model` label of every metric is a model some worker
    /// has served, or `_other` (see `ModelDirectory::metric_label`), so the
    /// series stay bounded whatever names clients send.
    pub requests: IntCounterVec,
    /// Whole-request latency of prediction requests, by outcome.
    pub request_duration: HistogramVec,
    /// Model calls by model and result (ok, or the error code).
    pub model_calls: IntCounterVec,
    /// Model requests sent again, by model and reason (`silence`: no answer within
    /// the attempt timeout; `redirected`: sent on at once because the worker had
    /// requests waiting or was full; `busy`: sent again after a backoff because the
    /// worker was full).
    pub model_call_retries: IntCounterVec,
    /// Latency of model calls (the NATS request), by model.
    pub model_call_duration: HistogramVec,
    /// Model calls this gateway has in flight now, by model: with the workers'
    /// `worker_requests_in_flight` and `worker_requests_waiting`, the demand to
    /// scale workers on.
    pub model_calls_in_flight: IntGaugeVec,
    pub redis_errors: IntCounter,
    /// Keys with a model call in flight that other requests can join.
    pub coalesced_keys_in_flight: IntGauge,
    /// Background refreshes of stale entries that failed (the stale entry was
    /// served instead of the error).
    pub stale_refresh_failures: IntCounter,
    /// Tokens of the OpenAI routes' answers served from the cache, by model and
    /// kind (`prompt`, `completion`): what the model did not have to process.
    pub cached_tokens: IntCounterVec,
    /// Time from a request's arrival to its first token (for a streamed
    /// answer, its first chunk; else the whole answer), by outcome: `hit`
    /// (from the cache) or `miss` (from a generation).
    pub time_to_first_token: HistogramVec,
    /// Client connections open now.
    pub connections_open: IntGauge,
    /// Connections closed at once because `--max-connections` were open.
    pub connections_refused: IntCounter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let requests = IntCounterVec::new(
            Opts::new(
                "gateway_prediction_requests_total",
                "Prediction requests by model and cache outcome.",
            ),
            &["model", "outcome"],
        )
        .expect("valid metric");
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "gateway_request_duration_seconds",
                "Latency of prediction requests, by cache outcome.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["outcome"],
        )
        .expect("valid metric");
        let model_calls = IntCounterVec::new(
            Opts::new(
                "gateway_model_calls_total",
                "Model calls sent to workers, by model and result.",
            ),
            &["model", "result"],
        )
        .expect("valid metric");
        let model_call_retries = IntCounterVec::new(
            Opts::new(
                "gateway_model_call_retries_total",
                "Model requests sent again, by model and reason.",
            ),
            &["model", "reason"],
        )
        .expect("valid metric");
        let model_call_duration = HistogramVec::new(
            HistogramOpts::new(
                "gateway_model_call_duration_seconds",
                "Latency of model calls over NATS, by model.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["model"],
        )
        .expect("valid metric");
        let model_calls_in_flight = IntGaugeVec::new(
            Opts::new(
                "gateway_model_calls_in_flight",
                "Model calls in flight (sent to a worker, not yet answered), by model.",
            ),
            &["model"],
        )
        .expect("valid metric");
        let redis_errors = IntCounter::new("gateway_redis_errors_total", "Failed Redis commands.")
            .expect("valid metric");
        let coalesced_keys_in_flight = IntGauge::new(
            "gateway_coalesced_keys_in_flight",
            "Keys with a model call in flight that identical requests join.",
        )
        .expect("valid metric");
        let stale_refresh_failures = IntCounter::new(
            "gateway_stale_refresh_failures_total",
            "Failed refreshes of stale predictions (the stale prediction was served instead).",
        )
        .expect("valid metric");
        let cached_tokens = IntCounterVec::new(
            Opts::new(
                "gateway_cached_tokens_total",
                "Prompt and completion tokens answered from the cache, by model and kind.",
            ),
            &["model", "kind"],
        )
        .expect("valid metric");
        let time_to_first_token = HistogramVec::new(
            HistogramOpts::new(
                "gateway_time_to_first_token_seconds",
                "Time from a generative request's arrival to its first token, by outcome (hit, miss).",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["outcome"],
        )
        .expect("valid metric");
        let connections_open =
            IntGauge::new("gateway_connections_open", "Client connections open now.")
                .expect("valid metric");
        let connections_refused = IntCounter::new(
            "gateway_connections_refused_total",
            "Connections closed at once because --max-connections were open.",
        )
        .expect("valid metric");
        let registry = registry_of(vec![
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_duration.clone()),
            Box::new(model_calls.clone()),
            Box::new(model_call_retries.clone()),
            Box::new(model_call_duration.clone()),
            Box::new(model_calls_in_flight.clone()),
            Box::new(redis_errors.clone()),
            Box::new(coalesced_keys_in_flight.clone()),
            Box::new(stale_refresh_failures.clone()),
            Box::new(cached_tokens.clone()),
            Box::new(time_to_first_token.clone()),
            Box::new(connections_open.clone()),
            Box::new(connections_refused.clone()),
        ]);
        Self {
            registry,
            requests,
            request_duration,
            model_calls,
            model_call_retries,
            model_call_duration,
            model_calls_in_flight,
            redis_errors,
            coalesced_keys_in_flight,
            stale_refresh_failures,
            cached_tokens,
            time_to_first_token,
            connections_open,
            connections_refused,
        }
    }

    /// The server's connection metrics.
    pub fn connections(&self) -> ConnectionMetrics {
        ConnectionMetrics {
            open: self.connections_open.clone(),
            refused: self.connections_refused.clone(),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
