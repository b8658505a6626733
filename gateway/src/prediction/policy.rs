//! The cache policy of one request, decided in one place: from what the lookup
//! found, what the client's directives ask, the time, and the model version the
//! workers serve, whether the request is answered from the cache (fresh, or
//! stale while a refresh runs), refused (`only-if-cached` with nothing usable),
//! or computed. A computation may be joined: that is the coalescing map's to
//! decide (`fresh_only` tells it whether a computation already running will do).
//!
//! A pure function, so every row of the table has its unit test.

use std::time::Duration;

use crate::cache::CachedPrediction;
use crate::freshness::RequestDirectives;

/// What the lookup found.
#[derive(Debug, Clone, Copy)]
pub enum Looked<'a> {
    /// The directives forbid reading the cache (`no-cache`, `no-store`).
    NotLooked,
    /// No entry, or none readable (a lease, Redis unreachable).
    Nothing,
    /// An entry: fresh, stale or expired, of this version or another.
    Entry(&'a CachedPrediction),
}

/// What the request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The entry, fresh.
    Hit,
    /// The entry, in its stale period, while one refresh runs.
    Stale,
    /// Nothing: `only-if-cached` and no usable entry (504).
    NotCached,
    /// A computation. `fresh_only`: the client asked for a newer prediction
    /// than the cache had (`no-cache`, `no-store`, `max-age` exceeded), so only
    /// a computation started after it arrived may answer it.
    Compute { fresh_only: bool },
}

/// Decides a request's answer. `current_version` is the version the workers
/// serve now (`None` while none is known: any entry will do, as in an outage);
/// `stale_ttl` how long past its freshness an entry may still be served.
pub fn decide(
    looked: Looked<'_>,
    directives: &RequestDirectives,
    now_ms: u64,
    current_version: Option<&str>,
    stale_ttl: Duration,
) -> Decision {
    let entry = match looked {
        Looked::NotLooked => return Decision::Compute { fresh_only: true },
        Looked::Entry(entry)
            if current_version.is_none_or(|current| current == entry.model_version) =>
        {
            Some(entry)
        }
        // An entry of another model version is never served, fresh or stale.
        Looked::Entry(_) | Looked::Nothing => None,
    };
    let computed = |fresh_only| {
        if directives.only_if_cached {
            Decision::NotCached
        } else {
            Decision::Compute { fresh_only }
        }
    };
    let Some(entry) = entry else {
        return computed(false);
    };
    let age_accepted = directives.accepts_age(entry.age(now_ms));
    if entry.is_fresh(now_ms) {
        return if age_accepted {
            Decision::Hit
        } else {
            computed(true)
        };
    }
    if age_accepted && !directives.only_if_cached && entry.is_within_stale_period(now_ms, stale_ttl)
    {
        return Decision::Stale;
    }
    computed(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_000_000;
    const STALE_TTL: Duration = Duration::from_secs(30);

    /// An entry of version `version`, computed `age_s` seconds ago, fresh for 60 s.
    fn entry(version: &str, age_s: u64) -> CachedPrediction {
        CachedPrediction {
            prediction: bytes::Bytes::from_static(b"{}"),
            model_version: version.into(),
            computed_at_ms: NOW - age_s * 1000,
            fresh_for: Duration::from_secs(60),
        }
    }

    fn directives(no_cache: bool, max_age: Option<u64>, only_if_cached: bool) -> RequestDirectives {
        RequestDirectives {
            no_cache,
            no_store: false,
            max_age: max_age.map(Duration::from_secs),
            only_if_cached,
        }
    }

    fn plain() -> RequestDirectives {
        RequestDirectives::default()
    }

    fn decide_for(
        looked: Looked<'_>,
        directives: &RequestDirectives,
        current: Option<&str>,
    ) -> Decision {
        decide(looked, directives, NOW, current, STALE_TTL)
    }

    const COMPUTE: Decision = Decision::Compute { fresh_only: false };
    const COMPUTE_FRESH: Decision = Decision::Compute { fresh_only: true };

    #[test]
    fn no_cache_and_no_store_compute_a_new_prediction_without_looking() {
        let no_store = RequestDirectives {
            no_store: true,
            ..plain()
        };
        for directives in [directives(true, None, false), no_store] {
            assert_eq!(
                decide_for(Looked::NotLooked, &directives, Some("1")),
                COMPUTE_FRESH
            );
        }
    }

    #[test]
    fn a_fresh_entry_of_the_current_version_is_a_hit() {
        let fresh = entry("1", 10);
        assert_eq!(
            decide_for(Looked::Entry(&fresh), &plain(), Some("1")),
            Decision::Hit
        );
        // Also with only-if-cached, and with a max-age it meets.
        let met = directives(false, Some(10), true);
        assert_eq!(
            decide_for(Looked::Entry(&fresh), &met, Some("1")),
            Decision::Hit
        );
    }

    #[test]
    fn with_no_version_known_any_entry_is_served_as_in_an_outage() {
        let fresh = entry("0.9", 10);
        assert_eq!(
            decide_for(Looked::Entry(&fresh), &plain(), None),
            Decision::Hit
        );
    }

    #[test]
    fn an_entry_of_another_version_is_never_served() {
        let old = entry("1", 10);
        assert_eq!(
            decide_for(Looked::Entry(&old), &plain(), Some("2")),
            COMPUTE
        );
        let stale_old = entry("1", 70);
        assert_eq!(
            decide_for(Looked::Entry(&stale_old), &plain(), Some("2")),
            COMPUTE
        );
        let only = directives(false, None, true);
        assert_eq!(
            decide_for(Looked::Entry(&old), &only, Some("2")),
            Decision::NotCached
        );
    }

    #[test]
    fn a_fresh_entry_older_than_max_age_asks_for_a_newer_computation() {
        let ten_seconds_old = entry("1", 10);
        let max_age = directives(false, Some(5), false);
        assert_eq!(
            decide_for(Looked::Entry(&ten_seconds_old), &max_age, Some("1")),
            COMPUTE_FRESH
        );
        let max_age_only_cached = directives(false, Some(5), true);
        assert_eq!(
            decide_for(
                Looked::Entry(&ten_seconds_old),
                &max_age_only_cached,
                Some("1")
            ),
            Decision::NotCached
        );
    }

    #[test]
    fn a_stale_entry_within_its_stale_period_is_served_while_it_refreshes() {
        let stale = entry("1", 70);
        assert_eq!(
            decide_for(Looked::Entry(&stale), &plain(), Some("1")),
            Decision::Stale
        );
        // Unless the client refuses stale answers: max-age, or only-if-cached.
        let max_age = directives(false, Some(65), false);
        assert_eq!(
            decide_for(Looked::Entry(&stale), &max_age, Some("1")),
            COMPUTE
        );
        let only = directives(false, None, true);
        assert_eq!(
            decide_for(Looked::Entry(&stale), &only, Some("1")),
            Decision::NotCached
        );
    }

    #[test]
    fn an_entry_past_its_stale_period_is_computed_anew() {
        let expired = entry("1", 95);
        assert_eq!(
            decide_for(Looked::Entry(&expired), &plain(), Some("1")),
            COMPUTE
        );
        assert_eq!(
            decide(
                Looked::Entry(&entry("1", 70)),
                &plain(),
                NOW,
                Some("1"),
                Duration::ZERO
            ),
            COMPUTE,
            "with no stale period, a stale entry is not served"
        );
    }

    #[test]
    fn nothing_cached_is_computed_or_with_only_if_cached_refused() {
        assert_eq!(decide_for(Looked::Nothing, &plain(), Some("1")), COMPUTE);
        let only = directives(false, None, true);
        assert_eq!(
            decide_for(Looked::Nothing, &only, Some("1")),
            Decision::NotCached
        );
    }
}
