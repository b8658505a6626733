//! The worker as any NATS client sees it (what `nats req` and `nats micro` show),
//! against a real nats-server.

mod onnx;
mod processes;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use async_trait::async_trait;
use clap::Parser;
use futures::StreamExt;
use prediction_contract::ModelName;
use serde_json::{Value, json};
use test_support::NatsServer;
use tokio::sync::oneshot;
use worker::{Input, Model, ModelError, Worker, WorkerConfig};

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
    assert_eq!(header(&reply, "Model-Version"), Some("1.1.0"));
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

/// Counts how many predictions run at once.
#[derive(Debug)]
struct GaugedModel {
    name: ModelName,
    running: AtomicUsize,
    most_at_once: AtomicUsize,
    calls: AtomicUsize,
    /// Whether it asks for dynamic batching (its batches run their rows at once).
    batches: bool,
}

impl GaugedModel {
    fn new() -> Arc<Self> {
        Self::with_batching(false)
    }

    fn with_batching(batches: bool) -> Arc<Self> {
        Arc::new(Self {
            name: ModelName::parse("gauged").unwrap(),
            running: AtomicUsize::new(0),
            most_at_once: AtomicUsize::new(0),
            calls: AtomicUsize::new(0),
            batches,
        })
    }
}

#[async_trait]
impl Model for GaugedModel {
    fn name(&self) -> &ModelName {
        &self.name
    }

    fn version(&self) -> &str {
        "1.0.0"
    }

    fn batches(&self) -> bool {
        self.batches
    }

    async fn predict(&self, input: &Input) -> Result<Value, ModelError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_at_once.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        Ok(json!({ "input": input }))
    }
}

async fn start_with_model(
    nats: &NatsServer,
    model: Arc<GaugedModel>,
    args: &[&str],
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let url = nats.url();
    let mut argv = vec!["worker", "--nats-url", &url];
    argv.extend_from_slice(args);
    let config = WorkerConfig::try_parse_from(argv).unwrap();
    let worker = Worker::build_with_models(&config, vec![model])
        .await
        .unwrap();
    let (shutdown, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    (shutdown, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concurrency_cap_holds_and_requests_past_the_queue_are_refused_as_busy() {
    let nats = NatsServer::start();
    let model = GaugedModel::new();
    let (shutdown, task) = start_with_model(
        &nats,
        model.clone(),
        &["--concurrency", "3", "--queue-depth", "2"],
    )
    .await;
    let client = async_nats::ConnectOptions::new()
        .request_timeout(Some(Duration::from_secs(5)))
        .connect(nats.url())
        .await
        .unwrap();

    let replies = futures::future::join_all((0..10).map(|i| {
        let client = client.clone();
        async move {
            client
                .request("predict.gauged", format!(r#"{{"i":{i}}}"#).into())
                .await
                .unwrap()
        }
    }))
    .await;
    let busy = replies
        .iter()
        .filter(|reply| header(reply, "Nats-Service-Error-Code") == Some("503"))
        .count();
    let answered = replies
        .iter()
        .filter(|reply| {
            reply
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Service-Error-Code"))
                .is_none()
        })
        .count();
    assert_eq!(
        model.most_at_once.load(Ordering::SeqCst),
        3,
        "never more than 3 at once"
    );
    assert_eq!(answered, 5, "3 running and 2 waiting were held");
    assert_eq!(busy, 5, "the rest were refused at once");
    assert_eq!(model.calls.load(Ordering::SeqCst), 5);

    let _ = shutdown.send(());
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_avoids_backlogs_is_refused_at_once_where_one_waits_and_others_wait() {
    let nats = NatsServer::start();
    let model = GaugedModel::new();
    // One at a time; by default a request may be turned away once one waits.
    let (shutdown, task) = start_with_model(&nats, model.clone(), &["--concurrency", "1"]).await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut replies = client.subscribe("replies.>").await.unwrap();
    let avoid_backlog = || {
        let mut headers = HeaderMap::new();
        headers.insert("Avoid-Backlog", "1");
        headers
    };

    // Published in this order on one connection, so the worker sees them so: `a`
    // runs, `b` waits, `c` (which may go elsewhere) is refused, `d` (from a caller
    // that would not go elsewhere, like `nats req`) waits too.
    for (name, redirectable) in [("a", false), ("b", false), ("c", true), ("d", false)] {
        let payload = format!(r#"{{"i":"{name}"}}"#).into();
        let reply = format!("replies.{name}");
        if redirectable {
            client
                .publish_with_reply_and_headers("predict.gauged", reply, avoid_backlog(), payload)
                .await
                .unwrap();
        } else {
            client
                .publish_with_reply("predict.gauged", reply, payload)
                .await
                .unwrap();
        }
    }
    client.flush().await.unwrap();

    let mut order = Vec::new();
    for _ in 0..4 {
        let reply = tokio::time::timeout(Duration::from_secs(10), replies.next())
            .await
            .expect("every request is answered")
            .unwrap();
        let name = reply.subject.trim_start_matches("replies.").to_owned();
        let code = header(&reply, "Nats-Service-Error-Code").map(str::to_owned);
        if name == "c" {
            assert_eq!(code.as_deref(), Some("503"));
            let message = header(&reply, "Nats-Service-Error").unwrap();
            assert!(message.contains("try another worker"), "{message}");
        } else {
            assert_eq!(code, None, "{name} waited and was answered");
        }
        order.push(name);
    }
    assert_eq!(
        order[0], "c",
        "the refusal came before any answer: {order:?}"
    );
    assert_eq!(model.calls.load(Ordering::SeqCst), 3);

    // With nothing waiting, the same request is taken.
    let reply = client
        .request_with_headers("predict.gauged", avoid_backlog(), r#"{"i":"e"}"#.into())
        .await
        .unwrap();
    assert_eq!(header(&reply, "Nats-Service-Error-Code"), None);

    let _ = shutdown.send(());
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_worker_answers_every_request_it_holds_running_or_waiting() {
    stop_while_holding_requests(GaugedModel::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_worker_finishes_the_batches_in_flight() {
    let model = GaugedModel::with_batching(true);
    stop_while_holding_requests(model.clone()).await;
    assert!(
        model.most_at_once.load(Ordering::SeqCst) > 2,
        "the requests ran in batches, beyond the two slots"
    );
}

/// Six requests of 200 ms each on a worker with two slots; the stop signal comes
/// while they run or wait. Every one must be answered, and the worker exit cleanly.
async fn stop_while_holding_requests(model: Arc<GaugedModel>) {
    let nats = NatsServer::start();
    let (shutdown, task) = start_with_model(
        &nats,
        model.clone(),
        &[
            "--concurrency",
            "2",
            "--queue-depth",
            "10",
            "--batch-window",
            "20ms",
        ],
    )
    .await;
    let client = async_nats::connect(nats.url()).await.unwrap();

    let requests = futures::future::join_all((0..6).map(|i| {
        let client = client.clone();
        async move {
            client
                .request("predict.gauged", format!(r#"{{"i":{i}}}"#).into())
                .await
        }
    }));
    let stop = async {
        // Two are running, four waiting, when the signal comes.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = shutdown.send(());
    };
    let (replies, ()) = tokio::join!(requests, stop);
    for (i, reply) in replies.into_iter().enumerate() {
        let reply = reply.expect("every held request is answered");
        let body: Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(body["input"]["i"], i, "each request got its own answer");
    }
    task.await.unwrap().expect("the worker exits cleanly");
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

async fn request_owned(
    client: &async_nats::Client,
    subject: &str,
    payload: String,
) -> async_nats::Message {
    client
        .request(subject.to_owned(), payload.into())
        .await
        .expect("a reply")
}

/// Publishes a request and gathers every reply that comes within half a second.
async fn gather(client: &async_nats::Client, subject: &str) -> Vec<Value> {
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.unwrap();
    client
        .publish_with_reply(subject.to_owned(), inbox, "".into())
        .await
        .unwrap();
    let mut gathered = Vec::new();
    while let Ok(Some(reply)) =
        tokio::time::timeout(Duration::from_millis(500), replies.next()).await
    {
        gathered.push(serde_json::from_slice(&reply.payload).unwrap());
    }
    gathered
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

/// Hostile payloads straight to the worker's endpoint: random bytes, invalid UTF-8,
/// deep nesting, huge numbers, strings near NATS's payload limit, to the stand-in and
/// to an ONNX model. Every one gets an answer (a prediction or a 400), and the worker
/// goes on serving.
#[test]
fn hostile_payloads_get_an_answer_every_time_and_the_worker_goes_on() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let manifest = test_support::example_models::manifest();
    let (running, client) = runtime.block_on(async {
        let running = start(&["--model", "price", "--model-config", &manifest]).await;
        let client = async_nats::ConnectOptions::new()
            .request_timeout(Some(Duration::from_secs(5)))
            .connect(format!(
                "nats://127.0.0.1:{}",
                running.client.server_info().port
            ))
            .await
            .unwrap();
        (running, client)
    });

    let ask_model = |model: &str, payload: Vec<u8>| {
        runtime.block_on(client.request(format!("predict.{model}"), payload.into()))
    };
    // The stand-in and an ONNX model each get every payload.
    let ask = |payload: Vec<u8>| -> Result<async_nats::Message, async_nats::RequestError> {
        let onnx = ask_model("price-gbt", payload.clone())?;
        if !answered_properly_by(&onnx) {
            return Ok(onnx);
        }
        ask_model("price", payload)
    };
    let answered_properly = answered_properly_by;

    let max_payload = client.server_info().max_payload;
    let fixed: Vec<Vec<u8>> = vec![
        format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
        br#"{"product_id": 1e999999999}"#.to_vec(),
        format!(r#"{{"product_id": {}}}"#, "9".repeat(10_000)).into_bytes(),
        b"\xff\xfe\xfd{\"product_id\":\"\xc3\x28\"}".to_vec(),
        br#"{"features": [1e999999999, 1, 2, 3, 4, 5, 6, 7, 8, 9]}"#.to_vec(),
        br#"{"features": [1e39, 1, 2, 3, 4, 5, 6, 7, 8, 9]}"#.to_vec(),
        br#"{"features": [null, [], {}, "1", true, -0, 0, 0, 0, 0]}"#.to_vec(),
        format!(r#"{{"features": [{}1]}}"#, "1,".repeat(200_000)).into_bytes(),
        format!(r#"{{"product_id": "{}"}}"#, "x".repeat(max_payload - 1_024)).into_bytes(),
        Vec::new(),
    ];
    for payload in fixed {
        let reply = ask(payload).expect("a hostile payload still gets a reply");
        assert!(
            answered_properly(&reply),
            "improper reply {:?}",
            reply.headers
        );
    }

    let mut runner = TestRunner::new(Config {
        cases: 200,
        ..Config::default()
    });
    runner
        .run(&prop::collection::vec(any::<u8>(), 0..4_096), |payload| {
            let reply = ask(payload).map_err(|err| TestCaseError::fail(err.to_string()))?;
            prop_assert!(answered_properly(&reply));
            Ok(())
        })
        .unwrap();

    // Any ten numbers a 32-bit float holds get a prediction; other arrays a 400.
    runner
        .run(
            &prop::collection::vec(prop_oneof![any::<f64>(), -1e6..1e6f64], 0..14),
            |features| {
                let body = serde_json::to_vec(&json!({ "features": features })).unwrap();
                let reply = ask_model("price-gbt", body)
                    .map_err(|err| TestCaseError::fail(err.to_string()))?;
                prop_assert!(answered_properly(&reply));
                let fits = features.len() == 10
                    && features
                        .iter()
                        .all(|v| v.is_finite() && (*v as f32).is_finite());
                prop_assert_eq!(header(&reply, "Nats-Service-Error-Code").is_none(), fits);
                Ok(())
            },
        )
        .unwrap();

    for model in ["price", "price-gbt"] {
        let body = if model == "price" {
            br#"{"product_id":"ETH/EUR"}"#.to_vec()
        } else {
            br#"{"features":[1,2,3,4,5,6,7,8,9,10]}"#.to_vec()
        };
        let reply = ask_model(model, body).unwrap();
        assert_eq!(
            header(&reply, "Nats-Service-Error-Code"),
            None,
            "the worker goes on serving {model}"
        );
    }
    drop(running);
}

/// A proper answer to any payload: a JSON prediction, or a 400 with an empty body.
fn answered_properly_by(reply: &async_nats::Message) -> bool {
    match header(reply, "Nats-Service-Error-Code") {
        Some(code) => code == "400" && reply.payload.is_empty(),
        None => serde_json::from_slice::<Value>(&reply.payload).is_ok(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopping_while_nats_is_down_still_exits() {
    let mut running = start(&[]).await;
    running._nats.stop();
    // The test gives up after 30 s: a worker that waited for NATS forever fails it.
    let stopped = tokio::time::timeout(Duration::from_secs(30), running.stop()).await;
    assert!(stopped.is_ok(), "the worker hung waiting for NATS");
}
