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
//! Every Redis command is in this module's files: here the store, its gates and
//! the entries' reads and writes; in `locks` the compute lock's commands (lease,
//! lock beside an entry, waiting mark, extension, release); in `purges` the
//! purges; in `connection` how commands reach one server, a cluster or the
//! master sentinels name.

mod breaker;
mod connection;
mod locks;
mod purges;

use std::sync::Arc;
use std::time::Duration;

use prediction_contract::time::{millis, unix_now_ms};
use prometheus::IntCounter;
use tracing::warn;

use super::lock::{LockGuard, LockSite};
use breaker::{Breaker, REDIS_RETRY_AFTER};
use connection::Connection;
pub use connection::RedisMode;
pub use locks::LeaseLookup;
use prediction_contract::cache_key::{CacheKey, KeySpace, LEASE_PREFIX};

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
