//! Agents' sandboxes: writes outside the sandbox and the agent's declared paths are denied,
//! where the kernel offers Landlock (Linux 5.13 and later, with the LSM enabled).
//!
//! Landlock restricts the process that asks and everything it later executes, so it must be
//! applied in the agent's own process before its program starts. Doing that in a `pre_exec`
//! hook of the multi-threaded daemon would allocate after `fork`, so the supervisor starts a
//! trampoline instead ([`trampoline_args`]):
//!
//! ```text
//! mirrorctl __sandbox-exec [--require] [--write DIR]... [--read DIR]... -- PROGRAM ARGS...
//! ```
//!
//! which, single-threaded, calls [`restrict_writes`] on itself and then `exec`s PROGRAM (same
//! pid, environment, working directory and file descriptors, so the supervisor's identity of
//! the process and its limits stay valid).
//!
//! What the sandbox allows:
//! - **writes** (write, truncate, create, remove, rename/link, make dir/fifo/socket/device
//!   node/symlink, device ioctls: every write-type right the running kernel's Landlock ABI
//!   handles) only beneath the `--write` paths, on a few device files every program expects
//!   ([`DEVICE_FILES`], `/dev/pts`), and on the program's own stdout and stderr when they are
//!   files (so `echo >/dev/stderr` still reaches its log). Nothing else: not `/tmp`, not
//!   `/dev/shm`; an agent that needs a temporary directory gets one inside its sandbox
//!   (`TMPDIR`), or declares the path;
//! - **reads and execution everywhere** (reading is not restricted yet: `--read` paths are
//!   accepted for when it is, and ignored today);
//! - connecting to Unix sockets and the network: not restricted (Landlock ABI 9's
//!   `resolve_unix` is deliberately not handled: name resolution goes through sockets);
//! - files opened before the restriction (the inherited stdout/stderr) keep their rights.
//!
//! `no_new_privs` is set with the restriction: set-uid programs do not gain privileges inside
//! a sandbox.
//!
//! Where the kernel has no Landlock, [`support`] says why and the sandbox is advisory: the
//! trampoline runs the program anyway with one warning, or refuses (exit 126) with
//! `--require`.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

/// The hidden subcommand the supervisor starts agents through.
pub const TRAMPOLINE_COMMAND: &str = "__sandbox-exec";

/// Device files any program may open for writing inside a sandbox (when they exist).
pub const DEVICE_FILES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
    "/dev/ptmx",
];

/// Directories of terminal devices writable inside a sandbox (when they exist).
pub const DEVICE_DIRS: &[&str] = &["/dev/pts"];

/// Whether this kernel enforces sandboxes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Support {
    /// Landlock is available: writes outside the allowed paths are denied. `abi` is the
    /// kernel's Landlock ABI version.
    Enforced { abi: u32 },
    /// No Landlock here: the sandbox is a directory and a convention only.
    Advisory { reason: String },
}

impl Support {
    pub fn is_enforced(&self) -> bool {
        matches!(self, Support::Enforced { .. })
    }
}

impl fmt::Display for Support {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Support::Enforced { abi } => write!(f, "enforced (Landlock ABI {abi})"),
            Support::Advisory { reason } => write!(f, "advisory ({reason})"),
        }
    }
}

#[derive(thiserror::Error, Debug)]
pub enum SandboxError {
    /// `--require` where the kernel cannot enforce.
    #[error("Landlock not available on this kernel ({reason}); refusing to run unsandboxed (--require)")]
    Unsupported { reason: String },
    /// The kernel offers Landlock but building or applying the ruleset failed.
    #[error("sandbox: Landlock restriction failed: {message}")]
    Restrict { message: String },
}

/// The kernel's Landlock support, by asking it (`landlock_create_ruleset` with
/// `LANDLOCK_CREATE_RULESET_VERSION`: one system call, no ruleset made).
pub fn support() -> Support {
    imp::support()
}

/// Restricts the calling process (and what it executes) so that it may write only beneath
/// `write_paths` and the device files every program needs. A path that does not exist is
/// skipped with a warning on stderr (an agent's declared path may not exist yet).
///
/// Returns `Support::Advisory` without restricting anything where the kernel has no Landlock;
/// an error where it has Landlock but the restriction failed. Only the calling thread (and what
/// it executes) is restricted: call it single-threaded, right before `exec`.
pub fn restrict_writes(write_paths: &[PathBuf]) -> Result<Support, SandboxError> {
    imp::restrict_writes(write_paths)
}

/// The command line of the trampoline that runs `argv` sandboxed: `exe` is this program
/// (on Linux `/proc/self/exe`, resolved in the forked child, still names the daemon's own
/// binary after an upgrade replaced the file; elsewhere `std::env::current_exe()`), `writes` the sandbox directory and the agent's declared
/// writable paths, `reads` its declared readable paths (accepted, not enforced yet).
pub fn trampoline_args(
    exe: &Path,
    writes: &[PathBuf],
    reads: &[PathBuf],
    require: bool,
    argv: &[String],
) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::with_capacity(3 + 2 * (writes.len() + reads.len()) + argv.len());
    args.push(exe.as_os_str().to_owned());
    args.push(TRAMPOLINE_COMMAND.into());
    if require {
        args.push("--require".into());
    }
    for path in writes {
        args.push("--write".into());
        args.push(path.as_os_str().to_owned());
    }
    for path in reads {
        args.push("--read".into());
        args.push(path.as_os_str().to_owned());
    }
    args.push("--".into());
    args.extend(argv.iter().map(OsString::from));
    args
}

/// The write-type rights a kernel with Landlock ABI `abi` handles (0: none), as
/// `landlock(7)` names them without the `LANDLOCK_ACCESS_FS_` prefix. What the sandbox denies
/// outside its paths.
pub fn handled_writes(abi: u32) -> Vec<&'static str> {
    let mut rights = Vec::new();
    if abi >= 1 {
        rights.extend([
            "WRITE_FILE",
            "REMOVE_DIR",
            "REMOVE_FILE",
            "MAKE_CHAR",
            "MAKE_DIR",
            "MAKE_REG",
            "MAKE_SOCK",
            "MAKE_FIFO",
            "MAKE_BLOCK",
            "MAKE_SYM",
        ]);
    }
    if abi >= 2 {
        rights.push("REFER");
    }
    if abi >= 3 {
        rights.push("TRUNCATE");
    }
    if abi >= 5 {
        rights.push("IOCTL_DEV");
    }
    rights
}

/// Why there is no Landlock, from the errno of the version probe.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn unsupported_reason(errno: i32) -> String {
    match errno {
        libc::ENOSYS => "ENOSYS: no Landlock system calls, the kernel is older than 5.13 or built without it".into(),
        libc::EOPNOTSUPP => {
            "EOPNOTSUPP: Landlock is built in but not enabled, add landlock to the lsm= boot parameter".into()
        }
        other => format!(
            "landlock_create_ruleset failed: {}",
            std::io::Error::from_raw_os_error(other)
        ),
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use std::os::fd::AsFd;
    use std::path::{Path, PathBuf};

    use landlock::{
        AccessFs, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr,
        RulesetStatus, ABI,
    };

    use super::{unsupported_reason, SandboxError, Support, DEVICE_DIRS, DEVICE_FILES};

    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;

    pub fn support() -> Support {
        // SAFETY: with a null attribute, size 0 and the VERSION flag the call only returns the
        // ABI version (or an error); it reads and writes no memory.
        let version = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                std::ptr::null::<libc::c_void>(),
                0usize,
                LANDLOCK_CREATE_RULESET_VERSION,
            )
        };
        if version > 0 {
            Support::Enforced {
                abi: u32::try_from(version).unwrap_or(u32::MAX),
            }
        } else {
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            Support::Advisory {
                reason: unsupported_reason(errno),
            }
        }
    }

    /// Write-type rights asked for: everything up to IOCTL_DEV (ABI 5..8). RESOLVE_UNIX
    /// (ABI 9) is a connect, not a write, and is left alone. Older kernels get what they
    /// handle (the crate's best effort).
    fn write_rights() -> BitFlags<AccessFs> {
        AccessFs::from_write(ABI::V5)
    }

    /// Rights that make sense on a single file (not a directory).
    fn file_rights() -> BitFlags<AccessFs> {
        AccessFs::WriteFile | AccessFs::Truncate | AccessFs::IoctlDev
    }

    fn failed(error: impl std::fmt::Display) -> SandboxError {
        SandboxError::Restrict {
            message: error.to_string(),
        }
    }

    pub fn restrict_writes(write_paths: &[PathBuf]) -> Result<Support, SandboxError> {
        let support = support();
        if !support.is_enforced() {
            return Ok(support);
        }
        let mut ruleset = Ruleset::default()
            .set_compatibility(CompatLevel::BestEffort)
            .handle_access(write_rights())
            .map_err(failed)?
            .create()
            .map_err(failed)?;

        for path in write_paths {
            match PathFd::new(path) {
                Ok(fd) => {
                    let rights = if is_dir(path) { write_rights() } else { file_rights() };
                    ruleset = ruleset.add_rule(PathBeneath::new(fd, rights)).map_err(failed)?;
                }
                Err(e) => eprintln!(
                    "mirrorctl: sandbox: write path {} skipped: {}",
                    path.display(),
                    std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string())
                ),
            }
        }
        for device in DEVICE_FILES.iter().chain(DEVICE_DIRS) {
            // Missing devices (a minimal container) are simply not allowed.
            if let Ok(fd) = PathFd::new(device) {
                ruleset = ruleset.add_rule(PathBeneath::new(fd, file_rights())).map_err(failed)?;
            }
        }
        // The program's own stdout and stderr, when they are files (its logs): reopening them
        // through /dev/stdout or /proc/self/fd must keep working.
        for stream in [std::io::stdout().as_fd(), std::io::stderr().as_fd()] {
            if is_regular_file(stream) {
                let fd = stream.try_clone_to_owned().map_err(failed)?;
                ruleset = ruleset
                    .add_rule(PathBeneath::new(fd, AccessFs::WriteFile | AccessFs::Truncate))
                    .map_err(failed)?;
            }
        }

        let status = ruleset.restrict_self().map_err(failed)?;
        match status.ruleset {
            RulesetStatus::FullyEnforced | RulesetStatus::PartiallyEnforced => Ok(support),
            // Landlock answered the probe but the crate found nothing it could enforce.
            RulesetStatus::NotEnforced => Err(failed(format!(
                "the kernel reports {support} but the ruleset was not enforced"
            ))),
        }
    }

    fn is_dir(path: &Path) -> bool {
        std::fs::metadata(path).is_ok_and(|m| m.is_dir())
    }

    fn is_regular_file(fd: std::os::fd::BorrowedFd<'_>) -> bool {
        rustix::fs::fstat(fd).is_ok_and(|stat| rustix::fs::FileType::from_raw_mode(stat.st_mode).is_file())
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::path::PathBuf;

    use super::{SandboxError, Support};

    pub fn support() -> Support {
        Support::Advisory {
            reason: "Landlock is Linux-only".into(),
        }
    }

    pub fn restrict_writes(_write_paths: &[PathBuf]) -> Result<Support, SandboxError> {
        Ok(support())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[OsString]) -> Vec<&str> {
        args.iter().map(|a| a.to_str().unwrap()).collect()
    }

    #[test]
    fn trampoline_args_put_the_program_after_the_separator() {
        let args = trampoline_args(
            Path::new("/usr/bin/mirrorctl"),
            &[PathBuf::from("/var/lib/agents/a"), PathBuf::from("/srv/data")],
            &[PathBuf::from("/srv/docs")],
            true,
            &["python3".into(), "--write".into(), "-c".into(), "print(1)".into()],
        );
        assert_eq!(
            strings(&args),
            [
                "/usr/bin/mirrorctl",
                "__sandbox-exec",
                "--require",
                "--write",
                "/var/lib/agents/a",
                "--write",
                "/srv/data",
                "--read",
                "/srv/docs",
                "--",
                "python3",
                "--write",
                "-c",
                "print(1)",
            ]
        );
    }

    #[test]
    fn trampoline_args_without_paths_or_require() {
        let args = trampoline_args(Path::new("mirrorctl"), &[], &[], false, &["/bin/true".into()]);
        assert_eq!(strings(&args), ["mirrorctl", "__sandbox-exec", "--", "/bin/true"]);
    }

    #[test]
    fn handled_writes_grow_with_the_abi() {
        assert!(handled_writes(0).is_empty());
        assert_eq!(handled_writes(1).len(), 10);
        assert!(!handled_writes(1).contains(&"REFER"));
        assert!(handled_writes(2).contains(&"REFER"));
        assert!(!handled_writes(2).contains(&"TRUNCATE"));
        assert!(handled_writes(3).contains(&"TRUNCATE"));
        assert_eq!(handled_writes(4), handled_writes(3));
        assert!(handled_writes(5).contains(&"IOCTL_DEV"));
        // Later ABIs add no write right the sandbox handles (RESOLVE_UNIX is a connect).
        assert_eq!(handled_writes(9), handled_writes(5));
        assert_eq!(handled_writes(7).len(), 13);
    }

    #[test]
    fn support_is_rendered_for_status() {
        assert_eq!(Support::Enforced { abi: 7 }.to_string(), "enforced (Landlock ABI 7)");
        let advisory = Support::Advisory {
            reason: unsupported_reason(libc::ENOSYS),
        };
        assert!(!advisory.is_enforced());
        assert!(advisory
            .to_string()
            .starts_with("advisory (ENOSYS: no Landlock system calls"));
        assert!(unsupported_reason(libc::EOPNOTSUPP).contains("lsm="));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_probe_answers_without_restricting() {
        // Either answer is fine here; the probe must not fail or restrict this process.
        let before = support();
        assert_eq!(support(), before);
        if let Support::Enforced { abi } = before {
            assert!(abi >= 1);
        }
        let scratch = std::env::temp_dir().join(format!("mirrorctl-probe-{}", std::process::id()));
        std::fs::write(&scratch, b"x").unwrap();
        std::fs::remove_file(&scratch).unwrap();
    }
}
