//! The wire contract between the prediction gateway and its model workers.
//!
//! Everything both sides must agree on lives here, and nothing else does (no HTTP
//! framework, no cache client). In the order a prediction request flows through it:
//!
//! - [`model_name`]: the validated name of a model, safe to put in a NATS subject;
//! - [`subjects`]: the subject a model is served on, the queue group workers join and
//!   the service name they register;
//! - [`canonical`]: the canonical form of an input, what a worker receives;
//! - [`headers`]: the NATS headers: a request's metadata (id, deadline, whether to
//!   avoid a backlog) one way, the prediction's (model version, freshness, compute
//!   time) or an error the other way;
//! - [`time`]: durations and instants in the protocol's milliseconds;
//! - [`error_body`]: the JSON error body every HTTP error uses;
//! - [`nats_connection`], [`telemetry`] and [`shutdown`]: connecting to NATS, log
//!   setup and the stop signal, as both binaries do them.

pub mod canonical;
pub mod error_body;
pub mod headers;
pub mod metrics;
pub mod model_name;
pub mod nats_connection;
pub mod shutdown;
pub mod subjects;
pub mod telemetry;
pub mod time;
pub mod traces;

pub use canonical::{CanonicalInput, DuplicateKey, InvalidInput};
pub use error_body::ErrorBody;
pub use headers::{ReplyMetadata, RequestMetadata, ServiceError};
pub use model_name::{InvalidModelName, ModelName};
