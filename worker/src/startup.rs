//! Connecting, serving and stopping a worker.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use async_nats::service::{self, Service, ServiceExt, endpoint::Endpoint};
use futures::StreamExt;
use prediction_contract::ReplyMetadata;
use prediction_contract::headers::{self, error_codes};
use prediction_contract::subjects::{PREDICT_SUBJECT_PREFIX, QUEUE_GROUP, SERVICE_NAME};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::batching::{BatchSettings, Runner};
use crate::config::WorkerConfig;
use crate::echo::{ECHO_MODEL_NAME, EchoModel};
use crate::model::{Input, Model, ModelError};
use crate::price::{PRICE_MODEL_NAME, PriceModel};

/// How long a stopping worker waits for its last replies to reach NATS, and then
/// for its connection to finish draining.
const FLUSH_ON_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after the stop signal the request streams may take to end. They end
/// as soon as the unsubscribes are processed, well under this, unless NATS is
/// unreachable.
const STREAMS_END_TIMEOUT: Duration = Duration::from_secs(2);

/// A connected worker, its service registered and its endpoints subscribed.
pub struct Worker {
    client: async_nats::Client,
    /// Turns true when the connection is closed (a drain has completed).
    closed: tokio::sync::watch::Receiver<bool>,
    service: Service,
    endpoints: Vec<(Runner, Endpoint)>,
    admission: Admission,
}

/// Which requests a worker takes. Core NATS has no server-side queue: a queue
/// group hands each request to a random member, busy or not. So a worker bounds
/// what it holds itself: at most `concurrency` inference calls run (see
/// [`Runner`]), at most `queue_depth` more requests wait, and the rest are refused
/// at once as busy. A request whose caller will try another worker is refused
/// earlier, once `redirect_backlog` requests wait: random delivery would otherwise
/// queue it here while another worker may be idle.
#[derive(Debug)]
struct Admission {
    /// One permit per request held, running or waiting.
    permits: Arc<Semaphore>,
    capacity: usize,
    /// From this many requests held, one that asked to avoid a backlog is refused.
    redirect_from: usize,
}

impl Admission {
    fn new(running_capacity: usize, queue_depth: usize, redirect_backlog: usize) -> Self {
        let capacity = running_capacity + queue_depth;
        Self {
            permits: Arc::new(Semaphore::new(capacity)),
            capacity,
            redirect_from: running_capacity + redirect_backlog,
        }
    }

    /// A permit to hold `request`, or why not: the busy reply's text. Decided in
    /// the order requests arrive, so a backlog is seen by the request behind it.
    fn admit(&self, request: &service::Request) -> Result<OwnedSemaphorePermit, &'static str> {
        let avoids_backlog = request
            .message
            .headers
            .as_ref()
            .is_some_and(|h| h.get(headers::AVOID_BACKLOG).is_some());
        let held = self.capacity - self.permits.available_permits();
        if avoids_backlog && held >= self.redirect_from {
            return Err("requests are waiting at this worker; try another worker");
        }
        Arc::clone(&self.permits)
            .try_acquire_owned()
            .map_err(|_| "the worker is at capacity; try again or another worker")
    }
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
        models.extend(crate::onnx::load_manifest(manifest)?);
    }
    Ok(models)
}

/// The built-in models named in the configuration.
pub fn builtin_models(config: &WorkerConfig) -> anyhow::Result<Vec<Arc<dyn Model>>> {
    config
        .builtin_model_names()
        .iter()
        .map(|name| match name.as_str() {
            PRICE_MODEL_NAME => Ok(Arc::new(PriceModel::new(config.latency())) as Arc<dyn Model>),
            ECHO_MODEL_NAME => Ok(Arc::new(EchoModel::default()) as Arc<dyn Model>),
            other => bail!(
                "unknown model {other:?}; the built-in models are: {PRICE_MODEL_NAME}, {ECHO_MODEL_NAME}"
            ),
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
        let batching = BatchSettings {
            window: config.batch_window,
            max_batch: usize::from(config.max_batch),
        };
        let running = Arc::new(Semaphore::new(config.concurrency));
        let runners: Vec<Runner> = models
            .into_iter()
            .map(|model| Runner::new(model, Arc::clone(&running), batching))
            .collect();
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
            .name(SERVICE_NAME)
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
                .metadata([("model_version".to_owned(), model.version().to_owned())].into())
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
        if let Some(path) = &config.id_file {
            let id = service.info().await.id;
            std::fs::write(path, &id)
                .with_context(|| format!("writing the worker id to {}", path.display()))?;
        }
        let worker = Self {
            client,
            closed,
            service,
            endpoints,
            admission: Admission::new(running_capacity, config.queue_depth, redirect_backlog),
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

    pub fn model_names(&self) -> Vec<&str> {
        self.endpoints
            .iter()
            .map(|(runner, _)| runner.model().name().as_str())
            .collect()
    }

    /// Serves until Ctrl-C or SIGTERM.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run(prediction_contract::shutdown::shutdown_signal())
            .await
    }

    /// Serves until `shutdown` completes, then stops taking requests, finishes every
    /// request already received, sends their replies and drains the connection.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Self {
            client,
            mut closed,
            service,
            endpoints,
            admission,
        } = self;
        let mut requests = futures::stream::select_all(
            endpoints
                .into_iter()
                .map(|(runner, endpoint)| endpoint.map(move |request| (runner.clone(), request))),
        );
        let mut in_flight = JoinSet::new();
        let mut service = Some(service);
        // Set at shutdown: the request streams normally end at once, but not while
        // NATS is unreachable (the unsubscribe cannot be processed then).
        let streams_deadline = tokio::time::sleep(Duration::MAX);
        tokio::pin!(shutdown, streams_deadline);
        loop {
            tokio::select! {
                () = &mut shutdown, if service.is_some() => {
                    // Unsubscribes every endpoint; the request streams end once the
                    // messages already delivered to us have been handed out.
                    if let Some(service) = service.take() {
                        let _ = service.stop().await;
                    }
                    streams_deadline
                        .as_mut()
                        .reset(tokio::time::Instant::now() + STREAMS_END_TIMEOUT);
                    info!(in_flight = in_flight.len(), "stopped taking requests; finishing those received");
                }
                () = &mut streams_deadline => {
                    warn!("the request streams did not end (NATS unreachable?); stopping anyway");
                    break;
                }
                next = requests.next() => {
                    let Some((runner, request)) = next else { break };
                    match admission.admit(&request) {
                        // Boxed: the request's future is kilobytes, which the task
                        // would otherwise copy around as it is spawned.
                        Ok(held) => in_flight.spawn(Box::pin(async move {
                            answer(&runner, request).await;
                            drop(held);
                        })),
                        Err(reason) => in_flight.spawn(refuse_as_busy(runner, request, reason)),
                    };
                }
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            }
        }
        while in_flight.join_next().await.is_some() {}
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

/// Answers `request` at once with a busy error (see [`Admission`]).
async fn refuse_as_busy(runner: Runner, request: service::Request, reason: &'static str) {
    let busy = service::error::Error {
        status: reason.to_owned(),
        code: error_codes::BUSY.into(),
    };
    if let Err(err) = request.respond(Err(busy)).await {
        warn!(model = %runner.model().name(), error = %err, "could not send the busy reply");
    }
}

/// Computes and sends the reply to one request. Never fails: every problem becomes
/// an error reply (or, if even that cannot be sent, a log line).
async fn answer(runner: &Runner, request: service::Request) {
    let model = runner.model();
    let started = Instant::now();
    let message_headers = request.message.headers.as_ref();
    let request_id = message_headers
        .and_then(|h| h.get(headers::REQUEST_ID))
        .map_or("-", |v| v.as_str())
        .to_owned();
    let result = if deadline_passed(message_headers) {
        Err((
            error_codes::DEADLINE_EXCEEDED,
            "the caller's deadline passed before the worker started".to_owned(),
        ))
    } else {
        match parse_input(&request.message.payload) {
            Ok(input) => runner
                .predict(input)
                .await
                .map_err(|err| (err.code(), err.to_string())),
            Err(err) => Err((err.code(), err.to_string())),
        }
    };
    let compute_time = started.elapsed();
    let metadata = ReplyMetadata {
        model_version: model.version().to_owned(),
        freshness_ttl: model.freshness_ttl(),
        compute_time: Some(compute_time),
    };
    let outcome = match &result {
        Ok(_) => "ok".to_owned(),
        Err((code, message)) => {
            if *code == error_codes::MODEL_FAILED {
                warn!(model = %model.name(), request_id, error = message, "the model failed");
            }
            code.to_string()
        }
    };
    let reply = match result {
        Ok(prediction) => match serde_json::to_vec(&prediction) {
            Ok(payload) => Ok(payload.into()),
            Err(err) => Err(service::error::Error {
                status: format!("the prediction could not be serialised: {err}"),
                code: error_codes::MODEL_FAILED.into(),
            }),
        },
        Err((code, message)) => Err(service::error::Error {
            status: message,
            code: code.into(),
        }),
    };
    if let Err(err) = request
        .respond_with_headers(reply, metadata.to_headers())
        .await
    {
        warn!(model = %model.name(), request_id, error = %err, "could not send the reply");
    }
    // At debug: the gateway logs every request, with its id, at info; this line
    // would double the log volume (and cost more than a fast model's inference).
    // Failures are logged at warn or error where they happen.
    debug!(
        model = %model.name(),
        request_id,
        outcome,
        compute_ms = compute_time.as_secs_f64() * 1000.0,
        "prediction request"
    );
}

fn parse_input(payload: &[u8]) -> Result<Input, ModelError> {
    match serde_json::from_slice(payload) {
        Ok(serde_json::Value::Object(input)) => Ok(input),
        Ok(_) => Err(ModelError::InvalidInput(
            "the input must be a JSON object, e.g. {\"product_id\": \"ETH/EUR\"}".into(),
        )),
        Err(err) => Err(ModelError::InvalidInput(format!(
            "the input is not valid JSON: {err}"
        ))),
    }
}

fn deadline_passed(message_headers: Option<&async_nats::HeaderMap>) -> bool {
    let Some(deadline_ms) = message_headers
        .and_then(|h| h.get(headers::DEADLINE_UNIX_MS))
        .and_then(|v| v.as_str().parse::<u64>().ok())
    else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    now.as_millis() >= u128::from(deadline_ms)
}
