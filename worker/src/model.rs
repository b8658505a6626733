//! The [`Model`] trait: what a worker needs from a model to serve it.

use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{self, BoxStream, StreamExt};
use prediction_contract::ModelName;
use prediction_contract::headers::error_codes;
use prediction_contract::openai::{self, Api};
use prediction_contract::tensors::{InferenceRequest, Tensor, TensorSignature};
use serde_json::Value;

/// A prediction input: always a JSON object.
pub type Input = serde_json::Map<String, Value>;

/// A generative model's answer as it is produced: its chunks (see
/// `prediction_contract::openai`), in order; an error ends it.
pub type Chunks = BoxStream<'static, Result<Value, ModelError>>;

/// How long a generative model's answers may take; the gateway holds it to
/// them (instead of its `--request-timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenerationBounds {
    /// The whole answer.
    pub total: Duration,
    /// Until the first chunk (loading, reading the prompt).
    pub first_chunk: Duration,
    /// Between two chunks: longer, and the gateway takes the generation for
    /// stalled and fails it.
    pub between_chunks: Duration,
}

/// Why a model could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// The input is not one the model accepts; the caller must change it.
    #[error("{0}")]
    InvalidInput(String),
    /// The model failed; the same input may succeed later.
    #[error("{0}")]
    Failed(String),
}

impl ModelError {
    /// The `Nats-Service-Error-Code` of this error.
    pub fn code(&self) -> u16 {
        match self {
            Self::InvalidInput(_) => error_codes::BAD_INPUT,
            Self::Failed(_) => error_codes::MODEL_FAILED,
        }
    }
}

/// A model the worker can serve.
///
/// Implement [`predict`](Model::predict); override
/// [`predict_batch`](Model::predict_batch) when the model computes a batch faster
/// than its rows one by one. The worker may call either, so both must agree.
#[async_trait]
pub trait Model: Send + Sync + 'static {
    /// The name it is served under (`predict.<name>`).
    fn name(&self) -> &ModelName;

    /// The version of the model's weights and code. A prediction is cached under
    /// (model, version, input), so change it whenever answers may change.
    fn version(&self) -> &str;

    /// How long a prediction stays fresh. `None` lets the gateway's default apply;
    /// `Some(Duration::ZERO)` asks the gateway not to cache it at all.
    fn freshness_ttl(&self) -> Option<Duration> {
        None
    }

    /// Whether concurrent requests should reach [`predict_batch`](Model::predict_batch)
    /// together (dynamic batching, `--batch-window`/`--max-batch`). Worth it when
    /// one call over many rows costs much less than as many calls over one.
    fn batches(&self) -> bool {
        false
    }

    /// Computes one prediction. Must not block the async runtime: CPU-heavy work
    /// belongs in `tokio::task::spawn_blocking`.
    async fn predict(&self, input: &Input) -> Result<Value, ModelError>;

    /// Computes a batch: one result per input, in order, each failing on its own.
    async fn predict_batch(&self, inputs: &[Input]) -> Vec<Result<Value, ModelError>> {
        futures::future::join_all(inputs.iter().map(|input| self.predict(input))).await
    }

    /// Readies the model before the worker registers it: a model another
    /// server runs learns from it what it takes. An error stops the worker.
    async fn start(&self) -> anyhow::Result<()> {
        Ok(())
    }

    /// The tensors it takes and gives, if it answers the Open Inference
    /// Protocol's tensor requests through [`infer`](Model::infer).
    fn tensors(&self) -> Option<&TensorSignature> {
        None
    }

    /// Its outputs for `request`, already checked against
    /// [`tensors`](Model::tensors): every output it gives, or those asked for.
    async fn infer(&self, request: &InferenceRequest) -> Result<Vec<Tensor>, ModelError> {
        let _ = request;
        Err(ModelError::InvalidInput(format!(
            "model {} takes JSON inputs, not tensors",
            self.name()
        )))
    }

    /// Computes several requests together: one result per request, in order.
    /// A model that batches overrides it to run them as one call.
    async fn infer_batch(
        &self,
        requests: &[InferenceRequest],
    ) -> Vec<Result<Vec<Tensor>, ModelError>> {
        futures::future::join_all(requests.iter().map(|request| self.infer(request))).await
    }

    /// Whether it generates: answers OpenAI API requests (chat, completions,
    /// embeddings) through [`generate`](Model::generate), streaming chunks to
    /// callers that ask for a stream. Its [`predict`](Model::predict) should
    /// be [`whole_answer`], for callers that do not.
    fn generates(&self) -> bool {
        false
    }

    /// The bounds of its generations, if it generates.
    fn bounds(&self) -> Option<GenerationBounds> {
        None
    }

    /// Whether the answers of sampled requests (a `temperature` above 0 and
    /// no `seed`) may be cached; see `prediction_contract::openai::is_sampled`.
    fn caches_sampled(&self) -> bool {
        true
    }

    /// The answer to `request` in `api`, chunk by chunk (for embeddings, one
    /// item: the whole answer). Only called when [`generates`](Model::generates).
    fn generate(&self, api: Api, request: Input) -> Chunks {
        let _ = (api, request);
        stream::once(async { Err(ModelError::Failed("this model does not generate".into())) })
            .boxed()
    }
}

/// The complete answer of a generative model to `request`: its chunks
/// assembled (embeddings: the one answer). What a caller that asks for no
/// stream gets, `nats req` included; the API comes from the request's fields.
pub async fn whole_answer(model: &dyn Model, request: &Input) -> Result<Value, ModelError> {
    let Some(api) = Api::infer(request) else {
        return Err(ModelError::InvalidInput(
            "the request has none of `messages` (chat), `prompt` (completions) or `input` (embeddings)"
                .into(),
        ));
    };
    answer_whole(model, api, request.clone()).await
}

/// [`whole_answer`] for a known `api`.
pub async fn answer_whole(
    model: &dyn Model,
    api: Api,
    request: Input,
) -> Result<Value, ModelError> {
    let chunks: Vec<Value> = model
        .generate(api, request)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    if api.streams() {
        Ok(openai::assemble(api, &chunks))
    } else {
        chunks
            .into_iter()
            .next()
            .ok_or_else(|| ModelError::Failed("the model answered nothing".into()))
    }
}
