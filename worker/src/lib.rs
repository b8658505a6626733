//! A model worker: serves predictions for one or more models over NATS.
//!
//! Each model is an endpoint of a NATS service (`prediction-worker`) on subject
//! `predict.<model>` in the shared queue group, so every worker started anywhere
//! takes a share of the requests and shows up in `nats micro ls/info/stats`.
//!
//! Modules, in the order a request flows through them:
//!
//! - [`config`]: the command line and environment settings;
//! - [`startup`]: [`Worker::build`] connects to NATS and registers the service and
//!   one endpoint per model; [`Worker::run`] hands them to
//! - [`serve`]: the serve loop, where a request is admitted (or refused as busy),
//!   its deadline checked and its input parsed, then answered whole, or, for a
//!   generative model asked for a stream, chunk by chunk by [`streaming`]; run by
//! - [`batching`]: the worker's inference slots, batching concurrent requests for
//!   models that gain from it, which call
//! - [`model`]: the [`Model`] trait a user implements to serve a model, and its
//!   implementations: [`builtin`] (`price`, a stand-in for the original ETH/EUR
//!   model, `echo`, and the generative stand-ins `tiny-chat` and `tiny-embed`)
//!   and the models a [`manifest`] (`--model-config`) lists: [`onnx`] (ONNX
//!   files, run by tract) and [`upstream`] (models an OpenAI-compatible server
//!   runs, which the worker forwards to).
//!
//! At shutdown [`Worker::run`] stops the serve loop taking requests, waits for it
//! to answer those it holds, flushes the replies and drains the connection.

pub mod batching;
pub mod builtin;
pub mod config;
pub mod manifest;
pub mod metrics;
pub mod model;
pub mod onnx;
pub mod serve;
pub mod startup;
pub mod streaming;
pub mod upstream;

pub use config::WorkerConfig;
pub use model::{Chunks, GenerationBounds, Input, Model, ModelError};
pub use startup::{Worker, load_manifest};
