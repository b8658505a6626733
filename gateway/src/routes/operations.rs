//! What operators and clients read about the gateway: its metrics and the models
//! it serves.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::state::AppState;

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus text exposition format", content_type = "text/plain"),
        (status = 401, description = "`--protect-metrics` is set and the token is missing or wrong", body = prediction_contract::ErrorBody),
    ),
    security((), ("bearer" = [])))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// `GET /v1/models`: the models served right now, their versions and how many
/// workers serve each, as the workers themselves report.
#[utoipa::path(get, path = "/v1/models", tag = "predictions",
    responses(
        (status = 200, description = "{\"models\":[{\"name\",\"versions\":[...],\"current_version\",\"workers\":n}]}", body = serde_json::Value),
        (status = 401, description = "A token is required and missing or wrong", body = prediction_contract::ErrorBody),
    ),
    security((), ("bearer" = [])))]
pub async fn list_models(State(state): State<AppState>) -> impl IntoResponse {
    axum::Json(serde_json::json!({ "models": state.directory.models().await }))
}
