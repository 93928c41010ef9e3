//! Field paths (`spec.health.http.url`, `spec.command[0]`): what errors name, and the
//! breadcrumbs the deserializer leaves to build one when it fails.

use std::fmt;

/// One step of a field path: a mapping key or a sequence index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathSegment {
    Key(String),
    Index(usize),
}

/// A field path such as `spec.health.http.url` or `spec.command[0]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldPath(pub Vec<PathSegment>);

impl FieldPath {
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.0.push(PathSegment::Key(key.into()));
        self
    }
    pub fn index(mut self, index: usize) -> Self {
        self.0.push(PathSegment::Index(index));
        self
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `FieldPath::from("spec.dependsOn")` splits on dots.
impl From<&str> for FieldPath {
    fn from(text: &str) -> Self {
        FieldPath(
            text.split('.')
                .filter(|s| !s.is_empty())
                .map(|s| PathSegment::Key(s.to_string()))
                .collect(),
        )
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                PathSegment::Index(n) => write!(f, "[{n}]")?,
                PathSegment::Key(k) if is_simple_key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    f.write_str(k)?;
                }
                PathSegment::Key(k) => write!(f, "[{k:?}]")?,
            }
        }
        Ok(())
    }
}

fn is_simple_key(key: &str) -> bool {
    !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The path to the node being deserialized, as a linked list on the stack: built only on error.
#[derive(Clone, Copy)]
pub(super) enum Breadcrumb<'a> {
    Root(&'a FieldPath),
    Key(&'a Breadcrumb<'a>, &'a str),
    Index(&'a Breadcrumb<'a>, usize),
}

impl Breadcrumb<'_> {
    pub(super) fn to_path(self) -> FieldPath {
        match self {
            Breadcrumb::Root(base) => base.clone(),
            Breadcrumb::Key(parent, key) => parent.to_path().key(key),
            Breadcrumb::Index(parent, i) => parent.to_path().index(i),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_paths_display_like_users_write_them() {
        let path = FieldPath::from("metadata.annotations").key("mirror.os/prune");
        assert_eq!(path.to_string(), "metadata.annotations[\"mirror.os/prune\"]");
        assert_eq!(FieldPath::from("spec.command").index(0).to_string(), "spec.command[0]");
    }
}
