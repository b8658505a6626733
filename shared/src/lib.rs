//! The wire contract between the prediction gateway and its model workers, and
//! among gateways.
//!
//! Everything the parties must agree on lives here, and nothing else does: no
//! HTTP framework, no NATS or Redis client, no runtime (those pieces both
//! binaries run are `prediction-runtime`'s). In the order a prediction request
//! flows through it:
//!
//! - [`model_name`]: the validated name of a model, safe to put in a NATS subject;
//! - [`subjects`]: the subject a model is served on, the queue group workers join and
//!   the service name they register;
//! - [`canonical`]: the canonical form of an input, what a worker receives;
//! - [`cache_key`]: the key every gateway files an input's prediction under;
//! - [`headers`]: the NATS headers: a request's metadata (id, deadline, whether to
//!   avoid a backlog, heartbeats) one way, the prediction's (model version,
//!   freshness, compute time), a heartbeat or an error the other way;
//! - [`openai`]: the chunks a generative model streams and the answer they
//!   assemble into;
//! - [`tensors`]: the Open Inference Protocol's tensors, requests and responses,
//!   in JSON and binary form;
//! - [`time`]: durations and instants in the protocol's milliseconds;
//! - [`error_body`]: the JSON error body every HTTP error uses.

pub mod cache_key;
pub mod canonical;
pub mod error_body;
pub mod headers;
pub mod model_name;
pub mod openai;
pub mod subjects;
pub mod tensors;
pub mod time;

pub use cache_key::{CacheKey, KeySpace};
pub use canonical::{CanonicalInput, DuplicateKey, InvalidInput};
pub use error_body::ErrorBody;
pub use headers::{ReplyMetadata, RequestMetadata, ServiceError};
pub use model_name::{InvalidModelName, ModelName};
