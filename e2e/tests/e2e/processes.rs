//! The real worker binary behind a real gateway: signals and crashes cost no
//! request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Parser;
use gateway::{Application, GatewayConfig};
use serde_json::Value;
use test_support::{NatsServer, RedisServer, WorkerProcess};

use crate::helpers::body_when_answered;
use tokio::sync::oneshot;

/// A gateway in this process, in front of `nats` and `redis`.
async fn start_gateway(
    nats: &NatsServer,
    redis: &RedisServer,
    args: &[&str],
) -> (String, oneshot::Sender<()>) {
    let (nats_url, redis_url) = (nats.url(), redis.url());
    let mut argv = vec![
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--nats-url",
        &nats_url,
        "--redis-url",
        &redis_url,
        "--key-prefix",
        "processes:",
    ];
    argv.extend_from_slice(args);
    let app = Application::build(GatewayConfig::try_parse_from(argv).unwrap())
        .await
        .unwrap();
    let address = format!("http://127.0.0.1:{}", app.port());
    let (shutdown, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run(async {
        let _ = stopped.await;
    }));
    (address, shutdown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_loses_no_request() {
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let worker_args = ["--latency-ms", "100", "--concurrency", "8"];
    let mut workers = vec![
        WorkerProcess::spawn(&nats.url(), &worker_args, &[]).await,
        WorkerProcess::spawn(&nats.url(), &worker_args, &[]).await,
    ];
    let (gateway, _stop_gateway) = start_gateway(&nats, &redis, &[]).await;

    let running = Arc::new(AtomicBool::new(true));
    let http = reqwest::Client::new();
    let load: Vec<_> = (0..4)
        .map(|client| {
            let (http, url, running) = (
                http.clone(),
                format!("{gateway}/predict"),
                Arc::clone(&running),
            );
            tokio::spawn(async move {
                let mut results = Vec::new();
                let mut i = 0;
                while running.load(Ordering::SeqCst) {
                    // Every request distinct, so every one reaches a worker.
                    let product = format!("P-{client}-{i}");
                    let response = http
                        .post(&url)
                        .json(&serde_json::json!({ "product_id": product }))
                        .send()
                        .await
                        .unwrap();
                    let status = response.status().as_u16();
                    let body: Value = response.json().await.unwrap_or_default();
                    results.push((product, status, body));
                    i += 1;
                }
                results
            })
        })
        .collect();

    // Replace each worker in turn: start the new one, then SIGTERM the old one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..2 {
        workers.push(WorkerProcess::spawn(&nats.url(), &worker_args, &[]).await);
        let mut old = workers.remove(0);
        old.terminate();
        assert!(
            old.exit_status().await.success(),
            "a stopped worker exits 0"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.store(false, Ordering::SeqCst);

    let mut total = 0;
    for task in load {
        for (product, status, body) in task.await.unwrap() {
            assert_eq!(status, 200, "request for {product} failed: {body}");
            assert_eq!(
                body["product_id"],
                product.as_str(),
                "each request got its own answer"
            );
            total += 1;
        }
    }
    assert!(total > 20, "the load ran ({total} requests)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_held_by_a_worker_killed_with_sigkill_is_retried_and_answered() {
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let mut doomed = WorkerProcess::spawn(&nats.url(), &["--latency-ms", "4000"], &[]).await;
    let (gateway, _stop_gateway) = start_gateway(&nats, &redis, &["--request-timeout", "8s"]).await;

    let http = reqwest::Client::new();
    let request = tokio::spawn({
        let (http, url) = (http.clone(), format!("{gateway}/predict"));
        async move {
            http.post(url)
                .json(&serde_json::json!({"product_id": "ETH/EUR"}))
                .send()
                .await
                .unwrap()
        }
    });
    // The only worker has the request; a healthy one joins, then the first dies.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _healthy = WorkerProcess::spawn(&nats.url(), &["--latency-ms", "0"], &[]).await;
    doomed.kill();

    let response = request.await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["product_id"], "ETH/EUR");
    let metrics = body_when_answered(&format!("{gateway}/metrics"), "the metrics").await;
    // Resent once, when the dead worker's heartbeats stopped.
    assert!(
        metrics.contains(r#"gateway_model_call_retries_total{model="price",reason="lost"} 1"#),
        "the retry is counted:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_whose_only_worker_died_are_answered_once_a_worker_serves_the_model_again() {
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let mut doomed = WorkerProcess::spawn(&nats.url(), &["--latency-ms", "1000"], &[]).await;
    // The default deadline, 5 s: the replacement comes 3 s after the death.
    let (gateway, _stop_gateway) = start_gateway(&nats, &redis, &[]).await;

    let http = reqwest::Client::new();
    let requests: Vec<_> = (0..32)
        .map(|i| {
            let (http, url) = (http.clone(), format!("{gateway}/predict"));
            tokio::spawn(async move {
                http.post(url)
                    .json(&serde_json::json!({"product_id": format!("P{i}/EUR")}))
                    .send()
                    .await
                    .unwrap()
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    doomed.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _replacement = WorkerProcess::spawn(&nats.url(), &["--latency-ms", "50"], &[]).await;

    for (i, request) in requests.into_iter().enumerate() {
        let response = request.await.unwrap();
        assert_eq!(response.status(), 200, "request {i}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["product_id"], format!("P{i}/EUR"));
    }
}
