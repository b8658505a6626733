//! The compute lock: one gateway computes a prediction while the others wait.
//!
//! Where the lock lives depends on what Redis holds under the entry's key:
//!
//! - **No entry** (the common miss): the lock is a *lease* stored under the entry's
//!   own key, `lease:<token>`. The lookup itself takes it: `SET <key> <lease> NX PX
//!   <ttl> GET` returns the entry if there is one (and changes nothing), or takes
//!   the lease, or returns the lease someone else holds: a miss costs no round trip
//!   and no script for its lock, and storing the entry over the lease releases it.
//! - **An entry exists** (a stale entry being refreshed, an old model version, a
//!   client asking for a newer prediction): the entry must stay readable, so the
//!   lock is a separate key beside it, `SET <lock key> <token> NX PX <ttl>`.
//!
//! A lease's token names the gateway process, not the request: the lookup takes
//! the lease before the in-process coalescing decides which request computes, so a
//! request that took it may join a computation already running here instead; that
//! computation adopts the lease when it finds its own gateway's token. The lock
//! beside an entry holds a token of its own per computation. Only the holder
//! extends or releases a lock by itself (both by a Lua compare-and-act), so a
//! gateway whose lock expired never releases another's; the holder extends it
//! every third of its TTL while its model call runs, however many attempts it
//! takes, and a holder that dies stops extending: the lock expires within one TTL.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use prediction_contract::{CacheKey, LEASE_PREFIX};
use redis::aio::ConnectionManager;
use tracing::warn;

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

/// Where a computation's lock lives; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockSite {
    /// A lease under the entry's own key: there is no entry.
    Lease,
    /// A key beside the entry, which stays readable.
    Beside,
}

/// Takes compute locks in Redis for this gateway.
#[derive(Clone)]
pub struct ComputeLock {
    redis: ConnectionManager,
    ttl: Duration,
    /// `lease:<token>`, the value of this gateway's leases; the token is random,
    /// made once per process.
    lease: Arc<str>,
}

impl std::fmt::Debug for ComputeLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComputeLock")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// What trying to take a lock found.
#[derive(Debug)]
pub enum LockAttempt {
    /// The lock is this request's (taken, or adopted from this gateway).
    Acquired(LockGuard),
    /// Another gateway computes it; [`ComputeLock::wait_on`] before waiting.
    HeldElsewhere,
    /// At the lease site: there is an entry after all (its bytes); nothing was
    /// taken. At the other site this is never returned: the entry is peeked.
    Entry(Vec<u8>),
}

/// What [`ComputeLock::wait_on`] found.
#[derive(Debug)]
pub enum LockState {
    /// The lock still lives, for this long unless extended.
    Held(Duration),
    /// The lock is gone: its holder finished (and stored, or failed) or died.
    Gone,
    /// At the lease site: the holder stored this entry.
    Stored(Vec<u8>),
}

impl ComputeLock {
    pub fn new(redis: ConnectionManager, ttl: Duration) -> Self {
        Self {
            redis,
            ttl,
            lease: format!("{LEASE_PREFIX}{}", uuid::Uuid::new_v4()).into(),
        }
    }

    /// Whether `value`, read under an entry's key, is a lease rather than an entry.
    pub fn is_lease(value: &[u8]) -> bool {
        value.starts_with(LEASE_PREFIX.as_bytes())
    }

    /// Reads the entry under `key` or, if there is none, takes (or adopts) its
    /// lease, in one command.
    pub async fn lookup_or_lease(&self, key: &CacheKey) -> Result<LockAttempt, redis::RedisError> {
        let mut redis = self.redis.clone();
        let found: Option<Vec<u8>> = redis::cmd("SET")
            .arg(key.as_str())
            .arg(&*self.lease)
            .arg("NX")
            .arg("PX")
            .arg(self.ttl_ms())
            .arg("GET")
            .query_async(&mut redis)
            .await?;
        let ours = || {
            let guard = self.guard(
                key.as_str().to_owned(),
                LockSite::Lease,
                Arc::clone(&self.lease),
            );
            LockAttempt::Acquired(guard)
        };
        Ok(match found {
            None => ours(),
            // Taken by a request of this gateway that then joined this key's
            // computation here rather than run one: adopt it.
            Some(value) if *value == *self.lease.as_bytes() => ours(),
            Some(value) if Self::is_lease(&value) => LockAttempt::HeldElsewhere,
            Some(entry) => LockAttempt::Entry(entry),
        })
    }

    /// Tries to take the lock beside `key`'s entry and, in the same round trip,
    /// reads the entry (someone may have stored it since the caller looked). The
    /// entry read is `None` if there is none or only a lease.
    ///
    /// This lock is never adopted: its token is the request's own, so a second
    /// computation of the key in this gateway (a client that asked for a newer
    /// prediction than the one being computed) waits for the first like any
    /// other gateway would.
    pub async fn try_acquire_beside(
        &self,
        key: &CacheKey,
    ) -> Result<(LockAttempt, Option<Vec<u8>>), redis::RedisError> {
        let lock_key = key.lock_key();
        let token: Arc<str> = uuid::Uuid::new_v4().to_string().into();
        let mut redis = self.redis.clone();
        let (taken, entry): (Option<String>, Option<Vec<u8>>) = redis::pipe()
            .cmd("SET")
            .arg(&lock_key)
            .arg(&*token)
            .arg("NX")
            .arg("PX")
            .arg(self.ttl_ms())
            .cmd("GET")
            .arg(key.as_str())
            .query_async(&mut redis)
            .await?;
        let entry = entry.filter(|value| !Self::is_lease(value));
        if taken.is_some() {
            return Ok((
                LockAttempt::Acquired(self.guard(lock_key, LockSite::Beside, token)),
                entry,
            ));
        }
        Ok((LockAttempt::HeldElsewhere, entry))
    }

    /// The guard of a lock just taken, holding `value`.
    fn guard(&self, lock_key: String, site: LockSite, value: Arc<str>) -> LockGuard {
        LockGuard {
            redis: self.redis.clone(),
            lock_key,
            value,
            site,
            ttl: self.ttl,
        }
    }

    /// Tells the gateway holding `key`'s lock at `site` that someone waits for its
    /// outcome (it announces only then), and reads how the lock stands. Call it
    /// once subscribed to the announcement: a holder that sees the mark announces
    /// after it, and one that finished before it had stored the entry first.
    pub async fn wait_on(
        &self,
        key: &CacheKey,
        site: LockSite,
    ) -> Result<LockState, redis::RedisError> {
        let mut redis = self.redis.clone();
        let mut pipeline = redis::pipe();
        pipeline
            .cmd("SET")
            .arg(key.waiting_key())
            .arg(1)
            .arg("PX")
            .arg(self.ttl_ms())
            .ignore();
        let pttl = match site {
            LockSite::Beside => {
                let (pttl,): (i64,) = pipeline
                    .cmd("PTTL")
                    .arg(key.lock_key())
                    .query_async(&mut redis)
                    .await?;
                pttl
            }
            LockSite::Lease => {
                let (value, pttl): (Option<Vec<u8>>, i64) = pipeline
                    .cmd("GET")
                    .arg(key.as_str())
                    .cmd("PTTL")
                    .arg(key.as_str())
                    .query_async(&mut redis)
                    .await?;
                match value {
                    None => return Ok(LockState::Gone),
                    Some(value) if !Self::is_lease(&value) => return Ok(LockState::Stored(value)),
                    Some(_) => pttl,
                }
            }
        };
        // -2: the key is gone; -1 cannot happen (locks always expire).
        Ok(u64::try_from(pttl).ok().map_or(LockState::Gone, |ms| {
            LockState::Held(Duration::from_millis(ms))
        }))
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }
}

/// A held lock. Keep it alive through a long computation with
/// [`extend_while`](LockGuard::extend_while); release it with
/// [`release`](LockGuard::release) or with the store
/// ([`release_in`](LockGuard::release_in)). If dropped instead, it expires by
/// itself (or a lease is adopted by this gateway's next computation of the key).
#[derive(Debug)]
pub struct LockGuard {
    redis: ConnectionManager,
    lock_key: String,
    /// What the lock key holds while it is ours.
    value: Arc<str>,
    site: LockSite,
    ttl: Duration,
}

impl LockGuard {
    /// Runs `work`, extending the lock every third of its TTL until it is done,
    /// however long it takes. Driven by the computation itself rather than a task
    /// of its own, so a lock costs no task and stops being extended when the
    /// computation stops, whatever the reason.
    pub async fn extend_while<F: Future>(&self, work: F) -> F::Output {
        tokio::pin!(work);
        tokio::select! {
            biased;
            output = &mut work => output,
            () = self.keep_extended() => work.await,
        }
    }

    /// Extends the lock every third of its TTL; returns only if the lock was
    /// lost (the computation carries on without it).
    async fn keep_extended(&self) {
        let ttl_ms = u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut redis = self.redis.clone();
        loop {
            tokio::time::sleep(self.ttl / 3).await;
            match EXTEND_SCRIPT
                .key(&self.lock_key)
                .arg(&*self.value)
                .arg(ttl_ms)
                .invoke_async::<i64>(&mut redis)
                .await
            {
                Ok(1) => {}
                Ok(_) => {
                    warn!(
                        lock_key = self.lock_key,
                        "compute lock lost before the model call ended"
                    );
                    return;
                }
                // A passing Redis error: the next tick tries again while the lock lives.
                Err(err) => {
                    warn!(lock_key = self.lock_key, error = %err, "could not extend the compute lock");
                }
            }
        }
    }

    /// Releases the lock without storing anything (the computation failed or was
    /// not to be stored).
    pub async fn release(mut self) {
        if let Err(err) = RELEASE_SCRIPT
            .key(&self.lock_key)
            .arg(&*self.value)
            .invoke_async::<i64>(&mut self.redis)
            .await
        {
            warn!(lock_key = self.lock_key, error = %err, "could not release the compute lock; it will expire");
        }
    }

    /// Adds this lock's release to `pipeline`, after the command storing the
    /// entry, so it costs no round trip of its own; then takes the mark of
    /// gateways waiting on it (see [`ComputeLock::wait_on`]): the pipeline's one
    /// value says whether anyone waits.
    ///
    /// A lease is released by the store itself, which overwrites it. The lock
    /// beside an entry goes by a plain `DEL`, not the compare-and-delete of
    /// [`release`](Self::release): Redis runs a connection's commands in order, so
    /// the entry is stored before the lock goes, and if this lock had expired and
    /// another gateway's taken its place, deleting that one costs nothing either:
    /// whoever takes the lock next finds the entry in the same round trip.
    pub fn release_in(self, pipeline: &mut redis::Pipeline, waiting_key: &str) {
        if self.site == LockSite::Beside {
            pipeline.cmd("DEL").arg(&self.lock_key).ignore();
        }
        pipeline.cmd("GETDEL").arg(waiting_key);
    }
}
