//! What the JSON front doors (the native API and the original one) answer: the
//! prediction as the worker computed it, with the cache's headers (`X-Cache`,
//! RFC 9211 `Cache-Status`, `Age`, `Cache-Control`, `X-Model-Version`), or the
//! error as `{"error":{"code","message"}}`; and what the request log and the
//! metrics learn of it.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use prediction_contract::time::unix_now_ms;
use prediction_contract::{ErrorBody, ModelName};

use crate::error::ApiError;
use crate::prediction::{Answer, CacheOutcome, PredictionError};
use crate::request_log::PredictionOutcome;

pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
pub const X_MODEL_VERSION: HeaderName = HeaderName::from_static("x-model-version");
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// What the prediction routes answer, for the OpenAPI document (never built).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(crate) enum PredictionResponses {
    /// The prediction, as the model computed it
    #[response(status = 200, headers(
        ("x-cache" = String, description = "HIT, STALE, MISS or BYPASS"),
        ("age" = u64, description = "Whole seconds since the prediction was computed"),
        ("cache-control" = String, description = "max-age=<freshness>, or no-store"),
        ("cache-status" = String, description = "RFC 9211 cache status"),
        ("x-model-version" = String, description = "Version of the model that computed it"),
        ("x-request-id" = String, description = "The request's id, also in the worker's log"),
    ))]
    Prediction(#[to_schema] serde_json::Value),
    /// Malformed JSON, an input that is not an object, an invalid model name or query
    #[response(status = 400)]
    BadRequest(#[to_schema] ErrorBody),
    /// A token is required (`--api-token`) and missing or wrong
    #[response(status = 401)]
    Unauthorized(#[to_schema] ErrorBody),
    /// The body is over `--max-body`
    #[response(status = 413)]
    TooLarge(#[to_schema] ErrorBody),
    /// The worker rejected the input; its message is passed on
    #[response(status = 422)]
    Rejected(#[to_schema] ErrorBody),
    /// The model failed (details in the gateway's logs only)
    #[response(status = 500)]
    ModelFailed(#[to_schema] ErrorBody),
    /// No worker serves the model, workers are busy, the gateway is overloaded or not connected to NATS
    #[response(status = 503)]
    Unavailable(#[to_schema] ErrorBody),
    /// No answer within the deadline, or `only-if-cached` and nothing fresh is cached
    #[response(status = 504)]
    Timeout(#[to_schema] ErrorBody),
}

/// The response to a prediction of `model`, telling the request log how it went.
pub fn respond(model: ModelName, result: Result<Answer, PredictionError>) -> Response {
    let (cache, mut response) = match result {
        Ok(answer) => (Some(answer.outcome), prediction_response(&answer)),
        Err(err) => (None, ApiError::from(err).into_response()),
    };
    response
        .extensions_mut()
        .insert(PredictionOutcome { model, cache });
    response
}

/// The cache's headers of `answer`, as of now, into `headers`: for any front
/// door whose protocol runs over HTTP.
pub fn insert_cache_headers(answer: &Answer, headers: &mut HeaderMap) {
    let entry = &answer.entry;
    let now = unix_now_ms();
    // RFC 9211: `hit` when served from the cache (a negative ttl: served stale),
    // `fwd` with the reason when the model was asked.
    let cache_status = match answer.outcome {
        CacheOutcome::Hit => numbered("gateway; hit; ttl=", entry.fresh_left(now).as_secs()),
        CacheOutcome::Stale => numbered("gateway; hit; ttl=-", entry.staleness(now).as_secs()),
        outcome => forwarded_status(outcome),
    };
    let cache_control = if entry.fresh_for.is_zero() {
        HeaderValue::from_static("no-store")
    } else {
        numbered("max-age=", entry.fresh_for.as_secs())
    };
    headers.insert(X_CACHE, HeaderValue::from_static(answer.outcome.x_cache()));
    headers.insert(header::AGE, HeaderValue::from(entry.age(now).as_secs()));
    headers.insert(header::CACHE_CONTROL, cache_control);
    headers.insert(CACHE_STATUS, cache_status);
    headers.insert(X_MODEL_VERSION, header_value(&entry.model_version));
}

/// The cache's headers of an answer still being generated (`outcome` a miss
/// or a coalesced one): it has no age yet, nor a known freshness.
pub fn insert_live_cache_headers(outcome: CacheOutcome, headers: &mut HeaderMap) {
    headers.insert(X_CACHE, HeaderValue::from_static(outcome.x_cache()));
    headers.insert(header::AGE, HeaderValue::from_static("0"));
    headers.insert(CACHE_STATUS, forwarded_status(outcome));
}

/// RFC 9211's `Cache-Status` of an answer the model was asked for.
fn forwarded_status(outcome: CacheOutcome) -> HeaderValue {
    HeaderValue::from_static(match outcome {
        CacheOutcome::Miss { stored, forced } => match (forced, stored) {
            (false, true) => "gateway; fwd=miss; stored",
            (false, false) => "gateway; fwd=miss",
            (true, true) => "gateway; fwd=request; stored",
            (true, false) => "gateway; fwd=request",
        },
        CacheOutcome::Coalesced => "gateway; fwd=miss; collapsed",
        CacheOutcome::Bypass => "gateway; fwd=bypass; detail=cache-unavailable",
        // Served from the cache: the caller's own header says so.
        CacheOutcome::Hit | CacheOutcome::Stale => "gateway; hit",
    })
}

/// The prediction as the body. Built at its final size and without the
/// formatting machinery: this runs for every hit.
fn prediction_response(answer: &Answer) -> Response {
    let mut headers = HeaderMap::with_capacity(8);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    insert_cache_headers(answer, &mut headers);
    let mut response = Response::new(Body::from(answer.entry.prediction.clone()));
    *response.headers_mut() = headers;
    response
}
/// `prefix` followed by `number`, as a header value.
fn numbered(prefix: &'static str, number: u64) -> HeaderValue {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(number);
    let mut text = BytesMut::with_capacity(prefix.len() + digits.len());
    text.extend_from_slice(prefix.as_bytes());
    text.extend_from_slice(digits.as_bytes());
    HeaderValue::from_maybe_shared(text.freeze())
        .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// A header value from text a worker sent; anything not allowed in a header (an
/// odd version string) becomes `invalid`.
fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}
