//! Starts the whole system for a test: its own nats-server and redis-server, model
//! workers and a gateway on port 0, all torn down when the [`TestApp`] is dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use clap::Parser;
use gateway::{Application, GatewayConfig};
use prediction_contract::ModelName;
use serde_json::{Value, json};
use test_support::NatsServer;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use worker::{Input, Model, ModelError, Worker, WorkerConfig};

mod process;
mod test_redis;

pub use process::{GatewayProcess, body_when_answered};
pub use test_redis::{RedisMode, TestRedis};

/// A model whose behaviour a test chooses, counting its calls.
#[derive(Debug)]
pub struct StubModel {
    name: ModelName,
    latency: Duration,
    freshness_ttl: Option<Duration>,
    fails: AtomicBool,
    calls: AtomicUsize,
}

impl StubModel {
    pub fn new(name: &str) -> Arc<Self> {
        Self::build(name, Duration::ZERO, false)
    }

    pub fn slow(name: &str, latency: Duration) -> Arc<Self> {
        Self::build(name, latency, false)
    }

    pub fn failing(name: &str) -> Arc<Self> {
        Self::build(name, Duration::ZERO, true)
    }

    /// A model that declares its own freshness.
    pub fn with_ttl(name: &str, ttl: Duration) -> Arc<Self> {
        Arc::new(Self {
            freshness_ttl: Some(ttl),
            ..Self::unwrapped(name, Duration::ZERO, false)
        })
    }

    fn build(name: &str, latency: Duration, fails: bool) -> Arc<Self> {
        Arc::new(Self::unwrapped(name, latency, fails))
    }

    fn unwrapped(name: &str, latency: Duration, fails: bool) -> Self {
        Self {
            name: ModelName::parse(name).unwrap(),
            latency,
            freshness_ttl: None,
            fails: AtomicBool::new(fails),
            calls: AtomicUsize::new(0),
        }
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Returns once the model has been called (within 10 s).
    pub async fn wait_until_called(&self) {
        test_support::eventually(Duration::from_secs(10), "the model called", || async {
            if self.calls() > 0 {
                Ok(())
            } else {
                Err("not yet")
            }
        })
        .await;
    }

    pub fn set_failing(&self, fails: bool) {
        self.fails.store(fails, Ordering::SeqCst);
    }
}

#[async_trait]
impl Model for StubModel {
    fn name(&self) -> &ModelName {
        &self.name
    }

    fn version(&self) -> &str {
        "3.1.4"
    }

    fn freshness_ttl(&self) -> Option<Duration> {
        self.freshness_ttl
    }

    async fn predict(&self, input: &Input) -> Result<Value, ModelError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(self.latency).await;
        if self.fails.load(Ordering::SeqCst) {
            return Err(ModelError::Failed(
                "CUDA out of memory at 0xdeadbeef".into(),
            ));
        }
        if input.contains_key("reject") {
            return Err(ModelError::InvalidInput(
                "field `reject` is not allowed".into(),
            ));
        }
        // `call` tells a recomputed answer from a cached one.
        Ok(json!({"model": self.name.as_str(), "input": input, "call": call}))
    }
}

/// A worker running in the test's runtime.
pub struct RunningWorker {
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl RunningWorker {
    /// Sends the shutdown signal and waits for the worker to finish.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let _ = self.shutdown.take().unwrap().send(());
        self.task.await.expect("worker task panicked")
    }
}

pub async fn start_worker(nats_url: &str, models: Vec<Arc<dyn Model>>) -> RunningWorker {
    start_worker_with(nats_url, models, &[]).await
}

/// Starts a worker with extra command-line settings (`--concurrency`, ...).
pub async fn start_worker_with(
    nats_url: &str,
    models: Vec<Arc<dyn Model>>,
    args: &[&str],
) -> RunningWorker {
    let mut argv = vec!["worker", "--nats-url", nats_url];
    argv.extend_from_slice(args);
    let config = WorkerConfig::try_parse_from(argv).unwrap();
    let worker = Worker::build_with_models(&config, models).await.unwrap();
    let (shutdown, stopped) = oneshot::channel();
    let task = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    RunningWorker {
        shutdown: Some(shutdown),
        task,
    }
}

/// A running gateway, its servers and its workers.
pub struct TestApp {
    pub address: String,
    pub http: reqwest::Client,
    pub nats: NatsServer,
    pub redis: TestRedis,
    /// The stub model `echo` every default worker serves.
    pub echo: Arc<StubModel>,
    pub workers: Vec<RunningWorker>,
    /// Shared by every gateway of this app, as in one deployment.
    pub key_prefix: String,
    gateway_shutdown: Option<oneshot::Sender<()>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(shutdown) = self.gateway_shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// A further gateway of the same deployment; stopped when dropped.
pub struct OtherGateway {
    pub address: String,
    _shutdown: oneshot::Sender<()>,
}

impl OtherGateway {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn post(&self, http: &reqwest::Client, path: &str, body: &str) -> reqwest::Response {
        http.post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("the other gateway answers")
    }
}

/// Starts servers, one worker serving the stub model `echo` and the built-in `price`
/// model (no latency), and a gateway with `gateway_args` added to its defaults.
pub async fn spawn_app(gateway_args: &[&str]) -> TestApp {
    spawn_app_in(RedisMode::Standalone, gateway_args).await
}

/// [`spawn_app`] with Redis deployed as `mode` says.
pub async fn spawn_app_in(mode: RedisMode, gateway_args: &[&str]) -> TestApp {
    let nats = NatsServer::start();
    let redis = TestRedis::start(mode);
    let echo = StubModel::new("echo");
    let price = Arc::new(worker::builtin::price::PriceModel::new(Duration::ZERO));
    let worker = start_worker(&nats.url(), vec![echo.clone(), price]).await;
    let key_prefix = format!("test-{}:", unique_suffix());
    let (address, gateway_shutdown) =
        start_gateway_on(&nats.url(), &redis, &key_prefix, gateway_args).await;
    TestApp {
        address,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap(),
        nats,
        redis,
        echo,
        workers: vec![worker],
        key_prefix,
        gateway_shutdown: Some(gateway_shutdown),
    }
}

/// Starts a gateway on a free port in front of the standalone Redis at
/// `redis_url`; returns its base URL and its shutdown trigger.
pub async fn start_gateway(
    nats_url: &str,
    redis_url: &str,
    key_prefix: &str,
    extra_args: &[&str],
) -> (String, oneshot::Sender<()>) {
    let redis = ["--redis-url".to_owned(), redis_url.to_owned()];
    launch_gateway(nats_url, &redis, key_prefix, extra_args).await
}

/// Starts a gateway on a free port in front of `redis`.
pub async fn start_gateway_on(
    nats_url: &str,
    redis: &TestRedis,
    key_prefix: &str,
    extra_args: &[&str],
) -> (String, oneshot::Sender<()>) {
    launch_gateway(nats_url, &redis.gateway_args(), key_prefix, extra_args).await
}

pub async fn launch_gateway(
    nats_url: &str,
    redis_args: &[String],
    key_prefix: &str,
    extra_args: &[&str],
) -> (String, oneshot::Sender<()>) {
    let mut args = vec![
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--nats-url",
        nats_url,
        "--key-prefix",
        key_prefix,
    ];
    args.extend(redis_args.iter().map(String::as_str));
    args.extend_from_slice(extra_args);
    let config = GatewayConfig::try_parse_from(args).unwrap();
    let app = Application::build(config).await.unwrap();
    let address = format!("http://127.0.0.1:{}", app.port());
    let (shutdown, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run(async {
        let _ = stopped.await;
    }));
    (address, shutdown)
}

pub(crate) fn unique_suffix() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

impl TestApp {
    /// Tells the gateway to shut down (as SIGTERM would).
    pub fn stop_gateway(&mut self) {
        if let Some(shutdown) = self.gateway_shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// Starts another gateway sharing this one's NATS, Redis and key prefix.
    pub async fn start_another_gateway(&self, args: &[&str]) -> OtherGateway {
        let (address, shutdown) =
            start_gateway_on(&self.nats.url(), &self.redis, &self.key_prefix, args).await;
        OtherGateway {
            address,
            _shutdown: shutdown,
        }
    }

    /// A Redis connection to the test's server, to look at or tamper with entries.
    pub async fn redis_connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.redis.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    pub async fn post_with(
        &self,
        path: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut request = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_owned());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("the gateway answers")
    }

    pub async fn post(&self, path: &str, body: &str) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("the gateway answers")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .send()
            .await
            .expect("the gateway answers")
    }
}

/// The value of a response header, or "" when absent.
pub fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Asserts an error response: its status and the `code` of its JSON body; returns
/// the message.
pub async fn assert_error(response: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(
        response.status().as_u16(),
        status,
        "status of {}",
        response.url()
    );
    let body: Value = response.json().await.expect("error bodies are JSON");
    assert_eq!(body["error"]["code"], code, "{body}");
    body["error"]["message"]
        .as_str()
        .expect("error bodies carry a message")
        .to_owned()
}
