//! Reading a JSON input into one row of an ONNX model's input tensor, as the
//! manifest's input layout says (a numeric array field, or one number field per
//! column), with errors that say what the input must look like.

use anyhow::ensure;
use prediction_contract::canonical::json_kind;
use serde_json::Value;

use crate::manifest::InputLayout;
use crate::model::{Input, ModelError};

/// Reads one JSON input into one row of numbers.
#[derive(Debug)]
pub(super) struct InputReader {
    layout: InputLayout,
    pub(super) width: usize,
}

impl InputReader {
    pub(super) fn new(layout: InputLayout, width: usize) -> anyhow::Result<Self> {
        if let InputLayout::Fields(fields) = &layout {
            ensure!(
                fields.len() == width,
                "the input maps {} field(s) but the model takes {width} features",
                fields.len()
            );
        }
        Ok(Self { layout, width })
    }

    /// What an input must look like, for error messages.
    fn expected(&self) -> String {
        match &self.layout {
            InputLayout::Array { field } => {
                format!("{{\"{field}\": [{} numbers]}}", self.width)
            }
            InputLayout::Fields(fields) => format!(
                "an object with the number fields {}",
                fields
                    .iter()
                    .map(|field| format!("`{field}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// Appends the row of `input` to `row`, or says what is wrong with it.
    pub(super) fn read(&self, input: &Input, row: &mut Vec<f32>) -> Result<(), ModelError> {
        let invalid = |problem: String| {
            ModelError::InvalidInput(format!("{problem}; expected {}", self.expected()))
        };
        let allowed = |key: &str| match &self.layout {
            InputLayout::Array { field } => key == field,
            InputLayout::Fields(fields) => fields.iter().any(|f| f == key),
        };
        // An ignored field would still split the cache; refuse it.
        if let Some(unknown) = input.keys().find(|key| !allowed(key)) {
            return Err(invalid(format!("unexpected field `{unknown}`")));
        }
        let start = row.len();
        match &self.layout {
            InputLayout::Array { field } => {
                let values = match input.get(field) {
                    None => return Err(invalid(format!("missing field `{field}`"))),
                    Some(Value::Array(values)) => values,
                    Some(other) => {
                        return Err(invalid(format!(
                            "`{field}` is {}, not an array",
                            json_kind(other)
                        )));
                    }
                };
                if values.len() != self.width {
                    return Err(invalid(format!(
                        "`{field}` has {} element(s)",
                        values.len()
                    )));
                }
                for (index, value) in values.iter().enumerate() {
                    match number(value) {
                        Ok(value) => row.push(value),
                        Err(what) => {
                            row.truncate(start);
                            return Err(invalid(format!("`{field}[{index}]` is {what}")));
                        }
                    }
                }
            }
            InputLayout::Fields(fields) => {
                for field in fields {
                    let value = input
                        .get(field)
                        .ok_or_else(|| invalid(format!("missing field `{field}`")));
                    let value = value.and_then(|value| {
                        number(value).map_err(|what| invalid(format!("`{field}` is {what}")))
                    });
                    match value {
                        Ok(value) => row.push(value),
                        Err(err) => {
                            row.truncate(start);
                            return Err(err);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// A JSON number as an f32, or what the value is instead.
fn number(value: &Value) -> Result<f32, String> {
    let Value::Number(number) = value else {
        return Err(format!("{}, not a number", json_kind(value)));
    };
    let double = number
        .as_f64()
        .filter(|v| v.is_finite())
        .ok_or("not a finite number")?;
    let single = double as f32;
    if single.is_infinite() {
        return Err(format!("{number}, beyond the range of a 32-bit float"));
    }
    Ok(single)
}
