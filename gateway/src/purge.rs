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
use crate::nats::Nats;

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
pub async fn broadcast(nats: &Nats, notice: &PurgeNotice) -> usize {
    let payload = serde_json::to_vec(notice).expect("a notice always serialises");
    let acknowledged = nats.broadcast_purge(payload.into()).await.len();
    if acknowledged == 0 {
        warn!("no gateway acknowledged a purge; they drop the entries within --local-ttl");
    }
    acknowledged
}

/// Subscribes to purge broadcasts (before returning, so no purge made after it is
/// missed) and applies them to this gateway's in-process tier.
pub async fn listen(
    nats: &Nats,
    cache: PredictionCache,
) -> Result<JoinHandle<()>, async_nats::SubscribeError> {
    let mut notices = nats.purge_notices().await?;
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
            nats.acknowledge(&message).await;
        }
    }))
}
