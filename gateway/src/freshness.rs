//! What the client asks of the cache, from its `Cache-Control` request directives
//! (RFC 9111 section 5.2.1).

use std::time::Duration;

use axum::http::HeaderMap;
use headers::{CacheControl, HeaderMapExt};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestDirectives {
    /// Recompute, then store.
    pub no_cache: bool,
    /// Neither read nor store.
    pub no_store: bool,
    /// Accept only a prediction at most this old.
    pub max_age: Option<Duration>,
    /// Answer from the cache or not at all.
    pub only_if_cached: bool,
}

impl RequestDirectives {
    /// Reads `Cache-Control`; a header that cannot be parsed is ignored, as caches do.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let Some(cache_control) = headers.typed_get::<CacheControl>() else {
            return Self::default();
        };
        Self {
            no_cache: cache_control.no_cache(),
            no_store: cache_control.no_store(),
            max_age: cache_control.max_age(),
            only_if_cached: cache_control.only_if_cached(),
        }
    }

    /// Whether a prediction of this age may be served (`Age` is whole seconds).
    pub fn accepts_age(&self, age: Duration) -> bool {
        self.max_age
            .is_none_or(|max_age| age.as_secs() <= max_age.as_secs())
    }

    /// Whether the cache may not be read for this request.
    pub fn skips_lookup(&self) -> bool {
        self.no_cache || self.no_store
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn directives(value: &str) -> RequestDirectives {
        let mut headers = HeaderMap::new();
        headers.insert("cache-control", HeaderValue::from_str(value).unwrap());
        RequestDirectives::from_headers(&headers)
    }

    #[test]
    fn no_header_asks_nothing() {
        assert_eq!(
            RequestDirectives::from_headers(&HeaderMap::new()),
            RequestDirectives::default()
        );
    }

    #[test]
    fn each_directive_is_read() {
        assert!(directives("no-cache").no_cache);
        assert!(directives("no-store").no_store);
        assert!(directives("only-if-cached").only_if_cached);
        assert_eq!(
            directives("max-age=120").max_age,
            Some(Duration::from_secs(120))
        );
        let combined = directives("no-store, max-age=0");
        assert!(combined.no_store && combined.skips_lookup());
        assert_eq!(combined.max_age, Some(Duration::ZERO));
    }

    #[test]
    fn max_age_compares_whole_seconds_of_age() {
        let d = directives("max-age=5");
        assert!(d.accepts_age(Duration::from_millis(5_999)));
        assert!(!d.accepts_age(Duration::from_secs(6)));
        assert!(RequestDirectives::default().accepts_age(Duration::from_secs(1_000_000)));
    }
}
