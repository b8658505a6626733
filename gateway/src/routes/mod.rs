//! HTTP routes: the router, and the handlers it sends each request to
//! ([`Routes`]: the router, with the original API's `POST /predict` called
//! directly when no token guards it).
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

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::Method;
use axum::middleware::from_fn_with_state;
use axum::response::Response;
use axum::routing::future::RouteFuture;
use axum::routing::{delete, get, post};
use futures::future::Either;

use crate::auth::{self, Tokens};
use crate::error::ApiError;
use crate::state::AppState;

/// The original API's prediction route.
const ORIGINAL_PREDICT: &str = "/predict";

/// Every route as one service: the router, with the original API's
/// `POST /predict` answered ahead of it when no token guards it.
///
/// That route is what a cache in front of a model serves most (every
/// original client's request), and a hit there spends about a tenth of the
/// gateway's own CPU in axum's router: the path's lookup, its parameters and
/// matched path put in the request's extensions, the route's boxed service
/// cloned and its future boxed. Called directly, its handler runs with the
/// same extractors in the same order; with API tokens it goes through the
/// router like every guarded route.
#[derive(Debug, Clone)]
pub struct Routes {
    router: Router,
    /// Set when `POST /predict` needs no token: it is answered directly.
    original_predict: Option<AppState>,
}

impl Routes {
    pub fn new(state: AppState, tokens: Tokens) -> Self {
        let original_predict = (!tokens.requires_api_token()).then(|| Arc::clone(&state));
        Self {
            router: router(state, tokens),
            original_predict,
        }
    }
}

/// A response's future: the router's, or the directly called handler's.
type RoutesFuture = Either<
    RouteFuture<Infallible>,
    Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>,
>;

impl tower::Service<Request<Body>> for Routes {
    type Response = Response;
    type Error = Infallible;
    type Future = RoutesFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> RoutesFuture {
        match &self.original_predict {
            Some(state)
                if request.method() == Method::POST && request.uri().path() == ORIGINAL_PREDICT =>
            {
                let state = Arc::clone(state);
                Either::Right(Box::pin(async move {
                    Ok(predict_default_model(state, request).await)
                }))
            }
            _ => Either::Left(self.router.call(request)),
        }
    }
}

/// `POST /predict` without the router: [`original::predict_default_model`]
/// with its arguments extracted as axum extracts them.
async fn predict_default_model(state: AppState, request: Request<Body>) -> Response {
    let (mut parts, body) = request.into_parts();
    let Ok(headers) = extract::PredictionHeaders::from_request_parts(&mut parts, &state).await;
    let request = Request::from_parts(parts, body);
    match extract::PredictionBody::from_request(request, &state).await {
        Ok(body) => original::predict_default_model(State(state), headers, body).await,
        Err(rejection) => rejection,
    }
}

/// Every route, each behind the tokens it needs.
fn router(state: AppState, tokens: Tokens) -> Router {
    let tokens = Arc::new(tokens);
    let mut predictions = Router::new()
        .route(
            "/v1/models/{model}/predict",
            get(native::predict_from_query).post(native::predict_from_body),
        )
        .route(ORIGINAL_PREDICT, post(original::predict_default_model));
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
