//! The extractors of the prediction and purge routes. A handler's arguments are
//! valid values; what is not valid becomes the app's error as the extractor's
//! rejection (as axum's `customize-path-rejection` example does), so no handler
//! parses its path or body by hand.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, RawPathParams, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use prediction_contract::ModelName;

use crate::error::ApiError;
use crate::freshness::RequestDirectives;
use crate::input::RawInput;
use crate::request_log::{PredictionOutcome, X_REQUEST_ID};
use crate::state::AppState;

/// The model named by the route's `{model}` segment.
#[derive(Debug)]
pub struct ModelPath(pub ModelName);

impl<S: Send + Sync> FromRequestParts<S> for ModelPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(name) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| ApiError::InvalidQuery(rejection.body_text()))?;
        Ok(Self(ModelName::parse(&name)?))
    }
}

/// A request body, read whole within `--max-body`, as a JSON input (parsed
/// only when needed; see [`RawInput`]).
#[derive(Debug)]
pub struct JsonInput(pub RawInput);

impl FromRequest<AppState> for JsonInput {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        Ok(Self(RawInput::Json(read_body(request, state).await?)))
    }
}

/// The whole body of `request`, within `--max-body` and the client timeout
/// however it is trickled.
pub async fn read_body(request: Request, state: &AppState) -> Result<Bytes, ApiError> {
    tokio::time::timeout(
        state.settings.client_timeout,
        Bytes::from_request(request, state),
    )
    .await
    .map_err(|_| ApiError::BodyUnreadable)?
    .map_err(|rejection| body_error(&rejection, state.settings.max_body))
}

fn body_error(rejection: &BytesRejection, limit: usize) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::BodyTooLarge { limit }
    } else {
        ApiError::BodyUnreadable
    }
}

/// The input of a prediction sent as a body: like [`JsonInput`], but a body that
/// cannot be read is counted as a failed prediction of the route's model (the
/// `{model}` segment, else the default model), like any other.
#[derive(Debug)]
pub struct PredictionBody(pub RawInput);

impl FromRequest<AppState> for PredictionBody {
    type Rejection = Response;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let model = match RawPathParams::from_request_parts(&mut parts, state).await {
            Ok(params) => params
                .iter()
                .find(|(name, _)| *name == "model")
                .and_then(|(_, value)| ModelName::parse(value).ok()),
            Err(_) => None,
        }
        .unwrap_or_else(|| state.settings.default_model.clone());
        match JsonInput::from_request(Request::from_parts(parts, body), state).await {
            Ok(JsonInput(input)) => Ok(Self(input)),
            Err(err) => {
                let mut response = err.into_response();
                response
                    .extensions_mut()
                    .insert(PredictionOutcome { model, cache: None });
                Err(response)
            }
        }
    }
}

/// The input of a `GET` prediction: its query string, read as an object of
/// strings when needed (see [`RawInput::Query`]).
#[derive(Debug)]
pub struct QueryInput(pub RawInput);

impl<S: Send + Sync> FromRequestParts<S> for QueryInput {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(RawInput::Query(parts.uri.clone())))
    }
}

/// What a prediction request's headers say: its id and the client's cache
/// directives. Read in place, where axum's `HeaderMap` extractor would copy every
/// header of every request.
#[derive(Debug)]
pub struct PredictionHeaders {
    request_id: Option<HeaderValue>,
    pub directives: RequestDirectives,
}

impl PredictionHeaders {
    /// The request's id, `-` when it has none that is text.
    pub fn request_id(&self) -> &str {
        self.request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
    }
}

impl<S: Send + Sync> FromRequestParts<S> for PredictionHeaders {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self {
            request_id: parts.headers.get(&X_REQUEST_ID).cloned(),
            directives: RequestDirectives::from_headers(&parts.headers),
        })
    }
}
