//! HTTP routes and the state they share.

pub(crate) mod admin;
pub(crate) mod health;
pub(crate) mod predict;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::middleware::from_fn_with_state;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use prediction_contract::ModelName;

use crate::auth::{self, Tokens};
use crate::cache::PredictionCache;
use crate::discovery::ModelDirectory;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::model_client::ModelClient;
use crate::prediction::Predictor;

pub use predict::PredictionOutcome;

/// What every handler needs, shared: axum clones the state for every request, so
/// it is one `Arc`.
pub type AppState = Arc<App>;

#[derive(Debug)]
pub struct App {
    pub predictor: Arc<Predictor>,
    pub directory: Arc<ModelDirectory>,
    pub cache: PredictionCache,
    pub models: ModelClient,
    pub metrics: Metrics,
    pub settings: Arc<Settings>,
}

/// The parts of the configuration handlers read.
#[derive(Debug)]
pub struct Settings {
    /// Where `POST /predict`, the original API, goes.
    pub default_model: ModelName,
    pub max_body: usize,
    /// Who may use which route.
    pub tokens: Tokens,
}

pub fn router(state: AppState) -> Router {
    let mut predictions = Router::new()
        .route(
            "/v1/models/{model}/predict",
            get(predict::predict_from_query).post(predict::predict_from_body),
        )
        .route("/predict", post(predict::predict_default_model))
        .route("/v1/models", get(list_models));
    // Without API tokens the guard lets every request through; leaving it out
    // spares the hot path a middleware (a boxed service clone and future) per request.
    if !state.settings.tokens.api.is_empty() {
        predictions =
            predictions.route_layer(from_fn_with_state(state.clone(), auth::require_api_token));
    }
    let purges = Router::new()
        .route("/v1/models/{model}/cache", delete(admin::purge_model))
        .route("/v1/models/{model}/cache/purge", post(admin::purge_input))
        .route_layer(from_fn_with_state(state.clone(), auth::require_admin_token));
    let operations = Router::new()
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(crate::openapi::openapi_json))
        .route_layer(from_fn_with_state(
            state.clone(),
            auth::require_metrics_token,
        ));
    // Health checks stay open: orchestrators probe them without credentials.
    let health = Router::new()
        .route("/health", get(health::health))
        .route("/healthz", get(health::health))
        .route("/readyz", get(health::ready));
    Router::new()
        .merge(predictions)
        .merge(purges)
        .merge(operations)
        .merge(health)
        .fallback(|uri: axum::http::Uri| async move { ApiError::NotFound(uri.path().to_owned()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus text exposition format", content_type = "text/plain"),
        (status = 401, description = "`--protect-metrics` is set and the token is missing or wrong", body = prediction_contract::ErrorBody),
    ),
    security((), ("bearer" = [])))]
pub(crate) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
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
pub(crate) async fn list_models(State(state): State<AppState>) -> impl IntoResponse {
    axum::Json(serde_json::json!({ "models": state.directory.models().await }))
}
