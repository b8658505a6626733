//! Purges reach every gateway: Redis is shared, and a NATS broadcast tells the
//! other gateways to drop the purged entries from their in-process tier at once
//! (should it be lost, those entries still expire within `--local-ttl`).

use futures::StreamExt;
use prediction_contract::ModelName;
use prediction_contract::subjects::CACHE_PURGE_SUBJECT;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::cache::PredictionCache;

/// A purge, as broadcast to every gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeNotice {
    /// Gateways of other deployments (other key prefixes) ignore it.
    pub key_prefix: String,
    pub model: String,
    /// One entry's key, or every entry of the model when absent.
    pub key: Option<String>,
}

/// Tells every gateway (this one included) about a purge.
pub async fn broadcast(nats: &async_nats::Client, notice: &PurgeNotice) {
    let payload = serde_json::to_vec(notice).expect("a notice always serialises");
    let sent = async {
        nats.publish(CACHE_PURGE_SUBJECT, payload.into()).await?;
        nats.flush().await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    };
    if let Err(err) = sent.await {
        warn!(error = %err, "could not broadcast a purge; other gateways drop the entries within --local-ttl");
    }
}

/// Subscribes to purge broadcasts (before returning, so no purge made after it is
/// missed) and applies them to this gateway's in-process tier.
pub async fn listen(
    nats: &async_nats::Client,
    cache: PredictionCache,
    key_prefix: String,
) -> Result<JoinHandle<()>, async_nats::SubscribeError> {
    let mut notices = nats.subscribe(CACHE_PURGE_SUBJECT).await?;
    Ok(tokio::spawn(async move {
        while let Some(message) = notices.next().await {
            let Ok(notice) = serde_json::from_slice::<PurgeNotice>(&message.payload) else {
                debug!("ignoring a malformed purge notice");
                continue;
            };
            if notice.key_prefix != key_prefix {
                continue;
            }
            match (notice.key, ModelName::parse(&notice.model)) {
                (Some(key), _) => cache.forget_key_locally(&key).await,
                (None, Ok(model)) => cache.forget_model_locally(&model),
                (None, Err(_)) => debug!("ignoring a purge notice for an invalid model"),
            }
        }
    }))
}
