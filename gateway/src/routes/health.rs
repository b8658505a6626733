//! Liveness and readiness.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use serde_json::{Value, json};

use crate::state::AppState;

/// `GET /healthz`: the process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is up: {\"status\":\"ok\"}", body = serde_json::Value)))]
pub async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "lowercase")]
enum Dependency {
    Up,
    Down,
}

#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready: {\"status\":\"ok\"|\"degraded\",\"nats\",\"redis\"}", body = serde_json::Value),
        (status = 503, description = "Neither NATS nor Redis is reachable", body = serde_json::Value),
    ))]
/// `GET /readyz`: whether the gateway can answer predictions. With one of NATS and
/// Redis down it still can (from the cache, or from the workers) and says
/// `degraded`; only with both down is it not ready.
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let nats = if state.nats.is_connected() {
        Dependency::Up
    } else {
        Dependency::Down
    };
    let redis = match state.cache.ping().await {
        Ok(()) => Dependency::Up,
        Err(_) => Dependency::Down,
    };
    let (status, word) = match (&nats, &redis) {
        (Dependency::Up, Dependency::Up) => (StatusCode::OK, "ok"),
        (Dependency::Down, Dependency::Down) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        _ => (StatusCode::OK, "degraded"),
    };
    (
        status,
        Json(json!({"status": word, "nats": nats, "redis": redis})),
    )
}
