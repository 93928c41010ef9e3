//! The one check of a desired state that looks at the host: an agent's declared
//! `sandbox.readPaths` must exist, or its sandbox would silently grant nothing there. Kept out
//! of validation (which is pure) and run by `source::load` when the caller says where relative
//! paths point (the state dir); errors are placed like every other (FILE:LINE:COL).

use std::path::Path;

use super::files::SourceFile;
use super::yaml::{self, FieldPath};
use super::{decode, DesiredState, Diagnostic};
use crate::spec::Spec;

/// Every declared read path of an agent that does not exist, placed in its file.
pub fn missing_read_paths(state: &DesiredState, files: &[SourceFile], base: &Path) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for resource in &state.resources {
        let Spec::Agent(spec) = &resource.spec else { continue };
        for (i, path) in spec.sandbox().read_paths.iter().enumerate() {
            let full = if path.is_absolute() {
                path.clone()
            } else {
                base.join(path)
            };
            if full.exists() {
                continue;
            }
            let field = FieldPath::from("spec").key("sandbox").key("readPaths").index(i);
            let origin = &resource.origin;
            let text = files
                .iter()
                .find(|f| f.path == origin.file)
                .and_then(decode::text_of)
                .unwrap_or("");
            let (documents, _) = yaml::parse_documents(text);
            let mark = documents
                .iter()
                .find(|d| (d.root.mark.line, d.root.mark.column) == (origin.line, origin.column))
                .map_or(yaml::Mark::new(origin.line, origin.column), |d| {
                    d.root.locate(&field.0).mark
                });
            out.push(Diagnostic::new(
                &origin.file,
                mark,
                Some(resource.id().to_string()),
                Some(field.to_string()),
                format!(
                    "expected a path that exists on this host, found `{}` ({} does not exist)",
                    path.display(),
                    full.display()
                ),
            ));
        }
    }
    out
}
