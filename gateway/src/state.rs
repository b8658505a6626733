//! What every handler and middleware shares: built once by
//! [`Application::build`](crate::Application::build), cloned (one `Arc`) into
//! each request.

use std::sync::Arc;

use prediction_contract::ModelName;

use crate::cache::PredictionCache;
use crate::discovery::ModelDirectory;
use crate::metrics::Metrics;
use crate::nats::Nats;
use crate::prediction::Predictor;
use crate::routes::memo::BodyMemo;
use crate::routes::oip::ReadInference;
use crate::routes::openai::ReadRequests;

/// axum clones the state for every request, so it is one `Arc`.
pub type AppState = Arc<App>;

#[derive(Debug)]
pub struct App {
    pub predictor: Arc<Predictor>,
    pub directory: Arc<ModelDirectory>,
    pub cache: PredictionCache,
    /// For purge broadcasts and the readiness probe.
    pub nats: Nats,
    pub metrics: Metrics,
    pub settings: Settings,
    /// The OpenAI API's requests read recently.
    pub openai_requests: ReadRequests,
    /// The Open Inference Protocol's requests read recently.
    pub oip_requests: BodyMemo<ReadInference>,
}

/// The parts of the configuration handlers read.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where `POST /predict`, the original API, goes.
    pub default_model: ModelName,
    /// The largest body accepted, for the error that names it.
    pub max_body: usize,
    /// How long a request's body may take to arrive, whole.
    pub client_timeout: std::time::Duration,
    /// Whether the OpenAI routes' answers are shared across API tokens.
    pub openai_shared_cache: bool,
}
