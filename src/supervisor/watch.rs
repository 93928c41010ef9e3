//! Noticing that a process ended, the moment it ends.
//!
//! On Linux a pidfd (`pidfd_open`, Linux 5.3) becomes readable when the process exits, for our
//! own children and for adopted processes alike: the daemon waits on it in tokio's reactor, so an
//! exit is seen without polling (`pidfd` mechanism). The pidfd is opened first and the identity
//! checked afterwards, so a PID recycled in between is never watched as ours. Where pidfds are
//! not available (macOS, old kernels, seccomp filters) the process is polled with
//! [`process::liveness`] every [`POLL`] (`poll` mechanism), as DESIGN.md §9 allows.

// Unsafe here: Registering a pidfd with tokio. Each block says why it is sound (SAFETY).
#![allow(unsafe_code)]

use std::time::Duration;

use super::process::{self, Exit, Liveness, ProcessIdentity};

/// How often the portable fallback looks at a process.
pub const POLL: Duration = Duration::from_millis(50);

/// How an exit was noticed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    Pidfd,
    Poll,
}

impl Mechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Pidfd => "pidfd",
            Mechanism::Poll => "poll",
        }
    }
}

/// What ended: the exit status when the process was our child (None for adopted processes, whose
/// status goes to their new parent), and how the end was noticed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ended {
    pub exit: Option<Exit>,
    pub mechanism: Mechanism,
}

/// Resolves when `id` is no longer running (exited, or its PID was reused). Must be called on a
/// tokio runtime with IO enabled. Cancel-safe: dropping the future stops watching.
pub async fn ended(id: ProcessIdentity) -> Ended {
    #[cfg(target_os = "linux")]
    if let Some(mechanism) = linux::wait(&id).await {
        return Ended {
            exit: settle(&id).await,
            mechanism,
        };
    }
    loop {
        if process::liveness(&id) != Liveness::Running {
            return Ended {
                exit: process::take_exit(&id),
                mechanism: Mechanism::Poll,
            };
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Reaps the ended process (our child's zombie) and takes its exit status. The pidfd turns
/// readable as the process becomes a zombie; reaping happens right after.
async fn settle(id: &ProcessIdentity) -> Option<Exit> {
    for _ in 0..50 {
        if process::liveness(id) != Liveness::Running {
            return process::take_exit(id);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    process::take_exit(id)
}

#[cfg(target_os = "linux")]
mod linux {
    use tokio::io::unix::AsyncFd;

    use super::Mechanism;
    use crate::supervisor::process::{self, Liveness, ProcessIdentity};

    /// Waits on a pidfd; None when no pidfd can be had (the caller polls instead).
    pub(super) async fn wait(id: &ProcessIdentity) -> Option<Mechanism> {
        let pid = rustix::process::Pid::from_raw(id.pid)?;
        let fd = match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
            Ok(fd) => fd,
            // ESRCH: already gone (and reaped); anything else: no pidfds here.
            Err(rustix::io::Errno::SRCH) => return Some(Mechanism::Pidfd),
            Err(_) => return None,
        };
        // The fd pins this PID: if the identity still checks out now, the fd is our process.
        if process::liveness(id) != Liveness::Running {
            return Some(Mechanism::Pidfd);
        }
        // SAFETY: `fd` is an OwnedFd moved into the AsyncFd, which owns it until dropped; nothing
        // else closes or replaces it meanwhile.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.ok()?;
        match fd.readable().await {
            Ok(_guard) => Some(Mechanism::Pidfd),
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Instant;

    use super::*;
    use crate::supervisor::process::{spawn, SpawnSpec};

    fn start(dir: &std::path::Path, script: &str) -> ProcessIdentity {
        let command: Vec<String> = ["sh", "-c", script].iter().map(|s| s.to_string()).collect();
        spawn(&SpawnSpec {
            name: "watched",
            command: &command,
            working_dir: Some(dir),
            env: &BTreeMap::new(),
            env_files: &[],
            limits: None,
            log_dir: dir,
            log_max_size: 0,
            log_max_files: 0,
            cgroup_procs: &[],
        })
        .unwrap()
    }

    #[tokio::test]
    async fn an_exit_is_seen_at_once_with_its_status() {
        let dir = tempfile::tempdir().unwrap();
        let id = start(dir.path(), "sleep 0.2; exit 7");
        let begun = Instant::now();
        let ended = ended(id).await;
        assert_eq!(ended.exit.and_then(|e| e.code), Some(7));
        assert!(begun.elapsed() < Duration::from_secs(2));
        #[cfg(target_os = "linux")]
        assert_eq!(ended.mechanism, Mechanism::Pidfd);
    }

    #[tokio::test]
    async fn a_kill_is_seen_with_its_signal() {
        let dir = tempfile::tempdir().unwrap();
        let id = start(dir.path(), "exec sleep 30");
        let watcher = tokio::spawn(ended(id.clone()));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let killed = Instant::now();
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(id.pid).unwrap(),
            rustix::process::Signal::KILL,
        )
        .unwrap();
        let ended = watcher.await.unwrap();
        // Speed is measured by the daemon benchmark; here: seen, not missed.
        assert!(killed.elapsed() < Duration::from_secs(1), "{:?}", killed.elapsed());
        assert_eq!(ended.exit.and_then(|e| e.signal), Some(9));
    }

    #[tokio::test]
    async fn an_identity_that_no_longer_matches_ends_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut id = start(dir.path(), "exec sleep 30");
        let real = id.clone();
        id.start_time += 1; // the PID now "belongs to someone else"
        let ended = tokio::time::timeout(Duration::from_secs(1), ended(id)).await.unwrap();
        assert_eq!(ended.exit, None);
        process::stop(&real, "SIGKILL", Duration::from_millis(100));
    }
}
