//! The built-in `price` model: a stand-in for the original ETH/EUR price predictor.
//!
//! It does no machine learning. It sleeps for the configured compute time (default
//! one second, like the original demo) without blocking the runtime, then returns a
//! price that is a pure function of the product and the current one-minute bucket,
//! so repeated calls within a minute agree, as a real model's would on fresh data.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use prediction_contract::ModelName;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::model::{Input, Model, ModelError};

/// The name the stand-in is served under.
pub const PRICE_MODEL_NAME: &str = "price";
/// Predictions change once per bucket of this length.
const TIME_BUCKET: Duration = Duration::from_secs(60);
/// Longest `product_id` accepted, in bytes.
const MAX_PRODUCT_ID_LEN: usize = 128;

#[derive(Debug)]
pub struct PriceModel {
    name: ModelName,
    latency: Duration,
}

impl PriceModel {
    pub fn new(latency: Duration) -> Self {
        Self {
            name: ModelName::parse(PRICE_MODEL_NAME).expect("a valid constant name"),
            latency,
        }
    }

    fn product_id(input: &Input) -> Result<&str, ModelError> {
        match input.get("product_id") {
            None => Err(ModelError::InvalidInput(
                "missing field `product_id` (e.g. {\"product_id\": \"ETH/EUR\"})".into(),
            )),
            Some(Value::String(id)) if id.is_empty() => Err(ModelError::InvalidInput(
                "field `product_id` must not be empty".into(),
            )),
            Some(Value::String(id)) if id.len() > MAX_PRODUCT_ID_LEN => {
                Err(ModelError::InvalidInput(format!(
                    "field `product_id` is longer than {MAX_PRODUCT_ID_LEN} bytes"
                )))
            }
            Some(Value::String(id)) => Ok(id),
            Some(_) => Err(ModelError::InvalidInput(
                "field `product_id` must be a string".into(),
            )),
        }
    }
}

/// The deterministic price of `product_id` in the bucket starting at `bucket_start_sec`.
pub fn stand_in_price(product_id: &str, bucket_start_sec: u64) -> f64 {
    let hash = |parts: &[&[u8]]| {
        let mut hasher = Sha256::new();
        for part in parts {
            hasher.update(part);
        }
        let digest = hasher.finalize();
        u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
    };
    // A base price per product between 50 and 5050, moved by up to ±2% per bucket.
    let base = 50.0 + (hash(&[product_id.as_bytes()]) % 500_000) as f64 / 100.0;
    let drift = (hash(&[product_id.as_bytes(), &bucket_start_sec.to_be_bytes()]) % 4001) as f64
        / 100_000.0
        - 0.02;
    (base * (1.0 + drift) * 100.0).round() / 100.0
}

#[async_trait]
impl Model for PriceModel {
    fn name(&self) -> &ModelName {
        &self.name
    }

    /// 1.1.0: `timestamp` is the original API's UTC `"YYYY-MM-DD HH:MM:SS"`
    /// string; a new version, so no gateway serves a 1.0.0 answer (milliseconds)
    /// from its cache.
    fn version(&self) -> &str {
        "1.1.0"
    }

    async fn predict(&self, input: &Input) -> Result<Value, ModelError> {
        let product_id = Self::product_id(input)?;
        // Even a zero sleep waits for the timer wheel's next tick (about 1 ms).
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| ModelError::Failed("system clock is before 1970".into()))?;
        let bucket_start_sec = now.as_secs() - now.as_secs() % TIME_BUCKET.as_secs();
        Ok(json!({
            "product_id": product_id,
            "predicted_price": stand_in_price(product_id, bucket_start_sec),
            "timestamp": original_timestamp(UNIX_EPOCH + Duration::from_secs(bucket_start_sec)),
            "timestamp_sec": bucket_start_sec,
        }))
    }
}

/// A moment as the original API wrote it: UTC, `"YYYY-MM-DD HH:MM:SS"`.
fn original_timestamp(at: SystemTime) -> String {
    // RFC 3339 to the second, `2026-12-02T13:50:00Z`, without the `T` and the `Z`.
    humantime::format_rfc3339_seconds(at)
        .to_string()
        .replacen('T', " ", 1)
        .trim_end_matches('Z')
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(json: Value) -> Input {
        json.as_object().unwrap().clone()
    }

    #[tokio::test]
    async fn answers_in_the_original_shape() {
        let model = PriceModel::new(Duration::ZERO);
        let prediction = model
            .predict(&input(json!({"product_id": "ETH/EUR"})))
            .await
            .unwrap();
        let object = prediction.as_object().unwrap();
        let mut keys: Vec<_> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "predicted_price",
                "product_id",
                "timestamp",
                "timestamp_sec"
            ]
        );
        assert_eq!(object["product_id"], "ETH/EUR");
        assert!(object["predicted_price"].as_f64().unwrap() > 0.0);
        let sec = object["timestamp_sec"].as_u64().unwrap();
        assert_eq!(
            object["timestamp"].as_str().unwrap(),
            original_timestamp(UNIX_EPOCH + Duration::from_secs(sec))
        );
        assert_eq!(sec % 60, 0);
    }

    #[test]
    fn timestamps_are_written_as_the_original_api_wrote_them() {
        let at = UNIX_EPOCH + Duration::from_secs(1_795_694_400);
        assert_eq!(original_timestamp(at), "2026-11-26 12:00:00");
    }

    #[test]
    fn price_is_deterministic_per_product_and_bucket() {
        assert_eq!(
            stand_in_price("ETH/EUR", 600),
            stand_in_price("ETH/EUR", 600)
        );
        assert_ne!(
            stand_in_price("ETH/EUR", 600),
            stand_in_price("BTC/EUR", 600)
        );
        let base = stand_in_price("ETH/EUR", 0);
        let later = stand_in_price("ETH/EUR", 6000);
        assert!((later / base - 1.0).abs() < 0.05);
    }

    #[tokio::test]
    async fn bad_input_is_named_in_the_error() {
        let model = PriceModel::new(Duration::ZERO);
        for (bad, expected) in [
            (json!({}), "missing field `product_id`"),
            (json!({"product_id": 5}), "must be a string"),
            (json!({"product_id": ""}), "must not be empty"),
        ] {
            let err = model.predict(&input(bad)).await.unwrap_err();
            assert_eq!(err.code(), 400);
            assert!(err.to_string().contains(expected), "{err}");
        }
    }
}
