//! The one module that knows YAML. Everything else sees `Node` trees and serde.
//!
//! Parsing uses saphyr-parser's event stream because it reports a position for every node; the
//! tree keeps those positions so that a type error, an unknown field or a semantic error found
//! later can name its exact line and column. Values are deserialized from the tree with a serde
//! `Deserializer` that tracks the field path. Rendering (spec diffs) goes through serde_yaml.
//! Swapping either library only touches this directory.
//!
//! The parts: `node` (the tree and what plain scalars mean), `parser` (text to trees), `path`
//! (field paths), `error` (decode errors and their messages) and `deserializer` (serde over trees).

mod deserializer;
mod error;
mod node;
mod parser;
mod path;

use serde::Serialize;

pub use deserializer::decode;
pub use error::{suggest, DecodeError};
pub use node::{Mark, Node, Resolved, Scalar, Value};
pub use parser::{parse_documents, Document, SyntaxError};
pub use path::{FieldPath, PathSegment};

/// Renders a value as YAML (for human-readable spec diffs).
pub fn render<T: Serialize>(value: &T) -> String {
    serde_yaml::to_string(value).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
}
