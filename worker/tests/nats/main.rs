//! The worker as any NATS client sees it (what `nats req` and `nats micro` show),
//! against a real nats-server.

use std::time::Duration;

use async_nats::HeaderMap;
use clap::Parser;
use serde_json::Value;
use test_support::NatsServer;
use tokio::sync::oneshot;
use worker::{Worker, WorkerConfig};

struct Running {
    /// Owned so the server lives exactly as long as the test's worker.
    _nats: NatsServer,
    client: async_nats::Client,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    /// Stops the worker; the NATS server stays up.
    async fn stop(&mut self) -> anyhow::Result<()> {
        let _ = self.shutdown.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap()
    }
}

/// A nats-server and a worker started from command-line style arguments.
async fn start(args: &[&str]) -> Running {
    let nats = NatsServer::start();
    let url = nats.url();
    let mut argv = vec!["worker", "--nats-url", &url, "--latency-ms", "0"];
    argv.extend_from_slice(args);
    let config = WorkerConfig::try_parse_from(argv).unwrap();
    let worker = Worker::build(&config).await.unwrap();
    let (shutdown, stopped) = oneshot::channel();
    let task = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let client = async_nats::connect(nats.url()).await.unwrap();
    Running {
        _nats: nats,
        client,
        shutdown: Some(shutdown),
        task: Some(task),
    }
}

/// What `nats req <subject> <payload>` gets back.
async fn request(
    client: &async_nats::Client,
    subject: &str,
    payload: &'static [u8],
) -> async_nats::Message {
    client
        .request(subject.to_owned(), payload.into())
        .await
        .expect("a reply")
}

fn header<'a>(message: &'a async_nats::Message, name: &str) -> Option<&'a str> {
    message.headers.as_ref()?.get(name).map(|v| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_request_gets_the_prediction_and_its_metadata() {
    let mut running = start(&[]).await;

    let reply = request(
        &running.client,
        "predict.price",
        br#"{"product_id":"ETH/EUR"}"#,
    )
    .await;
    let prediction: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(prediction["product_id"], "ETH/EUR");
    assert!(prediction["predicted_price"].as_f64().unwrap() > 0.0);
    assert_eq!(header(&reply, "Model-Version"), Some("1.0.0"));
    assert!(
        header(&reply, "Compute-Time-Ms")
            .unwrap()
            .parse::<f64>()
            .unwrap()
            >= 0.0
    );
    // The stand-in declares no freshness of its own: the gateway's default applies.
    assert_eq!(header(&reply, "Freshness-Ttl-Ms"), None);
    assert_eq!(header(&reply, "Nats-Service-Error-Code"), None);
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_400_error_reply_and_the_worker_goes_on() {
    let mut running = start(&[]).await;

    for (payload, expected) in [
        (&b"not json"[..], "not valid JSON"),
        (b"[1,2,3]", "must be a JSON object"),
        (b"{\"product\":\"ETH/EUR\"}", "missing field `product_id`"),
        (b"{\"product_id\":7}", "must be a string"),
        (b"\xff\xfe", "not valid JSON"),
    ] {
        let reply = request(&running.client, "predict.price", payload).await;
        assert_eq!(header(&reply, "Nats-Service-Error-Code"), Some("400"));
        let message = header(&reply, "Nats-Service-Error").unwrap();
        assert!(message.contains(expected), "{message:?} lacks {expected:?}");
        assert!(reply.payload.is_empty());
    }

    let reply = request(
        &running.client,
        "predict.price",
        br#"{"product_id":"BTC/EUR"}"#,
    )
    .await;
    assert_eq!(header(&reply, "Nats-Service-Error-Code"), None);
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_deadline_is_not_computed() {
    let mut running = start(&[]).await;
    let mut headers = HeaderMap::new();
    headers.insert("Deadline-Unix-Ms", "1000");
    let reply = running
        .client
        .request_with_headers(
            "predict.price",
            headers,
            r#"{"product_id":"ETH/EUR"}"#.into(),
        )
        .await
        .unwrap();
    assert_eq!(header(&reply, "Nats-Service-Error-Code"), Some("504"));
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_registers_as_a_nats_service_in_the_shared_queue_group() {
    let mut running = start(&[]).await;

    let reply = request(&running.client, "$SRV.INFO.prediction-worker", b"").await;
    let info: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(info["name"], "prediction-worker");
    assert_eq!(info["metadata"]["price"], "1.0.0");
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
