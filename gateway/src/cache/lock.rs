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
//! computation adopts the lease when it finds its own gateway's token. A request
//! whose lookup finds this gateway's lease but no computation of the key running
//! here reads the key again before it computes: the computation that held the
//! lease may have stored its entry over it between the lookup and then. The lock
//! beside an entry holds a token of its own per computation. Only the holder
//! extends or releases a lock by itself (both by a Lua compare-and-act), so a
//! gateway whose lock expired never releases another's; the holder extends it
//! every third of its TTL while its model call runs, however many attempts it
//! takes, and a holder that dies stops extending: the lock expires within one TTL.
//!
//! This module holds what the lock is; the commands that take, extend, release
//! and watch it are [`RedisStore`](super::store::RedisStore)'s, like every other.

use std::sync::Arc;
use std::time::Duration;

use super::CachedPrediction;

/// Where a computation's lock lives; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockSite {
    /// A lease under the entry's own key: there is no entry.
    Lease,
    /// A key beside the entry, which stays readable.
    Beside,
}

/// A held lock. Keep it alive through a long computation with
/// `PredictionCache::extend_while`; release it with `PredictionCache::release`
/// or with the store of the entry. If dropped instead, it expires by itself (or a
/// lease is adopted by this gateway's next computation of the key).
#[derive(Debug)]
pub struct LockGuard {
    pub(super) lock_key: String,
    /// What the lock key holds while it is ours.
    pub(super) value: Arc<str>,
    pub(super) site: LockSite,
}

/// What trying to take a key's lock found.
#[derive(Debug)]
pub enum LockClaim {
    /// The lock is this computation's (taken, or adopted from this gateway).
    Taken(LockGuard),
    /// Another gateway computes it; wait for it.
    HeldElsewhere,
    /// At the lease site there is an entry after all, so nothing was taken: the
    /// lock goes beside it.
    EntryInTheWay,
    /// Redis could not be asked: compute without the lock.
    Unavailable,
}

/// A try for a key's lock and what Redis held under the key meanwhile.
#[derive(Debug)]
pub struct Claim {
    pub lock: LockClaim,
    /// The entry read in the same round trip (or, without Redis, this gateway's
    /// fresh copy): someone may have stored it since the request looked.
    pub entry: Option<Arc<CachedPrediction>>,
}

/// How the lock of a key another gateway computes stands, read as this gateway
/// marks that it waits (see `PredictionCache::mark_waiting`).
#[derive(Debug)]
pub struct LockState {
    /// How long the lock lives unless extended; `None`: it is gone (its holder
    /// finished or died).
    pub held_for: Option<Duration>,
    /// The entry under the key, if one is there (at the lease site: what the
    /// holder stored).
    pub entry: Option<Arc<CachedPrediction>>,
}
