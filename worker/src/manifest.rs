//! The model manifest (`--model-config`): the models a worker serves beyond
//! the built-in ones, each a `[[model]]` table of one kind: `onnx` (the
//! default: an ONNX file, and how JSON inputs and outputs map to its tensors,
//! if they do), `openai` (a server that speaks the OpenAI API: vLLM, llama.cpp's
//! server, Ollama, TGI, OpenAI itself, which the worker forwards to) or `oip`
//! (a model server that speaks the Open Inference Protocol: Triton, KServe,
//! MLServer, OpenVINO Model Server).
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
//!
//! [[model]]
//! name = "iris"
//! kind = "oip"
//! version = "iris-2"                       # in the cache key
//! url = "http://127.0.0.1:8000"            # the server's root, where /v2 is
//! upstream_model = "iris"                  # default: name
//! upstream_version = "2"                   # optional: /v2/models/iris/versions/2
//! binary_data = true                       # tensors in binary form (MLServer: false)
//! concurrency = 16
//! timeout = "30s"
//! ```

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use prediction_contract::ModelName;
use serde::Deserialize;

use crate::model::GenerationBounds;

/// The requests a model has in flight to its server, unless set.
pub const DEFAULT_CONCURRENCY: usize = 16;
/// How long an `oip` model's server may take to answer, unless set.
pub const DEFAULT_OIP_TIMEOUT: Duration = Duration::from_secs(30);
/// The bounds of an `openai` model's answers, unless set.
pub const DEFAULT_OPENAI_BOUNDS: GenerationBounds = GenerationBounds {
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
struct RawOpenAiEntry {
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOipEntry {
    name: String,
    #[allow(dead_code)]
    kind: String,
    version: String,
    url: String,
    upstream_model: Option<String>,
    upstream_version: Option<String>,
    binary_data: Option<bool>,
    api_key_env: Option<String>,
    concurrency: Option<usize>,
    freshness_ttl: Option<String>,
    timeout: Option<String>,
}

/// A model an Open Inference Protocol server runs.
#[derive(Debug, Clone, PartialEq)]
pub struct OipEntry {
    pub name: ModelName,
    pub version: String,
    /// The server's root URL (where `/v2` is), without a trailing `/`.
    pub url: String,
    pub upstream_model: String,
    pub upstream_version: Option<String>,
    /// Whether tensors travel in binary form (Triton, KServe, OVMS) or as
    /// JSON (MLServer).
    pub binary_data: bool,
    /// A bearer token for the server, read at startup from the variable the
    /// manifest names.
    pub api_key: Option<String>,
    pub concurrency: usize,
    pub freshness_ttl: Option<Duration>,
    pub timeout: Duration,
}

/// A model the manifest lists, checked.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelEntry {
    Onnx(OnnxEntry),
    OpenAi(OpenAiEntry),
    Oip(OipEntry),
}

impl ModelEntry {
    pub fn name(&self) -> &ModelName {
        match self {
            Self::Onnx(entry) => &entry.name,
            Self::OpenAi(entry) => &entry.name,
            Self::Oip(entry) => &entry.name,
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
pub struct OpenAiEntry {
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
        Some(Some("openai")) => Ok(ModelEntry::OpenAi(check_openai(table.try_into()?, env)?)),
        Some(Some("oip")) => Ok(ModelEntry::Oip(check_oip(table.try_into()?, env)?)),
        _ => bail!("`kind` must be \"onnx\" (the default), \"openai\" or \"oip\""),
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

/// What every model a server runs has: a version, the server's URL, its key
/// and how many requests it takes at once.
fn check_server(
    version: &str,
    url: &str,
    api_key_env: Option<String>,
    concurrency: Option<usize>,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<(Option<String>, usize)> {
    if version.trim().is_empty() {
        bail!("`version` must not be empty");
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        bail!("`url` {url:?} must be an http:// or https:// URL");
    }
    let api_key = match api_key_env {
        Some(variable) => Some(env(&variable).filter(|key| !key.is_empty()).with_context(
            || format!("`api_key_env` names {variable}, which is not set (or empty)"),
        )?),
        None => None,
    };
    let concurrency = concurrency.unwrap_or(DEFAULT_CONCURRENCY);
    if concurrency == 0 {
        bail!("`concurrency` must be at least 1");
    }
    Ok((api_key, concurrency))
}

fn check_oip(raw: RawOipEntry, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<OipEntry> {
    let name = name_of(&raw.name)?;
    let (api_key, concurrency) = check_server(
        &raw.version,
        &raw.url,
        raw.api_key_env,
        raw.concurrency,
        env,
    )?;
    Ok(OipEntry {
        upstream_model: raw.upstream_model.unwrap_or_else(|| raw.name.clone()),
        name,
        version: raw.version,
        url: raw.url.trim_end_matches('/').to_owned(),
        upstream_version: raw.upstream_version,
        binary_data: raw.binary_data.unwrap_or(true),
        api_key,
        concurrency,
        freshness_ttl: duration("freshness_ttl", raw.freshness_ttl)?,
        timeout: duration("timeout", raw.timeout)?.unwrap_or(DEFAULT_OIP_TIMEOUT),
    })
}

fn check_openai(
    raw: RawOpenAiEntry,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<OpenAiEntry> {
    let name = name_of(&raw.name)?;
    let (api_key, concurrency) = check_server(
        &raw.version,
        &raw.url,
        raw.api_key_env,
        raw.concurrency,
        env,
    )?;
    let defaults = DEFAULT_OPENAI_BOUNDS;
    let bounds = GenerationBounds {
        total: duration("timeout", raw.timeout)?.unwrap_or(defaults.total),
        first_chunk: duration("first_chunk_timeout", raw.first_chunk_timeout)?
            .unwrap_or(defaults.first_chunk),
        between_chunks: duration("chunk_gap_timeout", raw.chunk_gap_timeout)?
            .unwrap_or(defaults.between_chunks),
    };
    Ok(OpenAiEntry {
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
        let ModelEntry::OpenAi(entry) = &entries[0] else {
            panic!("{entries:?}")
        };
        assert_eq!(entry.url, "http://127.0.0.1:8000/v1");
        assert_eq!(entry.upstream_model, "llama");
        assert_eq!(entry.api_key.as_deref(), Some("secret"));
        assert_eq!(entry.concurrency, DEFAULT_CONCURRENCY);
        assert_eq!(entry.bounds.first_chunk, Duration::from_secs(5));
        assert_eq!(entry.bounds.total, DEFAULT_OPENAI_BOUNDS.total);
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

    #[test]
    fn an_oip_model_reads_its_server_and_how_tensors_travel() {
        let text = r#"
            [[model]]
            name = "iris"
            kind = "oip"
            version = "2"
            url = "http://127.0.0.1:8080/"
            upstream_version = "7"
            binary_data = false
        "#;
        let entries = parse(text, Path::new("."), &no_env).unwrap();
        let ModelEntry::Oip(entry) = &entries[0] else {
            panic!("{entries:?}")
        };
        assert_eq!(entry.url, "http://127.0.0.1:8080");
        assert_eq!(entry.upstream_model, "iris");
        assert_eq!(entry.upstream_version.as_deref(), Some("7"));
        assert!(!entry.binary_data);
        assert_eq!(entry.timeout, DEFAULT_OIP_TIMEOUT);
        let err = parse(
            &text.replace("http://127.0.0.1:8080/", "tcp://x"),
            Path::new("."),
            &no_env,
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("must be an http"));
    }
}
