//! The contract's headers on NATS messages: the lookup its metadata types read
//! through and the sink they write into, over async-nats's `HeaderMap`.
//!
//! Names go through `HeaderName::from_static`, which borrows them: a `&str`
//! name would be validated and copied into a new allocation at every lookup or
//! insert, on every miss.

use async_nats::{HeaderMap, HeaderName};

/// Looks a header of `headers` up by name (none: a message without headers).
pub fn lookup<'a>(headers: Option<&'a HeaderMap>) -> impl Fn(&'static str) -> Option<&'a str> + 'a {
    move |name| {
        headers?
            .get(HeaderName::from_static(name))
            .map(|value| value.as_str())
    }
}

/// The headers `write` puts.
pub fn written(write: impl FnOnce(&mut dyn FnMut(&'static str, &str))) -> HeaderMap {
    let mut headers = HeaderMap::new();
    write(&mut |name, value| headers.insert(HeaderName::from_static(name), value));
    headers
}

#[cfg(test)]
mod tests {
    use prediction_contract::RequestMetadata;
    use prediction_contract::headers::{REQUEST_ID, is_heartbeat, write_heartbeat};

    use super::*;

    #[test]
    fn the_contracts_headers_round_trip_through_a_nats_header_map() {
        let metadata = RequestMetadata {
            request_id: "r-1",
            deadline_unix_ms: Some(42),
            avoid_backlog: true,
            heartbeat_interval: None,
            stream: false,
            api: None,
        };
        let headers = written(|put| metadata.write(put));
        assert_eq!(headers.get(REQUEST_ID).map(|v| v.as_str()), Some("r-1"));
        assert_eq!(RequestMetadata::read(lookup(Some(&headers))), metadata);
        assert!(is_heartbeat(lookup(Some(&written(|put| write_heartbeat(
            put
        ))))));
        assert!(!is_heartbeat(lookup(None)));
    }
}
