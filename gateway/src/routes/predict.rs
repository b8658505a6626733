//! The prediction routes: read-through cache in front of the model workers.

use std::collections::HashSet;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prediction_contract::{CanonicalInput, ModelName, cache_key};
use tracing::warn;

use super::AppState;
use crate::cache::{CacheError, CachedPrediction, unix_now_ms};
use crate::error::ApiError;

pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
pub const X_MODEL_VERSION: HeaderName = HeaderName::from_static("x-model-version");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Where an answer came from, as told in `X-Cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Served from a fresh cache entry.
    Hit,
    /// Computed by a worker and stored.
    Miss,
    /// Computed by a worker without the cache, which was unreachable.
    Bypass,
}

impl CacheOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "HIT",
            Self::Miss => "MISS",
            Self::Bypass => "BYPASS",
        }
    }
}

/// Attached to each prediction response so the request log can name the model and
/// the cache outcome.
#[derive(Debug, Clone)]
pub struct PredictionOutcome {
    pub model: ModelName,
    pub cache: Option<CacheOutcome>,
}

/// `POST /v1/models/{model}/predict` with the input as a JSON object body.
pub async fn predict_from_body(
    State(state): State<AppState>,
    model: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let model = match parse_model(model) {
        Ok(model) => model,
        Err(err) => return err.into_response(),
    };
    let input = read_json_body(body, state.settings.max_body);
    serve(&state, model, input, &headers).await
}

/// `POST /predict`: the original API, `{"product_id": "ETH/EUR"}`, answered by the
/// default model.
pub async fn predict_default_model(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let model = state.settings.default_model.clone();
    let input = read_json_body(body, state.settings.max_body);
    serve(&state, model, input, &headers).await
}

/// `GET /v1/models/{model}/predict?key=value&...`: the query becomes an object of
/// strings, for trying things with curl.
pub async fn predict_from_query(
    State(state): State<AppState>,
    model: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let model = match parse_model(model) {
        Ok(model) => model,
        Err(err) => return err.into_response(),
    };
    let input = query
        .map_err(|rejection| ApiError::InvalidQuery(rejection.body_text()))
        .and_then(|Query(pairs)| input_from_query(&pairs));
    serve(&state, model, input, &headers).await
}

fn parse_model(path: Result<Path<String>, PathRejection>) -> Result<ModelName, ApiError> {
    let Path(name) = path.map_err(|rejection| ApiError::InvalidQuery(rejection.body_text()))?;
    Ok(ModelName::parse(&name)?)
}

fn read_json_body(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<CanonicalInput, ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::BodyTooLarge { limit }
        } else {
            ApiError::BodyUnreadable
        }
    })?;
    Ok(CanonicalInput::from_json_slice(&body)?)
}

fn input_from_query(pairs: &[(String, String)]) -> Result<CanonicalInput, ApiError> {
    let mut seen = HashSet::with_capacity(pairs.len());
    for (key, _) in pairs {
        if !seen.insert(key.as_str()) {
            return Err(ApiError::InvalidQuery(format!(
                "query parameter {key:?} is given more than once"
            )));
        }
    }
    Ok(CanonicalInput::from_pairs(
        pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    ))
}

async fn serve(
    state: &AppState,
    model: ModelName,
    input: Result<CanonicalInput, ApiError>,
    headers: &HeaderMap,
) -> Response {
    let request_id = headers
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    let (cache, mut response) = match input {
        Ok(input) => match answer(state, &model, &input, request_id).await {
            Ok((outcome, response)) => (Some(outcome), response),
            Err(err) => (None, err.into_response()),
        },
        Err(err) => (None, err.into_response()),
    };
    response
        .extensions_mut()
        .insert(PredictionOutcome { model, cache });
    response
}

/// The read-through cache: a fresh entry if there is one, else the workers' answer,
/// stored for the next request.
async fn answer(
    state: &AppState,
    model: &ModelName,
    input: &CanonicalInput,
    request_id: &str,
) -> Result<(CacheOutcome, Response), ApiError> {
    let key = cache_key(&state.settings.key_prefix, model, input);
    let mut cache_reachable = true;
    match state.cache.lookup(&key).await {
        Ok(Some(entry)) => {
            let now = unix_now_ms();
            if entry.is_fresh(now) {
                return Ok((
                    CacheOutcome::Hit,
                    prediction_response(&entry, now, CacheOutcome::Hit, false),
                ));
            }
        }
        Ok(None) => {}
        Err(CacheError::Corrupt(err)) => {
            warn!(%model, key, error = %err, "unreadable cache entry; recomputing and overwriting it");
        }
        Err(err) => {
            warn!(%model, error = %err, cause = ?std::error::Error::source(&err), "Redis unavailable; answering without the cache");
            cache_reachable = false;
        }
    }

    let reply = state.models.predict(model, input, request_id).await?;
    let entry = CachedPrediction {
        prediction: reply.prediction,
        model_version: reply.metadata.model_version,
        computed_at_ms: unix_now_ms(),
        fresh_for: reply
            .metadata
            .freshness_ttl
            .unwrap_or(state.settings.cache_ttl),
    };
    let outcome = if cache_reachable {
        CacheOutcome::Miss
    } else {
        CacheOutcome::Bypass
    };
    let mut stored = false;
    if cache_reachable && !entry.fresh_for.is_zero() {
        match state.cache.store(&key, &entry).await {
            Ok(()) => stored = true,
            Err(err) => warn!(%model, error = %err, "could not store the prediction"),
        }
    }
    let now = entry.computed_at_ms;
    Ok((outcome, prediction_response(&entry, now, outcome, stored)))
}

fn prediction_response(
    entry: &CachedPrediction,
    now_ms: u64,
    outcome: CacheOutcome,
    stored: bool,
) -> Response {
    let age_secs = entry.age(now_ms).as_secs();
    let cache_status = match outcome {
        CacheOutcome::Hit => format!("gateway; hit; ttl={}", entry.fresh_left(now_ms).as_secs()),
        CacheOutcome::Miss if stored => "gateway; fwd=miss; stored".to_owned(),
        CacheOutcome::Miss => "gateway; fwd=miss".to_owned(),
        CacheOutcome::Bypass => "gateway; fwd=bypass; detail=cache-unavailable".to_owned(),
    };
    let cache_control = if entry.fresh_for.is_zero() {
        "no-store".to_owned()
    } else {
        format!("max-age={}", entry.fresh_for.as_secs())
    };
    let mut response = (StatusCode::OK, entry.prediction.clone()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(X_CACHE, HeaderValue::from_static(outcome.as_str()));
    headers.insert(header::AGE, HeaderValue::from(age_secs));
    headers.insert(header::CACHE_CONTROL, header_value(cache_control));
    headers.insert(CACHE_STATUS, header_value(cache_status));
    headers.insert(X_MODEL_VERSION, header_value(entry.model_version.clone()));
    response
}

/// A header value from text we built or a worker sent; anything not allowed in a
/// header (a worker's odd version string) becomes `invalid`.
fn header_value(text: String) -> HeaderValue {
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_pairs_become_the_input_object() {
        let pairs = vec![("product_id".to_owned(), "ETH/EUR".to_owned())];
        assert_eq!(
            input_from_query(&pairs).unwrap().as_str(),
            r#"{"product_id":"ETH/EUR"}"#
        );
    }

    #[test]
    fn repeated_query_parameters_are_refused() {
        let pairs = vec![
            ("a".to_owned(), "1".to_owned()),
            ("a".to_owned(), "2".to_owned()),
        ];
        assert!(matches!(
            input_from_query(&pairs),
            Err(ApiError::InvalidQuery(_))
        ));
    }
}
