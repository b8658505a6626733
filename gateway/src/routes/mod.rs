//! HTTP routes: the router, and the handlers it sends each request to.
//!
//! The front doors, one module per protocol the gateway speaks, each only
//! translating between its wire format and the prediction core
//! (`crate::prediction`): [`native`] (`/v1/models/{model}/predict`) and
//! [`original`] (`POST /predict`, `GET /health`), both answering through
//! [`answer`]; [`openai`] (the OpenAI API: chat, completions, embeddings, the
//! models list); [`oip`] (the Open Inference Protocol: tensors, as Triton's and
//! KServe's clients send them), which remember the requests they read recently
//! ([`memo`]). Around them: [`admin`] (purges), [`health`] (liveness and
//! readiness), [`operations`] (metrics, the models served) and [`openapi`] (the
//! document of them all); the arguments of all come from [`extract`].

pub mod admin;
pub mod answer;
pub mod extract;
pub mod health;
pub mod memo;
pub mod native;
pub mod oip;
pub mod openai;
pub mod openapi;
pub mod operations;
pub mod original;

use std::sync::Arc;

use axum::Router;
use axum::middleware::from_fn_with_state;
use axum::routing::{delete, get, post};

use crate::auth::{self, Tokens};
use crate::error::ApiError;
use crate::state::AppState;

/// Every route, each behind the tokens it needs.
pub fn router(state: AppState, tokens: Tokens) -> Router {
    let tokens = Arc::new(tokens);
    let mut predictions = Router::new()
        .route(
            "/v1/models/{model}/predict",
            get(native::predict_from_query).post(native::predict_from_body),
        )
        .route("/predict", post(original::predict_default_model));
    let mut openai_api = Router::new()
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/models", get(openai::list_models));
    let mut oip_api = Router::new()
        .route("/v2", get(oip::server_metadata))
        .route("/v2/models/{model}", get(oip::model_metadata))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(oip::model_metadata),
        )
        .route("/v2/models/{model}/ready", get(oip::model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(oip::model_ready),
        )
        .route("/v2/models/{model}/infer", post(oip::infer))
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(oip::infer),
        );
    // Without API tokens the guard lets every request through; leaving it out
    // spares the hot path a middleware (a boxed service clone and future) per request.
    if tokens.requires_api_token() {
        predictions =
            predictions.route_layer(from_fn_with_state(tokens.clone(), auth::require_api_token));
        openai_api = openai_api.route_layer(from_fn_with_state(
            tokens.clone(),
            auth::require_api_token_openai,
        ));
        oip_api = oip_api.route_layer(from_fn_with_state(
            tokens.clone(),
            auth::require_api_token_oip,
        ));
    }
    let purges = Router::new()
        .route("/v1/models/{model}/cache", delete(admin::purge_model))
        .route("/v1/models/{model}/cache/purge", post(admin::purge_input))
        .route_layer(from_fn_with_state(
            tokens.clone(),
            auth::require_admin_token,
        ));
    let operations = Router::new()
        .route("/metrics", get(operations::metrics))
        .route("/openapi.json", get(openapi::openapi_json))
        .route_layer(from_fn_with_state(tokens, auth::require_metrics_token));
    // Health checks stay open: orchestrators probe them without credentials.
    let health = Router::new()
        .route("/health", get(original::original_health))
        .route("/healthz", get(health::health))
        .route("/readyz", get(health::ready))
        .route("/v2/health/live", get(oip::live))
        .route("/v2/health/ready", get(oip::ready));
    Router::new()
        .merge(predictions)
        .merge(openai_api)
        .merge(oip_api)
        .merge(purges)
        .merge(operations)
        .merge(health)
        .fallback(|uri: axum::http::Uri| async move { ApiError::NotFound(uri.path().to_owned()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
}
