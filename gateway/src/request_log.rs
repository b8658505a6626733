//! One log line per request: method, path, status, latency, and for predictions the
//! model and where the answer came from. Answered probes and scrapes at DEBUG.

use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::HeaderName;
use axum::middleware::Next;
use axum::response::Response;
use prediction_contract::ModelName;
use prediction_runtime::log_writer::{self, Field};
use prediction_runtime::traces;
use tracing::{Instrument, debug, info};

use crate::prediction::CacheOutcome;
use crate::state::AppState;

/// The request's id: the client's, or one made for it (see `startup`).
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest request id a client may choose: a UUID is 36 bytes, a trace id
/// 32; this leaves room for prefixes without letting a client write kilobytes
/// into every log line and reply.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Drops a client's `X-Request-Id` that is longer than [`MAX_REQUEST_ID_LEN`] or
/// holds anything but visible ASCII, so the gateway gives the request an id of
/// its own instead (and echoes that one).
pub fn drop_unusable_request_id<B>(mut request: axum::http::Request<B>) -> axum::http::Request<B> {
    let usable = |value: &axum::http::HeaderValue| {
        value.len() <= MAX_REQUEST_ID_LEN
            && !value.is_empty()
            && value.as_bytes().iter().all(|byte| byte.is_ascii_graphic())
    };
    if request
        .headers()
        .get(&X_REQUEST_ID)
        .is_some_and(|value| !usable(value))
    {
        request.headers_mut().remove(&X_REQUEST_ID);
    }
    request
}

/// What probes and scrapers ask every few seconds. Answered, they are logged at
/// DEBUG, so the default log shows predictions and faults; a probe that fails
/// is logged like any request.
const ROUTINE_PATHS: [&str; 6] = [
    "/healthz",
    "/readyz",
    "/health",
    "/metrics",
    "/v2/health/live",
    "/v2/health/ready",
];

/// Whether the request is a probe or a scrape that was answered.
fn is_routine(path: &str, status: u16) -> bool {
    status < 400 && ROUTINE_PATHS.contains(&path)
}

/// Attached by the prediction routes to each response (success or error) so the
/// request log and the metrics can name the model and the cache outcome (`None`
/// for an error).
#[derive(Debug, Clone)]
pub struct PredictionOutcome {
    pub model: ModelName,
    pub cache: Option<CacheOutcome>,
}

/// Logs the request and, for predictions, counts it by model and cache outcome.
pub async fn log_request(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let metrics = &state.metrics;
    let started = Instant::now();
    let method = request.method().clone();
    // Clones that share the request's buffers, not copies.
    let uri = request.uri().clone();
    let request_id = request.headers().get(&X_REQUEST_ID).cloned();
    let (response, trace_id) = if traces::enabled() {
        let span = tracing::info_span!(
            "HTTP request",
            otel.name = format!("{method} {}", uri.path()),
            otel.kind = "server",
            http.request.method = %method,
            url.path = uri.path(),
        );
        traces::Caller::from_headers(|name| request.headers().get(name)?.to_str().ok())
            .continued_by(&span);
        let trace_id = traces::trace_id(&span);
        (next.run(request).instrument(span).await, trace_id)
    } else {
        (next.run(request).await, None)
    };
    let outcome = response.extensions().get::<PredictionOutcome>();
    let elapsed = started.elapsed();
    if let Some(outcome) = outcome {
        let label = outcome.cache.map_or("error", |cache| cache.label());
        let model = state.directory.metric_label(&outcome.model);
        metrics.requests.with_label_values(&[model, label]).inc();
        metrics
            .request_duration
            .with_label_values(&[label])
            .observe(elapsed.as_secs_f64());
    }
    let status = response.status().as_u16();
    // Whole microseconds: exact, and cheaper to write than a float.
    let latency_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    let model = outcome.map(|o| o.model.as_str());
    let cache = outcome.and_then(|o| o.cache).map(|c| c.x_cache());
    let request_id = request_id
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    if is_routine(uri.path(), status) {
        debug!(
            %method,
            path = uri.path(),
            status,
            latency_us,
            request_id,
            "request"
        );
        return response;
    }
    // The line of every other request: written by hand into the log's buffer
    // where it can be (see `log_writer::write_info`), else through tracing.
    if tracing::enabled!(tracing::Level::INFO) {
        let written = log_writer::write_info(
            module_path!(),
            "request",
            &[
                ("method", Some(Field::Bare(method.as_str()))),
                ("path", Some(Field::Text(uri.path()))),
                ("status", Some(Field::Number(u64::from(status)))),
                ("latency_us", Some(Field::Number(latency_us))),
                ("model", model.map(Field::Text)),
                ("cache", cache.map(Field::Text)),
                ("request_id", Some(Field::Text(request_id))),
                ("trace_id", trace_id.as_deref().map(Field::Text)),
            ],
        );
        if !written {
            info!(
                %method,
                path = uri.path(),
                status,
                latency_us,
                model,
                cache,
                request_id,
                trace_id,
                "request"
            );
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answered_probes_and_scrapes_are_routine_and_failed_ones_are_not() {
        for path in ROUTINE_PATHS {
            assert!(is_routine(path, 200), "{path}");
            assert!(!is_routine(path, 503), "{path}");
        }
        assert!(!is_routine("/predict", 200));
        assert!(!is_routine("/v1/models/price/predict", 200));
        assert!(!is_routine("/healthz/x", 200));
    }
}
