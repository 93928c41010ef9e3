//! Agents' sandboxes, enforced by the kernel where it offers Landlock (Linux 5.13 and later,
//! with the LSM enabled): what an agent may write, read, connect to and signal.
//!
//! Landlock restricts the process that asks and everything it later executes, so it must be
//! applied in the agent's own process before its program starts. Doing that in a `pre_exec`
//! hook of the multi-threaded daemon would allocate after `fork`, so the supervisor starts a
//! trampoline instead ([`Profile::trampoline_args`]):
//!
//! ```text
//! mirrorctl __sandbox-exec [--require] [--write P]... [--read P]... [--hide P]...
//!                          [--net [--connect PORT]... [--bind PORT]...] [--scope] -- PROGRAM ARGS...
//! ```
//!
//! which, single-threaded, calls [`restrict`] on itself and then `exec`s PROGRAM (same pid,
//! environment, working directory and file descriptors, so the supervisor's identity of the
//! process and its limits stay valid).
//!
//! What a profile allows:
//! - **writes** (every write-type right the running kernel's Landlock ABI handles) only
//!   beneath the `--write` paths, on a few device files every program expects
//!   ([`DEVICE_FILES`]; not `/dev/pts`: a person's terminal is there), and on the program's own
//!   stdout and stderr when they are
//!   files (so `echo >/dev/stderr` still reaches its log). Not `/tmp`, not `/dev/shm`: an agent
//!   gets a temporary directory inside its sandbox (`TMPDIR`), or declares the path;
//! - **reads and execution** everywhere but the `--hide` paths (the state dir, other agents'
//!   sandboxes, the user's credential stores: see [`hide`]), plus the `--write` and `--read`
//!   paths even where they lie inside a hidden one; with no `--hide`, reads are not restricted;
//! - **TCP** (ABI 4), with `--net`: connect only to the `--connect` ports (the bus's, and what
//!   the policy declares), bind only the `--bind` ports. UDP and pathname Unix sockets are not
//!   Landlock's to filter (name resolution keeps working);
//! - **signals and abstract Unix sockets** (ABI 6), with `--scope`: only to processes of the
//!   agent's own sandbox (its own tree), and only abstract sockets made inside it;
//! - `ptrace` (and so `/proc/PID/environ`, `mem`, `fd/` of other processes): Landlock always
//!   forbids it towards processes outside the sandbox;
//! - files opened before the restriction (the inherited stdout/stderr) keep their rights.
//!
//! `no_new_privs` is set with the restriction: set-uid programs do not gain privileges inside
//! a sandbox.
//!
//! Where the kernel has no Landlock (or an older ABI), [`protections`] says what is advisory and
//! why; the trampoline runs the program anyway with one warning, or refuses (exit 126) with
//! `--require`.

pub mod hide;
pub mod seatbelt;

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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

/// What an agent's sandbox allows (see the module docs). Serialized into the agent's rendered
/// spec: a change (a new port, a new hidden path) restarts the agent, since a sandbox cannot
/// be widened or narrowed in a running process.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// Writable (and readable) beneath.
    pub writes: Vec<PathBuf>,
    /// Readable beneath, even inside a hidden path.
    pub reads: Vec<PathBuf>,
    /// Not readable; empty: reads are not restricted.
    pub hide: Vec<PathBuf>,
    /// Whether TCP is restricted to `connect` and `bind`.
    pub network: bool,
    pub connect: Vec<u16>,
    pub bind: Vec<u16>,
    /// Signals and abstract Unix sockets scoped to the sandbox.
    pub scope: bool,
}

impl Profile {
    /// The command line of the trampoline that runs `argv` in this sandbox: `exe` is this
    /// program (on Linux `/proc/self/exe`, resolved in the forked child, still names the
    /// daemon's own binary after an upgrade replaced the file; elsewhere
    /// `std::env::current_exe()`).
    pub fn trampoline_args(&self, exe: &Path, require: bool, argv: &[String]) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![exe.as_os_str().to_owned(), TRAMPOLINE_COMMAND.into()];
        if require {
            args.push("--require".into());
        }
        let mut paths = |flag: &str, list: &[PathBuf]| {
            for path in list {
                args.push(flag.into());
                args.push(path.as_os_str().to_owned());
            }
        };
        paths("--write", &self.writes);
        paths("--read", &self.reads);
        paths("--hide", &self.hide);
        if self.network {
            args.push("--net".into());
            for (flag, ports) in [("--connect", &self.connect), ("--bind", &self.bind)] {
                for port in ports {
                    args.push(flag.into());
                    args.push(port.to_string().into());
                }
            }
        }
        if self.scope {
            args.push("--scope".into());
        }
        args.push("--".into());
        args.extend(argv.iter().map(OsString::from));
        args
    }
}

/// Restricts the calling process (and what it executes) to `profile`. A write or read path
/// that does not exist is skipped with a warning on stderr (an agent's declared path may not
/// exist yet).
///
/// Returns `Support::Advisory` without restricting anything where the kernel has no Landlock;
/// an error where it has Landlock but the restriction failed. Only the calling thread (and what
/// it executes) is restricted: call it single-threaded, right before `exec`.
pub fn restrict(profile: &Profile) -> Result<Support, SandboxError> {
    imp::restrict(profile)
}

/// One protection of an agent and whether this kernel enforces it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Protection {
    /// `writes`, `reads`, `tcp`, `signals`, `abstract-sockets`, `ptrace`.
    pub name: String,
    /// `enforced` or `advisory`.
    pub state: String,
    /// The mechanism in force, or why it is advisory.
    pub how: String,
}

/// What the kernel behind `support` enforces of an agent's sandbox, protection by protection.
pub fn protections(support: &Support) -> Vec<Protection> {
    let abi = match support {
        Support::Enforced { abi } => *abi,
        Support::Advisory { .. } => 0,
    };
    let item = |name: &str, needs: u32, what: &str| {
        if abi >= needs {
            Protection {
                name: name.into(),
                state: "enforced".into(),
                how: format!("Landlock ABI {abi}: {what}"),
            }
        } else {
            let why = match support {
                Support::Advisory { reason } => reason.clone(),
                Support::Enforced { abi } => format!("needs Landlock ABI {needs}, this kernel has {abi}"),
            };
            Protection {
                name: name.into(),
                state: "advisory".into(),
                how: why,
            }
        }
    };
    vec![
        item("writes", 1, "only its sandbox and declared paths"),
        item("reads", 1, "not the state dir, other sandboxes, credential stores"),
        item("ptrace", 1, "no other process's memory, environment or descriptors"),
        item("tcp", 4, "connect to the bus and declared ports, bind declared ports"),
        item("signals", 6, "only its own processes"),
        item("abstract-sockets", 6, "only its own"),
    ]
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
#[path = "linux.rs"]
mod imp;

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::{Profile, SandboxError, Support};

    pub fn support() -> Support {
        Support::Advisory {
            reason: "Landlock is Linux-only".into(),
        }
    }

    pub fn restrict(_profile: &Profile) -> Result<Support, SandboxError> {
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
        let profile = Profile {
            writes: vec![PathBuf::from("/var/lib/agents/a"), PathBuf::from("/srv/data")],
            reads: vec![PathBuf::from("/srv/docs")],
            hide: vec![PathBuf::from("/var/lib/mirror")],
            network: true,
            connect: vec![11500, 443],
            bind: vec![8600],
            scope: true,
        };
        let args = profile.trampoline_args(
            Path::new("/usr/bin/mirrorctl"),
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
                "--hide",
                "/var/lib/mirror",
                "--net",
                "--connect",
                "11500",
                "--connect",
                "443",
                "--bind",
                "8600",
                "--scope",
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
        let args = Profile::default().trampoline_args(Path::new("mirrorctl"), false, &["/bin/true".into()]);
        assert_eq!(strings(&args), ["mirrorctl", "__sandbox-exec", "--", "/bin/true"]);
    }

    #[test]
    fn protections_follow_the_abi() {
        let state = |abi| -> Vec<(String, String)> {
            protections(&Support::Enforced { abi })
                .into_iter()
                .map(|p| (p.name, p.state))
                .collect()
        };
        let enforced = |list: &[(String, String)], name: &str| list.iter().any(|(n, s)| n == name && s == "enforced");
        let v3 = state(3);
        assert!(enforced(&v3, "reads") && enforced(&v3, "writes"));
        assert!(!enforced(&v3, "tcp") && !enforced(&v3, "signals"));
        let v7 = state(7);
        assert!(v7.iter().all(|(_, s)| s == "enforced"), "{v7:?}");
        let none = protections(&Support::Advisory {
            reason: "ENOSYS: no Landlock".into(),
        });
        assert!(none.iter().all(|p| p.state == "advisory" && p.how.contains("ENOSYS")));
        let tcp = protections(&Support::Enforced { abi: 3 })
            .into_iter()
            .find(|p| p.name == "tcp")
            .unwrap();
        assert_eq!(tcp.how, "needs Landlock ABI 4, this kernel has 3");
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
