//! The in-process tier: hot entries kept in this gateway's memory for at most
//! `--local-ttl`, so a purge or a newer value reaches every gateway within that
//! bound even if the purge broadcast is lost.

use std::sync::Arc;
use std::time::Duration;

use prediction_contract::time::millis;

use super::CachedPrediction;

/// Hot entries kept in this gateway's memory, each for at most the tier's TTL
/// after it was put there. quick_cache rather than moka: a lookup here is on
/// every hot hit, and quick_cache's is a hash and a shard's read lock where
/// moka's future cache also queues the read for its eviction policy (callgrind:
/// ~300 instructions per lookup against ~1 700). Expiry is checked on the way
/// out, against the clock reading the freshness check uses.
#[derive(Debug)]
pub(super) struct LocalTier {
    entries: quick_cache::sync::Cache<String, LocalCopy>,
    ttl_ms: u64,
}

#[derive(Debug, Clone)]
struct LocalCopy {
    entry: Arc<CachedPrediction>,
    /// Unix milliseconds after which this copy is no longer served.
    kept_until_ms: u64,
}

impl LocalTier {
    pub(super) fn new(capacity: u64, ttl: Duration) -> Self {
        Self {
            entries: quick_cache::sync::Cache::new(usize::try_from(capacity).unwrap_or(usize::MAX)),
            ttl_ms: millis(ttl),
        }
    }

    /// The copy of `key`, if it was kept less than the TTL ago and the entry is
    /// still fresh.
    pub(super) fn fresh_entry(&self, key: &str, now_ms: u64) -> Option<Arc<CachedPrediction>> {
        let copy = self.entries.get(key)?;
        if now_ms >= copy.kept_until_ms {
            // Dropped now rather than left to eviction, unless a newer copy
            // replaced it meanwhile.
            self.entries
                .remove_if(key, |current| current.kept_until_ms <= now_ms);
            return None;
        }
        copy.entry.is_fresh(now_ms).then_some(copy.entry)
    }

    pub(super) fn keep(&self, key: &str, entry: &Arc<CachedPrediction>, now_ms: u64) {
        let copy = LocalCopy {
            entry: Arc::clone(entry),
            kept_until_ms: now_ms.saturating_add(self.ttl_ms),
        };
        self.entries.insert(key.to_owned(), copy);
    }

    pub(super) fn holds(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    pub(super) fn forget(&self, key: &str) {
        self.entries.remove(key);
    }

    /// Drops every copy whose key starts with `prefix`.
    pub(super) fn forget_prefixed(&self, prefix: &str) {
        self.entries.retain(|key, _| !key.starts_with(prefix));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(computed_at_ms: u64, fresh_for: Duration) -> Arc<CachedPrediction> {
        Arc::new(CachedPrediction {
            prediction: bytes::Bytes::from_static(b"{}"),
            model_version: "1".into(),
            computed_at_ms,
            fresh_for,
        })
    }

    #[test]
    fn the_local_tier_serves_a_copy_for_its_ttl_and_while_the_entry_is_fresh() {
        let tier = LocalTier::new(100, Duration::from_secs(1));
        let long_fresh = entry(10_000, Duration::from_secs(60));
        tier.keep("k", &long_fresh, 10_000);
        assert!(tier.fresh_entry("k", 10_999).is_some());
        // Past the tier's TTL: gone, though the entry itself is still fresh.
        assert!(tier.fresh_entry("k", 11_000).is_none());
        assert!(!tier.holds("k"), "an expired copy is dropped when found");

        let short_fresh = entry(20_000, Duration::from_millis(300));
        tier.keep("k", &short_fresh, 20_000);
        assert!(tier.fresh_entry("k", 20_299).is_some());
        assert!(
            tier.fresh_entry("k", 20_300).is_none(),
            "stale entries are not served from memory"
        );
        assert!(tier.fresh_entry("other", 20_000).is_none());
    }

    #[test]
    fn keeping_a_key_again_renews_its_copy() {
        let tier = LocalTier::new(100, Duration::from_secs(1));
        tier.keep("k", &entry(10_000, Duration::from_secs(60)), 10_000);
        let newer = entry(10_500, Duration::from_secs(60));
        tier.keep("k", &newer, 10_500);
        let served = tier.fresh_entry("k", 11_200).expect("the renewed copy");
        assert!(Arc::ptr_eq(&served, &newer));
    }
}
