//! Files -> YAML documents -> typed resources. Pure: no I/O. Each document is decoded on its
//! own so that one bad document does not hide the errors of the others.

use serde::de::DeserializeOwned;

use super::files::{FileContent, SourceFile};
use super::yaml::{self, DecodeError, FieldPath, Mark, Node, Value};
use super::Diagnostic;
use crate::spec::common::is_dns_label;
use crate::spec::{Kind, ObjectMeta, Origin, Resource, Spec, API_VERSION};

/// A decoded resource and which document of its file it came from. The YAML tree itself is
/// dropped (it is ~20 times the size of the text); `locate` re-parses a file when an error in it
/// needs a position.
pub struct Parsed {
    pub resource: Resource,
    /// Index among the non-empty documents of the file, as `yaml::parse_documents` returns them.
    pub document: usize,
}

impl Parsed {
    pub fn file(&self) -> &str {
        &self.resource.origin.file
    }
}

const ENVELOPE_FIELDS: [&str; 4] = ["apiVersion", "kind", "metadata", "spec"];

/// Below this many files, decoding stays on one thread (a thread costs more than it saves).
const PARALLEL_FROM_FILES: usize = 32;

/// Decodes every file; large states are split into contiguous chunks decoded on all cores, and
/// the results joined in file order, so the output does not depend on the thread count.
pub fn decode_files(files: &[SourceFile], max_file_size: u64) -> (Vec<Parsed>, Vec<Diagnostic>) {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    if threads < 2 || files.len() < PARALLEL_FROM_FILES {
        return decode_chunk(files, max_file_size);
    }
    let chunk = files.len().div_ceil(threads);
    let results: Vec<(Vec<Parsed>, Vec<Diagnostic>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| scope.spawn(move || decode_chunk(part, max_file_size)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("decoding does not panic"))
            .collect()
    });
    let mut parsed = Vec::new();
    let mut diagnostics = Vec::new();
    for (p, d) in results {
        parsed.extend(p);
        diagnostics.extend(d);
    }
    (parsed, diagnostics)
}

fn decode_chunk(files: &[SourceFile], max_file_size: u64) -> (Vec<Parsed>, Vec<Diagnostic>) {
    let mut parsed = Vec::new();
    let mut diagnostics = Vec::new();
    for file in files {
        decode_file(file, max_file_size, &mut parsed, &mut diagnostics);
    }
    (parsed, diagnostics)
}

fn decode_file(file: &SourceFile, max_file_size: u64, parsed: &mut Vec<Parsed>, out: &mut Vec<Diagnostic>) {
    let file_error = |mark: Mark, message: String| Diagnostic::new(&file.path, mark, None, None, message);
    let bytes = match &file.content {
        FileContent::Bytes(bytes) => bytes,
        FileContent::Symlink => {
            out.push(file_error(
                Mark::new(1, 1),
                "symbolic links are not followed in the desired state: commit the file itself".into(),
            ));
            return;
        }
        FileContent::TooLarge(size) => {
            out.push(file_error(
                Mark::new(1, 1),
                format!("file is {size} bytes, over the limit of {max_file_size} bytes (--max-file-size)"),
            ));
            return;
        }
    };
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text.strip_prefix('\u{feff}').unwrap_or(text),
        Err(e) => {
            let valid = std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default();
            out.push(file_error(
                mark_at_end(valid),
                format!(
                    "not valid UTF-8 (byte 0x{:02x} at offset {}): desired-state files must be UTF-8 text",
                    bytes[e.valid_up_to()],
                    e.valid_up_to()
                ),
            ));
            return;
        }
    };
    let (documents, syntax_error) = yaml::parse_documents(text);
    for (index, document) in documents.into_iter().enumerate() {
        if let Some(resource) = decode_document(&file.path, document, out) {
            parsed.push(Parsed {
                resource,
                document: index,
            });
        }
    }
    if let Some(error) = syntax_error {
        out.push(file_error(error.mark, error.message));
    }
}

/// The text of a file that decoded (so is UTF-8), for re-parsing.
pub fn text_of(file: &SourceFile) -> Option<&str> {
    match &file.content {
        FileContent::Bytes(bytes) => std::str::from_utf8(bytes)
            .ok()
            .map(|t| t.strip_prefix('\u{feff}').unwrap_or(t)),
        _ => None,
    }
}

/// The position just past `text` (where the first invalid byte sits).
fn mark_at_end(text: &str) -> Mark {
    let line = text.matches('\n').count() as u32 + 1;
    let column = text.rsplit('\n').next().unwrap_or("").chars().count() as u32 + 1;
    Mark::new(line, column)
}

fn decode_document(file: &str, document: yaml::Document, out: &mut Vec<Diagnostic>) -> Option<Resource> {
    let root = document.root;
    let entries = match &root.value {
        Value::Map(entries) => entries,
        _ => {
            let found = if matches!(root.value, Value::Seq(_)) {
                "a sequence"
            } else {
                "a scalar"
            };
            out.push(Diagnostic::new(
                file,
                root.mark,
                None,
                None,
                format!("expected a resource (a mapping with apiVersion, kind, metadata and spec), found {found}"),
            ));
            return None;
        }
    };

    let kind_node = root.get("kind");
    let kind = kind_node.and_then(Node::as_str).and_then(Kind::parse);
    let raw_name = root.get("metadata").and_then(|m| m.get("name")).and_then(Node::as_str);
    let mut errors = DocumentErrors {
        file,
        resource: kind.map(|k| format!("{k}/{}", raw_name.unwrap_or("?"))),
        // Document-level errors point at its first key, as `Origin` does.
        start: root.mark,
        misspelled: Vec::new(),
        out,
        fatal: false,
    };

    for (index, (key, _)) in entries.iter().enumerate() {
        let Some(name) = key.as_str() else { continue };
        if let Some((first, _)) = entries[..index].iter().find(|(k, _)| k.as_str() == Some(name)) {
            errors.fatal(
                key.mark,
                name,
                format!("duplicate key `{name}` (first given at line {})", first.mark.line),
            );
        } else if !ENVELOPE_FIELDS.contains(&name) {
            let suggestion = yaml::suggest(name, ENVELOPE_FIELDS);
            errors.misspelled.extend(suggestion);
            let hint = suggestion
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            errors.fatal(
                key.mark,
                name,
                format!("unknown field `{name}`{hint}: expected apiVersion, kind, metadata and spec"),
            );
        }
    }

    match root.get("apiVersion") {
        None => errors.missing(
            "apiVersion",
            format!("missing required field `apiVersion`: expected `{API_VERSION}`"),
        ),
        Some(node) if node.as_str() != Some(API_VERSION) => errors.fatal(
            node.mark,
            "apiVersion",
            format!(
                "unknown apiVersion `{}`: expected `{API_VERSION}`",
                node.as_str().unwrap_or("")
            ),
        ),
        Some(_) => {}
    }

    let kinds = Kind::ALL.map(Kind::as_str);
    match (kind_node, kind) {
        (None, _) => errors.missing(
            "kind",
            format!("missing required field `kind`: expected one of {}", kinds.join(", ")),
        ),
        (Some(node), None) => {
            let text = node.as_str().unwrap_or("");
            let hint = yaml::suggest(text, kinds)
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            errors.fatal(
                node.mark,
                "kind",
                format!("unknown kind `{text}`{hint}: expected one of {}", kinds.join(", ")),
            );
        }
        _ => {}
    }

    let metadata = match root.get("metadata") {
        None => {
            errors.missing(
                "metadata",
                "missing required field `metadata`: expected a mapping with a `name`".into(),
            );
            None
        }
        Some(node) => match yaml::decode::<ObjectMeta>(node, &FieldPath::from("metadata")) {
            Ok(meta) => {
                if !is_dns_label(&meta.name) {
                    // Not fatal: the resource still takes part in the cross-resource checks, so a
                    // bad name does not hide its other errors.
                    let at = node.get("name").map_or(node.mark, |n| n.mark);
                    errors.push(at, "metadata.name", format!(
                        "expected a lowercase DNS label (a-z, 0-9 and `-`, at most 63 characters, starting and ending with a letter or digit), found `{}`",
                        meta.name
                    ));
                }
                Some(meta)
            }
            Err(e) => {
                errors.decode_error(node.mark, e);
                None
            }
        },
    };

    let spec = match (root.get("spec"), kind) {
        (None, _) => {
            errors.missing("spec", "missing required field `spec`".into());
            None
        }
        (Some(node), Some(kind)) => match decode_spec(kind, node) {
            Ok(spec) => Some(spec),
            Err(e) => {
                errors.decode_error(node.mark, e);
                None
            }
        },
        (Some(_), None) => None,
    };

    if errors.fatal {
        return None;
    }
    let (kind, metadata, spec) = (kind?, metadata?, spec?);
    let origin = Origin {
        file: file.to_string(),
        line: root.mark.line,
        column: root.mark.column,
    };
    Some(Resource {
        api_version: API_VERSION.to_string(),
        kind,
        metadata,
        spec,
        origin,
    })
}

/// The errors of one document. A fatal one keeps the document out of the cross-resource checks.
struct DocumentErrors<'a> {
    file: &'a str,
    resource: Option<String>,
    start: Mark,
    /// Envelope fields an unknown key looks like a typo of: not also reported as missing.
    misspelled: Vec<&'static str>,
    out: &'a mut Vec<Diagnostic>,
    fatal: bool,
}

impl DocumentErrors<'_> {
    fn push(&mut self, mark: Mark, field: &str, message: String) {
        self.out.push(Diagnostic::new(
            self.file,
            mark,
            self.resource.clone(),
            Some(field.to_string()),
            message,
        ));
    }

    fn fatal(&mut self, mark: Mark, field: &str, message: String) {
        self.fatal = true;
        self.push(mark, field, message);
    }

    fn missing(&mut self, field: &'static str, message: String) {
        self.fatal = true;
        if !self.misspelled.contains(&field) {
            self.push(self.start, field, message);
        }
    }

    fn decode_error(&mut self, fallback: Mark, e: DecodeError) {
        let path = e.path.map(|p| p.to_string()).unwrap_or_default();
        self.fatal(e.mark.unwrap_or(fallback), &path, e.message);
    }
}

fn decode_as<T: DeserializeOwned>(node: &Node, wrap: fn(T) -> Spec) -> Result<Spec, DecodeError> {
    yaml::decode::<T>(node, &FieldPath::from("spec")).map(wrap)
}

fn decode_spec(kind: Kind, node: &Node) -> Result<Spec, DecodeError> {
    match kind {
        Kind::Service => decode_as(node, Spec::Service),
        Kind::LaunchAgent => decode_as(node, Spec::LaunchAgent),
        Kind::Agent => decode_as(node, Spec::Agent),
        Kind::ModelProvider => decode_as(node, Spec::ModelProvider),
        Kind::Policy => decode_as(node, Spec::Policy),
        Kind::MemoryRule => decode_as(node, Spec::MemoryRule),
        Kind::Controller => decode_as(node, Spec::Controller),
    }
}
