//! The compute lock: one gateway computes a prediction while the others wait.
//!
//! `SET <lock key> <token> NX PX <ttl>` takes the lock; only the holder of the
//! random token may extend or release it (both by a Lua compare-and-act), so a
//! gateway whose lock expired can never release another's. The holder extends the
//! lock every third of its TTL while its model call runs, however many attempts it
//! takes; a holder that dies stops extending and the lock expires within one TTL.

use std::sync::LazyLock;
use std::time::Duration;

use prediction_contract::CacheKey;
use redis::aio::ConnectionManager;
use tokio::task::JoinHandle;
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

/// Takes compute locks in Redis.
// Hashed once (redis-rs computes a script's SHA-1 in `Script::new`), not per miss.
static EXTEND_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(EXTEND));
static RELEASE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RELEASE));

#[derive(Clone)]
pub struct ComputeLock {
    redis: ConnectionManager,
    ttl: Duration,
}

impl std::fmt::Debug for ComputeLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComputeLock")
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// The result of trying to take a lock.
#[derive(Debug)]
pub enum LockAttempt {
    Acquired(LockGuard),
    /// Another gateway holds it; it expires in this long unless extended.
    /// Another gateway computes it; [`ComputeLock::wait_on`] before waiting.
    HeldElsewhere,
}

impl ComputeLock {
    pub fn new(redis: ConnectionManager, ttl: Duration) -> Self {
        Self { redis, ttl }
    }

    /// Tries to take `key`'s lock and, in the same round trip, reads the entry
    /// under `key` (someone may have stored it since the caller looked).
    pub async fn try_acquire_and_peek(
        &self,
        key: &CacheKey,
    ) -> Result<(LockAttempt, Option<Vec<u8>>), redis::RedisError> {
        let lock_key = key.lock_key();
        let token = uuid::Uuid::new_v4().to_string();
        let ttl_ms = self.ttl_ms();
        let mut redis = self.redis.clone();
        let (acquired, entry): (Option<String>, Option<Vec<u8>>) = redis::pipe()
            .cmd("SET")
            .arg(&lock_key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .cmd("GET")
            .arg(key.as_str())
            .query_async(&mut redis)
            .await?;
        if acquired.is_some() {
            let renewal = tokio::spawn(keep_extended(
                self.redis.clone(),
                lock_key.clone(),
                token.clone(),
                self.ttl,
            ));
            let guard = LockGuard {
                redis: self.redis.clone(),
                lock_key,
                token,
                renewal,
            };
            return Ok((LockAttempt::Acquired(guard), entry));
        }
        Ok((LockAttempt::HeldElsewhere, entry))
    }

    /// Tells the gateway holding `key`'s lock that someone waits for its outcome
    /// (it announces only then), and returns how long its lock still lives:
    /// `None` when it is gone (the holder finished, or died). Call it once
    /// subscribed to the announcement: a holder that sees the mark announces
    /// after it, and one that finished before it had stored the entry first.
    pub async fn wait_on(&self, key: &CacheKey) -> Result<Option<Duration>, redis::RedisError> {
        let mut redis = self.redis.clone();
        let ((), pttl): ((), i64) = redis::pipe()
            .cmd("SET")
            .arg(key.waiting_key())
            .arg(1)
            .arg("PX")
            .arg(self.ttl_ms())
            .cmd("PTTL")
            .arg(key.lock_key())
            .query_async(&mut redis)
            .await?;
        // -2: the lock is gone; -1 cannot happen (locks always expire).
        Ok(u64::try_from(pttl).ok().map(Duration::from_millis))
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }
}

async fn keep_extended(
    mut redis: ConnectionManager,
    lock_key: String,
    token: String,
    ttl: Duration,
) {
    let script = &*EXTEND_SCRIPT;
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
    let mut every = tokio::time::interval(ttl / 3);
    every.tick().await; // the first tick is immediate
    loop {
        every.tick().await;
        match script
            .key(&lock_key)
            .arg(&token)
            .arg(ttl_ms)
            .invoke_async::<i64>(&mut redis)
            .await
        {
            Ok(1) => {}
            Ok(_) => {
                warn!(lock_key, "compute lock lost before the model call ended");
                return;
            }
            // A passing Redis error: the next tick tries again while the lock lives.
            Err(err) => warn!(lock_key, error = %err, "could not extend the compute lock"),
        }
    }
}

/// A held lock. Release it with [`release`](LockGuard::release); if dropped
/// instead, it stops being extended and expires by itself.
#[derive(Debug)]
pub struct LockGuard {
    redis: ConnectionManager,
    lock_key: String,
    token: String,
    renewal: JoinHandle<()>,
}

impl LockGuard {
    pub async fn release(mut self) {
        self.renewal.abort();
        if let Err(err) = RELEASE_SCRIPT
            .key(&self.lock_key)
            .arg(&self.token)
            .invoke_async::<i64>(&mut self.redis)
            .await
        {
            warn!(lock_key = self.lock_key, error = %err, "could not release the compute lock; it will expire");
        }
    }
}

impl LockGuard {
    /// Adds this lock's release to `pipeline`, so it costs no round trip of its
    /// own, then takes the mark of gateways waiting on it (see
    /// [`ComputeLock::wait_on`]): the pipeline's one value says whether anyone
    /// waits. `EVAL` with the script's text rather than `EVALSHA`: a pipeline
    /// cannot load a script that a restarted Redis has forgotten.
    pub fn release_in(self, pipeline: &mut redis::Pipeline, waiting_key: &str) {
        self.renewal.abort();
        pipeline
            .cmd("EVAL")
            .arg(RELEASE)
            .arg(1)
            .arg(&self.lock_key)
            .arg(&self.token)
            .ignore()
            .cmd("GET")
            .arg(waiting_key)
            .cmd("DEL")
            .arg(waiting_key)
            .ignore();
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.renewal.abort();
    }
}
