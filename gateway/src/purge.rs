//! Purges reach every gateway: Redis is shared, and a NATS broadcast tells every
//! gateway to drop the purged entries from its in-process tier. Each gateway
//! acknowledges, and the purge answers once the acknowledgements are in, so a
//! request made after it sees no purged entry anywhere (a gateway that misses the
//! broadcast still drops them within `--local-ttl`).

use futures::StreamExt;
use prediction_contract::ModelName;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::cache::PredictionCache;
use crate::discovery::gather_replies;

/// Gateways tell each other to drop purged predictions from their in-process
/// tier on this subject (gateway to gateway: workers never see it).
pub const CACHE_PURGE_SUBJECT: &str = "gateway.cache.purge";

/// A purge, as broadcast to every gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeNotice {
    /// Gateways of other deployments (other key prefixes) ignore it.
    pub key_prefix: String,
    pub model: String,
    /// One entry's key, or every entry of the model when absent.
    pub key: Option<String>,
}

/// Tells every gateway (this one included) about a purge and waits for their
/// acknowledgements; returns how many gateways acknowledged.
pub async fn broadcast(nats: &async_nats::Client, notice: &PurgeNotice) -> usize {
    let payload = serde_json::to_vec(notice).expect("a notice always serialises");
    let acknowledged = gather_replies(nats, CACHE_PURGE_SUBJECT.to_owned(), payload)
        .await
        .len();
    if acknowledged == 0 {
        warn!("no gateway acknowledged a purge; they drop the entries within --local-ttl");
    }
    acknowledged
}

/// Subscribes to purge broadcasts (before returning, so no purge made after it is
/// missed) and applies them to this gateway's in-process tier.
pub async fn listen(
    nats: &async_nats::Client,
    cache: PredictionCache,
) -> Result<JoinHandle<()>, async_nats::SubscribeError> {
    let mut notices = nats.subscribe(CACHE_PURGE_SUBJECT).await?;
    let nats = nats.clone();
    Ok(tokio::spawn(async move {
        while let Some(message) = notices.next().await {
            let Ok(notice) = serde_json::from_slice::<PurgeNotice>(&message.payload) else {
                debug!("ignoring a malformed purge notice");
                continue;
            };
            if notice.key_prefix != cache.keys().prefix() {
                continue;
            }
            match (notice.key, ModelName::parse(&notice.model)) {
                (Some(key), _) => cache.forget_key_locally(&key),
                (None, Ok(model)) => cache.forget_model_locally(&model),
                (None, Err(_)) => debug!("ignoring a purge notice for an invalid model"),
            }
            if let Some(reply) = message.reply
                && let Err(err) = nats.publish(reply, "{}".into()).await
            {
                debug!(error = %err, "could not acknowledge a purge");
            }
        }
    }))
}
