//! The worker as any NATS client sees it (what `nats req` and `nats micro` show),
//! against a real nats-server: [`requests`] (answers, errors, deadlines,
//! heartbeats, hostile payloads), [`service`] (registration, stats, health
//! checks, stopping), [`capacity`] (concurrency, queue, backlog redirects,
//! stopping with requests held), [`onnx`] (ONNX models) and [`streams`]
//! (generative models: whole answers, streams, cancellations).

mod capacity;
mod onnx;
mod requests;
mod service;
mod streams;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

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

/// A nats-server and a worker started from command-line style arguments, its
/// stand-in model at 0 ms.
async fn start(args: &[&str]) -> Running {
    start_with_latency(0, args).await
}

/// The same, the stand-in at `latency_ms`.
async fn start_with_latency(latency_ms: u64, args: &[&str]) -> Running {
    let nats = NatsServer::start();
    let url = nats.url();
    let latency = latency_ms.to_string();
    let mut argv = vec!["worker", "--nats-url", &url, "--latency-ms", &latency];
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

pub(crate) async fn request_owned(
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
pub(crate) async fn gather(client: &async_nats::Client, subject: &str) -> Vec<Value> {
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
