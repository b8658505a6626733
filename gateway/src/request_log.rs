//! One log line per request: method, path, status, latency, and for predictions the
//! model and where the answer came from.

use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use tracing::info;

use crate::routes::{AppState, PredictionOutcome};

/// Logs the request and, for predictions, counts it by model and cache outcome.
pub async fn log_request(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let metrics = &state.metrics;
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let response = next.run(request).await;
    let outcome = response.extensions().get::<PredictionOutcome>();
    let elapsed = started.elapsed();
    if let Some(outcome) = outcome {
        let label = outcome.cache.map_or("error", |cache| cache.label());
        metrics
            .requests
            .with_label_values(&[outcome.model.as_str(), label])
            .inc();
        metrics
            .request_duration
            .with_label_values(&[label])
            .observe(elapsed.as_secs_f64());
    }
    info!(
        %method,
        path,
        status = response.status().as_u16(),
        latency_ms = elapsed.as_secs_f64() * 1000.0,
        model = outcome.map(|o| o.model.as_str()),
        cache = outcome.and_then(|o| o.cache).map(|c| c.x_cache()),
        request_id,
        "request"
    );
    response
}
