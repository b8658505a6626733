//! The original API, field for field: `POST /predict` with
//! `{"product_id": "ETH/EUR"}`, answered by `--default-model` (`price`, whose
//! answer is the original's `{"predicted_price", "product_id", "timestamp",
//! "timestamp_sec"}`), and `GET /health`.

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use serde_json::{Value, json};

use super::answer::PredictionResponses;
use super::extract::{PredictionBody, PredictionHeaders};
use super::native;
use crate::state::AppState;

/// `POST /predict`: the original API, `{"product_id": "ETH/EUR"}`, answered by the
/// default model.
#[utoipa::path(post, path = "/predict", tag = "predictions",
    params(("cache-control" = Option<String>, Header, description = "no-cache, no-store, max-age=N, only-if-cached")),
    request_body(content = serde_json::Value, description = "The input of the default model, e.g. {\"product_id\": \"ETH/EUR\"}", content_type = "application/json"),
    responses(PredictionResponses),
    security((), ("bearer" = [])))]
pub async fn predict_default_model(
    State(state): State<AppState>,
    headers: PredictionHeaders,
    PredictionBody(input): PredictionBody,
) -> Response {
    let model = state.settings.default_model.clone();
    native::predict(&state, model, input, &headers).await
}

/// `GET /health`, the original API's, word for word: `{"status":"OK"}`.
pub async fn original_health() -> Json<Value> {
    Json(json!({"status": "OK"}))
}
