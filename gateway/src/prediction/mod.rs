//! The read-through cache in front of the model workers, with every protection a
//! good HTTP cache has: coalescing within and across gateways, stale-while-
//! revalidate, stale-if-error, and the client's own freshness directives.
//!
//! A request goes: [`Predictor::predict`] looks the key up (fresh: HIT; in its
//! stale period: STALE now and one background refresh), else joins the
//! computation in flight for the same key in this gateway ([`crate::coalesce`]) or
//! starts one ([`computation`]), which takes the key's Redis lock or waits for the
//! gateway that holds it, and makes the model call ([`crate::model_call`]).
//!
//! Stale-if-error follows from the same path: while an entry is in its stale
//! period every request gets it at once, so a refresh that fails (the model
//! errs, no worker answers) never reaches a client; the next request in the stale
//! period simply tries another refresh.

mod announcement;
mod computation;

use prediction_runtime::traces;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

use axum::http::StatusCode;
use prediction_contract::ModelName;
use prediction_contract::time::unix_now_ms;
use tracing::warn;

use crate::cache::{
    CacheKey, CachedPrediction, Claim, LockClaim, LockSite, Lookup, OnMiss, PredictionCache,
};
use crate::coalesce::{InFlight, Role};
use crate::discovery::ModelDirectory;
use crate::error::{ApiError, PublicFailure};
use crate::freshness::RequestDirectives;
use crate::input::{KeyMemo, RawInput};
use crate::metrics::Metrics;
use crate::model_call::{ModelCall, ModelCaller};
use crate::nats::Nats;
use computation::{CallOutcome, Computations, Job, Source};

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
            || {
                Err(Arc::new(PublicFailure::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; see the gateway logs",
                )))
            },
            metrics.coalesced_keys_in_flight.clone(),
        );
        let computations = Computations::new(cache.clone(), models, Arc::clone(&directory), nats);
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

    /// The prediction of `model` for `input`, from the cache when the client's
    /// directives allow it, else from one computation shared by every identical
    /// request.
    pub async fn predict(
        self: &Arc<Self>,
        model: &ModelName,
        input: RawInput,
        directives: &RequestDirectives,
        request_id: &str,
    ) -> Result<Answer, ApiError> {
        let arrived = Instant::now();
        // A hot input has its key remembered; any other is parsed here, which
        // also tells a client what is wrong with it. An input is hot when a copy
        // of its entry is in this gateway's memory as it arrives: it was read
        // moments ago. (Remembering every input served from the cache churned
        // the memo under 100 000 keys: +8 MiB peak RSS.)
        let (key, mut canonical, hot) = match self.keys.get(model, &input) {
            Some(key) => (key, None, false),
            None => {
                let canonical = input.canonical()?;
                let key = self.cache.keys().key(model, &canonical);
                let hot = self.cache.holds_locally(&key);
                (key, Some(canonical), hot)
            }
        };
        // Parsed at most once: here, or below when the model is to be asked.
        let canonical_input = |canonical: Option<_>| match canonical {
            Some(canonical) => Ok(canonical),
            None => input.canonical(),
        };
        let mut wants_new = directives.skips_lookup();
        // A miss takes the key's lease (its compute lock while it has no entry)
        // in the lookup's command, unless the client forbids computing. Where an
        // entry exists, the lock is taken beside it when computing.
        let mut site = LockSite::Beside;
        let mut first_claim = None;
        if !directives.skips_lookup() {
            let on_miss = if directives.only_if_cached {
                OnMiss::JustLook
            } else {
                OnMiss::TakeLease
            };
            let leased = |lock| Claim { lock, entry: None };
            let lookup_span = if traces::sampled_here() {
                tracing::info_span!("cache.lookup", model = model.as_str())
            } else {
                tracing::Span::none()
            };
            match self
                .cache
                .lookup(&key, on_miss)
                .instrument(lookup_span)
                .await
            {
                Lookup::Found(entry) if self.is_current(model, &entry) => {
                    let now = unix_now_ms();
                    let age_accepted = directives.accepts_age(entry.age(now));
                    if entry.is_fresh(now) {
                        if age_accepted {
                            if hot {
                                self.keys.remember(model, &input, &key);
                            }
                            return Ok(Answer {
                                entry,
                                outcome: CacheOutcome::Hit,
                            });
                        }
                        wants_new = true;
                    } else if age_accepted
                        && !directives.only_if_cached
                        && entry.is_within_stale_period(now, self.cache.stale_ttl())
                    {
                        let canonical = canonical_input(canonical.take())?;
                        self.refresh_in_background(key, model.clone(), canonical, request_id);
                        return Ok(Answer {
                            entry,
                            outcome: CacheOutcome::Stale,
                        });
                    }
                }
                Lookup::Found(_) | Lookup::Unavailable => {}
                Lookup::Missing => site = LockSite::Lease,
                Lookup::Leased(lease) => {
                    site = LockSite::Lease;
                    first_claim = Some(leased(LockClaim::Taken(lease)));
                }
                Lookup::LeasedElsewhere => {
                    site = LockSite::Lease;
                    first_claim = Some(leased(LockClaim::HeldElsewhere));
                }
            }
        }
        if directives.only_if_cached {
            return Err(ApiError::NotCached);
        }

        let not_before = wants_new.then_some(arrived);
        let store = !directives.no_store;
        let input = canonical_input(canonical)?;
        let name: Arc<str> = key.as_str().into();
        let (outcome, role) = self
            .in_flight
            .compute_or_join(name, not_before, {
                let computations = Arc::clone(&self.computations);
                let model = model.clone();
                let request_id = request_id.to_owned();
                let request_timeout = self.request_timeout;
                // A request that joins a computation already running here drops
                // its lease unused: that computation adopts it (same gateway token).
                move || {
                    computations.run(Job {
                        key,
                        call: ModelCall::new(model, input, request_id, request_timeout),
                        store,
                        recheck: !wants_new,
                        site,
                        first_claim,
                    })
                }
            })
            .await;
        let resolved = outcome.map_err(ApiError::Upstream)?;
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
                        forced: wants_new,
                    }
                }
            }
        };
        Ok(Answer {
            entry: resolved.entry,
            outcome,
        })
    }

    /// Whether `entry` was computed by the version of `model` the workers serve
    /// now (the highest one, during a rollout). An entry of another version is
    /// never served, fresh or stale: the next request computes it anew. While
    /// no worker is known every entry is served, as in an outage.
    fn is_current(&self, model: &ModelName, entry: &CachedPrediction) -> bool {
        self.directory
            .is_current_version(model, &entry.model_version)
    }

    /// Starts one refresh of a stale entry, unless one is already running.
    fn refresh_in_background(
        self: &Arc<Self>,
        key: CacheKey,
        model: ModelName,
        input: prediction_contract::CanonicalInput,
        request_id: &str,
    ) {
        if self.in_flight.is_in_flight(key.as_str()) {
            return;
        }
        let this = Arc::clone(self);
        let request_id = request_id.to_owned();
        tokio::spawn(async move {
            let computations = Arc::clone(&this.computations);
            let name: Arc<str> = key.as_str().into();
            let request_timeout = this.request_timeout;
            let (outcome, _) = this
                .in_flight
                .compute_or_join(name, None, move || {
                    let call = ModelCall::new(model, input, request_id, request_timeout);
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
