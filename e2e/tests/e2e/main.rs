//! End-to-end tests: the gateway and its workers against real NATS, Redis and
//! Prometheus servers (started on free ports by `test-support`), in-process
//! (`Application::build` and `Worker::build_with_models` on port 0) and, where
//! a signal, an exit code, logs or an open-file limit is what is tested, as
//! processes of the built binaries.

mod helpers;

mod cache;
mod capacity;
mod compatibility;
mod connections;
mod errors;
mod failover;
mod freshness;
mod hostile;
mod hostile_connections;
mod metrics;
mod onnx;
mod outage;
mod processes;
mod prometheus;
mod purge;
mod python_workers;
mod readiness;
mod redis_modes;
mod security;
mod stampede;
mod traces;
mod workers;
