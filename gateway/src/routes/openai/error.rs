//! Errors as the OpenAI API answers them, `{"error":{"message","type","param",
//! "code"}}`, with the statuses its SDKs map to their exception classes: 400
//! `BadRequestError`, 401 `AuthenticationError`, 403 `PermissionDeniedError`,
//! 404 `NotFoundError`, 422 `UnprocessableEntityError`, 429 `RateLimitError`,
//! 500 and up `InternalServerError`; 429 and 503 with `Retry-After`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::error::ApiError;

/// One error of the OpenAI door.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct OpenAiError {
    pub status: StatusCode,
    /// OpenAI's `type`: `invalid_request_error`, `authentication_error`,
    /// `permission_error`, `rate_limit_error`, `server_error`.
    pub kind: &'static str,
    pub code: String,
    pub message: String,
    /// The request field at fault, if one is.
    pub param: Option<&'static str>,
}

impl OpenAiError {
    /// A 400 about the request's field `param`.
    pub fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            code: "invalid_request".into(),
            message: message.into(),
            param: Some(param),
        }
    }

    /// The JSON body, also sent as a stream's error event.
    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl From<ApiError> for OpenAiError {
    fn from(err: ApiError) -> Self {
        let message = err.to_string();
        let (status, kind, code, param) = match &err {
            ApiError::InvalidModelName(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_model".to_owned(),
                Some("model"),
            ),
            ApiError::InvalidInput(_) | ApiError::InvalidQuery(_) | ApiError::BodyUnreadable => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_request".to_owned(),
                None,
            ),
            ApiError::BodyTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "request_too_large".to_owned(),
                None,
            ),
            ApiError::Unauthorized(_) => (
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid_api_key".to_owned(),
                None,
            ),
            ApiError::Forbidden(_) => (
                StatusCode::FORBIDDEN,
                "permission_error",
                "forbidden".to_owned(),
                None,
            ),
            ApiError::NotFound(_) => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "not_found".to_owned(),
                None,
            ),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                "method_not_allowed".to_owned(),
                None,
            ),
            ApiError::NotCached => (
                StatusCode::GATEWAY_TIMEOUT,
                "server_error",
                "not_cached".to_owned(),
                None,
            ),
            ApiError::CacheUnavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "cache_unavailable".to_owned(),
                None,
            ),
            ApiError::Upstream(failure) => match failure.code.as_str() {
                "no_worker" => (
                    StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    "model_not_found".to_owned(),
                    Some("model"),
                ),
                "input_rejected" => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_request_error",
                    "input_rejected".to_owned(),
                    None,
                ),
                "overloaded" => (
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    "rate_limit_exceeded".to_owned(),
                    None,
                ),
                "body_too_large" => (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "invalid_request_error",
                    "request_too_large".to_owned(),
                    None,
                ),
                code => (
                    StatusCode::from_u16(failure.status)
                        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    "server_error",
                    code.to_owned(),
                    None,
                ),
            },
        };
        Self {
            status,
            kind,
            code,
            message,
            param,
        }
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        let headers = response.headers_mut();
        if matches!(
            self.status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer realm="prediction-gateway""#),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model_call::PublicFailure;

    fn upstream(status: StatusCode, code: &str) -> OpenAiError {
        ApiError::Upstream(Arc::new(PublicFailure::new(status, code, "m"))).into()
    }

    #[test]
    fn each_failure_gets_the_status_the_sdks_map_to_their_exceptions() {
        let cases = [
            (
                upstream(StatusCode::SERVICE_UNAVAILABLE, "no_worker"),
                404,
                "model_not_found",
            ),
            (
                upstream(StatusCode::UNPROCESSABLE_ENTITY, "input_rejected"),
                422,
                "input_rejected",
            ),
            (
                upstream(StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
                429,
                "rate_limit_exceeded",
            ),
            (
                upstream(StatusCode::SERVICE_UNAVAILABLE, "worker_busy"),
                503,
                "worker_busy",
            ),
            (
                upstream(StatusCode::INTERNAL_SERVER_ERROR, "model_failed"),
                500,
                "model_failed",
            ),
            (
                upstream(StatusCode::GATEWAY_TIMEOUT, "timeout"),
                504,
                "timeout",
            ),
            (ApiError::Unauthorized("no").into(), 401, "invalid_api_key"),
        ];
        for (error, status, code) in cases {
            assert_eq!((error.status.as_u16(), error.code.as_str()), (status, code));
        }
    }

    #[test]
    fn the_body_has_openais_shape_and_busy_answers_say_when_to_retry() {
        let error = upstream(StatusCode::SERVICE_UNAVAILABLE, "overloaded");
        let body = error.body();
        for field in ["message", "type", "param", "code"] {
            assert!(body["error"].get(field).is_some(), "{field} in {body}");
        }
        let response = error.into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }
}
