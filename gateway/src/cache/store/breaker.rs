//! The breaker in front of Redis: after a failure, requests answer without Redis
//! for a moment rather than each wait out a timeout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prediction_contract::time::millis;

/// After a Redis failure, how long the gateway answers without Redis before trying
/// it again.
pub const REDIS_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Skips Redis for [`REDIS_RETRY_AFTER`] after a failure. The first request after
/// that tries Redis again and either closes the breaker or trips it anew.
#[derive(Debug, Default)]
pub struct Breaker {
    open_until_ms: AtomicU64,
}

impl Breaker {
    pub fn is_open(&self, now_ms: u64) -> bool {
        now_ms < self.open_until_ms.load(Ordering::Relaxed)
    }

    pub fn trip(&self, now_ms: u64) {
        let until = now_ms.saturating_add(millis(REDIS_RETRY_AFTER));
        self.open_until_ms.store(until, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breaker_opens_on_failure_and_closes_after_the_retry_delay() {
        let breaker = Breaker::default();
        assert!(!breaker.is_open(10_000));
        breaker.trip(10_000);
        assert!(breaker.is_open(10_000));
        assert!(breaker.is_open(10_999));
        assert!(!breaker.is_open(11_000));
    }
}
