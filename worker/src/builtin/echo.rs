//! The built-in `echo` model: answers with its input. A diagnostic for the plumbing
//! (routing, caching, canonical inputs), not a model.

use async_trait::async_trait;
use prediction_contract::ModelName;
use serde_json::{Value, json};

use crate::model::{Input, Model, ModelError};

pub const ECHO_MODEL_NAME: &str = "echo";

#[derive(Debug)]
pub struct EchoModel {
    name: ModelName,
}

impl Default for EchoModel {
    fn default() -> Self {
        Self {
            name: ModelName::parse(ECHO_MODEL_NAME).expect("a valid constant name"),
        }
    }
}

#[async_trait]
impl Model for EchoModel {
    fn name(&self) -> &ModelName {
        &self.name
    }

    fn version(&self) -> &str {
        "1.0.0"
    }

    async fn predict(&self, input: &Input) -> Result<Value, ModelError> {
        Ok(json!({ "echo": input }))
    }
}
