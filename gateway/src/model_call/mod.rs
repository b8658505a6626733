//! The model call: how this gateway asks a model's workers for one prediction.
//!
//! A [`ModelCall`] is admitted only if NATS is up, a registered worker serves its
//! model and this gateway has room for one more call (`--max-inflight`; past it:
//! 503 `overloaded`). Each attempt (`attempt`) goes to the model's queue
//! group; a worker with requests waiting hands it on at once to another (backlog
//! redirects, while other workers serve the model), and a full worker answers
//! busy, the attempt repeated after a short backoff.
//!
//! A request is sent again only when the worker that had it cannot answer, never
//! because the model is slow. Workers that send heartbeats (the Rust worker and
//! the Python library do) prove they still hold the request; when they fall
//! silent for [`LOST_AFTER`] the worker is gone and the request is sent again,
//! waiting for a worker to serve the model again if none does, for as long as
//! the deadline allows. For a model some of whose workers send none, the gateway
//! cannot tell slow from gone: it sends the request a second time after
//! `--attempt-timeout`, or twice the slowest answer it has seen from the model
//! if that is longer, the first answer winning. The reply becomes a cache entry
//! with the model's freshness, bounded by `--max-ttl`.

mod attempt;
mod failure;
pub mod generation;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::{self, Either};
use prediction_contract::ModelName;
use prediction_contract::time::unix_now_ms;
use prediction_runtime::telemetry::LogBudget;
use prediction_runtime::traces;
use tokio::sync::Semaphore;
use tracing::{Instrument, debug, error, info, warn};

pub use attempt::{HEARTBEAT_INTERVAL, LOST_AFTER, ModelReply};
use attempt::{Listening, attempt};
pub use failure::PublicFailure;

use crate::cache::CachedPrediction;
use crate::discovery::{ModelDirectory, ModelView};
use crate::input::ModelInput;
use crate::metrics::Metrics;
use crate::nats::Nats;
use generation::Generation;
use prediction_contract::openai::Api;

/// The longest a generation may take, whatever its model declares.
pub const MAX_GENERATION_TIME: Duration = Duration::from_secs(3600);
/// The most bytes of chunks one generation may produce: they are kept in
/// memory for everyone who listens, until it ends.
pub const MAX_GENERATION_BYTES: usize = 16 * 1024 * 1024;

/// How many times a model call is handed on at once to another (random) worker
/// because the one NATS picked had requests waiting; the next attempt waits in
/// line wherever it lands. Three tries find a worker without a backlog nearly
/// always when there is one, and bound the extra round trips when there is none.
/// Fewer when fewer other workers serve the model (none with a single worker).
const BACKLOG_REDIRECTS: usize = 2;
/// Backoff between retries of a request a worker refused as busy.
const BUSY_BACKOFF_FIRST: Duration = Duration::from_millis(10);
const BUSY_BACKOFF_MAX: Duration = Duration::from_millis(200);
/// How often a request whose worker died looks for a worker serving the model
/// again (doubling up to a quarter of a second): the server answers at once
/// that none does, so a look costs one message.
const RETURN_POLL_FIRST: Duration = Duration::from_millis(50);
const RETURN_POLL_MAX: Duration = Duration::from_millis(250);
/// Models whose slowest answer is remembered, for the hedge of models whose
/// workers send no heartbeats.
const REMEMBERED_LATENCIES: usize = 1_024;

/// Log lines of failures a client can cause at will (an unknown model, a
/// rejected input) and of failures of the model side, each within its budget.
static CLIENT_FAILURE_LINES: LogBudget = LogBudget::new();
static MODEL_FAILURE_LINES: LogBudget = LogBudget::new();
static RESENT_LINES: LogBudget = LogBudget::new();

/// One model call: what is asked, for which request, and until when. Made once
/// per computation and carried through every attempt.
#[derive(Debug, Clone)]
pub struct ModelCall {
    pub model: ModelName,
    pub input: ModelInput,
    /// What the model directory said of the model when the request arrived.
    pub view: ModelView,
    /// The HTTP request's id, for the worker's log.
    pub request_id: String,
    /// When the call began: what a 504 tells the client it waited.
    pub started: Instant,
    /// When the client stops waiting.
    pub deadline: Instant,
    /// For a generative model's answer: the API it speaks and the generation
    /// its chunks go to as they come.
    pub live: Option<LiveCall>,
}

/// What a call for a streamed answer carries.
#[derive(Debug, Clone)]
pub struct LiveCall {
    pub api: Api,
    pub generation: Arc<Generation>,
}

impl ModelCall {
    /// A call that may take `timeout` from now.
    pub fn new(
        model: ModelName,
        input: ModelInput,
        view: ModelView,
        request_id: String,
        timeout: Duration,
    ) -> Self {
        let started = Instant::now();
        Self {
            model,
            input,
            view,
            request_id,
            started,
            deadline: started + timeout,
            live: None,
        }
    }

    /// The same call for a generative model's answer in `api`, streamed into
    /// `generation`; its deadline is the model's own bound, if it declares
    /// one (at most [`MAX_GENERATION_TIME`]).
    pub fn generating(mut self, api: Api, generation: Arc<Generation>) -> Self {
        if let Some(bounds) = self.view.bounds() {
            self.deadline = self.started + bounds.total.min(MAX_GENERATION_TIME);
        }
        self.live = Some(LiveCall { api, generation });
        self
    }

    /// Time left before the deadline.
    pub fn time_left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Time since the call began.
    pub fn waited(&self) -> Duration {
        self.started.elapsed()
    }
}

/// Why a model call produced no prediction.
#[derive(Debug, thiserror::Error)]
pub enum ModelCallError {
    #[error("the gateway is not connected to NATS")]
    NotConnected,
    #[error("no worker serves model \"{0}\"")]
    NoWorker(ModelName),
    #[error("no answer from the model within {:.1} s", .0.as_secs_f64())]
    TimedOut(Duration),
    #[error("the worker holding the request fell silent for {:.1} s", .0.as_secs_f64())]
    Lost(Duration),
    #[error("the gateway already has {0} model calls in flight; try again shortly")]
    Overloaded(usize),
    #[error("the input is too large to send to a worker")]
    TooLarge,
    #[error("{0}")]
    InputRejected(String),
    #[error("the workers are busy: {0}")]
    Busy(String),
    #[error("the model failed (code {code}): {message}")]
    Failed { code: u16, message: String },
    #[error("the worker's reply is not JSON")]
    InvalidReply(#[source] serde_json::Error),
    #[error("the NATS publish failed")]
    Nats(#[source] async_nats::PublishError),
    /// Everyone waiting for a streamed answer went away: the generation was
    /// cancelled.
    #[error("nobody listens to the answer any more")]
    Cancelled,
    /// A generation that began stopped producing within its bound (or its
    /// worker went away mid-answer): it cannot be sent again without
    /// repeating what its listeners already got.
    #[error("the model stopped producing its answer ({0})")]
    Stalled(String),
    /// A generation's chunks came to more than [`MAX_GENERATION_BYTES`].
    #[error("the model's answer is larger than {} MiB", MAX_GENERATION_BYTES >> 20)]
    AnswerTooLarge,
}

impl ModelCallError {
    /// Whether a client can cause it at will (a made-up model, an input the
    /// model refuses, a huge input): logged at info, not as a fault.
    fn is_clients_doing(&self) -> bool {
        matches!(
            self,
            Self::NoWorker(_) | Self::InputRejected(_) | Self::TooLarge
        )
    }
}

/// Settings of model calls.
#[derive(Debug, Clone)]
pub struct ModelCallSettings {
    /// Freshness of a prediction whose model sets none.
    pub cache_ttl: Duration,
    /// The longest freshness a model may set.
    pub max_ttl: Duration,
    /// For a model whose workers send no heartbeats: after this long without an
    /// answer a second request is sent (a worker may have died holding the
    /// first); both may answer, the first answer wins.
    pub attempt_timeout: Duration,
    /// Model calls this gateway makes at once; past it requests get 503.
    pub max_inflight: usize,
}

/// Makes this gateway's model calls. Shared by every computation.
#[derive(Debug)]
pub struct ModelCaller {
    nats: Nats,
    directory: Arc<ModelDirectory>,
    /// Permits for model calls; see [`ModelCallSettings::max_inflight`].
    permits: Semaphore,
    /// The slowest answer seen from each model whose workers send no
    /// heartbeats, so that a slow model is not asked twice for being slow.
    slowest: quick_cache::sync::Cache<ModelName, Duration>,
    metrics: Metrics,
    settings: ModelCallSettings,
}

impl ModelCaller {
    pub fn new(
        nats: Nats,
        directory: Arc<ModelDirectory>,
        metrics: Metrics,
        settings: ModelCallSettings,
    ) -> Self {
        Self {
            nats,
            directory,
            permits: Semaphore::new(settings.max_inflight),
            slowest: quick_cache::sync::Cache::new(REMEMBERED_LATENCIES),
            metrics,
            settings,
        }
    }

    /// The prediction `call` asks for, as a cache entry; its latency and result
    /// are counted by model (a model no worker has served counted as `_other`).
    pub async fn call(
        &self,
        call: &ModelCall,
    ) -> Result<Arc<CachedPrediction>, Arc<PublicFailure>> {
        let call_span = if traces::sampled_here() {
            tracing::info_span!(
                "model.call",
                otel.kind = "client",
                model = call.model.as_str(),
                request_id = call.request_id.as_str()
            )
        } else {
            tracing::Span::none()
        };
        let result = self.admit_and_ask(call).instrument(call_span).await;
        let label = self.directory.metric_label(&call.model);
        self.metrics
            .model_call_duration
            .with_label_values(&[label])
            .observe(call.waited().as_secs_f64());
        match result {
            Ok(reply) => {
                self.metrics
                    .model_calls
                    .with_label_values(&[label, "ok"])
                    .inc();
                let fresh_for = reply
                    .metadata
                    .freshness_ttl
                    .unwrap_or(self.settings.cache_ttl)
                    .min(self.settings.max_ttl);
                Ok(Arc::new(CachedPrediction {
                    prediction: reply.prediction,
                    model_version: reply.metadata.model_version,
                    computed_at_ms: unix_now_ms(),
                    fresh_for,
                }))
            }
            Err(err) => {
                let mut failure = PublicFailure::from(&err);
                if let ModelCallError::Failed { .. } = err {
                    // Where to look: the worker logged the cause under this id
                    // (the id of the request that made the call, for every
                    // request that joined it).
                    failure.message = format!(
                        "model \"{}\" failed to compute this prediction; its worker logged why under request id {}",
                        call.model, call.request_id
                    );
                }
                self.log_failure(call, &err);
                self.metrics
                    .model_calls
                    .with_label_values(&[label, failure.code.as_str()])
                    .inc();
                Err(Arc::new(failure))
            }
        }
    }

    /// Logs a failed call within its budget: a client's doing at info, the model
    /// side's at error; an overload is only told to the client.
    fn log_failure(&self, call: &ModelCall, err: &ModelCallError) {
        let model = call.model.as_str();
        let request_id = call.request_id.as_str();
        if matches!(err, ModelCallError::Overloaded(_)) {
            return;
        }
        if err.is_clients_doing() {
            if let Some(suppressed) = CLIENT_FAILURE_LINES.allow() {
                info!(model, request_id, error = %err, suppressed, "model call refused");
            }
        } else if let Some(suppressed) = MODEL_FAILURE_LINES.allow() {
            error!(model, request_id, error = %err, cause = ?std::error::Error::source(err), suppressed, "model call failed");
        }
    }

    /// Checks that NATS is up, a worker serves the model and this gateway has
    /// room for one more call, then asks until the model answers, the deadline
    /// passes, or a failure no retry mends.
    async fn admit_and_ask(&self, call: &ModelCall) -> Result<ModelReply, ModelCallError> {
        if !self.nats.connected_within(call.time_left()).await {
            return Err(ModelCallError::NotConnected);
        }
        // A subscriber that is not a worker (a `nats sub` left running) would
        // swallow requests until the timeout; only registered workers count.
        let view = self.directory.find(&call.model, &call.view).await;
        if !view.is_served() {
            return Err(ModelCallError::NoWorker(call.model.clone()));
        }
        let Ok(_permit) = self.permits.try_acquire() else {
            return Err(ModelCallError::Overloaded(self.settings.max_inflight));
        };
        // Admitted, so some worker serves the model: it has a label of its own.
        let in_flight = self
            .metrics
            .model_calls_in_flight
            .with_label_values(&[self.directory.metric_label(&call.model)]);
        in_flight.inc();
        // Decremented however the call ends, even if its future is dropped.
        let _in_flight = scopeguard::guard(in_flight, |gauge| gauge.dec());
        if view.sends_heartbeats() {
            self.ask_until_answered(call, &view).await
        } else {
            self.ask_hedged(call, &view).await
        }
    }

    /// Asks workers that send heartbeats: a worker that falls silent is gone,
    /// and the request goes to another, or waits for one to serve the model
    /// again, while the deadline allows.
    async fn ask_until_answered(
        &self,
        call: &ModelCall,
        view: &ModelView,
    ) -> Result<ModelReply, ModelCallError> {
        let mut lost = false;
        let mut poll = RETURN_POLL_FIRST;
        loop {
            if call.time_left().is_zero() {
                return Err(ModelCallError::TimedOut(call.waited()));
            }
            match self
                .ask_one_worker(call, view, Listening::ForHeartbeats)
                .await
            {
                Err(ModelCallError::Lost(silence)) => {
                    // Silence from every worker at once is NATS's: say so
                    // rather than buffer the request until it is back.
                    if !self.nats.connected_within(call.time_left()).await {
                        return Err(ModelCallError::NotConnected);
                    }
                    if let Some(suppressed) = RESENT_LINES.allow() {
                        warn!(model = %call.model, request_id = call.request_id, ?silence, suppressed, "the worker holding the request fell silent; sending it again");
                    }
                    self.count_retry(call, "lost");
                    lost = true;
                }
                // Its worker died with the request: wait for a worker to serve
                // the model again.
                Err(ModelCallError::NoWorker(_)) if lost => {
                    self.count_retry(call, "no_worker");
                    tokio::time::sleep(poll.min(call.time_left())).await;
                    poll = (poll * 2).min(RETURN_POLL_MAX);
                }
                result => return result,
            }
        }
    }

    /// Asks workers that may send no heartbeats: after the hedge delay without an
    /// answer the request is sent once more, the first answer winning.
    async fn ask_hedged(
        &self,
        call: &ModelCall,
        view: &ModelView,
    ) -> Result<ModelReply, ModelCallError> {
        let slowest = self.slowest.get(&call.model).unwrap_or_default();
        let hedge_after = hedge_delay(self.settings.attempt_timeout, slowest);
        let first = Box::pin(self.ask_one_worker(call, view, Listening::UntilDeadline));
        let hedge = tokio::time::sleep(hedge_after.min(call.time_left()));
        let result = match future::select(first, Box::pin(hedge)).await {
            Either::Left((result, _)) => result,
            Either::Right(((), first)) if call.time_left().is_zero() => first.await,
            Either::Right(((), first)) => {
                if let Some(suppressed) = RESENT_LINES.allow() {
                    warn!(model = %call.model, request_id = call.request_id, ?hedge_after, suppressed, "no answer yet from a worker without heartbeats; sending the request again");
                }
                self.count_retry(call, "silence");
                let second = Box::pin(self.ask_one_worker(call, view, Listening::UntilDeadline));
                // The first answer wins; a failure waits for the other attempt.
                match future::select(first, second).await {
                    Either::Left((Ok(reply), _)) | Either::Right((Ok(reply), _)) => Ok(reply),
                    Either::Left((Err(_), other)) | Either::Right((Err(_), other)) => other.await,
                }
            }
        };
        if result.is_ok() {
            let took = call.waited();
            if took > slowest {
                self.slowest.insert(call.model.clone(), took);
            }
        }
        result
    }

    /// One request to the model's queue group: handed on to another worker at
    /// once while the first ones have a backlog (up to [`BACKLOG_REDIRECTS`]
    /// times, if other workers serve the model), then repeated after a short
    /// backoff while workers answer busy and the deadline allows.
    async fn ask_one_worker(
        &self,
        call: &ModelCall,
        view: &ModelView,
        listening: Listening,
    ) -> Result<ModelReply, ModelCallError> {
        let mut backoff = BUSY_BACKOFF_FIRST;
        let other_workers = view.workers().saturating_sub(1);
        let mut redirects_left = BACKLOG_REDIRECTS.min(other_workers);
        loop {
            let avoid_backlog = redirects_left > 0;
            match attempt(&self.nats, call, avoid_backlog, listening).await {
                Err(ModelCallError::Busy(message)) if avoid_backlog => {
                    debug!(model = %call.model, request_id = call.request_id, message, "worker has a backlog or is full; trying another");
                    self.count_retry(call, "redirected");
                    redirects_left -= 1;
                }
                Err(ModelCallError::Busy(message)) if call.time_left() > backoff => {
                    debug!(model = %call.model, request_id = call.request_id, message, ?backoff, "worker busy; trying again");
                    self.count_retry(call, "busy");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BUSY_BACKOFF_MAX);
                }
                result => return result,
            }
        }
    }

    fn count_retry(&self, call: &ModelCall, reason: &str) {
        self.metrics
            .model_call_retries
            .with_label_values(&[self.directory.metric_label(&call.model), reason])
            .inc();
    }
}

/// How long a call to a worker without heartbeats waits before asking a second
/// worker: the attempt timeout, or twice the model's slowest answer seen, if
/// longer, so a model is not asked twice merely for being as slow as it has been.
fn hedge_delay(attempt_timeout: Duration, slowest_seen: Duration) -> Duration {
    attempt_timeout.max(slowest_seen * 2)
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::*;

    #[test]
    fn a_model_seen_slow_is_given_twice_its_slowest_before_a_second_worker() {
        let attempt = Duration::from_millis(2_500);
        assert_eq!(hedge_delay(attempt, Duration::ZERO), attempt);
        assert_eq!(hedge_delay(attempt, Duration::from_secs(1)), attempt);
        assert_eq!(
            hedge_delay(attempt, Duration::from_secs(3)),
            Duration::from_secs(6)
        );
    }

    #[test]
    fn what_a_client_can_cause_is_told_from_the_model_sides_failures() {
        let model = ModelName::parse("m").unwrap();
        for clients in [
            ModelCallError::NoWorker(model),
            ModelCallError::InputRejected("no".into()),
            ModelCallError::TooLarge,
        ] {
            assert!(clients.is_clients_doing(), "{clients}");
        }
        for model_side in [
            ModelCallError::NotConnected,
            ModelCallError::TimedOut(Duration::from_secs(5)),
            ModelCallError::Failed {
                code: 500,
                message: "boom".into(),
            },
        ] {
            assert!(!model_side.is_clients_doing(), "{model_side}");
        }
    }

    #[test]
    fn each_failure_has_its_status_code_and_a_message_without_internals() {
        let cases = [
            (
                ModelCallError::InputRejected("missing field".into()),
                StatusCode::UNPROCESSABLE_ENTITY,
                "input_rejected",
            ),
            (
                ModelCallError::NoWorker(ModelName::parse("m").unwrap()),
                StatusCode::SERVICE_UNAVAILABLE,
                "no_worker",
            ),
            (
                ModelCallError::TimedOut(Duration::from_millis(5_049)),
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
            ),
            (
                ModelCallError::Lost(Duration::from_secs(2)),
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
            ),
            (
                ModelCallError::Failed {
                    code: 500,
                    message: "CUDA out of memory".into(),
                },
                StatusCode::INTERNAL_SERVER_ERROR,
                "model_failed",
            ),
        ];
        for (err, status, code) in cases {
            let failure = PublicFailure::from(&err);
            assert_eq!(
                (failure.status, failure.code.as_str()),
                (status.as_u16(), code)
            );
            assert!(!failure.message.contains("CUDA"), "{}", failure.message);
        }
        let waited = PublicFailure::from(&ModelCallError::TimedOut(Duration::from_millis(5_049)));
        assert_eq!(waited.message, "no answer from the model within 5.0 s");
    }

    #[test]
    fn a_call_knows_its_time_left_and_how_long_it_waited() {
        let call = ModelCall::new(
            ModelName::parse("m").unwrap(),
            ModelInput::Json(prediction_contract::CanonicalInput::from_json_slice(b"{}").unwrap()),
            ModelView::unknown(),
            "r".into(),
            Duration::from_secs(60),
        );
        assert!(call.time_left() > Duration::from_secs(59));
        assert!(call.waited() < Duration::from_secs(1));
        let over = ModelCall::new(
            call.model.clone(),
            call.input.clone(),
            ModelView::unknown(),
            "r".into(),
            Duration::ZERO,
        );
        assert_eq!(over.time_left(), Duration::ZERO);
    }
}
