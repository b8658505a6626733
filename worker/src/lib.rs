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
//!   its deadline checked and its input parsed, then run by
//! - [`batching`]: the worker's inference slots, batching concurrent requests for
//!   models that gain from it, which call
//! - [`model`]: the [`Model`] trait a user implements to serve a model, and its
//!   implementations: [`builtin`] (`price`, a stand-in for the original ETH/EUR
//!   model, and `echo`) and [`onnx`] (ONNX models listed in a manifest,
//!   `--model-config`, run by tract).
//!
//! At shutdown [`Worker::run`] stops the serve loop taking requests, waits for it
//! to answer those it holds, flushes the replies and drains the connection.

pub mod batching;
pub mod builtin;
pub mod config;
pub mod metrics;
pub mod model;
pub mod onnx;
pub mod serve;
pub mod startup;

pub use config::WorkerConfig;
pub use model::{Input, Model, ModelError};
pub use startup::Worker;
