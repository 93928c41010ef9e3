//! The one check of a desired state that looks at the host: an agent's declared
//! `sandbox.readPaths` must exist (or its sandbox would silently grant nothing there), and no
//! declared sandbox path may open the state dir to it. Kept out
//! of validation (which is pure) and run by `source::load` when the caller says where relative
//! paths point (the state dir); errors are placed like every other (FILE:LINE:COL).

use std::path::Path;

use super::files::SourceFile;
use super::yaml::{self, FieldPath};
use super::{decode, DesiredState, Diagnostic};
use crate::spec::Spec;

/// What is wrong with one declared sandbox path on this host, if anything: a read path that
/// does not exist; any path that is the state dir, holds it, or lies inside it (tokens, keys,
/// the truth store; the agent's own sandbox, `dir`, may lie inside but not be or hold it).
fn problem(field: &str, path: &Path, base: &Path) -> Option<String> {
    let full = crate::supervisor::sandbox::hide::normalize(&if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    });
    let state = crate::supervisor::sandbox::hide::normalize(base);
    let shown = path.display();
    if state.starts_with(&full) {
        return Some(format!(
            "expected a path outside the state dir, found `{shown}`, which is or holds {} (tokens, keys, the truth store)",
            state.display()
        ));
    }
    if field != "dir" && full.starts_with(&state) {
        return Some(format!(
            "expected a path outside the state dir, found `{shown}` inside {}",
            state.display()
        ));
    }
    if field == "readPaths" && !full.exists() {
        return Some(format!(
            "expected a path that exists on this host, found `{shown}` ({} does not exist)",
            full.display()
        ));
    }
    None
}

/// Every declared sandbox path of an agent that [`problem`] finds wrong, placed in its file.
pub fn missing_read_paths(state: &DesiredState, files: &[SourceFile], base: &Path) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for resource in &state.resources {
        let Spec::Agent(spec) = &resource.spec else { continue };
        let sandbox = spec.sandbox();
        let declared = sandbox
            .dir
            .iter()
            .map(|p| ("dir", None, p))
            .chain(
                sandbox
                    .read_paths
                    .iter()
                    .enumerate()
                    .map(|(i, p)| ("readPaths", Some(i), p)),
            )
            .chain(
                sandbox
                    .write_paths
                    .iter()
                    .enumerate()
                    .map(|(i, p)| ("writePaths", Some(i), p)),
            );
        for (name, index, path) in declared {
            let Some(message) = problem(name, path, base) else {
                continue;
            };
            let mut field = FieldPath::from("spec").key("sandbox").key(name);
            if let Some(i) = index {
                field = field.index(i);
            }
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
                message,
            ));
        }
    }
    out
}
