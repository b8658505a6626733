//! `/readyz` tells whether the gateway can answer, and what is missing.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::spawn_app;

async fn readiness(app: &crate::helpers::TestApp) -> (u16, Value) {
    let response = app.get("/readyz").await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Polls `/readyz` until its body's status is `expected` (NATS notices a lost
/// server within a moment, not at once).
async fn wait_for_readiness(app: &crate::helpers::TestApp, expected: &str) -> (u16, Value) {
    let mut last = readiness(app).await;
    for _ in 0..50 {
        if last.1["status"] == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        last = readiness(app).await;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_reports_each_dependency_and_degrades_before_failing() {
    let mut app = spawn_app(&[]).await;

    let (status, body) = readiness(&app).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        serde_json::json!({"status": "ok", "nats": "up", "redis": "up"})
    );

    app.redis.stop();
    let (status, body) = wait_for_readiness(&app, "degraded").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        serde_json::json!({"status": "degraded", "nats": "up", "redis": "down"})
    );

    app.nats.stop();
    let (status, body) = wait_for_readiness(&app, "unavailable").await;
    assert_eq!(status, 503);
    assert_eq!(
        body,
        serde_json::json!({"status": "unavailable", "nats": "down", "redis": "down"})
    );

    app.redis.restart();
    app.nats.restart();
    let (status, body) = wait_for_readiness(&app, "ok").await;
    assert_eq!(status, 200, "{body}");
}

async fn readiness_says_ok_with_nats_and_redis_up(mode: crate::helpers::RedisMode) {
    let app = crate::helpers::spawn_app_in(mode, &[]).await;
    let (status, body) = wait_for_readiness(&app, "ok").await;
    assert_eq!(status, 200);
    assert_eq!(body["redis"], "up", "{body}");
    assert_eq!(body["nats"], "up", "{body}");
}

crate::in_every_redis_mode!(readiness_says_ok_with_nats_and_redis_up);
