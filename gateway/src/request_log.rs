//! One log line per request: method, path, status, latency, and for predictions the
//! model and where the answer came from.

use std::time::Instant;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use tracing::info;

use crate::routes::PredictionOutcome;

pub async fn log_request(request: Request, next: Next) -> Response {
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
    info!(
        %method,
        path,
        status = response.status().as_u16(),
        latency_ms = started.elapsed().as_secs_f64() * 1000.0,
        model = outcome.map(|o| o.model.as_str()),
        cache = outcome.and_then(|o| o.cache).map(|c| c.as_str()),
        request_id,
        "request"
    );
    response
}
