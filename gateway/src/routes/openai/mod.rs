//! The OpenAI API: `POST /v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings` and `GET /v1/models`, as OpenAI's SDKs (and everything
//! built on them) call them after changing `base_url`. The request's `model`
//! names the model workers serve over NATS.
//!
//! Each request is read and checked ([`request`]), its cache key made of the
//! API, the caller's partition and the request without what cannot change the
//! answer; the prediction core answers it, as a whole entry or a generation to
//! follow; [`response`] sends it back as OpenAI does, whole or as server-sent
//! events. Answers are partitioned by API token: two tokens never share one,
//! unless `--openai-shared-cache` says they may; an `X-Cache-Namespace` header
//! divides a partition further.

mod error;
mod request;
mod response;

use std::time::Instant;

use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::HeaderName;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use prediction_contract::openai::Api;
use serde_json::json;

pub use error::OpenAiError;
pub use request::{READ_REQUESTS_BYTES, ReadRequests};
use response::Reply;

use super::extract::{PredictionHeaders, read_body};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::prediction::{Generated, PredictionError, PredictionRequest};
use crate::request_log::PredictionOutcome;
use crate::state::AppState;

/// A client's division of its partition of the cache: requests with different
/// namespaces never share an answer, even with one token.
pub const X_CACHE_NAMESPACE: HeaderName = HeaderName::from_static("x-cache-namespace");

/// The longest `X-Cache-Namespace`, in bytes.
pub const MAX_NAMESPACE_LEN: usize = 64;

/// The part of the cache a request's answers belong to: the caller's token (or
/// every token, with `--openai-shared-cache`), and its namespace if it names one.
#[derive(Debug)]
pub struct Partition(String);

impl FromRequestParts<AppState> for Partition {
    type Rejection = OpenAiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, OpenAiError> {
        let mut partition = if state.settings.openai_shared_cache {
            "shared".to_owned()
        } else {
            let caller = parts
                .extensions
                .get::<Caller>()
                .copied()
                .unwrap_or_default();
            caller.partition()
        };
        if let Some(namespace) = parts.headers.get(&X_CACHE_NAMESPACE) {
            let usable = !namespace.is_empty()
                && namespace.len() <= MAX_NAMESPACE_LEN
                && namespace.as_bytes().iter().all(u8::is_ascii_graphic);
            if !usable {
                return Err(OpenAiError::invalid(
                    "X-Cache-Namespace",
                    format!(
                        "X-Cache-Namespace must be 1 to {MAX_NAMESPACE_LEN} visible ASCII characters"
                    ),
                ));
            }
            partition.push('/');
            partition.push_str(namespace.to_str().unwrap_or_default());
        }
        Ok(Self(partition))
    }
}

/// A request body, read as on the other routes, refused in OpenAI's shape.
#[derive(Debug)]
pub struct OpenAiBody(Bytes);

impl FromRequest<AppState> for OpenAiBody {
    type Rejection = OpenAiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, OpenAiError> {
        Ok(Self(read_body(request.into_body(), state).await?))
    }
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<AppState>,
    Partition(partition): Partition,
    headers: PredictionHeaders,
    OpenAiBody(body): OpenAiBody,
) -> Response {
    serve(&state, Api::ChatCompletions, &partition, &headers, &body).await
}

/// `POST /v1/completions`.
pub async fn completions(
    State(state): State<AppState>,
    Partition(partition): Partition,
    headers: PredictionHeaders,
    OpenAiBody(body): OpenAiBody,
) -> Response {
    serve(&state, Api::Completions, &partition, &headers, &body).await
}

/// `POST /v1/embeddings`.
pub async fn embeddings(
    State(state): State<AppState>,
    Partition(partition): Partition,
    headers: PredictionHeaders,
    OpenAiBody(body): OpenAiBody,
) -> Response {
    serve(&state, Api::Embeddings, &partition, &headers, &body).await
}

/// Reads a request to `api`, asks the prediction core, answers as OpenAI does.
async fn serve(
    state: &AppState,
    api: Api,
    partition: &str,
    headers: &PredictionHeaders,
    body: &Bytes,
) -> Response {
    let arrived = Instant::now();
    let request = match state.openai_requests.read(api, body, partition) {
        Ok(request) => request,
        Err(err) => return err.into_response(),
    };
    let (model, stream) = (request.model.clone(), request.stream);
    let (include_usage, encoding) = (request.include_usage, request.encoding);
    let prediction = PredictionRequest {
        model: &model,
        input: request.input.clone(),
        directives: &headers.directives,
        request_id: headers.request_id(),
        sampled: request.sampled,
    };
    let reply = Reply::new(state, &model, api, include_usage, encoding, arrived);
    let (cache, mut response) = match api {
        Api::Embeddings => match state.predictor.predict(prediction).await {
            Ok(answer) => (Some(answer.outcome), reply.embeddings(&answer)),
            Err(err) => (None, failure(err)),
        },
        Api::ChatCompletions | Api::Completions => {
            match state.predictor.generate(prediction, api).await {
                Ok(Generated::Whole(answer)) if stream => {
                    (Some(answer.outcome), reply.replayed_stream(&answer))
                }
                Ok(Generated::Whole(answer)) => (Some(answer.outcome), reply.whole(&answer)),
                Ok(Generated::Live { listener, outcome }) if stream => {
                    (Some(outcome), reply.live_stream(listener, outcome))
                }
                Ok(Generated::Live { listener, outcome }) => {
                    match reply.when_complete(listener, outcome).await {
                        Ok(response) => (Some(outcome), response),
                        Err(err) => (None, err.into_response()),
                    }
                }
                Err(err) => (None, failure(err)),
            }
        }
    };
    response
        .extensions_mut()
        .insert(PredictionOutcome { model, cache });
    response
}

fn failure(err: PredictionError) -> Response {
    OpenAiError::from(ApiError::from(err)).into_response()
}

/// `GET /v1/models`: OpenAI's list of models (`data`), and the gateway's own
/// (`models`: versions and workers of each) for the clients that read it.
#[utoipa::path(get, path = "/v1/models", tag = "predictions",
    responses(
        (status = 200, description = "{\"object\":\"list\",\"data\":[{\"id\",\"object\":\"model\",\"created\",\"owned_by\"}],\"models\":[{\"name\",\"versions\":[...],\"current_version\",\"workers\":n}]}", body = serde_json::Value),
        (status = 401, description = "A token is required and missing or wrong", body = prediction_contract::ErrorBody),
    ),
    security((), ("bearer" = [])))]
pub async fn list_models(State(state): State<AppState>) -> Response {
    let models = state.directory.models().await;
    let data: Vec<_> = models
        .iter()
        .map(|model| {
            json!({
                "id": model.name,
                "object": "model",
                "created": 0,
                "owned_by": "prediction-gateway",
            })
        })
        .collect();
    axum::Json(json!({"object": "list", "data": data, "models": models})).into_response()
}
