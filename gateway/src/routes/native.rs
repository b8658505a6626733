//! The native API: `/v1/models/{model}/predict`, any model by name, the input
//! a JSON object body (`POST`) or the query's parameters (`GET`).

use axum::extract::State;
use axum::response::Response;
use prediction_contract::ModelName;

use super::answer::{PredictionResponses, respond};
use super::extract::{ModelPath, PredictionBody, PredictionHeaders, QueryInput};
use crate::input::RawInput;
use crate::prediction::PredictionRequest;
use crate::state::AppState;

/// `POST /v1/models/{model}/predict` with the input as a JSON object body.
#[utoipa::path(post, path = "/v1/models/{model}/predict", tag = "predictions",
    params(("model" = String, Path, description = "Model name", pattern = "^[a-z0-9][a-z0-9_-]{0,63}$"), ("cache-control" = Option<String>, Header, description = "no-cache, no-store, max-age=N, only-if-cached")),
    request_body(content = serde_json::Value, description = "The input: a JSON object", content_type = "application/json"),
    responses(PredictionResponses),
    security((), ("bearer" = [])))]
pub async fn predict_from_body(
    State(state): State<AppState>,
    ModelPath(model): ModelPath,
    headers: PredictionHeaders,
    PredictionBody(input): PredictionBody,
) -> Response {
    predict(&state, model, input, &headers).await
}

/// `GET /v1/models/{model}/predict?key=value&...`: the query becomes an object of
/// strings, for trying things with curl.
#[utoipa::path(get, path = "/v1/models/{model}/predict", tag = "predictions",
    params(("model" = String, Path, description = "Model name", pattern = "^[a-z0-9][a-z0-9_-]{0,63}$"),
        ("product_id" = Option<String>, Query, description = "Every query parameter becomes a string field of the input")),
    responses(PredictionResponses),
    security((), ("bearer" = [])))]
pub async fn predict_from_query(
    State(state): State<AppState>,
    ModelPath(model): ModelPath,
    headers: PredictionHeaders,
    QueryInput(input): QueryInput,
) -> Response {
    predict(&state, model, input, &headers).await
}

/// Asks the core for `model`'s prediction of `input` and answers it as JSON.
pub(super) async fn predict(
    state: &AppState,
    model: ModelName,
    input: RawInput,
    headers: &PredictionHeaders,
) -> Response {
    let result = state
        .predictor
        .predict(PredictionRequest {
            model: &model,
            input,
            directives: &headers.directives,
            request_id: headers.request_id(),
            sampled: false,
        })
        .await;
    respond(model, result)
}
