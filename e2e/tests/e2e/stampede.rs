//! Identical concurrent misses make one model call, within and across gateways.

use std::time::Duration;

use gateway::cache::{CacheKey, LEASE_PREFIX};
use prediction_contract::{CanonicalInput, ModelName};

use crate::helpers::{
    RedisMode, StubModel, assert_error, header, spawn_app, spawn_app_in, start_worker,
};
use crate::in_every_redis_mode;

/// Sends `count` identical requests at once, alternating between two gateways.
async fn burst(
    http: &reqwest::Client,
    urls: [String; 2],
    body: &'static str,
    count: usize,
) -> Vec<reqwest::Response> {
    let requests = (0..count).map(|i| {
        http.post(urls[i % 2].clone())
            .header("content-type", "application/json")
            .body(body)
            .send()
    });
    futures::future::join_all(requests)
        .await
        .into_iter()
        .map(|response| response.expect("the gateway answers"))
        .collect()
}

async fn two_hundred_identical_cold_requests_across_two_gateways_make_one_model_call(
    mode: RedisMode,
) {
    let mut app = spawn_app_in(mode, &[]).await;
    let herd = StubModel::slow("herd", Duration::from_millis(500));
    app.workers
        .push(start_worker(&app.nats.url(), vec![herd.clone()]).await);
    let other = app.start_another_gateway(&[]).await;

    let path = "/v1/models/herd/predict";
    let responses = burst(
        &app.http,
        [app.url(path), other.url(path)],
        r#"{"product_id":"ETH/EUR"}"#,
        200,
    )
    .await;

    assert_eq!(herd.calls(), 1, "the model ran once for 200 requests");
    let mut stored = 0;
    let mut bodies = Vec::new();
    for response in responses {
        assert_eq!(response.status(), 200);
        let cache_status = header(&response, "cache-status");
        match header(&response, "x-cache").as_str() {
            "MISS" if cache_status == "gateway; fwd=miss; stored" => stored += 1,
            "MISS" => assert_eq!(cache_status, "gateway; fwd=miss; collapsed"),
            "HIT" => {}
            other => panic!("unexpected X-Cache {other}"),
        }
        bodies.push(response.text().await.unwrap());
    }
    assert_eq!(
        stored, 1,
        "exactly one request computed and stored the prediction"
    );
    assert!(
        bodies.windows(2).all(|pair| pair[0] == pair[1]),
        "every response has the same body"
    );
}

/// A model that answers at once finishes its computation while requests that
/// looked up the key a moment before (and found the lease of their own gateway)
/// have yet to join it: they must find the entry, not call the model again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_requests_racing_a_computation_that_just_ended_make_no_second_call() {
    // A Redis command never given up on a loaded machine: a request answered
    // without the cache would call the model for a reason this test is not about.
    let app = spawn_app(&["--redis-timeout", "10s"]).await;
    let rounds = 60;
    for round in 0..rounds {
        let body = format!(r#"{{"round":{round}}}"#);
        // Spread over the few milliseconds a computation takes, so that some
        // requests look the key up just as it ends.
        let requests = (0..12).map(|i| {
            let body = &body;
            let app = &app;
            async move {
                tokio::time::sleep(Duration::from_micros(400 * i)).await;
                app.post("/v1/models/echo/predict", body).await
            }
        });
        for response in futures::future::join_all(requests).await {
            assert_eq!(response.status(), 200);
        }
    }
    assert_eq!(app.echo.calls(), rounds, "one model call per input");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_one_call_fails_every_waiter_gets_the_error_and_the_next_request_retries() {
    let mut app = spawn_app(&[]).await;
    let flaky = StubModel::slow("flaky", Duration::from_millis(400));
    flaky.set_failing(true);
    app.workers
        .push(start_worker(&app.nats.url(), vec![flaky.clone()]).await);
    let other = app.start_another_gateway(&[]).await;

    let path = "/v1/models/flaky/predict";
    for response in burst(
        &app.http,
        [app.url(path), other.url(path)],
        r#"{"x":1}"#,
        50,
    )
    .await
    {
        assert_error(response, 500, "model_failed").await;
    }
    assert_eq!(flaky.calls(), 1);

    flaky.set_failing(false);
    let retry = app.post(path, r#"{"x":1}"#).await;
    assert_eq!(retry.status(), 200);
    assert_eq!(header(&retry, "x-cache"), "MISS");
    assert_eq!(flaky.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_left_by_a_dead_gateway_blocks_the_key_only_until_it_expires() {
    let app = spawn_app(&[]).await;
    // What a gateway that crashed mid-computation of a key without entry leaves
    // behind: its lease under the entry's key, with the expiry it had when it
    // last extended it.
    let key = CacheKey::new(
        &app.key_prefix,
        &ModelName::parse("echo").unwrap(),
        &CanonicalInput::from_json_slice(br#"{"orphan":1}"#).unwrap(),
    );
    let mut redis = app.redis_connection().await;
    redis::cmd("SET")
        .arg(key.as_str())
        .arg(format!("{LEASE_PREFIX}token-of-a-dead-gateway"))
        .arg("PX")
        .arg(1_500)
        .query_async::<()>(&mut redis)
        .await
        .unwrap();

    let request = tokio::spawn({
        let http = app.http.clone();
        let url = app.url("/v1/models/echo/predict");
        async move { http.post(url).body(r#"{"orphan":1}"#).send().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        app.echo.calls(),
        0,
        "the gateway waits while the lock lives"
    );

    let response = request.await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-cache"), "MISS");
    assert_eq!(
        app.echo.calls(),
        1,
        "after the lock expired the gateway computed it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_holder_keeps_its_lock_through_a_model_call_longer_than_the_lock_ttl() {
    let mut app = spawn_app(&["--lock-ttl", "300ms"]).await;
    let long = StubModel::slow("long", Duration::from_millis(1_200));
    app.workers
        .push(start_worker(&app.nats.url(), vec![long.clone()]).await);
    let other = app.start_another_gateway(&["--lock-ttl", "300ms"]).await;

    let path = "/v1/models/long/predict";
    let responses = burst(
        &app.http,
        [app.url(path), other.url(path)],
        r#"{"y":2}"#,
        20,
    )
    .await;
    assert!(responses.iter().all(|r| r.status() == 200));
    assert_eq!(
        long.calls(),
        1,
        "the lock was extended, so the other gateway kept waiting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compute_lock_is_released_in_the_same_round_trip_as_the_store() {
    let app = spawn_app(&[]).await;
    let key = CacheKey::new(
        &app.key_prefix,
        &ModelName::parse("echo").unwrap(),
        &CanonicalInput::from_json_slice(br#"{"released":1}"#).unwrap(),
    );
    let mut redis = app.redis_connection().await;
    // By the time an answer is out, the entry is stored and the lock gone: the
    // next gateway to need the key finds the entry, or takes the lock at once.
    let mut check = async |what: &str| {
        let (value, locked): (Option<Vec<u8>>, bool) = redis::pipe()
            .cmd("GET")
            .arg(key.as_str())
            .cmd("EXISTS")
            .arg(key.lock_key())
            .query_async(&mut redis)
            .await
            .unwrap();
        let value = value.unwrap_or_else(|| panic!("{what}: the prediction is stored"));
        assert!(
            value.starts_with(b"{"),
            "{what}: the entry replaced the lease: {}",
            String::from_utf8_lossy(&value)
        );
        assert!(!locked, "{what}: no lock is left beside the entry");
    };

    // A cold key: the lookup took a lease under the entry's key.
    let cold = app
        .post("/v1/models/echo/predict", r#"{"released":1}"#)
        .await;
    assert_eq!(header(&cold, "x-cache"), "MISS");
    check("cold key").await;

    // An entry exists: the lock of a new computation sits beside it.
    let recomputed = app
        .post_with(
            "/v1/models/echo/predict",
            r#"{"released":1}"#,
            &[("cache-control", "no-cache")],
        )
        .await;
    assert_eq!(header(&recomputed, "x-cache"), "MISS");
    check("recomputed key").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outcome_is_announced_only_when_another_gateway_waits_for_it() {
    use futures::StreamExt;

    let mut app = spawn_app(&[]).await;
    let slow = StubModel::slow("slow", Duration::from_millis(400));
    app.workers
        .push(start_worker(&app.nats.url(), vec![slow.clone()]).await);
    let other = app.start_another_gateway(&[]).await;
    let nats = async_nats::connect(app.nats.url()).await.unwrap();
    let mut announcements = nats.subscribe("gateway.cache.ready.>").await.unwrap();
    nats.flush().await.unwrap();
    let path = "/v1/models/slow/predict";

    // Nobody waits: the entry is stored and the lock released, nothing published.
    let alone = app.post(path, r#"{"alone":1}"#).await;
    assert_eq!(header(&alone, "x-cache"), "MISS");
    let heard = tokio::time::timeout(Duration::from_millis(300), announcements.next()).await;
    assert!(heard.is_err(), "an uncontended miss was announced");

    // The other gateway waits for this one's computation: it hears the outcome.
    let responses = burst(
        &app.http,
        [app.url(path), other.url(path)],
        r#"{"shared":1}"#,
        2,
    )
    .await;
    let mut bodies = Vec::new();
    for response in responses {
        assert_eq!(response.status(), 200);
        bodies.push(response.text().await.unwrap());
    }
    assert_eq!(bodies[0], bodies[1]);
    assert_eq!(slow.calls(), 2, "one call for each input");
    let heard = tokio::time::timeout(Duration::from_secs(2), announcements.next()).await;
    assert!(
        matches!(heard, Ok(Some(_))),
        "the waiting gateway was not told"
    );
}

in_every_redis_mode!(two_hundred_identical_cold_requests_across_two_gateways_make_one_model_call);
