//! The JSON body of every error the gateway returns: `{"error":{"code","message"}}`.

use serde::{Deserialize, Serialize};

/// `{"error": {"code": "...", "message": "..."}}`: a stable machine-readable `code`
/// for clients to branch on, and a `message` for the human reading it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// Stable, machine-readable: `invalid_json`, `no_worker`, `timeout`, ...
    pub code: String,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_to_the_documented_shape() {
        let body = ErrorBody::new("no_worker", "no worker serves model \"x\"");
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"error":{"code":"no_worker","message":"no worker serves model \"x\""}}"#
        );
    }
}
