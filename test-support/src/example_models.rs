//! The example ONNX models of `models/` and the outputs onnxruntime computed for
//! them (`models/reference.json`, written by `models/train.py`).

use std::path::PathBuf;

use serde_json::{Map, Value};

/// The `models/` directory of the repository.
pub fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models")
}

/// `models/models.toml`, as a worker's `--model-config` argument.
pub fn manifest() -> String {
    models_dir().join("models.toml").display().to_string()
}

/// One input of one model and what onnxruntime answered.
#[derive(Debug, Clone)]
pub struct Reference {
    pub model: String,
    pub input: Map<String, Value>,
    pub predicted_price: f64,
}

/// Every reference output, model by model.
pub fn references() -> Vec<Reference> {
    let path = models_dir().join("reference.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("reading {}: {err}", path.display()));
    let by_model: Map<String, Value> = serde_json::from_str(&text).expect("valid JSON");
    let mut references = Vec::new();
    for (model, cases) in by_model {
        for case in cases.as_array().expect("a list per model") {
            references.push(Reference {
                model: model.clone(),
                input: case["input"].as_object().expect("an input object").clone(),
                predicted_price: case["predicted_price"].as_f64().expect("a number"),
            });
        }
    }
    references
}

impl Reference {
    /// Panics unless `prediction`'s `predicted_price` is within a relative 1e-5
    /// of onnxruntime's.
    pub fn assert_matches(&self, prediction: &Value) {
        let actual = prediction["predicted_price"]
            .as_f64()
            .unwrap_or_else(|| panic!("{}: no predicted_price in {prediction}", self.model));
        let expected = self.predicted_price;
        let difference = (actual - expected).abs() / expected.abs();
        assert!(
            difference <= 1e-5,
            "{}: {actual} vs onnxruntime {expected} (relative difference {difference:e}) for {:?}",
            self.model,
            self.input
        );
    }
}
