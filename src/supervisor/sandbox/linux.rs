//! The Landlock side of [`super::restrict`] (Linux).

// Unsafe here: Landlock's ABI probe, dropping capabilities and the seccomp filter are raw syscalls. Each block says why it is sound (SAFETY).
#![allow(unsafe_code)]

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use landlock::{
    Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, NetPort, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreated, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

use super::hide::{self, FileSystem};
use super::{unsupported_reason, Profile, SandboxError, Support, DEVICE_FILES};

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

/// Write-type rights asked for: everything up to IOCTL_DEV (ABI 5..8). RESOLVE_UNIX (ABI 9) is
/// a connect, not a write, and is left alone. Older kernels get what they handle (the crate's
/// best effort).
fn write_rights() -> BitFlags<AccessFs> {
    AccessFs::from_write(ABI::V5)
}

/// Read, list and execute.
fn read_rights() -> BitFlags<AccessFs> {
    AccessFs::from_read(ABI::V5)
}

/// The rights of `rights` that make sense on `path`: a file takes no directory rights.
fn fitting(path: &Path, rights: BitFlags<AccessFs>) -> BitFlags<AccessFs> {
    if std::fs::metadata(path).is_ok_and(|m| m.is_dir()) {
        rights
    } else {
        rights & AccessFs::from_file(ABI::V5)
    }
}

fn failed(error: impl std::fmt::Display) -> SandboxError {
    SandboxError::Restrict {
        message: error.to_string(),
    }
}

/// Adds `rights` beneath `path`; a path that cannot be opened is skipped (with a warning when
/// `warn`: a declared path; silently for devices a minimal system lacks).
fn grant(
    ruleset: RulesetCreated,
    path: &Path,
    rights: BitFlags<AccessFs>,
    warn: &str,
) -> Result<RulesetCreated, SandboxError> {
    match PathFd::new(path) {
        Ok(fd) => ruleset
            .add_rule(PathBeneath::new(fd, fitting(path, rights)))
            .map_err(failed),
        Err(e) => {
            if !warn.is_empty() {
                eprintln!(
                    "mirrorctl: sandbox: {warn} {} skipped: {}",
                    path.display(),
                    std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string())
                );
            }
            Ok(ruleset)
        }
    }
}

pub fn restrict(profile: &Profile) -> Result<Support, SandboxError> {
    let support = support();
    if !support.is_enforced() {
        return Ok(support);
    }
    let reads_restricted = !profile.hide.is_empty();
    let read = if reads_restricted {
        read_rights()
    } else {
        BitFlags::EMPTY
    };
    let mut handled = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(write_rights() | read)
        .map_err(failed)?;
    if profile.network {
        handled = handled.handle_access(AccessNet::from_all(ABI::V4)).map_err(failed)?;
    }
    if profile.scope {
        handled = handled
            .scope(Scope::AbstractUnixSocket | Scope::Signal)
            .map_err(failed)?;
    }
    let mut ruleset = handled.create().map_err(failed)?;

    for path in &profile.writes {
        ruleset = grant(ruleset, path, write_rights() | read, "write path")?;
    }
    if reads_restricted {
        for path in &profile.reads {
            ruleset = grant(ruleset, path, read, "read path")?;
        }
        let hidden: Vec<PathBuf> = profile.hide.iter().map(|p| hide::normalize(p)).collect();
        for path in hide::readable_roots(&hidden, &FileSystem) {
            ruleset = grant(ruleset, &path, read, "")?;
        }
    }
    for device in DEVICE_FILES {
        // Missing devices (a minimal container) are simply not allowed.
        let file_rights = AccessFs::WriteFile | AccessFs::Truncate | AccessFs::IoctlDev | (read & AccessFs::ReadFile);
        ruleset = grant(ruleset, Path::new(device), file_rights, "")?;
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
    if profile.network {
        for port in &profile.connect {
            ruleset = ruleset
                .add_rule(NetPort::new(*port, AccessNet::ConnectTcp))
                .map_err(failed)?;
        }
        for port in &profile.bind {
            ruleset = ruleset
                .add_rule(NetPort::new(*port, AccessNet::BindTcp))
                .map_err(failed)?;
        }
    }

    let status = ruleset.restrict_self().map_err(failed)?;
    if profile.scope {
        drop_capabilities()?;
        deny_clone_into_cgroup()?;
    }
    match status.ruleset {
        RulesetStatus::FullyEnforced | RulesetStatus::PartiallyEnforced => Ok(support),
        // Landlock answered the probe but the crate found nothing it could enforce.
        RulesetStatus::NotEnforced => Err(failed(format!(
            "the kernel reports {support} but the ruleset was not enforced"
        ))),
    }
}

fn is_regular_file(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    rustix::fs::fstat(fd).is_ok_and(|stat| rustix::fs::FileType::from_raw_mode(stat.st_mode).is_file())
}

/// Drops every capability (bounding, ambient, effective, permitted, inheritable): an agent run
/// by a root daemon is uid 0 without root's powers. Landlock's ptrace rule covers attach-mode
/// access only on this kernel line; `CAP_SYS_PTRACE` would let a root agent read the daemon's
/// environment (cloud keys) although the daemon makes itself undumpable. Without privilege
/// (a user's daemon) there is nothing to drop and this changes nothing.
fn drop_capabilities() -> Result<(), SandboxError> {
    use rustix::thread::{set_capabilities, CapabilitySet, CapabilitySets};
    for cap in 0..64 {
        // SAFETY: PR_CAPBSET_DROP takes an integer and touches no memory of ours.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            // EINVAL: past the last capability; EPERM: none to drop (no CAP_SETPCAP).
            break;
        }
    }
    // SAFETY: as above; PR_CAP_AMBIENT_CLEAR_ALL takes no pointer.
    unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) };
    set_capabilities(
        None,
        CapabilitySets {
            effective: CapabilitySet::empty(),
            permitted: CapabilitySet::empty(),
            inheritable: CapabilitySet::empty(),
        },
    )
    .map_err(|e| failed(format!("dropping capabilities: {e}")))
}

/// `clone3` answers ENOSYS (the C libraries then fall back to `clone`): its `CLONE_INTO_CGROUP`
/// starts a child in another cgroup given only a read-only descriptor of the target, which
/// Landlock does not see, so an agent could leave its cgroup (limits, the stop that reaches every
/// descendant, the control socket's refusal). On x86-64 the x32 system-call numbers are refused
/// too (another way to the same call). Needs `no_new_privs`, which Landlock has set.
fn deny_clone_into_cgroup() -> Result<(), SandboxError> {
    #[cfg(target_arch = "x86_64")]
    const X32_BIT: u32 = 0x4000_0000;
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    #[cfg(target_arch = "x86_64")]
    const JSET_K: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
    const RET_K: u16 = 0x06;
    const RET_ALLOW: u32 = 0x7fff_0000;
    const RET_ERRNO: u32 = 0x0005_0000;
    const SYS_CLONE3: u32 = 435; // the same number on every architecture
    let stmt = |code: u16, k: u32| libc::sock_filter { code, jt: 0, jf: 0, k };
    let jump = |code: u16, k: u32, jt: u8, jf: u8| libc::sock_filter { code, jt, jf, k };
    let enosys = RET_ERRNO | libc::ENOSYS as u32;
    let mut filter = vec![stmt(LD_W_ABS, 0)]; // seccomp_data.nr
    #[cfg(target_arch = "x86_64")]
    filter.extend([jump(JSET_K, X32_BIT, 2, 0)]);
    filter.extend([
        jump(JEQ_K, SYS_CLONE3, 1, 0),
        stmt(RET_K, RET_ALLOW),
        stmt(RET_K, enosys),
    ]);
    let program = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: the filter program outlives the call, which copies it into the kernel.
    let installed = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &program as *const libc::sock_fprog,
        )
    };
    if installed != 0 {
        return Err(failed(format!(
            "refusing clone3 with seccomp: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}
