//! The canonical form of a prediction input: what the gateway sends a worker, and
//! what its cache keys hash.
//!
//! The cache rests on one rule: a prediction depends only on (model, model version,
//! input). So two spellings of the same input must share one cache entry and two
//! different inputs must never do. The canonical form follows RFC 8785 (JCS): object
//! keys sorted by UTF-16 code units at every depth, no insignificant whitespace,
//! strings escaped minimally, and one spelling per number.
//!
//! Numbers are where JCS alone is not enough: it spells a number through an f64, so
//! `9007199254740993` and `9007199254740992` would collide. Here each number is
//! normalised from its exact decimal text instead (serde_json's `arbitrary_precision`
//! keeps it), so `1`, `1.0`, `10e-1` and `1E0` share a spelling while numbers an f64
//! cannot tell apart keep distinct ones. For every number an f64 holds exactly the
//! spelling is the one JCS gives.

use std::cmp::Ordering;
use std::fmt::Write as _;

use serde_json::{Map, Number, Value};

/// Exponents beyond this are refused: no model input needs them and they would let
/// a tiny body expand into a huge canonical form.
const MAX_DECIMAL_EXPONENT: i64 = 1_000;

/// Why a request body is not a usable prediction input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidInput {
    #[error("the body is not valid JSON: {0}")]
    Json(String),
    #[error("the input must be a JSON object, found {0}")]
    NotAnObject(&'static str),
    #[error("the number {0} is out of the supported range (|exponent| <= {MAX_DECIMAL_EXPONENT})")]
    NumberOutOfRange(String),
}

/// A key given more than once in [`CanonicalInput::from_pairs`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is given more than once")]
pub struct DuplicateKey(pub String);

/// A prediction input in canonical form: a JSON object, serialised as described in
/// the module docs. It is both what the gateway forwards to the worker and what the
/// cache key hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalInput {
    text: String,
}

impl CanonicalInput {
    /// Parses a request body, which must be one JSON object.
    pub fn from_json_slice(body: &[u8]) -> Result<Self, InvalidInput> {
        let value: Value =
            serde_json::from_slice(body).map_err(|err| InvalidInput::Json(err.to_string()))?;
        Self::from_value(&value)
    }

    /// Canonicalises an already parsed value, which must be an object.
    pub fn from_value(value: &Value) -> Result<Self, InvalidInput> {
        let Value::Object(object) = value else {
            return Err(InvalidInput::NotAnObject(json_kind(value)));
        };
        let mut text = String::with_capacity(64);
        write_object(&mut text, object)?;
        Ok(Self { text })
    }

    /// Builds the input of a `GET ...?key=value` request: an object of strings, in
    /// the same canonical form as the equal JSON body. Fails on a key given twice
    /// (an object cannot hold it), naming it.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, DuplicateKey> {
        // Written straight from the sorted pairs: no intermediate JSON map.
        let mut pairs: Vec<(&str, &str)> = pairs.into_iter().collect();
        pairs.sort_by(|(a, _), (b, _)| utf16_order(a, b));
        if let Some(twice) = pairs.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            return Err(DuplicateKey(twice[0].0.to_owned()));
        }
        let mut text = String::with_capacity(64);
        text.push('{');
        for (index, (key, value)) in pairs.into_iter().enumerate() {
            if index > 0 {
                text.push(',');
            }
            write_string(&mut text, key);
            text.push(':');
            write_string(&mut text, value);
        }
        text.push('}');
        Ok(Self { text })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// What kind of JSON value `value` is, for error messages ("a string", "null").
pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn write_value(out: &mut String, value: &Value) -> Result<(), InvalidInput> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(number) => write_number(out, number)?,
        Value::String(string) => write_string(out, string),
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_value(out, item)?;
            }
            out.push(']');
        }
        Value::Object(object) => write_object(out, object)?,
    }
    Ok(())
}

fn write_object(out: &mut String, object: &Map<String, Value>) -> Result<(), InvalidInput> {
    let mut entries: Vec<(&String, &Value)> = object.iter().collect();
    // JCS orders keys by UTF-16 code units, which differs from byte order only for
    // characters outside the Basic Multilingual Plane.
    entries.sort_by(|(a, _), (b, _)| utf16_order(a, b));
    out.push('{');
    for (index, (key, value)) in entries.into_iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        write_string(out, key);
        out.push(':');
        write_value(out, value)?;
    }
    out.push('}');
    Ok(())
}

fn utf16_order(a: &str, b: &str) -> Ordering {
    if a.is_ascii() && b.is_ascii() {
        return a.cmp(b);
    }
    a.encode_utf16().cmp(b.encode_utf16())
}

fn write_string(out: &mut String, string: &str) {
    // Most keys and values need no escaping at all: copy them straight.
    if !string.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.push('"');
        out.push_str(string);
        out.push('"');
        return;
    }
    // serde_json's escaping is exactly JCS's: `"` and `\` and control characters
    // escaped (short forms where they exist, else lower-case \u00xx), the rest as is.
    out.push_str(&serde_json::to_string(string).expect("a string always serialises"));
}

/// Writes a JSON number in its one canonical spelling, from its exact decimal text.
fn write_number(out: &mut String, number: &Number) -> Result<(), InvalidInput> {
    let text = number.as_str();
    let decimal =
        Decimal::parse(text).ok_or_else(|| InvalidInput::NumberOutOfRange(text.into()))?;
    decimal.write_canonical(out);
    Ok(())
}

/// A finite decimal `±digits × 10^exponent` with no leading or trailing zero in
/// `digits` (empty digits is zero).
#[derive(Debug, PartialEq, Eq)]
struct Decimal {
    negative: bool,
    digits: String,
    exponent: i64,
}

impl Decimal {
    /// Parses JSON number text (`-?int(.frac)?([eE][+-]?exp)?`), which serde_json has
    /// already validated. Returns `None` for an exponent out of range.
    fn parse(text: &str) -> Option<Self> {
        let (negative, unsigned) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
            Some(at) => (&unsigned[..at], unsigned[at + 1..].parse::<i64>().ok()?),
            None => (unsigned, 0),
        };
        if exponent.abs() > MAX_DECIMAL_EXPONENT {
            return None;
        }
        let (integer, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let mut digits: String = integer.chars().chain(fraction.chars()).collect();
        let mut exponent = exponent - fraction.len() as i64;
        let trimmed_end = digits.trim_end_matches('0').len();
        exponent += (digits.len() - trimmed_end) as i64;
        digits.truncate(trimmed_end);
        let digits = digits.trim_start_matches('0').to_owned();
        if digits.is_empty() {
            // JCS spells -0 as 0.
            return Some(Self {
                negative: false,
                digits,
                exponent: 0,
            });
        }
        Some(Self {
            negative,
            digits,
            exponent,
        })
    }

    /// ECMAScript's Number::toString layout (which JCS uses), applied to the exact
    /// digits: plain notation for 1e-7 <= |x| < 1e21, exponent notation otherwise.
    fn write_canonical(&self, out: &mut String) {
        if self.digits.is_empty() {
            out.push('0');
            return;
        }
        if self.negative {
            out.push('-');
        }
        let k = self.digits.len() as i64;
        // The decimal point sits `n` digits from the left of `digits`.
        let n = k + self.exponent;
        if k <= n && n <= 21 {
            out.push_str(&self.digits);
            out.extend(std::iter::repeat_n('0', (n - k) as usize));
        } else if 0 < n && n <= 21 {
            let (integer, fraction) = self.digits.split_at(n as usize);
            let _ = write!(out, "{integer}.{fraction}");
        } else if -6 < n && n <= 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-n) as usize));
            out.push_str(&self.digits);
        } else {
            let (first, rest) = self.digits.split_at(1);
            out.push_str(first);
            if !rest.is_empty() {
                out.push('.');
                out.push_str(rest);
            }
            let shown = n - 1;
            let _ = write!(
                out,
                "e{}{}",
                if shown >= 0 { "+" } else { "-" },
                shown.abs()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(json: &str) -> String {
        CanonicalInput::from_json_slice(json.as_bytes())
            .unwrap()
            .as_str()
            .to_owned()
    }

    fn canonical_number(text: &str) -> String {
        let wrapped = canonical(&format!("{{\"n\":{text}}}"));
        wrapped
            .strip_prefix("{\"n\":")
            .and_then(|rest| rest.strip_suffix('}'))
            .unwrap()
            .to_owned()
    }

    #[test]
    fn reordered_keys_and_whitespace_share_one_form() {
        assert_eq!(
            canonical(r#"{"a":1,"b":2}"#),
            canonical("{ \"b\" : 2,\n \"a\": 1 }")
        );
        assert_eq!(canonical(r#"{ "b":2, "a":1 }"#), r#"{"a":1,"b":2}"#);
    }

    #[test]
    fn keys_are_sorted_at_every_depth() {
        assert_eq!(
            canonical(r#"{"z":{"y":[{"b":1,"a":2}],"x":null},"a":true}"#),
            r#"{"a":true,"z":{"x":null,"y":[{"a":2,"b":1}]}}"#
        );
    }

    #[test]
    fn keys_sort_by_utf16_code_units_like_jcs() {
        // U+1F600 is D83D DE00 in UTF-16, which sorts before U+FB01 (FB01) even
        // though its UTF-8 bytes sort after.
        assert_eq!(canonical(r#"{"ﬁ":1,"😀":2}"#), r#"{"😀":2,"ﬁ":1}"#);
    }

    #[test]
    fn equal_numbers_share_one_spelling() {
        for spelling in ["1", "1.0", "1.000", "10e-1", "1E0", "0.1e1", "1e+0"] {
            assert_eq!(canonical_number(spelling), "1", "{spelling}");
        }
        assert_eq!(canonical_number("-0"), "0");
        assert_eq!(canonical_number("-0.0e5"), "0");
        assert_eq!(canonical_number("2300.50"), "2300.5");
    }

    #[test]
    fn numbers_follow_the_jcs_layout() {
        for (text, expected) in [
            ("1e21", "1e+21"),
            ("1e20", "100000000000000000000"),
            ("123e-2", "1.23"),
            ("1e-6", "0.000001"),
            ("1e-7", "1e-7"),
            ("-1.5e-9", "-1.5e-9"),
            ("12345e30", "1.2345e+34"),
            ("0.000123", "0.000123"),
        ] {
            assert_eq!(canonical_number(text), expected, "{text}");
        }
    }

    #[test]
    fn numbers_an_f64_cannot_tell_apart_keep_distinct_spellings() {
        assert_ne!(
            canonical_number("9007199254740993"),
            canonical_number("9007199254740992")
        );
        assert_eq!(canonical_number("9007199254740993"), "9007199254740993");
        assert_ne!(
            canonical_number("0.1"),
            canonical_number("0.10000000000000000001")
        );
        assert_eq!(
            canonical_number("123456789012345678901234567890"),
            "1.2345678901234567890123456789e+29"
        );
    }

    #[test]
    fn huge_exponents_are_refused() {
        let err = CanonicalInput::from_json_slice(br#"{"n":1e999999}"#).unwrap_err();
        assert!(matches!(err, InvalidInput::NumberOutOfRange(_)), "{err:?}");
        assert!(err.to_string().contains("out of the supported range"));
    }

    #[test]
    fn strings_are_escaped_minimally() {
        assert_eq!(
            canonical("{\"s\":\"caf\\u00e9 \\u0001 \\\" \\/ \\n\"}"),
            "{\"s\":\"café \\u0001 \\\" / \\n\"}"
        );
    }

    #[test]
    fn non_objects_and_bad_json_are_refused() {
        assert_eq!(
            CanonicalInput::from_json_slice(b"[1]"),
            Err(InvalidInput::NotAnObject("an array"))
        );
        assert!(matches!(
            CanonicalInput::from_json_slice(b"{\"a\":"),
            Err(InvalidInput::Json(_))
        ));
    }

    #[test]
    fn query_pairs_become_an_object_of_strings() {
        let input = CanonicalInput::from_pairs([("product_id", "ETH/EUR"), ("a", "1")]).unwrap();
        assert_eq!(input.as_str(), r#"{"a":"1","product_id":"ETH/EUR"}"#);
    }

    #[test]
    fn query_pairs_are_canonical_like_the_equal_json_body() {
        // Escapes, and keys outside the Basic Multilingual Plane, which JCS orders
        // by UTF-16 code units rather than by bytes.
        let pairs = [
            ("\u{1F600}", "smile"),
            ("\u{FB01}", "ligature"),
            ("quote\"d", "line\nbreak"),
            ("a", "1"),
        ];
        let body: serde_json::Map<String, Value> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
            .collect();
        assert_eq!(
            CanonicalInput::from_pairs(pairs).unwrap(),
            CanonicalInput::from_value(&Value::Object(body)).unwrap()
        );
    }

    #[test]
    fn a_query_key_given_twice_is_refused_by_name() {
        assert_eq!(
            CanonicalInput::from_pairs([("a", "1"), ("b", "2"), ("a", "3")]),
            Err(DuplicateKey("a".into()))
        );
    }

    mod properties {
        use proptest::prelude::*;
        use serde_json::{Map, Value};

        use super::super::*;

        /// Any JSON value, numbers written in assorted spellings.
        fn json_value() -> impl Strategy<Value = Value> {
            let number = prop_oneof![
                any::<i64>().prop_map(|n| n.to_string()),
                any::<u64>().prop_map(|n| format!("{n}.000")),
                (any::<i32>(), -30i32..30).prop_map(|(m, e)| format!("{m}e{e}")),
                any::<f64>()
                    .prop_filter("finite", |f| f.is_finite())
                    .prop_map(|f| format!("{f:?}")),
            ]
            .prop_map(|text| Value::Number(serde_json::from_str(&text).unwrap()));
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                number,
                ".{0,12}".prop_map(Value::String),
            ];
            leaf.prop_recursive(4, 48, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    prop::collection::btree_map(".{0,8}", inner, 0..6)
                        .prop_map(|entries| Value::Object(entries.into_iter().collect())),
                ]
            })
        }

        fn json_object() -> impl Strategy<Value = Map<String, Value>> {
            prop::collection::btree_map(".{0,8}", json_value(), 0..8)
                .prop_map(|entries| entries.into_iter().collect())
        }

        proptest! {
            #[test]
            fn the_canonical_form_is_a_fixed_point(object in json_object()) {
                let once = CanonicalInput::from_value(&Value::Object(object)).unwrap();
                let twice = CanonicalInput::from_json_slice(once.as_str().as_bytes()).unwrap();
                prop_assert_eq!(once, twice);
            }

            #[test]
            fn spelling_and_key_order_do_not_change_the_form(object in json_object()) {
                let compact = serde_json::to_string(&object).unwrap();
                let pretty = serde_json::to_string_pretty(&object).unwrap();
                let reversed: Map<String, Value> = object.clone().into_iter().rev().collect();
                let reversed = serde_json::to_string(&reversed).unwrap();
                let canonical = |text: &str| CanonicalInput::from_json_slice(text.as_bytes()).unwrap();
                prop_assert_eq!(canonical(&compact), canonical(&pretty));
                prop_assert_eq!(canonical(&compact), canonical(&reversed));
            }

            #[test]
            fn any_bytes_give_an_input_or_an_error_never_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
                let _ = CanonicalInput::from_json_slice(&bytes);
            }
        }
    }
}
