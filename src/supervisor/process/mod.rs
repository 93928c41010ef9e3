//! Processes: start, identify, watch and stop them, for real.
//!
//! * [`spawn`] starts a command (argv, no shell) in its own session and process group, stdin
//!   from `/dev/null`, stdout and stderr appended to `<log_dir>/<name>.log`, with a clean
//!   environment and the spec's resource limits, and returns its [`ProcessIdentity`] at once.
//!   The child is never waited on by a handle that could kill it: it outlives the controller.
//! * [`liveness`] says whether a recorded identity is still that process (`Running`), has ended
//!   (`Exited`, also after a reboot) or whether its PID now belongs to another process (`Reused`).
//! * [`stop`] signals the whole process group, waits for the grace period, then SIGKILLs the
//!   group. It never signals a PID it cannot prove is the one it started.
//!
//! Mechanisms: on Linux, `/proc/<pid>/stat` gives the state, the process group and the start
//! time in clock ticks since boot, and `/proc/sys/kernel/random/boot_id` names the boot
//! (`linux-proc`). Elsewhere, or without `/proc`, `kill(pid, 0)` says whether the PID exists,
//! `getpgid` gives its group, `ps -o stat=,lstart=` its state and start time (seconds since the
//! epoch, to the second), and `sysctl kern.bootsessionuuid` (macOS) or `kern.boottime` names the
//! boot (`portable-kill0`). The portable path is compiled and tested on Linux too.
//!
//! Environment of a started process, lowest precedence first (like docker compose, where
//! `environment:` wins over `env_file:`):
//! 1. inherited from the controller: only [`INHERITED_ENV`] (`PATH`, `HOME`, locale, user
//!    identity, `TMPDIR`); nothing else of the controller's environment (which may hold the
//!    store URL and its password) leaks into services. `PATH` defaults to [`DEFAULT_PATH`];
//! 2. `env_files`, in order (a later file wins over an earlier one);
//! 3. `env`, the spec's explicit variables.
//!
//! No value of the environment ever appears in an error or a log line: env file errors name
//! the file, the line and (when it is a valid name) the key.
//!
//! The parts: `spawn` builds and starts the child (`env` its environment, `logs` its log file
//! and rotation); `identity` tells who a process is and whether it is still there, and keeps
//! exit statuses; `stop` signals a group with a grace period, then SIGKILL; `linux` (`/proc`)
//! and `portable` (`kill(pid, 0)`, `ps`, `sysctl`) are the two mechanisms.

mod env;
mod identity;
#[cfg(target_os = "linux")]
mod linux;
mod logs;
mod portable;
mod spawn;
mod stop;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::spec::common::Limits;
use stop::signal_name;

pub use env::parse_env_file;
pub use identity::{boot_id, identify, leaders_with_env, liveness, mechanism, peek_exit, take_exit};
pub use logs::{rotate_log, rotate_running_log};
pub use spawn::spawn;
pub use stop::{notify, stop};

/// Variables a started process inherits from the controller, when the controller has them.
pub const INHERITED_ENV: &[&str] = &["PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR"];

/// `PATH` of a started process when the controller has none.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The variable every process started by [`spawn`] carries, with a value unique to that start
/// (a caller may choose it in [`SpawnSpec::env`]: the controller marks a spawn in progress with
/// it). Descendants
/// inherit it, also those that leave the process group with `setsid`, which is how [`stop`]
/// finds them on Linux.
pub const SPAWN_ENV: &str = "MIRROR_SPAWN_ID";

/// Who a running process is, robust against PID reuse.
///
/// `start_time` is in the unit of the mechanism that recorded it: clock ticks since boot
/// (`linux-proc`) or seconds since the epoch (`portable-kill0`). An identity recorded by one
/// mechanism and checked by the other reads as `Reused`: never signalled, never adopted.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProcessIdentity {
    pub pid: i32,
    /// The process group (and session) the process leads; equal to `pid` for processes we start.
    pub pgid: i32,
    pub start_time: u64,
    /// The boot the process was started in (see [`boot_id`]).
    pub boot_id: String,
}

/// What to start. Relative paths (`working_dir`, `env_files`, `log_dir`) are taken as they
/// are, relative to the controller's working directory: the caller resolves them.
pub struct SpawnSpec<'a> {
    /// The Service name, used for log file names.
    pub name: &'a str,
    /// argv, no shell. A program without a `/` is looked up on the child's `PATH`.
    pub command: &'a [String],
    /// Must exist: a missing working directory is an error naming it (never created).
    pub working_dir: Option<&'a Path>,
    /// Explicit variables; they win over `env_files`.
    pub env: &'a BTreeMap<String, String>,
    /// `KEY=value` lines, read at start (`#` comments, blank lines, optional `export `,
    /// optional single or double quotes). Values are never logged.
    pub env_files: &'a [PathBuf],
    pub limits: Option<&'a Limits>,
    /// stdout and stderr are appended to `<log_dir>/<name>.log`; the directory is created
    /// (mode 0700) if missing, the file with mode 0600.
    pub log_dir: &'a Path,
    /// Before starting, a `<name>.log` of at least this size is rotated. 0: never rotate.
    pub log_max_size: u64,
    /// Rotated files kept (`.log.1` newest .. `.log.N` oldest). 0: the old log is removed.
    pub log_max_files: u32,
    /// `cgroup.procs` files the process joins before `exec` (see `supervisor::cgroup`).
    pub cgroup_procs: &'a [fs::File],
}

impl fmt::Debug for SpawnSpec<'_> {
    /// Shows env keys, never values.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpawnSpec")
            .field("name", &self.name)
            .field("command", &self.command.first())
            .field("working_dir", &self.working_dir)
            .field("env_keys", &self.env.keys().collect::<Vec<_>>())
            .field("env_files", &self.env_files)
            .field("limits", &self.limits)
            .field("log_dir", &self.log_dir)
            .field("log_max_size", &self.log_max_size)
            .field("log_max_files", &self.log_max_files)
            .field("cgroups", &self.cgroup_procs.len())
            .finish()
    }
}

/// Whether a recorded process is still there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Liveness {
    /// The process we started is running (or stopped by a signal, which is still running).
    Running,
    /// It has ended (also: the host rebooted since). Its group may have members left; see [`stop`].
    Exited,
    /// The PID exists but is another process (different start time, group or identity): the
    /// one we started is gone. Never signal it.
    Reused,
}

/// What [`stop`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopOutcome {
    /// Nothing to stop: the process and its group were gone, or its PID was reused. Nothing
    /// was signalled.
    AlreadyGone,
    /// The group left within the grace period after the stop signal.
    Exited,
    /// The group was still there after the grace period and was sent SIGKILL (or the stop
    /// signal was SIGKILL). A process in uninterruptible sleep may outlast the short wait
    /// that follows; [`liveness`] tells.
    Killed,
}

/// How a process we started ended: known only for our own children (not for processes
/// adopted from an earlier controller, which their new parent reaps).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    /// The exit code, when it exited.
    pub code: Option<i32>,
    /// The signal number, when a signal ended it.
    pub signal: Option<i32>,
}

impl Exit {
    /// Exit code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exit code {code}"),
            (None, Some(signal)) => match signal_name(signal) {
                Some(name) => write!(f, "killed by {name}"),
                None => write!(f, "killed by signal {signal}"),
            },
            (None, None) => f.write_str("ended"),
        }
    }
}

/// Why a process could not be started. Never carries an environment value.
#[derive(thiserror::Error, Debug)]
pub enum SpawnError {
    #[error("the command is empty: nothing to start")]
    EmptyCommand,
    #[error("working directory {}: {}", .path.display(), describe_io(.source))]
    WorkingDir { path: PathBuf, source: io::Error },
    #[error("env file {}: {}", .path.display(), describe_io(.source))]
    EnvFileRead { path: PathBuf, source: io::Error },
    #[error("env file {}:{line}: {message}", .path.display())]
    EnvFile {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("env: {message}")]
    Env { message: String },
    #[error("log file {}: {}", .path.display(), describe_io(.source))]
    LogFile { path: PathBuf, source: io::Error },
    #[error(
        "limits.{field}: {value} is above the controller's own hard limit ({hard}) and could not be raised: {}",
        describe_io(.source)
    )]
    Limit {
        field: &'static str,
        value: u64,
        hard: u64,
        source: io::Error,
    },
    #[error("{}", describe_command_error(.program, .source))]
    Command { program: String, source: io::Error },
}

fn describe_io(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::NotFound => "does not exist".to_string(),
        io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => error.to_string(),
    }
}

fn describe_command_error(program: &str, error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::NotFound if program.contains('/') && Path::new(program).exists() => {
            format!("cannot start `{program}`: its interpreter (the `#!` line) was not found")
        }
        io::ErrorKind::NotFound if program.contains('/') => format!("program `{program}` not found"),
        io::ErrorKind::NotFound => format!("program `{program}` not found on PATH"),
        io::ErrorKind::PermissionDenied => {
            format!("cannot start `{program}`: permission denied (not executable, or a directory)")
        }
        _ => format!("cannot start `{program}`: {error}"),
    }
}
