//! The extractors of the prediction and purge routes. A handler's arguments are
//! valid values; what is not valid becomes the app's error as the extractor's
//! rejection (as axum's `customize-path-rejection` example does), so no handler
//! parses its path or body by hand.

use std::task::Poll;

use axum::body::{Body, Bytes, HttpBody as _};
use axum::extract::{FromRequest, FromRequestParts, Path, RawPathParams, Request};
use axum::http::HeaderValue;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use http_body_util::BodyExt;
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
        Ok(Self(RawInput::Json(
            read_body(request.into_body(), state).await?,
        )))
    }
}

/// The whole `body`, within `--max-body` (a `Content-Length` over
/// it is refused before anything is read) and the client timeout however it
/// is trickled.
pub async fn read_body(body: Body, state: &AppState) -> Result<Bytes, ApiError> {
    let mut reading = std::pin::pin!(collect_within(body, state.settings.max_body));
    // A short body has nearly always arrived with the head: read then, it
    // needs no timer (nor the clock read and runtime handle that arming one
    // takes, on every hit).
    if let Poll::Ready(read) = futures::poll!(reading.as_mut()) {
        return read;
    }
    tokio::time::timeout(state.settings.client_timeout, reading)
        .await
        .map_err(|_| ApiError::BodyUnreadable)?
}

/// `body`'s bytes, at most `limit` of them. A body that came in one piece
/// (a short one nearly always does) is that piece, not a copy.
async fn collect_within(mut body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = ApiError::BodyTooLarge { limit };
    if !usize::try_from(body.size_hint().lower()).is_ok_and(|length| length <= limit) {
        return Err(too_large);
    }
    let mut first = Bytes::new();
    let mut joined = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|_| ApiError::BodyUnreadable)?.into_data() else {
            // Trailers: not part of the input.
            continue;
        };
        if first.len() + joined.len() + data.len() > limit {
            return Err(too_large);
        }
        if first.is_empty() && joined.is_empty() {
            first = data;
        } else {
            if joined.is_empty() {
                joined.extend_from_slice(&first);
            }
            joined.extend_from_slice(&data);
        }
    }
    Ok(if joined.is_empty() {
        first
    } else {
        joined.freeze()
    })
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
        match read_body(body, state).await {
            Ok(bytes) => Ok(Self(RawInput::Json(bytes))),
            Err(err) => {
                // The model is looked up on this path only: a hit needs none of it.
                let model = match RawPathParams::from_request_parts(&mut parts, state).await {
                    Ok(params) => params
                        .iter()
                        .find(|(name, _)| *name == "model")
                        .and_then(|(_, value)| ModelName::parse(value).ok()),
                    Err(_) => None,
                }
                .unwrap_or_else(|| state.settings.default_model.clone());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn in_pieces(pieces: &[&'static str]) -> Body {
        let pieces: Vec<Result<Bytes, std::io::Error>> = pieces
            .iter()
            .map(|piece| Ok(Bytes::from_static(piece.as_bytes())))
            .collect();
        Body::from_stream(futures::stream::iter(pieces))
    }

    #[tokio::test]
    async fn a_body_in_one_piece_is_that_piece_and_one_in_many_is_joined() {
        let piece = Bytes::from_static(b"{\"a\":1}");
        let read = collect_within(Body::from(piece.clone()), 100)
            .await
            .unwrap();
        assert_eq!(read, piece);
        assert_eq!(read.as_ptr(), piece.as_ptr(), "not copied");
        let read = collect_within(in_pieces(&["{\"a\"", "", ":1", "}"]), 100)
            .await
            .unwrap();
        assert_eq!(read, piece);
        assert!(collect_within(Body::empty(), 0).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused_whether_its_length_is_declared_or_not() {
        let too_large = |result: Result<Bytes, ApiError>| {
            matches!(result, Err(ApiError::BodyTooLarge { limit: 4 }))
        };
        assert!(too_large(collect_within(Body::from("12345"), 4).await));
        assert!(too_large(
            collect_within(in_pieces(&["12", "34", "5"]), 4).await
        ));
        assert_eq!(
            collect_within(in_pieces(&["12", "34"]), 4).await.unwrap(),
            "1234"
        );
    }
}
