//! A fast evaluator for ONNX tree ensembles (`ai.onnx.ml.TreeEnsembleRegressor`).
//!
//! tract has no `TreeEnsembleRegressor`, and its generic tree evaluator walks
//! tensors of packed nodes per row. This one flattens every tree into one array
//! of small nodes, tree after tree, validated once at load time so that the
//! per-row walk is a tight loop with no checks left to do.
//!
//! Semantics follow the ONNX operator and onnxruntime: `BRANCH_*` compare
//! `x[feature]` with the node's threshold and take the true branch when the
//! comparison holds; a missing value (NaN) takes the true branch where the node's
//! `missing_value_tracks_true` is set; leaves add `weight` to their target; the
//! trees' contributions are aggregated (SUM, AVERAGE, MIN or MAX) and added to the
//! base values.

use std::collections::HashMap;

use anyhow::{Context, bail, ensure};

/// How a branch node compares a feature with its threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    LessOrEqual,
    Less,
    GreaterOrEqual,
    Greater,
    Equal,
    NotEqual,
}

impl Comparison {
    /// The comparison of an ONNX `nodes_modes` value; `None` for `LEAF`.
    pub fn parse(mode: &str) -> anyhow::Result<Option<Self>> {
        Ok(Some(match mode {
            "BRANCH_LEQ" => Self::LessOrEqual,
            "BRANCH_LT" => Self::Less,
            "BRANCH_GTE" => Self::GreaterOrEqual,
            "BRANCH_GT" => Self::Greater,
            "BRANCH_EQ" => Self::Equal,
            "BRANCH_NEQ" => Self::NotEqual,
            "LEAF" => return Ok(None),
            other => bail!("unknown node mode {other:?}"),
        }))
    }

    #[inline(always)]
    fn holds(self, value: f32, threshold: f32) -> bool {
        match self {
            Self::LessOrEqual => value <= threshold,
            Self::Less => value < threshold,
            Self::GreaterOrEqual => value >= threshold,
            Self::Greater => value > threshold,
            Self::Equal => value == threshold,
            Self::NotEqual => value != threshold,
        }
    }
}

/// How the trees' contributions to a target combine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Aggregate {
    #[default]
    Sum,
    Average,
    Min,
    Max,
}

impl Aggregate {
    pub fn parse(name: &str) -> anyhow::Result<Self> {
        Ok(match name {
            "SUM" => Self::Sum,
            "AVERAGE" => Self::Average,
            "MIN" => Self::Min,
            "MAX" => Self::Max,
            other => bail!("unknown aggregate_function {other:?}"),
        })
    }
}

/// The ensemble as the ONNX attributes describe it: one entry per node, and one
/// per (leaf, target) weight.
#[derive(Debug, Clone, Default)]
pub struct EnsembleSpec {
    pub tree_ids: Vec<i64>,
    pub node_ids: Vec<i64>,
    pub feature_ids: Vec<i64>,
    pub thresholds: Vec<f32>,
    /// `None` for a leaf.
    pub comparisons: Vec<Option<Comparison>>,
    pub true_node_ids: Vec<i64>,
    pub false_node_ids: Vec<i64>,
    /// Empty when the model leaves it out (every entry false).
    pub missing_tracks_true: Vec<bool>,
    pub target_tree_ids: Vec<i64>,
    pub target_node_ids: Vec<i64>,
    pub target_ids: Vec<i64>,
    pub target_weights: Vec<f32>,
    pub n_targets: usize,
    pub base_values: Vec<f32>,
    pub aggregate: Aggregate,
}

/// A node as evaluated: a branch, or a leaf pointing at its weights.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Node {
    /// For a branch, the feature compared; unused in a leaf.
    feature: u32,
    threshold: f32,
    /// For a branch, the index of the true child; for a leaf, the first of its
    /// weights in `leaf_weights`.
    true_or_first_weight: u32,
    /// For a branch, the index of the false child; for a leaf, one past its last weight.
    false_or_end_weight: u32,
    /// `None` for a leaf.
    comparison: Option<Comparison>,
    missing_tracks_true: bool,
}

/// A validated, flattened tree ensemble.
#[derive(Debug, Clone, PartialEq)]
pub struct TreeEnsemble {
    nodes: Vec<Node>,
    /// Index of each tree's root in `nodes`.
    roots: Vec<u32>,
    /// (target, weight) of every leaf, grouped by leaf.
    leaf_weights: Vec<(u32, f32)>,
    n_features: usize,
    n_targets: usize,
    base_values: Vec<f32>,
    aggregate: Aggregate,
}

impl TreeEnsemble {
    /// Checks and flattens `spec`: every child exists in its own tree, every tree
    /// has one root and no cycle, every weight lands on a leaf and a valid target.
    /// After this, evaluation cannot index out of bounds or loop.
    pub fn build(spec: EnsembleSpec) -> anyhow::Result<Self> {
        let count = spec.node_ids.len();
        for (name, len) in [
            ("nodes_treeids", spec.tree_ids.len()),
            ("nodes_featureids", spec.feature_ids.len()),
            ("nodes_values", spec.thresholds.len()),
            ("nodes_modes", spec.comparisons.len()),
            ("nodes_truenodeids", spec.true_node_ids.len()),
            ("nodes_falsenodeids", spec.false_node_ids.len()),
        ] {
            ensure!(
                len == count,
                "{name} has {len} entries, nodes_nodeids {count}"
            );
        }
        ensure!(
            spec.missing_tracks_true.is_empty() || spec.missing_tracks_true.len() == count,
            "nodes_missing_value_tracks_true has {} entries, nodes_nodeids {count}",
            spec.missing_tracks_true.len()
        );
        let weights = spec.target_ids.len();
        ensure!(
            spec.target_tree_ids.len() == weights
                && spec.target_node_ids.len() == weights
                && spec.target_weights.len() == weights,
            "the target_* attributes differ in length"
        );
        ensure!(spec.n_targets > 0, "n_targets must be at least 1");
        ensure!(
            spec.base_values.is_empty() || spec.base_values.len() == spec.n_targets,
            "base_values has {} entries for {} targets",
            spec.base_values.len(),
            spec.n_targets
        );
        ensure!(count > 0, "the ensemble has no node");
        ensure!(count < u32::MAX as usize, "too many nodes");

        // Order the nodes tree by tree (stable, so each tree keeps its own order).
        let mut order: Vec<usize> = (0..count).collect();
        order.sort_by_key(|&i| spec.tree_ids[i]);
        let mut position = HashMap::with_capacity(count);
        for (flat, &original) in order.iter().enumerate() {
            let key = (spec.tree_ids[original], spec.node_ids[original]);
            if position.insert(key, flat as u32).is_some() {
                bail!("node {} of tree {} is defined twice", key.1, key.0);
            }
        }

        // Leaf weights, grouped by leaf in flat order.
        let mut weights_of: HashMap<u32, Vec<(u32, f32)>> = HashMap::new();
        for i in 0..weights {
            let key = (spec.target_tree_ids[i], spec.target_node_ids[i]);
            let &flat = position.get(&key).with_context(|| {
                format!(
                    "a weight names node {} of tree {}, which does not exist",
                    key.1, key.0
                )
            })?;
            let target = usize::try_from(spec.target_ids[i])
                .ok()
                .filter(|&t| t < spec.n_targets)
                .with_context(|| {
                    format!(
                        "target id {} is not below n_targets {}",
                        spec.target_ids[i], spec.n_targets
                    )
                })?;
            weights_of
                .entry(flat)
                .or_default()
                .push((target as u32, spec.target_weights[i]));
        }

        let mut nodes = Vec::with_capacity(count);
        let mut leaf_weights = Vec::new();
        let mut has_parent = vec![false; count];
        let mut n_features = 0;
        for (flat, &original) in order.iter().enumerate() {
            let tree = spec.tree_ids[original];
            let comparison = spec.comparisons[original];
            let node = match comparison {
                None => {
                    let first = leaf_weights.len() as u32;
                    leaf_weights.extend(weights_of.remove(&(flat as u32)).unwrap_or_default());
                    Node {
                        feature: 0,
                        threshold: 0.0,
                        true_or_first_weight: first,
                        false_or_end_weight: leaf_weights.len() as u32,
                        comparison: None,
                        missing_tracks_true: false,
                    }
                }
                Some(comparison) => {
                    let child = |id: i64| {
                        position.get(&(tree, id)).copied().with_context(|| {
                            format!(
                                "node {} of tree {tree} points at node {id}, which does not exist",
                                spec.node_ids[original]
                            )
                        })
                    };
                    let (on_true, on_false) = (
                        child(spec.true_node_ids[original])?,
                        child(spec.false_node_ids[original])?,
                    );
                    has_parent[on_true as usize] = true;
                    has_parent[on_false as usize] = true;
                    let feature = usize::try_from(spec.feature_ids[original])
                        .ok()
                        .filter(|&f| f < u32::MAX as usize)
                        .with_context(|| {
                            format!("feature id {} is invalid", spec.feature_ids[original])
                        })?;
                    n_features = n_features.max(feature + 1);
                    Node {
                        feature: feature as u32,
                        threshold: spec.thresholds[original],
                        true_or_first_weight: on_true,
                        false_or_end_weight: on_false,
                        comparison: Some(comparison),
                        missing_tracks_true: spec
                            .missing_tracks_true
                            .get(original)
                            .copied()
                            .unwrap_or(false),
                    }
                }
            };
            nodes.push(node);
        }
        if let Some((&flat, _)) = weights_of.iter().next() {
            bail!(
                "a weight is attached to node {} of tree {}, which is not a leaf",
                spec.node_ids[order[flat as usize]],
                spec.tree_ids[order[flat as usize]]
            );
        }

        // One root per tree: its only node without a parent.
        let mut roots = Vec::new();
        let mut previous_tree = None;
        for (flat, &original) in order.iter().enumerate() {
            let tree = spec.tree_ids[original];
            if previous_tree != Some(tree) {
                previous_tree = Some(tree);
                roots.push(None);
            }
            if !has_parent[flat] {
                let root = roots.last_mut().expect("pushed above");
                ensure!(root.is_none(), "tree {tree} has more than one root");
                *root = Some(flat as u32);
            }
        }
        let roots = roots
            .into_iter()
            .map(|root| root.context("a tree has no root (its nodes form a cycle)"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let ensemble = Self {
            nodes,
            roots,
            leaf_weights,
            n_features,
            n_targets: spec.n_targets,
            base_values: if spec.base_values.is_empty() {
                vec![0.0; spec.n_targets]
            } else {
                spec.base_values
            },
            aggregate: spec.aggregate,
        };
        ensemble.check_acyclic()?;
        Ok(ensemble)
    }

    /// No walk from a root may come back to a node it passed through: a depth-first
    /// search marking the nodes on the current path (each node visited once).
    fn check_acyclic(&self) -> anyhow::Result<()> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            Unvisited,
            OnPath,
            Done,
        }
        let mut marks = vec![Mark::Unvisited; self.nodes.len()];
        for &root in &self.roots {
            // (node, whether its children have been pushed)
            let mut stack = vec![(root, false)];
            while let Some((index, expanded)) = stack.pop() {
                let node = self.nodes[index as usize];
                if expanded {
                    marks[index as usize] = Mark::Done;
                    continue;
                }
                match marks[index as usize] {
                    Mark::Done => continue,
                    Mark::OnPath => bail!("the nodes of a tree form a cycle"),
                    Mark::Unvisited => {}
                }
                marks[index as usize] = Mark::OnPath;
                stack.push((index, true));
                if node.comparison.is_some() {
                    for child in [node.true_or_first_weight, node.false_or_end_weight] {
                        ensure!(
                            marks[child as usize] != Mark::OnPath,
                            "the nodes of a tree form a cycle"
                        );
                        if marks[child as usize] == Mark::Unvisited {
                            stack.push((child, false));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// How many features a row needs (one past the highest feature compared).
    pub fn n_features(&self) -> usize {
        self.n_features
    }

    pub fn n_targets(&self) -> usize {
        self.n_targets
    }

    /// Evaluates `rows` (row-major, `row_len` features each, `row_len >=
    /// n_features` and at least 1) into `out` (row-major, `n_targets` per row).
    pub fn evaluate(&self, rows: &[f32], row_len: usize, out: &mut [f32]) {
        assert!(row_len >= self.n_features.max(1), "rows are too short");
        let n_rows = rows.len() / row_len;
        assert_eq!(
            out.len(),
            n_rows * self.n_targets,
            "output of the wrong size"
        );
        let mut scores = vec![0f64; self.n_targets];
        let mut seen = vec![false; self.n_targets];
        for (row, out) in rows
            .chunks_exact(row_len)
            .zip(out.chunks_exact_mut(self.n_targets))
        {
            scores.fill(0.0);
            seen.fill(false);
            for &root in &self.roots {
                let leaf = self.leaf_of(root, row);
                let weights = &self.leaf_weights
                    [leaf.true_or_first_weight as usize..leaf.false_or_end_weight as usize];
                for &(target, weight) in weights {
                    let (score, seen) = (&mut scores[target as usize], &mut seen[target as usize]);
                    let weight = f64::from(weight);
                    *score = match self.aggregate {
                        Aggregate::Sum | Aggregate::Average => *score + weight,
                        Aggregate::Min if *seen => score.min(weight),
                        Aggregate::Max if *seen => score.max(weight),
                        Aggregate::Min | Aggregate::Max => weight,
                    };
                    *seen = true;
                }
            }
            for ((out, score), base) in out.iter_mut().zip(&scores).zip(&self.base_values) {
                let score = match self.aggregate {
                    Aggregate::Average => score / self.roots.len() as f64,
                    _ => *score,
                };
                *out = (score + f64::from(*base)) as f32;
            }
        }
    }

    #[inline(always)]
    fn leaf_of(&self, root: u32, row: &[f32]) -> Node {
        let mut node = self.nodes[root as usize];
        while let Some(comparison) = node.comparison {
            let value = row[node.feature as usize];
            let goes_true = comparison.holds(value, node.threshold)
                || (node.missing_tracks_true && value.is_nan());
            let next = if goes_true {
                node.true_or_first_weight
            } else {
                node.false_or_end_weight
            };
            node = self.nodes[next as usize];
        }
        node
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two stumps on features 0 and 1, weights 1/2 and 10/20, base 100.
    fn two_stumps(aggregate: Aggregate) -> EnsembleSpec {
        use Comparison::LessOrEqual;
        EnsembleSpec {
            tree_ids: vec![0, 0, 0, 1, 1, 1],
            node_ids: vec![0, 1, 2, 0, 1, 2],
            feature_ids: vec![0, 0, 0, 1, 0, 0],
            thresholds: vec![0.5, 0.0, 0.0, 5.0, 0.0, 0.0],
            comparisons: vec![Some(LessOrEqual), None, None, Some(LessOrEqual), None, None],
            true_node_ids: vec![1, 0, 0, 1, 0, 0],
            false_node_ids: vec![2, 0, 0, 2, 0, 0],
            missing_tracks_true: vec![true, false, false, false, false, false],
            target_tree_ids: vec![0, 0, 1, 1],
            target_node_ids: vec![1, 2, 1, 2],
            target_ids: vec![0, 0, 0, 0],
            target_weights: vec![1.0, 2.0, 10.0, 20.0],
            n_targets: 1,
            base_values: vec![100.0],
            aggregate,
        }
    }

    fn evaluate(ensemble: &TreeEnsemble, rows: &[[f32; 2]]) -> Vec<f32> {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let mut out = vec![0.0; rows.len()];
        ensemble.evaluate(&flat, 2, &mut out);
        out
    }

    #[test]
    fn sums_the_leaves_each_row_reaches_plus_the_base() {
        let ensemble = TreeEnsemble::build(two_stumps(Aggregate::Sum)).unwrap();
        assert_eq!(ensemble.n_features(), 2);
        let out = evaluate(&ensemble, &[[0.0, 0.0], [1.0, 0.0], [0.5, 5.0], [1.0, 6.0]]);
        assert_eq!(out, [111.0, 112.0, 111.0, 122.0]);
    }

    #[test]
    fn missing_values_follow_the_node_flag() {
        let ensemble = TreeEnsemble::build(two_stumps(Aggregate::Sum)).unwrap();
        // Tree 0 sends NaN to its true branch (1), tree 1 to its false branch (20).
        assert_eq!(evaluate(&ensemble, &[[f32::NAN, f32::NAN]]), [121.0]);
    }

    #[test]
    fn other_aggregates() {
        let row = [[1.0, 0.0]]; // reaches weights 2 and 10
        for (aggregate, expected) in [
            (Aggregate::Average, 106.0),
            (Aggregate::Min, 102.0),
            (Aggregate::Max, 110.0),
        ] {
            let ensemble = TreeEnsemble::build(two_stumps(aggregate)).unwrap();
            assert_eq!(evaluate(&ensemble, &row), [expected], "{aggregate:?}");
        }
    }

    #[test]
    fn malformed_ensembles_are_refused_with_a_reason() {
        let mut dangling = two_stumps(Aggregate::Sum);
        dangling.true_node_ids[0] = 7;
        let mut cycle = two_stumps(Aggregate::Sum);
        // Node 1 of tree 1 becomes a branch back to the root.
        cycle.comparisons[4] = Some(Comparison::Less);
        cycle.true_node_ids[4] = 0;
        cycle.false_node_ids[4] = 2;
        cycle.target_weights.truncate(3);
        cycle.target_ids.truncate(3);
        cycle.target_node_ids = vec![1, 2, 2];
        cycle.target_tree_ids.truncate(3);
        let mut weight_on_branch = two_stumps(Aggregate::Sum);
        weight_on_branch.target_node_ids[0] = 0;
        let mut bad_target = two_stumps(Aggregate::Sum);
        bad_target.target_ids[0] = 3;
        for (spec, reason) in [
            (dangling, "does not exist"),
            (cycle, "cycle"),
            (weight_on_branch, "not a leaf"),
            (bad_target, "not below n_targets"),
        ] {
            let err = TreeEnsemble::build(spec).unwrap_err().to_string();
            assert!(err.contains(reason), "{err}");
        }
    }
}
