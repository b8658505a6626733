//! The model call: how this gateway asks a model's workers for one prediction.
//!
//! A [`ModelCall`] is admitted only if a registered worker serves its model and
//! this gateway has room for one more call (`--max-inflight`; past it: 503
//! `overloaded`). It is then sent to the model's queue group; a worker with
//! requests waiting hands it on at once to another (backlog redirects, while
//! other workers serve the model), a full worker answers busy and the call is
//! repeated after a short backoff, and a call that meets only silence for
//! `--attempt-timeout` is sent once more (a worker may have died holding it), the
//! first answer winning. The reply becomes a cache entry with the model's
//! freshness, bounded by `--max-ttl`.

use prediction_contract::traces;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

use futures::future::{self, Either};
use prediction_contract::time::unix_now_ms;
use tokio::sync::Semaphore;
use tracing::{debug, error, info, warn};

use crate::cache::CachedPrediction;
use crate::discovery::ModelDirectory;
use crate::error::PublicFailure;
use crate::metrics::Metrics;
pub use crate::model_client::{ModelCall, ModelCallError};
use crate::model_client::{ModelClient, ModelReply};

/// How many times a model call is handed on at once to another (random) worker
/// because the one NATS picked had requests waiting; the next attempt waits in
/// line wherever it lands. Three tries find a worker without a backlog nearly
/// always when there is one, and bound the extra round trips when there is none.
/// Fewer when fewer other workers serve the model (none with a single worker).
const BACKLOG_REDIRECTS: usize = 2;
/// Backoff between retries of a request a worker refused as busy.
const BUSY_BACKOFF_FIRST: Duration = Duration::from_millis(10);
const BUSY_BACKOFF_MAX: Duration = Duration::from_millis(200);

/// Settings of model calls.
#[derive(Debug, Clone)]
pub struct ModelCallSettings {
    /// Freshness of a prediction whose model sets none.
    pub cache_ttl: Duration,
    /// The longest freshness a model may set.
    pub max_ttl: Duration,
    /// After this long without an answer a second request is sent (a worker may
    /// have died holding the first); both may answer, the first answer wins.
    pub attempt_timeout: Duration,
    /// Model calls this gateway makes at once; past it requests get 503.
    pub max_inflight: usize,
}

/// Makes this gateway's model calls. Shared by every computation.
#[derive(Debug)]
pub struct ModelCaller {
    client: ModelClient,
    directory: Arc<ModelDirectory>,
    /// Permits for model calls; see [`ModelCallSettings::max_inflight`].
    permits: Semaphore,
    metrics: Metrics,
    settings: ModelCallSettings,
}

impl ModelCaller {
    pub fn new(
        client: ModelClient,
        directory: Arc<ModelDirectory>,
        metrics: Metrics,
        settings: ModelCallSettings,
    ) -> Self {
        Self {
            client,
            directory,
            permits: Semaphore::new(settings.max_inflight),
            metrics,
            settings,
        }
    }

    /// The prediction `call` asks for, as a cache entry; its latency and result
    /// are counted by model.
    pub async fn call(
        &self,
        call: &ModelCall,
    ) -> Result<Arc<CachedPrediction>, Arc<PublicFailure>> {
        let model = call.model.as_str();
        let started = Instant::now();
        let in_flight = self
            .metrics
            .model_calls_in_flight
            .with_label_values(&[model]);
        in_flight.inc();
        // Decremented however the call ends, even if its future is dropped.
        let _in_flight = scopeguard::guard(in_flight, |gauge| gauge.dec());
        let call_span = if traces::sampled_here() {
            tracing::info_span!(
                "model.call",
                otel.kind = "client",
                model,
                request_id = call.request_id.as_str()
            )
        } else {
            tracing::Span::none()
        };
        let result = self.admit_and_ask(call).instrument(call_span).await;
        self.metrics
            .model_call_duration
            .with_label_values(&[model])
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(reply) => {
                self.metrics
                    .model_calls
                    .with_label_values(&[model, "ok"])
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
                let failure = PublicFailure::from(&err);
                match &err {
                    // Said to the client; nothing to investigate.
                    ModelCallError::Overloaded(_) => {}
                    _ if failure.is_server_side() => {
                        error!(model, request_id = call.request_id, error = %err, cause = ?std::error::Error::source(&err), "model call failed");
                    }
                    _ => {
                        info!(model, request_id = call.request_id, error = %err, "model rejected the input");
                    }
                }
                self.metrics
                    .model_calls
                    .with_label_values(&[model, failure.code.as_str()])
                    .inc();
                Err(Arc::new(failure))
            }
        }
    }

    /// Checks that a worker serves the model and that this gateway has room for
    /// one more call, then asks, sending the request once more if the first
    /// attempt meets only silence.
    async fn admit_and_ask(&self, call: &ModelCall) -> Result<ModelReply, ModelCallError> {
        if !self.client.connected_within(call.time_left()).await {
            return Err(ModelCallError::NotConnected);
        }
        // A subscriber that is not a worker (a `nats sub` left running) would
        // swallow requests until the timeout; only registered workers count.
        if !self.directory.is_served(&call.model).await {
            return Err(ModelCallError::NoWorker(call.model.clone()));
        }
        let Ok(_permit) = self.permits.try_acquire() else {
            return Err(ModelCallError::Overloaded(self.settings.max_inflight));
        };

        let first = Box::pin(self.attempt(call));
        let hedge_after = tokio::time::sleep(self.settings.attempt_timeout.min(call.time_left()));
        let first = match future::select(first, Box::pin(hedge_after)).await {
            Either::Left((result, _)) => return result,
            Either::Right(((), first)) => first,
        };
        if Instant::now() >= call.deadline {
            return first.await;
        }
        warn!(model = %call.model, request_id = call.request_id, attempt_timeout = ?self.settings.attempt_timeout, "no answer yet; sending the request again");
        self.count_retry(call, "silence");
        let second = Box::pin(self.attempt(call));
        // The first answer wins; a failure waits for the other attempt.
        match future::select(first, second).await {
            Either::Left((Ok(reply), _)) | Either::Right((Ok(reply), _)) => Ok(reply),
            Either::Left((Err(_), other)) | Either::Right((Err(_), other)) => other.await,
        }
    }

    /// One request to the model's queue group: handed on to another worker at
    /// once while the first ones have a backlog (up to [`BACKLOG_REDIRECTS`]
    /// times, if other workers serve the model), then repeated after a short
    /// backoff while workers answer busy and the deadline allows.
    async fn attempt(&self, call: &ModelCall) -> Result<ModelReply, ModelCallError> {
        let mut backoff = BUSY_BACKOFF_FIRST;
        let other_workers = self
            .directory
            .workers_serving(&call.model)
            .saturating_sub(1);
        let mut redirects_left = BACKLOG_REDIRECTS.min(other_workers);
        loop {
            let avoid_backlog = redirects_left > 0;
            match self.client.predict(call, avoid_backlog).await {
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
            .with_label_values(&[call.model.as_str(), reason])
            .inc();
    }
}
