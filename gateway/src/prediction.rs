//! The read-through cache in front of the model workers, with every protection a
//! good HTTP cache has: coalescing within and across gateways, stale-while-
//! revalidate, stale-if-error, and the client's own freshness directives.
//!
//! A request goes: cache lookup → (fresh: HIT) → (stale period: STALE now and one
//! background refresh) → join the computation in flight for the same key in this
//! gateway, or start one; a computation takes the key's Redis lock, or waits for
//! the gateway that holds it to announce its outcome over NATS.
//!
//! Stale-if-error follows from the same path: while an entry is in its stale
//! period every request gets it at once, so a refresh that fails (the model
//! errs, no worker answers) never reaches a client; the next request in the stale
//! period simply tries another refresh.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use axum::http::StatusCode;
use futures::StreamExt;
use futures::future::{self, Either};
use prediction_contract::subjects::cache_ready_subject;
use prediction_contract::{CacheKey, CanonicalInput, ModelName};
use tokio::sync::Semaphore;
use tracing::{debug, error, info, warn};

use crate::cache::{
    CachedPrediction, ComputeLock, LockAttempt, LockSite, LockState, Lookup, PredictionCache,
    unix_now_ms,
};
use crate::coalesce::{InFlight, Role};
use crate::discovery::ModelDirectory;
use crate::error::{ApiError, PublicFailure};
use crate::freshness::RequestDirectives;
use crate::input::{KeyMemo, RawInput};
use crate::metrics::Metrics;
use crate::model_client::{ModelCallError, ModelClient, ModelReply};

/// How much longer than a lock's remaining time a waiter waits for the holder's
/// announcement before trying to take over the lock.
const LOCK_EXPIRY_GRACE: Duration = Duration::from_millis(50);
/// Header of a ready announcement: `ok` (payload: the cache entry) or `error`
/// (payload: the [`PublicFailure`] as JSON).
const OUTCOME_HEADER: &str = "Outcome";

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

/// The result of one computation, shared by everyone who waited for it.
type CallOutcome = Result<Resolved, Arc<PublicFailure>>;

#[derive(Debug, Clone)]
struct Resolved {
    entry: Arc<CachedPrediction>,
    source: Source,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// This gateway asked the model.
    Model { stored: bool, store_wanted: bool },
    /// Another gateway asked the model and announced the result.
    OtherGateway,
    /// The entry was stored by someone else by the time this computation started.
    Cache,
}

/// One computation to run, and how it starts on the cross-gateway lock.
struct Job {
    key: CacheKey,
    model: ModelName,
    input: CanonicalInput,
    request_id: String,
    /// Store the result (the client did not say `no-store`).
    store: bool,
    /// Return an entry that became fresh in the meantime rather than compute.
    recheck: bool,
    /// Where the key's lock lives: a lease when the lookup found no entry.
    site: LockSite,
    /// What the lookup's try for the lease found (taken, or held elsewhere), if
    /// it tried.
    lookup_attempt: Option<LockAttempt>,
}

/// Settings the predictor needs.
#[derive(Debug, Clone)]
pub struct PredictorSettings {
    pub key_prefix: String,
    /// Freshness of a prediction whose model sets none.
    pub cache_ttl: Duration,
    /// The longest freshness a model may set.
    pub max_ttl: Duration,
    pub request_timeout: Duration,
    /// After this long without an answer a second request is sent (a worker may
    /// have died holding the first); both may answer, the first answer wins.
    pub attempt_timeout: Duration,
    /// Model calls this gateway makes at once; past it requests get 503.
    pub max_inflight: usize,
}

/// How many times a model call is handed on at once to another (random) worker
/// because the one NATS picked had requests waiting; the next attempt waits in
/// line wherever it lands. Three tries find a worker without a backlog nearly
/// always when there is one, and bound the extra round trips when there is none.
/// Fewer when fewer other workers serve the model (none with a single worker).
const BACKLOG_REDIRECTS: usize = 2;
/// Backoff between retries of a request a worker refused as busy.
const BUSY_BACKOFF_FIRST: Duration = Duration::from_millis(10);
const BUSY_BACKOFF_MAX: Duration = Duration::from_millis(200);
/// Memory for the cache keys of inputs served from the cache (see [`KeyMemo`]):
/// some 7 000 short inputs, the hot ones.
const KEY_MEMO_BYTES: u64 = 2 * 1024 * 1024;

/// Answers predictions through the cache. Shared by every request.
#[derive(Debug)]
pub struct Predictor {
    cache: PredictionCache,
    lock: ComputeLock,
    models: ModelClient,
    directory: Arc<ModelDirectory>,
    keys: KeyMemo,
    in_flight: Arc<InFlight<CallOutcome>>,
    /// Permits for model calls; see [`PredictorSettings::max_inflight`].
    model_calls: Arc<Semaphore>,
    metrics: Metrics,
    settings: PredictorSettings,
}

/// How waiting for another gateway's computation ended.
enum Waited {
    Done(CallOutcome),
    /// The holder's lock expired without an announcement: it died, or the
    /// announcement was lost. Try to take over.
    LockExpired,
    /// Waiting is impossible (NATS is down): compute without the lock.
    CannotWait,
}

impl Predictor {
    pub fn new(
        cache: PredictionCache,
        lock: ComputeLock,
        models: ModelClient,
        directory: Arc<ModelDirectory>,
        metrics: Metrics,
        settings: PredictorSettings,
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
        Arc::new(Self {
            cache,
            lock,
            models,
            directory,
            keys: KeyMemo::new(KEY_MEMO_BYTES),
            in_flight,
            model_calls: Arc::new(Semaphore::new(settings.max_inflight)),
            metrics,
            settings,
        })
    }

    pub fn key_prefix(&self) -> &str {
        &self.settings.key_prefix
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
                let key = CacheKey::new(&self.settings.key_prefix, model, &canonical);
                let hot = self.cache.holds_locally(&key);
                (key, Some(canonical), hot)
            }
        };
        // Parsed at most once: here, or below when the model is to be asked.
        let canonical_input = |canonical: Option<CanonicalInput>| match canonical {
            Some(canonical) => Ok(canonical),
            None => input.canonical(),
        };
        let mut wants_new = directives.skips_lookup();
        // A miss takes the key's lease (its compute lock while it has no entry)
        // in the lookup's command, unless the client forbids computing. Where an
        // entry exists, the lock is taken beside it when computing.
        let mut site = LockSite::Beside;
        let mut lookup_attempt = None;
        if !directives.skips_lookup() {
            let (found, attempt) = if directives.only_if_cached {
                (self.cache.lookup(&key).await, None)
            } else {
                self.cache.lookup_or_lease(&key, &self.lock).await
            };
            lookup_attempt = attempt;
            match found {
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
                Lookup::Missing => site = LockSite::Lease,
                Lookup::Found(_) | Lookup::Unavailable => {}
            }
        }
        if directives.only_if_cached {
            return Err(ApiError::NotCached);
        }

        let not_before = wants_new.then_some(arrived);
        let store = !directives.no_store;
        let input = canonical_input(canonical)?;
        let key_name = key.as_str().to_owned();
        let (outcome, role) = self
            .in_flight
            .compute_or_join(&key_name, not_before, {
                let this = Arc::clone(self);
                let model = model.clone();
                let request_id = request_id.to_owned();
                // A request that joins a computation already running here drops
                // its lease unused: that computation adopts it (same gateway token).
                move || {
                    this.compute(Job {
                        key,
                        model,
                        input,
                        request_id,
                        store,
                        recheck: !wants_new,
                        site,
                        lookup_attempt,
                    })
                }
            })
            .await;
        match outcome {
            Ok(resolved) => Ok(Answer {
                outcome: match (role, resolved.source) {
                    (Role::Follower, _) | (Role::Leader, Source::OtherGateway) => {
                        CacheOutcome::Coalesced
                    }
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
                },
                entry: resolved.entry,
            }),
            Err(failure) => Err(ApiError::Upstream(failure)),
        }
    }

    /// Whether `entry` was computed by the version of `model` the workers serve
    /// now (the highest one, during a rollout). An entry of another version is
    /// never served, fresh or stale: the next request computes it anew. While
    /// no worker is known every entry is served, as in an outage.
    fn is_current(&self, model: &ModelName, entry: &CachedPrediction) -> bool {
        self.directory
            .is_current_version(model, &entry.model_version)
    }

    /// Whether `entry` can answer a request for `model` now.
    fn is_fresh_and_current(&self, model: &ModelName, entry: &CachedPrediction) -> bool {
        entry.is_fresh(unix_now_ms()) && self.is_current(model, entry)
    }

    /// Starts one refresh of a stale entry, unless one is already running.
    fn refresh_in_background(
        self: &Arc<Self>,
        key: CacheKey,
        model: ModelName,
        input: CanonicalInput,
        request_id: &str,
    ) {
        if self.in_flight.is_in_flight(key.as_str()) {
            return;
        }
        let this = Arc::clone(self);
        let request_id = request_id.to_owned();
        tokio::spawn(async move {
            let inner = Arc::clone(&this);
            let name = key.as_str().to_owned();
            let (outcome, _) = this
                .in_flight
                .compute_or_join(&name, None, move || {
                    inner.compute(Job {
                        key,
                        model,
                        input,
                        request_id,
                        store: true,
                        recheck: true,
                        site: LockSite::Beside,
                        lookup_attempt: None,
                    })
                })
                .await;
            if let Err(failure) = outcome {
                this.metrics.stale_refresh_failures.inc();
                warn!(error = %failure, "refresh of a stale prediction failed; it is served until its stale period ends");
            }
        });
    }

    /// One computation of a key: takes the cross-gateway lock (or waits for the
    /// gateway holding it), asks the model, stores and announces the result.
    async fn compute(self: Arc<Self>, job: Job) -> CallOutcome {
        let Job {
            key,
            model,
            input,
            request_id,
            store,
            recheck,
            mut site,
            mut lookup_attempt,
        } = job;
        let deadline = Instant::now() + self.settings.request_timeout;
        let mut announcements = None;
        loop {
            let mut guard = None;
            let mut rechecked = false;
            // The lookup that found no entry already tried the lease, in the same
            // command: its outcome is the first attempt.
            let attempt = if let Some(attempt) = lookup_attempt.take() {
                Some(Ok((Some(attempt), None)))
            } else if self.cache.redis_skipped() {
                None
            } else {
                Some(match site {
                    LockSite::Lease => {
                        self.lock
                            .lookup_or_lease(&key)
                            .await
                            .map(|attempt| match attempt {
                                LockAttempt::Entry(bytes) => (None, Some(bytes)),
                                attempt => (Some(attempt), None),
                            })
                    }
                    LockSite::Beside => self
                        .lock
                        .try_acquire_beside(&key)
                        .await
                        .map(|(attempt, peeked)| (Some(attempt), peeked)),
                })
            };
            match attempt {
                Some(Ok((attempt, peeked))) => {
                    // Someone may have stored it since this request looked.
                    if recheck
                        && let Some(bytes) = peeked
                        && let Some(entry) = self.cache.accept_peeked(&key, &bytes)
                        && self.is_fresh_and_current(&model, &entry)
                    {
                        if let Some(LockAttempt::Acquired(guard)) = attempt {
                            tokio::spawn(guard.release());
                        }
                        return Ok(Resolved {
                            entry,
                            source: Source::Cache,
                        });
                    }
                    rechecked = true;
                    match attempt {
                        Some(LockAttempt::Acquired(acquired)) => guard = Some(acquired),
                        Some(LockAttempt::HeldElsewhere) => {
                            match self
                                .wait_for_other_gateway(
                                    &key,
                                    &model,
                                    site,
                                    &mut announcements,
                                    deadline,
                                    recheck,
                                )
                                .await
                            {
                                Waited::Done(outcome) => return outcome,
                                Waited::LockExpired => continue,
                                Waited::CannotWait => {}
                            }
                        }
                        // An entry this request cannot use (stale, of another
                        // model version, unreadable) took the lease's place:
                        // the lock goes beside it.
                        Some(LockAttempt::Entry(_)) | None => {
                            site = LockSite::Beside;
                            continue;
                        }
                    }
                }
                Some(Err(err)) => self.cache.note_redis_failure(&err),
                None => {}
            }
            if recheck
                && !rechecked
                && let Lookup::Found(entry) = self.cache.lookup(&key).await
                && self.is_fresh_and_current(&model, &entry)
            {
                return Ok(Resolved {
                    entry,
                    source: Source::Cache,
                });
            }

            // Whether a gateway may be waiting for this outcome: with the lock
            // held, yes unless the store says nobody marked that it waits.
            let mut announce = guard.is_some();
            let call = self.call_model(&model, &input, &request_id, deadline);
            let called = match &guard {
                Some(guard) => guard.extend_while(call).await,
                None => call.await,
            };
            let outcome = match called {
                Ok(entry) => {
                    let mut stored = false;
                    if store && !entry.fresh_for.is_zero() {
                        // The store releases the lock in the same Redis round trip.
                        let outcome = self.cache.store(&key, &entry, guard.take()).await;
                        stored = outcome.stored;
                        announce &= outcome.someone_waits;
                    }
                    Ok(Resolved {
                        entry,
                        source: Source::Model {
                            stored,
                            store_wanted: store,
                        },
                    })
                }
                Err(failure) => Err(failure),
            };
            if announce || guard.is_some() {
                // Off the response path: the entry is stored, so a request from
                // now on finds it; the announcement is for gateways already waiting.
                let this = Arc::clone(&self);
                let announced = outcome.clone();
                tokio::spawn(async move {
                    if announce {
                        this.announce(&key, &announced).await;
                    }
                    if let Some(guard) = guard {
                        guard.release().await;
                    }
                });
            }
            return outcome;
        }
    }

    async fn call_model(
        &self,
        model: &ModelName,
        input: &CanonicalInput,
        request_id: &str,
        deadline: Instant,
    ) -> Result<Arc<CachedPrediction>, Arc<PublicFailure>> {
        let started = Instant::now();
        let result = self.ask_workers(model, input, request_id, deadline).await;
        self.metrics
            .model_call_duration
            .with_label_values(&[model.as_str()])
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(reply) => {
                self.metrics
                    .model_calls
                    .with_label_values(&[model.as_str(), "ok"])
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
            Err(failure) => {
                self.metrics
                    .model_calls
                    .with_label_values(&[model.as_str(), failure.code.as_str()])
                    .inc();
                Err(Arc::new(failure))
            }
        }
    }

    /// The model call proper: checks that a worker serves the model and that this
    /// gateway has room for one more call, then asks, sending the request once more
    /// if the first attempt meets only silence.
    async fn ask_workers(
        &self,
        model: &ModelName,
        input: &CanonicalInput,
        request_id: &str,
        deadline: Instant,
    ) -> Result<ModelReply, PublicFailure> {
        let fail = |err: ModelCallError| {
            let failure = PublicFailure::from(&err);
            if failure.is_server_side() {
                error!(%model, request_id, error = %err, cause = ?std::error::Error::source(&err), "model call failed");
            } else {
                info!(%model, request_id, error = %err, "model rejected the input");
            }
            failure
        };
        if !self.models.is_connected() {
            return Err(fail(ModelCallError::NotConnected));
        }
        // A subscriber that is not a worker (a `nats sub` left running) would
        // swallow requests until the timeout; only registered workers count.
        if !self.directory.is_served(model).await {
            return Err(fail(ModelCallError::NoWorker(model.clone())));
        }
        let Ok(_permit) = self.model_calls.try_acquire() else {
            return Err(PublicFailure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                format!(
                    "the gateway already has {} model calls in flight; try again shortly",
                    self.settings.max_inflight
                ),
            ));
        };

        let first = Box::pin(self.attempt(model, input, request_id, deadline));
        let hedge_after = tokio::time::sleep(
            self.settings
                .attempt_timeout
                .min(deadline.saturating_duration_since(Instant::now())),
        );
        let first = match future::select(first, Box::pin(hedge_after)).await {
            Either::Left((result, _)) => return result.map_err(fail),
            Either::Right(((), first)) => first,
        };
        if Instant::now() >= deadline {
            return first.await.map_err(fail);
        }
        warn!(%model, request_id, attempt_timeout = ?self.settings.attempt_timeout, "no answer yet; sending the request again");
        self.metrics
            .model_call_retries
            .with_label_values(&[model.as_str(), "silence"])
            .inc();
        let second = Box::pin(self.attempt(model, input, request_id, deadline));
        // The first answer wins; a failure waits for the other attempt.
        match future::select(first, second).await {
            Either::Left((Ok(reply), _)) | Either::Right((Ok(reply), _)) => Ok(reply),
            Either::Left((Err(_), other)) | Either::Right((Err(_), other)) => {
                other.await.map_err(fail)
            }
        }
    }

    /// One request to the model's queue group: handed on to another worker at
    /// once while the first ones have a backlog (up to [`BACKLOG_REDIRECTS`]
    /// times, if other workers serve the model), then repeated after a short
    /// backoff while workers answer busy and the deadline allows.
    async fn attempt(
        &self,
        model: &ModelName,
        input: &CanonicalInput,
        request_id: &str,
        deadline: Instant,
    ) -> Result<ModelReply, ModelCallError> {
        let mut backoff = BUSY_BACKOFF_FIRST;
        let other_workers = self.directory.workers_serving(model).saturating_sub(1);
        let mut redirects_left = BACKLOG_REDIRECTS.min(other_workers);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let avoid_backlog = redirects_left > 0;
            let result = self
                .models
                .predict(model, input, request_id, left, avoid_backlog)
                .await;
            match result {
                Err(ModelCallError::Busy(message)) if avoid_backlog => {
                    debug!(%model, request_id, message, "worker has a backlog or is full; trying another");
                    self.metrics
                        .model_call_retries
                        .with_label_values(&[model.as_str(), "redirected"])
                        .inc();
                    redirects_left -= 1;
                }
                Err(ModelCallError::Busy(message))
                    if deadline.saturating_duration_since(Instant::now()) > backoff =>
                {
                    debug!(%model, request_id, message, ?backoff, "worker busy; trying again");
                    self.metrics
                        .model_call_retries
                        .with_label_values(&[model.as_str(), "busy"])
                        .inc();
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BUSY_BACKOFF_MAX);
                }
                result => return result,
            }
        }
    }

    /// Waits for the gateway holding `key`'s lock to announce its outcome.
    async fn wait_for_other_gateway(
        &self,
        key: &CacheKey,
        model: &ModelName,
        site: LockSite,
        announcements: &mut Option<async_nats::Subscriber>,
        deadline: Instant,
        recheck: bool,
    ) -> Waited {
        let subscribed_now = announcements.is_none();
        if subscribed_now {
            if !self.models.is_connected() {
                return Waited::CannotWait;
            }
            let nats = self.models.nats();
            match nats.subscribe(cache_ready_subject(key)).await {
                Ok(subscriber) => *announcements = Some(subscriber),
                Err(err) => {
                    warn!(error = %err, "cannot wait for another gateway's model call");
                    return Waited::CannotWait;
                }
            }
            // The subscription must be in place before the holder can see that
            // we wait (and announce), and before the re-check, or an
            // announcement made in between would be missed.
            let _ = nats.flush().await;
        }
        // The holder announces only to gateways that marked they wait; one that
        // finished before the mark had stored the entry already (read with the
        // mark at the lease site, re-checked below beside an entry) or left no
        // lock (try again).
        let expires_in = match self.lock.wait_on(key, site).await {
            Ok(LockState::Held(expires_in)) => expires_in,
            Ok(LockState::Gone) => return Waited::LockExpired,
            Ok(LockState::Stored(bytes)) => {
                return match self.cache.accept_peeked(key, &bytes) {
                    Some(entry) if self.is_fresh_and_current(model, &entry) => {
                        Waited::Done(Ok(Resolved {
                            entry,
                            source: Source::OtherGateway,
                        }))
                    }
                    // Not one to serve: the next attempt moves the lock beside it.
                    _ => Waited::LockExpired,
                };
            }
            Err(err) => {
                self.cache.note_redis_failure(&err);
                return Waited::CannotWait;
            }
        };
        if subscribed_now
            && recheck
            && site == LockSite::Beside
            && let Lookup::Found(entry) = self.cache.lookup(key).await
            && self.is_fresh_and_current(model, &entry)
        {
            return Waited::Done(Ok(Resolved {
                entry,
                source: Source::OtherGateway,
            }));
        }
        let Some(subscriber) = announcements.as_mut() else {
            return Waited::CannotWait;
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let wait = (expires_in + LOCK_EXPIRY_GRACE).min(left);
        match tokio::time::timeout(wait, subscriber.next()).await {
            Ok(Some(message)) => match decode_announcement(&message) {
                Some(outcome) => Waited::Done(outcome),
                None => Waited::LockExpired,
            },
            Ok(None) => Waited::CannotWait,
            Err(_) if Instant::now() >= deadline => {
                Waited::Done(Err(Arc::new(PublicFailure::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "timeout",
                    format!(
                        "no worker answered within {:?}",
                        self.settings.request_timeout
                    ),
                ))))
            }
            Err(_) => Waited::LockExpired,
        }
    }

    /// Tells gateways waiting on `key` how its computation ended.
    async fn announce(&self, key: &CacheKey, outcome: &CallOutcome) {
        let mut headers = HeaderMap::new();
        let payload = match outcome {
            Ok(resolved) => {
                headers.insert(OUTCOME_HEADER, "ok");
                resolved.entry.encode()
            }
            Err(failure) => {
                headers.insert(OUTCOME_HEADER, "error");
                serde_json::to_vec(failure.as_ref()).expect("a failure always serialises")
            }
        };
        if let Err(err) = self
            .models
            .nats()
            .publish_with_headers(cache_ready_subject(key), headers, payload.into())
            .await
        {
            // Waiters fall back to the lock's expiry.
            debug!(error = %err, "could not announce a finished model call");
        }
    }
}

fn decode_announcement(message: &async_nats::Message) -> Option<CallOutcome> {
    let outcome = message.headers.as_ref()?.get(OUTCOME_HEADER)?.as_str();
    match outcome {
        "ok" => CachedPrediction::decode(&message.payload)
            .ok()
            .map(|entry| {
                Ok(Resolved {
                    entry: Arc::new(entry),
                    source: Source::OtherGateway,
                })
            }),
        "error" => serde_json::from_slice::<PublicFailure>(&message.payload)
            .ok()
            .map(|failure| Err(Arc::new(failure))),
        _ => None,
    }
}
