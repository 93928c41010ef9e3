//! Noticing a commit: notify watches the repository's `HEAD`, `packed-refs` and `refs/`; a burst
//! of changes (git writes a lock file, renames it, appends the reflog) becomes one signal after
//! a short quiet period. Where watching fails (no inotify, too many watches) the ref is polled.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Quiet time after the last change before the source counts as changed.
pub const DEBOUNCE: Duration = Duration::from_millis(15);
/// How often the fallback looks at the ref.
pub const POLL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum GitWatchError {
    #[error("{path}: opening the repository to watch it: {message}")]
    Open { path: PathBuf, message: String },
}

/// How the source is watched, for the log and `status`.
pub enum SourceWatch {
    Notify(notify::RecommendedWatcher),
    Poll(tokio::task::JoinHandle<()>),
}

impl SourceWatch {
    pub fn mechanism(&self) -> &'static str {
        match self {
            SourceWatch::Notify(_) => "notify",
            SourceWatch::Poll(_) => "poll",
        }
    }
}

impl Drop for SourceWatch {
    fn drop(&mut self) {
        if let SourceWatch::Poll(task) = self {
            task.abort();
        }
    }
}

/// Sends `()` on `changed` whenever the repository's refs move (debounced). Must run on a
/// tokio runtime.
pub fn watch(repo: &Path, reference: &str, changed: mpsc::UnboundedSender<()>) -> Result<SourceWatch, GitWatchError> {
    let repository = git2::Repository::discover(repo).map_err(|e| GitWatchError::Open {
        path: repo.to_path_buf(),
        message: e.message().to_string(),
    })?;
    let git_dir = repository.path().to_path_buf();
    let common_dir = repository.commondir().to_path_buf();
    match notify_watch(&git_dir, &common_dir, changed.clone()) {
        Ok(watcher) => Ok(SourceWatch::Notify(watcher)),
        Err(e) => {
            tracing::warn!(error = %e, "watching the repository failed; polling its ref every {}s", POLL.as_secs());
            Ok(SourceWatch::Poll(tokio::spawn(poll(
                repo.to_path_buf(),
                reference.to_string(),
                changed,
            ))))
        }
    }
}

/// Whether a changed path can move the ref: HEAD, packed-refs, a ref (not its lock file).
fn moves_refs(path: &Path, git_dir: &Path, common_dir: &Path) -> bool {
    if path.extension().is_some_and(|e| e == "lock") {
        return false;
    }
    path == git_dir.join("HEAD") || path == common_dir.join("packed-refs") || path.starts_with(common_dir.join("refs"))
}

fn notify_watch(
    git_dir: &Path,
    common_dir: &Path,
    changed: mpsc::UnboundedSender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<()>();
    let (git, common) = (git_dir.to_path_buf(), common_dir.to_path_buf());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let relevant = match &event {
            // Reads (our own passes open HEAD and refs) are not changes.
            Ok(event) => {
                !matches!(event.kind, notify::EventKind::Access(_))
                    && event.paths.iter().any(|p| moves_refs(p, &git, &common))
            }
            // A lost event (queue overflow) may have been a ref: look again.
            Err(_) => true,
        };
        if relevant {
            let _ = raw_tx.send(());
        }
    })?;
    watcher.watch(git_dir, RecursiveMode::NonRecursive)?;
    if common_dir != git_dir {
        watcher.watch(common_dir, RecursiveMode::NonRecursive)?;
    }
    watcher.watch(&common_dir.join("refs"), RecursiveMode::Recursive)?;
    tokio::spawn(async move {
        while raw_rx.recv().await.is_some() {
            // Wait for the burst to end.
            loop {
                match tokio::time::timeout(DEBOUNCE, raw_rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            if changed.send(()).is_err() {
                return;
            }
        }
    });
    Ok(watcher)
}

/// The commit `reference` names now, if any.
pub fn resolve(repo: &Path, reference: &str) -> Option<git2::Oid> {
    let repository = git2::Repository::discover(repo).ok()?;
    let object = repository.revparse_single(reference).ok()?;
    object.peel_to_commit().ok().map(|c| c.id())
}

async fn poll(repo: PathBuf, reference: String, changed: mpsc::UnboundedSender<()>) {
    let mut last = resolve(&repo, &reference);
    loop {
        tokio::time::sleep(POLL).await;
        let now = resolve(&repo, &reference);
        if now != last {
            last = now;
            if changed.send(()).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git(dir: &Path, args: &[&str]) {
        let status = std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .output()
            .unwrap();
        assert!(status.status.success(), "{status:?}");
    }

    #[tokio::test]
    async fn a_commit_is_one_signal_and_a_worktree_edit_none() {
        let dir = tempfile::tempdir().unwrap();
        git(dir.path(), &["init", "-q", "-b", "main"]);
        std::fs::write(dir.path().join("a.yaml"), "a: 1\n").unwrap();
        git(dir.path(), &["add", "."]);
        git(dir.path(), &["commit", "-qm", "one"]);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let watch = watch(dir.path(), "HEAD", tx).unwrap();
        assert_eq!(watch.mechanism(), "notify");

        std::fs::write(dir.path().join("a.yaml"), "a: 2\n").unwrap();
        git(dir.path(), &["add", "."]);
        assert!(
            tokio::time::timeout(Duration::from_millis(300), rx.recv())
                .await
                .is_err(),
            "an edit or `git add` is not a commit"
        );
        git(dir.path(), &["commit", "-qm", "two"]);
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(200), rx.recv())
                .await
                .is_err(),
            "one commit, one signal"
        );
    }

    #[tokio::test]
    async fn the_polling_fallback_sees_a_commit() {
        let dir = tempfile::tempdir().unwrap();
        git(dir.path(), &["init", "-q", "-b", "main"]);
        std::fs::write(dir.path().join("a.yaml"), "a: 1\n").unwrap();
        git(dir.path(), &["add", "."]);
        git(dir.path(), &["commit", "-qm", "one"]);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(poll(dir.path().to_path_buf(), "HEAD".into(), tx));
        tokio::time::sleep(Duration::from_millis(100)).await;
        git(dir.path(), &["commit", "-q", "--allow-empty", "-m", "two"]);
        tokio::time::timeout(POLL * 3, rx.recv()).await.unwrap().unwrap();
        task.abort();
    }

    #[test]
    fn lock_files_and_objects_do_not_count() {
        let git_dir = Path::new("/r/.git");
        assert!(moves_refs(Path::new("/r/.git/refs/heads/main"), git_dir, git_dir));
        assert!(moves_refs(Path::new("/r/.git/HEAD"), git_dir, git_dir));
        assert!(moves_refs(Path::new("/r/.git/packed-refs"), git_dir, git_dir));
        assert!(!moves_refs(Path::new("/r/.git/refs/heads/main.lock"), git_dir, git_dir));
        assert!(!moves_refs(Path::new("/r/.git/index"), git_dir, git_dir));
        assert!(!moves_refs(Path::new("/r/.git/objects/ab/cdef"), git_dir, git_dir));
    }
}
