//! The computation of a missed key, shared by every gateway: one gateway takes
//! the key's compute lock (a lease where there is no entry, a lock beside the
//! entry otherwise; see [`crate::cache::LockSite`]), calls the model, stores the
//! entry and announces the outcome to the gateways that wait for it; the others
//! wait for that announcement, or take over when the lock expires without one.
//!
//! Every try for the lock reads the entry in the same round trip: that read is
//! the one re-check for an entry someone stored since the request looked.

use prediction_runtime::traces;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use futures::StreamExt;

use super::announcement;
use crate::cache::{
    CacheKey, CachedPrediction, Claim, LockClaim, LockGuard, LockSite, Lookup, PredictionCache,
};
use crate::freshness::RequestDirectives;
use crate::model_call::{ModelCall, ModelCallError, ModelCaller, PublicFailure};
use crate::nats::Nats;

/// How much longer than a lock's remaining time a waiter waits for the holder's
/// announcement before trying to take over the lock.
const LOCK_EXPIRY_GRACE: Duration = Duration::from_millis(50);

/// The result of one computation, shared by everyone who waited for it.
pub type CallOutcome = Result<Resolved, Arc<PublicFailure>>;

/// A computation's entry and where it came from.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub entry: Arc<CachedPrediction>,
    pub source: Source,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// This gateway asked the model.
    Model { stored: bool, store_wanted: bool },
    /// Another gateway asked the model and announced the result.
    OtherGateway,
    /// The entry was stored by someone else by the time this computation started.
    Cache,
}

/// One computation to run.
#[derive(Debug)]
pub struct Job {
    pub key: CacheKey,
    pub call: ModelCall,
    /// Store the result (the client did not say `no-store`).
    pub store: bool,
    /// Return an entry that became fresh in the meantime rather than compute.
    pub recheck: bool,
    /// Where the key's lock lives: a lease when the lookup found no entry.
    pub site: LockSite,
    /// The lookup's try for the lease (taken, or held elsewhere), if it tried:
    /// the computation's first claim.
    pub first_claim: Option<Claim>,
}

impl Job {
    /// The computation a request's lookup led to: its lock is a lease where the
    /// lookup found no entry (and the lookup's try for it is the first claim),
    /// else beside the entry; stored unless the client said `no-store`; and
    /// answered by an entry stored meanwhile unless the client wants a fresher
    /// one (`fresh_only`).
    pub fn for_request(
        key: CacheKey,
        call: ModelCall,
        directives: &RequestDirectives,
        fresh_only: bool,
        lookup: Option<Lookup>,
    ) -> Self {
        let leased = |lock| Claim { lock, entry: None };
        let (site, first_claim) = match lookup {
            Some(Lookup::Missing) => (LockSite::Lease, None),
            Some(Lookup::Leased(lease)) => (LockSite::Lease, Some(leased(LockClaim::Taken(lease)))),
            // This gateway's lease, and no computation of the key running here
            // (or the request would have joined it): the one that held it may
            // have stored its entry between the lookup and now. The first claim
            // reads the key again rather than compute it a second time.
            Some(Lookup::LeasedHere) => (LockSite::Lease, None),
            Some(Lookup::LeasedElsewhere) => {
                (LockSite::Lease, Some(leased(LockClaim::HeldElsewhere)))
            }
            Some(Lookup::Found(_) | Lookup::Unavailable) | None => (LockSite::Beside, None),
        };
        Self {
            key,
            call,
            store: !directives.no_store,
            recheck: !fresh_only,
            site,
            first_claim,
        }
    }

    /// The refresh of an entry in its stale period: stored, and answered by a
    /// fresh entry if someone stored one meanwhile; its lock goes beside it.
    pub fn refresh(key: CacheKey, call: ModelCall) -> Self {
        Self {
            key,
            call,
            store: true,
            recheck: true,
            site: LockSite::Beside,
            first_claim: None,
        }
    }
}

/// How waiting for another gateway's computation ended.
enum Waited {
    Done(CallOutcome),
    /// The holder's lock expired without an announcement: it died, or the
    /// announcement was lost. Try to take over.
    LockExpired,
    /// Waiting is impossible (NATS or Redis is down): compute without the lock.
    CannotWait,
}

/// Runs computations. Shared by every request.
#[derive(Debug)]
pub struct Computations {
    cache: PredictionCache,
    models: ModelCaller,
    /// Where announcements are published and awaited.
    nats: Nats,
}

impl Computations {
    pub fn new(cache: PredictionCache, models: ModelCaller, nats: Nats) -> Self {
        Self {
            cache,
            models,
            nats,
        }
    }

    /// Whether `entry` can answer the job's request now: fresh, and computed
    /// by the version the workers served when the request arrived.
    fn is_usable(job: &Job, entry: &CachedPrediction) -> bool {
        entry.is_fresh(prediction_contract::time::unix_now_ms())
            && job.call.view.accepts_version(&entry.model_version)
    }

    /// One computation of a key: takes the cross-gateway lock (or waits for the
    /// gateway holding it), asks the model (keeping the lock extended
    /// meanwhile), stores the entry (which releases the lock) and announces the
    /// outcome if anyone waits. One function, not two: the model call's future
    /// is large, and moving it from one future's state into another's costed a
    /// miss ~900 instructions of copying (callgrind).
    pub async fn run(self: Arc<Self>, mut job: Job) -> CallOutcome {
        let mut lock = match self.lock_or_outcome(&mut job).await {
            Ok(lock) => lock,
            Err(outcome) => return outcome,
        };
        // Whether a gateway may be waiting for this outcome: with the lock held,
        // yes unless the store says nobody marked that it waits.
        let mut announce = lock.is_some();
        let call = self.models.call(&job.call);
        let called = match &lock {
            Some(lock) => self.cache.extend_while(lock, call).await,
            None => call.await,
        };
        let outcome = match called {
            Ok(entry) => {
                let mut stored = false;
                if job.store && !entry.fresh_for.is_zero() {
                    // The store releases the lock in the same Redis round trip.
                    let outcome = self.cache.store(&job.key, &entry, lock.take()).await;
                    stored = outcome.stored;
                    announce &= outcome.someone_waits;
                }
                Ok(Resolved {
                    entry,
                    source: Source::Model {
                        stored,
                        store_wanted: job.store,
                    },
                })
            }
            Err(failure) => Err(failure),
        };
        if announce || lock.is_some() {
            // Off the response path: the entry is stored, so a request from now
            // on finds it; the announcement is for gateways already waiting.
            let this = Arc::clone(&self);
            let announced = outcome.clone().map(|resolved| resolved.entry);
            tokio::spawn(async move {
                if announce {
                    announcement::announce(&this.nats, &job.key, &announced).await;
                }
                if let Some(lock) = lock {
                    this.cache.release(lock).await;
                }
            });
        }
        outcome
    }

    /// Takes the job's lock (`Some`), or finds it cannot (`None`: compute without
    /// it), or gets the outcome without computing: an entry stored meanwhile, or
    /// another gateway's announcement (`Err`).
    async fn lock_or_outcome(&self, job: &mut Job) -> Result<Option<LockGuard>, CallOutcome> {
        let mut announcements = None;
        loop {
            let claim = match job.first_claim.take() {
                Some(claim) => claim,
                None => self.cache.claim(&job.key, job.site).await,
            };
            if job.recheck
                && let Some(entry) = claim.entry
                && Self::is_usable(job, &entry)
            {
                if let LockClaim::Taken(lock) = claim.lock {
                    tokio::spawn(self.cache.release(lock));
                }
                return Err(Ok(Resolved {
                    entry,
                    source: Source::Cache,
                }));
            }
            return match claim.lock {
                LockClaim::Taken(lock) => Ok(Some(lock)),
                LockClaim::HeldElsewhere => {
                    let wait_span = if traces::sampled_here() {
                        tracing::info_span!("wait_for_other_gateway")
                    } else {
                        tracing::Span::none()
                    };
                    match self
                        .wait_for_other_gateway(job, &mut announcements)
                        .instrument(wait_span)
                        .await
                    {
                        Waited::Done(outcome) => Err(outcome),
                        Waited::LockExpired => continue,
                        Waited::CannotWait => Ok(None),
                    }
                }
                // An entry this request cannot use (stale, of another model
                // version, unreadable) took the lease's place: the lock goes
                // beside it.
                LockClaim::EntryInTheWay => {
                    job.site = LockSite::Beside;
                    continue;
                }
                LockClaim::Unavailable => Ok(None),
            };
        }
    }

    /// Waits for the gateway holding the job's lock to announce its outcome.
    async fn wait_for_other_gateway(
        &self,
        job: &Job,
        announcements: &mut Option<async_nats::Subscriber>,
    ) -> Waited {
        if announcements.is_none() {
            // The subscription must be in place before the holder can see that
            // we wait (and announce), or an announcement made in between would
            // be missed: `listen` returns once the server has it.
            match announcement::listen(&self.nats, &job.key).await {
                Some(subscriber) => *announcements = Some(subscriber),
                None => return Waited::CannotWait,
            }
        }
        // The holder announces only to gateways that marked they wait; one that
        // finished before the mark had stored the entry already (read with the
        // mark) or left no lock (try again).
        let Ok(state) = self.cache.mark_waiting(&job.key, job.site).await else {
            return Waited::CannotWait;
        };
        // At the lease site an entry is the holder's; beside one, it may be the
        // entry being refreshed, and serves only a request that accepts a cached
        // answer.
        if let Some(entry) = state.entry
            && (job.site == LockSite::Lease || job.recheck)
            && Self::is_usable(job, &entry)
        {
            return Waited::Done(Ok(Resolved {
                entry,
                source: Source::OtherGateway,
            }));
        }
        let Some(expires_in) = state.held_for else {
            return Waited::LockExpired;
        };
        let Some(subscriber) = announcements.as_mut() else {
            return Waited::CannotWait;
        };
        let wait = (expires_in + LOCK_EXPIRY_GRACE).min(job.call.time_left());
        match tokio::time::timeout(wait, subscriber.next()).await {
            Ok(Some(message)) => match announcement::decode(&message) {
                Some(outcome) => Waited::Done(outcome.map(|entry| Resolved {
                    entry,
                    source: Source::OtherGateway,
                })),
                None => Waited::LockExpired,
            },
            Ok(None) => Waited::CannotWait,
            Err(_) if job.call.time_left().is_zero() => Waited::Done(Err(Arc::new(
                PublicFailure::from(&ModelCallError::TimedOut(job.call.waited())),
            ))),
            Err(_) => Waited::LockExpired,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prediction_contract::{CanonicalInput, KeySpace, ModelName};

    use super::*;
    use crate::discovery::ModelView;

    fn job(directives: &RequestDirectives, fresh_only: bool, lookup: Option<Lookup>) -> Job {
        let model = ModelName::parse("m").unwrap();
        let input = CanonicalInput::from_json_slice(b"{}").unwrap();
        let key = KeySpace::new("unit:").key(&model, &input);
        let call = ModelCall::new(
            model,
            crate::input::ModelInput::Json(input),
            ModelView::unknown(),
            "r".into(),
            Duration::from_secs(1),
        );
        Job::for_request(key, call, directives, fresh_only, lookup)
    }

    #[test]
    fn the_lock_is_a_lease_where_the_lookup_found_no_entry() {
        let plain = RequestDirectives::default();
        let missing = job(&plain, false, Some(Lookup::Missing));
        assert_eq!(missing.site, LockSite::Lease);
        assert!(missing.first_claim.is_none());
        let here = job(&plain, false, Some(Lookup::LeasedHere));
        assert_eq!(here.site, LockSite::Lease);
        assert!(
            here.first_claim.is_none(),
            "this gateway's lease may be a finished computation's: claimed again, the key read again"
        );
        let elsewhere = job(&plain, false, Some(Lookup::LeasedElsewhere));
        assert_eq!(elsewhere.site, LockSite::Lease);
        assert!(matches!(
            elsewhere.first_claim,
            Some(Claim {
                lock: LockClaim::HeldElsewhere,
                entry: None
            })
        ));
    }

    #[test]
    fn beside_an_entry_without_redis_or_without_a_lookup_the_lock_goes_beside() {
        let plain = RequestDirectives::default();
        for lookup in [Some(Lookup::Unavailable), None] {
            let beside = job(&plain, false, lookup);
            assert_eq!(beside.site, LockSite::Beside);
            assert!(beside.first_claim.is_none());
        }
    }

    #[test]
    fn no_store_is_not_stored_and_a_fresher_answer_is_never_an_entry_stored_meanwhile() {
        let no_store = RequestDirectives {
            no_store: true,
            ..RequestDirectives::default()
        };
        let fresher_unstored = job(&no_store, true, None);
        assert!(!fresher_unstored.store);
        assert!(!fresher_unstored.recheck);
        let plain = job(&RequestDirectives::default(), false, None);
        assert!(plain.store && plain.recheck);
    }
}
