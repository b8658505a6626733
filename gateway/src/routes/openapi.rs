//! The OpenAPI 3 document of the gateway, generated from the handlers' own
//! annotations so that it cannot drift from the code; served at `/openapi.json`.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{admin, health, native, openai, operations, original};

#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Prediction gateway",
        description = "Answers ML predictions from a cache and asks NATS model workers only on a miss. \
                       Every error is `{\"error\":{\"code\",\"message\"}}`."
    ),
    paths(
        native::predict_from_body,
        native::predict_from_query,
        original::predict_default_model,
        openai::list_models,
        admin::purge_model,
        admin::purge_input,
        health::health,
        health::ready,
        operations::metrics,
        openapi_json,
    ),
    components(schemas(prediction_contract::ErrorBody, prediction_contract::error_body::ErrorDetail)),
    modifiers(&BearerToken),
    tags(
        (name = "predictions", description = "Predictions, from the cache or a model worker"),
        (name = "cache", description = "Purging cached predictions"),
        (name = "operations", description = "Health, readiness, metrics"),
    )
)]
pub struct ApiDoc;

/// The `bearer` security scheme the token-guarded routes refer to.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// `GET /openapi.json`: this document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses(
        (status = 200, description = "The OpenAPI 3 document of this gateway", content_type = "application/json"),
        (status = 401, description = "`--protect-metrics` is set and the token is missing or wrong", body = prediction_contract::ErrorBody),
    ),
    security((), ("bearer" = [])))]
pub async fn openapi_json() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}
