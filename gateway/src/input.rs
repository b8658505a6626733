//! A prediction's input as the client sent it, and the memo of its cache key.
//!
//! Before a request can look in the cache, its input is parsed, written in its
//! canonical form and hashed (SHA-256) into the key: 0.2–0.35 µs for a short
//! query or `{"product_id":"ETH/EUR"}`, 2.4–3.4 µs for ten numeric features
//! (criterion, `make bench-micro`), on every hit. The key depends only on the
//! model and the bytes sent, so it can be remembered by those bytes and never
//! goes out of date: a request that sends the same bytes again skips all of it.

use std::borrow::Cow;
use std::hash::{Hash, Hasher};

use axum::body::Bytes;
use axum::http::Uri;
use prediction_contract::{CanonicalInput, DuplicateKey, InvalidInput, ModelName};
use quick_cache::{Equivalent, Weighter};

use crate::cache::CacheKey;

/// Why an input cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// A body that is not a JSON object (or holds an unusable number).
    #[error(transparent)]
    Json(#[from] InvalidInput),
    /// A query that cannot be decoded, or names a parameter twice.
    #[error("{0}")]
    Query(String),
}

/// How the bytes of an input are to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Form {
    /// A JSON object, as a request body.
    Json,
    /// A URL query, each parameter a string field.
    Query,
}

/// A prediction's input, not yet parsed.
#[derive(Debug, Clone)]
pub enum RawInput {
    /// A JSON object sent as the request body.
    Json(Bytes),
    /// The query of this request URI (a cheap clone), each parameter a string
    /// field; none: `{}`.
    Query(Uri),
    /// An input a front door has already read, whose cache key is made of
    /// more than what the worker gets (the OpenAI door: the API and the
    /// caller's partition beside the request).
    Prepared {
        /// What the worker gets.
        payload: CanonicalInput,
        /// What the cache key is made of.
        key: CanonicalInput,
    },
    /// Tensors (the Open Inference Protocol), already read: the request in
    /// its binary form for the worker, and the key's material.
    Tensors {
        request: Bytes,
        header_length: usize,
        key: CanonicalInput,
    },
}

/// What a worker is sent.
#[derive(Debug, Clone)]
pub enum ModelInput {
    /// A JSON object, canonical.
    Json(CanonicalInput),
    /// An inference request in the binary form (see
    /// `prediction_contract::tensors`), its JSON header `header_length` long.
    Tensors {
        request: Bytes,
        header_length: usize,
    },
}

impl ModelInput {
    /// The message's payload.
    pub fn payload(&self) -> Bytes {
        match self {
            Self::Json(input) => Bytes::copy_from_slice(input.as_str().as_bytes()),
            Self::Tensors { request, .. } => request.clone(),
        }
    }

    /// The length of a tensor request's JSON header, for the message's
    /// `Inference-Header-Content-Length`.
    pub fn tensor_header_length(&self) -> Option<usize> {
        match self {
            Self::Json(_) => None,
            Self::Tensors { header_length, .. } => Some(*header_length),
        }
    }
}

/// An input read: its cache key's material and what its worker is sent.
#[derive(Debug)]
pub struct ReadInput {
    pub key_material: CanonicalInput,
    pub for_worker: ModelInput,
}

impl RawInput {
    /// How its bytes are read; `None` for an input a door has read, whose key
    /// is not remembered here (it is made without parsing anything).
    fn form(&self) -> Option<Form> {
        match self {
            Self::Json(_) => Some(Form::Json),
            Self::Query(_) => Some(Form::Query),
            Self::Prepared { .. } | Self::Tensors { .. } => None,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Json(body) => body,
            Self::Query(uri) => uri.query().unwrap_or_default().as_bytes(),
            Self::Prepared { payload, .. } => payload.as_str().as_bytes(),
            Self::Tensors { request, .. } => request,
        }
    }

    /// Reads the input once: its key's material and what the worker gets.
    pub fn read(&self) -> Result<ReadInput, InputError> {
        Ok(match self {
            Self::Prepared { payload, key } => ReadInput {
                key_material: key.clone(),
                for_worker: ModelInput::Json(payload.clone()),
            },
            Self::Tensors {
                request,
                header_length,
                key,
            } => ReadInput {
                key_material: key.clone(),
                for_worker: ModelInput::Tensors {
                    request: request.clone(),
                    header_length: *header_length,
                },
            },
            Self::Json(_) | Self::Query(_) => {
                let canonical = self.canonical()?;
                ReadInput {
                    key_material: canonical.clone(),
                    for_worker: ModelInput::Json(canonical),
                }
            }
        })
    }

    /// Parses the input into its canonical form, or says what is wrong with it.
    pub fn canonical(&self) -> Result<CanonicalInput, InputError> {
        match self {
            Self::Prepared { payload, .. } => Ok(payload.clone()),
            Self::Tensors { key, .. } => Ok(key.clone()),
            Self::Json(body) => Ok(CanonicalInput::from_json_slice(body)?),
            Self::Query(uri) => {
                let pairs = query_pairs(uri.query().unwrap_or_default())?;
                CanonicalInput::from_pairs(pairs.iter().map(|(k, v)| (k.as_ref(), v.as_ref())))
                    .map_err(|DuplicateKey(key)| {
                        InputError::Query(format!(
                            "query parameter {key:?} is given more than once"
                        ))
                    })
            }
        }
    }
}

/// A query parameter's name and value, decoded.
type QueryPair<'a> = (Cow<'a, str>, Cow<'a, str>);

/// The pairs of a query decoded as a form (`+` is a space, `%XX` a byte), as
/// axum's `Query` would, but strictly: an escape that is not `%` and two hex
/// digits, or bytes that are not UTF-8, are refused rather than replaced (two
/// different queries must never decode to one input, and so share an answer).
fn query_pairs(query: &str) -> Result<Vec<QueryPair<'_>>, InputError> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode_form_text(key)?, decode_form_text(value)?))
        })
        .collect()
}

fn decode_form_text(text: &str) -> Result<Cow<'_, str>, InputError> {
    if !text.contains(['%', '+']) {
        return Ok(Cow::Borrowed(text));
    }
    let bytes = text.as_bytes();
    let bad_escape = bytes.iter().enumerate().position(|(at, &byte)| {
        byte == b'%'
            && !bytes
                .get(at + 1..at + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    });
    if let Some(at) = bad_escape {
        let shown: String = text[at..].chars().take(3).collect();
        return Err(InputError::Query(format!(
            "the query holds {shown:?}, which is not a percent-escape (% and two hex digits)"
        )));
    }
    let spaced = text.replace('+', " ");
    match percent_encoding::percent_decode_str(&spaced).decode_utf8() {
        Ok(decoded) => Ok(Cow::Owned(decoded.into_owned())),
        Err(_) => Err(InputError::Query(format!(
            "the query parameter {:?} does not decode to UTF-8 text",
            text.chars().take(64).collect::<String>()
        ))),
    }
}

/// Inputs longer than this are not remembered: for them the canonical form is a
/// small part of a request's cost, and a few would crowd out many short ones.
const LONGEST_REMEMBERED: usize = 4 * 1024;

/// Cache keys by (model, form, bytes sent), up to a memory budget. The caller
/// remembers only hot inputs (see `Predictor::predict`): an input asked for
/// once costs one lookup more than before, ~50 ns.
#[derive(Debug)]
pub struct KeyMemo {
    keys: quick_cache::sync::Cache<Remembered, CacheKey, ByWeight>,
}

impl KeyMemo {
    /// A memo holding about `budget_bytes` of inputs and keys.
    pub fn new(budget_bytes: u64) -> Self {
        let typical_weight = 300;
        Self {
            keys: quick_cache::sync::Cache::with_weighter(
                usize::try_from(budget_bytes / typical_weight)
                    .unwrap_or(1)
                    .max(1),
                budget_bytes.max(1),
                ByWeight,
            ),
        }
    }

    /// The key of `input` to `model`, if remembered.
    pub fn get(&self, model: &ModelName, input: &RawInput) -> Option<CacheKey> {
        self.keys.get(&Sought {
            model: model.as_str(),
            form: input.form()?,
            bytes: input.as_bytes(),
        })
    }

    /// Remembers `key` as the key of `input` to `model`.
    pub fn remember(&self, model: &ModelName, input: &RawInput, key: &CacheKey) {
        let bytes = input.as_bytes();
        let Some(form) = input.form() else {
            return;
        };
        if bytes.len() > LONGEST_REMEMBERED {
            return;
        }
        let remembered = Remembered {
            model: model.clone(),
            form,
            bytes: bytes.into(),
        };
        self.keys.insert(remembered, key.clone());
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Remembered {
    model: ModelName,
    form: Form,
    bytes: Box<[u8]>,
}

/// A lookup of [`Remembered`] without copying the request's bytes; hashes the
/// same fields the same way.
struct Sought<'a> {
    model: &'a str,
    form: Form,
    bytes: &'a [u8],
}

impl Hash for Remembered {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_fields(self.model.as_str(), self.form, &self.bytes, state);
    }
}

impl Hash for Sought<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_fields(self.model, self.form, self.bytes, state);
    }
}

fn hash_fields<H: Hasher>(model: &str, form: Form, bytes: &[u8], state: &mut H) {
    model.hash(state);
    form.hash(state);
    bytes.hash(state);
}

impl Equivalent<Remembered> for Sought<'_> {
    fn equivalent(&self, key: &Remembered) -> bool {
        self.form == key.form && self.model == key.model.as_str() && self.bytes == &*key.bytes
    }
}

/// Memory an item takes besides its bytes: its two structs in the cache's
/// slot, three allocations' rounding, the cache's own bookkeeping
/// (`Cache::memory_used` and the items' heap bytes, over 100 000 short inputs:
/// ~290 bytes an item, ~130 of them the model, input and key).
const ITEM_OVERHEAD: u64 = 160;

/// Weighs an item by the memory it holds.
#[derive(Debug, Clone, Copy)]
struct ByWeight;

impl Weighter<Remembered, CacheKey> for ByWeight {
    fn weight(&self, remembered: &Remembered, key: &CacheKey) -> u64 {
        let bytes = remembered.model.as_str().len() + remembered.bytes.len() + key.as_str().len();
        u64::try_from(bytes)
            .unwrap_or(u64::MAX)
            .saturating_add(ITEM_OVERHEAD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(name: &str) -> ModelName {
        ModelName::parse(name).unwrap()
    }

    fn key_of(model: &ModelName, input: &RawInput) -> CacheKey {
        CacheKey::new("", model, &input.canonical().unwrap())
    }

    fn query(uri: &str) -> RawInput {
        RawInput::Query(uri.parse().unwrap())
    }

    #[test]
    fn queries_become_objects_of_strings_decoded_as_a_form() {
        let input = query("/v1/models/price/predict?product_id=ETH%2FEUR&note=a+b%20c");
        assert_eq!(
            input.canonical().unwrap().as_str(),
            r#"{"note":"a b c","product_id":"ETH/EUR"}"#
        );
        assert_eq!(
            query("/v1/models/price/predict")
                .canonical()
                .unwrap()
                .as_str(),
            "{}"
        );
    }

    #[test]
    fn invalid_escapes_and_bytes_that_are_not_utf8_are_refused() {
        for uri in [
            "/p?product_id=%ff",
            "/p?product_id=%fe",
            "/p?product_id=%zz",
            "/p?product_id=%2",
            "/p?a%ffb=1",
            "/p?product_id=ok&x=%",
        ] {
            let refused = query(uri).canonical();
            assert!(
                matches!(&refused, Err(InputError::Query(_))),
                "{uri}: {refused:?}"
            );
        }
        assert_eq!(
            query("/p?s=%C3%A9t%C3%A9").canonical().unwrap().as_str(),
            r#"{"s":"été"}"#
        );
        assert_eq!(
            query("/p?a&b=").canonical().unwrap().as_str(),
            r#"{"a":"","b":""}"#
        );
    }

    #[test]
    fn repeated_query_parameters_are_refused() {
        let refused = query("/v1/models/price/predict?a=1&b=2&a=3").canonical();
        assert!(
            matches!(&refused, Err(InputError::Query(message)) if message.contains("\"a\"")),
            "{refused:?}"
        );
    }

    #[test]
    fn a_remembered_key_is_found_by_the_same_model_form_and_bytes_only() {
        let memo = KeyMemo::new(1 << 20);
        let price = model("price");
        let input = RawInput::Json(Bytes::from_static(br#"{"product_id":"ETH/EUR"}"#));
        assert!(memo.get(&price, &input).is_none());
        let key = key_of(&price, &input);
        memo.remember(&price, &input, &key);
        assert_eq!(memo.get(&price, &input).as_ref(), Some(&key));

        // Another model, or other bytes with the same canonical form: each has
        // its own entry.
        assert!(memo.get(&model("other"), &input).is_none());
        let spaced = RawInput::Json(Bytes::from_static(br#"{ "product_id": "ETH/EUR" }"#));
        assert!(memo.get(&price, &spaced).is_none());

        // The same bytes as a query mean another input.
        let as_body = RawInput::Json(Bytes::from_static(b"product_id=ETH"));
        memo.remember(&price, &as_body, &key);
        assert!(memo.get(&price, &query("/p?product_id=ETH")).is_none());
    }

    #[test]
    fn long_inputs_are_not_remembered() {
        let memo = KeyMemo::new(1 << 20);
        let price = model("price");
        let long = format!(r#"{{"text":"{}"}}"#, "x".repeat(LONGEST_REMEMBERED));
        let input = RawInput::Json(Bytes::from(long));
        memo.remember(&price, &input, &key_of(&price, &input));
        assert!(memo.get(&price, &input).is_none());
    }

    #[test]
    fn the_memo_stays_within_its_budget() {
        let memo = KeyMemo::new(64 * 1024);
        let price = model("price");
        for i in 0..10_000 {
            let input = query(&format!("/p?product_id={i}"));
            memo.remember(&price, &input, &key_of(&price, &input));
        }
        assert!(memo.keys.weight() <= 64 * 1024, "{}", memo.keys.weight());
        assert!(memo.keys.len() > 100, "{}", memo.keys.len());
    }
}
