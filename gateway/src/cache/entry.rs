//! A cache entry and its stored form.
//!
//! An entry records when it was computed and how long it stays fresh, so the
//! gateway can tell the client its `Age` and never serve a prediction past its
//! freshness (or past its stale period) whatever the store still holds.

use std::borrow::Cow;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use prediction_contract::time::millis;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A cached prediction and what the gateway needs to know about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedPrediction {
    /// The prediction exactly as the worker sent it: JSON, or a tensor reply
    /// (a JSON header and binary data).
    pub prediction: Bytes,
    pub model_version: String,
    /// When the gateway received it, in milliseconds since the Unix epoch.
    pub computed_at_ms: u64,
    /// How long after `computed_at_ms` it may be served as fresh.
    pub fresh_for: Duration,
}

/// The stored form. A JSON prediction is embedded as raw JSON, so a hit copies
/// it into the response without parsing it; any other (a tensor reply) as
/// base64 under `binary`.
#[derive(Serialize, Deserialize)]
struct StoredEntry<'a> {
    /// Borrowed unless the JSON string holds escapes (a version with a control
    /// character, say), which a plain `&str` could not decode.
    #[serde(borrow)]
    model_version: Cow<'a, str>,
    computed_at_ms: u64,
    fresh_ms: u64,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    prediction: Option<&'a RawValue>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    binary: Option<Cow<'a, str>>,
}

/// A value under a prediction key that is not an entry this gateway wrote.
#[derive(Debug, thiserror::Error)]
#[error("the cached value is not a prediction entry: {0}")]
pub struct CorruptEntry(String);

impl From<serde_json::Error> for CorruptEntry {
    fn from(err: serde_json::Error) -> Self {
        Self(err.to_string())
    }
}

impl CachedPrediction {
    pub fn encode(&self) -> Vec<u8> {
        let prediction: Option<&RawValue> = serde_json::from_slice(&self.prediction).ok();
        let binary = prediction
            .is_none()
            .then(|| Cow::Owned(BASE64.encode(&self.prediction)));
        serde_json::to_vec(&StoredEntry {
            model_version: Cow::Borrowed(&self.model_version),
            computed_at_ms: self.computed_at_ms,
            fresh_ms: millis(self.fresh_for),
            prediction,
            binary,
        })
        .expect("an entry always serialises")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CorruptEntry> {
        let stored: StoredEntry<'_> = serde_json::from_slice(bytes)?;
        let prediction = match (stored.prediction, stored.binary) {
            (Some(json), None) => Bytes::copy_from_slice(json.get().as_bytes()),
            (None, Some(binary)) => BASE64
                .decode(binary.as_bytes())
                .map_err(|err| CorruptEntry(format!("its binary prediction is not base64: {err}")))?
                .into(),
            _ => return Err(CorruptEntry("it holds no prediction, or two".into())),
        };
        Ok(Self {
            prediction,
            model_version: stored.model_version.into_owned(),
            computed_at_ms: stored.computed_at_ms,
            fresh_for: Duration::from_millis(stored.fresh_ms),
        })
    }

    /// Time since the prediction was computed, as of `now_ms`.
    pub fn age(&self, now_ms: u64) -> Duration {
        Duration::from_millis(now_ms.saturating_sub(self.computed_at_ms))
    }

    pub fn is_fresh(&self, now_ms: u64) -> bool {
        self.age(now_ms) < self.fresh_for
    }

    /// Freshness left as of `now_ms`.
    pub fn fresh_left(&self, now_ms: u64) -> Duration {
        self.fresh_for.saturating_sub(self.age(now_ms))
    }

    /// How long past its freshness it is, as of `now_ms` (zero while fresh).
    pub fn staleness(&self, now_ms: u64) -> Duration {
        self.age(now_ms).saturating_sub(self.fresh_for)
    }

    /// Whether it may still be served as stale, `stale_for` being the stale period
    /// after its freshness.
    pub fn is_within_stale_period(&self, now_ms: u64, stale_for: Duration) -> bool {
        !self.is_fresh(now_ms) && self.staleness(now_ms) < stale_for
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> CachedPrediction {
        CachedPrediction {
            prediction: Bytes::from_static(br#"{"product_id":"ETH/EUR","predicted_price":2300.5}"#),
            model_version: "1.0.0".into(),
            computed_at_ms: 1_000_000,
            fresh_for: Duration::from_secs(60),
        }
    }

    #[test]
    fn entries_round_trip_with_the_prediction_bytes_untouched() {
        let entry = entry();
        assert_eq!(CachedPrediction::decode(&entry.encode()).unwrap(), entry);
    }

    #[test]
    fn a_tensor_reply_round_trips_as_binary() {
        let mut header = br#"{"outputs":[{"name":"y","datatype":"INT8","shape":[2],"parameters":{"binary_data_size":2}}]}"#.to_vec();
        header.extend_from_slice(&[1, 255]);
        let entry = CachedPrediction {
            prediction: header.into(),
            ..entry()
        };
        let stored = entry.encode();
        assert!(
            std::str::from_utf8(&stored)
                .unwrap()
                .contains(r#""binary":""#)
        );
        assert_eq!(CachedPrediction::decode(&stored).unwrap(), entry);
    }

    #[test]
    fn foreign_values_are_corrupt_not_panics() {
        for bytes in [
            &b"garbage"[..],
            b"{}",
            b"\xff\xfe",
            br#"{"prediction":1}"#,
            br#"{"model_version":"1","computed_at_ms":1,"fresh_ms":1}"#,
            br#"{"model_version":"1","computed_at_ms":1,"fresh_ms":1,"binary":"!!"}"#,
        ] {
            assert!(CachedPrediction::decode(bytes).is_err());
        }
    }

    #[test]
    fn freshness_and_age_follow_the_clock() {
        let entry = entry();
        assert!(entry.is_fresh(1_000_000));
        assert!(entry.is_fresh(1_059_999));
        assert!(!entry.is_fresh(1_060_000));
        assert_eq!(entry.age(1_002_999), Duration::from_millis(2_999));
        assert_eq!(entry.age(999_000), Duration::ZERO);
        assert_eq!(entry.fresh_left(1_050_000), Duration::from_secs(10));
    }

    #[test]
    fn the_stale_period_follows_the_fresh_one() {
        let entry = entry();
        let stale_for = Duration::from_secs(30);
        assert!(
            !entry.is_within_stale_period(1_059_999, stale_for),
            "still fresh"
        );
        assert!(entry.is_within_stale_period(1_060_000, stale_for));
        assert!(entry.is_within_stale_period(1_089_999, stale_for));
        assert!(!entry.is_within_stale_period(1_090_000, stale_for));
        assert_eq!(entry.staleness(1_065_000), Duration::from_secs(5));
        assert!(!entry.is_within_stale_period(1_060_000, Duration::ZERO));
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        proptest! {
            #[test]
            fn decoding_any_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
                let _ = CachedPrediction::decode(&bytes);
            }

            #[test]
            fn entries_round_trip(
                text in ".{0,40}",
                version in ".{0,12}",
                computed_at_ms in any::<u64>(),
                fresh_ms in 0u64..u64::from(u32::MAX),
            ) {
                let entry = CachedPrediction {
                    prediction: Bytes::from(serde_json::to_vec(&serde_json::json!({"p": text})).unwrap()),
                    model_version: version,
                    computed_at_ms,
                    fresh_for: Duration::from_millis(fresh_ms),
                };
                prop_assert_eq!(CachedPrediction::decode(&entry.encode()).unwrap(), entry);
            }
        }
    }
}
