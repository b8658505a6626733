//! The prediction cache: a small in-process tier in front of Redis.
//!
//! Redis is shared by every gateway and holds each entry for its freshness plus the
//! stale period. The in-process tier keeps hot entries for at most `--local-ttl`, so
//! a purge or a newer value reaches every gateway within that bound even if the purge
//! broadcast is lost. When Redis fails, a breaker skips it for a moment so that
//! requests do not each wait out a Redis timeout.

mod entry;
mod lock;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prediction_contract::{CacheKey, ModelName, cache_key_pattern};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tracing::warn;

pub use entry::{CachedPrediction, CorruptEntry, unix_now_ms};
pub use lock::{ComputeLock, LockAttempt, LockGuard, LockSite, LockState};

use crate::metrics::Metrics;

/// After a Redis failure, how long the gateway answers without Redis before trying
/// it again.
const REDIS_RETRY_AFTER: Duration = Duration::from_secs(1);

/// What a lookup found.
#[derive(Debug, Clone)]
pub enum Lookup {
    Found(Arc<CachedPrediction>),
    Missing,
    /// Redis could not be asked; the caller should answer without the cache.
    Unavailable,
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

/// Settings of the cache tiers.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    pub redis_url: String,
    /// CA of the Redis server's certificate, for `rediss://`.
    pub redis_tls_ca: Option<std::path::PathBuf>,
    pub redis_timeout: Duration,
    /// How long entries are kept after their freshness, to be served stale.
    pub stale_ttl: Duration,
    /// Entries of the in-process tier; 0 turns it off.
    pub local_capacity: u64,
    pub local_ttl: Duration,
    pub key_prefix: String,
}

/// Predictions in Redis, fronted by an in-process tier. Cheap to clone.
#[derive(Clone)]
pub struct PredictionCache {
    /// Reconnects by itself; created lazily so the gateway starts (and answers
    /// from the workers) while Redis is down.
    redis: ConnectionManager,
    local: Option<Arc<LocalTier>>,
    breaker: Arc<RedisBreaker>,
    stale_ttl: Duration,
    key_prefix: Arc<str>,
    metrics: Metrics,
}

impl std::fmt::Debug for PredictionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PredictionCache")
            .field("local_tier", &self.local.is_some())
            .field("stale_ttl", &self.stale_ttl)
            .finish_non_exhaustive()
    }
}

impl PredictionCache {
    /// Prepares the tiers without opening a Redis connection.
    pub fn new(settings: &CacheSettings, metrics: Metrics) -> Result<Self, redis::RedisError> {
        // Small commands pipelined on one connection: without TCP_NODELAY, Nagle's
        // algorithm holds each one back until the previous is acknowledged.
        let connection_info =
            redis::IntoConnectionInfo::into_connection_info(settings.redis_url.as_str())?
                .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let client = match &settings.redis_tls_ca {
            None => redis::Client::open(connection_info)?,
            Some(ca) => {
                let root_cert = std::fs::read(ca).map_err(|err| {
                    redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "cannot read the Redis CA file",
                        format!("{}: {err}", ca.display()),
                    ))
                })?;
                redis::Client::build_with_tls(
                    connection_info,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root_cert),
                    },
                )?
            }
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.redis_timeout))
            .set_response_timeout(Some(settings.redis_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(100));
        let redis = ConnectionManager::new_lazy_with_config(client, config)?;
        let local = (settings.local_capacity > 0 && !settings.local_ttl.is_zero())
            .then(|| Arc::new(LocalTier::new(settings.local_capacity, settings.local_ttl)));
        Ok(Self {
            redis,
            local,
            breaker: Arc::new(RedisBreaker::default()),
            stale_ttl: settings.stale_ttl,
            key_prefix: settings.key_prefix.as_str().into(),
            metrics,
        })
    }

    /// The Redis connection, for the compute lock.
    pub fn redis(&self) -> ConnectionManager {
        self.redis.clone()
    }

    pub fn stale_ttl(&self) -> Duration {
        self.stale_ttl
    }

    /// Whether Redis is being skipped after a recent failure.
    pub fn redis_skipped(&self) -> bool {
        self.breaker.is_open(unix_now_ms())
    }

    /// Records a Redis failure seen outside this type (by the lock).
    pub fn note_redis_failure(&self, err: &redis::RedisError) {
        self.metrics.redis_errors.inc();
        if !self.breaker.is_open(unix_now_ms()) {
            warn!(error = %err, retry_after = ?REDIS_RETRY_AFTER, "Redis failed; answering without it for a moment");
        }
        self.breaker.trip(unix_now_ms());
    }

    /// The entry under `key`: from the in-process tier while fresh there, else
    /// from Redis (fresh, stale or expired: the caller judges).
    pub async fn lookup(&self, key: &CacheKey) -> Lookup {
        if let Some(entry) = self.local_entry(key) {
            return Lookup::Found(entry);
        }
        if self.redis_skipped() {
            return Lookup::Unavailable;
        }
        let mut redis = self.redis.clone();
        match redis::cmd("GET")
            .arg(key.as_str())
            .query_async::<Option<Vec<u8>>>(&mut redis)
            .await
        {
            Ok(Some(bytes)) => self.accept_fetched(key, &bytes).await,
            Ok(None) => Lookup::Missing,
            Err(err) => {
                self.note_redis_failure(&err);
                Lookup::Unavailable
            }
        }
    }

    /// Like [`lookup`](Self::lookup), but when Redis holds no entry, tries for the
    /// key's lease (the compute lock of a key without entry) in the same command,
    /// and returns what that found with the miss: the lease taken, or held by
    /// another gateway.
    pub async fn lookup_or_lease(
        &self,
        key: &CacheKey,
        lock: &ComputeLock,
    ) -> (Lookup, Option<LockAttempt>) {
        if let Some(entry) = self.local_entry(key) {
            return (Lookup::Found(entry), None);
        }
        if self.redis_skipped() {
            return (Lookup::Unavailable, None);
        }
        match lock.lookup_or_lease(key).await {
            Ok(LockAttempt::Entry(bytes)) => (self.accept_fetched(key, &bytes).await, None),
            Ok(attempt) => (Lookup::Missing, Some(attempt)),
            Err(err) => {
                self.note_redis_failure(&err);
                (Lookup::Unavailable, None)
            }
        }
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

    /// Decodes an entry read from Redis, keeping it in the in-process tier while
    /// fresh; an unreadable one counts as missing (the next store overwrites it).
    async fn accept_fetched(&self, key: &CacheKey, bytes: &[u8]) -> Lookup {
        match self.accept_peeked(key, bytes) {
            Some(entry) => Lookup::Found(entry),
            None => Lookup::Missing,
        }
    }

    /// Reads an entry fetched from Redis (by a lookup, or by the compute lock's
    /// peek), keeping it in the in-process tier if it is fresh; `None` if it is
    /// a lease (someone computes it) or unreadable.
    pub fn accept_peeked(&self, key: &CacheKey, bytes: &[u8]) -> Option<Arc<CachedPrediction>> {
        if ComputeLock::is_lease(bytes) {
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
    /// period, and replaces this gateway's in-process copy if it has one. Returns
    /// whether Redis took it.
    ///
    /// With the compute `lock` of the key, releases it in the same round trip,
    /// after the entry is stored (so whoever takes the lock next finds the entry;
    /// a lease is overwritten by the entry itself), and learns whether another
    /// gateway waits for this outcome.
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
        // Without Redis, though, the in-process tier is the only cache there is.
        let redis_down = self.breaker.is_open(unix_now_ms());
        if redis_down || self.holds_locally(key) {
            self.keep_locally(key, entry);
        }
        if redis_down {
            if let Some(lock) = lock {
                tokio::spawn(lock.release());
            }
            return Stored::FAILED;
        }
        let keep_for = entry.fresh_for + self.stale_ttl;
        let expire_ms = u64::try_from(keep_for.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut pipeline = redis::pipe();
        pipeline
            .cmd("SET")
            .arg(key.as_str())
            .arg(entry.encode())
            .arg("PX")
            .arg(expire_ms)
            .ignore();
        let releases = lock.is_some();
        if let Some(lock) = lock {
            lock.release_in(&mut pipeline, &key.waiting_key());
        }
        let mut redis = self.redis.clone();
        let result = if releases {
            pipeline
                .query_async::<(Option<u8>,)>(&mut redis)
                .await
                .map(|(waiting,)| waiting.is_some())
        } else {
            pipeline.query_async::<()>(&mut redis).await.map(|()| false)
        };
        match result {
            Ok(someone_waits) => Stored {
                stored: true,
                someone_waits,
            },
            Err(err) => {
                self.note_redis_failure(&err);
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
        let pattern = cache_key_pattern(&self.key_prefix, model);
        let mut redis = self.redis.clone();
        let mut cursor: u64 = 0;
        let mut purged = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut redis)
                .await?;
            if !keys.is_empty() {
                purged += redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async::<u64>(&mut redis)
                    .await?;
            }
            if next == 0 {
                return Ok(purged);
            }
            cursor = next;
        }
    }

    /// Deletes one entry from Redis and from this gateway's tier; returns whether
    /// Redis held it.
    pub async fn purge_key(&self, key: &CacheKey) -> Result<bool, redis::RedisError> {
        self.forget_key_locally(key.as_str());
        let mut redis = self.redis.clone();
        let removed: u64 = redis::cmd("UNLINK")
            .arg(key.as_str())
            .query_async(&mut redis)
            .await?;
        Ok(removed > 0)
    }

    /// Drops one entry from the in-process tier only (another gateway purged it).
    pub fn forget_key_locally(&self, key: &str) {
        if let Some(local) = &self.local {
            local.entries.remove(key);
        }
    }

    /// Drops every entry of `model` from the in-process tier only.
    pub fn forget_model_locally(&self, model: &ModelName) {
        if let Some(local) = &self.local {
            let pattern = cache_key_pattern(&self.key_prefix, model);
            let prefix = pattern.trim_end_matches('*');
            local.entries.retain(|key, _| !key.starts_with(prefix));
        }
    }

    /// Whether Redis answers right now (ignoring the breaker).
    pub async fn ping(&self) -> Result<(), redis::RedisError> {
        let mut redis = self.redis.clone();
        redis::cmd("PING").query_async::<()>(&mut redis).await
    }
}

/// Hot entries kept in this gateway's memory, each for at most the tier's TTL
/// after it was put there. quick_cache rather than moka: a lookup here is on
/// every hot hit, and quick_cache's is a hash and a shard's read lock where
/// moka's future cache also queues the read for its eviction policy (callgrind:
/// ~300 instructions per lookup against ~1 700). Expiry is checked on the way
/// out, against the clock reading the freshness check uses.
#[derive(Debug)]
struct LocalTier {
    entries: quick_cache::sync::Cache<String, LocalCopy>,
    ttl_ms: u64,
}

#[derive(Debug, Clone)]
struct LocalCopy {
    entry: Arc<CachedPrediction>,
    /// Unix milliseconds after which this copy is no longer served.
    kept_until_ms: u64,
}

impl LocalTier {
    fn new(capacity: u64, ttl: Duration) -> Self {
        Self {
            entries: quick_cache::sync::Cache::new(usize::try_from(capacity).unwrap_or(usize::MAX)),
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// The copy of `key`, if it was kept less than the TTL ago and the entry is
    /// still fresh.
    fn fresh_entry(&self, key: &str, now_ms: u64) -> Option<Arc<CachedPrediction>> {
        let copy = self.entries.get(key)?;
        if now_ms >= copy.kept_until_ms {
            // Dropped now rather than left to eviction, unless a newer copy
            // replaced it meanwhile.
            self.entries
                .remove_if(key, |current| current.kept_until_ms <= now_ms);
            return None;
        }
        copy.entry.is_fresh(now_ms).then_some(copy.entry)
    }

    fn keep(&self, key: &str, entry: &Arc<CachedPrediction>, now_ms: u64) {
        let copy = LocalCopy {
            entry: Arc::clone(entry),
            kept_until_ms: now_ms.saturating_add(self.ttl_ms),
        };
        self.entries.insert(key.to_owned(), copy);
    }

    fn holds(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }
}

/// Skips Redis for [`REDIS_RETRY_AFTER`] after a failure. The first request after
/// that tries Redis again and either closes the breaker or trips it anew.
#[derive(Debug, Default)]
struct RedisBreaker {
    open_until_ms: AtomicU64,
}

impl RedisBreaker {
    fn is_open(&self, now_ms: u64) -> bool {
        now_ms < self.open_until_ms.load(Ordering::Relaxed)
    }

    fn trip(&self, now_ms: u64) {
        let until = now_ms + u64::try_from(REDIS_RETRY_AFTER.as_millis()).unwrap_or(1_000);
        self.open_until_ms.store(until, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(computed_at_ms: u64, fresh_for: Duration) -> Arc<CachedPrediction> {
        Arc::new(CachedPrediction {
            prediction: bytes::Bytes::from_static(b"{}"),
            model_version: "1".into(),
            computed_at_ms,
            fresh_for,
        })
    }

    #[test]
    fn the_local_tier_serves_a_copy_for_its_ttl_and_while_the_entry_is_fresh() {
        let tier = LocalTier::new(100, Duration::from_secs(1));
        let long_fresh = entry(10_000, Duration::from_secs(60));
        tier.keep("k", &long_fresh, 10_000);
        assert!(tier.fresh_entry("k", 10_999).is_some());
        // Past the tier's TTL: gone, though the entry itself is still fresh.
        assert!(tier.fresh_entry("k", 11_000).is_none());
        assert!(!tier.holds("k"), "an expired copy is dropped when found");

        let short_fresh = entry(20_000, Duration::from_millis(300));
        tier.keep("k", &short_fresh, 20_000);
        assert!(tier.fresh_entry("k", 20_299).is_some());
        assert!(
            tier.fresh_entry("k", 20_300).is_none(),
            "stale entries are not served from memory"
        );
        assert!(tier.fresh_entry("other", 20_000).is_none());
    }

    #[test]
    fn keeping_a_key_again_renews_its_copy() {
        let tier = LocalTier::new(100, Duration::from_secs(1));
        tier.keep("k", &entry(10_000, Duration::from_secs(60)), 10_000);
        let newer = entry(10_500, Duration::from_secs(60));
        tier.keep("k", &newer, 10_500);
        let served = tier.fresh_entry("k", 11_200).expect("the renewed copy");
        assert!(Arc::ptr_eq(&served, &newer));
    }

    #[test]
    fn the_breaker_opens_on_failure_and_closes_after_the_retry_delay() {
        let breaker = RedisBreaker::default();
        assert!(!breaker.is_open(10_000));
        breaker.trip(10_000);
        assert!(breaker.is_open(10_000));
        assert!(breaker.is_open(10_999));
        assert!(!breaker.is_open(11_000));
    }
}
