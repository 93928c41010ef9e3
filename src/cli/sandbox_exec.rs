//! `mirrorctl __sandbox-exec` (hidden): the trampoline the supervisor starts an agent through.
//! It restricts itself with Landlock (writes, reads, TCP, signals: see `supervisor::sandbox`)
//! and then
//! `exec`s the program in place: same pid, environment, working directory and descriptors.
//! See `supervisor::sandbox`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;

use crate::supervisor::sandbox::{self, Profile, SandboxError, Support};

/// Exit code when the sandbox cannot be set up as asked (`--require` without Landlock, or a
/// Landlock restriction that failed).
pub const SANDBOX_FAILED: u8 = 126;
/// Exit code when the program cannot be executed.
pub const CANNOT_EXECUTE: u8 = 127;

/// Its name on the command line (`argv[1]`).
pub const COMMAND: &str = crate::supervisor::sandbox::TRAMPOLINE_COMMAND;

#[derive(Debug, Parser)]
#[command(
    name = "mirrorctl __sandbox-exec",
    about = "Run a program in an agent's sandbox (the supervisor's trampoline)"
)]
pub struct SandboxExecArgs {
    /// A directory (or file) the program may write beneath; repeatable. Missing paths are
    /// skipped with a warning
    #[arg(long = "write", value_name = "PATH")]
    pub writes: Vec<PathBuf>,
    /// A path the program may read beneath even inside a hidden one; repeatable
    #[arg(long = "read", value_name = "PATH")]
    pub reads: Vec<PathBuf>,
    /// A path the program may not read; repeatable. Without any, reads are not restricted
    #[arg(long = "hide", value_name = "PATH")]
    pub hide: Vec<PathBuf>,
    /// Restrict TCP: connect only to the --connect ports, bind only the --bind ports
    #[arg(long)]
    pub net: bool,
    /// A TCP port the program may connect to (with --net); repeatable
    #[arg(long = "connect", value_name = "PORT", requires = "net")]
    pub connect: Vec<u16>,
    /// A TCP port the program may bind (with --net); repeatable
    #[arg(long = "bind", value_name = "PORT", requires = "net")]
    pub bind: Vec<u16>,
    /// Signals and abstract Unix sockets only within the sandbox
    #[arg(long)]
    pub scope: bool,
    /// Refuse to run (exit 126) where the kernel cannot enforce the sandbox
    #[arg(long)]
    pub require: bool,
    /// The program and its arguments, after `--`
    #[arg(last = true, required = true, value_name = "PROGRAM")]
    pub argv: Vec<OsString>,
}

/// Parses `mirrorctl __sandbox-exec ...` and runs it; usage errors exit 1 like the CLI's.
pub fn main() -> u8 {
    let args = std::env::args_os().skip(1);
    match SandboxExecArgs::try_parse_from(args) {
        Ok(args) => run(&args),
        Err(e) => {
            let _ = e.print();
            if e.use_stderr() {
                crate::cli::exit::ERROR
            } else {
                crate::cli::exit::OK
            }
        }
    }
}

/// Never returns on success: the process becomes the program.
pub fn run(args: &SandboxExecArgs) -> u8 {
    let Some((program, rest)) = args.argv.split_first() else {
        eprintln!("mirrorctl: error: __sandbox-exec: no program given after --");
        return crate::cli::exit::ERROR;
    };

    let profile = Profile {
        writes: args.writes.clone(),
        reads: args.reads.clone(),
        hide: args.hide.clone(),
        network: args.net,
        connect: args.connect.clone(),
        bind: args.bind.clone(),
        scope: args.scope,
    };
    match sandbox::restrict(&profile) {
        Ok(Support::Enforced { .. }) => {}
        Ok(Support::Advisory { reason }) => {
            if args.require {
                eprintln!("mirrorctl: error: {}", SandboxError::Unsupported { reason });
                return SANDBOX_FAILED;
            }
            eprintln!(
                "mirrorctl: sandbox advisory: Landlock not available on this kernel ({reason}); nothing is restricted"
            );
        }
        Err(e) => {
            // The kernel offers Landlock and it failed: never run unsandboxed silently.
            eprintln!("mirrorctl: error: {e}");
            return SANDBOX_FAILED;
        }
    }

    exec(program, rest)
}

#[cfg(unix)]
fn exec(program: &OsString, rest: &[OsString]) -> u8 {
    use std::os::unix::process::CommandExt;
    let error = std::process::Command::new(program).args(rest).exec();
    eprintln!(
        "mirrorctl: error: cannot execute {}: {}",
        PathBuf::from(program).display(),
        error
    );
    CANNOT_EXECUTE
}

#[cfg(not(unix))]
fn exec(program: &OsString, _rest: &[OsString]) -> u8 {
    eprintln!(
        "mirrorctl: error: cannot execute {}: sandboxed agents need a Unix host",
        PathBuf::from(program).display()
    );
    CANNOT_EXECUTE
}
