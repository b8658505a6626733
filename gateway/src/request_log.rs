//! Around every request, whatever route answers it: its id (the client's
//! `X-Request-Id` when usable, else a new UUID; echoed in the response), its
//! trace span when traces are on, and when it is answered one log line and,
//! for predictions, the metrics by model and cache outcome. Answered probes and
//! scrapes are logged at DEBUG.
//!
//! One service wrapping the router, with a future of its own: a request passes
//! it without a boxed middleware, a cloned layer stack or an allocation of its
//! own beyond a new id (it is on every request, the cache's hits included).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, Request, Response, Uri};
use prediction_contract::ModelName;
use prediction_runtime::log_writer::{self, Field};
use prediction_runtime::traces;
use tracing::{debug, info};

use crate::prediction::CacheOutcome;
use crate::state::AppState;

/// The request's id: the client's, or one made for it.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest request id a client may choose: a UUID is 36 bytes, a trace id
/// 32; this leaves room for prefixes without letting a client write kilobytes
/// into every log line and reply.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Whether a client's `X-Request-Id` may be used as the request's id: at most
/// [`MAX_REQUEST_ID_LEN`] bytes of visible ASCII. Any other gets an id of the
/// gateway's own instead (echoed in its place).
fn usable_request_id(value: &HeaderValue) -> bool {
    value.len() <= MAX_REQUEST_ID_LEN
        && !value.is_empty()
        && value.as_bytes().iter().all(u8::is_ascii_graphic)
}

/// A new request id: a random (v4) UUID.
fn new_request_id() -> HeaderValue {
    let mut text = uuid::Uuid::encode_buffer();
    let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
    HeaderValue::from_str(text).expect("a UUID is a valid header value")
}

/// `inner` (the router) with every request's id, span, log line and metrics.
#[derive(Debug, Clone)]
pub struct RequestLog<S> {
    inner: S,
    state: AppState,
}

impl<S> RequestLog<S> {
    pub fn new(inner: S, state: AppState) -> Self {
        Self { inner, state }
    }
}

impl<S> tower::Service<Request<Body>> for RequestLog<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = LoggedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let started = Instant::now();
        let request_id = match request.headers().get(&X_REQUEST_ID) {
            Some(id) if usable_request_id(id) => id.clone(),
            _ => {
                let id = new_request_id();
                request.headers_mut().insert(X_REQUEST_ID, id.clone());
                id
            }
        };
        let span = traces::enabled().then(|| {
            let span = tracing::info_span!(
                "HTTP request",
                otel.name = format!("{} {}", request.method(), request.uri().path()),
                otel.kind = "server",
                http.request.method = %request.method(),
                url.path = request.uri().path(),
            );
            traces::Caller::from_headers(|name| request.headers().get(name)?.to_str().ok())
                .continued_by(&span);
            span
        });
        let seen = Seen {
            state: self.state.clone(),
            started,
            method: request.method().clone(),
            // A clone that shares the request's buffers, not a copy.
            uri: request.uri().clone(),
            request_id,
        };
        let response = match &span {
            Some(span) => span.in_scope(|| self.inner.call(request)),
            None => self.inner.call(request),
        };
        LoggedFuture {
            response,
            seen: Some(seen),
            span,
        }
    }
}

/// What the log line and the metrics need of the request, kept until it is
/// answered.
struct Seen {
    state: AppState,
    started: Instant,
    method: Method,
    uri: Uri,
    request_id: HeaderValue,
}

pin_project_lite::pin_project! {
    /// The router's response to a request, logged and counted when ready.
    pub struct LoggedFuture<F> {
        #[pin]
        response: F,
        seen: Option<Seen>,
        span: Option<tracing::Span>,
    }
}

impl<F> Future for LoggedFuture<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let polled = match this.span {
            Some(span) => span.in_scope(|| this.response.poll(cx)),
            None => this.response.poll(cx),
        };
        let Poll::Ready(Ok(mut response)) = polled else {
            return polled;
        };
        if let Some(seen) = this.seen.take() {
            let trace_id = this.span.as_ref().and_then(traces::trace_id);
            seen.record(&response, trace_id.as_deref());
            if !response.headers().contains_key(&X_REQUEST_ID) {
                response.headers_mut().insert(X_REQUEST_ID, seen.request_id);
            }
        }
        Poll::Ready(Ok(response))
    }
}

/// What probes and scrapers ask every few seconds. Answered, they are logged at
/// DEBUG, so the default log shows predictions and faults; a probe that fails
/// is logged like any request.
const ROUTINE_PATHS: [&str; 6] = [
    "/healthz",
    "/readyz",
    "/health",
    "/metrics",
    "/v2/health/live",
    "/v2/health/ready",
];

/// Whether the request is a probe or a scrape that was answered.
fn is_routine(path: &str, status: u16) -> bool {
    status < 400 && ROUTINE_PATHS.contains(&path)
}

/// Attached by the prediction routes to each response (success or error) so the
/// request log and the metrics can name the model and the cache outcome (`None`
/// for an error).
#[derive(Debug, Clone)]
pub struct PredictionOutcome {
    pub model: ModelName,
    pub cache: Option<CacheOutcome>,
}

impl Seen {
    /// Logs the request and, for predictions, counts it by model and cache
    /// outcome.
    fn record(&self, response: &Response<Body>, trace_id: Option<&str>) {
        let metrics = &self.state.metrics;
        let elapsed = self.started.elapsed();
        let outcome = response.extensions().get::<PredictionOutcome>();
        if let Some(outcome) = outcome {
            let label = outcome.cache.map_or("error", |cache| cache.label());
            let model = self.state.directory.metric_label(&outcome.model);
            metrics.count_request(model, label, elapsed);
        }
        let status = response.status().as_u16();
        // Whole microseconds: exact, and cheaper to write than a float.
        let latency_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let model = outcome.map(|o| o.model.as_str());
        let cache = outcome.and_then(|o| o.cache).map(|c| c.x_cache());
        let method = &self.method;
        let path = self.uri.path();
        let request_id = self.request_id.to_str().unwrap_or("-");
        if is_routine(path, status) {
            debug!(%method, path, status, latency_us, request_id, "request");
            return;
        }
        // The line of every other request: written by hand into the log's buffer
        // where it can be (see `log_writer::write_info`), else through tracing.
        if tracing::enabled!(tracing::Level::INFO) {
            let written = log_writer::write_info(
                module_path!(),
                "request",
                &[
                    ("method", Some(Field::Bare(method.as_str()))),
                    ("path", Some(Field::Text(path))),
                    ("status", Some(Field::Number(u64::from(status)))),
                    ("latency_us", Some(Field::Number(latency_us))),
                    ("model", model.map(Field::Text)),
                    ("cache", cache.map(Field::Text)),
                    ("request_id", Some(Field::Text(request_id))),
                    ("trace_id", trace_id.map(Field::Text)),
                ],
            );
            if !written {
                info!(
                    %method,
                    path,
                    status,
                    latency_us,
                    model,
                    cache,
                    request_id,
                    trace_id,
                    "request"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answered_probes_and_scrapes_are_routine_and_failed_ones_are_not() {
        for path in ROUTINE_PATHS {
            assert!(is_routine(path, 200), "{path}");
            assert!(!is_routine(path, 503), "{path}");
        }
        assert!(!is_routine("/predict", 200));
        assert!(!is_routine("/v1/models/price/predict", 200));
        assert!(!is_routine("/healthz/x", 200));
    }

    #[test]
    fn a_request_id_is_usable_when_it_is_short_visible_ascii() {
        let usable = |text: &[u8]| usable_request_id(&HeaderValue::from_bytes(text).unwrap());
        assert!(usable(b"abc-123"));
        assert!(usable(&[b'a'; MAX_REQUEST_ID_LEN]));
        assert!(!usable(&[b'a'; MAX_REQUEST_ID_LEN + 1]));
        assert!(!usable(b""));
        assert!(!usable(b"with space"));
        assert!(!usable("caf\u{e9}".as_bytes()));
        let new = new_request_id();
        assert!(usable_request_id(&new));
        assert_eq!(
            uuid::Uuid::parse_str(new.to_str().unwrap())
                .unwrap()
                .get_version_num(),
            4
        );
    }
}
