//! Building and starting the child: argv without a shell, its own session and process group,
//! stdin from `/dev/null`, output to its log, a clean environment, cgroups joined and resource
//! limits set before `exec`.

// Unsafe here: `pre_exec` runs between fork and exec. Each block says why it is sound (SAFETY).
#![allow(unsafe_code)]

use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use rustix::io::Errno;
use rustix::process::{Resource, Rlimit};

use super::env::environment;
use super::identity::identify_child;
use super::logs::{log_path, open_log};
use super::{ProcessIdentity, SpawnError, SpawnSpec, SPAWN_ENV};
use crate::spec::common::Limits;

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
