//! Redis failing under load costs no request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::helpers::{header, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_or_flushed_under_load_fails_no_request_and_caching_resumes() {
    let mut app = spawn_app(&[]).await;
    let running = Arc::new(AtomicBool::new(true));
    let load = (0..4).map(|client| {
        let http = app.http.clone();
        let url = app.url("/v1/models/echo/predict");
        let running = Arc::clone(&running);
        tokio::spawn(async move {
            let mut outcomes = Vec::new();
            let mut i = 0;
            while running.load(Ordering::SeqCst) {
                let body = format!(r#"{{"client":{client},"i":{}}}"#, i % 5);
                let response = http.post(&url).body(body).send().await.unwrap();
                outcomes.push((response.status().as_u16(), header(&response, "x-cache")));
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            outcomes
        })
    });
    let load: Vec<_> = load.collect();

    tokio::time::sleep(Duration::from_millis(300)).await;
    app.redis.stop();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    app.redis.restart();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // And flushed under load: everything is a miss for a moment, nothing fails.
    let mut redis = app.redis_connection().await;
    redis::cmd("FLUSHALL")
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.store(false, Ordering::SeqCst);

    let mut outcomes = Vec::new();
    for task in load {
        outcomes.extend(task.await.unwrap());
    }
    assert!(
        outcomes.len() > 50,
        "the load ran ({} requests)",
        outcomes.len()
    );
    assert!(
        outcomes.iter().all(|(status, _)| *status == 200),
        "failed requests: {:?}",
        outcomes
            .iter()
            .filter(|(s, _)| *s != 200)
            .collect::<Vec<_>>()
    );
    assert!(
        outcomes.iter().any(|(_, cache)| cache == "BYPASS"),
        "the outage was noticed"
    );

    // Caching is back without restarting the gateway.
    let first = app.post("/v1/models/echo/predict", r#"{"after":1}"#).await;
    assert_eq!(header(&first, "x-cache"), "MISS");
    let second = app.post("/v1/models/echo/predict", r#"{"after":1}"#).await;
    assert_eq!(header(&second, "x-cache"), "HIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_nats_restart_hits_are_served_misses_fail_fast_and_service_resumes() {
    let mut app = spawn_app(&["--request-timeout", "30s"]).await;
    let warm = app.post("/v1/models/echo/predict", r#"{"n":1}"#).await;
    assert_eq!(warm.status(), 200);

    // Steady load throughout: hits and misses, each request bounded by the HTTP
    // client's 20 s timeout, so a hanging request fails the test.
    let running = Arc::new(AtomicBool::new(true));
    let load: Vec<_> = (0..3)
        .map(|client| {
            let (http, url, running) = (
                app.http.clone(),
                app.url("/v1/models/echo/predict"),
                Arc::clone(&running),
            );
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                let mut i = 0;
                while running.load(Ordering::SeqCst) {
                    let body = if i % 2 == 0 {
                        r#"{"n":1}"#.to_owned()
                    } else {
                        format!(r#"{{"c":{client},"i":{i}}}"#)
                    };
                    let response = http
                        .post(&url)
                        .body(body)
                        .send()
                        .await
                        .expect("no request hangs");
                    statuses.push(response.status().as_u16());
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                statuses
            })
        })
        .collect();

    app.nats.stop();
    // Wait until the gateway has noticed (its readiness says so).
    for _ in 0..50 {
        let ready: serde_json::Value = app.get("/readyz").await.json().await.unwrap();
        if ready["nats"] == "down" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hit = app.post("/v1/models/echo/predict", r#"{"n":1}"#).await;
    assert_eq!(hit.status(), 200, "cached predictions are still served");
    assert_eq!(header(&hit, "x-cache"), "HIT");
    // A miss fails at once (the HTTP client would give up long before the 30 s timeout).
    let miss = app.post("/v1/models/echo/predict", r#"{"n":2}"#).await;
    assert_eq!(miss.status(), 503);
    let body: serde_json::Value = miss.json().await.unwrap();
    assert_eq!(body["error"]["code"], "nats_unavailable");

    // Let the load meet the outage for a while.
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.nats.restart();
    // Gateway and worker reconnect by themselves; no restart of ours.
    let mut recovered = None;
    for _ in 0..100 {
        let response = app.post("/v1/models/echo/predict", r#"{"n":3}"#).await;
        if response.status() == 200 {
            recovered = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovered = recovered.expect("predictions resume after NATS is back");
    assert_eq!(header(&recovered, "x-cache"), "MISS");

    tokio::time::sleep(Duration::from_millis(200)).await;
    running.store(false, Ordering::SeqCst);
    let mut statuses = Vec::new();
    for task in load {
        statuses.extend(task.await.unwrap());
    }
    assert!(statuses.len() > 20, "the load ran");
    assert!(
        statuses
            .iter()
            .all(|status| *status == 200 || *status == 503),
        "only answers and fast 503s during the outage: {statuses:?}"
    );
    assert!(statuses.contains(&503), "the outage was seen");
}
