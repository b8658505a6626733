//! NATS headers of the prediction protocol.
//!
//! The payloads stay plain JSON (the input one way, the prediction the other) so a
//! worker can be poked with `nats req predict.price '{"product_id":"ETH/EUR"}'`;
//! everything else travels in headers. Each metadata type reads itself through a
//! lookup (`Fn(name) -> Option<value>`) and writes itself through a sink
//! (`FnMut(name, value)`), so the contract needs no NATS client: the runtime's
//! `nats_headers` puts them on NATS messages.

use std::time::Duration;

/// Gateway → worker: the id of the HTTP request, so one id follows a request through
/// both logs.
pub const REQUEST_ID: &str = "Request-Id";
/// Gateway → worker: when the caller stops waiting, in milliseconds since the Unix
/// epoch. A worker does not start computing a request that is already past it.
pub const DEADLINE_UNIX_MS: &str = "Deadline-Unix-Ms";
/// Gateway → worker: the caller will ask another worker if this one would make the
/// request wait behind a backlog, so the worker may answer busy at once instead
/// (see the worker's `--redirect-backlog`). Any value counts; a request without it
/// (from `nats req`, say) waits in line, up to the worker's `--queue-depth`.
pub const AVOID_BACKLOG: &str = "Avoid-Backlog";
/// Gateway → worker: while the worker holds the request (waiting for a slot or
/// computing) it sends a heartbeat to the reply subject every this many
/// milliseconds, so the caller can tell a slow model from a worker that died and
/// sends a request again only for the latter. A request without it (from
/// `nats req`, say) gets its one reply and nothing else.
pub const HEARTBEAT_MS: &str = "Heartbeat-Ms";
/// Worker → gateway: what a message on the reply subject is when it is not the
/// reply itself (the reply carries no such header): [`reply_kinds::HEARTBEAT`].
pub const REPLY_KIND: &str = "Reply-Kind";
/// The values of [`REPLY_KIND`].
pub mod reply_kinds {
    /// The worker still holds the request; an empty payload.
    pub const HEARTBEAT: &str = "heartbeat";
    /// One chunk of a streamed answer (see [`REPLY_STREAM`](super::REPLY_STREAM)),
    /// in the order the model produced it.
    pub const CHUNK: &str = "chunk";
    /// The end of a streamed answer, with the reply's metadata headers and an
    /// empty payload. An error ends a stream as any error reply does.
    pub const END: &str = "end";
}
/// Gateway → worker: send the answer as a stream: messages of kind
/// [`reply_kinds::CHUNK`] as the model produces them, then one of kind
/// [`reply_kinds::END`]. A request without it gets one complete reply, the
/// chunks assembled (what `nats req` shows). Any value counts.
pub const REPLY_STREAM: &str = "Reply-Stream";
/// Gateway → worker: which OpenAI API a generative model's request speaks
/// (see `crate::openai::Api`); without it the worker tells from the fields.
pub const OPENAI_API: &str = "Openai-Api";
/// Worker → gateway, on a stream's messages: the worker's service id, where
/// the gateway sends a cancellation (`subjects::cancel_subject`) when nobody
/// listens to the stream any more.
pub const WORKER_ID: &str = "Worker-Id";
/// Endpoint metadata key (NATS Services API) by which a worker says it sends
/// heartbeats when asked; value `"true"`.
pub const HEARTBEATS_METADATA: &str = "heartbeats";
/// Endpoint metadata key: the model answers as a stream when asked
/// ([`REPLY_STREAM`]); value `"true"`.
pub const STREAMS_METADATA: &str = "streams";
/// Endpoint metadata keys: a generative model's bounds, in milliseconds: the
/// longest a whole answer may take (instead of the gateway's
/// `--request-timeout`), the longest before its first chunk, and between two
/// chunks.
pub const TIMEOUT_MS_METADATA: &str = "timeout_ms";
pub const FIRST_CHUNK_MS_METADATA: &str = "first_chunk_ms";
pub const CHUNK_GAP_MS_METADATA: &str = "chunk_gap_ms";
/// Endpoint metadata key: whether the answers of sampled requests
/// (`temperature` above 0 and no `seed`) may be cached; `"true"` or `"false"`
/// (absent: `true`).
pub const CACHE_SAMPLED_METADATA: &str = "cache_sampled";
/// Endpoint metadata key: the tensors the model takes and gives (the Open
/// Inference Protocol), a JSON `tensors::TensorSignature`. A model without it
/// takes JSON inputs only.
pub const TENSORS_METADATA: &str = "tensors";
/// Gateway → worker: the W3C Trace Context of the model call, so the worker's
/// span continues the gateway's trace (with `tracestate`, when traces are on).
pub const TRACEPARENT: &str = "traceparent";
/// Worker → gateway: the version of the model that computed the prediction.
pub const MODEL_VERSION: &str = "Model-Version";
/// Worker → gateway: how long the prediction stays fresh, in milliseconds. Absent
/// means "use the gateway's default"; 0 means "do not cache".
pub const FRESHNESS_TTL_MS: &str = "Freshness-Ttl-Ms";
/// Worker → gateway: how long the model took, in milliseconds (fractional).
pub const COMPUTE_TIME_MS: &str = "Compute-Time-Ms";
/// Error replies carry the NATS Services error headers, so the `nats` CLI and any
/// services client understand them and the worker's stats count them.
pub const NATS_SERVICE_ERROR: &str = "Nats-Service-Error";
pub const NATS_SERVICE_ERROR_CODE: &str = "Nats-Service-Error-Code";

/// The status codes a worker uses in `Nats-Service-Error-Code`.
pub mod error_codes {
    /// The input is not one the model accepts.
    pub const BAD_INPUT: u16 = 400;
    /// The model failed while computing.
    pub const MODEL_FAILED: u16 = 500;
    /// The worker is saturated, or has a backlog and the caller asked to avoid
    /// one; another worker (or a retry) may succeed.
    pub const BUSY: u16 = 503;
    /// The caller's deadline passed before the worker got to the request.
    pub const DEADLINE_EXCEEDED: u16 = 504;
}

/// What a request says about itself besides its input: who asked (for the logs),
/// until when, and whether its caller would rather try another worker than wait
/// behind a backlog. Borrowed from the headers it is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestMetadata<'a> {
    /// The HTTP request's id, `-` when there is none (a `nats req` by hand).
    pub request_id: &'a str,
    /// When the caller stops waiting, in milliseconds since the Unix epoch.
    pub deadline_unix_ms: Option<u64>,
    /// See [`AVOID_BACKLOG`].
    pub avoid_backlog: bool,
    /// See [`HEARTBEAT_MS`].
    pub heartbeat_interval: Option<Duration>,
    /// See [`REPLY_STREAM`].
    pub stream: bool,
    /// See [`OPENAI_API`].
    pub api: Option<crate::openai::Api>,
}

impl<'a> RequestMetadata<'a> {
    /// Writes the headers into `put(name, value)`.
    pub fn write(&self, mut put: impl FnMut(&'static str, &str)) {
        put(REQUEST_ID, self.request_id);
        if let Some(deadline) = self.deadline_unix_ms {
            let mut digits = itoa::Buffer::new();
            put(DEADLINE_UNIX_MS, digits.format(deadline));
        }
        if self.avoid_backlog {
            put(AVOID_BACKLOG, "1");
        }
        if let Some(interval) = self.heartbeat_interval {
            let mut digits = itoa::Buffer::new();
            put(HEARTBEAT_MS, digits.format(crate::time::millis(interval)));
        }
        if self.stream {
            put(REPLY_STREAM, "1");
        }
        if let Some(api) = self.api {
            put(OPENAI_API, api.as_str());
        }
    }

    /// Reads a request's metadata through `get(name)`, tolerating missing or
    /// malformed headers: a request sent by hand may carry none of them.
    pub fn read(get: impl Fn(&'static str) -> Option<&'a str>) -> Self {
        Self {
            request_id: get(REQUEST_ID).unwrap_or("-"),
            deadline_unix_ms: get(DEADLINE_UNIX_MS).and_then(|v| v.trim().parse().ok()),
            avoid_backlog: get(AVOID_BACKLOG).is_some(),
            // A caller asking for more than one a millisecond gets one a
            // millisecond: a heartbeat is never sent in a busy loop.
            heartbeat_interval: get(HEARTBEAT_MS)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|ms| Duration::from_millis(ms.max(1))),
            stream: get(REPLY_STREAM).is_some(),
            api: get(OPENAI_API).and_then(|v| crate::openai::Api::parse(v.trim())),
        }
    }

    /// Whether the caller has stopped waiting, as of `now_unix_ms`.
    pub fn deadline_passed(&self, now_unix_ms: u64) -> bool {
        self.deadline_unix_ms
            .is_some_and(|deadline| now_unix_ms >= deadline)
    }
}

/// The headers of a heartbeat (an empty payload).
pub fn write_heartbeat(mut put: impl FnMut(&'static str, &str)) {
    put(REPLY_KIND, reply_kinds::HEARTBEAT);
}

/// Whether a message on a reply subject, whose headers `get` reads, is a
/// heartbeat rather than the reply.
pub fn is_heartbeat<'a>(get: impl Fn(&'static str) -> Option<&'a str>) -> bool {
    get(REPLY_KIND).is_some_and(|kind| kind == reply_kinds::HEARTBEAT)
}

/// What a message on a reply subject is, from its `Reply-Kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// The worker still holds the request.
    Heartbeat,
    /// One chunk of a streamed answer.
    Chunk,
    /// The end of a streamed answer.
    End,
    /// The reply itself (or an error reply): no `Reply-Kind`.
    Reply,
}

impl ReplyKind {
    /// The kind of a message whose headers `get` reads; an unknown kind is
    /// taken for the reply, which then says what it is.
    pub fn read<'a>(get: impl Fn(&'static str) -> Option<&'a str>) -> Self {
        match get(REPLY_KIND) {
            Some(reply_kinds::HEARTBEAT) => Self::Heartbeat,
            Some(reply_kinds::CHUNK) => Self::Chunk,
            Some(reply_kinds::END) => Self::End,
            _ => Self::Reply,
        }
    }
}

/// What a successful reply says about its prediction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyMetadata {
    pub model_version: String,
    /// The model's own freshness for this prediction, if it has one.
    pub freshness_ttl: Option<Duration>,
    pub compute_time: Option<Duration>,
}

impl ReplyMetadata {
    /// Writes the headers into `put(name, value)`.
    pub fn write(&self, mut put: impl FnMut(&'static str, &str)) {
        put(MODEL_VERSION, &self.model_version);
        if let Some(ttl) = self.freshness_ttl {
            let mut digits = itoa::Buffer::new();
            put(FRESHNESS_TTL_MS, digits.format(crate::time::millis(ttl)));
        }
        if let Some(compute_time) = self.compute_time {
            let millis = format!("{:.3}", compute_time.as_secs_f64() * 1000.0);
            put(COMPUTE_TIME_MS, &millis);
        }
    }

    /// Reads the metadata of a reply through `get(name)`, tolerating missing or
    /// malformed headers: a worker written by someone else may send none of them.
    pub fn read<'a>(get: impl Fn(&'static str) -> Option<&'a str>) -> Self {
        Self {
            model_version: get(MODEL_VERSION).unwrap_or("unknown").to_owned(),
            freshness_ttl: get(FRESHNESS_TTL_MS)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_millis),
            compute_time: get(COMPUTE_TIME_MS)
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|ms| ms.is_finite() && *ms >= 0.0)
                .map(|ms| Duration::from_secs_f64(ms / 1000.0)),
        }
    }
}

/// An error reply in the NATS Services convention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceError {
    pub code: u16,
    pub message: String,
}

impl ServiceError {
    /// The error a reply whose headers `get` reads carries, if it is an error
    /// reply.
    pub fn read<'a>(get: impl Fn(&'static str) -> Option<&'a str>) -> Option<Self> {
        let code = get(NATS_SERVICE_ERROR_CODE)?;
        Some(Self {
            // A code we cannot read is still an error; treat it as a model failure.
            code: code.trim().parse().unwrap_or(error_codes::MODEL_FAILED),
            message: get(NATS_SERVICE_ERROR).unwrap_or_default().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Headers as a map, written by `write` and read back by the lookup.
    #[derive(Default)]
    struct Headers(HashMap<&'static str, String>);

    impl Headers {
        fn written(write: impl FnOnce(&mut dyn FnMut(&'static str, &str))) -> Self {
            let mut headers = Self::default();
            write(&mut |name, value| {
                headers.0.insert(name, value.to_owned());
            });
            headers
        }

        fn get<'a>(&'a self) -> impl Fn(&'static str) -> Option<&'a str> + 'a {
            move |name| self.0.get(name).map(String::as_str)
        }
    }

    #[test]
    fn request_metadata_round_trips_through_headers() {
        let metadata = RequestMetadata {
            request_id: "3f2a",
            deadline_unix_ms: Some(1_800_000_000_123),
            avoid_backlog: true,
            heartbeat_interval: Some(Duration::from_millis(500)),
            stream: true,
            api: Some(crate::openai::Api::ChatCompletions),
        };
        let headers = Headers::written(|put| metadata.write(put));
        assert_eq!(RequestMetadata::read(headers.get()), metadata);
        let quiet = RequestMetadata {
            avoid_backlog: false,
            deadline_unix_ms: None,
            heartbeat_interval: None,
            stream: false,
            api: None,
            ..metadata
        };
        let headers = Headers::written(|put| quiet.write(put));
        assert_eq!(RequestMetadata::read(headers.get()), quiet);
    }

    #[test]
    fn a_request_sent_by_hand_has_no_id_deadline_or_backlog_wish() {
        let none = Headers::default();
        let metadata = RequestMetadata::read(none.get());
        assert_eq!(metadata.request_id, "-");
        assert!(!metadata.deadline_passed(u64::MAX));
        assert!(!metadata.avoid_backlog);
        assert_eq!(metadata.heartbeat_interval, None);
        let odd = Headers::written(|put| {
            put(DEADLINE_UNIX_MS, "soon");
            put(HEARTBEAT_MS, "0");
        });
        let metadata = RequestMetadata::read(odd.get());
        assert_eq!(metadata.deadline_unix_ms, None);
        // Never more than a heartbeat a millisecond.
        assert_eq!(metadata.heartbeat_interval, Some(Duration::from_millis(1)));
    }

    #[test]
    fn a_deadline_passes_at_its_millisecond() {
        let metadata = RequestMetadata {
            request_id: "-",
            deadline_unix_ms: Some(1_000),
            avoid_backlog: false,
            heartbeat_interval: None,
            stream: false,
            api: None,
        };
        assert!(!metadata.deadline_passed(999));
        assert!(metadata.deadline_passed(1_000));
    }

    #[test]
    fn heartbeats_are_told_from_replies_by_their_kind() {
        let heartbeat = Headers::written(|put| write_heartbeat(put));
        assert!(is_heartbeat(heartbeat.get()));
        let reply = ReplyMetadata {
            model_version: "1".into(),
            freshness_ttl: None,
            compute_time: None,
        };
        let reply = Headers::written(|put| reply.write(put));
        assert!(!is_heartbeat(reply.get()));
        assert!(!is_heartbeat(Headers::default().get()));
    }

    #[test]
    fn reply_metadata_round_trips_through_headers() {
        let metadata = ReplyMetadata {
            model_version: "1.2.0".into(),
            freshness_ttl: Some(Duration::from_millis(30_000)),
            compute_time: Some(Duration::from_micros(1_000_250)),
        };
        let headers = Headers::written(|put| metadata.write(put));
        assert_eq!(ReplyMetadata::read(headers.get()), metadata);
    }

    #[test]
    fn missing_metadata_means_unknown_version_and_no_ttl() {
        let back = ReplyMetadata::read(Headers::default().get());
        assert_eq!(back.model_version, "unknown");
        assert_eq!(back.freshness_ttl, None);
    }

    #[test]
    fn service_errors_are_read_from_the_standard_headers() {
        let headers = Headers::written(|put| {
            put(NATS_SERVICE_ERROR, "missing field `product_id`");
            put(NATS_SERVICE_ERROR_CODE, "400");
        });
        assert_eq!(
            ServiceError::read(headers.get()),
            Some(ServiceError {
                code: 400,
                message: "missing field `product_id`".into()
            })
        );
        assert_eq!(ServiceError::read(Headers::default().get()), None);
    }
}
