//! The Python library's copy of the contract (`workers/python/.../contract.py`)
//! agrees with this crate: a constant changed on one side alone fails here.

use std::collections::BTreeMap;

use prediction_contract::headers::{self, error_codes, reply_kinds};
use prediction_contract::subjects;

/// `NAME = "text"` and `NAME = 123` lines of the Python module.
fn python_constants() -> BTreeMap<String, String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../workers/python/src/prediction_worker/contract.py"
    );
    let source = std::fs::read_to_string(path).expect("the Python contract is readable");
    source
        .lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(" = ")?;
            let is_constant = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit());
            let value = value.trim();
            let value = if let Some(text) = value.strip_prefix('"') {
                text.strip_suffix('"')?.to_owned()
            } else if value.chars().all(|c| c.is_ascii_digit()) {
                value.to_owned()
            } else {
                return None;
            };
            is_constant.then(|| (name.to_owned(), value))
        })
        .collect()
}

#[test]
fn the_python_librarys_constants_are_this_crates() {
    let rust: BTreeMap<&str, String> = [
        ("SERVICE_NAME", subjects::SERVICE_NAME.to_owned()),
        ("QUEUE_GROUP", subjects::QUEUE_GROUP.to_owned()),
        (
            "PREDICT_SUBJECT_PREFIX",
            subjects::PREDICT_SUBJECT_PREFIX.to_owned(),
        ),
        (
            "CANCEL_SUBJECT_PREFIX",
            subjects::CANCEL_SUBJECT_PREFIX.to_owned(),
        ),
        ("REQUEST_ID", headers::REQUEST_ID.to_owned()),
        ("REPLY_STREAM", headers::REPLY_STREAM.to_owned()),
        ("OPENAI_API", headers::OPENAI_API.to_owned()),
        (
            "INFERENCE_HEADER_CONTENT_LENGTH",
            prediction_contract::tensors::INFERENCE_HEADER_CONTENT_LENGTH.to_owned(),
        ),
        ("TENSORS_METADATA", headers::TENSORS_METADATA.to_owned()),
        ("CHUNK", reply_kinds::CHUNK.to_owned()),
        ("END", reply_kinds::END.to_owned()),
        ("WORKER_ID", headers::WORKER_ID.to_owned()),
        ("STREAMS_METADATA", headers::STREAMS_METADATA.to_owned()),
        (
            "TIMEOUT_MS_METADATA",
            headers::TIMEOUT_MS_METADATA.to_owned(),
        ),
        (
            "FIRST_CHUNK_MS_METADATA",
            headers::FIRST_CHUNK_MS_METADATA.to_owned(),
        ),
        (
            "CHUNK_GAP_MS_METADATA",
            headers::CHUNK_GAP_MS_METADATA.to_owned(),
        ),
        (
            "CACHE_SAMPLED_METADATA",
            headers::CACHE_SAMPLED_METADATA.to_owned(),
        ),
        ("DEADLINE_UNIX_MS", headers::DEADLINE_UNIX_MS.to_owned()),
        ("AVOID_BACKLOG", headers::AVOID_BACKLOG.to_owned()),
        ("HEARTBEAT_MS", headers::HEARTBEAT_MS.to_owned()),
        ("TRACEPARENT", headers::TRACEPARENT.to_owned()),
        ("MODEL_VERSION", headers::MODEL_VERSION.to_owned()),
        ("FRESHNESS_TTL_MS", headers::FRESHNESS_TTL_MS.to_owned()),
        ("COMPUTE_TIME_MS", headers::COMPUTE_TIME_MS.to_owned()),
        ("REPLY_KIND", headers::REPLY_KIND.to_owned()),
        ("HEARTBEAT", reply_kinds::HEARTBEAT.to_owned()),
        (
            "HEARTBEATS_METADATA",
            headers::HEARTBEATS_METADATA.to_owned(),
        ),
        ("BAD_INPUT", error_codes::BAD_INPUT.to_string()),
        ("MODEL_FAILED", error_codes::MODEL_FAILED.to_string()),
        ("BUSY", error_codes::BUSY.to_string()),
        (
            "DEADLINE_EXCEEDED",
            error_codes::DEADLINE_EXCEEDED.to_string(),
        ),
    ]
    .into_iter()
    .collect();
    let python = python_constants();
    for (name, value) in &rust {
        assert_eq!(
            python.get(*name),
            Some(value),
            "{name}: Python says {:?}, Rust {value:?}",
            python.get(*name)
        );
    }
    for name in python.keys() {
        assert!(
            rust.contains_key(name.as_str()),
            "the Python contract has {name}, which this test does not check against Rust"
        );
    }
}
