//! HTTP routes and the state they share.

mod health;
mod predict;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use prediction_contract::ModelName;

use crate::cache::PredictionCache;
use crate::error::ApiError;
use crate::model_client::ModelClient;

pub use predict::{CacheOutcome, PredictionOutcome};

/// What every handler needs. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    pub cache: PredictionCache,
    pub models: ModelClient,
    pub settings: Arc<Settings>,
}

/// The parts of the configuration handlers read.
#[derive(Debug)]
pub struct Settings {
    /// Freshness of a prediction whose model does not set one.
    pub cache_ttl: Duration,
    pub key_prefix: String,
    /// Where `POST /predict`, the original API, goes.
    pub default_model: ModelName,
    pub max_body: usize,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/v1/models/{model}/predict",
            get(predict::predict_from_query).post(predict::predict_from_body),
        )
        .route(
            "/predict",
            axum::routing::post(predict::predict_default_model),
        )
        .route("/health", get(health::health))
        .route("/healthz", get(health::health))
        .route("/readyz", get(health::ready))
        .fallback(|uri: axum::http::Uri| async move { ApiError::NotFound(uri.path().to_owned()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
}
