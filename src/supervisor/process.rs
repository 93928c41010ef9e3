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

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::process::{Pid, Resource, Rlimit, Signal, WaitOptions};
use serde::{Deserialize, Serialize};

use crate::spec::common::{is_env_name, Limits};

/// Variables a started process inherits from the controller, when the controller has them.
pub const INHERITED_ENV: &[&str] = &["PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR"];

/// `PATH` of a started process when the controller has none.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Mode of log files created by [`spawn`]: services may print secrets.
const LOG_FILE_MODE: u32 = 0o600;
/// Mode of a log directory created by [`spawn`].
const LOG_DIR_MODE: u32 = 0o700;
/// How often [`stop`] looks whether the group has gone.
const POLL: Duration = Duration::from_millis(20);
/// How long [`stop`] waits for the group after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(2);

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

// ---------------------------------------------------------------------------------------------
// Mechanism selection

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
enum Observed {
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

fn observe(id: &ProcessIdentity) -> Observed {
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
fn signallable(id: &ProcessIdentity) -> bool {
    let own_pid = rustix::process::getpid().as_raw_nonzero().get();
    let own_pgrp = raw_pgid(0).unwrap_or(0);
    id.pid > 1 && id.pgid > 1 && id.pid != own_pid && id.pgid != own_pgrp
}

/// The process group of `pid` (0: ourselves) as the kernel reports it. Raw because inside a PID
/// namespace the answer is 0 when the group leader lives outside it (CI containers do this), and
/// rustix's typed `Pid` asserts it is positive.
fn raw_pgid(pid: i32) -> Result<i32, Errno> {
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

fn to_pid(raw: i32) -> Option<Pid> {
    if raw > 0 {
        Pid::from_raw(raw)
    } else {
        None
    }
}

// ---------------------------------------------------------------------------------------------
// Spawn

/// Starts a process as `spec` says and returns its identity at once; the process outlives
/// the controller.
pub fn spawn(spec: &SpawnSpec) -> Result<ProcessIdentity, SpawnError> {
    let (program, args) = spec.command.split_first().ok_or(SpawnError::EmptyCommand)?;
    if program.is_empty() {
        return Err(SpawnError::EmptyCommand);
    }
    if let Some(dir) = spec.working_dir {
        match fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(SpawnError::WorkingDir {
                    path: dir.to_path_buf(),
                    source: io::Error::other("not a directory"),
                })
            }
            Err(source) => {
                return Err(SpawnError::WorkingDir {
                    path: dir.to_path_buf(),
                    source,
                })
            }
        }
    }
    let mut env = environment(spec)?;
    // The caller's explicit choice, else a fresh tag (never one from an env file).
    let tag = spec.env.get(SPAWN_ENV).cloned().unwrap_or_else(unique_spawn_tag);
    env.insert(SPAWN_ENV.to_string(), tag);
    let limits = spec.limits.map(rlimits).unwrap_or_default();
    let log = open_log(spec)?;

    let mut command = Command::new(program);
    command.args(args).env_clear().envs(&env).stdin(Stdio::null());
    let log_err = log.try_clone().map_err(|source| SpawnError::LogFile {
        path: log_path(spec.log_dir, spec.name),
        source,
    })?;
    command.stdout(Stdio::from(log)).stderr(Stdio::from(log_err));
    if let Some(dir) = spec.working_dir {
        command.current_dir(dir);
    }
    let child_limits: Vec<(Resource, u64)> = limits.iter().map(|l| (l.resource, l.value)).collect();
    // Raw descriptors: the closure must be 'static; the files outlive the fork (`spec` holds them).
    let cgroups: Vec<std::os::fd::RawFd> = spec.cgroup_procs.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect();
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // work is allowed. It makes raw system calls through rustix (setsid, write, setrlimit), reads
    // vector built before the fork (by reference, no allocation), and builds errors with
    // `io::Error::from_raw_os_error` (no allocation). It takes no locks.
    unsafe {
        command.pre_exec(move || {
            rustix::process::setsid()?;
            // Join the cgroups first, so everything after (and every descendant) is inside.
            for procs in &cgroups {
                // SAFETY: an open descriptor of `spec.cgroup_procs`, valid until spawn returns.
                let procs = std::os::fd::BorrowedFd::borrow_raw(*procs);
                rustix::io::write(procs, b"0")?;
            }
            for (resource, value) in &child_limits {
                let limit = Rlimit {
                    current: Some(*value),
                    maximum: Some(*value),
                };
                rustix::process::setrlimit(*resource, limit)?;
            }
            Ok(())
        });
    }
    let child = command
        .spawn()
        .map_err(|source| spawn_error(program, &limits, source))?;
    let pid = i32::try_from(child.id()).expect("PIDs fit in i32");
    // Not waited on: the process outlives the controller. `liveness` and `stop` reap it.
    drop(child);
    Ok(identify_child(pid))
}

/// A value for [`SPAWN_ENV`] no other start shares: this controller's PID, the time, a counter.
fn unique_spawn_tag() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let count = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{nanos:x}-{count}", std::process::id())
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
fn identify_child(pid: i32) -> ProcessIdentity {
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

fn spawn_error(program: &str, limits: &[RLimit], source: io::Error) -> SpawnError {
    // setrlimit fails with EPERM when a limit is raised above the hard limit without privilege.
    if source.raw_os_error() == Some(Errno::PERM.raw_os_error()) {
        for limit in limits {
            if let Some(hard) = rustix::process::getrlimit(limit.resource).maximum {
                if limit.value > hard {
                    return SpawnError::Limit {
                        field: limit.field,
                        value: limit.value,
                        hard,
                        source,
                    };
                }
            }
        }
    }
    SpawnError::Command {
        program: program.to_string(),
        source,
    }
}

/// One resource limit to set in the child.
#[derive(Clone, Copy, Debug)]
struct RLimit {
    field: &'static str,
    resource: Resource,
    value: u64,
}

fn rlimits(limits: &Limits) -> Vec<RLimit> {
    let mut out = Vec::new();
    let mut push = |field, resource, value: Option<u64>| {
        if let Some(value) = value {
            out.push(RLimit { field, resource, value });
        }
    };
    push("memory", Resource::As, limits.memory.map(|b| b.0));
    push("openFiles", Resource::Nofile, limits.open_files);
    push("processes", Resource::Nproc, limits.processes);
    // Whole seconds, rounded up: a limit under a second must not become "unlimited" (0 is
    // "no CPU at all" for RLIMIT_CPU, which kills at once; keep at least one second).
    push(
        "cpuTime",
        Resource::Cpu,
        limits.cpu_time.map(|d| {
            let d = d.as_std();
            (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
        }),
    );
    push("fileSize", Resource::Fsize, limits.file_size.map(|b| b.0));
    push("coreSize", Resource::Core, limits.core_size.map(|b| b.0));
    out
}

fn environment(spec: &SpawnSpec) -> Result<BTreeMap<String, String>, SpawnError> {
    let mut env = BTreeMap::new();
    for key in INHERITED_ENV {
        if let Some(value) = std::env::var_os(key).and_then(|v| v.into_string().ok()) {
            env.insert((*key).to_string(), value);
        }
    }
    env.entry("PATH".to_string())
        .or_insert_with(|| DEFAULT_PATH.to_string());
    for path in spec.env_files {
        let text = fs::read_to_string(path).map_err(|source| SpawnError::EnvFileRead {
            path: path.clone(),
            source,
        })?;
        for (key, value) in parse_env_file(&text).map_err(|(line, message)| SpawnError::EnvFile {
            path: path.clone(),
            line,
            message,
        })? {
            env.insert(key, value);
        }
    }
    for (key, value) in spec.env {
        if !is_env_name(key) {
            return Err(SpawnError::Env {
                message: "a variable name is not valid (letters, digits and _, not starting with a digit)".into(),
            });
        }
        if value.contains('\0') {
            return Err(SpawnError::Env {
                message: format!("{key}: the value contains a NUL byte"),
            });
        }
        env.insert(key.clone(), value.clone());
    }
    Ok(env)
}

/// Parses an env file: `KEY=value` lines, `#` comments and blank lines, an optional `export `,
/// values unquoted (trailing ` # comment` removed, surrounding spaces trimmed), in single quotes
/// (literal) or in double quotes (`\\`, `\"`, `\n`, `\t`, `\r`, `\$` escapes). A later line wins.
/// Errors are `(line number, message)`; messages never contain a value.
pub fn parse_env_file(text: &str) -> Result<Vec<(String, String)>, (usize, String)> {
    let mut out = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line_no = index + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = match line.strip_prefix("export") {
            Some(rest) if rest.starts_with(char::is_whitespace) => rest.trim_start(),
            _ => line,
        };
        let Some((key, value)) = line.split_once('=') else {
            return Err((line_no, "expected KEY=value".to_string()));
        };
        let key = key.trim();
        if !is_env_name(key) {
            return Err((
                line_no,
                "invalid variable name (letters, digits and _, not starting with a digit)".to_string(),
            ));
        }
        let value = parse_env_value(value.trim_start()).map_err(|message| (line_no, format!("{key}: {message}")))?;
        if value.contains('\0') {
            return Err((line_no, format!("{key}: the value contains a NUL byte")));
        }
        out.push((key.to_string(), value));
    }
    Ok(out)
}

fn parse_env_value(text: &str) -> Result<String, String> {
    let rest_is_comment = |rest: &str| {
        let rest = rest.trim();
        rest.is_empty() || rest.starts_with('#')
    };
    if let Some(body) = text.strip_prefix('\'') {
        let end = body.find('\'').ok_or("unterminated single quote")?;
        if !rest_is_comment(&body[end + 1..]) {
            return Err("unexpected text after the closing quote".into());
        }
        return Ok(body[..end].to_string());
    }
    if let Some(body) = text.strip_prefix('"') {
        let mut value = String::new();
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    if !rest_is_comment(&body[i + 1..]) {
                        return Err("unexpected text after the closing quote".into());
                    }
                    return Ok(value);
                }
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, 't')) => value.push('\t'),
                    Some((_, 'r')) => value.push('\r'),
                    Some((_, other)) => {
                        if !matches!(other, '\\' | '"' | '$' | '`') {
                            value.push('\\');
                        }
                        value.push(other);
                    }
                    None => break,
                },
                _ => value.push(c),
            }
        }
        return Err("unterminated double quote (values span one line)".into());
    }
    // Unquoted: a `#` after whitespace starts a comment.
    let mut end = text.len();
    let mut previous_space = true;
    for (i, c) in text.char_indices() {
        if c == '#' && previous_space {
            end = i;
            break;
        }
        previous_space = c.is_whitespace();
    }
    Ok(text[..end].trim_end().to_string())
}

// ---------------------------------------------------------------------------------------------
// Logs

fn log_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.log"))
}

fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

fn open_log(spec: &SpawnSpec) -> Result<File, SpawnError> {
    let path = log_path(spec.log_dir, spec.name);
    let error = |source| SpawnError::LogFile {
        path: path.clone(),
        source,
    };
    if spec.name.is_empty() || spec.name.contains('/') || spec.name.starts_with('.') {
        return Err(error(io::Error::other("a log name must be a plain file name")));
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(LOG_DIR_MODE)
        .create(spec.log_dir)
        .map_err(|source| SpawnError::LogFile {
            path: spec.log_dir.to_path_buf(),
            source,
        })?;
    rotate_log(&path, spec.log_max_size, spec.log_max_files).map_err(error)?;
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(LOG_FILE_MODE)
        .open(&path)
        .map_err(error)
}

/// Rotates `path` when it is at least `max_size` bytes (0: never): `path.N-1` -> `path.N`, ...,
/// `path` -> `path.1`, keeping `max_files` rotated files (older ones, also those left by a
/// larger earlier setting, are removed). Returns whether it rotated. For a log no process is
/// writing to (before a start); see [`rotate_running_log`] for one in use.
pub fn rotate_log(path: &Path, max_size: u64, max_files: u32) -> io::Result<bool> {
    if !needs_rotation(path, max_size)? {
        return Ok(false);
    }
    if max_files == 0 {
        fs::remove_file(path)?;
        remove_from(path, 1)?;
        return Ok(true);
    }
    remove_from(path, max_files)?;
    for n in (1..max_files).rev() {
        match fs::rename(numbered(path, n), numbered(path, n + 1)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    fs::rename(path, numbered(path, 1))?;
    Ok(true)
}

/// Rotates a log a running process appends to (`O_APPEND`): copies it to `path.1` (shifting
/// older files as [`rotate_log`] does) and truncates it in place, so the process keeps
/// writing to the same file. Lines written between the copy and the truncation are lost
/// (logrotate's `copytruncate`). A log far past `max_size` (a process flooding it between
/// checks) keeps only its last `max_size` bytes in `path.1`: the copy never chases the writer,
/// and no rotated file exceeds the bound. Returns whether it rotated.
pub fn rotate_running_log(path: &Path, max_size: u64, max_files: u32) -> io::Result<bool> {
    if !needs_rotation(path, max_size)? {
        return Ok(false);
    }
    if max_files > 0 {
        remove_from(path, max_files)?;
        for n in (1..max_files).rev() {
            match fs::rename(numbered(path, n), numbered(path, n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        let copy = numbered(path, 1);
        let mut source = File::open(path)?;
        let mut target = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(LOG_FILE_MODE)
            .open(&copy)?;
        let len = source.metadata()?.len();
        let keep = len.min(max_size);
        io::Seek::seek(&mut source, io::SeekFrom::Start(len - keep))?;
        io::copy(&mut io::Read::take(&mut source, keep), &mut target)?;
    } else {
        remove_from(path, 1)?;
    }
    OpenOptions::new().write(true).open(path)?.set_len(0)?;
    Ok(true)
}

fn needs_rotation(path: &Path, max_size: u64) -> io::Result<bool> {
    match fs::metadata(path) {
        Ok(meta) => Ok(max_size > 0 && meta.len() >= max_size),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes `path.n`, `path.n+1`, ... until one is missing.
fn remove_from(path: &Path, mut n: u32) -> io::Result<()> {
    loop {
        match fs::remove_file(numbered(path, n)) {
            Ok(()) => n += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Liveness, exit statuses, stop

/// Whether `id` is still the process we started. Reaps it when it is our own zombie child
/// (recording its exit status for [`take_exit`]), unless members of its group remain: then
/// the zombie is kept as the proof that the group is ours until [`stop`] clears it.
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

fn record_exit(id: &ProcessIdentity, exit: Exit) {
    let mut exits = EXITS.lock().unwrap_or_else(|e| e.into_inner());
    if exits.len() >= MAX_EXITS && !exits.contains_key(&id.pid) {
        exits.pop_first();
    }
    exits.insert(id.pid, (id.start_time, exit));
}

/// The exit status of a process we started, once [`liveness`] or [`stop`] has seen it end;
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
fn reap(id: &ProcessIdentity) -> bool {
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

fn signal_name(number: i32) -> Option<&'static str> {
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
/// (`tokio::task::spawn_blocking`). [`spawn`] and [`liveness`] return in milliseconds.
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

// ---------------------------------------------------------------------------------------------
// Linux: /proc

#[cfg(target_os = "linux")]
mod linux {
    use super::*;

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
}

// ---------------------------------------------------------------------------------------------
// Portable: kill(pid, 0), getpgid, ps, sysctl

mod portable {
    use super::*;

    /// `kern.bootsessionuuid` (macOS, one per boot), else `kern.boottime` (seconds part).
    pub(super) fn boot_id() -> Option<String> {
        let sysctl = |name: &str| -> Option<String> {
            let program = ["/usr/sbin/sysctl", "/sbin/sysctl"]
                .into_iter()
                .find(|p| Path::new(p).exists())
                .unwrap_or("sysctl");
            let output = Command::new(program)
                .args(["-n", name])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
                .ok()?;
            let text = String::from_utf8(output.stdout).ok()?;
            let text = text.trim();
            (output.status.success() && !text.is_empty()).then(|| text.to_string())
        };
        if let Some(uuid) = sysctl("kern.bootsessionuuid") {
            return Some(uuid);
        }
        // `{ sec = 1712345678, usec = 123456 } Mon Apr  8 ...`: the seconds only (the
        // microseconds have been seen to move with clock adjustments).
        let boottime = sysctl("kern.boottime")?;
        let sec = boottime.split("sec =").nth(1)?.split(',').next()?.trim();
        sec.parse::<u64>().ok().map(|s| format!("boottime-{s}"))
    }

    /// `ps -o stat=,lstart= -p PID` in the C locale and UTC: the state letter and the start
    /// time in seconds since the epoch. `Ok(None)`: no such process. `Err`: ps could not run.
    pub(super) fn ps(pid: i32) -> io::Result<Option<(u8, u64)>> {
        let program = ["/bin/ps", "/usr/bin/ps"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("ps");
        let output = Command::new(program)
            .args(["-o", "stat=,lstart=", "-p", &pid.to_string()])
            .env_clear()
            .env("LC_ALL", "C")
            .env("TZ", "UTC")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()?;
        let text = String::from_utf8_lossy(&output.stdout);
        let line = text.lines().find(|l| !l.trim().is_empty());
        let Some(line) = line else { return Ok(None) };
        let mut fields = line.split_whitespace();
        let state = fields.next().and_then(|s| s.bytes().next());
        let start = parse_lstart(&fields.collect::<Vec<_>>().join(" "));
        Ok(state.zip(start))
    }

    /// `Tue Nov 24 03:35:06 2026` (UTC) to seconds since the epoch.
    pub(super) fn parse_lstart(text: &str) -> Option<u64> {
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let fields: Vec<&str> = text.split_whitespace().collect();
        let [_, month, day, time, year] = fields[..] else {
            return None;
        };
        let month = MONTHS.iter().position(|m| *m == month)? as i64 + 1;
        let day: i64 = day.parse().ok()?;
        let year: i64 = year.parse().ok()?;
        let mut hms = time.split(':').map(|p| p.parse::<i64>().ok());
        let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
        // Days from the civil date (Howard Hinnant's algorithm).
        let y = if month <= 2 { year - 1 } else { year };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (month + 9) % 12;
        let doy = (153 * mp + 2) / 5 + day - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        u64::try_from(days * 86_400 + h * 3600 + m * 60 + s).ok()
    }

    pub(super) fn observe(id: &ProcessIdentity) -> Observed {
        let Some(target) = to_pid(id.pid) else {
            return Observed::Exited { anchor: false };
        };
        if let Err(Errno::SRCH) = rustix::process::test_kill_process(target) {
            return Observed::Exited { anchor: false };
        }
        match super::raw_pgid(target.as_raw_nonzero().get()) {
            Err(Errno::SRCH) => return Observed::Exited { anchor: false },
            Ok(group) if group != id.pgid => return Observed::Reused,
            _ => {}
        }
        match ps(id.pid) {
            Ok(None) => Observed::Exited { anchor: false },
            Ok(Some((_, start))) if start != id.start_time => Observed::Reused,
            Ok(Some((b'Z', _))) => {
                // `kill(-pgid, 0)` counts zombies, so remaining members cannot be told from the
                // leader's own zombie here: reap it, and leave the group be.
                reap(id);
                Observed::Exited { anchor: false }
            }
            Ok(Some(_)) => Observed::Running { verified: true },
            // ps could not run: alive by kill(pid, 0), but unproven, so never signalled.
            Err(_) => Observed::Running { verified: false },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::common::{ByteSize, Duration as SpecDuration};

    const WAIT: Duration = Duration::from_secs(3);

    fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn argv(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    struct Fixture {
        dir: tempfile::TempDir,
        env: BTreeMap<String, String>,
        env_files: Vec<PathBuf>,
        limits: Option<Limits>,
        max_size: u64,
        max_files: u32,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                dir: tempfile::tempdir().unwrap(),
                env: BTreeMap::new(),
                env_files: Vec::new(),
                limits: None,
                max_size: 1 << 20,
                max_files: 3,
            }
        }
        fn logs(&self) -> PathBuf {
            self.dir.path().join("logs")
        }
        fn log(&self, name: &str) -> String {
            fs::read_to_string(self.logs().join(format!("{name}.log"))).unwrap_or_default()
        }
        fn spawn(&self, name: &str, command: &[&str]) -> Result<ProcessIdentity, SpawnError> {
            let command = argv(command);
            let logs = self.logs();
            spawn(&SpawnSpec {
                name,
                command: &command,
                working_dir: None,
                env: &self.env,
                env_files: &self.env_files,
                limits: self.limits.as_ref(),
                log_dir: &logs,
                log_max_size: self.max_size,
                log_max_files: self.max_files,
                cgroup_procs: &[],
            })
        }
    }

    #[cfg(target_os = "linux")]
    /// Gone: no /proc entry, or a zombie nobody has reaped yet (orphans go to PID 1).
    fn gone(pid: i32) -> bool {
        linux::stat(pid).is_none_or(|s| s.state == b'Z')
    }

    #[cfg(target_os = "linux")]
    fn sleeps_in_group(pgid: i32) -> Vec<i32> {
        linux::group_members(pgid)
            .into_iter()
            .filter(|(pid, stat)| {
                stat.state != b'Z' && fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
            })
            .map(|(pid, _)| pid)
            .collect()
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn mechanism_and_boot_id_on_linux() {
        assert_eq!(mechanism(), "linux-proc");
        let id = boot_id();
        assert_eq!(id.len(), 36, "{id}");
        assert_eq!(id, boot_id());
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn spawn_logs_both_streams_in_its_own_session() {
        let mut fx = Fixture::new();
        fx.env.insert("GREETING".into(), "hello from env".into());
        let id = fx
            .spawn("greeter", &["sh", "-c", "echo $GREETING; echo oops >&2; sleep 30"])
            .unwrap();
        assert_eq!(id.pgid, id.pid);
        assert_eq!(id.boot_id, boot_id());
        let stat = linux::stat(id.pid).unwrap();
        assert_eq!(stat.session, id.pid, "session leader");
        assert_eq!(stat.pgrp, id.pid, "group leader");
        assert_eq!(stat.start_time, id.start_time);
        // Our own session as /proc shows it (getsid may say 0 inside a PID namespace).
        let own = linux::stat(rustix::process::getpid().as_raw_nonzero().get()).unwrap();
        assert_ne!(stat.session, own.session);
        wait_for("both lines in the log", || {
            let log = fx.log("greeter");
            log.contains("hello from env\n") && log.contains("oops\n")
        });
        let meta = fs::metadata(fx.logs().join("greeter.log")).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
            0o600
        );
        // stdin is /dev/null.
        let stdin = fs::read_link(format!("/proc/{}/fd/0", id.pid)).unwrap();
        assert_eq!(stdin, Path::new("/dev/null"));
        assert_eq!(liveness(&id), Liveness::Running);
        assert_eq!(stop(&id, "SIGTERM", Duration::from_secs(2)), StopOutcome::Exited);
        assert_eq!(liveness(&id), Liveness::Exited);
        assert_eq!(take_exit(&id).and_then(|e| e.signal), Some(Signal::TERM.as_raw()));
    }

    #[test]
    fn log_is_appended_across_starts() {
        let fx = Fixture::new();
        for _ in 0..2 {
            let id = fx.spawn("twice", &["sh", "-c", "echo run"]).unwrap();
            wait_for("exit", || liveness(&id) == Liveness::Exited);
            assert_eq!(
                take_exit(&id),
                Some(Exit {
                    code: Some(0),
                    signal: None
                })
            );
        }
        assert_eq!(fx.log("twice"), "run\nrun\n");
    }

    #[test]
    fn environment_is_clean_with_env_files_below_explicit_env() {
        let mut fx = Fixture::new();
        let file = fx.dir.path().join("app.env");
        fs::write(
            &file,
            "# settings\n\nexport FROM_FILE=plain value # comment\nQUOTED=\"a \\\"b\\\" c\"\nSINGLE='x # y'\nBOTH=file\n",
        )
        .unwrap();
        let second = fx.dir.path().join("second.env");
        fs::write(&second, "FROM_FILE=overridden by the later file\n").unwrap();
        fx.env_files = vec![file, second];
        fx.env.insert("BOTH".into(), "explicit".into());
        let script = "echo \"[$FROM_FILE][$QUOTED][$SINGLE][$BOTH][$CARGO_MANIFEST_DIR][${PATH:+path}]\"";
        let id = fx.spawn("envs", &["sh", "-c", script]).unwrap();
        wait_for("exit", || liveness(&id) == Liveness::Exited);
        assert!(
            std::env::var_os("CARGO_MANIFEST_DIR").is_some(),
            "cargo sets it for tests"
        );
        assert_eq!(
            fx.log("envs"),
            "[overridden by the later file][a \"b\" c][x # y][explicit][][path]\n"
        );
    }

    #[test]
    fn env_file_errors_name_file_and_line_never_the_value() {
        let mut fx = Fixture::new();
        let file = fx.dir.path().join("bad.env");
        fs::write(&file, "GOOD=1\n# fine\nthis-line-holds-s3cr3t-and-no-equals\n").unwrap();
        fx.env_files = vec![file.clone()];
        let error = fx.spawn("bad", &["true"]).unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, SpawnError::EnvFile { line: 3, .. }), "{error:?}");
        assert!(message.contains(&format!("{}:3:", file.display())), "{message}");
        assert!(!message.contains("s3cr3t"), "{message}");
        assert!(!format!("{error:?}").contains("s3cr3t"));

        fs::write(&file, "TOKEN=\"s3cr3t\nOTHER=1\n").unwrap();
        let message = fx.spawn("bad", &["true"]).unwrap_err().to_string();
        assert!(message.contains(":1: TOKEN: unterminated double quote"), "{message}");
        assert!(!message.contains("s3cr3t"), "{message}");

        fs::write(&file, "s3cr3t value=1\n").unwrap();
        let message = fx.spawn("bad", &["true"]).unwrap_err().to_string();
        assert!(message.contains(":1: invalid variable name"), "{message}");
        assert!(!message.contains("s3cr3t"), "{message}");

        fx.env_files = vec![fx.dir.path().join("missing.env")];
        let message = fx.spawn("bad", &["true"]).unwrap_err().to_string();
        assert!(message.contains("missing.env: does not exist"), "{message}");
    }

    #[test]
    fn env_file_syntax() {
        let parsed = parse_env_file(
            "A=1\n  export B = two words  \nC=\"line\\nbreak\" # note\nD='$literal \\n'\nE=\nF=a#b\nexport=3\nA=last\n",
        )
        .unwrap();
        let expected = [
            ("A", "1"),
            ("B", "two words"),
            ("C", "line\nbreak"),
            ("D", "$literal \\n"),
            ("E", ""),
            ("F", "a#b"),
            ("export", "3"),
            ("A", "last"),
        ];
        let expected: Vec<(String, String)> = expected.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(parsed, expected);
        assert_eq!(parse_env_file("X='open\n").unwrap_err().0, 1);
        assert_eq!(
            parse_env_file("\n\nX=\"a\" b\n").unwrap_err(),
            (3, "X: unexpected text after the closing quote".into())
        );
        assert_eq!(parse_env_file("1X=a\n").unwrap_err().0, 1);
    }

    #[test]
    fn missing_program_and_working_dir_are_errors() {
        let fx = Fixture::new();
        let error = fx.spawn("nope", &["no-such-program-mirrorctl"]).unwrap_err();
        assert!(matches!(error, SpawnError::Command { .. }), "{error:?}");
        assert_eq!(
            error.to_string(),
            "program `no-such-program-mirrorctl` not found on PATH"
        );
        let error = fx.spawn("nope", &["/nonexistent/bin/prog"]).unwrap_err();
        assert_eq!(error.to_string(), "program `/nonexistent/bin/prog` not found");
        assert!(matches!(fx.spawn("nope", &[]), Err(SpawnError::EmptyCommand)));

        let command = argv(&["true"]);
        let missing = fx.dir.path().join("no-such-dir");
        let logs = fx.logs();
        let error = spawn(&SpawnSpec {
            name: "nope",
            command: &command,
            working_dir: Some(&missing),
            env: &fx.env,
            env_files: &[],
            limits: None,
            log_dir: &logs,
            log_max_size: 0,
            log_max_files: 0,
            cgroup_procs: &[],
        })
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("working directory {}: does not exist", missing.display())
        );
        assert!(!missing.exists(), "never created");
    }

    #[test]
    fn working_dir_is_used() {
        let fx = Fixture::new();
        let work = fx.dir.path().join("work");
        fs::create_dir(&work).unwrap();
        let command = argv(&["sh", "-c", "pwd"]);
        let logs = fx.logs();
        let id = spawn(&SpawnSpec {
            name: "pwd",
            command: &command,
            working_dir: Some(&work),
            env: &fx.env,
            env_files: &[],
            limits: None,
            log_dir: &logs,
            log_max_size: 0,
            log_max_files: 0,
            cgroup_procs: &[],
        })
        .unwrap();
        wait_for("exit", || liveness(&id) == Liveness::Exited);
        assert_eq!(fx.log("pwd").trim(), work.display().to_string());
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn limits_are_applied() {
        let mut fx = Fixture::new();
        fx.limits = Some(Limits {
            cpu: None,
            memory: Some(ByteSize(1 << 30)),
            open_files: Some(64),
            processes: Some(500),
            cpu_time: Some(SpecDuration::from_millis(1500)),
            file_size: Some(ByteSize(1 << 20)),
            core_size: Some(ByteSize(0)),
        });
        let id = fx.spawn("limited", &["sleep", "30"]).unwrap();
        let limits = fs::read_to_string(format!("/proc/{}/limits", id.pid)).unwrap();
        let row = |name: &str| -> Vec<String> {
            let line = limits.lines().find(|l| l.starts_with(name)).unwrap();
            line[name.len()..]
                .split_whitespace()
                .take(2)
                .map(String::from)
                .collect()
        };
        assert_eq!(row("Max open files"), ["64", "64"]);
        assert_eq!(row("Max address space"), ["1073741824", "1073741824"]);
        assert_eq!(row("Max processes"), ["500", "500"]);
        assert_eq!(row("Max cpu time"), ["2", "2"]);
        assert_eq!(row("Max file size"), ["1048576", "1048576"]);
        assert_eq!(row("Max core file size"), ["0", "0"]);
        assert_eq!(stop(&id, "TERM", Duration::from_secs(2)), StopOutcome::Exited);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn stop_terminates_the_whole_group() {
        let fx = Fixture::new();
        let id = fx.spawn("forker", &["sh", "-c", "sleep 30 & sleep 30"]).unwrap();
        wait_for("both sleeps", || sleeps_in_group(id.pgid).len() == 2);
        let sleeps = sleeps_in_group(id.pgid);
        assert_eq!(stop(&id, "SIGTERM", Duration::from_secs(2)), StopOutcome::Exited);
        assert!(gone(id.pid));
        for pid in sleeps {
            assert!(gone(pid), "grandchild {pid} survived");
        }
        assert_eq!(liveness(&id), Liveness::Exited);
        assert_eq!(stop(&id, "SIGTERM", Duration::from_secs(2)), StopOutcome::AlreadyGone);
    }

    /// Live processes whose command line is exactly `args` (NUL-separated in /proc).
    #[cfg(target_os = "linux")]
    fn processes_running(args: &[&str]) -> Vec<i32> {
        let wanted: Vec<u8> = args.iter().flat_map(|a| [a.as_bytes(), b"\0"].concat()).collect();
        fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == wanted))
            .filter(|pid| !gone(*pid))
            .collect()
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn stop_also_ends_descendants_that_left_the_group_but_not_other_starts() {
        let fx = Fixture::new();
        // Two escapees in sessions of their own: one stops on SIGTERM, one ignores it.
        let script = "setsid sleep 3101 & setsid sh -c 'trap \"\" TERM; sleep 3102 & wait' & sleep 3100";
        let id = fx.spawn("escaper", &["sh", "-c", script]).unwrap();
        let bystander = fx.spawn("bystander", &["sleep", "3103"]).unwrap();
        wait_for("the escapees", || {
            [&["sleep", "3101"], &["sleep", "3102"]]
                .iter()
                .all(|args| processes_running(*args).len() == 1)
        });
        let escapees: Vec<i32> = [&["sleep", "3101"], &["sleep", "3102"]]
            .iter()
            .flat_map(|args| processes_running(*args))
            .collect();
        assert!(escapees.iter().all(|pid| linux::stat(*pid).unwrap().pgrp != id.pgid));

        let started = Instant::now();
        let grace = Duration::from_millis(300);
        assert_eq!(stop(&id, "SIGTERM", grace), StopOutcome::Killed);
        assert!(started.elapsed() >= grace, "the stubborn escapee had its grace");
        assert!(gone(id.pid));
        for pid in &escapees {
            assert!(gone(*pid), "escapee {pid} survived the stop");
        }
        assert!(processes_running(&["sh", "-c", "trap \"\" TERM; sleep 3102 & wait"]).is_empty());
        assert_eq!(liveness(&bystander), Liveness::Running, "another start is not touched");
        stop(&bystander, "SIGKILL", Duration::ZERO);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_group_ignoring_the_signal_is_killed_after_the_grace() {
        let fx = Fixture::new();
        let id = fx.spawn("stubborn", &["sh", "-c", "trap '' TERM; sleep 30"]).unwrap();
        wait_for("the sleep", || sleeps_in_group(id.pgid).len() == 1);
        let sleep = sleeps_in_group(id.pgid)[0];
        let started = Instant::now();
        let grace = Duration::from_millis(200);
        assert_eq!(stop(&id, "SIGTERM", grace), StopOutcome::Killed);
        let took = started.elapsed();
        assert!(took >= grace && took < grace + Duration::from_secs(1), "{took:?}");
        assert!(gone(id.pid) && gone(sleep));
        assert_eq!(liveness(&id), Liveness::Exited);
    }

    #[test]
    fn a_reused_pid_is_never_signalled() {
        let fx = Fixture::new();
        let id = fx.spawn("victim", &["sleep", "30"]).unwrap();
        let reused = ProcessIdentity {
            start_time: id.start_time + 1,
            ..id.clone()
        };
        assert_eq!(liveness(&reused), Liveness::Reused);
        assert_eq!(stop(&reused, "SIGKILL", Duration::ZERO), StopOutcome::AlreadyGone);
        let other_group = ProcessIdentity {
            pgid: id.pgid + 1,
            ..id.clone()
        };
        assert_eq!(liveness(&other_group), Liveness::Reused);
        assert_eq!(stop(&other_group, "SIGKILL", Duration::ZERO), StopOutcome::AlreadyGone);
        let rebooted = ProcessIdentity {
            boot_id: "00000000-0000-0000-0000-000000000000".into(),
            ..id.clone()
        };
        assert_eq!(liveness(&rebooted), Liveness::Exited);
        assert_eq!(stop(&rebooted, "SIGKILL", Duration::ZERO), StopOutcome::AlreadyGone);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(liveness(&id), Liveness::Running, "the live process was not touched");
        assert_eq!(stop(&id, "SIGKILL", Duration::ZERO), StopOutcome::Killed);
        assert_eq!(take_exit(&id).and_then(|e| e.signal), Some(Signal::KILL.as_raw()));
    }

    #[test]
    fn identities_of_init_or_the_controller_are_never_signalled() {
        let own = identify(rustix::process::getpid().as_raw_nonzero().get()).unwrap();
        assert!(!signallable(&own));
        assert_eq!(liveness(&own), Liveness::Reused);
        let init = ProcessIdentity {
            pid: 1,
            pgid: 1,
            start_time: 0,
            boot_id: boot_id(),
        };
        assert!(!signallable(&init));
        assert_eq!(liveness(&init), Liveness::Reused);
        for (pid, pgid) in [(0, 0), (-1, -1), (5000, 0), (5000, -1)] {
            let bogus = ProcessIdentity {
                pid,
                pgid,
                ..init.clone()
            };
            assert!(!signallable(&bogus));
            assert_ne!(liveness(&bogus), Liveness::Running);
        }
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn an_ended_process_is_exited_and_reaped() {
        let fx = Fixture::new();
        let id = fx.spawn("short", &["sh", "-c", "exit 3"]).unwrap();
        wait_for("the zombie", || linux::stat(id.pid).is_some_and(|s| s.state == b'Z'));
        assert_eq!(liveness(&id), Liveness::Exited);
        assert!(linux::stat(id.pid).is_none(), "reaped");
        let exit = take_exit(&id).unwrap();
        assert_eq!(
            exit,
            Exit {
                code: Some(3),
                signal: None
            }
        );
        assert_eq!(exit.to_string(), "exit code 3");
        assert_eq!(take_exit(&id), None, "taken once");
        assert_eq!(liveness(&id), Liveness::Exited);
        assert_eq!(stop(&id, "SIGTERM", Duration::from_secs(1)), StopOutcome::AlreadyGone);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn leftovers_of_an_ended_leader_are_stopped() {
        let fx = Fixture::new();
        let id = fx.spawn("leaver", &["sh", "-c", "sleep 30 & exit 0"]).unwrap();
        wait_for("the leader to end", || {
            linux::stat(id.pid).is_some_and(|s| s.state == b'Z')
        });
        wait_for("the sleep", || sleeps_in_group(id.pgid).len() == 1);
        let sleep = sleeps_in_group(id.pgid)[0];
        assert_eq!(liveness(&id), Liveness::Exited);
        assert!(linux::stat(id.pid).is_some(), "the zombie anchors the group");
        assert_eq!(
            take_exit(&id),
            Some(Exit {
                code: Some(0),
                signal: None
            })
        );
        assert_eq!(stop(&id, "SIGTERM", Duration::from_secs(2)), StopOutcome::Exited);
        assert!(gone(sleep));
        assert!(linux::stat(id.pid).is_none(), "reaped");
        assert_eq!(stop(&id, "SIGTERM", Duration::from_secs(2)), StopOutcome::AlreadyGone);
    }

    #[test]
    fn portable_mechanism_checks_start_time() {
        let fx = Fixture::new();
        let id = fx.spawn("portable", &["sleep", "30"]).unwrap();
        let (state, start) = portable::ps(id.pid).unwrap().unwrap();
        assert_ne!(state, b'Z');
        let portable_id = ProcessIdentity {
            start_time: start,
            ..id.clone()
        };
        assert_eq!(portable::observe(&portable_id), Observed::Running { verified: true });
        let reused = ProcessIdentity {
            start_time: start - 5,
            ..id.clone()
        };
        assert_eq!(portable::observe(&reused), Observed::Reused);
        assert_eq!(stop(&id, "SIGTERM", Duration::from_secs(2)), StopOutcome::Exited);
        assert_eq!(portable::observe(&portable_id), Observed::Exited { anchor: false });

        assert_eq!(portable::parse_lstart("Tue Nov 24 03:35:06 2026"), Some(1_795_491_306));
        assert_eq!(portable::parse_lstart("Thu Feb 29 23:59:59 2024"), Some(1_709_251_199));
        assert_eq!(portable::parse_lstart("Thu Jan  1 00:00:00 1970"), Some(0));
        assert_eq!(portable::parse_lstart("soon"), None);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn stat_parsing_survives_odd_command_names() {
        let text = "4242 (a) b) (c) S 1 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 0 0";
        let stat = linux::parse_stat(text).unwrap();
        assert_eq!(
            stat,
            linux::Stat {
                state: b'S',
                pgrp: 4242,
                session: 4242,
                start_time: 987654
            }
        );
        assert_eq!(linux::parse_stat("12 (x) S 1 2"), None);
    }

    #[test]
    fn rotation_keeps_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("svc.log");
        assert!(!rotate_log(&log, 10, 2).unwrap(), "nothing to rotate");
        for (path, text) in [
            (log.clone(), "current log\n"),
            (numbered(&log, 1), "one\n"),
            (numbered(&log, 2), "two\n"),
            (numbered(&log, 3), "three, from a larger setting\n"),
        ] {
            fs::write(path, text).unwrap();
        }
        assert!(!rotate_log(&log, 1000, 2).unwrap(), "below max size");
        assert!(rotate_log(&log, 10, 2).unwrap());
        assert!(!log.exists());
        assert_eq!(fs::read_to_string(numbered(&log, 1)).unwrap(), "current log\n");
        assert_eq!(fs::read_to_string(numbered(&log, 2)).unwrap(), "one\n");
        assert!(!numbered(&log, 3).exists());

        // Through spawn: a full log is rotated before the start.
        let mut fx = Fixture::new();
        fx.max_size = 8;
        fx.max_files = 2;
        for round in 0..4 {
            let id = fx.spawn("svc", &["sh", "-c", &format!("echo round {round}")]).unwrap();
            wait_for("exit", || liveness(&id) == Liveness::Exited);
        }
        let path = fx.logs().join("svc.log");
        assert_eq!(fs::read_to_string(&path).unwrap(), "round 3\n");
        assert_eq!(fs::read_to_string(numbered(&path, 1)).unwrap(), "round 2\n");
        assert_eq!(fs::read_to_string(numbered(&path, 2)).unwrap(), "round 1\n");
        assert!(!numbered(&path, 3).exists());

        // max_files 0: the old log is dropped.
        assert!(rotate_log(&path, 1, 0).unwrap());
        assert!(!path.exists() && !numbered(&path, 1).exists());
    }

    #[test]
    fn a_running_log_is_rotated_in_place() {
        let mut fx = Fixture::new();
        fx.max_size = 0;
        let id = fx.spawn("chatty", &["sh", "-c", "echo first; sleep 30"]).unwrap();
        let path = fx.logs().join("chatty.log");
        wait_for("the first line", || fx.log("chatty") == "first\n");
        assert!(rotate_running_log(&path, 6, 2).unwrap());
        assert_eq!(fs::read_to_string(numbered(&path, 1)).unwrap(), "first\n");
        assert_eq!(fs::metadata(&path).unwrap().len(), 0);
        assert_eq!(liveness(&id), Liveness::Running);
        assert_eq!(stop(&id, "SIGKILL", Duration::ZERO), StopOutcome::Killed);
    }

    #[test]
    fn a_flooded_log_keeps_only_its_last_max_size_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flood.log");
        fs::write(&path, "0123456789".repeat(10)).unwrap();
        assert!(rotate_running_log(&path, 15, 1).unwrap());
        assert_eq!(fs::read_to_string(numbered(&path, 1)).unwrap(), "567890123456789");
        assert_eq!(fs::metadata(&path).unwrap().len(), 0);
    }

    #[test]
    fn spawn_spec_debug_shows_no_values() {
        let mut env = BTreeMap::new();
        env.insert("API_TOKEN".to_string(), "s3cr3t".to_string());
        let command = argv(&["prog", "--flag"]);
        let spec = SpawnSpec {
            name: "x",
            command: &command,
            working_dir: None,
            env: &env,
            env_files: &[],
            limits: None,
            log_dir: Path::new("/tmp"),
            log_max_size: 0,
            log_max_files: 0,
            cgroup_procs: &[],
        };
        let text = format!("{spec:?}");
        assert!(text.contains("API_TOKEN") && !text.contains("s3cr3t"), "{text}");
    }
}
