//! The compute lock's commands (what the lock is: `cache::lock`): the lookup
//! that takes a lease, the lock beside an entry, the waiting mark, and the
//! lock's extension and release by compare-and-act scripts.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use prediction_contract::cache_key::CacheKey;
use tracing::warn;

use super::{Gate, RedisStore, Unavailable};
use crate::cache::lock::{LockGuard, LockSite};

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

/// What the lookup that may take the lease found under an entry's key.
#[derive(Debug)]
pub enum LeaseLookup {
    /// An entry (its bytes): nothing was taken.
    Entry(Vec<u8>),
    /// No entry: the lease is this gateway's now, just taken.
    Taken(LockGuard),
    /// No entry: this gateway held the lease already (a computation of the key
    /// here took it, or a request that then joined one); it is adopted.
    Adopted(LockGuard),
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

impl RedisStore {
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
        let ours = || LockGuard {
            lock_key: key.as_str().to_owned(),
            value: Arc::clone(&self.lease),
            site: LockSite::Lease,
        };
        Ok(match found {
            None => LeaseLookup::Taken(ours()),
            Some(value) if *value == *self.lease.as_bytes() => LeaseLookup::Adopted(ours()),
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
}
