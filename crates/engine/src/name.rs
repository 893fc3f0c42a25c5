//! [`ModelName`]: the one rule for what a model may be called.
//!
//! A model's name comes from its `info()`, and clients, operators and the
//! cache (Redis key patterns) use it verbatim, so the rule is strict and
//! written once: lower-kebab-case ASCII (`a-z`, `0-9`, single `-` between
//! parts), starting with a letter, at most 64 bytes.

use std::fmt;

/// The longest model name, in bytes.
pub const MAX_MODEL_NAME_BYTES: usize = 64;

/// A checked model name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelName(String);

/// A string that breaks the model-name rule; its message quotes (a bounded
/// prefix of) the string and states the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{shown}` is not a model name: lower-kebab-case ASCII (a-z, 0-9, '-'), starting with a letter, at most 64 bytes"
)]
pub struct InvalidModelName {
    shown: String,
}

impl ModelName {
    /// Whether `name` follows the rule.
    pub fn is_valid(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= MAX_MODEL_NAME_BYTES
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name.split('-').all(|part| {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            })
    }

    pub fn parse(name: &str) -> Result<ModelName, InvalidModelName> {
        if ModelName::is_valid(name) {
            Ok(ModelName(name.to_owned()))
        } else {
            Err(InvalidModelName {
                shown: name
                    .chars()
                    .take(MAX_MODEL_NAME_BYTES)
                    .collect::<String>()
                    .escape_debug()
                    .to_string(),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for ModelName {
    type Err = InvalidModelName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ModelName::parse(s)
    }
}

impl std::ops::Deref for ModelName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for ModelName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ModelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule() {
        for ok in ["var-historical", "m2", "a", "a1-b2", "x9", &"a".repeat(64)] {
            assert!(ModelName::is_valid(ok), "{ok}");
            assert_eq!(ModelName::parse(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            "Var",
            "var--x",
            "-var",
            "var-",
            "1var",
            "var_x",
            "vär",
            &"a".repeat(65),
            // Redis glob characters never reach a purge pattern.
            "a*",
            "a:b",
            "a?",
            "[a]",
        ] {
            assert!(!ModelName::is_valid(bad), "{bad}");
        }
    }

    #[test]
    fn the_error_quotes_a_bounded_prefix() {
        let long = "X".repeat(10_000);
        let message = ModelName::parse(&long).unwrap_err().to_string();
        assert!(message.len() < 200, "{message}");
        assert!(message.contains("is not a model name"));
        let message = ModelName::parse("a\nb").unwrap_err().to_string();
        assert!(message.contains("a\\nb"), "{message}");
    }
}
