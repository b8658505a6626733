//! The `ai.onnx.ml` operators scikit-learn models need that tract lacks:
//! `TreeEnsembleRegressor` (gradient boosting, random forests) and `Scaler`
//! (`StandardScaler` in a pipeline). Registered into tract's ONNX parser, so they
//! compose with everything else in a graph.

use std::sync::Arc;

use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

use super::tree::{Aggregate, Comparison, EnsembleSpec, TreeEnsemble};

/// Adds this module's operators to tract's ONNX operator register.
pub fn register(register: &mut OnnxOpRegister) {
    register.insert("TreeEnsembleRegressor", tree_ensemble_regressor);
    register.insert("Scaler", scaler);
}

/// Reads a float-list attribute, or its `<name>_as_tensor` form (ai.onnx.ml 3,
/// used for doubles).
fn floats(ctx: &ParsingContext, node: &NodeProto, name: &str) -> TractResult<Option<Vec<f32>>> {
    if let Some(values) = node.get_attr_opt_vec::<f32>(name)? {
        return Ok(Some(values));
    }
    let Some(proto) =
        node.get_attr_opt::<&tract_onnx::pb::TensorProto>(&format!("{name}_as_tensor"))?
    else {
        return Ok(None);
    };
    let tensor = ctx.load_tensor(proto)?.cast_to::<f32>()?.into_owned();
    Ok(Some(tensor.try_as_plain_ram()?.as_slice::<f32>()?.to_vec()))
}

fn tree_ensemble_regressor(
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let post_transform: &str = node.get_attr_opt("post_transform")?.unwrap_or("NONE");
    if post_transform != "NONE" {
        bail!(
            "TreeEnsembleRegressor: post_transform {post_transform} is not supported (only NONE)"
        );
    }
    let comparisons = node
        .get_attr_vec::<&str>("nodes_modes")?
        .into_iter()
        .map(|mode| Comparison::parse(mode).map_err(|err| format_err!("{err}")))
        .collect::<TractResult<Vec<_>>>()?;
    let spec = EnsembleSpec {
        tree_ids: node.get_attr_vec("nodes_treeids")?,
        node_ids: node.get_attr_vec("nodes_nodeids")?,
        feature_ids: node.get_attr_vec("nodes_featureids")?,
        thresholds: floats(ctx, node, "nodes_values")?.unwrap_or_default(),
        comparisons,
        true_node_ids: node.get_attr_vec("nodes_truenodeids")?,
        false_node_ids: node.get_attr_vec("nodes_falsenodeids")?,
        missing_tracks_true: node
            .get_attr_opt_vec::<i64>("nodes_missing_value_tracks_true")?
            .unwrap_or_default()
            .into_iter()
            .map(|flag| flag != 0)
            .collect(),
        target_tree_ids: node.get_attr_vec("target_treeids")?,
        target_node_ids: node.get_attr_vec("target_nodeids")?,
        target_ids: node.get_attr_vec("target_ids")?,
        target_weights: floats(ctx, node, "target_weights")?.unwrap_or_default(),
        n_targets: node.get_attr_opt::<usize>("n_targets")?.unwrap_or(1),
        base_values: floats(ctx, node, "base_values")?.unwrap_or_default(),
        aggregate: Aggregate::parse(node.get_attr_opt("aggregate_function")?.unwrap_or("SUM"))
            .map_err(|err| format_err!("{err}"))?,
    };
    let ensemble =
        TreeEnsemble::build(spec).map_err(|err| format_err!("TreeEnsembleRegressor: {err:#}"))?;
    Ok((expand(RegressorExpansion(Arc::new(ensemble))), vec![]))
}

/// The parsed operator, before tract's type inference.
#[derive(Debug, Clone)]
struct RegressorExpansion(Arc<TreeEnsemble>);

impl Expansion for RegressorExpansion {
    fn name(&self) -> StaticName {
        "TreeEnsembleRegressor".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&inputs[0].rank, 2)?;
        s.equals(&outputs[0].datum_type, DatumType::F32)?;
        s.equals(&outputs[0].rank, 2)?;
        s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
        s.equals(&outputs[0].shape[1], self.0.n_targets().to_dim())?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let mut input = inputs[0];
        let fact = model.outlet_fact(input)?.clone();
        if let Some(width) = fact.shape[1].as_i64()
            && (width as usize) < self.0.n_features()
        {
            bail!(
                "TreeEnsembleRegressor compares feature {} but its input has {width} columns",
                self.0.n_features() - 1
            );
        }
        if fact.datum_type != f32::datum_type() {
            input = model.wire_node(
                format!("{prefix}.to_f32"),
                tract_onnx::tract_core::ops::cast::cast(f32::datum_type()),
                &[input],
            )?[0];
        }
        model.wire_node(prefix, EvaluateTrees(Arc::clone(&self.0)), &[input])
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(1)
    }
}

/// The typed operator: evaluates the ensemble over a `[rows, features]` f32 tensor.
#[derive(Debug, Clone)]
struct EvaluateTrees(Arc<TreeEnsemble>);

// Two instances are equal when they share one ensemble: comparing ensembles
// node by node would buy tract's graph optimiser nothing.
impl PartialEq for EvaluateTrees {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for EvaluateTrees {}

impl Op for EvaluateTrees {
    fn name(&self) -> StaticName {
        "TreeEnsembleRegressor".into()
    }

    op_as_typed_op!();
}

impl EvalOp for EvaluateTrees {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let shape = input.shape();
        let (rows, width) = (shape[0], shape[1]);
        ensure!(
            width >= self.0.n_features(),
            "the input has too few columns"
        );
        let plain = input.try_as_plain_ram()?;
        let features = plain.as_slice::<f32>()?;
        let mut output = Tensor::zero::<f32>(&[rows, self.0.n_targets()])?;
        self.0.evaluate(
            features,
            width,
            output.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?,
        );
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for EvaluateTrees {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let rows = inputs[0].shape[0].clone();
        Ok(tvec!(f32::fact(&[rows, self.0.n_targets().to_dim()])))
    }

    as_op!();
}

fn scaler(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let offset = node
        .get_attr_opt_vec::<f32>("offset")?
        .unwrap_or_else(|| vec![0.0]);
    let scale = node
        .get_attr_opt_vec::<f32>("scale")?
        .unwrap_or_else(|| vec![1.0]);
    Ok((expand(Scaler { offset, scale }), vec![]))
}

/// `Y = (X - offset) * scale`, per column (or one value for all columns).
#[derive(Debug, Clone)]
struct Scaler {
    offset: Vec<f32>,
    scale: Vec<f32>,
}

impl Expansion for Scaler {
    fn name(&self) -> StaticName {
        "Scaler".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, DatumType::F32)?;
        s.equals(&outputs[0].shape, &inputs[0].shape)?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        use tract_onnx::tract_core::ops::{cast::cast, math};
        let mut x = inputs[0];
        let rank = model.outlet_fact(x)?.rank();
        if model.outlet_fact(x)?.datum_type != f32::datum_type() {
            x = model.wire_node(format!("{prefix}.to_f32"), cast(f32::datum_type()), &[x])?[0];
        }
        let offset = tensor1(&self.offset)
            .broadcast_into_rank(rank)?
            .into_arc_tensor();
        let scale = tensor1(&self.scale)
            .broadcast_into_rank(rank)?
            .into_arc_tensor();
        let offset = model.add_const(format!("{prefix}.offset"), offset)?;
        let scale = model.add_const(format!("{prefix}.scale"), scale)?;
        let centred = model.wire_node(format!("{prefix}.sub"), math::sub(), &[x, offset])?;
        model.wire_node(format!("{prefix}.mul"), math::mul(), &[centred[0], scale])
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(1)
    }
}
