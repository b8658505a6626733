//! Purges reach every gateway at once, in-process tiers included.

use serde_json::Value;

use crate::helpers::{RedisMode, assert_error, header, spawn_app, spawn_app_in};
use crate::in_every_redis_mode;

async fn a_model_purge_is_seen_by_another_gateway_at_once(mode: RedisMode) {
    let app = spawn_app_in(mode, &[]).await;
    let other = app.start_another_gateway(&[]).await;
    let path = "/v1/models/echo/predict";

    app.post(path, r#"{"p":1}"#).await;
    app.post(path, r#"{"p":2}"#).await;
    // The other gateway now holds {"p":1} in its in-process tier.
    for _ in 0..2 {
        let hit = other.post(&app.http, path, r#"{"p":1}"#).await;
        assert_eq!(header(&hit, "x-cache"), "HIT");
    }

    let purge = app
        .http
        .delete(app.url("/v1/models/echo/cache"))
        .send()
        .await
        .unwrap();
    let status = purge.status();
    let body: Value = purge.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        serde_json::json!({"model": "echo", "purged": 2, "gateways": 2}),
        "both gateways acknowledged the purge"
    );

    let after = other.post(&app.http, path, r#"{"p":1}"#).await;
    assert_eq!(header(&after, "x-cache"), "MISS");
    assert_eq!(app.echo.calls(), 3);
}

async fn one_input_can_be_purged_alone(mode: RedisMode) {
    let app = spawn_app_in(mode, &[]).await;
    let other = app.start_another_gateway(&[]).await;
    let path = "/v1/models/echo/predict";
    app.post(path, r#"{"k":1}"#).await;
    app.post(path, r#"{"k":2}"#).await;
    other.post(&app.http, path, r#"{"k":1}"#).await;

    let purge = app
        .post("/v1/models/echo/cache/purge", r#"{ "k": 1.0 }"#)
        .await;
    let body: Value = purge.json().await.unwrap();
    assert_eq!(body["purged"], 1);

    let purged = other.post(&app.http, path, r#"{"k":1}"#).await;
    assert_eq!(header(&purged, "x-cache"), "MISS");
    let kept = other.post(&app.http, path, r#"{"k":2}"#).await;
    assert_eq!(header(&kept, "x-cache"), "HIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_input_is_purged_like_any_other() {
    let app = spawn_app(&[]).await;
    let path = "/v1/models/echo/predict";
    // Hot: after its first hits, its key is found by the bytes sent, unparsed.
    for _ in 0..5 {
        app.post(path, r#"{"h":1}"#).await;
    }
    let query_path = "/v1/models/echo/predict?h=q";
    for _ in 0..5 {
        app.http.get(app.url(query_path)).send().await.unwrap();
    }
    assert_eq!(app.echo.calls(), 2);

    let purge = app.post("/v1/models/echo/cache/purge", r#"{"h":1}"#).await;
    assert_eq!(purge.json::<Value>().await.unwrap()["purged"], 1);
    let purge = app
        .post("/v1/models/echo/cache/purge", r#"{"h":"q"}"#)
        .await;
    assert_eq!(purge.json::<Value>().await.unwrap()["purged"], 1);

    let after = app.post(path, r#"{"h":1}"#).await;
    assert_eq!(header(&after, "x-cache"), "MISS");
    let after = app.http.get(app.url(query_path)).send().await.unwrap();
    assert_eq!(header(&after, "x-cache"), "MISS");
    assert_eq!(app.echo.calls(), 4);
    // Another spelling of the same input still shares its entry.
    let spelled = app.post(path, r#"{ "h": 1.0 }"#).await;
    assert_eq!(header(&spelled, "x-cache"), "HIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_admin_token_purges_need_it() {
    let app = spawn_app(&["--admin-token", "s3cret"]).await;
    let url = app.url("/v1/models/echo/cache");

    let missing = app.http.delete(&url).send().await.unwrap();
    assert_eq!(
        header(&missing, "www-authenticate"),
        r#"Bearer realm="prediction-gateway""#
    );
    assert_error(missing, 401, "unauthorized").await;
    let wrong = app
        .http
        .delete(&url)
        .bearer_auth("guess")
        .send()
        .await
        .unwrap();
    assert_error(wrong, 401, "unauthorized").await;
    let right = app
        .http
        .delete(&url)
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
}

in_every_redis_mode!(a_model_purge_is_seen_by_another_gateway_at_once);

in_every_redis_mode!(one_input_can_be_purged_alone);
