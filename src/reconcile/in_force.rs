//! The commit in force, kept in the state dir so that a daemon started on a broken or
//! untrusted HEAD (after a reboot, an upgrade, a crash) keeps healing the host with the commit
//! that was in force before, instead of supervising nothing until someone fixes the repository.
//! Every full pass that applies a commit (the daemon's, a one-shot `reconcile`) records it, so
//! the file never names a commit older than what was last applied. A running daemon keeps its
//! state in force in memory; this file only bridges restarts.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// `<state dir>/in-force-commit`: one line, the full commit id.
const FILE: &str = "in-force-commit";

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
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
