//! The wire contract between the prediction gateway and its model workers.
//!
//! Everything both sides must agree on lives here, and nothing else does (no HTTP
//! framework, no cache client). In the order a prediction request flows through it:
//!
//! - [`model_name`]: the validated name of a model, safe to put in a NATS subject;
//! - [`subjects`]: the subject a model is served on and the queue group workers join;
//! - [`canonical`]: the canonical form of an input and the cache key derived from it;
//! - [`headers`]: the NATS headers that carry a request's id and deadline one way and
//!   the prediction's metadata (model version, freshness, compute time) the other way;
//! - [`error_body`]: the JSON error body every HTTP error uses;
//! - [`nats_connection`], [`telemetry`] and [`shutdown`]: connecting to NATS, log
//!   setup and the stop signal, as both binaries do them.

pub mod canonical;
pub mod error_body;
pub mod headers;
pub mod model_name;
pub mod nats_connection;
pub mod shutdown;
pub mod subjects;
pub mod telemetry;

pub use canonical::{
    CacheKey, CanonicalInput, DuplicateKey, InvalidInput, LEASE_PREFIX, cache_key_pattern,
};
pub use error_body::ErrorBody;
pub use headers::{ReplyMetadata, ServiceError};
pub use model_name::{InvalidModelName, ModelName};
