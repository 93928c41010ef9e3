//! The YAML tree: nodes with their positions, lookups by key and field path, and what a plain
//! scalar means under the YAML 1.2 core schema.

use std::fmt;

use super::path::PathSegment;

/// A position in a file: 1-based line and column (in characters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mark {
    pub line: u32,
    pub column: u32,
}

impl Mark {
    pub fn new(line: u32, column: u32) -> Self {
        Mark { line, column }
    }
}

impl fmt::Display for Mark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Scalar {
    pub text: String,
    /// Plain (unquoted, untagged) scalars resolve to null, booleans and numbers; others are strings.
    pub plain: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Scalar(Scalar),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub mark: Mark,
    pub value: Value,
}

/// What a plain scalar means under the YAML 1.2 core schema.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Resolved {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str,
}

impl Node {
    pub fn as_scalar(&self) -> Option<&Scalar> {
        match &self.value {
            Value::Scalar(s) => Some(s),
            _ => None,
        }
    }

    /// The scalar's text when it is a string (not null, not a mapping or sequence).
    pub fn as_str(&self) -> Option<&str> {
        self.as_scalar()
            .filter(|s| s.resolve() != Resolved::Null)
            .map(|s| s.text.as_str())
    }

    pub fn is_null(&self) -> bool {
        self.as_scalar().is_some_and(|s| s.resolve() == Resolved::Null)
    }

    /// The value of `key` in a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_scalar().is_some_and(|s| s.text == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The key node of `key` in a mapping (to point at the key itself).
    pub fn get_key(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_scalar().is_some_and(|s| s.text == key))
                .map(|(k, _)| k),
            _ => None,
        }
    }

    /// Takes out the mapping entry at `path` (its last segment a key); false when there is none.
    pub fn remove_at(&mut self, path: &[PathSegment]) -> bool {
        let Some((Value::Map(entries), key)) = self.parent_mut(path).map(|(n, k)| (&mut n.value, k)) else {
            return false;
        };
        let before = entries.len();
        entries.retain(|(name, _)| name.as_scalar().is_none_or(|s| s.text != key));
        entries.len() != before
    }

    /// Adds the mapping entry at `path` (its last segment a key, its parent a mapping); false
    /// when the parent is not there. The key gets the value's mark.
    pub fn insert_at(&mut self, path: &[PathSegment], value: Node) -> bool {
        let Some((Value::Map(entries), key)) = self.parent_mut(path).map(|(n, k)| (&mut n.value, k)) else {
            return false;
        };
        let name = Node {
            mark: value.mark,
            value: Value::Scalar(Scalar {
                text: key.to_string(),
                plain: true,
            }),
        };
        entries.push((name, value));
        true
    }

    /// The node at a field path, exactly (None when any step is missing).
    pub fn get_at(&self, path: &[PathSegment]) -> Option<&Node> {
        let mut node = self;
        for segment in path {
            node = match (segment, &node.value) {
                (PathSegment::Key(key), _) => node.get(key)?,
                (PathSegment::Index(i), Value::Seq(items)) => items.get(*i)?,
                _ => return None,
            };
        }
        Some(node)
    }

    /// The node holding `path`'s last key, and that key.
    fn parent_mut<'a>(&mut self, path: &'a [PathSegment]) -> Option<(&mut Node, &'a str)> {
        let Some((PathSegment::Key(key), parents)) = path.split_last() else {
            return None;
        };
        let mut node = self;
        for segment in parents {
            node = match (segment, &mut node.value) {
                (PathSegment::Key(k), Value::Map(entries)) => entries
                    .iter_mut()
                    .find(|(name, _)| name.as_scalar().is_some_and(|s| &s.text == k))
                    .map(|(_, v)| v)?,
                (PathSegment::Index(i), Value::Seq(items)) => items.get_mut(*i)?,
                _ => return None,
            };
        }
        Some((node, key))
    }

    /// The node at a field path, or the deepest node on the way to it that exists.
    pub fn locate<'a>(&'a self, path: &[PathSegment]) -> &'a Node {
        let mut node = self;
        for segment in path {
            let next = match (segment, &node.value) {
                (PathSegment::Key(key), _) => node.get(key),
                (PathSegment::Index(i), Value::Seq(items)) => items.get(*i),
                _ => None,
            };
            match next {
                Some(n) => node = n,
                None => break,
            }
        }
        node
    }
}

impl Scalar {
    pub fn resolve(&self) -> Resolved {
        if !self.plain {
            return Resolved::Str;
        }
        resolve_plain(&self.text)
    }
}

fn resolve_plain(text: &str) -> Resolved {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Resolved::Null,
        "true" | "True" | "TRUE" => return Resolved::Bool(true),
        "false" | "False" | "FALSE" => return Resolved::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => return Resolved::Float(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return Resolved::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Resolved::Float(f64::NAN),
        _ => {}
    }
    let first = text.as_bytes()[0];
    if !(first.is_ascii_digit() || first == b'-' || first == b'+' || first == b'.') {
        return Resolved::Str;
    }
    if let Some(hex) = text.strip_prefix("0x") {
        return u64::from_str_radix(hex, 16).map_or(Resolved::Str, Resolved::UInt);
    }
    if let Some(oct) = text.strip_prefix("0o") {
        return u64::from_str_radix(oct, 8).map_or(Resolved::Str, Resolved::UInt);
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if text.starts_with('-') {
            return text.parse().map_or(Resolved::Str, Resolved::Int);
        }
        return digits.parse().map_or(Resolved::Str, Resolved::UInt);
    }
    let is_float = digits.bytes().any(|b| b.is_ascii_digit())
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'));
    if is_float {
        if let Ok(f) = text.parse::<f64>() {
            return Resolved::Float(f);
        }
    }
    Resolved::Str
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_scalars_resolve_by_the_core_schema() {
        assert_eq!(resolve_plain("~"), Resolved::Null);
        assert_eq!(resolve_plain("True"), Resolved::Bool(true));
        assert_eq!(resolve_plain("no"), Resolved::Str);
        assert_eq!(resolve_plain("-3"), Resolved::Int(-3));
        assert_eq!(resolve_plain("0x1f"), Resolved::UInt(31));
        assert_eq!(resolve_plain("1e3"), Resolved::Float(1000.0));
        assert_eq!(resolve_plain("1.2.3"), Resolved::Str);
        assert_eq!(resolve_plain("llama3.2:3b"), Resolved::Str);
    }
}
