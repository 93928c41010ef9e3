//! Decode errors: where a value could not be deserialized, its field path, and messages in the
//! user's terms (serde's expectations translated, typos answered with a suggestion).

use std::fmt;

use serde::de;

use super::node::Mark;
use super::path::{Breadcrumb, FieldPath};

/// A value that could not be deserialized: where, which field, and what was expected.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodeError {
    pub mark: Option<Mark>,
    pub path: Option<FieldPath>,
    /// A missing field is reported at its parent mapping, with the field's name appended to the path.
    missing: Option<String>,
    /// The error is a required field that is absent (its path names the field).
    missing_field: bool,
    pub message: String,
}

impl DecodeError {
    pub(super) fn new(message: String) -> Self {
        DecodeError {
            mark: None,
            path: None,
            missing: None,
            missing_field: false,
            message,
        }
    }

    /// Fills in the position and path of the innermost node the error came from.
    pub(super) fn at(mut self, mark: Mark, crumb: Breadcrumb<'_>) -> Self {
        if self.mark.is_none() {
            self.mark = Some(mark);
            let mut path = crumb.to_path();
            if let Some(field) = self.missing.take() {
                path = path.key(field);
                self.missing_field = true;
            }
            self.path = Some(path);
        }
        self
    }
}

impl DecodeError {
    pub fn is_missing_field(&self) -> bool {
        self.missing_field
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DecodeError {}

fn describe_expected(expected: &dyn de::Expected) -> String {
    let text = expected.to_string();
    match text.as_str() {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number of at least 0".into(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number".into(),
        "f32" | "f64" => "a number".into(),
        "a boolean" => "true or false".into(),
        _ if text.starts_with("struct ") || text.starts_with("a map") => "a mapping".into(),
        _ if text.starts_with("enum ") => "one of the allowed values".into(),
        _ => text,
    }
}

fn describe_unexpected(unexpected: de::Unexpected<'_>) -> String {
    match unexpected {
        de::Unexpected::Unit => "an empty value (null)".into(),
        de::Unexpected::Map => "a mapping".into(),
        de::Unexpected::Seq => "a sequence".into(),
        de::Unexpected::Str(s) => format!("the string {s:?}"),
        other => other.to_string(),
    }
}

pub(super) fn one_of(names: &[&str]) -> String {
    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

/// The candidate closest to `word` by edit distance, if it is close enough to be a typo.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(&word.to_ascii_lowercase(), &c.to_ascii_lowercase()), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            current.push((previous[j] + cost).min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

impl de::Error for DecodeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DecodeError::new(msg.to_string())
    }

    fn invalid_type(unexpected: de::Unexpected<'_>, expected: &dyn de::Expected) -> Self {
        DecodeError::new(format!(
            "expected {}, found {}",
            describe_expected(expected),
            describe_unexpected(unexpected)
        ))
    }

    fn invalid_value(unexpected: de::Unexpected<'_>, expected: &dyn de::Expected) -> Self {
        DecodeError::new(format!(
            "expected {}, found {}",
            describe_expected(expected),
            describe_unexpected(unexpected)
        ))
    }

    fn invalid_length(len: usize, expected: &dyn de::Expected) -> Self {
        DecodeError::new(format!(
            "expected {}, found {len} elements",
            describe_expected(expected)
        ))
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        let hint = suggest(variant, expected.iter().copied())
            .map(|s| format!(" (did you mean `{s}`?)"))
            .unwrap_or_default();
        DecodeError::new(format!(
            "unknown value `{variant}`{hint}: expected one of {}",
            one_of(expected)
        ))
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        let hint = suggest(field, expected.iter().copied())
            .map(|s| format!(" (did you mean `{s}`?)"))
            .unwrap_or_default();
        let message = if expected.is_empty() {
            format!("unknown field `{field}`: no fields are allowed here")
        } else {
            format!("unknown field `{field}`{hint}: expected one of {}", one_of(expected))
        };
        DecodeError::new(message)
    }

    fn missing_field(field: &'static str) -> Self {
        let mut error = DecodeError::new(format!("missing required field `{field}`"));
        error.missing = Some(field.to_string());
        error
    }

    fn duplicate_field(field: &'static str) -> Self {
        DecodeError::new(format!("field `{field}` is given twice"))
    }
}
