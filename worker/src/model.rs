//! The [`Model`] trait: what a worker needs from a model to serve it.

use std::time::Duration;

use async_trait::async_trait;
use prediction_contract::ModelName;
use prediction_contract::headers::error_codes;
use serde_json::Value;

/// A prediction input: always a JSON object.
pub type Input = serde_json::Map<String, Value>;

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
}
