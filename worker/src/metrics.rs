//! Prometheus metrics of the worker, served at `GET /metrics` on
//! `--metrics-listen`: per model, the requests and their outcomes, their
//! latency, the batch sizes, and how many requests are computing or waiting
//! now (the autoscaling signal, with the gateway's
//! `gateway_model_calls_in_flight`).

use std::net::SocketAddr;

use anyhow::Context;
use prediction_runtime::http_server::{self, ConnectionLimits};
use prediction_runtime::metrics::{LATENCY_BUCKETS, registry_of, render};
use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use tracing::info;

/// Batch sizes up to `--max-batch`'s largest useful values.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// The worker's metrics. Cheap to clone (every field is a shared handle); each
/// worker has a registry of its own, so several in one process count apart.
#[derive(Clone)]
pub struct WorkerMetrics {
    registry: Registry,
    /// Requests by model and outcome: `ok`, or the error code (400, 500, 503, 504).
    pub requests: IntCounterVec,
    /// From a request's arrival to its reply, by model.
    pub request_duration: HistogramVec,
    /// Inputs per inference call, by model (1 for a model that does not batch).
    pub batch_size: HistogramVec,
    /// Requests being computed now, by model.
    pub in_flight: IntGaugeVec,
    /// Requests admitted and waiting for a slot or a batch, by model.
    pub waiting: IntGaugeVec,
}

impl std::fmt::Debug for WorkerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerMetrics").finish_non_exhaustive()
    }
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkerMetrics {
    pub fn new() -> Self {
        let requests = IntCounterVec::new(
            Opts::new(
                "worker_requests_total",
                "Prediction requests by model and outcome (ok, or the error code).",
            ),
            &["model", "outcome"],
        )
        .expect("valid metric");
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "worker_request_duration_seconds",
                "From a request's arrival to its reply, by model.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["model"],
        )
        .expect("valid metric");
        let batch_size = HistogramVec::new(
            HistogramOpts::new("worker_batch_size", "Inputs per inference call, by model.")
                .buckets(BATCH_BUCKETS.to_vec()),
            &["model"],
        )
        .expect("valid metric");
        let in_flight = IntGaugeVec::new(
            Opts::new(
                "worker_requests_in_flight",
                "Requests being computed now, by model.",
            ),
            &["model"],
        )
        .expect("valid metric");
        let waiting = IntGaugeVec::new(
            Opts::new(
                "worker_requests_waiting",
                "Requests admitted and waiting for an inference slot or a batch, by model.",
            ),
            &["model"],
        )
        .expect("valid metric");
        let registry = registry_of(vec![
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_duration.clone()),
            Box::new(batch_size.clone()),
            Box::new(in_flight.clone()),
            Box::new(waiting.clone()),
        ]);
        Self {
            registry,
            requests,
            request_duration,
            batch_size,
            in_flight,
            waiting,
        }
    }

    /// The gauges of one model, made before its first request so that every
    /// served model appears (at 0) from the first scrape.
    pub fn model(&self, model: &str) -> ModelGauges {
        for outcome in ["ok", "400", "500", "503", "504"] {
            self.requests.with_label_values(&[model, outcome]);
        }
        self.request_duration.with_label_values(&[model]);
        ModelGauges {
            in_flight: self.in_flight.with_label_values(&[model]),
            waiting: self.waiting.with_label_values(&[model]),
            batch_size: self.batch_size.with_label_values(&[model]),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

/// One model's gauges, moved as its requests wait, run and finish.
#[derive(Debug, Clone)]
pub struct ModelGauges {
    pub in_flight: IntGauge,
    pub waiting: IntGauge,
    pub batch_size: prometheus::Histogram,
}

/// Serves `GET /metrics` on `address` until the returned handle is aborted.
/// What bounds the connections to `/metrics`: a few scrapers, each done within
/// seconds, so that no client can hold the worker's sockets.
const METRICS_CONNECTION_LIMITS: ConnectionLimits = ConnectionLimits {
    connection_threads: 0,
    max_connections: 64,
    client_timeout: std::time::Duration::from_secs(10),
    idle_timeout: std::time::Duration::from_secs(75),
    max_requests: 1000,
};

pub async fn serve_metrics(
    address: SocketAddr,
    metrics: WorkerMetrics,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding --metrics-listen {address}"))?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    metrics.render(),
                )
            }
        }),
    );
    info!(address = %bound, "serving Prometheus metrics at /metrics");
    let task = tokio::spawn(http_server::serve(
        listener,
        app,
        METRICS_CONNECTION_LIMITS,
        None,
        std::future::pending(),
    ));
    Ok((bound, task))
}
