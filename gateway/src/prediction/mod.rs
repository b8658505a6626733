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

use prediction_contract::ModelName;
use prediction_contract::openai::Api;
use prediction_contract::time::unix_now_ms;
use prediction_runtime::traces;
use tracing::{Instrument, warn};

use crate::cache::{CacheKey, CachedPrediction, Lookup, OnMiss, PredictionCache};
use crate::discovery::ModelDirectory;
use crate::freshness::RequestDirectives;
use crate::input::{InputError, KeyMemo, ModelInput, RawInput};
use crate::metrics::Metrics;
use crate::model_call::generation::{Generation, Listener};
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
    /// Whether the answer is sampled (see `openai::is_sampled`): two calls
    /// may answer differently. For a model that does not cache sampled answers
    /// (its `cache_sampled` setting), such a request is computed for itself
    /// alone: not read from the cache, not stored, not joined by others.
    pub sampled: bool,
}

/// What a generative request gets: a whole answer (from the cache, or an
/// entry another gateway computed), or a generation to follow as it comes.
#[derive(Debug)]
pub enum Generated {
    Whole(Answer),
    Live {
        listener: Listener,
        /// `Miss` for the request that started it, `Coalesced` for joiners.
        outcome: CacheOutcome,
    },
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
        match self.answer(request, None).await? {
            Generated::Whole(answer) => Ok(answer),
            Generated::Live { .. } => unreachable!("only a generative request streams"),
        }
    }

    /// The answer of a generative model to `request` in `api`: from the cache,
    /// or a generation to follow chunk by chunk, shared by every identical
    /// request (one that joins late first gets the chunks already produced).
    /// The entry holds the chunks, so one entry serves a streamed and a whole
    /// answer alike.
    pub async fn generate(
        self: &Arc<Self>,
        request: PredictionRequest<'_>,
        api: Api,
    ) -> Result<Generated, PredictionError> {
        self.answer(request, Some(api)).await
    }

    async fn answer(
        self: &Arc<Self>,
        request: PredictionRequest<'_>,
        live: Option<Api>,
    ) -> Result<Generated, PredictionError> {
        let PredictionRequest {
            model,
            input,
            directives,
            request_id,
            sampled,
        } = request;
        let arrived = Instant::now();
        // A hot input has its key remembered; any other is parsed here, which
        // also tells a client what is wrong with it. An input is hot when a copy
        // of its entry is in this gateway's memory as it arrives: it was read
        // moments ago. (Remembering every input served from the cache churned
        // the memo under 100 000 keys: +8 MiB peak RSS.)
        let (key, for_worker, hot) = match self.keys.get(model, &input) {
            Some(key) => (key, None, false),
            None => {
                let read = input.read()?;
                let key = self.cache.keys().key(model, &read.key_material);
                let hot = self.cache.holds_locally(&key);
                (key, Some(read.for_worker), hot)
            }
        };
        let view = self.directory.view(model);
        let private = sampled && !view.caches_sampled();
        let private_directives;
        let directives = if private {
            private_directives = RequestDirectives {
                no_store: true,
                ..RequestDirectives::default()
            };
            &private_directives
        } else {
            directives
        };
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
        // input read at most once: above, or here when the model is asked.
        let model_call = |for_worker: Option<ModelInput>| {
            let input = match for_worker {
                Some(for_worker) => for_worker,
                None => input.read()?.for_worker,
            };
            Ok::<_, PredictionError>(ModelCall::new(
                model.clone(),
                input,
                view,
                request_id.to_owned(),
                self.request_timeout,
            ))
        };
        let whole = |entry, outcome| Ok(Generated::Whole(Answer { entry, outcome }));
        match (decision, lookup) {
            (Decision::Hit, Some(Lookup::Found(entry))) => {
                if hot {
                    self.keys.remember(model, &input, &key);
                }
                whole(entry, CacheOutcome::Hit)
            }
            (Decision::Stale, Some(Lookup::Found(entry))) => {
                self.refresh_in_background(key, model_call(for_worker)?, live);
                whole(entry, CacheOutcome::Stale)
            }
            (Decision::NotCached, _) => Err(PredictionError::NotCached),
            (Decision::Compute { fresh_only }, lookup) => {
                let call = model_call(for_worker)?;
                let job = Job::for_request(key, call, directives, fresh_only, lookup);
                let not_before = fresh_only.then_some(arrived);
                match live {
                    None => {
                        // Boxed: a computation's future is large, and a hit's
                        // would be as large without the box.
                        let answer = Box::pin(self.compute(job, not_before)).await?;
                        Ok(Generated::Whole(answer))
                    }
                    Some(api) => Ok(self.compute_live(job, not_before, api, !private)),
                }
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

    /// Starts `job` as a generation, or joins the one of its key in flight here
    /// (started after `not_before`, if given); or, not `shared`, runs it on its
    /// own. Returns at once: the generation to follow.
    fn compute_live(
        self: &Arc<Self>,
        mut job: Job,
        not_before: Option<Instant>,
        api: Api,
        shared: bool,
    ) -> Generated {
        let forced = not_before.is_some();
        let name: Arc<str> = job.key.as_str().into();
        let computations = Arc::clone(&self.computations);
        let run = move |generation: Arc<Generation>| {
            job.call = job.call.generating(api, Arc::clone(&generation));
            async move {
                let outcome = computations.run(job).await;
                generation.finish(outcome.clone().map(|resolved| resolved.entry));
                outcome
            }
        };
        if !shared {
            let generation = Generation::new();
            let listener = generation.listen();
            tokio::spawn(run(generation));
            let outcome = CacheOutcome::Miss {
                stored: false,
                forced,
            };
            return Generated::Live { listener, outcome };
        }
        let (outcome, generation, role) = self.in_flight.generate_or_join(name, not_before, run);
        let listener = generation.map_or_else(
            // Joined a computation that streams nothing (none does today): a
            // generation its outcome ends.
            || {
                let generation = Generation::new();
                let listener = generation.listen();
                tokio::spawn(async move {
                    generation.finish(outcome.await.map(|resolved| resolved.entry));
                });
                listener
            },
            |generation| generation.listen(),
        );
        let outcome = match role {
            Role::Leader => CacheOutcome::Miss {
                stored: false,
                forced,
            },
            Role::Follower => CacheOutcome::Coalesced,
        };
        Generated::Live { listener, outcome }
    }

    /// Starts one refresh of a stale entry, unless one is already running; a
    /// generative model's as a generation nobody follows.
    fn refresh_in_background(self: &Arc<Self>, key: CacheKey, call: ModelCall, live: Option<Api>) {
        if self.in_flight.is_in_flight(key.as_str()) {
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let computations = Arc::clone(&this.computations);
            let name: Arc<str> = key.as_str().into();
            let job = Job::refresh(key, call);
            let outcome = match live {
                None => {
                    this.in_flight
                        .compute_or_join(name, None, move || computations.run(job))
                        .await
                        .0
                }
                Some(api) => {
                    let (outcome, _, _) =
                        this.in_flight
                            .generate_or_join(name, None, move |generation| {
                                let mut job = job;
                                job.call = job.call.generating(api, Arc::clone(&generation));
                                async move {
                                    let outcome = computations.run(job).await;
                                    generation
                                        .finish(outcome.clone().map(|resolved| resolved.entry));
                                    outcome
                                }
                            });
                    outcome.await
                }
            };
            if let Err(failure) = outcome {
                this.metrics.stale_refresh_failures.inc();
                warn!(error = %failure, "refresh of a stale prediction failed; it is served until its stale period ends");
            }
        });
    }
}
