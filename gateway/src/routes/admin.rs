//! Cache administration: purges (behind the admin token when one is set; see
//! [`crate::auth`]).

use axum::Json;
use axum::extract::State;
use prediction_contract::{ErrorBody, ModelName};
use serde_json::{Value, json};

use super::extract::{JsonInput, ModelPath};
use crate::cache::CacheKey;
use crate::error::ApiError;
use crate::purge::{self, PurgeNotice};
use crate::state::AppState;

/// What the purge routes answer, for the OpenAPI document (never built).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(crate) enum PurgeResponses {
    /// What was purged: {"model", "purged": n, "gateways": k}
    #[response(status = 200)]
    Purged(#[to_schema] Value),
    /// An invalid model name or input
    #[response(status = 400)]
    BadRequest(#[to_schema] ErrorBody),
    /// A token is required and missing or wrong
    #[response(status = 401)]
    Unauthorized(#[to_schema] ErrorBody),
    /// An API token on a route that needs the admin token
    #[response(status = 403)]
    Forbidden(#[to_schema] ErrorBody),
    /// The body is over `--max-body`
    #[response(status = 413)]
    TooLarge(#[to_schema] ErrorBody),
    /// Redis is unavailable
    #[response(status = 503)]
    Unavailable(#[to_schema] ErrorBody),
}

/// `DELETE /v1/models/{model}/cache`: every cached prediction of the model, on
/// every gateway.
#[utoipa::path(delete, path = "/v1/models/{model}/cache", tag = "cache",
    params(("model" = String, Path, description = "Model name", pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")),
    responses(PurgeResponses),
    security((), ("bearer" = [])))]
pub async fn purge_model(
    State(state): State<AppState>,
    ModelPath(model): ModelPath,
) -> Result<Json<Value>, ApiError> {
    let purged = state
        .cache
        .purge_model(&model)
        .await
        .map_err(|err| ApiError::CacheUnavailable(err.to_string()))?;
    tracing::info!(%model, purged, "purged the model's cached predictions");
    Ok(tell_every_gateway(&state, &model, None, purged).await)
}

/// `POST /v1/models/{model}/cache/purge` with an input as the body: that one
/// cached prediction, on every gateway.
#[utoipa::path(post, path = "/v1/models/{model}/cache/purge", tag = "cache",
    params(("model" = String, Path, description = "Model name", pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")),
    request_body(content = serde_json::Value, description = "The input whose prediction to purge", content_type = "application/json"),
    responses(PurgeResponses),
    security((), ("bearer" = [])))]
pub async fn purge_input(
    State(state): State<AppState>,
    ModelPath(model): ModelPath,
    JsonInput(input): JsonInput,
) -> Result<Json<Value>, ApiError> {
    let key = state.cache.keys().key(&model, &input.canonical()?);
    let purged = state
        .cache
        .purge_key(&key)
        .await
        .map_err(|err| ApiError::CacheUnavailable(err.to_string()))?;
    Ok(tell_every_gateway(&state, &model, Some(&key), u64::from(purged)).await)
}

/// Broadcasts a purge Redis has done to every gateway's in-process tier and
/// answers with what was purged and how many gateways acknowledged.
async fn tell_every_gateway(
    state: &AppState,
    model: &ModelName,
    key: Option<&CacheKey>,
    purged: u64,
) -> Json<Value> {
    let notice = PurgeNotice {
        key_prefix: state.cache.keys().prefix().to_owned(),
        model: model.to_string(),
        key: key.map(|key| key.as_str().to_owned()),
    };
    let gateways = purge::broadcast(&state.nats, &notice).await;
    Json(json!({"model": model.as_str(), "purged": purged, "gateways": gateways}))
}
