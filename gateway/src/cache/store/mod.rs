//! Redis: the one component through which the gateway reaches it.
//!
//! Every command the gateway sends is built and sent here, with the keys of
//! [`KeySpace`], so no caller holds a connection or knows a command. Each goes
//! through one of two gates:
//!
//! - [`Gate::Breaker`], the commands on a request's path (lookups, leases, locks,
//!   waiting marks, stores): skipped for [`REDIS_RETRY_AFTER`] after a failure, so
//!   that requests do not each wait out a Redis timeout while Redis is down; a
//!   failure trips the breaker.
//! - [`Gate::Direct`], the commands that keep others going or that a person asked
//!   for (a lock's extension and release, purges, the readiness probe): always
//!   sent, their failure told to the caller only. A lock released while the
//!   breaker is open spares another gateway waiting for its expiry; a purge or a
//!   probe reports what Redis says now, not what it said a moment ago.
//!
//! It is longer than the gateway's other modules on purpose: every Redis command
//! is here, each beside the others it pipelines with or races against, so that a
//! change of how commands reach Redis (a cluster, a sentinel) is made in one file.

mod breaker;
mod connection;

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use prediction_contract::ModelName;
use prediction_contract::time::{millis, unix_now_ms};
use prometheus::IntCounter;
use tracing::warn;

use super::lock::{LockGuard, LockSite};
use breaker::{Breaker, REDIS_RETRY_AFTER};
use connection::Connection;
pub use connection::RedisMode;
use prediction_contract::cache_key::{CacheKey, KeySpace, LEASE_PREFIX};

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

const EXTEND: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

// Hashed once (redis-rs computes a script's SHA-1 in `Script::new`), not per use.
static EXTEND_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(EXTEND));
static RELEASE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RELEASE));

/// How to reach Redis and use it.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub mode: RedisMode,
    /// One URL, or (cluster, sentinel) a comma-separated list.
    pub url: String,
    /// The master the sentinels monitor (`sentinel` mode).
    pub sentinel_master: Option<String>,
    /// CA of the Redis server's certificate, for `rediss://`.
    pub tls_ca: Option<std::path::PathBuf>,
    /// How long a command may take before the gateway answers without Redis.
    pub timeout: Duration,
    /// Expiry of a compute lock, extended while its computation runs.
    pub lock_ttl: Duration,
    pub key_prefix: String,
}

/// Why a command on a request's path got no answer from Redis.
#[derive(Debug)]
pub enum Unavailable {
    /// The breaker is open after a recent failure: not sent.
    Skipped,
    /// Sent, and failed (the breaker is open now).
    Failed,
}

/// Which commands the breaker holds back; see the module documentation.
#[derive(Debug, Clone, Copy)]
enum Gate {
    Breaker,
    Direct,
}

/// What the lookup that may take the lease found under an entry's key.
#[derive(Debug)]
pub enum LeaseLookup {
    /// An entry (its bytes): nothing was taken.
    Entry(Vec<u8>),
    /// No entry: the lease is this gateway's now (taken, or adopted).
    Taken(LockGuard),
    /// No entry: another gateway holds the lease.
    HeldElsewhere,
}

/// What marking that this gateway waits found (see [`RedisStore::mark_waiting`]).
#[derive(Debug)]
pub struct RawLockState {
    /// How long the lock lives unless extended; `None` if it is gone.
    pub held_for: Option<Duration>,
    /// The entry's bytes, if an entry (not a lease) is under the key.
    pub entry: Option<Vec<u8>>,
}

/// The gateway's Redis: its connection, its breaker and its keys. Cheap to clone.
#[derive(Clone)]
pub struct RedisStore {
    /// Reconnects by itself; in standalone mode created lazily so the gateway
    /// starts (and answers from the workers) while Redis is down.
    connection: Connection,
    breaker: Arc<Breaker>,
    keys: KeySpace,
    lock_ttl: Duration,
    /// `lease:<token>`, the value of this gateway's leases; the token is random,
    /// made once per process.
    lease: Arc<str>,
    errors: IntCounter,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("keys", &self.keys)
            .field("lock_ttl", &self.lock_ttl)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Prepares the connection (see [`connection::open`]); `errors` counts
    /// failed commands on a request's path.
    pub async fn new(settings: &RedisSettings, errors: IntCounter) -> anyhow::Result<Self> {
        Ok(Self {
            connection: connection::open(settings).await?,
            breaker: Arc::new(Breaker::default()),
            keys: KeySpace::new(&settings.key_prefix),
            lock_ttl: settings.lock_ttl,
            lease: format!("{LEASE_PREFIX}{}", uuid::Uuid::new_v4()).into(),
            errors,
        })
    }

    pub fn keys(&self) -> &KeySpace {
        &self.keys
    }

    /// Whether `value`, read under an entry's key, is a lease rather than an entry.
    pub fn is_lease(value: &[u8]) -> bool {
        value.starts_with(LEASE_PREFIX.as_bytes())
    }

    /// Sends `command` through `gate`; see the module documentation.
    async fn send<T>(
        &self,
        gate: Gate,
        command: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, SendError> {
        if matches!(gate, Gate::Breaker) && self.breaker.is_open(unix_now_ms()) {
            return Err(SendError::Skipped);
        }
        match command.await {
            Ok(value) => Ok(value),
            Err(err) => {
                if matches!(gate, Gate::Breaker) {
                    self.errors.inc();
                    if !self.breaker.is_open(unix_now_ms()) {
                        warn!(error = %err, retry_after = ?REDIS_RETRY_AFTER, "Redis failed; answering without it for a moment");
                    }
                    self.breaker.trip(unix_now_ms());
                }
                Err(SendError::Failed(err))
            }
        }
    }

    /// The bytes under `key`'s entry key.
    pub async fn get(&self, key: &CacheKey) -> Result<Option<Vec<u8>>, Unavailable> {
        let mut connection = self.connection.clone();
        let mut command = redis::cmd("GET");
        command.arg(key.as_str());
        let get = command.query_async::<Option<Vec<u8>>>(&mut connection);
        Ok(self.send(Gate::Breaker, get).await?)
    }

    /// Reads the entry under `key` or, if there is none, takes (or adopts) its
    /// lease, in one command.
    pub async fn get_or_lease(&self, key: &CacheKey) -> Result<LeaseLookup, Unavailable> {
        let mut connection = self.connection.clone();
        let mut command = redis::cmd("SET");
        command
            .arg(key.as_str())
            .arg(&*self.lease)
            .arg("NX")
            .arg("PX")
            .arg(self.lock_ttl_ms())
            .arg("GET");
        let set = command.query_async::<Option<Vec<u8>>>(&mut connection);
        let found = self.send(Gate::Breaker, set).await?;
        let ours = || {
            LeaseLookup::Taken(LockGuard {
                lock_key: key.as_str().to_owned(),
                value: Arc::clone(&self.lease),
                site: LockSite::Lease,
            })
        };
        Ok(match found {
            None => ours(),
            // Taken by a request of this gateway that then joined this key's
            // computation here rather than run one: adopt it.
            Some(value) if *value == *self.lease.as_bytes() => ours(),
            Some(value) if Self::is_lease(&value) => LeaseLookup::HeldElsewhere,
            Some(entry) => LeaseLookup::Entry(entry),
        })
    }

    /// Tries to take the lock beside `key`'s entry and, in the same round trip,
    /// reads the entry (someone may have stored it since the caller looked): the
    /// lock if taken, and the entry's bytes (`None` if there is none or only a
    /// lease).
    ///
    /// This lock is never adopted: its token is the computation's own, so a
    /// second computation of the key in this gateway (a client that asked for a
    /// newer prediction than the one being computed) waits for the first like any
    /// other gateway would.
    pub async fn lock_beside(
        &self,
        key: &CacheKey,
    ) -> Result<(Option<LockGuard>, Option<Vec<u8>>), Unavailable> {
        let lock_key = key.lock_key();
        let token: Arc<str> = uuid::Uuid::new_v4().to_string().into();
        let mut connection = self.connection.clone();
        let mut pipeline = redis::pipe();
        pipeline
            .cmd("SET")
            .arg(&lock_key)
            .arg(&*token)
            .arg("NX")
            .arg("PX")
            .arg(self.lock_ttl_ms())
            .cmd("GET")
            .arg(key.as_str());
        let query = pipeline.query_async::<(Option<String>, Option<Vec<u8>>)>(&mut connection);
        let (taken, entry) = self.send(Gate::Breaker, query).await?;
        let guard = taken.map(|_| LockGuard {
            lock_key,
            value: token,
            site: LockSite::Beside,
        });
        Ok((guard, entry.filter(|value| !Self::is_lease(value))))
    }

    /// Tells the gateway holding `key`'s lock at `site` that someone waits for its
    /// outcome (it announces only then), and reads, in the same round trip, how
    /// the lock stands and the entry under the key. Call it once subscribed to
    /// the announcement: a holder that sees the mark announces after it, and one
    /// that finished before it had stored the entry first.
    pub async fn mark_waiting(
        &self,
        key: &CacheKey,
        site: LockSite,
    ) -> Result<RawLockState, Unavailable> {
        let mut connection = self.connection.clone();
        let mut pipeline = redis::pipe();
        pipeline
            .cmd("SET")
            .arg(key.waiting_key())
            .arg(1)
            .arg("PX")
            .arg(self.lock_ttl_ms())
            .ignore()
            .cmd("GET")
            .arg(key.as_str());
        let lock_key = match site {
            LockSite::Beside => key.lock_key(),
            LockSite::Lease => key.as_str().to_owned(),
        };
        pipeline.cmd("PTTL").arg(lock_key);
        let query = pipeline.query_async::<(Option<Vec<u8>>, i64)>(&mut connection);
        let (value, pttl) = self.send(Gate::Breaker, query).await?;
        let value_is_lease = value.as_deref().is_some_and(Self::is_lease);
        // -2: the key is gone; -1 cannot happen (locks always expire). At the lease
        // site the lock is gone too once an entry took the lease's place.
        let held_for = u64::try_from(pttl)
            .ok()
            .filter(|_| site == LockSite::Beside || value_is_lease)
            .map(Duration::from_millis);
        Ok(RawLockState {
            held_for,
            entry: value.filter(|_| !value_is_lease),
        })
    }

    /// Stores `bytes` under `key` for `keep_for`. With the compute `lock` of the
    /// key, releases it in the same round trip, after the entry is stored (so
    /// whoever takes the lock next finds the entry; a lease is overwritten by the
    /// entry itself), and learns whether another gateway marked that it waits for
    /// this outcome. While the breaker is open nothing is stored and the lock is
    /// released on its own.
    ///
    /// The lock beside an entry goes by a plain `DEL`, not the compare-and-delete
    /// of [`release`](Self::release): Redis runs a connection's commands in order,
    /// so the entry is stored before the lock goes, and if this lock had expired
    /// and another gateway's taken its place, deleting that one costs nothing
    /// either: whoever takes the lock next finds the entry in the same round trip.
    pub async fn set(
        &self,
        key: &CacheKey,
        bytes: Vec<u8>,
        keep_for: Duration,
        lock: Option<LockGuard>,
    ) -> Result<bool, Unavailable> {
        let mut pipeline = redis::pipe();
        pipeline
            .cmd("SET")
            .arg(key.as_str())
            .arg(bytes)
            .arg("PX")
            .arg(millis(keep_for).max(1))
            .ignore();
        let mut connection = self.connection.clone();
        let Some(lock) = lock else {
            let query = pipeline.query_async::<()>(&mut connection);
            self.send(Gate::Breaker, query).await?;
            return Ok(false);
        };
        if lock.site == LockSite::Beside {
            pipeline.cmd("DEL").arg(&lock.lock_key).ignore();
        }
        pipeline.cmd("GETDEL").arg(key.waiting_key());
        let query = pipeline.query_async::<(Option<u8>,)>(&mut connection);
        match self.send(Gate::Breaker, query).await {
            Ok((waiting,)) => Ok(waiting.is_some()),
            Err(SendError::Skipped) => {
                tokio::spawn(self.clone().release(lock));
                Err(Unavailable::Skipped)
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Runs `work`, extending `lock` every third of its TTL until it is done,
    /// however long it takes. Driven by the computation itself rather than a task
    /// of its own, so a lock costs no task and stops being extended when the
    /// computation stops, whatever the reason.
    pub async fn extend_while<F: Future>(&self, lock: &LockGuard, work: F) -> F::Output {
        tokio::pin!(work);
        tokio::select! {
            biased;
            output = &mut work => output,
            () = self.keep_extended(lock) => work.await,
        }
    }

    /// Extends `lock` every third of its TTL; returns only if the lock was lost
    /// (the computation carries on without it).
    async fn keep_extended(&self, lock: &LockGuard) {
        let ttl_ms = self.lock_ttl_ms();
        loop {
            tokio::time::sleep(self.lock_ttl / 3).await;
            let mut connection = self.connection.clone();
            let mut invocation = EXTEND_SCRIPT.key(&lock.lock_key);
            invocation.arg(&*lock.value).arg(ttl_ms);
            let extend = invocation.invoke_async::<i64>(&mut connection);
            match self.send(Gate::Direct, extend).await {
                Ok(1) => {}
                Ok(_) => {
                    warn!(
                        lock_key = lock.lock_key,
                        "compute lock lost before the model call ended"
                    );
                    return;
                }
                // A passing Redis error: the next tick tries again while the lock lives.
                Err(err) => {
                    warn!(lock_key = lock.lock_key, error = %err, "could not extend the compute lock");
                }
            }
        }
    }

    /// Releases `lock` without storing anything (the computation failed or was
    /// not to be stored).
    pub async fn release(self, lock: LockGuard) {
        let mut connection = self.connection.clone();
        let mut invocation = RELEASE_SCRIPT.key(&lock.lock_key);
        invocation.arg(&*lock.value);
        let release = invocation.invoke_async::<i64>(&mut connection);
        if let Err(err) = self.send(Gate::Direct, release).await {
            warn!(lock_key = lock.lock_key, error = %err, "could not release the compute lock; it will expire");
        }
    }

    /// Deletes every entry of `model`; returns how many there were. In a
    /// cluster each master is scanned (a key lives on one master, so each is
    /// seen once) and each key unlinked on its own, as keys of different hash
    /// slots cannot share a command there.
    pub async fn purge_model(&self, model: &ModelName) -> Result<u64, redis::RedisError> {
        let pattern = self.keys.model_pattern(model);
        let mut connection = self.connection.clone();
        let mut purged = 0;
        let targets = self.send(Gate::Direct, connection.scan_targets()).await?;
        for target in targets {
            let mut cursor: u64 = 0;
            loop {
                let mut connection = self.connection.clone();
                let page = connection.scan_page(&target, cursor, &pattern);
                let (next, keys) = self.send(Gate::Direct, page).await?;
                purged += self.unlink(&keys).await?;
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(purged)
    }

    /// Unlinks `keys`; returns how many there were.
    async fn unlink(&self, keys: &[String]) -> Result<u64, redis::RedisError> {
        if keys.is_empty() {
            return Ok(0);
        }
        if self.connection.takes_keys_of_any_slot() {
            let mut connection = self.connection.clone();
            let mut command = redis::cmd("UNLINK");
            command.arg(keys);
            let unlink = command.query_async::<u64>(&mut connection);
            return Ok(self.send(Gate::Direct, unlink).await?);
        }
        let unlinks = keys.iter().map(|key| {
            let mut connection = self.connection.clone();
            async move {
                redis::cmd("UNLINK")
                    .arg(key)
                    .query_async::<u64>(&mut connection)
                    .await
            }
        });
        let removed = self
            .send(Gate::Direct, futures::future::try_join_all(unlinks))
            .await?;
        Ok(removed.into_iter().sum())
    }

    /// Deletes one entry; returns whether there was one.
    pub async fn purge_key(&self, key: &CacheKey) -> Result<bool, redis::RedisError> {
        let mut connection = self.connection.clone();
        let mut command = redis::cmd("UNLINK");
        command.arg(key.as_str());
        let unlink = command.query_async::<u64>(&mut connection);
        Ok(self.send(Gate::Direct, unlink).await? > 0)
    }

    /// Whether Redis answers right now (whatever the breaker says).
    pub async fn ping(&self) -> Result<(), redis::RedisError> {
        let mut connection = self.connection.clone();
        let command = redis::cmd("PING");
        let ping = command.query_async::<()>(&mut connection);
        Ok(self.send(Gate::Direct, ping).await?)
    }

    fn lock_ttl_ms(&self) -> u64 {
        millis(self.lock_ttl).max(1)
    }
}

/// How a command failed, inside the store.
#[derive(Debug)]
enum SendError {
    Skipped,
    Failed(redis::RedisError),
}

impl From<SendError> for Unavailable {
    fn from(err: SendError) -> Self {
        match err {
            SendError::Skipped => Self::Skipped,
            SendError::Failed(_) => Self::Failed,
        }
    }
}

impl From<SendError> for redis::RedisError {
    fn from(err: SendError) -> Self {
        match err {
            SendError::Failed(err) => err,
            // Direct commands are never skipped; kept total for the type's sake.
            SendError::Skipped => redis::RedisError::from((
                redis::ErrorKind::Io,
                "Redis is being skipped after a failure",
            )),
        }
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Skipped => f.write_str("skipped after a recent failure"),
            Self::Failed(err) => err.fmt(f),
        }
    }
}
