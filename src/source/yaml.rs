//! The one module that knows YAML. Everything else sees `Node` trees and serde.
//!
//! Parsing uses saphyr-parser's event stream because it reports a position for every node; the
//! tree keeps those positions so that a type error, an unknown field or a semantic error found
//! later can name its exact line and column. Values are deserialized from the tree with a serde
//! `Deserializer` that tracks the field path. Rendering (spec diffs) goes through serde_yaml.
//! Swapping either library only touches this file.

use std::fmt;

use saphyr_parser::{Event, Parser, ScalarStyle, ScanError};
use serde::de::{self, DeserializeSeed, Visitor};
use serde::Serialize;

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

/// A YAML document: its root node and where it starts.
#[derive(Clone, Debug)]
pub struct Document {
    pub root: Node,
    pub start: Mark,
}

/// A syntax error: the file cannot be parsed past `mark`.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct SyntaxError {
    pub mark: Mark,
    pub message: String,
}

/// The most nodes alias expansion may produce in one file ("billion laughs" guard).
const MAX_NODES: usize = 1_000_000;

fn mark_of(marker: saphyr_parser::Marker) -> Mark {
    Mark::new(marker.line() as u32, marker.col() as u32 + 1)
}

/// Turns the parser's error into one that points where the user must look: an unclosed `[` or
/// `{` is reported where it opens (the parser only notices lines later), a tab at the tab.
fn scan_error(e: ScanError, text: &str, open_flow: Option<(Mark, char)>) -> SyntaxError {
    let mut mark = mark_of(*e.marker());
    let info = e.info();
    if let Some((open, bracket)) = open_flow {
        if open.line < mark.line {
            let (kind, close) = if bracket == '[' {
                ("sequence", ']')
            } else {
                ("mapping", '}')
            };
            return SyntaxError {
                mark: open,
                message: format!(
                    "invalid YAML: unclosed flow {kind}: this `{bracket}` has no matching `{close}` (the parser gave up at line {}: {info})",
                    mark.line
                ),
            };
        }
    }
    if info.contains("tab") && mark.column > 1 {
        let line = text.lines().nth(mark.line as usize - 1).unwrap_or("");
        if line.chars().nth(mark.column as usize - 2) == Some('\t') {
            mark.column -= 1;
        }
    }
    SyntaxError {
        mark,
        message: format!("invalid YAML: {info}"),
    }
}

enum Frame {
    Seq {
        mark: Mark,
        anchor: usize,
        items: Vec<Node>,
        flow: bool,
    },
    Map {
        mark: Mark,
        anchor: usize,
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
        flow: bool,
    },
}

impl Frame {
    /// The innermost open flow collection: where it opens and its bracket.
    fn open_flow(stack: &[Frame]) -> Option<(Mark, char)> {
        match stack.last()? {
            Frame::Seq { mark, flow: true, .. } => Some((*mark, '[')),
            Frame::Map { mark, flow: true, .. } => Some((*mark, '{')),
            _ => None,
        }
    }
}

/// Finds the character at a character index; events arrive in order, so the cursor only moves
/// forward (linear in the file, also for non-ASCII text).
struct CharCursor<'t> {
    text: &'t str,
    ascii: bool,
    chars: usize,
    bytes: usize,
}

impl CharCursor<'_> {
    fn char_at(&mut self, index: usize) -> Option<char> {
        if self.ascii {
            return self.text.as_bytes().get(index).map(|b| *b as char);
        }
        if index < self.chars {
            self.chars = 0;
            self.bytes = 0;
        }
        for c in self.text[self.bytes..].chars() {
            if self.chars == index {
                return Some(c);
            }
            self.chars += 1;
            self.bytes += c.len_utf8();
        }
        None
    }
}

/// Parses every document of a YAML stream. Documents before a syntax error are returned with it,
/// so that their own errors can still be reported. Empty documents are skipped.
pub fn parse_documents(text: &str) -> (Vec<Document>, Option<SyntaxError>) {
    let mut documents = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: Vec<Option<Node>> = Vec::new();
    let mut doc_start = Mark::new(1, 1);
    let mut root: Option<Node> = None;
    let mut nodes = 0usize;
    // Flow collections are told from block ones by their opening bracket; events do not say.
    let mut cursor = CharCursor {
        text,
        ascii: text.is_ascii(),
        chars: 0,
        bytes: 0,
    };

    for item in Parser::new_from_str(text) {
        let (event, span) = match item {
            Ok(pair) => pair,
            Err(e) => return (documents, Some(scan_error(e, text, Frame::open_flow(&stack)))),
        };
        let mark = mark_of(span.start);
        let finished: Option<(Node, usize)> = match event {
            Event::StreamStart | Event::StreamEnd | Event::Nothing => None,
            Event::DocumentStart(_) => {
                doc_start = mark;
                root = None;
                anchors.clear();
                None
            }
            Event::DocumentEnd => {
                if let Some(node) = root.take() {
                    if !node.is_null() {
                        documents.push(Document {
                            root: node,
                            start: doc_start,
                        });
                    }
                }
                None
            }
            Event::Alias(id) => match anchors.get(id).and_then(Option::as_ref) {
                Some(node) => {
                    nodes += count_nodes(node);
                    if nodes > MAX_NODES {
                        let message = format!("aliases expand to more than {MAX_NODES} nodes");
                        return (documents, Some(SyntaxError { mark, message }));
                    }
                    Some((node.clone(), 0))
                }
                None => {
                    let message = "alias refers to an unknown anchor".to_string();
                    return (documents, Some(SyntaxError { mark, message }));
                }
            },
            Event::Scalar(text, style, anchor, tag) => {
                let mut plain = style == ScalarStyle::Plain;
                if let Some(tag) = tag {
                    let name = format!("{}{}", tag.handle, tag.suffix);
                    match name.as_str() {
                        "!!str" | "tag:yaml.org,2002:str" => plain = false,
                        "!!int" | "!!float" | "!!bool" | "!!null" | "tag:yaml.org,2002:int" => {}
                        _ => {
                            let message = format!(
                                "invalid YAML: unsupported tag `{name}`: only YAML core tags such as !!str are allowed"
                            );
                            return (documents, Some(SyntaxError { mark, message }));
                        }
                    }
                }
                nodes += 1;
                Some((
                    Node {
                        mark,
                        value: Value::Scalar(Scalar {
                            text: text.into_owned(),
                            plain,
                        }),
                    },
                    anchor,
                ))
            }
            Event::SequenceStart(anchor, _) => {
                let flow = cursor.char_at(span.start.index()) == Some('[');
                stack.push(Frame::Seq {
                    mark,
                    anchor,
                    items: Vec::new(),
                    flow,
                });
                None
            }
            Event::MappingStart(anchor, _) => {
                let flow = cursor.char_at(span.start.index()) == Some('{');
                stack.push(Frame::Map {
                    mark,
                    anchor,
                    entries: Vec::new(),
                    key: None,
                    flow,
                });
                None
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Frame::Seq {
                    mark, anchor, items, ..
                }) => {
                    nodes += 1;
                    Some((
                        Node {
                            mark,
                            value: Value::Seq(items),
                        },
                        anchor,
                    ))
                }
                Some(Frame::Map {
                    mark, anchor, entries, ..
                }) => {
                    nodes += 1;
                    Some((
                        Node {
                            mark,
                            value: Value::Map(entries),
                        },
                        anchor,
                    ))
                }
                None => None,
            },
        };
        let Some((mut node, anchor)) = finished else { continue };
        if anchor > 0 {
            if anchors.len() <= anchor {
                anchors.resize(anchor + 1, None);
            }
            anchors[anchor] = Some(node.clone());
        }
        match stack.last_mut() {
            None => root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => *key = Some(node),
                Some(k) => {
                    // An empty value (`spec:`) sits at the `:`; point at its key instead.
                    if node.as_scalar().is_some_and(|s| s.plain && s.text.is_empty()) {
                        node.mark = k.mark;
                    }
                    entries.push((k, node))
                }
            },
        }
    }
    (documents, None)
}

fn count_nodes(node: &Node) -> usize {
    match &node.value {
        Value::Scalar(_) => 1,
        Value::Seq(items) => 1 + items.iter().map(count_nodes).sum::<usize>(),
        Value::Map(entries) => {
            1 + entries
                .iter()
                .map(|(k, v)| count_nodes(k) + count_nodes(v))
                .sum::<usize>()
        }
    }
}

/// Renders a value as YAML (for human-readable spec diffs).
pub fn render<T: Serialize>(value: &T) -> String {
    serde_yaml::to_string(value).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
}

// ---------------------------------------------------------------------------------------------
// Field paths

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
enum Breadcrumb<'a> {
    Root(&'a FieldPath),
    Key(&'a Breadcrumb<'a>, &'a str),
    Index(&'a Breadcrumb<'a>, usize),
}

impl Breadcrumb<'_> {
    fn to_path(self) -> FieldPath {
        match self {
            Breadcrumb::Root(base) => base.clone(),
            Breadcrumb::Key(parent, key) => parent.to_path().key(key),
            Breadcrumb::Index(parent, i) => parent.to_path().index(i),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Deserialization

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
    fn new(message: String) -> Self {
        DecodeError {
            mark: None,
            path: None,
            missing: None,
            missing_field: false,
            message,
        }
    }

    /// Fills in the position and path of the innermost node the error came from.
    fn at(mut self, mark: Mark, crumb: Breadcrumb<'_>) -> Self {
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

fn one_of(names: &[&str]) -> String {
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

/// Deserializes `node` as a `T`; errors carry the position and the path below `base`.
pub fn decode<T: de::DeserializeOwned>(node: &Node, base: &FieldPath) -> Result<T, DecodeError> {
    let crumb = Breadcrumb::Root(base);
    T::deserialize(NodeDeserializer { node, crumb }).map_err(|e| e.at(node.mark, crumb))
}

struct NodeDeserializer<'de, 'p> {
    node: &'de Node,
    crumb: Breadcrumb<'p>,
}

impl<'de> NodeDeserializer<'de, '_> {
    fn fail<T>(&self, error: DecodeError) -> Result<T, DecodeError> {
        Err(error.at(self.node.mark, self.crumb))
    }

    fn unexpected(&self) -> de::Unexpected<'de> {
        match &self.node.value {
            Value::Seq(_) => de::Unexpected::Seq,
            Value::Map(_) => de::Unexpected::Map,
            Value::Scalar(s) => match s.resolve() {
                Resolved::Null => de::Unexpected::Unit,
                Resolved::Bool(b) => de::Unexpected::Bool(b),
                Resolved::Int(i) => de::Unexpected::Signed(i),
                Resolved::UInt(u) => de::Unexpected::Unsigned(u),
                Resolved::Float(f) => de::Unexpected::Float(f),
                Resolved::Str => de::Unexpected::Str(&s.text),
            },
        }
    }

    fn type_error<T>(&self, expected: &dyn de::Expected) -> Result<T, DecodeError> {
        self.fail(de::Error::invalid_type(self.unexpected(), expected))
    }

    fn resolved(&self) -> Option<Resolved> {
        self.node.as_scalar().map(Scalar::resolve)
    }

    fn deserialize_integer<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let result = match self.resolved() {
            Some(Resolved::Int(i)) => visitor.visit_i64(i),
            Some(Resolved::UInt(u)) => visitor.visit_u64(u),
            _ => return self.type_error(&visitor),
        };
        result.map_err(|e: DecodeError| e.at(self.node.mark, self.crumb))
    }

    fn deserialize_float<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let result = match self.resolved() {
            Some(Resolved::Int(i)) => visitor.visit_f64(i as f64),
            Some(Resolved::UInt(u)) => visitor.visit_f64(u as f64),
            Some(Resolved::Float(f)) => visitor.visit_f64(f),
            _ => return self.type_error(&visitor),
        };
        result.map_err(|e: DecodeError| e.at(self.node.mark, self.crumb))
    }
}

macro_rules! forward_integer {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
            self.deserialize_integer(visitor)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for NodeDeserializer<'de, '_> {
    type Error = DecodeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let (mark, crumb) = (self.node.mark, self.crumb);
        let result = match &self.node.value {
            Value::Seq(items) => visitor.visit_seq(SeqReader {
                items: items.iter().enumerate(),
                crumb,
            }),
            Value::Map(entries) => visitor.visit_map(MapReader::new(entries, crumb)),
            Value::Scalar(s) => match s.resolve() {
                Resolved::Null => visitor.visit_unit(),
                Resolved::Bool(b) => visitor.visit_bool(b),
                Resolved::Int(i) => visitor.visit_i64(i),
                Resolved::UInt(u) => visitor.visit_u64(u),
                Resolved::Float(f) => visitor.visit_f64(f),
                Resolved::Str => visitor.visit_borrowed_str(&s.text),
            },
        };
        result.map_err(|e| e.at(mark, crumb))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.resolved() {
            Some(Resolved::Bool(b)) => visitor
                .visit_bool(b)
                .map_err(|e: DecodeError| e.at(self.node.mark, self.crumb)),
            _ => self.type_error(&visitor),
        }
    }

    forward_integer!(deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128);

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_float(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_float(visitor)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_str(visitor)
    }

    /// Any scalar but null is accepted as a string, as written: `PORT: 8080` gives "8080".
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match &self.node.value {
            Value::Scalar(s) if s.resolve() != Resolved::Null => visitor
                .visit_borrowed_str(&s.text)
                .map_err(|e: DecodeError| e.at(self.node.mark, self.crumb)),
            _ => self.type_error(&"a string"),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.type_error(&visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.type_error(&visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        if self.node.is_null() {
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        if self.node.is_null() {
            visitor.visit_unit()
        } else {
            self.type_error(&visitor)
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, _: &'static str, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _: &'static str, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_newtype_struct(self)
    }

    /// An empty value (`key:` with nothing after it) reads as an empty sequence.
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let (mark, crumb) = (self.node.mark, self.crumb);
        let result = match &self.node.value {
            Value::Seq(items) => visitor.visit_seq(SeqReader {
                items: items.iter().enumerate(),
                crumb,
            }),
            _ if self.node.is_null() => visitor.visit_seq(SeqReader {
                items: [].iter().enumerate(),
                crumb,
            }),
            _ => return self.type_error(&"a sequence (a list)"),
        };
        result.map_err(|e| e.at(mark, crumb))
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.deserialize_seq(visitor)
    }

    /// An empty value reads as an empty mapping.
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let (mark, crumb) = (self.node.mark, self.crumb);
        let result = match &self.node.value {
            Value::Map(entries) => visitor.visit_map(MapReader::new(entries, crumb)),
            _ if self.node.is_null() => visitor.visit_map(MapReader::new(&[], crumb)),
            _ => return self.type_error(&visitor),
        };
        result.map_err(|e| e.at(mark, crumb))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.deserialize_map(visitor)
    }

    /// Unit variants are scalars (`restart: always`); others a one-key mapping (`{every: 5m}`).
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        let (mark, crumb) = (self.node.mark, self.crumb);
        let result = match &self.node.value {
            Value::Scalar(s) if s.resolve() != Resolved::Null => {
                visitor.visit_enum(de::value::StrDeserializer::<DecodeError>::new(&s.text))
            }
            Value::Map(entries) if entries.len() == 1 => {
                let (key, value) = &entries[0];
                visitor.visit_enum(EnumReader { key, value, crumb })
            }
            Value::Map(entries) if entries.len() > 1 => {
                let keys: Vec<&str> = entries.iter().filter_map(|(k, _)| k.as_str()).collect();
                return self.fail(DecodeError::new(format!(
                    "expected exactly one of {}, found {}",
                    one_of(variants),
                    one_of(&keys)
                )));
            }
            _ => return self.type_error(&format!("one of {}", one_of(variants)).as_str()),
        };
        result.map_err(|e| e.at(mark, crumb))
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_unit()
    }
}

struct SeqReader<'de, 'p> {
    items: std::iter::Enumerate<std::slice::Iter<'de, Node>>,
    crumb: Breadcrumb<'p>,
}

impl<'de> de::SeqAccess<'de> for SeqReader<'de, '_> {
    type Error = DecodeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, DecodeError> {
        let Some((index, node)) = self.items.next() else {
            return Ok(None);
        };
        let crumb = Breadcrumb::Index(&self.crumb, index);
        seed.deserialize(NodeDeserializer { node, crumb })
            .map(Some)
            .map_err(|e| e.at(node.mark, crumb))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct MapReader<'de, 'p> {
    entries: &'de [(Node, Node)],
    next: usize,
    crumb: Breadcrumb<'p>,
}

impl<'de, 'p> MapReader<'de, 'p> {
    fn new(entries: &'de [(Node, Node)], crumb: Breadcrumb<'p>) -> Self {
        MapReader {
            entries,
            next: 0,
            crumb,
        }
    }
}

impl<'de> de::MapAccess<'de> for MapReader<'de, '_> {
    type Error = DecodeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, DecodeError> {
        let Some((key, _)) = self.entries.get(self.next) else {
            return Ok(None);
        };
        let text = match key.as_scalar() {
            Some(s) => s.text.as_str(),
            None => {
                let error = DecodeError::new("expected a plain key, found a mapping or sequence used as a key".into());
                return Err(error.at(key.mark, self.crumb));
            }
        };
        let crumb = Breadcrumb::Key(&self.crumb, text);
        if let Some((earlier, _)) = self.entries[..self.next]
            .iter()
            .find(|(k, _)| k.as_scalar().is_some_and(|s| s.text == text))
        {
            let message = format!("duplicate key `{text}` (first given at line {})", earlier.mark.line);
            return Err(DecodeError::new(message).at(key.mark, crumb));
        }
        seed.deserialize(NodeDeserializer { node: key, crumb })
            .map(Some)
            .map_err(|e| e.at(key.mark, crumb))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DecodeError> {
        let (key, value) = &self.entries[self.next];
        self.next += 1;
        let text = key.as_scalar().map(|s| s.text.as_str()).unwrap_or("?");
        let crumb = Breadcrumb::Key(&self.crumb, text);
        seed.deserialize(NodeDeserializer { node: value, crumb })
            .map_err(|e| e.at(value.mark, crumb))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len() - self.next)
    }
}

struct EnumReader<'de, 'p> {
    key: &'de Node,
    value: &'de Node,
    crumb: Breadcrumb<'p>,
}

impl<'de, 'p> de::EnumAccess<'de> for EnumReader<'de, 'p> {
    type Error = DecodeError;
    type Variant = VariantReader<'de, 'p>;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self::Variant), DecodeError> {
        let crumb = self.crumb;
        let variant = seed
            .deserialize(NodeDeserializer { node: self.key, crumb })
            .map_err(|e| e.at(self.key.mark, crumb))?;
        Ok((
            variant,
            VariantReader {
                key: self.key,
                value: self.value,
                crumb,
            },
        ))
    }
}

struct VariantReader<'de, 'p> {
    key: &'de Node,
    value: &'de Node,
    crumb: Breadcrumb<'p>,
}

impl<'de> de::VariantAccess<'de> for VariantReader<'de, '_> {
    type Error = DecodeError;

    fn unit_variant(self) -> Result<(), DecodeError> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DecodeError> {
        let name = self.key.as_str().unwrap_or("?");
        let crumb = Breadcrumb::Key(&self.crumb, name);
        seed.deserialize(NodeDeserializer {
            node: self.value,
            crumb,
        })
        .map_err(|e| e.at(self.value.mark, crumb))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _: usize, visitor: V) -> Result<V::Value, DecodeError> {
        let name = self.key.as_str().unwrap_or("?");
        let crumb = Breadcrumb::Key(&self.crumb, name);
        de::Deserializer::deserialize_seq(
            NodeDeserializer {
                node: self.value,
                crumb,
            },
            visitor,
        )
    }

    fn struct_variant<V: Visitor<'de>>(self, _: &'static [&'static str], visitor: V) -> Result<V::Value, DecodeError> {
        let name = self.key.as_str().unwrap_or("?");
        let crumb = Breadcrumb::Key(&self.crumb, name);
        de::Deserializer::deserialize_map(
            NodeDeserializer {
                node: self.value,
                crumb,
            },
            visitor,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Sample {
        name: String,
        #[serde(default)]
        count: u32,
        #[serde(default)]
        tags: Vec<String>,
        #[serde(default)]
        env: BTreeMap<String, String>,
        #[serde(default)]
        ratio: Option<f64>,
    }

    fn one(text: &str) -> Node {
        let (mut docs, error) = parse_documents(text);
        assert!(error.is_none(), "{error:?}");
        docs.remove(0).root
    }

    #[test]
    fn decodes_with_positions() {
        let node = one("name: web\ncount: 3\ntags: [a, b]\nenv: {PORT: 8080, DEBUG: true}\nratio: 0.5\n");
        let sample: Sample = decode(&node, &FieldPath::default()).unwrap();
        assert_eq!(sample.count, 3);
        assert_eq!(sample.env["PORT"], "8080");
        assert_eq!(sample.env["DEBUG"], "true");
        assert_eq!(sample.ratio, Some(0.5));
    }

    #[test]
    fn type_error_names_line_column_and_path() {
        let node = one("name: web\ntags:\n  - a\n  - [nested]\n");
        let error = decode::<Sample>(&node, &FieldPath::from("spec")).unwrap_err();
        assert_eq!(error.mark, Some(Mark::new(4, 5)));
        assert_eq!(error.path.unwrap().to_string(), "spec.tags[1]");
        assert_eq!(error.message, "expected a string, found a sequence");
    }

    #[test]
    fn unknown_field_points_at_the_key_and_suggests() {
        let node = one("name: web\ncuont: 3\n");
        let error = decode::<Sample>(&node, &FieldPath::default()).unwrap_err();
        assert_eq!(error.mark, Some(Mark::new(2, 1)));
        assert_eq!(error.path.unwrap().to_string(), "cuont");
        assert!(
            error
                .message
                .starts_with("unknown field `cuont` (did you mean `count`?)"),
            "{}",
            error.message
        );
    }

    #[test]
    fn missing_field_names_the_field() {
        let node = one("count: 3\n");
        let error = decode::<Sample>(&node, &FieldPath::from("spec")).unwrap_err();
        assert_eq!(error.path.unwrap().to_string(), "spec.name");
        assert_eq!(error.message, "missing required field `name`");
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let node = one("name: a\nname: b\n");
        let error = decode::<Sample>(&node, &FieldPath::default()).unwrap_err();
        assert_eq!(error.mark, Some(Mark::new(2, 1)));
        assert!(error.message.contains("duplicate key `name` (first given at line 1)"));
    }

    #[test]
    fn negative_into_unsigned_is_rejected() {
        let node = one("name: a\ncount: -1\n");
        let error = decode::<Sample>(&node, &FieldPath::default()).unwrap_err();
        assert_eq!(
            error.message,
            "expected a whole number of at least 0, found integer `-1`"
        );
    }

    #[test]
    fn multi_document_streams_skip_empty_documents() {
        let (docs, error) = parse_documents("---\na: 1\n---\n# nothing\n---\nb: 2\n");
        assert!(error.is_none());
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].root.mark.line, 6);
    }

    #[test]
    fn syntax_errors_keep_earlier_documents() {
        let (docs, error) = parse_documents("a: 1\n---\nb: [1, 2\n");
        assert_eq!(docs.len(), 1);
        let error = error.unwrap();
        assert!(error.message.starts_with("invalid YAML"), "{}", error.message);
    }

    #[test]
    fn aliases_expand_and_are_bounded() {
        let node = one("base: &b [x, y]\ncopy: *b\n");
        assert_eq!(node.get("copy").unwrap(), node.get("base").unwrap());
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for (prev, next) in ["a", "b", "c", "d", "e", "f", "g"]
            .iter()
            .zip(["b", "c", "d", "e", "f", "g", "h"])
        {
            bomb.push_str(&format!("{next}: &{next} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
        }
        let (_, error) = parse_documents(&bomb);
        assert!(error.unwrap().message.contains("aliases expand"));
    }

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

    #[test]
    fn field_paths_display_like_users_write_them() {
        let path = FieldPath::from("metadata.annotations").key("mirror.os/prune");
        assert_eq!(path.to_string(), "metadata.annotations[\"mirror.os/prune\"]");
        assert_eq!(FieldPath::from("spec.command").index(0).to_string(), "spec.command[0]");
    }
}
