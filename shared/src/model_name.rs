//! Model names, validated once so that no caller can make a gateway publish on a
//! subject other than `predict.<model>`.

use std::fmt;
use std::str::FromStr;

/// The longest model name accepted, in bytes.
pub const MAX_MODEL_NAME_LEN: usize = 64;

/// A model's name: `^[a-z0-9][a-z0-9_-]{0,63}$`.
///
/// The character set excludes every byte that means something in a NATS subject
/// (`.`, `*`, `>`, whitespace), so `predict.<name>` is always exactly one literal
/// subject.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelName(String);

/// Why a string is not a valid model name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidModelName {
    #[error("model name is empty")]
    Empty,
    #[error("model name is {0} bytes long; at most {MAX_MODEL_NAME_LEN} are allowed")]
    TooLong(usize),
    #[error(
        "model name must start with a lower-case letter or digit and contain only \
         lower-case letters, digits, '-' and '_' (found {0:?})"
    )]
    BadCharacter(char),
}

impl ModelName {
    /// Checks `name` against the allowed pattern.
    pub fn parse(name: &str) -> Result<Self, InvalidModelName> {
        let first = name.chars().next().ok_or(InvalidModelName::Empty)?;
        if name.len() > MAX_MODEL_NAME_LEN {
            return Err(InvalidModelName::TooLong(name.len()));
        }
        let is_alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
        if !is_alnum(first) {
            return Err(InvalidModelName::BadCharacter(first));
        }
        if let Some(bad) = name
            .chars()
            .find(|&c| !(is_alnum(c) || c == '-' || c == '_'))
        {
            return Err(InvalidModelName::BadCharacter(bad));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ModelName {
    type Err = InvalidModelName;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::parse(name)
    }
}

impl fmt::Display for ModelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ModelName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_names_matching_the_pattern() {
        for name in [
            "price",
            "a",
            "0",
            "price-mlp",
            "price_gbt_2",
            &"a".repeat(64),
        ] {
            assert_eq!(ModelName::parse(name).unwrap().as_str(), name);
        }
    }

    #[test]
    fn rejects_anything_that_could_change_the_subject() {
        for name in [
            "price.v2", "*", ">", "price>", "$SYS", "a b", "Price", "-price", "_p", "..",
            "price\n", "prïce", "%2e",
        ] {
            assert!(ModelName::parse(name).is_err(), "{name:?} was accepted");
        }
    }

    #[test]
    fn rejects_empty_and_overlong_names() {
        assert_eq!(ModelName::parse(""), Err(InvalidModelName::Empty));
        assert_eq!(
            ModelName::parse(&"a".repeat(65)),
            Err(InvalidModelName::TooLong(65))
        );
    }
}
