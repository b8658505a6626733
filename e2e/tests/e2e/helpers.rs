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
use test_support::{
    NatsServer, RedisAccess, RedisCluster, RedisSentinels, RedisServer, SENTINEL_MASTER_NAME,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use worker::{Input, Model, ModelError, Worker, WorkerConfig};

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

/// How a test's Redis is deployed; the gateway's `--redis-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisMode {
    Standalone,
    Cluster,
    Sentinel,
}

/// A test's own Redis, however deployed.
pub enum TestRedis {
    Standalone(RedisServer),
    Cluster(RedisCluster),
    Sentinel(RedisSentinels),
}

impl TestRedis {
    pub fn start(mode: RedisMode) -> Self {
        Self::start_with(mode, RedisAccess::default())
    }

    /// One that only `access` lets in.
    pub fn start_with(mode: RedisMode, access: RedisAccess) -> Self {
        match mode {
            RedisMode::Standalone => Self::Standalone(RedisServer::start_with_access(access)),
            RedisMode::Cluster => Self::Cluster(RedisCluster::start_with(access)),
            RedisMode::Sentinel => Self::Sentinel(RedisSentinels::start_with(access)),
        }
    }

    /// The gateway's flags that point it at this Redis.
    pub fn gateway_args(&self) -> Vec<String> {
        let url = match self {
            Self::Standalone(server) => server.url(),
            Self::Cluster(cluster) => cluster.urls(),
            Self::Sentinel(sentinels) => sentinels.urls(),
        };
        self.gateway_args_with_url(url)
    }

    /// The same flags with a wrong password in the URL.
    pub fn gateway_args_with_password(&self, password: &str) -> Vec<String> {
        let url = match self {
            Self::Standalone(server) => server.url_with_password(password),
            Self::Cluster(cluster) => cluster.urls_with_password(password),
            Self::Sentinel(sentinels) => sentinels.urls_with_password(password),
        };
        self.gateway_args_with_url(url)
    }

    fn gateway_args_with_url(&self, url: String) -> Vec<String> {
        let (mode, tls_ca) = match self {
            Self::Standalone(server) => ("standalone", server.tls_ca()),
            Self::Cluster(cluster) => ("cluster", cluster.tls_ca()),
            Self::Sentinel(sentinels) => ("sentinel", sentinels.tls_ca()),
        };
        let mut args = vec![
            "--redis-mode".to_owned(),
            mode.to_owned(),
            "--redis-url".to_owned(),
            url,
        ];
        if let Some(ca) = tls_ca {
            args.extend(["--redis-tls-ca".to_owned(), ca.to_owned()]);
        }
        if matches!(self, Self::Sentinel(_)) {
            args.extend([
                "--redis-sentinel-master".to_owned(),
                SENTINEL_MASTER_NAME.to_owned(),
            ]);
        }
        args
    }

    fn standalone(&mut self) -> &mut RedisServer {
        match self {
            Self::Standalone(server) => server,
            _ => panic!("this test stops and starts a standalone Redis"),
        }
    }

    /// The URL of a standalone server.
    pub fn url(&self) -> String {
        match self {
            Self::Standalone(server) => server.url(),
            _ => panic!("this test reads a standalone Redis"),
        }
    }

    pub fn stop(&mut self) {
        self.standalone().stop();
    }

    pub fn restart(&mut self) {
        self.standalone().restart();
    }
}

/// Runs a test body once per Redis mode: `in_every_redis_mode!(name);` makes a
/// module `name` with a test `standalone`, `cluster` and `sentinel`, each calling
/// `name(mode)`.
#[macro_export]
macro_rules! in_every_redis_mode {
    ($body:ident) => {
        mod $body {
            use $crate::helpers::RedisMode;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn standalone() {
                super::$body(RedisMode::Standalone).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cluster() {
                super::$body(RedisMode::Cluster).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sentinel() {
                super::$body(RedisMode::Sentinel).await;
            }
        }
    };
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

fn unique_suffix() -> String {
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

/// The gateway binary in a process of its own, its log lines in a file: for
/// what only a process shows (its exit code, its logs, its open-file limit).
pub struct GatewayProcess {
    child: std::process::Child,
    log_path: std::path::PathBuf,
    pub url: String,
}

impl GatewayProcess {
    /// Starts `gateway` with `args` (after `--listen` on a free port) and `env`,
    /// and waits until it answers `/healthz`.
    pub async fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_with(
            std::process::Command::new(test_support::built_binary("gateway")),
            args,
            env,
        )
        .await
    }

    /// The same, run by `command` (`prlimit ... gateway`, say).
    pub async fn start_with(
        mut command: std::process::Command,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let port = test_support::free_port();
        let log_path =
            std::env::temp_dir().join(format!("gateway-process-{}.log", unique_suffix()));
        if !env.iter().any(|(name, _)| *name == "LOG_FORMAT") {
            command.env("GATEWAY_LOG_FORMAT", "text");
        }
        let child = command
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .envs(env.iter().copied())
            .stdout(std::fs::File::create(&log_path).unwrap())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the gateway binary starts");
        let url = format!("http://127.0.0.1:{port}");
        let process = Self {
            child,
            log_path,
            url,
        };
        let what = format!("the gateway at {} answering", process.url);
        body_when_answered(&format!("{}/healthz", process.url), &what).await;
        process
    }

    /// What it has logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log_path);
    }
}

/// The body of `GET url` once it answers 200 (within 10 s): for a server
/// starting, or slots coming free.
pub async fn body_when_answered(url: &str, what: &str) -> String {
    let http = reqwest::Client::new();
    test_support::eventually(Duration::from_secs(10), what, || async {
        let response = http.get(url).send().await.map_err(|err| err.to_string())?;
        if response.status() != 200 {
            return Err(format!("status {}", response.status()));
        }
        response.text().await.map_err(|err| err.to_string())
    })
    .await
}
