//! The commit in force, kept in the state dir so that a daemon started on a broken or
//! untrusted HEAD (after a reboot, an upgrade, a crash) keeps healing the host with the commit
//! that was in force before, instead of supervising nothing until someone fixes the repository.
//! Every full pass that applies a commit (the daemon's, a one-shot `reconcile`) records it, so
//! the file never names a commit older than what was last applied. A running daemon keeps its
//! state in force in memory; this file only bridges restarts.
//!
//! Beside it, the source in force (`applied-source.json`: repository, path, ref), written by a
//! daemon when it starts and by every pass that applies a commit: one-shot commands run from
//! any directory default to it (`cli::source`), so `mirrorctl status` in `/tmp` shows the host.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// `<state dir>/in-force-commit`: one line, the full commit id.
const FILE: &str = "in-force-commit";

fn path(state_dir: &Path) -> PathBuf {
    crate::state::Layout::of(state_dir).in_force_commit()
}

/// The commit recorded by the last daemon, if the file holds a commit id (40 or 64 hex digits:
/// SHA-1 or SHA-256 repositories); anything else is ignored, as if there were none.
pub fn recall(state_dir: &Path) -> Option<String> {
    let text = fs::read_to_string(path(state_dir)).ok()?;
    let commit = text.trim();
    let is_id = matches!(commit.len(), 40 | 64) && commit.bytes().all(|b| b.is_ascii_hexdigit());
    is_id.then(|| commit.to_ascii_lowercase())
}

/// Records `commit` as the one in force (write then rename: a crash leaves the old or the new
/// commit, never half a line). Does nothing when it is already the one recorded.
pub fn remember(state_dir: &Path, commit: &str) -> io::Result<()> {
    if recall(state_dir).as_deref() == Some(commit) {
        return Ok(());
    }
    let target = path(state_dir);
    let partial = state_dir.join(format!("{FILE}.partial"));
    fs::write(&partial, format!("{commit}\n"))?;
    fs::rename(&partial, &target)
}

/// Where the desired state in force is read from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AppliedSource {
    /// Absolute (canonical when it was recorded).
    pub repo: PathBuf,
    pub path: PathBuf,
    pub reference: String,
}

/// The source recorded by the last daemon or applying pass; None when there is none, or the
/// file does not hold one (a damaged file counts as none: commands then use the current
/// directory, as before anything was applied).
pub fn recall_source(state_dir: &Path) -> Option<AppliedSource> {
    let text = fs::read(crate::state::Layout::of(state_dir).applied_source()).ok()?;
    let source: AppliedSource = serde_json::from_slice(&text).ok()?;
    source.repo.is_absolute().then_some(source)
}

/// Records the source in force (old or new, never half); nothing when it is the one recorded.
pub fn remember_source(state_dir: &Path, source: &AppliedSource) -> Result<(), crate::store::StoreError> {
    if recall_source(state_dir).as_ref() == Some(source) {
        return Ok(());
    }
    let text = serde_json::to_vec_pretty(source).expect("sources serialize");
    crate::store::journal::write_atomically(&crate::state::Layout::of(state_dir).applied_source(), &text)
}

/// The recorded form of a source: its repository made absolute and canonical.
pub fn applied_source(source: &crate::source::SourceOptions) -> Option<AppliedSource> {
    let repo = source.repo.canonicalize().ok()?;
    Some(AppliedSource {
        repo,
        path: source.path.clone(),
        reference: source.reference.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn remembers_and_recalls_a_commit() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(recall(dir.path()), None);
        remember(dir.path(), COMMIT).unwrap();
        assert_eq!(recall(dir.path()).as_deref(), Some(COMMIT));
        assert!(!dir.path().join("in-force-commit.partial").exists());
        let other = "f".repeat(64);
        remember(dir.path(), &other).unwrap();
        assert_eq!(recall(dir.path()), Some(other));
    }

    #[test]
    fn remembers_a_source_and_ignores_a_damaged_or_relative_one() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(recall_source(dir.path()), None);
        let source = AppliedSource {
            repo: "/home/me/host".into(),
            path: "desired".into(),
            reference: "HEAD".into(),
        };
        remember_source(dir.path(), &source).unwrap();
        assert_eq!(recall_source(dir.path()), Some(source));
        for text in ["", "{", r#"{"repo":"host","path":".","reference":"HEAD"}"#] {
            fs::write(crate::state::Layout::of(dir.path()).applied_source(), text).unwrap();
            assert_eq!(recall_source(dir.path()), None, "{text:?}");
        }
    }

    #[test]
    fn a_damaged_file_counts_as_none() {
        let dir = tempfile::tempdir().unwrap();
        for text in [
            "",
            "main\n",
            "0123456789abcdef\n",
            &format!("{COMMIT}x\n"),
            "../../etc/passwd",
        ] {
            fs::write(dir.path().join(FILE), text).unwrap();
            assert_eq!(recall(dir.path()), None, "{text:?}");
        }
    }
}
