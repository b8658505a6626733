//! The prediction cache: a small in-process tier in front of Redis.
//!
//! Redis is shared by every gateway and holds each entry for its freshness plus the
//! stale period; `store` is the one component that talks to it, with its keys
//! (`keys`) and its breaker. The in-process tier (`local`) keeps hot entries
//! for at most `--local-ttl`. This module puts the two together and turns what
//! Redis holds into entries: callers see [`Lookup`]s, [`Claim`]s and entries,
//! never a connection or a byte of Redis.
//!
//! Submodules, in the order a request uses them (the keys are the contract's,
//! `prediction_contract::cache_key`): `local`, `entry`,
//! `lock` (what a compute lock is), `store` (every Redis command).

mod entry;
mod local;
mod lock;
mod store;

use std::sync::Arc;
use std::time::Duration;

use prediction_contract::ModelName;
use prediction_contract::time::unix_now_ms;
use tracing::warn;

pub use entry::{CachedPrediction, CorruptEntry};
pub use lock::{Claim, LockClaim, LockGuard, LockSite, LockState};
pub use prediction_contract::cache_key::{CacheKey, KEY_FORMAT_VERSION, KeySpace, LEASE_PREFIX};
pub use store::{RedisMode, RedisSettings, Unavailable};

use local::LocalTier;
use store::{LeaseLookup, RedisStore};

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    /// An entry: fresh, stale or expired (the caller judges).
    Found(Arc<CachedPrediction>),
    /// No entry (or an unreadable one), and no lease tried.
    Missing,
    /// No entry, and its lease (the compute lock of a key without entry) is this
    /// gateway's now.
    Leased(LockGuard),
    /// No entry, and this gateway held its lease already: a computation of the
    /// key here holds it, or held it a moment ago and has since stored its entry
    /// over it (a computation here that has finished must not be trusted to be
    /// running, nor the entry to be missing).
    LeasedHere,
    /// No entry; another gateway holds its lease and computes it.
    LeasedElsewhere,
    /// Redis could not be asked; the caller should answer without the cache.
    Unavailable,
}

/// Whether a lookup that finds no entry tries for the key's lease in the same
/// command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnMiss {
    /// The request will compute on a miss: take the lease.
    TakeLease,
    /// The request will not compute (`only-if-cached`): only look.
    JustLook,
}

/// How [`PredictionCache::store`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// Redis took the entry.
    pub stored: bool,
    /// Another gateway marked that it waits for this outcome (or that cannot be
    /// known because the store failed): announce it.
    pub someone_waits: bool,
}

impl Stored {
    /// Nothing stored, and nobody known not to wait.
    const FAILED: Self = Self {
        stored: false,
        someone_waits: true,
    };
}

/// Settings of the in-process tier and of how long Redis keeps entries.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// How long entries are kept after their freshness, to be served stale.
    pub stale_ttl: Duration,
    /// Entries of the in-process tier; 0 turns it off.
    pub local_capacity: u64,
    pub local_ttl: Duration,
}

/// Predictions in Redis, fronted by an in-process tier. Cheap to clone.
#[derive(Clone)]
pub struct PredictionCache {
    redis: RedisStore,
    local: Option<Arc<LocalTier>>,
    stale_ttl: Duration,
}

impl std::fmt::Debug for PredictionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PredictionCache")
            .field("redis", &self.redis)
            .field("local_tier", &self.local.is_some())
            .field("stale_ttl", &self.stale_ttl)
            .finish()
    }
}

impl PredictionCache {
    /// Prepares the tiers and the Redis connection (opened lazily in standalone
    /// mode); `redis_errors` counts failed Redis commands on a request's path.
    pub async fn new(
        redis: &RedisSettings,
        settings: &CacheSettings,
        redis_errors: prometheus::IntCounter,
    ) -> anyhow::Result<Self> {
        let local = (settings.local_capacity > 0 && !settings.local_ttl.is_zero())
            .then(|| Arc::new(LocalTier::new(settings.local_capacity, settings.local_ttl)));
        Ok(Self {
            redis: RedisStore::new(redis, redis_errors).await?,
            local,
            stale_ttl: settings.stale_ttl,
        })
    }

    /// The keys of this deployment.
    pub fn keys(&self) -> &KeySpace {
        self.redis.keys()
    }

    pub fn stale_ttl(&self) -> Duration {
        self.stale_ttl
    }

    /// The entry under `key`: from the in-process tier while fresh there, else
    /// from Redis, which (with [`OnMiss::TakeLease`]) gives this gateway the key's
    /// lease in the same command when it holds no entry.
    pub async fn lookup(&self, key: &CacheKey, on_miss: OnMiss) -> Lookup {
        if let Some(entry) = self.local_entry(key) {
            return Lookup::Found(entry);
        }
        // Boxed: the Redis round trip's future is large, and without the box
        // every request's future (a hit's too) would be as large, and moved
        // and allocated whole.
        Box::pin(self.lookup_in_redis(key, on_miss)).await
    }

    async fn lookup_in_redis(&self, key: &CacheKey, on_miss: OnMiss) -> Lookup {
        let fetched = match on_miss {
            OnMiss::JustLook => self
                .redis
                .get(key)
                .await
                .map(|bytes| bytes.map(LeaseLookup::Entry)),
            OnMiss::TakeLease => self.redis.get_or_lease(key).await.map(Some),
        };
        match fetched {
            Ok(Some(LeaseLookup::Entry(bytes))) => match self.accept_fetched(key, &bytes) {
                Some(entry) => Lookup::Found(entry),
                None => Lookup::Missing,
            },
            Ok(Some(LeaseLookup::Taken(lease))) => Lookup::Leased(lease),
            Ok(Some(LeaseLookup::Adopted(_))) => Lookup::LeasedHere,
            Ok(Some(LeaseLookup::HeldElsewhere)) => Lookup::LeasedElsewhere,
            Ok(None) => Lookup::Missing,
            Err(_) => Lookup::Unavailable,
        }
    }

    /// Tries to take `key`'s compute lock at `site`, reading the entry in the same
    /// round trip.
    pub async fn claim(&self, key: &CacheKey, site: LockSite) -> Claim {
        let claimed = match site {
            LockSite::Lease => self.redis.get_or_lease(key).await.map(|found| match found {
                LeaseLookup::Entry(bytes) => (LockClaim::EntryInTheWay, Some(bytes)),
                LeaseLookup::Taken(lease) | LeaseLookup::Adopted(lease) => {
                    (LockClaim::Taken(lease), None)
                }
                LeaseLookup::HeldElsewhere => (LockClaim::HeldElsewhere, None),
            }),
            LockSite::Beside => self.redis.lock_beside(key).await.map(|(lock, bytes)| {
                let lock = lock.map_or(LockClaim::HeldElsewhere, LockClaim::Taken);
                (lock, bytes)
            }),
        };
        match claimed {
            Ok((lock, bytes)) => Claim {
                lock,
                entry: bytes.and_then(|bytes| self.accept_fetched(key, &bytes)),
            },
            // Without Redis this gateway's own copy is all there is to check.
            Err(_) => Claim {
                lock: LockClaim::Unavailable,
                entry: self.local_entry(key),
            },
        }
    }

    /// Marks that this gateway waits for the computation of `key` that another
    /// holds the lock of at `site`, and reads how it stands.
    pub async fn mark_waiting(
        &self,
        key: &CacheKey,
        site: LockSite,
    ) -> Result<LockState, Unavailable> {
        let state = self.redis.mark_waiting(key, site).await?;
        Ok(LockState {
            held_for: state.held_for,
            entry: state
                .entry
                .and_then(|bytes| self.accept_fetched(key, &bytes)),
        })
    }

    /// Runs `work` while keeping `lock` extended.
    pub async fn extend_while<F: Future>(&self, lock: &LockGuard, work: F) -> F::Output {
        self.redis.extend_while(lock, work).await
    }

    /// Releases `lock` without storing anything.
    pub fn release(&self, lock: LockGuard) -> impl Future<Output = ()> + Send + 'static {
        self.redis.clone().release(lock)
    }

    /// Whether the in-process tier has a copy of `key` (fresh or not).
    pub fn holds_locally(&self, key: &CacheKey) -> bool {
        self.local
            .as_ref()
            .is_some_and(|local| local.holds(key.as_str()))
    }

    /// The entry in the in-process tier, if it is there and fresh.
    fn local_entry(&self, key: &CacheKey) -> Option<Arc<CachedPrediction>> {
        self.local
            .as_ref()?
            .fresh_entry(key.as_str(), unix_now_ms())
    }

    /// Reads an entry fetched from Redis, keeping it in the in-process tier if it
    /// is fresh; `None` if it is a lease (someone computes it) or unreadable (the
    /// next store overwrites it).
    fn accept_fetched(&self, key: &CacheKey, bytes: &[u8]) -> Option<Arc<CachedPrediction>> {
        if RedisStore::is_lease(bytes) {
            return None;
        }
        let entry = match CachedPrediction::decode(bytes) {
            Ok(entry) => Arc::new(entry),
            Err(err) => {
                warn!(key = key.as_str(), error = %err, "unreadable cache entry; treating it as a miss");
                return None;
            }
        };
        if entry.is_fresh(unix_now_ms()) {
            self.keep_locally(key, &entry);
        }
        Some(entry)
    }

    /// Stores `entry` under `key` in Redis, which drops it at the end of its stale
    /// period, and replaces this gateway's in-process copy if it has one. With the
    /// compute `lock` of the key, releases it in the same round trip (see
    /// `RedisStore::set`).
    pub async fn store(
        &self,
        key: &CacheKey,
        entry: &Arc<CachedPrediction>,
        lock: Option<LockGuard>,
    ) -> Stored {
        // A copy in this gateway's memory is replaced, so the next request here
        // gets the new entry; an absent one is left to the first read to fill:
        // most computed keys are never asked for again within the in-process
        // tier's TTL, and inserting each would cost every miss for nothing.
        if self.holds_locally(key) {
            self.keep_locally(key, entry);
        }
        let keep_for = entry.fresh_for + self.stale_ttl;
        match self.redis.set(key, entry.encode(), keep_for, lock).await {
            Ok(someone_waits) => Stored {
                stored: true,
                someone_waits,
            },
            Err(_) => {
                // Without Redis, the in-process tier is the only cache there is.
                self.keep_locally(key, entry);
                Stored::FAILED
            }
        }
    }

    fn keep_locally(&self, key: &CacheKey, entry: &Arc<CachedPrediction>) {
        if let Some(local) = &self.local {
            local.keep(key.as_str(), entry, unix_now_ms());
        }
    }

    /// Deletes every entry of `model` from Redis and from this gateway's tier;
    /// returns how many Redis held.
    pub async fn purge_model(&self, model: &ModelName) -> Result<u64, redis::RedisError> {
        self.forget_model_locally(model);
        self.redis.purge_model(model).await
    }

    /// Deletes one entry from Redis and from this gateway's tier; returns whether
    /// Redis held it.
    pub async fn purge_key(&self, key: &CacheKey) -> Result<bool, redis::RedisError> {
        self.forget_key_locally(key.as_str());
        self.redis.purge_key(key).await
    }

    /// Drops one entry from the in-process tier only (another gateway purged it).
    pub fn forget_key_locally(&self, key: &str) {
        if let Some(local) = &self.local {
            local.forget(key);
        }
    }

    /// Drops every entry of `model` from the in-process tier only.
    pub fn forget_model_locally(&self, model: &ModelName) {
        if let Some(local) = &self.local {
            let prefix = self.keys().model_prefix(model);
            local.forget_prefixed(&prefix);
        }
    }

    /// Whether Redis answers right now (ignoring the breaker).
    pub async fn ping(&self) -> Result<(), redis::RedisError> {
        self.redis.ping().await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prediction_contract::CanonicalInput;

    use super::*;

    /// A cache whose Redis does not answer (nothing listens on port 1): what
    /// this module does by itself, with the in-process tier.
    async fn without_redis(local_capacity: u64) -> PredictionCache {
        cache_at(
            "redis://127.0.0.1:1",
            Duration::from_millis(50),
            local_capacity,
        )
        .await
    }

    /// A cache (a gateway's: its lease token is its own) on the Redis at `url`,
    /// giving up on a command after `timeout`.
    async fn cache_at(url: &str, timeout: Duration, local_capacity: u64) -> PredictionCache {
        let redis = RedisSettings {
            mode: RedisMode::Standalone,
            url: url.into(),
            sentinel_master: None,
            tls_ca: None,
            timeout,
            lock_ttl: Duration::from_secs(3),
            key_prefix: "unit:".into(),
        };
        let settings = CacheSettings {
            stale_ttl: Duration::from_secs(5),
            local_capacity,
            local_ttl: Duration::from_secs(60),
        };
        let errors = prometheus::IntCounter::new("unit_redis_errors", "test").unwrap();
        PredictionCache::new(&redis, &settings, errors)
            .await
            .unwrap()
    }

    fn key(cache: &PredictionCache, input: &str) -> CacheKey {
        let model = ModelName::parse("m").unwrap();
        cache.keys().key(
            &model,
            &CanonicalInput::from_json_slice(input.as_bytes()).unwrap(),
        )
    }

    fn fresh_entry() -> Arc<CachedPrediction> {
        Arc::new(CachedPrediction {
            prediction: bytes::Bytes::from_static(b"{\"p\":1}"),
            model_version: "1".into(),
            computed_at_ms: unix_now_ms(),
            fresh_for: Duration::from_secs(60),
        })
    }

    #[tokio::test]
    async fn without_redis_a_lookup_says_so_and_a_store_is_kept_in_memory() {
        let cache = without_redis(100).await;
        let key = key(&cache, r#"{"a":1}"#);
        assert!(matches!(
            cache.lookup(&key, OnMiss::TakeLease).await,
            Lookup::Unavailable
        ));
        let stored = cache.store(&key, &fresh_entry(), None).await;
        assert_eq!(
            stored,
            Stored::FAILED,
            "nothing stored, nobody known not to wait"
        );
        // The in-process tier is the only cache there is now, and it answers.
        assert!(cache.holds_locally(&key));
        assert!(matches!(
            cache.lookup(&key, OnMiss::TakeLease).await,
            Lookup::Found(entry) if entry.prediction == "{\"p\":1}"
        ));
    }

    #[tokio::test]
    async fn a_lease_this_gateway_held_already_is_told_from_one_just_taken() {
        let redis = test_support::RedisServer::start();
        // A timeout no loaded machine reaches: every command here must answer.
        let timeout = Duration::from_secs(10);
        let (here, elsewhere) = (
            cache_at(&redis.url(), timeout, 0).await,
            cache_at(&redis.url(), timeout, 0).await,
        );
        let key = key(&here, r#"{"lease":1}"#);
        let Lookup::Leased(lease) = here.lookup(&key, OnMiss::TakeLease).await else {
            panic!("the first lookup of a missing key takes its lease");
        };
        assert!(matches!(
            elsewhere.lookup(&key, OnMiss::TakeLease).await,
            Lookup::LeasedElsewhere
        ));
        // A second request here finds its own gateway's lease: it may be a
        // computation's that has just finished, so it is not handed on as taken.
        assert!(matches!(
            here.lookup(&key, OnMiss::TakeLease).await,
            Lookup::LeasedHere
        ));
        let entry = fresh_entry();
        let stored = here.store(&key, &entry, Some(lease)).await;
        assert!(stored.stored, "the entry takes the lease's place");
        // What the computation of that request does first: read the key again,
        // and find the entry stored over the lease.
        let claim = here.claim(&key, LockSite::Lease).await;
        assert!(matches!(claim.lock, LockClaim::EntryInTheWay));
        assert_eq!(claim.entry.as_deref(), Some(&*entry));
    }

    #[tokio::test]
    async fn a_lease_or_an_unreadable_value_under_a_key_is_no_entry() {
        let cache = without_redis(100).await;
        let key = key(&cache, r#"{"b":1}"#);
        assert!(cache.accept_fetched(&key, b"lease:some-gateway").is_none());
        assert!(cache.accept_fetched(&key, b"\xff not an entry").is_none());
        assert!(!cache.holds_locally(&key), "neither is kept");
        let entry = fresh_entry();
        let read = cache.accept_fetched(&key, &entry.encode()).unwrap();
        assert_eq!(*read, *entry);
        assert!(
            cache.holds_locally(&key),
            "a fresh entry read is kept in memory"
        );
    }

    #[tokio::test]
    async fn purged_entries_leave_the_in_process_tier() {
        let cache = without_redis(100).await;
        let (one, two) = (key(&cache, r#"{"c":1}"#), key(&cache, r#"{"c":2}"#));
        for key in [&one, &two] {
            cache.store(key, &fresh_entry(), None).await;
        }
        cache.forget_key_locally(one.as_str());
        assert!(!cache.holds_locally(&one) && cache.holds_locally(&two));
        cache.forget_model_locally(&ModelName::parse("m").unwrap());
        assert!(!cache.holds_locally(&two));
    }

    #[tokio::test]
    async fn with_no_in_process_tier_nothing_is_held_in_memory() {
        let cache = without_redis(0).await;
        let key = key(&cache, r#"{"d":1}"#);
        cache.store(&key, &fresh_entry(), None).await;
        assert!(!cache.holds_locally(&key));
    }
}
