//! Building and running a worker: connects to NATS, registers the service and
//! its endpoints, hands them to the serve loop ([`crate::serve`]) and, once it
//! returns, flushes the last replies and drains the connection.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use async_nats::service::{Service, ServiceExt, endpoint::Endpoint};
use prediction_contract::headers::{
    CACHE_SAMPLED_METADATA, CHUNK_GAP_MS_METADATA, FIRST_CHUNK_MS_METADATA, HEARTBEATS_METADATA,
    STREAMS_METADATA, TENSORS_METADATA, TIMEOUT_MS_METADATA,
};
use prediction_contract::subjects::cancel_subject;
use prediction_contract::subjects::{PREDICT_SUBJECT_PREFIX, QUEUE_GROUP, SERVICE_NAME};
use prediction_contract::time::millis;
use prediction_runtime::nats_connection::connection_name;
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::batching::{BatchSettings, Runner};
use crate::builtin::builtin_models;
use crate::config::WorkerConfig;
use crate::manifest::ModelEntry;
use crate::metrics::{WorkerMetrics, serve_metrics};
use crate::model::Model;
use crate::onnx::OnnxModel;
use crate::serve::{Admission, serve};
use crate::streaming::{Cancellations, StreamContext};
use crate::upstream::{OipModel, OpenAiModel};

/// How long a stopping worker waits for its last replies to reach NATS, and then
/// for its connection to finish draining.
const FLUSH_ON_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A connected worker, its service registered and its endpoints subscribed.
pub struct Worker {
    client: async_nats::Client,
    /// What a streamed answer needs: the client, this worker's id and the
    /// streams' cancellations.
    stream_context: StreamContext,
    /// Takes the cancellations of this worker's streams.
    cancel_task: tokio::task::JoinHandle<()>,
    /// Turns true when the connection is closed (a drain has completed).
    closed: tokio::sync::watch::Receiver<bool>,
    service: Service,
    endpoints: Vec<(Runner, Endpoint)>,
    admission: Admission,
    /// `GET /metrics` on `--metrics-listen`, and the address it is bound to.
    metrics_server: Option<(std::net::SocketAddr, tokio::task::JoinHandle<()>)>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("models", &self.model_names())
            .finish_non_exhaustive()
    }
}

/// The models the configuration names: built-in ones and those of its manifest.
pub fn configured_models(config: &WorkerConfig) -> anyhow::Result<Vec<Arc<dyn Model>>> {
    let mut models = builtin_models(config)?;
    if let Some(manifest) = &config.model_config {
        models.extend(load_manifest(manifest)?);
    }
    Ok(models)
}

/// Loads every model of the manifest at `path`: each ONNX file checked and
/// optimised, each OpenAI-compatible server's client made.
pub fn load_manifest(path: &std::path::Path) -> anyhow::Result<Vec<Arc<dyn Model>>> {
    crate::manifest::load(path)?
        .into_iter()
        .map(|entry| {
            Ok(match entry {
                ModelEntry::Onnx(entry) => Arc::new(OnnxModel::load(&entry)?) as Arc<dyn Model>,
                ModelEntry::OpenAi(entry) => Arc::new(OpenAiModel::new(entry)?),
                ModelEntry::Oip(entry) => Arc::new(OipModel::new(entry)?),
            })
        })
        .collect()
}

impl Worker {
    /// Connects to NATS and serves the models the configuration names.
    pub async fn build(config: &WorkerConfig) -> anyhow::Result<Self> {
        let models = configured_models(config)?;
        Self::build_with_models(config, models).await
    }

    /// Connects to NATS and serves the given models: the entry point for serving
    /// models of your own.
    pub async fn build_with_models(
        config: &WorkerConfig,
        models: Vec<Arc<dyn Model>>,
    ) -> anyhow::Result<Self> {
        if models.is_empty() {
            bail!("no model to serve");
        }
        if config.concurrency == 0 {
            bail!("--concurrency must be at least 1");
        }
        let mut names = std::collections::HashSet::new();
        if let Some(model) = models
            .iter()
            .find(|model| !names.insert(model.name().clone()))
        {
            bail!("model {} is configured twice", model.name());
        }
        // Each model readies itself (a server it forwards to tells what it
        // takes) before any endpoint is registered.
        for model in &models {
            model
                .start()
                .await
                .with_context(|| format!("model {:?}", model.name().as_str()))?;
        }
        let batching = BatchSettings {
            window: config.batch_window,
            max_batch: usize::from(config.max_batch),
        };
        let running = Arc::new(Semaphore::new(config.concurrency));
        let metrics = WorkerMetrics::new();
        let runners: Vec<Runner> = models
            .into_iter()
            .map(|model| Runner::new(model, Arc::clone(&running), batching, &metrics))
            .collect();
        let metrics_server = match config.metrics_listen {
            Some(address) => Some(serve_metrics(address, metrics.clone()).await?),
            None => None,
        };
        // A slot runs one request, or a batch of up to `max_batch` of them.
        let per_slot = if runners.iter().any(|runner| runner.model().batches()) {
            batching.max_batch
        } else {
            1
        };
        let running_capacity = config.concurrency * per_slot;
        let redirect_backlog = config.redirect_backlog.unwrap_or(running_capacity);
        let stats_by_endpoint: std::collections::HashMap<String, _> = runners
            .iter()
            .map(|runner| {
                (
                    runner.model().name().to_string(),
                    Arc::clone(runner.stats()),
                )
            })
            .collect();
        let nats_url = config.nats.redacted_url();
        let (nats_options, nats_servers) = config.nats.connect_options().await?;
        let (closed_tx, closed) = tokio::sync::watch::channel(false);
        let client = nats_options
            .name(connection_name("worker"))
            .event_callback(move |event| {
                if matches!(event, async_nats::Event::Closed) {
                    let _ = closed_tx.send(true);
                }
                async move { info!(%event, "NATS connection event") }
            })
            .connect(nats_servers.as_slice())
            .await
            .with_context(|| format!("connecting to NATS at {nats_url}"))?;

        let metadata = runners
            .iter()
            .map(|runner| {
                let model = runner.model();
                (model.name().to_string(), model.version().to_owned())
            })
            .collect();
        let service = client
            .service_builder()
            .description("Serves model predictions on predict.<model>")
            .metadata(metadata)
            .stats_handler(move |endpoint, _| {
                stats_by_endpoint
                    .get(&endpoint)
                    .map_or(serde_json::Value::Null, |stats| stats.to_json())
            })
            .queue_group(QUEUE_GROUP)
            .start(SERVICE_NAME, env!("CARGO_PKG_VERSION"))
            .await
            .map_err(|err| anyhow::anyhow!(err))
            .context("registering the NATS service")?;

        let group = service.group(PREDICT_SUBJECT_PREFIX);
        let mut endpoints = Vec::with_capacity(runners.len());
        for runner in runners {
            let model = runner.model();
            let endpoint = group
                .endpoint_builder()
                .name(model.name())
                .metadata(endpoint_metadata(model.as_ref()))
                .add(model.name())
                .await
                .map_err(|err| anyhow::anyhow!(err))
                .with_context(|| format!("subscribing to predictions of {}", model.name()))?;
            endpoints.push((runner, endpoint));
        }
        // Make sure the subscriptions reached the server before we report ready.
        client
            .flush()
            .await
            .context("flushing subscriptions to NATS")?;
        let worker_id: Arc<str> = service.info().await.id.into();
        let cancellations = Cancellations::default();
        let cancel_task = listen_for_cancellations(&client, &worker_id, cancellations.clone())
            .await
            .context("subscribing to cancellations")?;
        if let Some(path) = &config.id_file {
            std::fs::write(path, &*worker_id)
                .with_context(|| format!("writing the worker id to {}", path.display()))?;
        }
        let worker = Self {
            stream_context: StreamContext {
                client: client.clone(),
                worker_id,
                cancellations,
            },
            cancel_task,
            client,
            closed,
            service,
            endpoints,
            admission: Admission::new(running_capacity, config.queue_depth, redirect_backlog),
            metrics_server,
        };
        info!(
            nats = %nats_url,
            models = ?worker.model_names(),
            concurrency = config.concurrency,
            queue_depth = config.queue_depth,
            redirect_backlog,
            max_batch = batching.max_batch,
            batch_window = ?batching.window,
            "worker ready"
        );
        Ok(worker)
    }

    /// Where `GET /metrics` is served, with `--metrics-listen`.
    pub fn metrics_address(&self) -> Option<std::net::SocketAddr> {
        self.metrics_server.as_ref().map(|(address, _)| *address)
    }

    pub fn model_names(&self) -> Vec<&str> {
        self.endpoints
            .iter()
            .map(|(runner, _)| runner.model().name().as_str())
            .collect()
    }

    /// Serves until Ctrl-C or SIGTERM.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run(prediction_runtime::shutdown::shutdown_signal())
            .await
    }

    /// Serves until `shutdown` completes, then stops taking requests, finishes every
    /// request already received, sends their replies and drains the connection.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Self {
            client,
            stream_context,
            cancel_task,
            mut closed,
            service,
            endpoints,
            admission,
            metrics_server,
        } = self;
        serve(&stream_context, endpoints, service, admission, shutdown).await;
        cancel_task.abort();
        if let Some((_, task)) = metrics_server {
            task.abort();
        }
        // With NATS unreachable a flush would wait for a reconnection forever; a
        // stopping worker gives up after a while rather than hang its host.
        let flushed = if client.connection_state() == async_nats::connection::State::Connected {
            tokio::time::timeout(FLUSH_ON_STOP_TIMEOUT, client.flush())
                .await
                .ok()
        } else {
            None
        };
        let reachable = flushed.is_some();
        match flushed {
            Some(flushed) => flushed.context("flushing replies to NATS")?,
            None => warn!("NATS unreachable while stopping; replies not yet sent are lost"),
        }
        client
            .drain()
            .await
            .context("draining the NATS connection")?;
        // `drain` only starts draining; return once the connection is closed, so
        // the server has dropped this worker's subscriptions by then.
        let drained = !reachable
            || matches!(
                tokio::time::timeout(FLUSH_ON_STOP_TIMEOUT, closed.wait_for(|closed| *closed))
                    .await,
                Ok(Ok(_))
            );
        if !drained {
            warn!("the NATS connection did not finish draining in time");
        }
        info!("worker stopped");
        Ok(())
    }
}

/// The metadata of a model's endpoint: its version, and what the gateway needs
/// to know of how it answers (heartbeats; for a generative model, streams,
/// bounds and whether sampled answers may be cached).
fn endpoint_metadata(model: &dyn Model) -> std::collections::HashMap<String, String> {
    let mut metadata = std::collections::HashMap::from([
        ("model_version".to_owned(), model.version().to_owned()),
        (HEARTBEATS_METADATA.to_owned(), "true".to_owned()),
    ]);
    if model.generates() {
        metadata.insert(STREAMS_METADATA.to_owned(), "true".to_owned());
        metadata.insert(
            CACHE_SAMPLED_METADATA.to_owned(),
            model.caches_sampled().to_string(),
        );
    }
    if let Some(bounds) = model.bounds() {
        for (key, bound) in [
            (TIMEOUT_MS_METADATA, bounds.total),
            (FIRST_CHUNK_MS_METADATA, bounds.first_chunk),
            (CHUNK_GAP_MS_METADATA, bounds.between_chunks),
        ] {
            metadata.insert(key.to_owned(), millis(bound).to_string());
        }
    }
    if let Some(signature) = model.tensors() {
        metadata.insert(
            TENSORS_METADATA.to_owned(),
            serde_json::to_string(signature).expect("a signature serializes"),
        );
    }
    metadata
}

/// Subscribes to this worker's cancellations (`worker.cancel.<id>`): each
/// names the reply subject of a stream nobody listens to any more.
async fn listen_for_cancellations(
    client: &async_nats::Client,
    worker_id: &str,
    cancellations: Cancellations,
) -> Result<tokio::task::JoinHandle<()>, async_nats::SubscribeError> {
    let mut requests = client.subscribe(cancel_subject(worker_id)).await?;
    Ok(tokio::spawn(async move {
        while let Some(message) = futures::StreamExt::next(&mut requests).await {
            if let Ok(reply) = std::str::from_utf8(&message.payload) {
                cancellations.cancel(reply);
            }
        }
    }))
}

/// Pings the worker whose service id is in `--id-file` over NATS: it answers only
/// while it is connected and serving.
pub async fn health_check(config: &WorkerConfig) -> anyhow::Result<()> {
    let path = config
        .id_file
        .as_ref()
        .context("--health-check needs --id-file")?;
    let id = std::fs::read_to_string(path)
        .with_context(|| format!("reading the worker id from {}", path.display()))?;
    let (nats_options, nats_servers) = config.nats.connect_options().await?;
    let client = nats_options
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(Duration::from_secs(2)))
        .connect(nats_servers.as_slice())
        .await
        .with_context(|| format!("connecting to NATS at {}", config.nats.redacted_url()))?;
    client
        .request(format!("$SRV.PING.{SERVICE_NAME}.{}", id.trim()), "".into())
        .await
        .with_context(|| format!("worker {} did not answer a ping", id.trim()))?;
    Ok(())
}
