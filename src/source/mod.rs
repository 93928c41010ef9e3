//! The source: desired-state files from git (or the working tree, for previews), parsed and
//! validated into a `DesiredState`. Reading files is the only I/O; decoding and validation are
//! pure. An unreadable or invalid source is an error, never an empty desired state.

mod decode;
pub mod files;
mod host;
pub mod trust;
mod validate;
pub mod yaml;

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use crate::spec::{ControllerSpec, Kind, Resource, Spec};
pub use files::{ReadSourceError, DEFAULT_MAX_FILE_SIZE};
use yaml::Mark;

/// Where the desired state comes from.
#[derive(Clone, Debug)]
pub struct SourceOptions {
    pub repo: PathBuf,
    /// Directory (or one file) inside the repository.
    pub path: PathBuf,
    /// Branch, tag or commit.
    pub reference: String,
    /// Read the working tree instead of the commit (preview only).
    pub worktree: bool,
    pub max_file_size: u64,
    /// Where relative sandbox paths point (the state dir). With it, `load` also checks that the
    /// agents' declared `sandbox.readPaths` exist on this host (the one check that looks at it).
    pub host_base: Option<PathBuf>,
}

impl SourceOptions {
    pub fn new(repo: impl Into<PathBuf>) -> Self {
        SourceOptions {
            repo: repo.into(),
            path: PathBuf::from("."),
            reference: "HEAD".into(),
            worktree: false,
            max_file_size: DEFAULT_MAX_FILE_SIZE,
            host_base: None,
        }
    }
}

/// One problem in the desired state, printed as `FILE:LINE:COL: Kind/name: field.path: message`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub file: String,
    pub line: u32,
    pub column: u32,
    /// `Kind/name` (`Kind/?` when the name is missing), None when not even the kind is known.
    pub resource: Option<String>,
    /// The field path, None for problems of a whole file or document.
    pub field: Option<String>,
    pub message: String,
}

impl Diagnostic {
    pub fn new(file: &str, mark: Mark, resource: Option<String>, field: Option<String>, message: String) -> Self {
        Diagnostic {
            file: file.to_string(),
            line: mark.line,
            column: mark.column,
            resource,
            field,
            message,
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}: {}",
            OneLine(&self.file),
            self.line,
            self.column,
            OneLine(self.resource.as_deref().unwrap_or("-")),
            OneLine(self.field.as_deref().unwrap_or("-")),
            OneLine(&self.message)
        )
    }
}

/// Text that may quote the user's (a kind, a key, a name: YAML strings can hold line breaks),
/// with control characters escaped (`\n`), so that each diagnostic stays on one line.
struct OneLine<'a>(&'a str);

impl fmt::Display for OneLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                fmt::Write::write_char(f, c)?;
            }
        }
        Ok(())
    }
}

/// Why no desired state could be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Read(#[from] ReadSourceError),
    #[error("the desired state has {} error(s)", diagnostics.len())]
    Invalid {
        commit: Option<String>,
        files: usize,
        diagnostics: Vec<Diagnostic>,
    },
}

impl LoadError {
    /// One line for a status or a report: the count and the first diagnostic, where it is.
    pub fn summary(&self) -> String {
        match self {
            LoadError::Invalid { diagnostics, .. } => summarize(diagnostics).unwrap_or_else(|| self.to_string()),
            other => other.to_string(),
        }
    }
}

/// "3 error(s), first: a.yaml:4:3: ..."; None without diagnostics.
pub fn summarize(diagnostics: &[Diagnostic]) -> Option<String> {
    let first = diagnostics.first()?;
    Some(format!("{} error(s), first: {first}", diagnostics.len()))
}

/// A validated desired state and the commit it came from.
#[derive(Clone, Debug)]
pub struct DesiredState {
    /// The commit read; for a worktree preview, HEAD under the edits (None in a repo without commits).
    pub commit: Option<String>,
    /// True when read from the working tree (a preview: never applied).
    pub worktree: bool,
    /// How many files were read.
    pub files: usize,
    /// Sorted by file, then position.
    pub resources: Vec<Resource>,
}

impl DesiredState {
    pub fn get(&self, kind: Kind, name: &str) -> Option<&Resource> {
        self.resources
            .iter()
            .find(|r| r.kind == kind && r.metadata.name == name)
    }

    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Resource> {
        self.resources.iter().filter(move |r| r.kind == kind)
    }

    /// The Controller settings (defaults when none is declared).
    pub fn controller(&self) -> ControllerSpec {
        self.resources
            .iter()
            .find_map(|r| match &r.spec {
                Spec::Controller(c) => Some(c.clone()),
                _ => None,
            })
            .unwrap_or_default()
    }

    /// Where this state was read, for display.
    pub fn source_label(&self) -> String {
        source_label(self.commit.as_deref(), self.worktree)
    }
}

/// `commit 0e137a8b1c2d`, `the working tree over commit 0e137a8b1c2d`, or `the working tree`.
pub fn source_label(commit: Option<&str>, worktree: bool) -> String {
    match (commit.map(|c| &c[..c.len().min(12)]), worktree) {
        (Some(short), false) => format!("commit {short}"),
        (Some(short), true) => format!("the working tree over commit {short}"),
        (None, _) => "the working tree (no commits yet)".to_string(),
    }
}

/// Reads, parses and validates the desired state. Every problem found is reported at once.
pub fn load(options: &SourceOptions) -> Result<DesiredState, LoadError> {
    let source = files::read(options)?;
    let state = load_files(source, options.worktree, options.max_file_size)?;
    let Some(base) = &options.host_base else {
        return Ok(state);
    };
    let placeless = host::missing_read_paths(&state, &[], base);
    if placeless.is_empty() {
        return Ok(state);
    }
    // Rare: read the files again to place the errors.
    let source = files::read(options)?;
    let diagnostics = host::missing_read_paths(&state, &source.files, base);
    Err(LoadError::Invalid {
        commit: state.commit,
        files: state.files,
        diagnostics,
    })
}

/// Parses and validates files already read (pure: no I/O).
pub fn load_files(source: files::SourceFiles, worktree: bool, max_file_size: u64) -> Result<DesiredState, LoadError> {
    let file_count = source.files.len();
    let decode::Decoded {
        parsed,
        mut diagnostics,
        declared,
    } = decode::decode_files(&source.files, max_file_size);
    let findings = validate::validate(&parsed, &declared);
    diagnostics.extend(place_findings(findings, &source.files));
    if !diagnostics.is_empty() {
        diagnostics.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
        diagnostics.dedup();
        return Err(LoadError::Invalid {
            commit: source.commit,
            files: file_count,
            diagnostics,
        });
    }
    Ok(DesiredState {
        commit: source.commit,
        worktree,
        files: file_count,
        resources: parsed.into_iter().map(|p| p.resource).collect(),
    })
}

/// Gives semantic findings their line and column, re-parsing only the files that have some.
fn place_findings(findings: Vec<validate::Finding>, files: &[files::SourceFile]) -> Vec<Diagnostic> {
    let mut by_file: std::collections::BTreeMap<String, Vec<validate::Finding>> = Default::default();
    for finding in findings {
        by_file.entry(finding.file.clone()).or_default().push(finding);
    }
    let mut placed = Vec::new();
    for (path, findings) in by_file {
        let text = files
            .iter()
            .find(|f| f.path == path)
            .and_then(decode::text_of)
            .unwrap_or("");
        let (documents, _) = yaml::parse_documents(text);
        for finding in findings {
            match documents.get(finding.document) {
                Some(document) => placed.push(finding.place(&document.root)),
                None => placed.push(Diagnostic::new(
                    &path,
                    Mark::new(1, 1),
                    Some(finding.resource),
                    Some(finding.path.to_string()),
                    finding.message,
                )),
            }
        }
    }
    placed
}

/// Parses and validates in-memory files `(path, content)`, as if read from a commit.
pub fn load_texts<'a>(texts: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Result<DesiredState, LoadError> {
    let files = texts
        .into_iter()
        .map(|(path, bytes)| files::SourceFile {
            path: path.to_string(),
            content: files::FileContent::Bytes(bytes.to_vec()),
        })
        .collect();
    load_files(files::SourceFiles { commit: None, files }, false, DEFAULT_MAX_FILE_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diagnostic_quoting_a_line_break_stays_on_one_line() {
        // Found by fuzzing (fuzz/regressions/load/diagnostic-line-break-in-kind*).
        let text = "apiVersion: mirror.os/v1\nkind: \"Service\\ni\"\nmetadata:\n  name: web\n";
        let Err(LoadError::Invalid { diagnostics, .. }) = load_texts([("a.yaml", text.as_bytes())]) else {
            panic!("a kind with a line break is invalid");
        };
        let lines: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("a.yaml:2:7: -: kind: unknown kind `Service\\ni`")),
            "{lines:?}"
        );
        assert!(lines.iter().all(|l| !l.contains('\n')), "{lines:?}");
    }
}
