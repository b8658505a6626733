//! In-process request coalescing: concurrent identical misses share one
//! computation, and, for a streamed answer, its chunks as they come.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tracing::Instrument;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use prometheus::IntGauge;

use crate::model_call::generation::Generation;

/// Whether a caller started the computation it got the result of, or joined one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
}

/// The computations in flight, by key. Each runs in a task of its own, so it
/// completes (and its result is stored) even if every request waiting for it goes
/// away.
pub struct InFlight<T: Clone> {
    /// Keyed by an `Arc` the computation's task shares: one allocation per call.
    calls: Mutex<HashMap<Arc<str>, Call<T>>>,
    next_id: AtomicU64,
    /// What a waiter gets if the computation's task panicked.
    on_panic: fn() -> T,
    keys_in_flight: IntGauge,
}

struct Call<T: Clone> {
    /// Tells this call from a newer one under the same key.
    id: u64,
    started_at: Instant,
    outcome: Shared<BoxFuture<'static, T>>,
    /// A streamed answer's chunks as they come, for joiners to follow.
    generation: Option<Arc<Generation>>,
}

/// What joining or starting a computation gave.
type Started<T> = (Shared<BoxFuture<'static, T>>, Option<Arc<Generation>>, Role);

impl<T: Clone> std::fmt::Debug for InFlight<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = self.calls.lock().map(|calls| calls.len()).unwrap_or(0);
        f.debug_struct("InFlight").field("keys", &keys).finish()
    }
}

impl<T: Clone + Send + Sync + 'static> InFlight<T> {
    pub fn new(on_panic: fn() -> T, keys_in_flight: IntGauge) -> Arc<Self> {
        Arc::new(Self {
            calls: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            on_panic,
            keys_in_flight,
        })
    }

    pub fn is_in_flight(&self, key: &str) -> bool {
        self.calls.lock().expect("not poisoned").contains_key(key)
    }

    /// Joins the computation of `key` in flight, unless it started before
    /// `not_before` (a caller that wants a newer answer than one already being
    /// computed); otherwise starts `compute` as the computation others will join.
    pub async fn compute_or_join<F, Fut>(
        self: &Arc<Self>,
        key: Arc<str>,
        not_before: Option<Instant>,
        compute: F,
    ) -> (T, Role)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        let (outcome, _, role) = self.start_or_join(key, not_before, || (compute(), None));
        (outcome.await, role)
    }

    /// The same for a streamed answer: joins the generation of `key` in flight,
    /// or starts `compute` with a new [`Generation`] for its chunks. Returns at
    /// once: the generation to follow (none if the computation joined streams
    /// nothing), the outcome to await, and the role.
    pub fn generate_or_join<F, Fut>(
        self: &Arc<Self>,
        key: Arc<str>,
        not_before: Option<Instant>,
        compute: F,
    ) -> Started<T>
    where
        F: FnOnce(Arc<Generation>) -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        self.start_or_join(key, not_before, || {
            let generation = Generation::new();
            (compute(Arc::clone(&generation)), Some(generation))
        })
    }

    fn start_or_join<F, Fut>(
        self: &Arc<Self>,
        key: Arc<str>,
        not_before: Option<Instant>,
        make: F,
    ) -> Started<T>
    where
        F: FnOnce() -> (Fut, Option<Arc<Generation>>),
        Fut: Future<Output = T> + Send + 'static,
    {
        let mut calls = self.calls.lock().expect("not poisoned");
        if let Some(call) = calls.get(&*key)
            && not_before.is_none_or(|t| call.started_at >= t)
        {
            return (
                call.outcome.clone(),
                call.generation.clone(),
                Role::Follower,
            );
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (compute, generation) = make();
        let task = tokio::spawn({
            let this = Arc::clone(self);
            let key = Arc::clone(&key);
            // Boxed: a computation's future is kilobytes, which the task
            // would otherwise copy around as it is spawned. In the leader's
            // span: the model call it makes belongs to the leader's trace (a
            // no-op with tracing off).
            let computation = Box::pin(compute.in_current_span());
            async move {
                let outcome = computation.await;
                this.finish(&key, id);
                outcome
            }
        });
        let on_panic = self.on_panic;
        let outcome = async move { task.await.unwrap_or_else(|_| on_panic()) }
            .boxed()
            .shared();
        // A newer call replaces an older one: later joiners get the newer
        // answer, while the older call's waiters keep theirs.
        calls.insert(
            key,
            Call {
                id,
                started_at: Instant::now(),
                outcome: outcome.clone(),
                generation: generation.clone(),
            },
        );
        self.keys_in_flight.set(calls.len() as i64);
        (outcome, generation, Role::Leader)
    }

    fn finish(&self, key: &str, id: u64) {
        let mut calls = self.calls.lock().expect("not poisoned");
        if calls.get(key).is_some_and(|call| call.id == id) {
            calls.remove(key);
        }
        self.keys_in_flight.set(calls.len() as i64);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;

    fn in_flight() -> Arc<InFlight<u32>> {
        InFlight::new(|| 0, IntGauge::new("test_keys", "test").unwrap())
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_computation() {
        let in_flight = in_flight();
        let runs = Arc::new(AtomicUsize::new(0));
        let callers = (0..50).map(|_| {
            let in_flight = Arc::clone(&in_flight);
            let runs = Arc::clone(&runs);
            async move {
                in_flight
                    .compute_or_join("k".into(), None, || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        7
                    })
                    .await
            }
        });
        let results = futures::future::join_all(callers).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(results.iter().all(|(value, _)| *value == 7));
        let leaders = results
            .iter()
            .filter(|(_, role)| *role == Role::Leader)
            .count();
        assert_eq!(leaders, 1);
        assert!(!in_flight.is_in_flight("k"), "finished calls are forgotten");
    }

    #[tokio::test]
    async fn a_caller_wanting_a_newer_answer_starts_its_own_call() {
        let in_flight = in_flight();
        let first = {
            let in_flight = Arc::clone(&in_flight);
            tokio::spawn(async move {
                in_flight
                    .compute_or_join("k".into(), None, || async {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        1
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (value, role) = in_flight
            .compute_or_join("k".into(), Some(Instant::now()), || async { 2 })
            .await;
        assert_eq!((value, role), (2, Role::Leader));
        assert_eq!(first.await.unwrap(), (1, Role::Leader));
    }

    #[tokio::test]
    async fn a_panicking_computation_gives_every_waiter_the_fallback() {
        let in_flight = in_flight();
        let (value, _) = in_flight
            .compute_or_join("k".into(), None, || async { panic!("model exploded") })
            .await;
        assert_eq!(value, 0);
    }
}
