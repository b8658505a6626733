//! Announcements: how a gateway that computed a key tells the gateways waiting
//! for it how the computation ended, over NATS, so they need not poll Redis.
//!
//! Subject: `gateway.cache.ready.<CacheKey::subject_token>` (see
//! [`crate::nats`]); header `Outcome`:
//! `ok` (payload: the cache entry) or `error` (payload: the [`PublicFailure`] as
//! JSON). Gateway to gateway only: workers never see these.

use std::sync::Arc;

use async_nats::{HeaderMap, HeaderName, Subscriber};

use crate::cache::{CacheKey, CachedPrediction};
use crate::model_call::PublicFailure;
use crate::nats::Nats;

const OUTCOME: HeaderName = HeaderName::from_static("Outcome");

/// How a computation ended, as announced.
pub type Announced = Result<Arc<CachedPrediction>, Arc<PublicFailure>>;

/// The announcements of `key`'s computation from now on, or `None` if they
/// cannot be listened for (NATS is down).
pub async fn listen(nats: &Nats, key: &CacheKey) -> Option<Subscriber> {
    nats.announcements(&key.subject_token()).await
}

/// Tells gateways waiting on `key` how its computation ended. A failure to send
/// is only logged: waiters fall back to the lock's expiry.
pub async fn announce(nats: &Nats, key: &CacheKey, outcome: &Announced) {
    let mut headers = HeaderMap::new();
    let payload = match outcome {
        Ok(entry) => {
            headers.insert(OUTCOME, "ok");
            entry.encode()
        }
        Err(failure) => {
            headers.insert(OUTCOME, "error");
            serde_json::to_vec(failure.as_ref()).expect("a failure always serialises")
        }
    };
    nats.announce(&key.subject_token(), headers, payload.into())
        .await;
}

/// Reads an announcement; `None` if it is not one this gateway understands.
pub fn decode(message: &async_nats::Message) -> Option<Announced> {
    match message.headers.as_ref()?.get(OUTCOME)?.as_str() {
        "ok" => CachedPrediction::decode(&message.payload)
            .ok()
            .map(|entry| Ok(Arc::new(entry))),
        "error" => serde_json::from_slice::<PublicFailure>(&message.payload)
            .ok()
            .map(|failure| Err(Arc::new(failure))),
        _ => None,
    }
}
