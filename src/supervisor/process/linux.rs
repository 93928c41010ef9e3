//! The Linux mechanism (`linux-proc`): `/proc/<pid>/stat` for state, group and start time in
//! clock ticks since boot, `/proc/sys/kernel/random/boot_id` for the boot, `/proc/<pid>/environ`
//! for the spawn tag of descendants that left the group.

use std::fs;
use std::path::Path;
use std::sync::OnceLock;

use super::identity::{reap, record_exit, to_pid, Observed};
use super::{Exit, ProcessIdentity, SPAWN_ENV};

/// Whether `/proc` is mounted (checked once).
pub(super) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| Path::new("/proc/self/stat").is_file())
}

pub(super) fn boot_id() -> Option<String> {
    let id = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let id = id.trim();
    (!id.is_empty()).then(|| id.to_string())
}

/// The fields of `/proc/<pid>/stat` we use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Stat {
    pub state: u8,
    pub pgrp: i32,
    pub session: i32,
    /// Field 22: clock ticks since boot.
    pub start_time: u64,
}

/// Parses `/proc/<pid>/stat`. `comm` (field 2) is in parentheses and may hold spaces and
/// parentheses, so fields are counted after the last `)`: field 3 (state) comes first.
pub(super) fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).copied();
    Some(Stat {
        state: *field(3)?.as_bytes().first()?,
        pgrp: field(5)?.parse().ok()?,
        session: field(6)?.parse().ok()?,
        start_time: field(22)?.parse().ok()?,
    })
}

pub(super) fn stat(pid: i32) -> Option<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

pub(super) fn is_dead(state: u8) -> bool {
    matches!(state, b'Z' | b'X' | b'x')
}

pub(super) fn observe(id: &ProcessIdentity) -> Observed {
    let Some(stat) = stat(id.pid) else {
        return Observed::Exited { anchor: false };
    };
    if stat.start_time != id.start_time || stat.pgrp != id.pgid {
        return Observed::Reused;
    }
    if !is_dead(stat.state) {
        return Observed::Running { verified: true };
    }
    // Our process, ended. Keep its exit status; reap it unless it anchors a group with
    // members left (then `stop` clears the group and reaps it).
    peek_exit(id);
    if group_has_live_member(id.pgid) {
        return Observed::Exited { anchor: true };
    }
    reap(id);
    Observed::Exited { anchor: false }
}

/// Records the exit status of our ended child without reaping it (waitid WNOWAIT).
fn peek_exit(id: &ProcessIdentity) {
    use rustix::process::{waitid, WaitId, WaitIdOptions};
    let Some(pid) = to_pid(id.pid) else { return };
    let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
    if let Ok(Some(status)) = waitid(WaitId::Pid(pid), options) {
        record_exit(
            id,
            Exit {
                code: status.exit_status(),
                signal: status.terminating_signal(),
            },
        );
    }
}

/// The PIDs and stats of the processes of group `pgid` (threads are not listed in /proc).
pub(super) fn group_members(pgid: i32) -> Vec<(i32, Stat)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, stat(pid)?)))
        .filter(|(_, stat)| stat.pgrp == pgid)
        .collect()
}

/// The value of `key` in a process's environment (empty for a zombie; unreadable for
/// another user's process).
fn env_value(pid: i32, key: &str) -> Option<Vec<u8>> {
    let environ = fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = [key.as_bytes(), b"="].concat();
    environ
        .split(|b| *b == 0)
        .find_map(|entry| entry.strip_prefix(prefix.as_slice()).map(<[u8]>::to_vec))
}

/// Live processes outside group `pgid` carrying the [`SPAWN_ENV`] tag of its leader `pid`
/// (or, the leader having ended, of a live member), with their start times.
pub(super) fn escapees(pid: i32, pgid: i32) -> Vec<(i32, u64)> {
    let members = group_members(pgid);
    let tag = std::iter::once(pid)
        .chain(members.iter().filter(|(_, s)| !is_dead(s.state)).map(|(p, _)| *p))
        .find_map(|p| env_value(p, SPAWN_ENV).filter(|v| !v.is_empty()));
    let Some(tag) = tag else {
        return Vec::new();
    };
    let own = std::process::id() as i32;
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| *p > 1 && *p != own)
        .filter_map(|p| Some((p, stat(p)?)))
        .filter(|(_, s)| s.pgrp != pgid && !is_dead(s.state))
        .filter(|(p, _)| env_value(*p, SPAWN_ENV).is_some_and(|v| v == tag))
        .map(|(p, s)| (p, s.start_time))
        .collect()
}

/// Whether group `pgid` has a member that is not a zombie.
pub(super) fn group_has_live_member(pgid: i32) -> bool {
    group_members(pgid).iter().any(|(_, stat)| !is_dead(stat.state))
}
