//! Running predictions within the worker's inference slots, with dynamic batching
//! for models that gain from it (the way Triton, Ray Serve and BentoML batch).
//!
//! Requests for a batching model go to that model's batcher task. The first
//! request of a batch opens a window (`--batch-window`); requests arriving before
//! it closes join the batch, up to `--max-batch`. The batch then waits for one of
//! the `--concurrency` inference slots, takes whatever else queued meanwhile (up to
//! the maximum), and runs as one [`Model::predict_batch`] call; each caller gets
//! its own row's result, so a bad input fails alone. Other models run one request
//! per slot.
//!
//! The batcher is a thread, not a task: tokio's timers tick in whole
//! milliseconds, which turned a 1 ms window into 2 to 3 ms; a thread waits on its
//! queue with the operating system's sub-millisecond timeouts.
//!
//! Shutdown needs nothing special here: every request waits for its own result,
//! and the worker waits for every request, so a batch in flight always finishes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::runtime::Handle;
use tokio::sync::{Semaphore, oneshot};

use prediction_runtime::traces;
use tracing::Instrument;

use crate::metrics::{ModelGauges, WorkerMetrics};
use crate::model::{Chunks, Input, Model, ModelError};
use futures::StreamExt;
use prediction_contract::openai::Api;
use prediction_contract::tensors::{InferenceRequest, Tensor};

/// How batches are formed.
#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    pub window: Duration,
    /// 1 turns batching off.
    pub max_batch: usize,
}

/// Inference calls made for one model, reported in the service's stats
/// (`nats micro stats`, `$SRV.STATS`) under `data`.
#[derive(Debug, Default)]
pub struct InferenceStats {
    calls: AtomicU64,
    predictions: AtomicU64,
    largest_batch: AtomicU64,
}

impl InferenceStats {
    fn record(&self, batch: usize) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.predictions.fetch_add(batch as u64, Ordering::Relaxed);
        self.largest_batch
            .fetch_max(batch as u64, Ordering::Relaxed);
    }

    pub fn to_json(&self) -> Value {
        json!({
            "inference_calls": self.calls.load(Ordering::Relaxed),
            "predictions": self.predictions.load(Ordering::Relaxed),
            "largest_batch": self.largest_batch.load(Ordering::Relaxed),
        })
    }
}

/// What a request asks a model: a prediction of a JSON input, or the outputs
/// of a tensor request.
enum Work {
    Json(Input),
    Tensors(InferenceRequest),
}

/// A request's result.
enum Done {
    Json(Result<Value, ModelError>),
    Tensors(Result<Vec<Tensor>, ModelError>),
}

/// A request waiting in a batcher's queue.
struct Pending {
    work: Work,
    reply: oneshot::Sender<Done>,
    /// The request's span, for the batch's span to link to (tracing on).
    caller: Option<opentelemetry::trace::SpanContext>,
}

/// Runs one model's predictions: one per slot, or batched.
#[derive(Clone)]
pub struct Runner {
    model: Arc<dyn Model>,
    slots: Arc<Semaphore>,
    stats: Arc<InferenceStats>,
    /// The batcher's queue, for a batching model.
    batcher: Option<mpsc::Sender<Pending>>,
    metrics: WorkerMetrics,
    gauges: ModelGauges,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("model", &self.model.name())
            .field("batching", &self.batcher.is_some())
            .finish_non_exhaustive()
    }
}

impl Runner {
    /// A runner of `model` sharing the worker's inference `slots`. Starts the
    /// model's batcher thread when it batches and `settings` allow batches; must
    /// be called within a tokio runtime, where the batches will run.
    pub fn new(
        model: Arc<dyn Model>,
        slots: Arc<Semaphore>,
        settings: BatchSettings,
        metrics: &WorkerMetrics,
    ) -> Self {
        let stats = Arc::new(InferenceStats::default());
        let gauges = metrics.model(model.name().as_str());
        let batcher = (model.batches() && settings.max_batch > 1).then(|| {
            let (queue, requests) = mpsc::channel();
            let batcher = Batcher {
                model: Arc::clone(&model),
                slots: Arc::clone(&slots),
                stats: Arc::clone(&stats),
                gauges: gauges.clone(),
                settings,
                runtime: Handle::current(),
            };
            std::thread::Builder::new()
                .name(format!("batcher-{}", model.name()))
                .spawn(move || batcher.form_batches(&requests))
                .expect("the batcher thread starts");
            queue
        });
        Self {
            model,
            slots,
            stats,
            batcher,
            metrics: metrics.clone(),
            gauges,
        }
    }

    /// Counts a request's outcome (`ok`, or its error code) and its time here.
    pub fn record(&self, outcome: &str, elapsed: Duration) {
        let model = self.model.name().as_str();
        self.metrics
            .requests
            .with_label_values(&[model, outcome])
            .inc();
        self.metrics
            .request_duration
            .with_label_values(&[model])
            .observe(elapsed.as_secs_f64());
    }

    pub fn model(&self) -> &Arc<dyn Model> {
        &self.model
    }

    pub fn stats(&self) -> &Arc<InferenceStats> {
        &self.stats
    }

    /// A generative model's answer to `input` in `api`, chunk by chunk, in a
    /// slot of its own, held until the answer ends (or is dropped).
    pub async fn generate(&self, api: Api, input: Input) -> Chunks {
        let waiting = scopeguard::guard(self.gauges.waiting.clone(), |gauge| gauge.dec());
        waiting.inc();
        let slot = Arc::clone(&self.slots)
            .acquire_owned()
            .await
            .expect("never closed");
        drop(waiting);
        let running = scopeguard::guard(self.gauges.in_flight.clone(), |gauge| gauge.dec());
        running.inc();
        self.stats.record(1);
        self.gauges.batch_size.observe(1.0);
        let held = (slot, running);
        self.model
            .generate(api, input)
            .map(move |chunk| {
                let _held = &held;
                chunk
            })
            .boxed()
    }

    /// The prediction for `input`, once a slot (and, batching, a batch) runs it.
    pub async fn predict(&self, input: Input) -> Result<Value, ModelError> {
        match self.run(Work::Json(input)).await {
            Ok(Done::Json(result)) => result,
            Ok(Done::Tensors(_)) => unreachable!("a JSON input gets a JSON result"),
            Err(err) => Err(err),
        }
    }

    /// The outputs for a tensor `request`, checked against the model's
    /// tensors, once a slot (and, batching, a batch) runs it.
    pub async fn infer(&self, request: InferenceRequest) -> Result<Vec<Tensor>, ModelError> {
        match self.run(Work::Tensors(request)).await {
            Ok(Done::Tensors(result)) => result,
            Ok(Done::Json(_)) => unreachable!("a tensor request gets tensors"),
            Err(err) => Err(err),
        }
    }

    async fn run(&self, work: Work) -> Result<Done, ModelError> {
        let Some(batcher) = &self.batcher else {
            let waiting = scopeguard::guard(self.gauges.waiting.clone(), |gauge| gauge.dec());
            waiting.inc();
            let _slot = self.slots.acquire().await.expect("never closed");
            drop(waiting);
            let running = scopeguard::guard(self.gauges.in_flight.clone(), |gauge| gauge.dec());
            running.inc();
            self.stats.record(1);
            self.gauges.batch_size.observe(1.0);
            return Ok(match work {
                Work::Json(input) => Done::Json(self.model.predict(&input).await),
                Work::Tensors(request) => Done::Tensors(self.model.infer(&request).await),
            });
        };
        // Counted as waiting until its batch runs (see `Batcher::form_batches`),
        // even if its caller stops waiting: the batch computes it anyway.
        self.gauges.waiting.inc();
        let (reply, result) = oneshot::channel();
        let caller = traces::enabled().then(|| traces::span_context(&tracing::Span::current()));
        if batcher
            .send(Pending {
                work,
                reply,
                caller,
            })
            .is_err()
        {
            self.gauges.waiting.dec();
            return Err(ModelError::Failed("the model's batcher has stopped".into()));
        }
        result
            .await
            .map_err(|_| ModelError::Failed("the model returned no result for this input".into()))
    }
}

/// Runs a batch's JSON inputs as one `predict_batch` and its tensor requests
/// as one `infer_batch`; each request's result goes back to it.
async fn run_batch(model: &dyn Model, batch: Vec<(Work, oneshot::Sender<Done>)>) {
    let mut inputs = Vec::new();
    let mut input_replies = Vec::new();
    let mut requests = Vec::new();
    let mut request_replies = Vec::new();
    for (work, reply) in batch {
        match work {
            Work::Json(input) => {
                inputs.push(input);
                input_replies.push(reply);
            }
            Work::Tensors(request) => {
                requests.push(request);
                request_replies.push(reply);
            }
        }
    }
    if !inputs.is_empty() {
        let results = model.predict_batch(&inputs).await;
        for (reply, result) in input_replies.into_iter().zip(results) {
            // The caller may have given up; its result is simply dropped.
            let _ = reply.send(Done::Json(result));
        }
    }
    if !requests.is_empty() {
        let results = model.infer_batch(&requests).await;
        for (reply, result) in request_replies.into_iter().zip(results) {
            let _ = reply.send(Done::Tensors(result));
        }
    }
}

/// What the batcher thread of one model needs.
struct Batcher {
    model: Arc<dyn Model>,
    slots: Arc<Semaphore>,
    stats: Arc<InferenceStats>,
    gauges: ModelGauges,
    settings: BatchSettings,
    runtime: Handle,
}

impl Batcher {
    /// Forms batches from `requests` and runs each in a slot of its own, on the
    /// runtime. Returns when every [`Runner`] of the model is gone.
    fn form_batches(self, requests: &mpsc::Receiver<Pending>) {
        while let Ok(first) = requests.recv() {
            let mut batch = vec![first];
            let window_closes = Instant::now() + self.settings.window;
            while batch.len() < self.settings.max_batch {
                let left = window_closes.saturating_duration_since(Instant::now());
                match requests.recv_timeout(left) {
                    Ok(pending) => batch.push(pending),
                    Err(_) => break,
                }
            }
            let slot = self
                .runtime
                .block_on(Arc::clone(&self.slots).acquire_owned())
                .expect("never closed");
            // Requests that queued while the batch waited for a slot ride along.
            while batch.len() < self.settings.max_batch {
                let Ok(pending) = requests.try_recv() else {
                    break;
                };
                batch.push(pending);
            }
            let model = Arc::clone(&self.model);
            let stats = Arc::clone(&self.stats);
            let gauges = self.gauges.clone();
            self.runtime.spawn(async move {
                let _slot = slot;
                // One span for the batch, linked to the span of every request
                // in it: a batch has many parents, which a link can say.
                let span = if traces::enabled() {
                    let span = tracing::info_span!(
                        "batch",
                        model = model.name().as_str(),
                        size = batch.len()
                    );
                    for caller in batch.iter().filter_map(|pending| pending.caller.clone()) {
                        traces::add_link(&span, caller);
                    }
                    span
                } else {
                    tracing::Span::none()
                };
                let batch: Vec<_> = batch
                    .into_iter()
                    .map(|pending| (pending.work, pending.reply))
                    .collect();
                let size = batch.len() as i64;
                gauges.waiting.sub(size);
                let running = scopeguard::guard(gauges.in_flight, move |gauge| gauge.sub(size));
                running.add(size);
                gauges.batch_size.observe(size as f64);
                stats.record(batch.len());
                run_batch(model.as_ref(), batch).instrument(span).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use prediction_contract::ModelName;

    use super::*;

    /// Doubles `x`; records the size of every batch it is given.
    struct Doubler {
        name: ModelName,
        batches: Mutex<Vec<usize>>,
    }

    impl Doubler {
        fn new() -> Arc<Self> {
            Arc::new(Self {
                name: ModelName::parse("doubler").unwrap(),
                batches: Mutex::new(Vec::new()),
            })
        }
    }

    #[async_trait]
    impl Model for Doubler {
        fn name(&self) -> &ModelName {
            &self.name
        }
        fn version(&self) -> &str {
            "1"
        }
        fn batches(&self) -> bool {
            true
        }
        async fn predict(&self, input: &Input) -> Result<Value, ModelError> {
            self.predict_batch(std::slice::from_ref(input))
                .await
                .pop()
                .unwrap()
        }
        async fn predict_batch(&self, inputs: &[Input]) -> Vec<Result<Value, ModelError>> {
            self.batches.lock().unwrap().push(inputs.len());
            inputs
                .iter()
                .map(|input| match input.get("x").and_then(Value::as_i64) {
                    Some(x) => Ok(json!(x * 2)),
                    None => Err(ModelError::InvalidInput("x must be an integer".into())),
                })
                .collect()
        }
    }

    fn input(x: Value) -> Input {
        json!({ "x": x }).as_object().unwrap().clone()
    }

    async fn run_concurrently(
        runner: &Runner,
        inputs: Vec<Input>,
    ) -> Vec<Result<Value, ModelError>> {
        futures::future::join_all(inputs.into_iter().map(|input| runner.predict(input))).await
    }

    #[tokio::test]
    async fn concurrent_requests_share_batches_and_get_their_own_rows() {
        let model = Doubler::new();
        let settings = BatchSettings {
            window: Duration::from_millis(20),
            max_batch: 16,
        };
        let runner = Runner::new(
            model.clone(),
            Arc::new(Semaphore::new(1)),
            settings,
            &WorkerMetrics::new(),
        );
        let mut inputs: Vec<_> = (0..40).map(|x| input(json!(x))).collect();
        inputs[7] = input(json!("seven"));
        let results = run_concurrently(&runner, inputs).await;
        for (x, result) in results.iter().enumerate() {
            if x == 7 {
                assert!(
                    matches!(result, Err(ModelError::InvalidInput(_))),
                    "{result:?}"
                );
            } else {
                assert_eq!(result.as_ref().unwrap(), &json!(x * 2));
            }
        }
        let batches = model.batches.lock().unwrap().clone();
        assert_eq!(batches.iter().sum::<usize>(), 40);
        assert!(batches.iter().all(|&size| size <= 16), "{batches:?}");
        assert!(batches.len() <= 4, "40 requests in {batches:?}");
        let stats = runner.stats().to_json();
        assert_eq!(stats["predictions"], 40);
        assert_eq!(stats["inference_calls"], batches.len());
        assert_eq!(stats["largest_batch"], *batches.iter().max().unwrap());
    }

    #[tokio::test]
    async fn max_batch_one_turns_batching_off() {
        let model = Doubler::new();
        let settings = BatchSettings {
            window: Duration::from_millis(20),
            max_batch: 1,
        };
        let runner = Runner::new(
            model.clone(),
            Arc::new(Semaphore::new(4)),
            settings,
            &WorkerMetrics::new(),
        );
        let results = run_concurrently(&runner, (0..10).map(|x| input(json!(x))).collect()).await;
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(*model.batches.lock().unwrap(), vec![1; 10]);
        assert_eq!(runner.stats().to_json()["inference_calls"], 10);
    }
}
