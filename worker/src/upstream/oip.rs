//! Models an Open Inference Protocol server runs (Triton, KServe, MLServer,
//! OpenVINO Model Server): the manifest's `kind = "oip"` entries. At startup
//! the worker asks the server for the model's metadata (its inputs and
//! outputs), which it then declares as its own; each tensor request is
//! forwarded to `/v2/models/<model>[/versions/<version>]/infer`, its tensors
//! binary (or JSON, for servers without the binary extension:
//! `binary_data = false`), and the server's outputs are the answer.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, bail};
use async_trait::async_trait;
use prediction_contract::ModelName;
use prediction_contract::tensors::{
    BINARY_DATA, BINARY_DATA_SIZE, INFERENCE_HEADER_CONTENT_LENGTH, InferenceRequest,
    InferenceResponse, Tensor, TensorSignature, TensorSpec,
};
use serde_json::{Map, Value, json};
use tokio::sync::Semaphore;

use super::error_message;
use crate::manifest::OipEntry;
use crate::model::{Input, Model, ModelError};

/// How long the worker keeps asking a server that is not up yet for the
/// model's metadata at startup.
const METADATA_PATIENCE: Duration = Duration::from_secs(30);

/// A model served by an Open Inference Protocol server.
#[derive(Debug)]
pub struct OipModel {
    entry: OipEntry,
    client: reqwest::Client,
    turns: Arc<Semaphore>,
    signature: OnceLock<TensorSignature>,
}

impl OipModel {
    pub fn new(entry: OipEntry) -> anyhow::Result<Self> {
        Ok(Self {
            client: super::client()?,
            turns: Arc::new(Semaphore::new(entry.concurrency)),
            entry,
            signature: OnceLock::new(),
        })
    }

    /// The model's URL on the server, `/v2/models/<model>[/versions/<v>]`.
    fn model_url(&self) -> String {
        let mut url = format!("{}/v2/models/{}", self.entry.url, self.entry.upstream_model);
        if let Some(version) = &self.entry.upstream_version {
            url.push_str("/versions/");
            url.push_str(version);
        }
        url
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.entry.api_key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    async fn metadata(&self) -> anyhow::Result<TensorSignature> {
        let response = self
            .authorized(self.client.get(self.model_url()))
            .timeout(self.entry.timeout)
            .send()
            .await?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("the server answered {status}: {}", error_message(&text));
        }
        let metadata: Value = serde_json::from_str(&text).context("its metadata is not JSON")?;
        let specs = |field: &str| -> anyhow::Result<Vec<TensorSpec>> {
            serde_json::from_value(metadata.get(field).cloned().unwrap_or(json!([])))
                .with_context(|| format!("its metadata's `{field}` are not tensors"))
        };
        let signature = TensorSignature {
            platform: metadata
                .get("platform")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            inputs: specs("inputs")?,
            outputs: specs("outputs")?,
        };
        if signature.inputs.is_empty() {
            bail!(
                "the server declares no inputs for the model: declare them in its settings (MLServer: `inputs` in model-settings.json)"
            );
        }
        Ok(signature)
    }

    fn failed(&self, what: &str) -> ModelError {
        ModelError::Failed(format!(
            "the model server of {} ({}) {what}",
            self.entry.name, self.entry.url
        ))
    }

    /// The request as the server gets it: every input and output binary, or
    /// every one JSON.
    fn upstream_request(
        &self,
        request: &InferenceRequest,
    ) -> Result<(Vec<u8>, Option<usize>), ModelError> {
        let binary = self.entry.binary_data;
        let mut inputs = Vec::with_capacity(request.inputs.len());
        let mut data = Vec::new();
        for input in &request.inputs {
            let mut object = Map::new();
            object.insert("name".into(), json!(input.name));
            object.insert("datatype".into(), json!(input.datatype.as_str()));
            object.insert("shape".into(), json!(input.shape));
            let mut parameters = input.parameters.clone();
            if binary {
                parameters.insert(BINARY_DATA_SIZE.into(), json!(input.data.len()));
                data.extend_from_slice(&input.data);
            } else {
                let values = input.json_data().ok_or_else(|| {
                    ModelError::InvalidInput(format!(
                        "tensor {:?} holds NaN or infinity, which this model's server takes only as JSON",
                        input.name
                    ))
                })?;
                object.insert("data".into(), values);
            }
            if !parameters.is_empty() {
                object.insert("parameters".into(), Value::Object(parameters));
            }
            inputs.push(Value::Object(object));
        }
        let outputs: Vec<Value> = request
            .outputs
            .iter()
            .map(|output| {
                let mut parameters = output.parameters.clone();
                if binary {
                    parameters.insert(BINARY_DATA.into(), json!(true));
                }
                json!({"name": output.name, "parameters": parameters})
            })
            .collect();
        let mut header = Map::new();
        header.insert("inputs".into(), Value::Array(inputs));
        if !outputs.is_empty() {
            header.insert("outputs".into(), Value::Array(outputs));
        }
        let mut parameters = request.parameters.clone();
        if binary {
            parameters.insert("binary_data_output".into(), json!(true));
        }
        if !parameters.is_empty() {
            header.insert("parameters".into(), Value::Object(parameters));
        }
        let mut body = serde_json::to_vec(&Value::Object(header)).expect("JSON serializes");
        if !binary {
            return Ok((body, None));
        }
        let header_length = body.len();
        body.extend_from_slice(&data);
        Ok((body, Some(header_length)))
    }
}

#[async_trait]
impl Model for OipModel {
    fn name(&self) -> &ModelName {
        &self.entry.name
    }

    fn version(&self) -> &str {
        &self.entry.version
    }

    fn freshness_ttl(&self) -> Option<Duration> {
        self.entry.freshness_ttl
    }

    async fn start(&self) -> anyhow::Result<()> {
        let give_up = tokio::time::Instant::now() + METADATA_PATIENCE;
        let signature = loop {
            match self.metadata().await {
                Ok(signature) => break signature,
                Err(err) if tokio::time::Instant::now() >= give_up => {
                    return Err(err).with_context(|| {
                        format!("asking {} for the model's metadata", self.model_url())
                    });
                }
                Err(err) => {
                    tracing::info!(model = %self.entry.name, error = format!("{err:#}"), "the model server is not ready; asking again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        let _ = self.signature.set(signature);
        Ok(())
    }

    fn tensors(&self) -> Option<&TensorSignature> {
        self.signature.get()
    }

    async fn predict(&self, _input: &Input) -> Result<Value, ModelError> {
        Err(ModelError::InvalidInput(format!(
            "model {} takes tensors only: send them to /v2/models/{}/infer",
            self.entry.name, self.entry.name
        )))
    }

    async fn infer(&self, request: &InferenceRequest) -> Result<Vec<Tensor>, ModelError> {
        let (body, header_length) = self.upstream_request(request)?;
        let _turn =
            tokio::time::timeout(self.entry.timeout, Arc::clone(&self.turns).acquire_owned())
                .await
                .map_err(|_| self.failed("had no turn free within the model's timeout"))?
                .expect("the semaphore is never closed");
        let mut http = self
            .authorized(self.client.post(format!("{}/infer", self.model_url())))
            .timeout(self.entry.timeout)
            .body(body);
        http = match header_length {
            Some(length) => http
                .header(INFERENCE_HEADER_CONTENT_LENGTH, length)
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream"),
            None => http.header(reqwest::header::CONTENT_TYPE, "application/json"),
        };
        let response = http
            .send()
            .await
            .map_err(|err| self.failed(&format!("cannot be reached: {err}")))?;
        let status = response.status();
        let header_length = response
            .headers()
            .get(INFERENCE_HEADER_CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<usize>().ok());
        let body = response
            .bytes()
            .await
            .map_err(|err| self.failed(&format!("broke off its answer: {err}")))?;
        if !status.is_success() {
            let message = error_message(&String::from_utf8_lossy(&body));
            return Err(match status.as_u16() {
                400 | 422 => ModelError::InvalidInput(format!(
                    "the model server refused the request: {message}"
                )),
                code => self.failed(&format!("answered {code}: {message}")),
            });
        }
        let answer = InferenceResponse::parse(&body, header_length).map_err(|err| {
            self.failed(&format!(
                "sent an answer that is not an inference response: {err}"
            ))
        })?;
        Ok(answer.outputs)
    }
}
