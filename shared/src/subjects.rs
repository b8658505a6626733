//! NATS subject names, the queue group every worker joins and the service name
//! workers register under.

use crate::ModelName;

/// Prediction requests for model `m` are published on `predict.m`.
pub const PREDICT_SUBJECT_PREFIX: &str = "predict";

/// The queue group of every prediction endpoint. It is the NATS Services API
/// default, so a worker written with any NATS services library joins the same group
/// and shares the load instead of receiving a copy of every request.
pub const QUEUE_GROUP: &str = "q";

/// The service name workers register under (`nats micro ls` shows it).
pub const SERVICE_NAME: &str = "prediction-worker";

/// A worker with service id `i` takes cancellations of its streams on
/// `worker.cancel.i`: the payload is the reply subject of the request whose
/// stream nobody listens to any more.
pub const CANCEL_SUBJECT_PREFIX: &str = "worker.cancel";

/// The subject on which the worker with service id `worker_id` takes
/// cancellations.
pub fn cancel_subject(worker_id: &str) -> String {
    format!("{CANCEL_SUBJECT_PREFIX}.{worker_id}")
}

/// The subject a model is served on: `predict.<model>`. Written at its final
/// size: every miss makes one, and `format!` costs several times as much.
pub fn predict_subject(model: &ModelName) -> String {
    let mut subject =
        String::with_capacity(PREDICT_SUBJECT_PREFIX.len() + 1 + model.as_str().len());
    subject.push_str(PREDICT_SUBJECT_PREFIX);
    subject.push('.');
    subject.push_str(model.as_str());
    subject
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_is_prefix_dot_model() {
        let model = ModelName::parse("price").unwrap();
        assert_eq!(predict_subject(&model), "predict.price");
    }
}
