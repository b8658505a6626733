//! An ONNX model's tensors as the Open Inference Protocol sees them: the
//! signature the file declares, and tensor requests run through the plan,
//! several at once when they stack along their first dimension (the batch).
//!
//! The protocol's binary data is little-endian, as tract's tensors are in
//! memory on the little-endian machines this worker is built for, so data is
//! copied as bytes both ways.

use std::sync::Arc;

use anyhow::Context;
use prediction_contract::tensors::{
    Datatype, InferenceRequest, Tensor, TensorSignature, TensorSpec,
};
use serde_json::Map;
use tract_onnx::prelude::{
    DatumType, TValue, TVec, Tensor as TractTensor, TypedFact, TypedModel, TypedRunnableModel,
};

use crate::model::ModelError;

#[cfg(target_endian = "big")]
compile_error!("tensor data is copied as little-endian bytes");

/// The protocol's datatype of a tract element type, if it has one.
fn datatype_of(datum: DatumType) -> Option<Datatype> {
    Some(match datum {
        DatumType::Bool => Datatype::Bool,
        DatumType::U8 => Datatype::Uint8,
        DatumType::U16 => Datatype::Uint16,
        DatumType::U32 => Datatype::Uint32,
        DatumType::U64 => Datatype::Uint64,
        DatumType::I8 => Datatype::Int8,
        DatumType::I16 => Datatype::Int16,
        DatumType::I32 => Datatype::Int32,
        DatumType::I64 => Datatype::Int64,
        DatumType::F16 => Datatype::Fp16,
        DatumType::F32 => Datatype::Fp32,
        DatumType::F64 => Datatype::Fp64,
        _ => return None,
    })
}

fn datum_of(datatype: Datatype) -> Option<DatumType> {
    Some(match datatype {
        Datatype::Bool => DatumType::Bool,
        Datatype::Uint8 => DatumType::U8,
        Datatype::Uint16 => DatumType::U16,
        Datatype::Uint32 => DatumType::U32,
        Datatype::Uint64 => DatumType::U64,
        Datatype::Int8 => DatumType::I8,
        Datatype::Int16 => DatumType::I16,
        Datatype::Int32 => DatumType::I32,
        Datatype::Int64 => DatumType::I64,
        Datatype::Fp16 => DatumType::F16,
        Datatype::Fp32 => DatumType::F32,
        Datatype::Fp64 => DatumType::F64,
        Datatype::Bf16 | Datatype::Bytes => return None,
    })
}

fn output_name(model: &TypedModel, index: usize) -> String {
    let outlet = model.outputs[index];
    model
        .outlet_label(outlet)
        .map(str::to_owned)
        .unwrap_or_else(|| model.node(outlet.node).name.clone())
}

/// The inputs and outputs the optimised `model` declares.
pub(super) fn signature(model: &TypedModel) -> anyhow::Result<TensorSignature> {
    let spec = |name: String, fact: &TypedFact| -> anyhow::Result<TensorSpec> {
        let datatype = datatype_of(fact.datum_type).with_context(|| {
            format!(
                "tensor {name:?} holds {:?}, for which the protocol has no datatype",
                fact.datum_type
            )
        })?;
        Ok(TensorSpec {
            name,
            datatype: datatype.as_str().to_owned(),
            shape: fact
                .shape
                .iter()
                .map(|dim| dim.to_i64().unwrap_or(-1))
                .collect(),
        })
    };
    let inputs = model
        .inputs
        .iter()
        .map(|outlet| {
            spec(
                model.node(outlet.node).name.clone(),
                model.outlet_fact(*outlet)?,
            )
        })
        .collect::<anyhow::Result<_>>()?;
    let outputs = (0..model.outputs.len())
        .map(|index| {
            spec(
                output_name(model, index),
                model.outlet_fact(model.outputs[index])?,
            )
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(TensorSignature {
        platform: "onnx_tract".into(),
        inputs,
        outputs,
    })
}

/// A tract tensor of `datatype` and `shape` holding `data` (little-endian).
fn tract_tensor(datatype: Datatype, shape: &[usize], data: &[u8]) -> anyhow::Result<TractTensor> {
    let datum = datum_of(datatype).with_context(|| {
        format!(
            "{} tensors are not supported by ONNX models here",
            datatype.as_str()
        )
    })?;
    let mut tensor = TractTensor::zero_dt(datum, shape)?;
    let bytes = tensor.as_bytes_mut();
    anyhow::ensure!(
        bytes.len() == data.len(),
        "{} bytes for a tensor of {}",
        data.len(),
        bytes.len()
    );
    bytes.copy_from_slice(data);
    Ok(tensor)
}

/// A protocol tensor named `name` from a tract output, its first `rows` rows
/// starting at row `from` (all of it when `rows` is `None`).
fn protocol_tensor(
    name: &str,
    tensor: &TractTensor,
    slice: Option<(usize, usize)>,
) -> anyhow::Result<Tensor> {
    let datatype = datatype_of(tensor.datum_type())
        .with_context(|| format!("output {name:?} holds {:?}", tensor.datum_type()))?;
    let mut shape: Vec<u64> = tensor.shape().iter().map(|&dim| dim as u64).collect();
    let bytes = tensor.as_bytes();
    let data = match slice {
        None => bytes.to_vec(),
        Some((from, rows)) => {
            let total = tensor.shape().first().copied().unwrap_or(0).max(1);
            let row_bytes = bytes.len() / total;
            shape[0] = rows as u64;
            bytes[from * row_bytes..(from + rows) * row_bytes].to_vec()
        }
    };
    Ok(Tensor {
        name: name.to_owned(),
        datatype,
        shape,
        parameters: Map::new(),
        data,
    })
}

/// Runs `requests` (each checked against the signature): as one call when
/// they stack along their first dimension, else one by one.
pub(super) fn run(
    plan: &Arc<TypedRunnableModel>,
    requests: &[InferenceRequest],
) -> Vec<Result<Vec<Tensor>, ModelError>> {
    if requests.len() > 1
        && let Some(results) = run_stacked(plan, requests)
    {
        return results;
    }
    requests
        .iter()
        .map(|request| {
            run_stacked(plan, std::slice::from_ref(request))
                .and_then(|mut results| results.pop())
                .unwrap_or_else(|| Err(ModelError::Failed("inference failed".into())))
        })
        .collect()
}

/// The requests run as one call, their inputs stacked along the first
/// dimension; `None` when they do not stack (different shapes beyond it) or
/// the outputs do not split back by the same rows.
fn run_stacked(
    plan: &Arc<TypedRunnableModel>,
    requests: &[InferenceRequest],
) -> Option<Vec<Result<Vec<Tensor>, ModelError>>> {
    let model = plan.model();
    let mut inputs: TVec<TValue> = TVec::new();
    let mut rows: Vec<usize> = Vec::with_capacity(requests.len());
    for outlet in &model.inputs {
        let name = &model.node(outlet.node).name;
        let given: Vec<&Tensor> = requests
            .iter()
            .map(|request| request.inputs.iter().find(|input| &input.name == name))
            .collect::<Option<_>>()?;
        let head = given[0];
        if head.shape.is_empty() && requests.len() > 1 {
            return None;
        }
        let stacks = given.iter().all(|tensor| {
            tensor.datatype == head.datatype && tensor.shape.get(1..) == head.shape.get(1..)
        });
        if !stacks {
            return None;
        }
        let these: Vec<usize> = given
            .iter()
            .map(|tensor| tensor.shape.first().copied().unwrap_or(1) as usize)
            .collect();
        if rows.is_empty() {
            rows = these;
        } else if rows != these {
            return None;
        }
        let mut shape: Vec<usize> = head.shape.iter().map(|&dim| dim as usize).collect();
        if let Some(batch) = shape.first_mut() {
            *batch = rows.iter().sum();
        }
        let data: Vec<u8> = given
            .iter()
            .flat_map(|tensor| tensor.data.iter().copied())
            .collect();
        match tract_tensor(head.datatype, &shape, &data) {
            Ok(tensor) => inputs.push(tensor.into()),
            Err(err) => {
                let refused = ModelError::InvalidInput(format!("tensor {name:?}: {err:#}"));
                return Some(vec![Err(refused); requests.len()]);
            }
        }
    }
    let outputs = match plan.run(inputs) {
        Ok(outputs) => outputs,
        Err(err) => {
            tracing::error!(error = format!("{err:?}"), "inference failed");
            let failed = ModelError::Failed("inference failed".into());
            return Some(vec![Err(failed); requests.len()]);
        }
    };
    let total: usize = rows.iter().sum();
    let single = requests.len() == 1;
    if !single
        && outputs
            .iter()
            .any(|output| output.shape().first() != Some(&total))
    {
        return None;
    }
    let mut results = Vec::with_capacity(requests.len());
    let mut from = 0;
    for (index, &count) in rows.iter().enumerate() {
        let tensors: anyhow::Result<Vec<Tensor>> = outputs
            .iter()
            .enumerate()
            .map(|(at, output)| {
                let slice = (!single).then_some((from, count));
                protocol_tensor(&output_name(model, at), output, slice)
            })
            .collect();
        from += count;
        results.push(tensors.map_err(|err| {
            tracing::error!(
                error = format!("{err:#}"),
                request = index,
                "an output could not be read"
            );
            ModelError::Failed("the model gave an output the protocol cannot carry".into())
        }));
    }
    Some(results)
}
