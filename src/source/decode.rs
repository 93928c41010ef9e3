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
    /// Fields taken out of a spec with errors so the rest could be checked: semantic findings
    /// about them would only repeat those errors.
    pub taken_out: Vec<FieldPath>,
}

impl Parsed {
    pub fn file(&self) -> &str {
        &self.resource.origin.file
    }
}

/// A document with a kind and a name whose other fields have errors: it is not a resource, but
/// it exists (references to it are not reported again as dangling, and it can be a duplicate).
pub struct Declared {
    pub id: crate::spec::ResourceId,
    pub origin: Origin,
    pub document: usize,
}

/// What decoding the files gives: the resources, the errors, and the documents declared with
/// errors.
#[derive(Default)]
pub struct Decoded {
    pub parsed: Vec<Parsed>,
    pub diagnostics: Vec<Diagnostic>,
    pub declared: Vec<Declared>,
}

impl Decoded {
    fn extend(&mut self, other: Decoded) {
        self.parsed.extend(other.parsed);
        self.diagnostics.extend(other.diagnostics);
        self.declared.extend(other.declared);
    }
}

const ENVELOPE_FIELDS: [&str; 4] = ["apiVersion", "kind", "metadata", "spec"];

/// Below this many files, decoding stays on one thread (a thread costs more than it saves).
const PARALLEL_FROM_FILES: usize = 32;

/// Decodes every file; large states are split into contiguous chunks decoded on all cores, and
/// the results joined in file order, so the output does not depend on the thread count.
pub fn decode_files(files: &[SourceFile], max_file_size: u64) -> Decoded {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    if threads < 2 || files.len() < PARALLEL_FROM_FILES {
        return decode_chunk(files, max_file_size);
    }
    let chunk = files.len().div_ceil(threads);
    let results: Vec<Decoded> = std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| scope.spawn(move || decode_chunk(part, max_file_size)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("decoding does not panic"))
            .collect()
    });
    let mut decoded = Decoded::default();
    for part in results {
        decoded.extend(part);
    }
    decoded
}

fn decode_chunk(files: &[SourceFile], max_file_size: u64) -> Decoded {
    let mut decoded = Decoded::default();
    for file in files {
        decode_file(file, max_file_size, &mut decoded);
    }
    decoded
}

fn decode_file(file: &SourceFile, max_file_size: u64, decoded: &mut Decoded) {
    let out = &mut decoded.diagnostics;
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
        match decode_document(&file.path, document, &mut decoded.diagnostics) {
            Outcome::Resource(resource, taken_out) => decoded.parsed.push(Parsed {
                resource: *resource,
                document: index,
                taken_out,
            }),
            Outcome::Declared(id, origin) => decoded.declared.push(Declared {
                id,
                origin,
                document: index,
            }),
            Outcome::Nothing => {}
        }
    }
    if let Some(error) = syntax_error {
        decoded.diagnostics.push(file_error(error.mark, error.message));
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

/// What one document gives.
enum Outcome {
    /// With the fields taken out of its spec to decode the rest (none when it had no errors).
    Resource(Box<Resource>, Vec<FieldPath>),
    /// Errors, but a kind and a name.
    Declared(crate::spec::ResourceId, Origin),
    Nothing,
}

/// Decodes one document: the envelope (a mapping with only the known fields), apiVersion and
/// kind, metadata, then the spec of that kind. Every problem is reported; what is left decides
/// the outcome.
fn decode_document(file: &str, document: yaml::Document, out: &mut Vec<Diagnostic>) -> Outcome {
    let root = document.root;
    let Some(entries) = envelope_entries(file, &root, out) else {
        return Outcome::Nothing;
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
        fatal_before_spec: false,
    };
    check_envelope_keys(entries, &mut errors);
    check_api_version(&root, &mut errors);
    check_kind(kind_node, kind, &mut errors);
    let metadata = decode_metadata(&root, &mut errors);
    errors.fatal_before_spec = errors.fatal;
    let (spec, taken_out) = decode_spec_field(&root, kind, &mut errors);

    let origin = Origin {
        file: file.to_string(),
        line: root.mark.line,
        column: root.mark.column,
    };
    match (errors.fatal, kind, metadata, spec) {
        (false, Some(kind), Some(metadata), Some(spec)) => Outcome::Resource(
            Box::new(Resource {
                api_version: API_VERSION.to_string(),
                kind,
                metadata,
                spec,
                origin,
            }),
            taken_out,
        ),
        (_, Some(kind), Some(metadata), _) => {
            Outcome::Declared(crate::spec::ResourceId::new(kind, metadata.name), origin)
        }
        _ => Outcome::Nothing,
    }
}

/// The entries of a document's root mapping; None (reported) when the root is not a mapping.
fn envelope_entries<'n>(file: &str, root: &'n Node, out: &mut Vec<Diagnostic>) -> Option<&'n [(Node, Node)]> {
    match &root.value {
        Value::Map(entries) => Some(entries),
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
            None
        }
    }
}

/// Each envelope key once, and only apiVersion, kind, metadata and spec (a typo gets a hint).
fn check_envelope_keys(entries: &[(Node, Node)], errors: &mut DocumentErrors<'_>) {
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
}

fn check_api_version(root: &Node, errors: &mut DocumentErrors<'_>) {
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
}

/// `kind` is present and one of the kinds (`kind`: what it parsed to).
fn check_kind(kind_node: Option<&Node>, kind: Option<Kind>, errors: &mut DocumentErrors<'_>) {
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
}

/// The metadata, when present and decodable; a name that is not a DNS label is reported but kept.
fn decode_metadata(root: &Node, errors: &mut DocumentErrors<'_>) -> Option<ObjectMeta> {
    let Some(node) = root.get("metadata") else {
        errors.missing(
            "metadata",
            "missing required field `metadata`: expected a mapping with a `name`".into(),
        );
        return None;
    };
    match yaml::decode::<ObjectMeta>(node, &FieldPath::from("metadata")) {
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
    }
}

/// The spec of `kind`, and the fields taken out of it to decode the rest (none when it had no
/// errors). A spec with errors still gives what decoded without them.
fn decode_spec_field(
    root: &Node,
    kind: Option<Kind>,
    errors: &mut DocumentErrors<'_>,
) -> (Option<Spec>, Vec<FieldPath>) {
    match (root.get("spec"), kind) {
        (None, _) => {
            errors.missing("spec", "missing required field `spec`".into());
            (None, Vec::new())
        }
        (Some(node), Some(kind)) => match decode_spec(kind, node) {
            Ok(spec) => (Some(spec), Vec::new()),
            Err(SpecErrors {
                errors: all,
                rest,
                stand_ins,
            }) => {
                let taken_out = all.iter().filter_map(|e| e.path.clone()).chain(stand_ins).collect();
                for e in all {
                    errors.decode_error(node.mark, e);
                }
                // What decoded without the bad fields still gets its semantic checks (the load
                // fails on the errors above either way).
                errors.fatal = errors.fatal_before_spec;
                (rest.map(|spec| *spec), taken_out)
            }
        },
        (Some(_), None) => (None, Vec::new()),
    }
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
    /// `fatal` before the spec was decoded: a spec decoded without its bad fields still takes
    /// part in the checks when the envelope was fine.
    fatal_before_spec: bool,
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

/// A spec's errors, and what decoded without the fields that had them.
struct SpecErrors {
    errors: Vec<DecodeError>,
    rest: Option<Box<Spec>>,
    /// Required fields given a stand-in value so that `rest` decodes: what the semantic checks
    /// say about them is not the user's (their own error is in `errors`).
    stand_ins: Vec<FieldPath>,
}

/// At most this many errors are reported from one spec.
const MAX_ERRORS_PER_SPEC: usize = 20;

/// Decodes a spec and, when it has errors, all of them (not one per `validate` run): after each
/// error the offending field is taken out (the nearest mapping key on its path) and the spec
/// decoded again. A field then reported missing is one taken out (or one an unknown key was a
/// typo of), not a new error. When what is left decodes, it comes back with the errors, so the
/// semantic checks see the rest of the resource in the same run. A required field taken out (or
/// misspelt) gets a stand-in so that the rest still decodes: the misspelt key's value under the
/// name it was meant to have, else an empty value of a shape the field takes.
fn decode_as<T: DeserializeOwned>(node: &Node, wrap: fn(T) -> Spec) -> Result<Spec, SpecErrors> {
    let base = FieldPath::from("spec");
    let mut errors: Vec<DecodeError> = Vec::new();
    let mut trimmed: Option<Node> = None;
    // Taken out, or suggested by an unknown key (`comand`: did you mean `command`?).
    let mut accounted: Vec<FieldPath> = Vec::new();
    // The value of a misspelt key, by the field it was meant for.
    let mut misspelt: Vec<(FieldPath, Node)> = Vec::new();
    let mut stand_ins: Vec<FieldPath> = Vec::new();
    let mut rest = None;
    while errors.len() < MAX_ERRORS_PER_SPEC {
        let current = trimmed.as_ref().unwrap_or(node);
        let error = match yaml::decode::<T>(current, &base) {
            Ok(value) if errors.is_empty() => return Ok(wrap(value)),
            Ok(value) => {
                rest = Some(Box::new(wrap(value)));
                break;
            }
            Err(error) => error,
        };
        let path = error.path.clone().unwrap_or_default();
        let follow_on = (error.is_missing_field() && accounted.contains(&path))
            // A mapping left empty (`schedule: {every: soon}` without `every`) is about what
            // was taken out of it.
            || accounted.iter().any(|a| a.0.len() > path.0.len() && a.0.starts_with(&path.0));
        if follow_on {
            if error.is_missing_field() && !stand_ins.contains(&path) {
                let typo = misspelt
                    .iter()
                    .find(|(meant, _)| *meant == path)
                    .map(|(_, v)| v.clone());
                if let Some(next) = stand_in::<T>(current, &base, &path, typo) {
                    stand_ins.push(path);
                    trimmed = Some(next);
                    continue;
                }
            }
            break;
        }
        if let Some(meant) = suggested_field(&error.message) {
            let mut sibling = path.clone();
            sibling.0.pop();
            let meant = sibling.key(meant);
            if let Some(value) = current.get_at(&path.0[base.0.len()..]) {
                misspelt.push((meant.clone(), value.clone()));
            }
            accounted.push(meant);
        }
        let key_path = path_to_key(&path);
        errors.push(error);
        let Some(key_path) = key_path.filter(|p| !accounted.contains(p)) else {
            break;
        };
        let mut next = current.clone();
        if !next.remove_at(&key_path.0[base.0.len()..]) {
            break;
        }
        accounted.push(key_path);
        trimmed = Some(next);
    }
    // A misspelt key's value stands in under its meant name: the checks of it are the user's.
    stand_ins.retain(|path| !misspelt.iter().any(|(meant, _)| meant == path));
    Err(SpecErrors {
        errors,
        rest,
        stand_ins,
    })
}

/// `current` with a value at `path` (a required field reported missing) such that decoding no
/// longer fails at that field: `typo` (a misspelt key's value) if it does, else the first empty
/// value of a shape that does. None when nothing does.
fn stand_in<T: DeserializeOwned>(
    current: &Node,
    base: &FieldPath,
    path: &FieldPath,
    typo: Option<Node>,
) -> Option<Node> {
    let at = current.locate(&path.0[base.0.len()..]).mark;
    let node = |value| Node { mark: at, value };
    let text = |text: &str| {
        yaml::Value::Scalar(yaml::Scalar {
            text: text.into(),
            plain: false,
        })
    };
    let shapes = [
        node(text("stand-in")),
        node(yaml::Value::Seq(vec![node(text("stand-in"))])),
        node(yaml::Value::Map(Vec::new())),
    ];
    typo.into_iter().chain(shapes).find_map(|value| {
        let mut next = current.clone();
        if !next.insert_at(&path.0[base.0.len()..], value) {
            return None;
        }
        let fails_there = match yaml::decode::<T>(&next, base) {
            Ok(_) => false,
            Err(e) => e.path.as_ref().is_some_and(|p| p.0.starts_with(&path.0)),
        };
        (!fails_there).then_some(next)
    })
}

/// The field an unknown key's message suggests (`... (did you mean `command`?)`).
fn suggested_field(message: &str) -> Option<&str> {
    let start = message.find("(did you mean `")? + "(did you mean `".len();
    let len = message[start..].find('`')?;
    Some(&message[start..start + len])
}

/// The path up to its last mapping key below `spec` (what can be taken out), if any.
fn path_to_key(path: &FieldPath) -> Option<FieldPath> {
    let last_key = path.0.iter().rposition(|s| matches!(s, yaml::PathSegment::Key(_)))?;
    (last_key >= 1).then(|| FieldPath(path.0[..=last_key].to_vec()))
}

fn decode_spec(kind: Kind, node: &Node) -> Result<Spec, SpecErrors> {
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
