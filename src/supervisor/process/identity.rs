//! Who a process is and whether it is still there: the mechanism in force, the boot id,
//! identities robust against PID reuse, liveness checks, and the exit statuses of our own
//! children (reaped here, kept until taken).

// Unsafe here: `getpgid` (rustix's `Pid` cannot hold the 0 a PID namespace can return). Each block says why it is sound (SAFETY).
#![allow(unsafe_code)]

use std::collections::BTreeMap;
#[cfg(target_os = "linux")]
use std::fs;
use std::sync::{Mutex, OnceLock};

use rustix::io::Errno;
use rustix::process::{Pid, WaitOptions};

#[cfg(target_os = "linux")]
use super::linux;
use super::{portable, Exit, Liveness, ProcessIdentity};

/// The mechanism in force: `linux-proc` (Linux with `/proc`) or `portable-kill0`.
pub fn mechanism() -> &'static str {
    if use_proc() {
        "linux-proc"
    } else {
        "portable-kill0"
    }
}

fn use_proc() -> bool {
    #[cfg(target_os = "linux")]
    {
        linux::available()
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// This boot's identity: Linux `/proc/sys/kernel/random/boot_id`; macOS
/// `kern.bootsessionuuid`, else `kern.boottime`; `unknown` when none can be read.
pub fn boot_id() -> String {
    static BOOT_ID: OnceLock<String> = OnceLock::new();
    BOOT_ID
        .get_or_init(|| {
            #[cfg(target_os = "linux")]
            if let Some(id) = linux::boot_id() {
                return id;
            }
            portable::boot_id().unwrap_or_else(|| "unknown".to_string())
        })
        .clone()
}

/// What a check of a recorded identity found (finer than [`Liveness`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Observed {
    /// Running; `verified` when its start time was checked (always, on Linux).
    Running {
        verified: bool,
    },
    /// Ended. `anchor`: the leader is still there as a zombie we verified, holding its PID, so
    /// its process group is provably ours and may be signalled.
    Exited {
        anchor: bool,
    },
    /// The host rebooted since the identity was recorded.
    OtherBoot,
    Reused,
}

pub(super) fn observe(id: &ProcessIdentity) -> Observed {
    if id.pid <= 0 {
        return Observed::Exited { anchor: false };
    }
    if id.boot_id != boot_id() {
        return Observed::OtherBoot;
    }
    if !signallable(id) {
        return Observed::Reused;
    }
    #[cfg(target_os = "linux")]
    if linux::available() {
        return linux::observe(id);
    }
    portable::observe(id)
}

/// Whether an identity may ever be signalled: never PID 1, never ourselves or our own group
/// (a kill of group 0 or -1 would reach the controller or every process).
pub(super) fn signallable(id: &ProcessIdentity) -> bool {
    let own_pid = rustix::process::getpid().as_raw_nonzero().get();
    let own_pgrp = raw_pgid(0).unwrap_or(0);
    id.pid > 1 && id.pgid > 1 && id.pid != own_pid && id.pgid != own_pgrp
}

/// The process group of `pid` (0: ourselves) as the kernel reports it. Raw because inside a PID
/// namespace the answer is 0 when the group leader lives outside it (CI containers do this), and
/// rustix's typed `Pid` asserts it is positive.
pub(super) fn raw_pgid(pid: i32) -> Result<i32, Errno> {
    // SAFETY: getpgid only reads kernel state and takes a plain integer.
    let group = unsafe { libc::getpgid(pid) };
    if group < 0 {
        Err(Errno::from_raw_os_error(
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        ))
    } else {
        Ok(group)
    }
}

pub(super) fn to_pid(raw: i32) -> Option<Pid> {
    if raw > 0 {
        Pid::from_raw(raw)
    } else {
        None
    }
}

/// Session leaders whose environment holds `key=value`: how a controller finds a process it
/// started but had not recorded when it was killed (a spawn marker in the environment). Linux
/// only (`/proc`); elsewhere none are found.
pub fn leaders_with_env(key: &str, value: &str) -> Vec<i32> {
    #[cfg(target_os = "linux")]
    {
        let wanted = format!("{key}={value}");
        let Ok(dir) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| linux::stat(*pid).is_some_and(|s| s.pgrp == *pid))
            .filter(|pid| {
                fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|b| *b == 0).any(|e| e == wanted.as_bytes()))
            })
            .collect()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (key, value);
        Vec::new()
    }
}

/// The identity of the process we just started: session leader of its own group. Its start
/// time is readable because we have not reaped it (unless someone reaps every child behind our
/// back; then the process is gone and a start time of 0 makes the identity never match).
pub(super) fn identify_child(pid: i32) -> ProcessIdentity {
    let start_time = {
        #[cfg(target_os = "linux")]
        {
            if linux::available() {
                linux::stat(pid).filter(|s| s.pgrp == pid).map(|s| s.start_time)
            } else {
                portable::ps(pid).ok().flatten().map(|(_, start)| start)
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            portable::ps(pid).ok().flatten().map(|(_, start)| start)
        }
    };
    ProcessIdentity {
        pid,
        pgid: pid,
        start_time: start_time.unwrap_or(0),
        boot_id: boot_id(),
    }
}

/// The identity of an existing process (for adopting a process known only by its PID), or
/// None when there is no such process or its start time cannot be read.
pub fn identify(pid: i32) -> Option<ProcessIdentity> {
    if pid <= 0 {
        return None;
    }
    #[cfg(target_os = "linux")]
    if linux::available() {
        let stat = linux::stat(pid)?;
        return Some(ProcessIdentity {
            pid,
            pgid: stat.pgrp,
            start_time: stat.start_time,
            boot_id: boot_id(),
        });
    }
    let (_, start_time) = portable::ps(pid).ok().flatten()?;
    to_pid(pid)?;
    let pgid = raw_pgid(pid).ok()?;
    Some(ProcessIdentity {
        pid,
        pgid,
        start_time,
        boot_id: boot_id(),
    })
}

/// Whether `id` is still the process we started. Reaps it when it is our own zombie child
/// (recording its exit status for [`take_exit`]), unless members of its group remain: then
/// the zombie is kept as the proof that the group is ours until [`stop`](super::stop()) clears it.
pub fn liveness(id: &ProcessIdentity) -> Liveness {
    match observe(id) {
        Observed::Running { .. } => Liveness::Running,
        Observed::Exited { .. } | Observed::OtherBoot => Liveness::Exited,
        Observed::Reused => Liveness::Reused,
    }
}

/// Exit statuses of our children, by PID, with their start time (so a reused PID does not
/// read another process's status).
static EXITS: Mutex<BTreeMap<i32, (u64, Exit)>> = Mutex::new(BTreeMap::new());
const MAX_EXITS: usize = 4096;

pub(super) fn record_exit(id: &ProcessIdentity, exit: Exit) {
    let mut exits = EXITS.lock().unwrap_or_else(|e| e.into_inner());
    if exits.len() >= MAX_EXITS && !exits.contains_key(&id.pid) {
        exits.pop_first();
    }
    exits.insert(id.pid, (id.start_time, exit));
}

/// The exit status of a process we started, once [`liveness`] or [`stop`](super::stop()) has seen it end;
/// removed when taken. None for processes that are not our children (adopted ones).
pub fn take_exit(id: &ProcessIdentity) -> Option<Exit> {
    let mut exits = EXITS.lock().unwrap_or_else(|e| e.into_inner());
    match exits.get(&id.pid) {
        Some((start, _)) if *start == id.start_time => exits.remove(&id.pid).map(|(_, exit)| exit),
        _ => None,
    }
}

/// The exit status [`take_exit`] would return, left in place (for `status`, which must not take
/// it from the next pass's report).
pub fn peek_exit(id: &ProcessIdentity) -> Option<Exit> {
    let exits = EXITS.lock().unwrap_or_else(|e| e.into_inner());
    match exits.get(&id.pid) {
        Some((start, exit)) if *start == id.start_time => Some(*exit),
        _ => None,
    }
}

/// Reaps `id` if it is our child and has ended; records its exit. Returns true when the PID
/// is no longer ours to wait for (reaped now, or not our child).
pub(super) fn reap(id: &ProcessIdentity) -> bool {
    let Some(pid) = to_pid(id.pid) else { return true };
    match rustix::process::waitpid(Some(pid), WaitOptions::NOHANG) {
        Ok(Some((_, status))) => {
            record_exit(
                id,
                Exit {
                    code: status.exit_status(),
                    signal: status.terminating_signal(),
                },
            );
            true
        }
        Ok(None) => false,
        Err(_) => true, // ECHILD: not our child (adopted), or already reaped.
    }
}
