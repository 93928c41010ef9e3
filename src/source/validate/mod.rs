//! Semantic checks over the decoded resources: names, values, references, cycles, and the
//! rules that span resources (one Controller, local-first policies). Pure: no I/O.
//!
//! The parts: `kinds` (the checks of each kind's spec, and the one-per-host rules), `fields`
//! (checks of fields several kinds share), `references` (names that must exist, duplicates,
//! dependency cycles) and `memory` (memory tiers, rules and rules that undo each other).

mod fields;
mod kinds;
mod memory;
mod references;

use std::collections::HashMap;

use super::decode::{Declared, Parsed};
use super::yaml::{FieldPath, Node, PathSegment};
use super::Diagnostic;
use crate::spec::ResourceId;

use kinds::{check_spec, Singletons};
use memory::{check_memory_bounces, tiers};
use references::{check_cycles, check_dependencies, declared_duplicates, first_declarations};

/// A semantic error, not yet placed: the document and field path it concerns. Validation needs
/// no YAML tree; `place` finds the position afterwards.
pub struct Finding {
    pub file: String,
    pub document: usize,
    pub resource: String,
    pub path: FieldPath,
    /// About a mapping key itself: point at the key, not its value.
    pub at_key: bool,
    pub message: String,
}

impl Finding {
    /// Places the finding in its document: at the node of the path or, for an absent key, at
    /// the nearest ancestor that exists (where it should be added).
    pub fn place(self, root: &Node) -> Diagnostic {
        let mut target = self.path.0.clone();
        let key = match (self.at_key, target.last()) {
            (true, Some(PathSegment::Key(key))) => {
                let key = key.clone();
                target.pop();
                Some(key)
            }
            _ => None,
        };
        let node = root.locate(&target);
        let mark = key.and_then(|k| node.get_key(&k)).map_or(node.mark, |k| k.mark);
        Diagnostic::new(
            &self.file,
            mark,
            Some(self.resource),
            Some(self.path.to_string()),
            self.message,
        )
    }
}

/// Collects the findings of one resource.
struct Report<'a> {
    parsed: &'a Parsed,
    out: &'a mut Vec<Finding>,
}

impl Report<'_> {
    pub(super) fn error(&mut self, path: FieldPath, message: impl Into<String>) {
        self.push(path, false, message.into());
    }

    /// An error about a mapping key itself (not its value).
    pub(super) fn key_error(&mut self, path: FieldPath, message: impl Into<String>) {
        self.push(path, true, message.into());
    }

    fn push(&mut self, path: FieldPath, at_key: bool, message: String) {
        self.out.push(Finding {
            file: self.parsed.file().to_string(),
            document: self.parsed.document,
            resource: self.parsed.resource.id().to_string(),
            path,
            at_key,
            message,
        });
    }
}

/// `spec.FIELD`.
fn spec(field: &str) -> FieldPath {
    FieldPath::from("spec").key(field)
}

/// Every check, in the order the findings are reported.
pub fn validate(parsed: &[Parsed], declared: &[Declared]) -> Vec<Finding> {
    let mut out = Vec::new();
    let index: HashMap<ResourceId, &Parsed> = first_declarations(parsed, &mut out);
    declared_duplicates(&index, declared, &mut out);
    let controller_tiers = tiers(parsed);
    let mut singletons = Singletons::default();
    for p in parsed {
        let mut report = Report {
            parsed: p,
            out: &mut out,
        };
        check_spec(&mut report, p, &index, &controller_tiers, &mut singletons);
        check_dependencies(&mut report, &p.resource, &index);
    }
    check_cycles(parsed, &index, &mut out);
    drop_shadowed_findings(parsed, declared, &mut out);
    check_memory_bounces(parsed, &controller_tiers, &mut out);
    out
}

/// Drops findings that other errors already explain.
fn drop_shadowed_findings(parsed: &[Parsed], declared: &[Declared], out: &mut Vec<Finding>) {
    // A reference to a document that has errors of its own is not reported again as dangling.
    let unreported: Vec<String> = declared
        .iter()
        .map(|d| format!("{} does not exist in the desired state", d.id))
        .collect();
    out.retain(|f| !unreported.iter().any(|u| f.message.starts_with(u.as_str())));
    // Nor a finding about a field taken out of a spec with errors (reported as decoded).
    out.retain(|f| {
        !parsed.iter().any(|p| {
            p.document == f.document && p.file() == f.file && p.taken_out.iter().any(|t| f.path.0.starts_with(&t.0))
        })
    });
}
