//! A generation in flight: the chunks of a streamed answer as the worker
//! produces them, kept for everyone who listens, so that a request joining it
//! late first gets what was already produced, then the rest live; and its end.
//!
//! Each listener holds a [`Listener`]; when the last one goes before the end
//! (every client disconnected), the generation is cancelled: its model call
//! stops, tells the worker, and stores nothing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::watch;

use super::PublicFailure;
use crate::cache::CachedPrediction;

/// How a generation ended.
pub type Ended = Result<Arc<CachedPrediction>, Arc<PublicFailure>>;

/// What a listener gets next.
#[derive(Debug, Clone)]
pub enum Event {
    /// A chunk, as the worker sent it (JSON).
    Chunk(Bytes),
    /// The end: the complete entry, or the failure.
    End(Ended),
}

#[derive(Debug, Default)]
struct State {
    chunks: Vec<Bytes>,
    end: Option<Ended>,
}

/// The chunks produced so far and the end, once there is one.
#[derive(Debug)]
pub struct Generation {
    state: Mutex<State>,
    /// Moves on at every chunk and at the end, waking the listeners.
    version: watch::Sender<u64>,
    listeners: AtomicUsize,
    /// Set when the last listener went before the end.
    cancelled: watch::Sender<bool>,
}

impl Default for Generation {
    fn default() -> Self {
        Self {
            state: Mutex::new(State::default()),
            version: watch::Sender::new(0),
            listeners: AtomicUsize::new(0),
            cancelled: watch::Sender::new(false),
        }
    }
}

impl Generation {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Adds a chunk the worker sent.
    pub fn push(&self, chunk: Bytes) {
        self.state.lock().expect("not poisoned").chunks.push(chunk);
        self.version.send_modify(|version| *version += 1);
    }

    /// Records the end (the first one counts).
    pub fn finish(&self, end: Ended) {
        let mut state = self.state.lock().expect("not poisoned");
        if state.end.is_none() {
            state.end = Some(end);
            drop(state);
            self.version.send_modify(|version| *version += 1);
        }
    }

    /// How many chunks have come so far.
    pub fn chunks_so_far(&self) -> usize {
        self.state.lock().expect("not poisoned").chunks.len()
    }

    /// A listener from the first chunk on.
    pub fn listen(self: &Arc<Self>) -> Listener {
        self.listeners.fetch_add(1, Ordering::SeqCst);
        Listener {
            generation: Arc::clone(self),
            next: 0,
            version: self.version.subscribe(),
        }
    }

    /// Returns once nobody listens any more and the generation has not ended:
    /// the model call then stops.
    pub async fn cancelled(&self) {
        let mut cancelled = self.cancelled.subscribe();
        let _ = cancelled.wait_for(|cancelled| *cancelled).await;
    }

    fn leave(&self) {
        if self.listeners.fetch_sub(1, Ordering::SeqCst) == 1 {
            let ended = self.state.lock().expect("not poisoned").end.is_some();
            if !ended {
                self.cancelled.send_replace(true);
            }
        }
    }
}

/// One listener of a [`Generation`]; leaves it when dropped.
#[derive(Debug)]
pub struct Listener {
    generation: Arc<Generation>,
    /// The index of the next chunk it gets.
    next: usize,
    version: watch::Receiver<u64>,
}

impl Listener {
    /// The next chunk, or the end (again at every call once ended).
    pub async fn next(&mut self) -> Event {
        loop {
            {
                let state = self.generation.state.lock().expect("not poisoned");
                if let Some(chunk) = state.chunks.get(self.next) {
                    self.next += 1;
                    return Event::Chunk(chunk.clone());
                }
                if let Some(end) = &state.end {
                    return Event::End(end.clone());
                }
                self.version.mark_unchanged();
            }
            if self.version.changed().await.is_err() {
                // The generation is gone without an end: cannot happen while
                // this listener holds it; said as a failure all the same.
                return Event::End(Err(Arc::new(PublicFailure::internal())));
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.generation.leave();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn entry() -> Arc<CachedPrediction> {
        Arc::new(CachedPrediction {
            prediction: Bytes::from_static(b"[]"),
            model_version: "1".into(),
            computed_at_ms: 0,
            fresh_for: Duration::from_secs(1),
        })
    }

    #[tokio::test]
    async fn a_late_listener_gets_every_chunk_from_the_first_then_the_rest_live() {
        let generation = Generation::new();
        let mut early = generation.listen();
        generation.push(Bytes::from_static(b"1"));
        generation.push(Bytes::from_static(b"2"));
        let mut late = generation.listen();
        let live = {
            let generation = Arc::clone(&generation);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                generation.push(Bytes::from_static(b"3"));
                generation.finish(Ok(entry()));
            })
        };
        for listener in [&mut early, &mut late] {
            let mut got = Vec::new();
            loop {
                match listener.next().await {
                    Event::Chunk(chunk) => got.push(chunk),
                    Event::End(end) => {
                        assert!(end.is_ok());
                        break;
                    }
                }
            }
            assert_eq!(got, [&b"1"[..], b"2", b"3"]);
        }
        live.await.unwrap();
    }

    #[tokio::test]
    async fn the_last_listener_leaving_before_the_end_cancels_it() {
        let generation = Generation::new();
        let (one, two) = (generation.listen(), generation.listen());
        drop(one);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), generation.cancelled())
                .await
                .is_err(),
            "one still listens"
        );
        drop(two);
        tokio::time::timeout(Duration::from_secs(1), generation.cancelled())
            .await
            .expect("cancelled once nobody listens");
    }

    #[tokio::test]
    async fn leaving_after_the_end_cancels_nothing() {
        let generation = Generation::new();
        let listener = generation.listen();
        generation.finish(Ok(entry()));
        drop(listener);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), generation.cancelled())
                .await
                .is_err()
        );
    }
}
