//! Prometheus metrics, served at `GET /metrics`.
//!
//! Each [`Application`](crate::Application) has a registry of its own, so several
//! gateways in one process (as in the tests) count separately.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prediction_runtime::http_server::ConnectionMetrics;
use prediction_runtime::metrics::{LATENCY_BUCKETS, registry_of, render};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
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
    /// What [`Metrics::count_request`] resolved of the two above.
    resolved: Arc<ResolvedRequestSeries>,
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
            resolved: Arc::new(ResolvedRequestSeries {
                id: NEXT_METRICS_ID.fetch_add(1, Ordering::Relaxed),
                durations: Default::default(),
            }),
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

    /// Counts a prediction request of `model` (its metric label) answered with
    /// `outcome` (the outcome's label, or `error`) in `elapsed`.
    ///
    /// On every request, hits included: the series are resolved at their
    /// first use as before, then kept (the duration's by outcome, the count's
    /// of the last model and outcome this thread counted), not looked up by
    /// hashing their labels under a lock on every request.
    pub fn count_request(&self, model: &str, outcome: &'static str, elapsed: Duration) {
        LAST_COUNTED.with_borrow_mut(|last| {
            let counter = match last {
                Some(last) if last.is(self.resolved.id, model, outcome) => &last.counter,
                _ => {
                    &last
                        .insert(LastCounted {
                            metrics_id: self.resolved.id,
                            model: model.to_owned(),
                            outcome,
                            counter: self.requests.with_label_values(&[model, outcome]),
                        })
                        .counter
                }
            };
            counter.inc();
        });
        let seconds = elapsed.as_secs_f64();
        match OUTCOME_LABELS.iter().position(|label| *label == outcome) {
            Some(at) => self.resolved.durations[at]
                .get_or_init(|| self.request_duration.with_label_values(&[outcome]))
                .observe(seconds),
            None => self
                .request_duration
                .with_label_values(&[outcome])
                .observe(seconds),
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

/// The outcome labels of prediction requests.
const OUTCOME_LABELS: [&str; 6] = ["hit", "stale", "miss", "coalesced", "bypass", "error"];

/// Tells one [`Metrics`] from another (several gateways in one process).
static NEXT_METRICS_ID: AtomicU64 = AtomicU64::new(0);

/// The request series of one [`Metrics`], resolved at their first use.
#[derive(Debug)]
struct ResolvedRequestSeries {
    id: u64,
    durations: [OnceLock<Histogram>; OUTCOME_LABELS.len()],
}

/// The request counter this thread counted last: under load nearly every
/// request is of the same model and outcome as the one before it on its
/// thread (a hot key's hits).
struct LastCounted {
    metrics_id: u64,
    model: String,
    outcome: &'static str,
    counter: IntCounter,
}

impl LastCounted {
    fn is(&self, metrics_id: u64, model: &str, outcome: &str) -> bool {
        self.metrics_id == metrics_id && self.model == model && self.outcome == outcome
    }
}

thread_local! {
    static LAST_COUNTED: RefCell<Option<LastCounted>> = const { RefCell::new(None) };
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counted(metrics: &Metrics, model: &str, outcome: &str) -> u64 {
        metrics.requests.with_label_values(&[model, outcome]).get()
    }

    fn timed(metrics: &Metrics, outcome: &str) -> u64 {
        metrics
            .request_duration
            .with_label_values(&[outcome])
            .get_sample_count()
    }

    #[test]
    fn requests_are_counted_by_their_own_gateway_model_and_outcome_in_any_order() {
        let (one, two) = (Metrics::new(), Metrics::new());
        let second = Duration::from_secs(1);
        one.count_request("price", "hit", second);
        one.count_request("price", "hit", second);
        two.count_request("price", "hit", second);
        one.count_request("price", "miss", second);
        one.count_request("_other", "error", second);
        one.count_request("price", "hit", second);
        assert_eq!(counted(&one, "price", "hit"), 3);
        assert_eq!(counted(&two, "price", "hit"), 1);
        assert_eq!(counted(&one, "price", "miss"), 1);
        assert_eq!(counted(&one, "_other", "error"), 1);
        assert_eq!((timed(&one, "hit"), timed(&two, "hit")), (3, 1));
        assert_eq!((timed(&one, "miss"), timed(&one, "error")), (1, 1));
        assert!(
            !one.render().contains(r#"outcome="stale""#),
            "a series appears at its first use, not before"
        );
    }
}
