//! Which desired state a command reads when the user names none: commands answer from any
//! directory. In order:
//!
//! 1. What the user named (`--repo`, `--path`, `--ref`, `--worktree`, or `MIRROR_*`).
//! 2. Standing inside the repository in force (the running daemon's, else the one last applied
//!    on this state dir, both in `<state dir>/applied-source.json`): that source, whatever the
//!    subdirectory.
//! 3. For commands about the host (`status`, `reconcile`, `drift`): the source in force; for
//!    commands about a repository (`validate`, `run`, `crds`): the repository the current
//!    directory is in (found upward, like git), with `--path` where the user stands in it.
//! 4. The other of the two; else the current directory (which then reports "not a git
//!    repository").
//!
//! A choice the user may not expect is said on stderr, once, with how to choose otherwise.

use std::path::{Component, Path, PathBuf};

use crate::reconcile::in_force::{recall_source, AppliedSource};

use super::GlobalArgs;

/// What a command is about, which decides what it reads when nothing is named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefer {
    /// The host: what runs here (`status`, `reconcile --dry-run`, `drift report`).
    Host,
    /// The host, changed: `reconcile` (another source named is applied, not previewed).
    Apply,
    /// A repository: the one the user stands in (`validate`, `run`, `crds`).
    Here,
}

/// The repository around the current directory and where in it the user stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Here {
    pub repo: PathBuf,
    /// Relative to the repository's top (`.` at the top).
    pub path: PathBuf,
}

/// Finds the git repository holding `dir` (upward, like `git rev-parse --show-toplevel`).
pub fn discover(dir: &Path) -> Option<Here> {
    let repo = git2::Repository::discover(dir).ok()?;
    let top = repo.workdir()?.canonicalize().ok()?;
    let dir = dir.canonicalize().ok()?;
    let inside = dir.strip_prefix(&top).ok()?;
    Some(Here {
        path: if inside.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            inside.to_path_buf()
        },
        repo: top,
    })
}

/// A path inside a repository as compared (`./desired/` and `desired` are one).
pub fn normalized(path: &Path) -> PathBuf {
    let clean: PathBuf = path.components().filter(|c| *c != Component::CurDir).collect();
    if clean.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        clean
    }
}

/// Whether the options name exactly the source in force.
pub fn is_in_force(global: &GlobalArgs, in_force: &AppliedSource) -> bool {
    let repo = global.repo_dir();
    let repo = repo.canonicalize().unwrap_or(repo);
    !global.worktree
        && repo == in_force.repo
        && normalized(&global.path()) == normalized(&in_force.path)
        && global.reference() == in_force.reference
}

/// Fills in the source the command reads (see the module's order); returns a note for stderr
/// when the choice may surprise.
pub fn resolve(global: &mut GlobalArgs, prefer: Prefer) -> Option<String> {
    let in_force = recall_source(&global.state_dir());
    let named = global.repo.is_some() || global.path.is_some() || global.reference.is_some() || global.worktree;
    if named {
        if global.repo.is_none() {
            // `--path` and `--ref` are inside the repository the user stands in, else the one
            // in force.
            global.repo = std::env::current_dir()
                .ok()
                .as_deref()
                .and_then(discover)
                .map(|h| h.repo)
                .or_else(|| in_force.as_ref().map(|s| s.repo.clone()));
        }
        let named = describe(&global.repo_dir(), &global.path(), global.reference());
        return match &in_force {
            Some(in_force) if prefer != Prefer::Here && !is_in_force(global, in_force) => {
                let in_force = describe(&in_force.repo, &in_force.path, &in_force.reference);
                Some(if prefer == Prefer::Apply {
                    format!("note: the source in force on this host is {in_force}; this pass applies {named} instead")
                } else {
                    format!("note: {named} is not the source in force on this host ({in_force}): this is a preview")
                })
            }
            _ => None,
        };
    }
    let here = std::env::current_dir().ok().as_deref().and_then(discover);
    let use_in_force = match (&here, &in_force) {
        (Some(here), Some(in_force)) if here.repo == in_force.repo => true,
        (Some(_), Some(_)) => prefer != Prefer::Here,
        (None, Some(_)) => true,
        (_, None) => false,
    };
    match (use_in_force, in_force, here) {
        (true, Some(in_force), here) => {
            let note = here.filter(|h| h.repo != in_force.repo).map(|here| {
                format!(
                    "note: showing the host's source in force, {}; this directory is in another repository ({}): --repo {} to use it",
                    describe(&in_force.repo, &in_force.path, &in_force.reference),
                    here.repo.display(),
                    here.repo.display()
                )
            });
            global.repo = Some(in_force.repo);
            global.path = Some(in_force.path);
            global.reference = Some(in_force.reference);
            note
        }
        (_, in_force, Some(here)) => {
            // `run` from another repository applies it, pruning what the one in force started.
            let note = in_force.filter(|_| prefer == Prefer::Here).map(|in_force| {
                format!(
                    "note: using this directory's repository {} (path {}); the source in force on this host is {}",
                    here.repo.display(),
                    here.path.display(),
                    describe(&in_force.repo, &in_force.path, &in_force.reference)
                )
            });
            global.repo = Some(here.repo);
            global.path = Some(here.path);
            note
        }
        (_, _, None) => None,
    }
}

fn describe(repo: &Path, path: &Path, reference: &str) -> String {
    format!("{} (path {}, ref {reference})", repo.display(), path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_compared_without_dots_and_slashes() {
        assert_eq!(normalized(Path::new("./desired/")), PathBuf::from("desired"));
        assert_eq!(normalized(Path::new(".")), PathBuf::from("."));
        assert_eq!(normalized(Path::new("")), PathBuf::from("."));
        assert_eq!(normalized(Path::new("a/./b")), PathBuf::from("a/b"));
    }

    #[test]
    fn the_repository_is_found_upward_with_where_the_user_stands() {
        let dir = tempfile::tempdir().unwrap();
        git2::Repository::init(dir.path()).unwrap();
        std::fs::create_dir_all(dir.path().join("desired/sub")).unwrap();
        let top = dir.path().canonicalize().unwrap();
        let found = discover(&dir.path().join("desired/sub")).unwrap();
        assert_eq!(found.repo, top);
        assert_eq!(found.path, PathBuf::from("desired/sub"));
        assert_eq!(discover(dir.path()).unwrap().path, PathBuf::from("."));
        let outside = tempfile::tempdir().unwrap();
        assert_eq!(discover(outside.path()), None);
    }
}
