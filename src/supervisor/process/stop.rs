//! Stopping: a signal to the whole process group (and to descendants that left it), a grace
//! period, then SIGKILL; never a signal to a process whose identity does not check out. Also
//! single-process notifications and signal names.

use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::process::Signal;

use super::identity::{observe, reap, signallable, to_pid, Observed};
#[cfg(target_os = "linux")]
use super::linux;
use super::{ProcessIdentity, StopOutcome};

/// How often [`stop`] looks whether the group has gone.
const POLL: Duration = Duration::from_millis(20);
/// How long [`stop`] waits for the group after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(2);

fn signal_from_name(name: &str) -> Option<Signal> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    Some(match bare {
        "TERM" => Signal::TERM,
        "INT" => Signal::INT,
        "QUIT" => Signal::QUIT,
        "HUP" => Signal::HUP,
        "KILL" => Signal::KILL,
        "USR1" => Signal::USR1,
        "USR2" => Signal::USR2,
        _ => return None,
    })
}

pub(super) fn signal_name(number: i32) -> Option<&'static str> {
    [
        (Signal::TERM, "SIGTERM"),
        (Signal::INT, "SIGINT"),
        (Signal::QUIT, "SIGQUIT"),
        (Signal::HUP, "SIGHUP"),
        (Signal::KILL, "SIGKILL"),
        (Signal::USR1, "SIGUSR1"),
        (Signal::USR2, "SIGUSR2"),
        (Signal::SEGV, "SIGSEGV"),
        (Signal::ABORT, "SIGABRT"),
        (Signal::PIPE, "SIGPIPE"),
        (Signal::XCPU, "SIGXCPU"),
        (Signal::XFSZ, "SIGXFSZ"),
    ]
    .iter()
    .find(|(s, _)| s.as_raw() == number)
    .map(|(_, name)| *name)
}

/// Stops the process and its whole group: `signal` (a name such as `SIGTERM` or `TERM`, as
/// `Stop::signal()` returns; an unknown name means SIGTERM) to the group, up to `grace` for
/// every member to leave, then SIGKILL to the group and a short wait.
///
/// Signals nothing when the identity does not check out: a reused PID, a process from an
/// earlier boot, an ended process whose group is empty, or an identity naming PID 1 or the
/// controller's own group. When the process has ended but members of its group remain (a
/// service that forked and exited), those are stopped the same way: the leader's zombie,
/// verified by its start time, proves the group is still ours (POSIX does not reuse a PID
/// while a group of that ID exists). Processes adopted from an earlier controller are reaped by
/// their new parent, so for them that proof, and that cleanup, is not available. With the
/// portable mechanism, a process whose start time cannot be read (`ps` failed to run) reads as
/// `Running` but is not signalled either (AlreadyGone): unproven is never killed.
///
/// Blocks for up to `grace` plus two seconds: from async code, call it on a blocking thread
/// (`tokio::task::spawn_blocking`). [`spawn`](super::spawn()) and [`liveness`](super::liveness) return in
/// milliseconds.
pub fn stop(id: &ProcessIdentity, signal: &str, grace: Duration) -> StopOutcome {
    let signal = signal_from_name(signal).unwrap_or(Signal::TERM);
    match observe(id) {
        Observed::Running { verified: true } => {}
        Observed::Exited { anchor: true } => {
            if !group_alive(id) {
                reap(id);
                return StopOutcome::AlreadyGone;
            }
        }
        _ => return StopOutcome::AlreadyGone,
    }
    if !signallable(id) {
        return StopOutcome::AlreadyGone;
    }
    let Some(group) = to_pid(id.pgid) else {
        return StopOutcome::AlreadyGone;
    };
    let escapees = Escapees::of(id);
    escapees.signal(signal);
    if let Err(Errno::SRCH) = rustix::process::kill_process_group(group, signal) {
        reap(id);
        if escapees.is_empty() {
            return StopOutcome::AlreadyGone;
        }
    }
    if signal == Signal::KILL {
        wait_group_gone(id, &escapees, KILL_WAIT);
        return StopOutcome::Killed;
    }
    if wait_group_gone(id, &escapees, grace) {
        return StopOutcome::Exited;
    }
    let _ = rustix::process::kill_process_group(group, Signal::KILL);
    escapees.signal(Signal::KILL);
    wait_group_gone(id, &escapees, KILL_WAIT);
    StopOutcome::Killed
}

/// Descendants of a started process that left its group (`setsid`, a daemon's double fork):
/// found by the [`SPAWN_ENV`] tag they inherited, read from the leader or a live member of its
/// group, and stopped with the group. Each is kept with its start time, so a PID reused while
/// the stop waits is never signalled. Linux only (elsewhere: none; the group is the promise).
struct Escapees(Vec<(i32, u64)>);

impl Escapees {
    fn of(id: &ProcessIdentity) -> Escapees {
        #[cfg(target_os = "linux")]
        if linux::available() {
            return Escapees(linux::escapees(id.pid, id.pgid));
        }
        let _ = id;
        Escapees(Vec::new())
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn signal(&self, signal: Signal) {
        for pid in self.alive() {
            if let Some(pid) = to_pid(pid) {
                let _ = rustix::process::kill_process(pid, signal);
            }
        }
    }

    /// Those still running as the same process (not ended, not a zombie, PID not reused).
    fn alive(&self) -> Vec<i32> {
        #[cfg(target_os = "linux")]
        {
            self.0
                .iter()
                .filter(|(pid, start)| {
                    linux::stat(*pid).is_some_and(|s| s.start_time == *start && !linux::is_dead(s.state))
                })
                .map(|(pid, _)| *pid)
                .collect()
        }
        #[cfg(not(target_os = "linux"))]
        Vec::new()
    }
}

/// Sends `signal` (a name, e.g. `SIGHUP`) to the process itself, not its group, when its
/// identity checks out (as for [`stop`]): a notification, such as a policy reload. Whether it
/// was sent.
pub fn notify(id: &ProcessIdentity, signal: &str) -> bool {
    let Some(signal) = signal_from_name(signal) else {
        return false;
    };
    if !matches!(observe(id), Observed::Running { verified: true }) || !signallable(id) {
        return false;
    }
    let Some(pid) = to_pid(id.pid) else {
        return false;
    };
    rustix::process::kill_process(pid, signal).is_ok()
}

/// Waits until no live member of the group remains and no escapee runs, reaping our own leader
/// on the way.
fn wait_group_gone(id: &ProcessIdentity, escapees: &Escapees, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut leader_pending = true;
    loop {
        if leader_pending {
            leader_pending = !reap(id);
        }
        if !group_alive(id) && escapees.alive().is_empty() {
            if leader_pending {
                reap(id);
            }
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(POLL.min(deadline - now));
    }
}

/// Whether a live (not zombie) process remains in the identity's group. The portable check
/// counts zombies too (`kill(-pgid, 0)` cannot tell them apart).
fn group_alive(id: &ProcessIdentity) -> bool {
    let Some(group) = to_pid(id.pgid) else { return false };
    // EPERM: the group exists but is not ours to signal; count it as alive.
    if let Err(Errno::SRCH) = rustix::process::test_kill_process_group(group) {
        return false;
    }
    #[cfg(target_os = "linux")]
    if linux::available() {
        return linux::group_has_live_member(id.pgid);
    }
    true
}
