//! Cache administration: purges, protected by the admin token when one is set.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use prediction_contract::{CacheKey, ModelName};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use super::AppState;
use super::predict::{parse_model, read_json_body};
use crate::error::ApiError;
use crate::purge::{self, PurgeNotice};

/// `DELETE /v1/models/{model}/cache`: every cached prediction of the model, on
/// every gateway.
pub async fn purge_model(
    State(state): State<AppState>,
    model: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize_admin(&headers, state.settings.admin_token.as_deref())?;
    let model = parse_model(model)?;
    let purged = state
        .cache
        .purge_model(&model)
        .await
        .map_err(|err| ApiError::CacheUnavailable(err.to_string()))?;
    tracing::info!(%model, purged, "purged the model's cached predictions");
    Ok(tell_every_gateway(&state, &model, None, purged).await)
}

/// `POST /v1/models/{model}/cache/purge` with an input as the body: that one
/// cached prediction, on every gateway.
pub async fn purge_input(
    State(state): State<AppState>,
    model: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    authorize_admin(&headers, state.settings.admin_token.as_deref())?;
    let model = parse_model(model)?;
    let input = read_json_body(body, state.settings.max_body)?;
    let key = CacheKey::new(state.predictor.key_prefix(), &model, &input);
    let purged = state
        .cache
        .purge_key(&key)
        .await
        .map_err(|err| ApiError::CacheUnavailable(err.to_string()))?;
    Ok(tell_every_gateway(&state, &model, Some(&key), u64::from(purged)).await)
}

/// Broadcasts a purge Redis has done to every gateway's in-process tier and
/// answers with what was purged and how many gateways acknowledged.
async fn tell_every_gateway(
    state: &AppState,
    model: &ModelName,
    key: Option<&CacheKey>,
    purged: u64,
) -> Json<Value> {
    let notice = PurgeNotice {
        key_prefix: state.predictor.key_prefix().to_owned(),
        model: model.to_string(),
        key: key.map(|key| key.as_str().to_owned()),
    };
    let gateways = purge::broadcast(state.models.nats(), &notice).await;
    Json(json!({"model": model.as_str(), "purged": purged, "gateways": gateways}))
}

/// Checks `Authorization: Bearer <admin token>` when an admin token is configured,
/// comparing in constant time.
fn authorize_admin(headers: &HeaderMap, admin_token: Option<&str>) -> Result<(), ApiError> {
    let Some(expected) = admin_token else {
        return Ok(());
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .ok_or(ApiError::Unauthorized(
            "this route needs an admin token: Authorization: Bearer <token>",
        ))?;
    if bool::from(presented.trim().as_bytes().ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized("the admin token is not valid"))
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn with_authorization(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn without_a_configured_token_purges_are_open() {
        assert!(authorize_admin(&HeaderMap::new(), None).is_ok());
    }

    #[test]
    fn only_the_right_bearer_token_passes() {
        let token = Some("s3cret");
        assert!(authorize_admin(&with_authorization("Bearer s3cret"), token).is_ok());
        assert!(authorize_admin(&with_authorization("Bearer s3cre"), token).is_err());
        assert!(authorize_admin(&with_authorization("Basic s3cret"), token).is_err());
        assert!(authorize_admin(&HeaderMap::new(), token).is_err());
    }
}
