//! Stale-while-revalidate, stale-if-error, the client's Cache-Control directives
//! and the model's own freshness.

use std::time::Duration;

use gateway::cache::{CacheKey, LEASE_PREFIX};
use prediction_contract::{CanonicalInput, ModelName};
use serde_json::Value;

use crate::helpers::{
    RedisMode, StubModel, TestApp, assert_error, header, spawn_app, spawn_app_in, start_worker,
};
use crate::in_every_redis_mode;

async fn call_number(response: reqwest::Response) -> u64 {
    let body: Value = response.json().await.unwrap();
    body["call"]
        .as_u64()
        .expect("stub answers carry their call number")
}

/// Polls until `condition` holds, for at most five seconds.
async fn eventually(mut condition: impl FnMut() -> bool) {
    for _ in 0..100 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not met within 5 s");
}

async fn with_model(app: &mut TestApp, model: std::sync::Arc<StubModel>) {
    let worker = start_worker(&app.nats.url(), vec![model]).await;
    app.workers.push(worker);
}

async fn in_the_stale_period_the_stale_answer_comes_at_once_and_one_refresh_replaces_it(
    mode: RedisMode,
) {
    let mut app = spawn_app_in(mode, &["--cache-ttl", "1s", "--stale-ttl", "30s"]).await;
    let slow = StubModel::slow("slowish", Duration::from_millis(600));
    with_model(&mut app, slow.clone()).await;
    let path = "/v1/models/slowish/predict";

    assert_eq!(call_number(app.post(path, "{}").await).await, 1);
    tokio::time::sleep(Duration::from_millis(1_100)).await;

    let stale = futures::future::join_all((0..5).map(|_| app.post(path, "{}"))).await;
    for response in stale {
        assert_eq!(header(&response, "x-cache"), "STALE");
        assert!(header(&response, "cache-status").starts_with("gateway; hit; ttl=-"));
        assert_eq!(header(&response, "age"), "1");
        assert_eq!(
            call_number(response).await,
            1,
            "the stale answer, not the refresh's"
        );
    }
    // The five stale answers did not wait for the 600 ms refresh they started.
    eventually(|| slow.calls() >= 2).await;

    let mut refreshed = None;
    for _ in 0..40 {
        let response = app.post(path, "{}").await;
        if header(&response, "x-cache") == "HIT" {
            refreshed = Some(call_number(response).await);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(refreshed, Some(2), "the refresh replaced the stale entry");
    assert_eq!(
        slow.calls(),
        2,
        "five stale answers started exactly one refresh"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_worker_gone_a_stale_prediction_is_served_instead_of_an_error() {
    let mut app = spawn_app(&["--cache-ttl", "1s", "--stale-ttl", "30s"]).await;
    let first = app.post("/v1/models/echo/predict", r#"{"z":1}"#).await;
    assert_eq!(first.status(), 200);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    for worker in app.workers.drain(..) {
        worker.stop().await.unwrap();
    }

    for _ in 0..3 {
        let response = app.post("/v1/models/echo/predict", r#"{"z":1}"#).await;
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "x-cache"), "STALE");
        assert_eq!(call_number(response).await, 1);
    }
    // Without a stale entry the failure shows.
    assert_error(
        app.post("/v1/models/echo/predict", r#"{"z":2}"#).await,
        503,
        "no_worker",
    )
    .await;
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        !metrics.contains("gateway_stale_refresh_failures_total 0"),
        "the failed refreshes are counted"
    );
}

async fn no_cache_recomputes_and_stores(mode: RedisMode) {
    let app = spawn_app_in(mode, &[]).await;
    let path = "/v1/models/echo/predict";
    assert_eq!(call_number(app.post(path, "{}").await).await, 1);

    let forced = app
        .post_with(path, "{}", &[("cache-control", "no-cache")])
        .await;
    assert_eq!(header(&forced, "x-cache"), "MISS");
    assert_eq!(
        header(&forced, "cache-status"),
        "gateway; fwd=request; stored"
    );
    assert_eq!(call_number(forced).await, 2);

    let after = app.post(path, "{}").await;
    assert_eq!(header(&after, "x-cache"), "HIT");
    assert_eq!(
        call_number(after).await,
        2,
        "the recomputed prediction was stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_store_neither_reads_nor_stores() {
    let app = spawn_app(&[]).await;
    let path = "/v1/models/echo/predict";
    assert_eq!(call_number(app.post(path, "{}").await).await, 1);

    let private = app
        .post_with(path, "{}", &[("cache-control", "no-store")])
        .await;
    assert_eq!(header(&private, "x-cache"), "MISS");
    assert_eq!(header(&private, "cache-status"), "gateway; fwd=request");
    assert_eq!(call_number(private).await, 2, "it did not read the cache");

    let after = app.post(path, "{}").await;
    assert_eq!(header(&after, "x-cache"), "HIT");
    assert_eq!(
        call_number(after).await,
        1,
        "it did not overwrite the cache"
    );

    let fresh_input = app
        .post_with(path, r#"{"n":1}"#, &[("cache-control", "no-store")])
        .await;
    assert_eq!(fresh_input.status(), 200);
    let next = app.post(path, r#"{"n":1}"#).await;
    assert_eq!(header(&next, "x-cache"), "MISS", "nothing was stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_no_cache_requests_is_one_model_call_not_a_stampede() {
    let mut app = spawn_app(&[]).await;
    let slow = StubModel::slow("burst", Duration::from_millis(400));
    with_model(&mut app, slow.clone()).await;
    let path = "/v1/models/burst/predict";
    app.post(path, "{}").await;

    let burst = (0..20).map(|_| app.post_with(path, "{}", &[("cache-control", "no-cache")]));
    let responses = futures::future::join_all(burst).await;
    assert!(responses.iter().all(|r| r.status() == 200));
    assert_eq!(
        slow.calls(),
        2,
        "one call for the first request, one for the burst"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_accepts_only_predictions_young_enough() {
    let app = spawn_app(&[]).await;
    let path = "/v1/models/echo/predict";
    assert_eq!(call_number(app.post(path, "{}").await).await, 1);
    tokio::time::sleep(Duration::from_millis(1_100)).await;

    let lenient = app
        .post_with(path, "{}", &[("cache-control", "max-age=60")])
        .await;
    assert_eq!(header(&lenient, "x-cache"), "HIT");
    assert_eq!(header(&lenient, "age"), "1");

    let strict = app
        .post_with(path, "{}", &[("cache-control", "max-age=0")])
        .await;
    assert_eq!(header(&strict, "x-cache"), "MISS");
    assert_eq!(header(&strict, "age"), "0");
    assert_eq!(call_number(strict).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_if_cached_answers_504_when_nothing_fresh_is_cached() {
    let app = spawn_app(&[]).await;
    let path = "/v1/models/echo/predict";
    let cold = app
        .post_with(path, "{}", &[("cache-control", "only-if-cached")])
        .await;
    assert_error(cold, 504, "not_cached").await;
    assert_eq!(app.echo.calls(), 0);

    // While some gateway computes the key, its entry's key holds that gateway's
    // lease: still nothing cached, and no lease taken by this request.
    let computing = CacheKey::new(
        &app.key_prefix,
        &ModelName::parse("echo").unwrap(),
        &CanonicalInput::from_json_slice(br#"{"computing":1}"#).unwrap(),
    );
    let lease = format!("{LEASE_PREFIX}token-of-another-gateway");
    let mut redis = app.redis_connection().await;
    redis::cmd("SET")
        .arg(computing.as_str())
        .arg(&lease)
        .arg("PX")
        .arg(10_000)
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    let leased = app
        .post_with(
            path,
            r#"{"computing":1}"#,
            &[("cache-control", "only-if-cached")],
        )
        .await;
    assert_error(leased, 504, "not_cached").await;
    let value: String = redis::cmd("GET")
        .arg(computing.as_str())
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(value, lease, "the other gateway's lease is untouched");

    app.post(path, "{}").await;
    let warm = app
        .post_with(path, "{}", &[("cache-control", "only-if-cached")])
        .await;
    assert_eq!(header(&warm, "x-cache"), "HIT");
    assert_eq!(app.echo.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_sets_its_own_freshness_within_the_gateways_cap() {
    let mut app = spawn_app(&["--max-ttl", "2s"]).await;
    let short = StubModel::with_ttl("short", Duration::from_secs(1));
    let long = StubModel::with_ttl("long", Duration::from_secs(3_600));
    let volatile = StubModel::with_ttl("volatile", Duration::ZERO);
    let worker = start_worker(
        &app.nats.url(),
        vec![short.clone(), long.clone(), volatile.clone()],
    )
    .await;
    app.workers.push(worker);

    let response = app.post("/v1/models/short/predict", "{}").await;
    assert_eq!(header(&response, "cache-control"), "max-age=1");
    let response = app.post("/v1/models/long/predict", "{}").await;
    assert_eq!(
        header(&response, "cache-control"),
        "max-age=2",
        "capped by --max-ttl"
    );

    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let response = app.post("/v1/models/short/predict", "{}").await;
    assert_eq!(
        header(&response, "x-cache"),
        "MISS",
        "the model's 1 s freshness applied"
    );
    let response = app.post("/v1/models/long/predict", "{}").await;
    assert_eq!(header(&response, "x-cache"), "HIT");

    for _ in 0..2 {
        let response = app.post("/v1/models/volatile/predict", "{}").await;
        assert_eq!(header(&response, "x-cache"), "MISS");
        assert_eq!(header(&response, "cache-control"), "no-store");
        assert_eq!(header(&response, "cache-status"), "gateway; fwd=miss");
    }
    assert_eq!(volatile.calls(), 2, "a TTL of 0 is never cached");
}

in_every_redis_mode!(
    in_the_stale_period_the_stale_answer_comes_at_once_and_one_refresh_replaces_it
);

in_every_redis_mode!(no_cache_recomputes_and_stores);
