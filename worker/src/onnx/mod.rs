//! ONNX models, served by pure-Rust inference ([tract]).
//!
//! The manifest (`crate::manifest`) lists the `.onnx` files; each becomes an
//! [`OnnxModel`]: its graph checked and optimised once at startup for a batch
//! of any size. It answers tensor requests (the Open Inference Protocol) with
//! the inputs and outputs the file declares ([`tensors`]), and, where the
//! manifest maps them, JSON inputs read into one row of its input tensor and
//! its outputs mapped back to JSON fields. Models are loaded in full before the
//! worker subscribes, so a model the worker cannot run stops it at startup with
//! the model's name and the reason, never at the first request.
//!
//! tract runs the standard operators (MatMul, Gemm, Relu, ...) and some of
//! `ai.onnx.ml` (LinearRegressor, ...); [`ops`] adds the ones scikit-learn needs
//! beyond that, with a fast tree evaluator in [`tree`].
//!
//! [tract]: https://github.com/sonos/tract

mod input;
mod ops;
mod tensors;
pub mod tree;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use async_trait::async_trait;
use prediction_contract::ModelName;
use serde_json::{Map, Number, Value};
use tract_onnx::prelude::*;

use input::InputReader;
use tract_onnx::tract_hir::infer::Factoid;
use tract_onnx::tract_hir::internal::DimLike;

pub use crate::manifest::{InputLayout, JsonMapping, OnnxEntry, OutputField};
use crate::model::{Input, Model, ModelError};
use prediction_contract::tensors::{InferenceRequest, Tensor as ProtocolTensor, TensorSignature};

/// An ONNX model served under a name and version.
#[derive(Debug)]
pub struct OnnxModel {
    name: ModelName,
    version: String,
    freshness_ttl: Option<Duration>,
    inference: Arc<Inference>,
}

/// What inference needs, shared with the blocking threads that run it.
#[derive(Debug)]
struct Inference {
    plan: Arc<TypedRunnableModel>,
    /// The tensors the file declares, as the protocol names them.
    signature: TensorSignature,
    /// How JSON inputs and predictions map to the tensors, if they do.
    json: Option<JsonIo>,
}

/// A model's JSON side: one row of its single input, fields of its outputs.
#[derive(Debug)]
struct JsonIo {
    input: InputReader,
    /// The model's input element type: f32, or f64 for double-precision models.
    input_type: DatumType,
    outputs: Vec<OutputWriter>,
}

/// Writes one JSON field of a prediction from one output tensor.
#[derive(Debug)]
struct OutputWriter {
    field: String,
    /// Index among the model's outputs.
    output: usize,
    /// `None`: the whole row, as an array.
    index: Option<usize>,
}

impl OnnxModel {
    /// Loads, checks and optimises the model `entry` describes. Every error names
    /// the model and the file.
    pub fn load(entry: &OnnxEntry) -> anyhow::Result<Self> {
        let inference = Inference::load(entry).with_context(|| {
            format!("model {:?} ({})", entry.name.as_str(), entry.path.display())
        })?;
        Ok(Self {
            name: entry.name.clone(),
            version: entry.version.clone(),
            freshness_ttl: entry.freshness_ttl,
            inference: Arc::new(inference),
        })
    }
}

impl Inference {
    fn load(entry: &OnnxEntry) -> anyhow::Result<Self> {
        let mut onnx = tract_onnx::onnx();
        ops::register(&mut onnx.op_register);
        if !entry.path.is_file() {
            bail!("the model file does not exist");
        }
        let mut model = onnx
            .model_for_path(&entry.path)
            .map_err(|err| anyhow::anyhow!("{err:?}"))
            .context("the file is not an ONNX model tract can read")?;

        let unsupported: Vec<String> = model
            .nodes()
            .iter()
            .filter_map(|node| {
                let name = node.op.name();
                name.strip_prefix("Unimplemented(")
                    .and_then(|rest| rest.strip_suffix(')'))
                    .map(str::to_owned)
            })
            .collect();
        if !unsupported.is_empty() {
            bail!(
                "unsupported ONNX operator(s): {}; this worker runs the standard operators tract supports plus TreeEnsembleRegressor, LinearRegressor and Scaler from ai.onnx.ml",
                unsupported.join(", ")
            );
        }

        let Some(mapping) = &entry.json else {
            // Tensors only: the file's own inputs and outputs.
            let model = model
                .into_optimized()
                .map_err(|err| anyhow::anyhow!("{err:?}"))
                .context("tract could not prepare the model (does every input declare its datatype and rank?)")?;
            let signature = tensors::signature(&model)?;
            let plan = model
                .into_runnable()
                .map_err(|err| anyhow::anyhow!("{err:?}"))
                .context("tract could not plan the model")?;
            return Ok(Self {
                plan,
                signature,
                json: None,
            });
        };
        ensure!(
            model.inputs.len() == 1,
            "the model has {} inputs; a JSON `input` mapping needs one input tensor (leave `input` and `output` out to serve it with tensors only)",
            model.inputs.len()
        );
        let fact = model.input_fact(0)?.clone();
        let rank = fact.shape.rank().concretize();
        ensure!(
            rank == Some(2),
            "the input tensor must have shape [batch, features], not rank {}",
            rank.map_or("unknown".to_owned(), |rank| rank.to_string())
        );
        let width = fact
            .shape
            .dim(1)
            .and_then(|dim| dim.concretize())
            .and_then(|dim| dim.to_usize().ok())
            .filter(|&width| width > 0)
            .context(
                "the input tensor's second dimension (features) must be a fixed number above 0",
            )?;
        let input_type = fact.datum_type.concretize().unwrap_or(f32::datum_type());
        ensure!(
            input_type == f32::datum_type() || input_type == f64::datum_type(),
            "the input tensor holds {input_type:?}; only float and double inputs are supported"
        );
        let input = InputReader::new(mapping.input.clone(), width)?;

        let output_names: Vec<String> = model
            .outputs
            .iter()
            .map(|outlet| {
                model
                    .outlet_label(*outlet)
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("output {}", outlet.slot))
            })
            .collect();

        let batch = model.sym("batch");
        model.set_input_fact(
            0,
            InferenceFact::dt_shape(input_type, [batch.to_dim(), width.to_dim()]),
        )?;
        let model = model
            .into_optimized()
            .map_err(|err| anyhow::anyhow!("{err:?}"))
            .context("tract could not prepare the model")?;

        let mut outputs = Vec::with_capacity(mapping.output.len());
        for (field, spec) in &mapping.output {
            let output = match &spec.tensor {
                None => 0,
                Some(name) => output_names.iter().position(|n| n == name).with_context(|| {
                    format!(
                        "output field {field:?} reads tensor {name:?}, but the model's outputs are {output_names:?}"
                    )
                })?,
            };
            let fact = model.output_fact(output)?;
            ensure!(
                fact.datum_type.is_number(),
                "output field {field:?}: tensor {:?} holds {:?}, not numbers",
                output_names[output],
                fact.datum_type
            );
            ensure!(
                (1..=2).contains(&fact.rank()),
                "output field {field:?}: tensor {:?} has rank {}; [batch] or [batch, n] is supported",
                output_names[output],
                fact.rank()
            );
            let columns = if fact.rank() == 1 {
                Some(1)
            } else {
                fact.shape[1].to_usize().ok()
            };
            if let (Some(index), Some(columns)) = (spec.index, columns) {
                ensure!(
                    index < columns,
                    "output field {field:?}: index {index} is past the {columns} column(s) of tensor {:?}",
                    output_names[output]
                );
            }
            outputs.push(OutputWriter {
                field: field.clone(),
                output,
                index: spec.index,
            });
        }
        let signature = tensors::signature(&model)?;
        let plan = model
            .into_runnable()
            .map_err(|err| anyhow::anyhow!("{err:?}"))
            .context("tract could not plan the model")?;
        let inference = Self {
            plan,
            signature,
            json: Some(JsonIo {
                input,
                input_type,
                outputs,
            }),
        };
        // Run it once: a model that loads but cannot run fails here, not later.
        inference
            .run(&vec![0.0; width], 1)
            .context("a trial inference failed")?;
        Ok(inference)
    }

    /// Runs the model over `rows` (row-major, `n` rows) and returns one prediction
    /// per row; a row whose outputs are not all finite numbers fails alone.
    fn run(&self, rows: &[f32], n: usize) -> anyhow::Result<Vec<Result<Value, ModelError>>> {
        let json = self.json.as_ref().context("the model takes tensors only")?;
        let shape = [n, json.input.width];
        let input = if json.input_type == f64::datum_type() {
            let doubles: Vec<f64> = rows.iter().map(|&v| f64::from(v)).collect();
            Tensor::from_shape(&shape, &doubles)?
        } else {
            Tensor::from_shape(&shape, rows)?
        };
        let results = self
            .plan
            .run(tvec!(input.into()))
            .map_err(|err| anyhow::anyhow!("{err:?}"))?;
        let mut predictions: Vec<Option<Map<String, Value>>> = vec![Some(Map::new()); n];
        for writer in &json.outputs {
            let tensor = &results[writer.output];
            let columns = if tensor.rank() == 1 {
                1
            } else {
                tensor.shape()[1]
            };
            ensure!(
                tensor.shape()[0] == n,
                "output {} has {} rows for {n} inputs",
                writer.output,
                tensor.shape()[0]
            );
            let values = numbers(tensor)?;
            for (row, prediction) in values.chunks_exact(columns).zip(&mut predictions) {
                let value = match writer.index {
                    Some(index) => row[index].clone(),
                    None => row
                        .iter()
                        .cloned()
                        .collect::<Option<Vec<_>>>()
                        .map(Value::Array),
                };
                match (value, prediction.as_mut()) {
                    (Some(value), Some(prediction)) => {
                        prediction.insert(writer.field.clone(), value);
                    }
                    _ => *prediction = None,
                }
            }
        }
        Ok(predictions
            .into_iter()
            .map(|prediction| {
                prediction.map(Value::Object).ok_or_else(|| {
                    ModelError::Failed(
                        "the model produced a value that is not a finite number".into(),
                    )
                })
            })
            .collect())
    }
}

/// The numbers of `tensor` as JSON values (`None` where not finite). An f32 is
/// written with the fewest digits that read back as the same f32 (2034.1234, not
/// 2034.123413085937).
fn numbers(tensor: &Tensor) -> anyhow::Result<Vec<Option<Value>>> {
    let finite = |value: f64| Number::from_f64(value).map(Value::Number);
    Ok(if tensor.datum_type() == f32::datum_type() {
        tensor
            .try_as_plain_ram()?
            .as_slice::<f32>()?
            .iter()
            .map(|value| finite(value.to_string().parse::<f64>().unwrap_or(f64::NAN)))
            .collect()
    } else {
        let doubles = tensor.cast_to::<f64>()?;
        doubles
            .try_as_plain_ram()?
            .as_slice::<f64>()?
            .iter()
            .map(|&v| finite(v))
            .collect()
    })
}

impl OnnxModel {
    /// Predicts `inputs` on the calling thread, as one inference call: what
    /// [`Model::predict_batch`] does on a blocking thread. For benchmarks and
    /// callers outside an async runtime.
    pub fn predict_blocking(&self, inputs: &[Input]) -> Vec<Result<Value, ModelError>> {
        let (rows, results) = self.read_inputs(inputs);
        let valid = results.iter().filter(|result| result.is_none()).count();
        let outcome = match valid {
            0 => Ok(Vec::new()),
            _ => self.inference.run(&rows, valid),
        };
        self.merge(results, outcome)
    }

    /// The rows of the valid inputs, and the error of each invalid one (`None`
    /// where the input is valid): a bad input fails alone, the rest run.
    #[allow(clippy::type_complexity)]
    fn read_inputs(&self, inputs: &[Input]) -> (Vec<f32>, Vec<Option<Result<Value, ModelError>>>) {
        let Some(json) = &self.inference.json else {
            let refused = ModelError::InvalidInput(format!(
                "model {} takes tensors only: send them to /v2/models/{}/infer",
                self.name, self.name
            ));
            return (
                Vec::new(),
                inputs.iter().map(|_| Some(Err(refused.clone()))).collect(),
            );
        };
        let mut rows = Vec::with_capacity(inputs.len() * json.input.width);
        let results = inputs
            .iter()
            .map(|input| json.input.read(input, &mut rows).err().map(Err))
            .collect();
        (rows, results)
    }

    /// Fills the results of the valid inputs from the inference `outcome`.
    fn merge(
        &self,
        results: Vec<Option<Result<Value, ModelError>>>,
        outcome: anyhow::Result<Vec<Result<Value, ModelError>>>,
    ) -> Vec<Result<Value, ModelError>> {
        let valid = results.iter().filter(|result| result.is_none()).count();
        let mut predictions = match outcome {
            Ok(predictions) => predictions,
            Err(err) => {
                tracing::error!(model = %self.name, error = format!("{err:#}"), "inference failed");
                vec![Err(ModelError::Failed("inference failed".to_owned())); valid]
            }
        }
        .into_iter();
        results
            .into_iter()
            .map(|result| {
                result.or_else(|| predictions.next()).unwrap_or_else(|| {
                    Err(ModelError::Failed(
                        "inference returned too few rows".to_owned(),
                    ))
                })
            })
            .collect()
    }
}

#[async_trait]
impl Model for OnnxModel {
    fn name(&self) -> &ModelName {
        &self.name
    }

    fn version(&self) -> &str {
        &self.version
    }

    fn freshness_ttl(&self) -> Option<Duration> {
        self.freshness_ttl
    }

    fn batches(&self) -> bool {
        true
    }

    fn tensors(&self) -> Option<&TensorSignature> {
        Some(&self.inference.signature)
    }

    async fn infer(&self, request: &InferenceRequest) -> Result<Vec<ProtocolTensor>, ModelError> {
        self.infer_batch(std::slice::from_ref(request))
            .await
            .pop()
            .expect("one result per request")
    }

    async fn infer_batch(
        &self,
        requests: &[InferenceRequest],
    ) -> Vec<Result<Vec<ProtocolTensor>, ModelError>> {
        let inference = Arc::clone(&self.inference);
        let requests = requests.to_vec();
        let count = requests.len();
        let name = self.name.clone();
        // Inference is CPU work: off the async threads.
        match tokio::task::spawn_blocking(move || tensors::run(&inference.plan, &requests)).await {
            Ok(results) => results,
            Err(err) => {
                tracing::error!(model = %name, error = %err, "inference panicked");
                vec![Err(ModelError::Failed("inference failed".into())); count]
            }
        }
    }

    async fn predict(&self, input: &Input) -> Result<Value, ModelError> {
        self.predict_batch(std::slice::from_ref(input))
            .await
            .pop()
            .expect("one result per input")
    }

    async fn predict_batch(&self, inputs: &[Input]) -> Vec<Result<Value, ModelError>> {
        let (rows, results) = self.read_inputs(inputs);
        let inference = Arc::clone(&self.inference);
        let valid = results.iter().filter(|result| result.is_none()).count();
        // Inference is CPU work: off the async threads.
        let outcome = match valid {
            0 => Ok(Vec::new()),
            _ => tokio::task::spawn_blocking(move || inference.run(&rows, valid))
                .await
                .map_err(|err| anyhow::anyhow!("inference panicked: {err}"))
                .and_then(|outcome| outcome),
        };
        self.merge(results, outcome)
    }
}
