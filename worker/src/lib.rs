//! A model worker: serves predictions for one or more models over NATS.
//!
//! Each model is an endpoint of a NATS service (`prediction-worker`) on subject
//! `predict.<model>` in the shared queue group, so every worker started anywhere
//! takes a share of the requests and shows up in `nats micro ls/info/stats`.
//!
//! Modules, in the order a request flows through them:
//!
//! - [`config`]: the command line and environment settings;
//! - [`startup`]: connects to NATS, registers the service, runs the serving loop and
//!   shuts it down without losing the requests it holds;
//! - [`batching`]: runs predictions in the worker's inference slots, batching
//!   concurrent requests for models that gain from it;
//! - [`model`]: the [`Model`] trait a user implements to serve a model;
//! - [`onnx`]: ONNX models listed in a manifest (`--model-config`), run by tract;
//! - [`price`]: the built-in `price` model, a stand-in for the original ETH/EUR model;
//! - [`echo`]: the built-in `echo` model, which answers with its input.

pub mod batching;
pub mod config;
pub mod echo;
pub mod model;
pub mod onnx;
pub mod price;
pub mod startup;

pub use config::WorkerConfig;
pub use model::{Input, Model, ModelError};
pub use startup::Worker;
