//! The prediction core: one protocol-free answer to "what is `model`'s
//! prediction for this input?", through the cache, shared by every front door
//! (`crate::routes`). A protocol's module translates its request into a
//! [`PredictionRequest`] and the [`Answer`] (or [`PredictionError`]) back into
//! its wire format; nothing here knows HTTP.
//!
//! A request goes: its key (remembered for hot inputs by [`crate::input`]), one
//! look at the model directory (`ModelView`) and one cache lookup, then
//! [`policy::decide`], the cache policy in one place: a fresh entry is a hit; a
//! stale one is served while one refresh runs in the background; otherwise the
//! request joins the computation in flight for the same key in this gateway
//! ([`coalesce`]) or starts one (`computation`), which takes the key's Redis
//! lock or waits for the gateway that holds it, and makes the model call
//! ([`crate::model_call`]).
//!
//! Stale-if-error follows from the same path: while an entry is in its stale
//! period every request gets it at once, so a refresh that fails (the model
//! errs, no worker answers) never reaches a client; the next request in the stale
//! period simply tries another refresh.

mod announcement;
pub mod coalesce;
mod computation;
pub mod policy;

use std::sync::Arc;
use std::time::{Duration, Instant};

use prediction_contract::time::unix_now_ms;
use prediction_contract::{CanonicalInput, ModelName};
use prediction_runtime::traces;
use tracing::{Instrument, warn};

use crate::cache::{CacheKey, CachedPrediction, Lookup, OnMiss, PredictionCache};
use crate::discovery::ModelDirectory;
use crate::freshness::RequestDirectives;
use crate::input::{InputError, KeyMemo, RawInput};
use crate::metrics::Metrics;
use crate::model_call::{ModelCall, ModelCaller, PublicFailure};
use crate::nats::Nats;
use coalesce::{InFlight, Role};
use computation::{CallOutcome, Computations, Job, Source};
use policy::{Decision, Looked};

/// One prediction request, whatever protocol it came by.
#[derive(Debug)]
pub struct PredictionRequest<'a> {
    pub model: &'a ModelName,
    pub input: RawInput,
    pub directives: &'a RequestDirectives,
    /// For the logs of this gateway and the worker.
    pub request_id: &'a str,
}

/// Why a request got no prediction.
#[derive(Debug, thiserror::Error)]
pub enum PredictionError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("no fresh prediction is cached for this input (Cache-Control: only-if-cached)")]
    NotCached,
    /// The computation failed; shared by every request that waited for it.
    #[error("{0}")]
    Failed(Arc<PublicFailure>),
}

/// Where an answer came from; told in `X-Cache` and `Cache-Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// A fresh entry.
    Hit,
    /// An entry in its stale period, served while one refresh runs (or after
    /// refreshes failed).
    Stale,
    /// Computed for this request; `stored` says whether the cache took it, and
    /// `forced` whether the client's directives asked for a new computation.
    Miss { stored: bool, forced: bool },
    /// Joined a computation that another request started, here or elsewhere.
    Coalesced,
    /// Computed without the cache, which could not be reached.
    Bypass,
}

impl CacheOutcome {
    /// The `X-Cache` value.
    pub fn x_cache(self) -> &'static str {
        match self {
            Self::Hit => "HIT",
            Self::Stale => "STALE",
            Self::Miss { .. } | Self::Coalesced => "MISS",
            Self::Bypass => "BYPASS",
        }
    }

    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Stale => "stale",
            Self::Miss { .. } => "miss",
            Self::Coalesced => "coalesced",
            Self::Bypass => "bypass",
        }
    }
}

/// A prediction to send back, and how it was obtained.
#[derive(Debug, Clone)]
pub struct Answer {
    pub entry: Arc<CachedPrediction>,
    pub outcome: CacheOutcome,
}

/// Memory for the cache keys of inputs served from the cache (see [`KeyMemo`]):
/// some 7 000 short inputs, the hot ones.
const KEY_MEMO_BYTES: u64 = 2 * 1024 * 1024;

/// Answers predictions through the cache. Shared by every request.
#[derive(Debug)]
pub struct Predictor {
    cache: PredictionCache,
    computations: Arc<Computations>,
    directory: Arc<ModelDirectory>,
    keys: KeyMemo,
    in_flight: Arc<InFlight<CallOutcome>>,
    metrics: Metrics,
    /// How long a client waits for a computation.
    request_timeout: Duration,
}

impl Predictor {
    /// A predictor reading `cache`, computing misses with `models` and telling
    /// other gateways over `nats`.
    pub fn new(
        cache: PredictionCache,
        models: ModelCaller,
        directory: Arc<ModelDirectory>,
        nats: Nats,
        metrics: Metrics,
        request_timeout: Duration,
    ) -> Arc<Self> {
        let in_flight = InFlight::new(
            || Err(Arc::new(PublicFailure::internal())),
            metrics.coalesced_keys_in_flight.clone(),
        );
        let computations = Computations::new(cache.clone(), models, nats);
        Arc::new(Self {
            cache,
            computations: Arc::new(computations),
            directory,
            keys: KeyMemo::new(KEY_MEMO_BYTES),
            in_flight,
            metrics,
            request_timeout,
        })
    }

    /// The prediction `request` asks for, from the cache when the client's
    /// directives allow it, else from one computation shared by every identical
    /// request.
    pub async fn predict(
        self: &Arc<Self>,
        request: PredictionRequest<'_>,
    ) -> Result<Answer, PredictionError> {
        let PredictionRequest {
            model,
            input,
            directives,
            request_id,
        } = request;
        let arrived = Instant::now();
        // A hot input has its key remembered; any other is parsed here, which
        // also tells a client what is wrong with it. An input is hot when a copy
        // of its entry is in this gateway's memory as it arrives: it was read
        // moments ago. (Remembering every input served from the cache churned
        // the memo under 100 000 keys: +8 MiB peak RSS.)
        let (key, canonical, hot) = match self.keys.get(model, &input) {
            Some(key) => (key, None, false),
            None => {
                let canonical = input.canonical()?;
                let key = self.cache.keys().key(model, &canonical);
                let hot = self.cache.holds_locally(&key);
                (key, Some(canonical), hot)
            }
        };
        let view = self.directory.view(model);
        let lookup = if directives.skips_lookup() {
            None
        } else {
            // A miss takes the key's lease (its compute lock while it has no
            // entry) in the lookup's command, unless the client forbids computing.
            let on_miss = if directives.only_if_cached {
                OnMiss::JustLook
            } else {
                OnMiss::TakeLease
            };
            let span = if traces::sampled_here() {
                tracing::info_span!("cache.lookup", model = model.as_str())
            } else {
                tracing::Span::none()
            };
            Some(self.cache.lookup(&key, on_miss).instrument(span).await)
        };
        let looked = match &lookup {
            None => Looked::NotLooked,
            Some(Lookup::Found(entry)) => Looked::Entry(entry),
            Some(_) => Looked::Nothing,
        };
        let decision = policy::decide(
            looked,
            directives,
            unix_now_ms(),
            view.current_version(),
            self.cache.stale_ttl(),
        );
        // The model call a stale answer's refresh or a computation makes; the
        // input parsed at most once: above, or here when the model is asked.
        let model_call = |canonical: Option<CanonicalInput>| {
            let input = match canonical {
                Some(canonical) => canonical,
                None => input.canonical()?,
            };
            Ok::<_, PredictionError>(ModelCall::new(
                model.clone(),
                input,
                view,
                request_id.to_owned(),
                self.request_timeout,
            ))
        };
        match (decision, lookup) {
            (Decision::Hit, Some(Lookup::Found(entry))) => {
                if hot {
                    self.keys.remember(model, &input, &key);
                }
                Ok(Answer {
                    entry,
                    outcome: CacheOutcome::Hit,
                })
            }
            (Decision::Stale, Some(Lookup::Found(entry))) => {
                self.refresh_in_background(key, model_call(canonical)?);
                Ok(Answer {
                    entry,
                    outcome: CacheOutcome::Stale,
                })
            }
            (Decision::NotCached, _) => Err(PredictionError::NotCached),
            (Decision::Compute { fresh_only }, lookup) => {
                let call = model_call(canonical)?;
                let job = Job::for_request(key, call, directives, fresh_only, lookup);
                self.compute(job, fresh_only.then_some(arrived)).await
            }
            (Decision::Hit | Decision::Stale, _) => {
                unreachable!("a hit or a stale answer comes from an entry found")
            }
        }
    }

    /// Runs `job`, or joins the computation of its key in flight here (started
    /// after `not_before`, if given).
    async fn compute(
        self: &Arc<Self>,
        job: Job,
        not_before: Option<Instant>,
    ) -> Result<Answer, PredictionError> {
        let fresh_only = not_before.is_some();
        let name: Arc<str> = job.key.as_str().into();
        let computations = Arc::clone(&self.computations);
        // A request that joins a computation already running here drops its
        // lease unused: that computation adopts it (same gateway token).
        let (outcome, role) = self
            .in_flight
            .compute_or_join(name, not_before, move || computations.run(job))
            .await;
        let resolved = outcome.map_err(PredictionError::Failed)?;
        let outcome = match (role, resolved.source) {
            (Role::Follower, _) | (Role::Leader, Source::OtherGateway) => CacheOutcome::Coalesced,
            (Role::Leader, Source::Cache) => CacheOutcome::Hit,
            (
                Role::Leader,
                Source::Model {
                    stored,
                    store_wanted,
                },
            ) => {
                if store_wanted && !stored && !resolved.entry.fresh_for.is_zero() {
                    CacheOutcome::Bypass
                } else {
                    CacheOutcome::Miss {
                        stored,
                        forced: fresh_only,
                    }
                }
            }
        };
        Ok(Answer {
            entry: resolved.entry,
            outcome,
        })
    }

    /// Starts one refresh of a stale entry, unless one is already running.
    fn refresh_in_background(self: &Arc<Self>, key: CacheKey, call: ModelCall) {
        if self.in_flight.is_in_flight(key.as_str()) {
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let computations = Arc::clone(&this.computations);
            let name: Arc<str> = key.as_str().into();
            let (outcome, _) = this
                .in_flight
                .compute_or_join(name, None, move || {
                    computations.run(Job::refresh(key, call))
                })
                .await;
            if let Err(failure) = outcome {
                this.metrics.stale_refresh_failures.inc();
                warn!(error = %failure, "refresh of a stale prediction failed; it is served until its stale period ends");
            }
        });
    }
}
