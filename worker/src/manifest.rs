//! The model manifest (`--model-config`): the models a worker serves beyond
//! the built-in ones, each a `[[model]]` table of one kind: `onnx` (the
//! default: an ONNX file, and how JSON inputs and outputs map to its tensors)
//! or `openai` (a server that speaks the OpenAI API: vLLM, llama.cpp's
//! server, Ollama, TGI, OpenAI itself, which the worker forwards to).
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
//!
//! [[model]]
//! name = "llama"
//! kind = "openai"
//! version = "llama-3.1-8b-instruct-q4"     # change it when answers may change
//! url = "http://127.0.0.1:8000/v1"         # what the OpenAI SDK calls base_url
//! upstream_model = "meta-llama/Llama-3.1-8B-Instruct"  # default: name
//! api_key_env = "VLLM_API_KEY"             # optional: the variable holding the key
//! concurrency = 16                         # requests in flight to the server
//! timeout = "10m"                          # a whole answer
//! first_chunk_timeout = "60s"              # until its first chunk
//! chunk_gap_timeout = "30s"                # between two chunks
//! cache_sampled = true                     # cache answers of sampled requests
//! freshness_ttl = "1h"
//! ```

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use prediction_contract::ModelName;
use serde::Deserialize;

use crate::model::GenerationBounds;

/// The requests an `openai` model has in flight to its server, unless set.
pub const DEFAULT_UPSTREAM_CONCURRENCY: usize = 16;
/// The bounds of an `openai` model's answers, unless set.
pub const DEFAULT_UPSTREAM_BOUNDS: GenerationBounds = GenerationBounds {
    total: Duration::from_secs(600),
    first_chunk: Duration::from_secs(60),
    between_chunks: Duration::from_secs(30),
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestFile {
    #[serde(default)]
    model: Vec<toml::Table>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOnnxEntry {
    name: String,
    #[allow(dead_code)]
    kind: Option<String>,
    version: String,
    path: PathBuf,
    freshness_ttl: Option<String>,
    input: Option<RawInput>,
    output: Option<BTreeMap<String, OutputField>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInput {
    field: Option<String>,
    fields: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstreamEntry {
    name: String,
    #[allow(dead_code)]
    kind: String,
    version: String,
    url: String,
    upstream_model: Option<String>,
    api_key_env: Option<String>,
    concurrency: Option<usize>,
    freshness_ttl: Option<String>,
    timeout: Option<String>,
    first_chunk_timeout: Option<String>,
    chunk_gap_timeout: Option<String>,
    cache_sampled: Option<bool>,
}

/// A model the manifest lists, checked.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelEntry {
    Onnx(OnnxEntry),
    Upstream(UpstreamEntry),
}

impl ModelEntry {
    pub fn name(&self) -> &ModelName {
        match self {
            Self::Onnx(entry) => &entry.name,
            Self::Upstream(entry) => &entry.name,
        }
    }
}

/// An ONNX model.
#[derive(Debug, Clone, PartialEq)]
pub struct OnnxEntry {
    pub name: ModelName,
    pub version: String,
    /// Resolved against the manifest's directory.
    pub path: PathBuf,
    pub freshness_ttl: Option<Duration>,
    /// How JSON inputs and predictions map to its tensors; `None`: it takes
    /// tensors only (the Open Inference Protocol).
    pub json: Option<JsonMapping>,
}

/// How a JSON input becomes the model's input tensor, and its outputs a JSON
/// prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonMapping {
    pub input: InputLayout,
    /// JSON field of the prediction → where its value comes from.
    pub output: BTreeMap<String, OutputField>,
}

/// A model an OpenAI-compatible server runs.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamEntry {
    pub name: ModelName,
    pub version: String,
    /// The API's base URL, up to and including `/v1`, without a trailing `/`.
    pub url: String,
    /// The model's name on the server.
    pub upstream_model: String,
    /// The API key, read at startup from the variable the manifest names.
    pub api_key: Option<String>,
    pub concurrency: usize,
    pub freshness_ttl: Option<Duration>,
    pub bounds: GenerationBounds,
    pub cache_sampled: bool,
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
    parse(&text, base, &|name| std::env::var(name).ok())
        .with_context(|| format!("in the model manifest {}", path.display()))
}

/// Parses a manifest whose relative paths are relative to `base`, reading
/// API keys with `env`.
pub fn parse(
    text: &str,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Vec<ModelEntry>> {
    let file: ManifestFile = toml::from_str(text)?;
    if file.model.is_empty() {
        bail!("it lists no model (add a [[model]] table)");
    }
    let mut names = HashSet::new();
    file.model
        .into_iter()
        .map(|table| {
            let label = table
                .get("name")
                .and_then(toml::Value::as_str)
                .unwrap_or("(no name)")
                .to_owned();
            let entry = check(table, base, env).with_context(|| format!("model {label:?}"))?;
            if !names.insert(entry.name().clone()) {
                bail!("model {label:?} is listed twice");
            }
            Ok(entry)
        })
        .collect()
}

fn check(
    table: toml::Table,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<ModelEntry> {
    match table.get("kind").map(|kind| kind.as_str()) {
        None | Some(Some("onnx")) => Ok(ModelEntry::Onnx(check_onnx(table.try_into()?, base)?)),
        Some(Some("openai")) => Ok(ModelEntry::Upstream(check_upstream(
            table.try_into()?,
            env,
        )?)),
        _ => bail!("`kind` must be \"onnx\" (the default) or \"openai\""),
    }
}

fn name_of(name: &str) -> anyhow::Result<ModelName> {
    ModelName::parse(name).map_err(|err| anyhow::anyhow!("{err}"))
}

fn duration(field: &str, text: Option<String>) -> anyhow::Result<Option<Duration>> {
    text.map(|text| {
        humantime::parse_duration(&text)
            .with_context(|| format!("`{field}` {text:?} is not a duration like \"30s\""))
    })
    .transpose()
}

fn check_onnx(raw: RawOnnxEntry, base: &Path) -> anyhow::Result<OnnxEntry> {
    let name = name_of(&raw.name)?;
    if raw.version.trim().is_empty() {
        bail!("`version` must not be empty");
    }
    let freshness_ttl = duration("freshness_ttl", raw.freshness_ttl)?;
    let json = match (raw.input, raw.output) {
        (None, None) => None,
        (Some(input), Some(output)) => Some(json_mapping(input, output)?),
        (None, Some(_)) => bail!(
            "`output` maps JSON fields but there is no `input`: give both, or neither for a model that takes tensors only"
        ),
        (Some(_), None) => bail!(
            "`input` is mapped but there is no `output`: give both, or neither for a model that takes tensors only"
        ),
    };
    Ok(OnnxEntry {
        name,
        version: raw.version,
        path: base.join(raw.path),
        freshness_ttl,
        json,
    })
}

fn json_mapping(
    input: RawInput,
    output: BTreeMap<String, OutputField>,
) -> anyhow::Result<JsonMapping> {
    let input = match (input.field, input.fields) {
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
    if output.is_empty() {
        bail!("`output` maps no field (e.g. predicted_price = {{ index = 0 }})");
    }
    Ok(JsonMapping { input, output })
}

fn check_upstream(
    raw: RawUpstreamEntry,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<UpstreamEntry> {
    let name = name_of(&raw.name)?;
    if raw.version.trim().is_empty() {
        bail!("`version` must not be empty");
    }
    if !(raw.url.starts_with("http://") || raw.url.starts_with("https://")) {
        bail!("`url` {:?} must be an http:// or https:// URL", raw.url);
    }
    let api_key = match raw.api_key_env {
        Some(variable) => Some(env(&variable).filter(|key| !key.is_empty()).with_context(
            || format!("`api_key_env` names {variable}, which is not set (or empty)"),
        )?),
        None => None,
    };
    let concurrency = raw.concurrency.unwrap_or(DEFAULT_UPSTREAM_CONCURRENCY);
    if concurrency == 0 {
        bail!("`concurrency` must be at least 1");
    }
    let defaults = DEFAULT_UPSTREAM_BOUNDS;
    let bounds = GenerationBounds {
        total: duration("timeout", raw.timeout)?.unwrap_or(defaults.total),
        first_chunk: duration("first_chunk_timeout", raw.first_chunk_timeout)?
            .unwrap_or(defaults.first_chunk),
        between_chunks: duration("chunk_gap_timeout", raw.chunk_gap_timeout)?
            .unwrap_or(defaults.between_chunks),
    };
    Ok(UpstreamEntry {
        upstream_model: raw.upstream_model.unwrap_or_else(|| raw.name.clone()),
        name,
        version: raw.version,
        url: raw.url.trim_end_matches('/').to_owned(),
        api_key,
        concurrency,
        freshness_ttl: duration("freshness_ttl", raw.freshness_ttl)?,
        bounds,
        cache_sampled: raw.cache_sampled.unwrap_or(true),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn onnx_entries(entries: Vec<ModelEntry>) -> Vec<OnnxEntry> {
        entries
            .into_iter()
            .map(|entry| match entry {
                ModelEntry::Onnx(entry) => entry,
                other => panic!("{other:?}"),
            })
            .collect()
    }

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
        let entries = onnx_entries(parse(GOOD, Path::new("/models"), &no_env).unwrap());
        assert_eq!(entries[0].name.as_str(), "price-gbt");
        assert_eq!(entries[0].path, Path::new("/models/price-gbt.onnx"));
        assert_eq!(entries[0].freshness_ttl, Some(Duration::from_secs(30)));
        let json = |entry: &OnnxEntry| entry.json.clone().unwrap();
        assert_eq!(
            json(&entries[0]).input,
            InputLayout::Array {
                field: "features".into()
            }
        );
        assert_eq!(
            json(&entries[0]).output["predicted_price"],
            OutputField {
                tensor: Some("variable".into()),
                index: Some(0)
            }
        );
        assert_eq!(entries[1].path, Path::new("/abs/ohlc.onnx"));
        assert_eq!(
            json(&entries[1]).input,
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
            (model(output), "there is no `input`"),
            (model("input = { field = \"x\" }"), "there is no `output`"),
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
            let err = format!("{:#}", parse(&text, Path::new("."), &no_env).unwrap_err());
            assert!(err.contains(reason), "{reason:?} not in: {err}");
        }
    }

    #[test]
    fn an_openai_model_reads_its_server_key_and_bounds() {
        let text = r#"
            [[model]]
            name = "llama"
            kind = "openai"
            version = "q4"
            url = "http://127.0.0.1:8000/v1/"
            api_key_env = "KEY"
            first_chunk_timeout = "5s"
            cache_sampled = false
        "#;
        let env = |name: &str| (name == "KEY").then(|| "secret".to_owned());
        let entries = parse(text, Path::new("."), &env).unwrap();
        let ModelEntry::Upstream(entry) = &entries[0] else {
            panic!("{entries:?}")
        };
        assert_eq!(entry.url, "http://127.0.0.1:8000/v1");
        assert_eq!(entry.upstream_model, "llama");
        assert_eq!(entry.api_key.as_deref(), Some("secret"));
        assert_eq!(entry.concurrency, DEFAULT_UPSTREAM_CONCURRENCY);
        assert_eq!(entry.bounds.first_chunk, Duration::from_secs(5));
        assert_eq!(entry.bounds.total, DEFAULT_UPSTREAM_BOUNDS.total);
        assert!(!entry.cache_sampled);
        for (body, reason) in [
            ("url = \"ftp://x\"", "must be an http"),
            (
                "url = \"http://x\"\napi_key_env = \"MISSING\"",
                "MISSING, which is not set",
            ),
            ("url = \"http://x\"\nconcurrency = 0", "at least 1"),
            (
                "url = \"http://x\"\npath = \"m.onnx\"",
                "unknown field `path`",
            ),
        ] {
            let text =
                format!("[[model]]\nname = \"m\"\nkind = \"openai\"\nversion = \"1\"\n{body}");
            let err = format!("{:#}", parse(&text, Path::new("."), &env).unwrap_err());
            assert!(err.contains(reason), "{reason:?} not in: {err}");
        }
        let err = parse(
            "[[model]]\nname = \"m\"\nkind = \"pytorch\"",
            Path::new("."),
            &env,
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("`kind` must be"));
    }
}
