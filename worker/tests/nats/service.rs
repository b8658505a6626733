//! The worker as a NATS service: registration, info and stats, health checks,
//! stopping.

use std::time::Duration;

use clap::Parser;
use serde_json::Value;
use test_support::NatsServer;
use tokio::sync::oneshot;
use worker::{Worker, WorkerConfig};

use crate::{GaugedModel, gather, request, request_owned, start, start_with_model};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_registers_as_a_nats_service_in_the_shared_queue_group() {
    let mut running = start(&[]).await;

    let reply = request(&running.client, "$SRV.INFO.prediction-worker", b"").await;
    let info: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(info["name"], "prediction-worker");
    assert_eq!(info["metadata"]["price"], "1.1.0");
    let endpoint = &info["endpoints"][0];
    assert_eq!(endpoint["subject"], "predict.price");
    assert_eq!(endpoint["queue_group"], "q");

    request(&running.client, "predict.price", b"{}").await;
    let reply = request(&running.client, "$SRV.STATS.prediction-worker", b"").await;
    let stats: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(stats["endpoints"][0]["num_requests"], 1);
    assert_eq!(
        stats["endpoints"][0]["num_errors"], 1,
        "error replies are counted"
    );
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_stopping_the_worker_no_longer_answers() {
    let mut running = start(&[]).await;
    request(
        &running.client,
        "predict.price",
        br#"{"product_id":"ETH/EUR"}"#,
    )
    .await;
    running.stop().await.unwrap();

    let err = running
        .client
        .request("predict.price", r#"{"product_id":"ETH/EUR"}"#.into())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), async_nats::RequestErrorKind::NoResponders);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_built_in_model_is_refused_at_startup() {
    let nats = NatsServer::start();
    let config =
        WorkerConfig::try_parse_from(["worker", "--nats-url", &nats.url(), "--model", "gpt9"])
            .unwrap();
    let err = Worker::build(&config).await.unwrap_err().to_string();
    assert!(err.contains("unknown model \"gpt9\""), "{err}");
    assert!(err.contains("price"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_requests_are_computed_at_once() {
    let nats = NatsServer::start();
    let url = nats.url();
    let config = WorkerConfig::try_parse_from([
        "worker",
        "--nats-url",
        &url,
        "--latency-ms",
        "300",
        "--concurrency",
        "8",
    ])
    .unwrap();
    let worker = Worker::build(&config).await.unwrap();
    let (shutdown, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let client = async_nats::ConnectOptions::new()
        .request_timeout(Some(Duration::from_millis(1_500)))
        .connect(&url)
        .await
        .unwrap();

    // Eight one-at-a-time predictions would need 2.4 s; with concurrency 8 they all
    // answer within the 1.5 s request timeout.
    let replies = futures::future::join_all((0..8).map(|i| {
        let client = client.clone();
        async move {
            client
                .request(
                    "predict.price",
                    format!(r#"{{"product_id":"P{i}"}}"#).into(),
                )
                .await
        }
    }))
    .await;
    assert!(replies.iter().all(Result::is_ok), "{replies:?}");
    let _ = shutdown.send(());
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_check_pings_this_very_worker() {
    let id_file = std::env::temp_dir().join(format!("worker-id-{}", std::process::id()));
    let id_path = id_file.to_str().unwrap();
    let mut running = start(&["--id-file", id_path]).await;
    let url = running.client.server_info().port;
    let check = WorkerConfig::try_parse_from([
        "worker",
        "--nats-url",
        &format!("nats://127.0.0.1:{url}"),
        "--id-file",
        id_path,
        "--health-check",
    ])
    .unwrap();
    worker::startup::health_check(&check)
        .await
        .expect("a serving worker is healthy");

    running.stop().await.unwrap();
    assert!(
        worker::startup::health_check(&check).await.is_err(),
        "a stopped worker is not"
    );
    let _ = std::fs::remove_file(id_file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_info_and_stats_list_every_running_worker() {
    let nats = NatsServer::start();
    let (stop_a, task_a) = start_with_model(&nats, GaugedModel::new(), &[]).await;
    let (stop_b, task_b) = start_with_model(&nats, GaugedModel::new(), &[]).await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    for i in 0..4 {
        request_owned(&client, "predict.gauged", format!(r#"{{"i":{i}}}"#)).await;
    }

    let infos = gather(&client, "$SRV.INFO.prediction-worker").await;
    assert_eq!(infos.len(), 2, "one info reply per worker");
    let ids: std::collections::HashSet<_> = infos.iter().map(|info| info["id"].clone()).collect();
    assert_eq!(ids.len(), 2);
    for info in &infos {
        assert_eq!(info["endpoints"][0]["subject"], "predict.gauged");
        assert_eq!(info["metadata"]["gauged"], "1.0.0");
    }
    let stats = gather(&client, "$SRV.STATS.prediction-worker").await;
    assert_eq!(stats.len(), 2);
    let total: u64 = stats
        .iter()
        .map(|s| s["endpoints"][0]["num_requests"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 4, "the requests are counted across the replicas");

    let _ = stop_a.send(());
    let _ = stop_b.send(());
    task_a.await.unwrap().unwrap();
    task_b.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_independent_python_client_sees_what_nats_req_and_nats_micro_info_show() {
    let running = start(&[]).await;
    let url = format!("nats://127.0.0.1:{}", running.client.server_info().port);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/independent_client.py"
    );
    let output = std::process::Command::new("python3")
        .arg(script)
        .arg(&url)
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "the nats-py client failed (is nats-py installed? `make test` installs it):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Value = serde_json::from_slice(&output.stdout).unwrap();

    assert_eq!(seen["prediction"]["product_id"], "ETH/EUR");
    assert_eq!(seen["prediction_headers"]["Model-Version"], "1.1.0");
    assert_eq!(seen["error_headers"]["Nats-Service-Error-Code"], "400");
    assert!(
        seen["error_headers"]["Nats-Service-Error"]
            .as_str()
            .unwrap()
            .contains("missing field `product_id`")
    );
    assert_eq!(seen["error_payload"], "");
    assert_eq!(seen["info"]["name"], "prediction-worker");
    assert_eq!(seen["info"]["endpoints"][0]["subject"], "predict.price");
    assert_eq!(seen["info"]["endpoints"][0]["queue_group"], "q");
    assert_eq!(seen["stats"]["endpoints"][0]["num_requests"], 2);
    assert_eq!(seen["stats"]["endpoints"][0]["num_errors"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopping_while_nats_is_down_still_exits() {
    let mut running = start(&[]).await;
    running._nats.stop();
    // The test gives up after 30 s: a worker that waited for NATS forever fails it.
    let stopped = tokio::time::timeout(Duration::from_secs(30), running.stop()).await;
    assert!(stopped.is_ok(), "the worker hung waiting for NATS");
}
