//! Purges: every entry of a model (scanned on every master of a cluster), or
//! one entry.

use prediction_contract::ModelName;
use prediction_contract::cache_key::CacheKey;

use super::{Gate, RedisStore};

impl RedisStore {
    /// Deletes every entry of `model`; returns how many there were. In a
    /// cluster each master is scanned (a key lives on one master, so each is
    /// seen once) and each key unlinked on its own, as keys of different hash
    /// slots cannot share a command there.
    pub async fn purge_model(&self, model: &ModelName) -> Result<u64, redis::RedisError> {
        let pattern = self.keys.model_pattern(model);
        let mut connection = self.connection.clone();
        let mut purged = 0;
        let targets = self.send(Gate::Direct, connection.scan_targets()).await?;
        for target in targets {
            let mut cursor: u64 = 0;
            loop {
                let mut connection = self.connection.clone();
                let page = connection.scan_page(&target, cursor, &pattern);
                let (next, keys) = self.send(Gate::Direct, page).await?;
                purged += self.unlink(&keys).await?;
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(purged)
    }

    /// Unlinks `keys`; returns how many there were.
    async fn unlink(&self, keys: &[String]) -> Result<u64, redis::RedisError> {
        if keys.is_empty() {
            return Ok(0);
        }
        if self.connection.takes_keys_of_any_slot() {
            let mut connection = self.connection.clone();
            let mut command = redis::cmd("UNLINK");
            command.arg(keys);
            let unlink = command.query_async::<u64>(&mut connection);
            return Ok(self.send(Gate::Direct, unlink).await?);
        }
        let unlinks = keys.iter().map(|key| {
            let mut connection = self.connection.clone();
            async move {
                redis::cmd("UNLINK")
                    .arg(key)
                    .query_async::<u64>(&mut connection)
                    .await
            }
        });
        let removed = self
            .send(Gate::Direct, futures::future::try_join_all(unlinks))
            .await?;
        Ok(removed.into_iter().sum())
    }

    /// Deletes one entry; returns whether there was one.
    pub async fn purge_key(&self, key: &CacheKey) -> Result<bool, redis::RedisError> {
        let mut connection = self.connection.clone();
        let mut command = redis::cmd("UNLINK");
        command.arg(key.as_str());
        let unlink = command.query_async::<u64>(&mut connection);
        Ok(self.send(Gate::Direct, unlink).await? > 0)
    }
}
