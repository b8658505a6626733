//! The model manifest (`--model-config`): which ONNX files to serve, and how JSON
//! inputs and outputs map to their tensors.
//!
//! ```toml
//! [[model]]
//! name = "price-gbt"
//! version = "1.0.0"
//! path = "price-gbt.onnx"          # relative to this file
//! freshness_ttl = "30s"            # optional; the gateway's default otherwise
//! input = { field = "features" }   # {"features": [10 numbers]}
//! # or: input = { fields = ["open", "high", "low", "close"] }
//! [model.output]
//! predicted_price = { tensor = "variable", index = 0 }
//! ```

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use prediction_contract::ModelName;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestFile {
    #[serde(default)]
    model: Vec<RawEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    name: String,
    version: String,
    path: PathBuf,
    freshness_ttl: Option<String>,
    input: RawInput,
    output: BTreeMap<String, OutputField>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInput {
    field: Option<String>,
    fields: Option<Vec<String>>,
}

/// A model the manifest lists, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelEntry {
    pub name: ModelName,
    pub version: String,
    /// Resolved against the manifest's directory.
    pub path: PathBuf,
    pub freshness_ttl: Option<Duration>,
    pub input: InputLayout,
    /// JSON field of the prediction → where its value comes from.
    pub output: BTreeMap<String, OutputField>,
}

/// How a JSON input becomes one row of the model's input tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputLayout {
    /// One field holding an array with one number per column.
    Array { field: String },
    /// One number field per column, in this order.
    Fields(Vec<String>),
}

/// Where an output field's value is read.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputField {
    /// The output tensor's name; the model's first output when left out.
    pub tensor: Option<String>,
    /// The column of the row; the whole row as an array when left out.
    pub index: Option<usize>,
}

/// Reads and checks the manifest at `path`.
pub fn load(path: &Path) -> anyhow::Result<Vec<ModelEntry>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the model manifest {}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, base).with_context(|| format!("in the model manifest {}", path.display()))
}

/// Parses a manifest whose relative paths are relative to `base`.
pub fn parse(text: &str, base: &Path) -> anyhow::Result<Vec<ModelEntry>> {
    let file: ManifestFile = toml::from_str(text)?;
    if file.model.is_empty() {
        bail!("it lists no model (add a [[model]] table)");
    }
    let mut names = HashSet::new();
    file.model
        .into_iter()
        .map(|raw| {
            let label = raw.name.clone();
            let entry = check(raw, base).with_context(|| format!("model {label:?}"))?;
            if !names.insert(entry.name.clone()) {
                bail!("model {label:?} is listed twice");
            }
            Ok(entry)
        })
        .collect()
}

fn check(raw: RawEntry, base: &Path) -> anyhow::Result<ModelEntry> {
    let name = ModelName::parse(&raw.name).map_err(|err| anyhow::anyhow!("{err}"))?;
    if raw.version.trim().is_empty() {
        bail!("`version` must not be empty");
    }
    let freshness_ttl = raw
        .freshness_ttl
        .map(|text| {
            humantime::parse_duration(&text)
                .with_context(|| format!("`freshness_ttl` {text:?} is not a duration like \"30s\""))
        })
        .transpose()?;
    let input = match (raw.input.field, raw.input.fields) {
        (Some(field), None) if !field.is_empty() => InputLayout::Array { field },
        (None, Some(fields)) if !fields.is_empty() => {
            let mut seen = HashSet::new();
            if let Some(duplicate) = fields.iter().find(|field| !seen.insert(*field)) {
                bail!("input field {duplicate:?} is listed twice");
            }
            InputLayout::Fields(fields)
        }
        _ => bail!(
            "`input` needs exactly one of `field` (an array of numbers) or `fields` (a non-empty list of number fields)"
        ),
    };
    if raw.output.is_empty() {
        bail!("`output` maps no field (e.g. predicted_price = {{ index = 0 }})");
    }
    Ok(ModelEntry {
        name,
        version: raw.version,
        path: base.join(raw.path),
        freshness_ttl,
        input,
        output: raw.output,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [[model]]
        name = "price-gbt"
        version = "1.0.0"
        path = "price-gbt.onnx"
        freshness_ttl = "30s"
        input = { field = "features" }
        [model.output]
        predicted_price = { tensor = "variable", index = 0 }

        [[model]]
        name = "ohlc"
        version = "2"
        path = "/abs/ohlc.onnx"
        input = { fields = ["open", "close"] }
        output = { scores = {} }
    "#;

    #[test]
    fn reads_both_input_layouts_and_resolves_paths() {
        let entries = parse(GOOD, Path::new("/models")).unwrap();
        assert_eq!(entries[0].name.as_str(), "price-gbt");
        assert_eq!(entries[0].path, Path::new("/models/price-gbt.onnx"));
        assert_eq!(entries[0].freshness_ttl, Some(Duration::from_secs(30)));
        assert_eq!(
            entries[0].input,
            InputLayout::Array {
                field: "features".into()
            }
        );
        assert_eq!(
            entries[0].output["predicted_price"],
            OutputField {
                tensor: Some("variable".into()),
                index: Some(0)
            }
        );
        assert_eq!(entries[1].path, Path::new("/abs/ohlc.onnx"));
        assert_eq!(
            entries[1].input,
            InputLayout::Fields(vec!["open".into(), "close".into()])
        );
        assert_eq!(entries[1].freshness_ttl, None);
    }

    #[test]
    fn mistakes_are_reported_with_the_model_and_the_reason() {
        let model = |body: &str| {
            format!("[[model]]\nname = \"m\"\nversion = \"1\"\npath = \"m.onnx\"\n{body}")
        };
        let output = "output = { y = { index = 0 } }";
        for (text, reason) in [
            (String::new(), "lists no model"),
            (model(output), "missing field `input`"),
            (model(&format!("input = {{}}\n{output}")), "exactly one of"),
            (
                model(&format!(
                    "input = {{ field = \"x\", fields = [\"y\"] }}\n{output}"
                )),
                "exactly one of",
            ),
            (
                model(&format!("input = {{ fields = [\"a\", \"a\"] }}\n{output}")),
                "listed twice",
            ),
            (
                model("input = { field = \"x\" }\noutput = {}"),
                "maps no field",
            ),
            (
                model(&format!(
                    "input = {{ field = \"x\" }}\n{output}\ncolour = 1"
                )),
                "unknown field `colour`",
            ),
            (
                model(&format!(
                    "input = {{ field = \"x\" }}\n{output}\nfreshness_ttl = \"soon\""
                )),
                "is not a duration",
            ),
            (
                format!(
                    "{0}\n{0}",
                    model(&format!("input = {{ field = \"x\" }}\n{output}"))
                ),
                "listed twice",
            ),
            (
                model(&format!("input = {{ field = \"x\" }}\n{output}"))
                    .replace("\"m\"", "\"M.x\""),
                "model \"M.x\"",
            ),
        ] {
            let err = format!("{:#}", parse(&text, Path::new(".")).unwrap_err());
            assert!(err.contains(reason), "{reason:?} not in: {err}");
        }
    }
}
