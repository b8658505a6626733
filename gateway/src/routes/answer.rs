//! What the JSON front doors (the native API and the original one) answer: the
//! prediction as the worker computed it, with the cache's headers (`X-Cache`,
//! RFC 9211 `Cache-Status`, `Age`, `Cache-Control`, `X-Model-Version`), or the
//! error as `{"error":{"code","message"}}`; and what the request log and the
//! metrics learn of it.

use std::sync::{Arc, Weak};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use prediction_contract::time::unix_now_ms;
use prediction_contract::{ErrorBody, ModelName};

use crate::cache::CachedPrediction;
use crate::error::ApiError;
use crate::prediction::{Answer, CacheOutcome, PredictionError};
use crate::request_log::PredictionOutcome;

pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
pub const X_MODEL_VERSION: HeaderName = HeaderName::from_static("x-model-version");
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// What the prediction routes answer, for the OpenAPI document (never built).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(crate) enum PredictionResponses {
    /// The prediction, as the model computed it
    #[response(status = 200, headers(
        ("x-cache" = String, description = "HIT, STALE, MISS or BYPASS"),
        ("age" = u64, description = "Whole seconds since the prediction was computed"),
        ("cache-control" = String, description = "max-age=<freshness>, or no-store"),
        ("cache-status" = String, description = "RFC 9211 cache status"),
        ("x-model-version" = String, description = "Version of the model that computed it"),
        ("x-request-id" = String, description = "The request's id, also in the worker's log"),
    ))]
    Prediction(#[to_schema] serde_json::Value),
    /// Malformed JSON, an input that is not an object, an invalid model name or query
    #[response(status = 400)]
    BadRequest(#[to_schema] ErrorBody),
    /// A token is required (`--api-token`) and missing or wrong
    #[response(status = 401)]
    Unauthorized(#[to_schema] ErrorBody),
    /// The body is over `--max-body`
    #[response(status = 413)]
    TooLarge(#[to_schema] ErrorBody),
    /// The worker rejected the input; its message is passed on
    #[response(status = 422)]
    Rejected(#[to_schema] ErrorBody),
    /// The model failed (details in the gateway's logs only)
    #[response(status = 500)]
    ModelFailed(#[to_schema] ErrorBody),
    /// No worker serves the model, workers are busy, the gateway is overloaded or not connected to NATS
    #[response(status = 503)]
    Unavailable(#[to_schema] ErrorBody),
    /// No answer within the deadline, or `only-if-cached` and nothing fresh is cached
    #[response(status = 504)]
    Timeout(#[to_schema] ErrorBody),
}

/// The response to a prediction of `model`, telling the request log how it went.
pub fn respond(model: ModelName, result: Result<Answer, PredictionError>) -> Response {
    let (cache, mut response) = match result {
        Ok(answer) => (Some(answer.outcome), prediction_response(&answer)),
        Err(err) => (None, ApiError::from(err).into_response()),
    };
    response
        .extensions_mut()
        .insert(PredictionOutcome { model, cache });
    response
}

/// The cache's headers of `answer`, as of now, into `headers`: for any front
/// door whose protocol runs over HTTP.
pub fn insert_cache_headers(answer: &Answer, headers: &mut HeaderMap) {
    insert_cache_headers_at(answer, unix_now_ms(), headers);
}

/// [`insert_cache_headers`] as of `now` (ms since the Unix epoch).
fn insert_cache_headers_at(answer: &Answer, now: u64, headers: &mut HeaderMap) {
    let values = LAST_ANSWERED.with_borrow_mut(|last| {
        let memo = match last {
            Some(memo) if memo.is_of(&answer.entry) => memo,
            _ => last.insert(EntryHeaders::of(&answer.entry)),
        };
        memo.values(answer, now)
    });
    headers.insert(X_CACHE, HeaderValue::from_static(answer.outcome.x_cache()));
    headers.insert(header::AGE, values.age);
    headers.insert(header::CACHE_CONTROL, values.cache_control);
    headers.insert(CACHE_STATUS, values.cache_status);
    headers.insert(X_MODEL_VERSION, values.model_version);
}

thread_local! {
    /// The header values of the entry this thread answered from last. A hot key
    /// is answered thousands of times a second from one entry, whose values
    /// change once a second at most: they are built once (four allocations and
    /// their formatting on every hit otherwise) and cloned (a reference count).
    static LAST_ANSWERED: std::cell::RefCell<Option<EntryHeaders>> =
        const { std::cell::RefCell::new(None) };
}

/// One entry's cache header values, the ones that change with time as of the
/// whole seconds they were made for.
struct EntryHeaders {
    /// Which entry: a weak reference keeps its allocation (not its prediction)
    /// from being reused, so the same address is the same entry, which never
    /// changes.
    entry: Weak<CachedPrediction>,
    cache_control: HeaderValue,
    model_version: HeaderValue,
    /// `Age`, for that many seconds.
    age: Option<(u64, HeaderValue)>,
    /// `Cache-Status` of a hit (`false`) or a stale answer (`true`), for that
    /// many seconds of freshness left or of staleness.
    served_status: Option<(bool, u64, HeaderValue)>,
}

/// The cache's header values of one answer.
struct CacheHeaderValues {
    age: HeaderValue,
    cache_control: HeaderValue,
    cache_status: HeaderValue,
    model_version: HeaderValue,
}

impl EntryHeaders {
    fn of(entry: &Arc<CachedPrediction>) -> Self {
        let cache_control = if entry.fresh_for.is_zero() {
            HeaderValue::from_static("no-store")
        } else {
            numbered("max-age=", entry.fresh_for.as_secs())
        };
        Self {
            entry: Arc::downgrade(entry),
            cache_control,
            model_version: header_value(&entry.model_version),
            age: None,
            served_status: None,
        }
    }

    fn is_of(&self, entry: &Arc<CachedPrediction>) -> bool {
        std::ptr::eq(self.entry.as_ptr(), Arc::as_ptr(entry))
    }

    /// The values of `answer` (from this entry) as of `now`.
    fn values(&mut self, answer: &Answer, now: u64) -> CacheHeaderValues {
        let entry = &answer.entry;
        let age_secs = entry.age(now).as_secs();
        let age = match &self.age {
            Some((secs, value)) if *secs == age_secs => value.clone(),
            _ => self
                .age
                .insert((age_secs, HeaderValue::from(age_secs)))
                .1
                .clone(),
        };
        // RFC 9211: `hit` when served from the cache (a negative ttl: served stale),
        // `fwd` with the reason when the model was asked.
        let served = match answer.outcome {
            CacheOutcome::Hit => Some((false, entry.fresh_left(now).as_secs())),
            CacheOutcome::Stale => Some((true, entry.staleness(now).as_secs())),
            _ => None,
        };
        let cache_status = match (served, &self.served_status) {
            (None, _) => forwarded_status(answer.outcome),
            (Some((stale, secs)), Some((memo_stale, memo_secs, value)))
                if stale == *memo_stale && secs == *memo_secs =>
            {
                value.clone()
            }
            (Some((stale, secs)), _) => {
                let prefix = if stale {
                    "gateway; hit; ttl=-"
                } else {
                    "gateway; hit; ttl="
                };
                let value = numbered(prefix, secs);
                self.served_status = Some((stale, secs, value.clone()));
                value
            }
        };
        CacheHeaderValues {
            age,
            cache_control: self.cache_control.clone(),
            cache_status,
            model_version: self.model_version.clone(),
        }
    }
}

/// The cache's headers of an answer still being generated (`outcome` a miss
/// or a coalesced one): it has no age yet, nor a known freshness.
pub fn insert_live_cache_headers(outcome: CacheOutcome, headers: &mut HeaderMap) {
    headers.insert(X_CACHE, HeaderValue::from_static(outcome.x_cache()));
    headers.insert(header::AGE, HeaderValue::from_static("0"));
    headers.insert(CACHE_STATUS, forwarded_status(outcome));
}

/// RFC 9211's `Cache-Status` of an answer the model was asked for.
fn forwarded_status(outcome: CacheOutcome) -> HeaderValue {
    HeaderValue::from_static(match outcome {
        CacheOutcome::Miss { stored, forced } => match (forced, stored) {
            (false, true) => "gateway; fwd=miss; stored",
            (false, false) => "gateway; fwd=miss",
            (true, true) => "gateway; fwd=request; stored",
            (true, false) => "gateway; fwd=request",
        },
        CacheOutcome::Coalesced => "gateway; fwd=miss; collapsed",
        CacheOutcome::Bypass => "gateway; fwd=bypass; detail=cache-unavailable",
        // Served from the cache: the caller's own header says so.
        CacheOutcome::Hit | CacheOutcome::Stale => "gateway; hit",
    })
}

/// The prediction as the body. Built at its final size and without the
/// formatting machinery: this runs for every hit.
fn prediction_response(answer: &Answer) -> Response {
    let mut headers = HeaderMap::with_capacity(8);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    insert_cache_headers(answer, &mut headers);
    let mut response = Response::new(Body::from(answer.entry.prediction.clone()));
    *response.headers_mut() = headers;
    response
}
/// `prefix` followed by `number`, as a header value.
fn numbered(prefix: &'static str, number: u64) -> HeaderValue {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(number);
    let mut text = BytesMut::with_capacity(prefix.len() + digits.len());
    text.extend_from_slice(prefix.as_bytes());
    text.extend_from_slice(digits.as_bytes());
    HeaderValue::from_maybe_shared(text.freeze())
        .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// A header value from text a worker sent; anything not allowed in a header (an
/// odd version string) becomes `invalid`.
fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;

    fn entry(version: &str, computed_at_ms: u64, fresh_secs: u64) -> Arc<CachedPrediction> {
        Arc::new(CachedPrediction {
            prediction: Bytes::from_static(b"{}"),
            model_version: version.into(),
            computed_at_ms,
            fresh_for: Duration::from_secs(fresh_secs),
        })
    }

    fn headers_at(entry: &Arc<CachedPrediction>, outcome: CacheOutcome, now: u64) -> Vec<String> {
        let answer = Answer {
            entry: entry.clone(),
            outcome,
        };
        let mut headers = HeaderMap::new();
        insert_cache_headers_at(&answer, now, &mut headers);
        [
            X_CACHE,
            header::AGE,
            header::CACHE_CONTROL,
            CACHE_STATUS,
            X_MODEL_VERSION,
        ]
        .iter()
        .map(|name| headers[name].to_str().unwrap().to_owned())
        .collect()
    }

    #[test]
    fn an_entrys_headers_follow_the_clock_across_seconds_whoever_was_answered_between() {
        let computed = 1_000_000;
        let a = entry("1.0.0", computed, 60);
        let b = entry("2.0.0", computed - 5_000, 0);
        assert_eq!(
            headers_at(&a, CacheOutcome::Hit, computed + 999),
            ["HIT", "0", "max-age=60", "gateway; hit; ttl=59", "1.0.0"]
        );
        assert_eq!(
            headers_at(&a, CacheOutcome::Hit, computed + 1_000),
            ["HIT", "1", "max-age=60", "gateway; hit; ttl=59", "1.0.0"]
        );
        assert_eq!(
            headers_at(&a, CacheOutcome::Hit, computed + 1_001),
            ["HIT", "1", "max-age=60", "gateway; hit; ttl=58", "1.0.0"]
        );
        assert_eq!(
            headers_at(&b, CacheOutcome::Stale, computed),
            ["STALE", "5", "no-store", "gateway; hit; ttl=-5", "2.0.0"]
        );
        assert_eq!(
            headers_at(&a, CacheOutcome::Stale, computed + 62_000),
            ["STALE", "62", "max-age=60", "gateway; hit; ttl=-2", "1.0.0"]
        );
        assert_eq!(
            headers_at(
                &a,
                CacheOutcome::Miss {
                    stored: true,
                    forced: false
                },
                computed
            ),
            [
                "MISS",
                "0",
                "max-age=60",
                "gateway; fwd=miss; stored",
                "1.0.0"
            ]
        );
    }

    #[test]
    fn a_new_entry_where_a_dropped_one_was_gets_its_own_headers() {
        let old = entry("1.0.0", 1_000_000, 60);
        assert_eq!(headers_at(&old, CacheOutcome::Hit, 1_000_000)[4], "1.0.0");
        drop(old);
        // Whatever address the allocator gives it, it is told apart.
        let new = entry("3.0.0", 1_000_000, 30);
        assert_eq!(
            headers_at(&new, CacheOutcome::Hit, 1_000_000)[2..],
            ["max-age=30", "gateway; hit; ttl=30", "3.0.0"]
        );
    }
}
