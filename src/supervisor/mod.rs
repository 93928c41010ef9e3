//! The supervisor: the only layer that starts, watches and stops processes on the host.
//!
//! [`process`] is the mechanism: start a command in its own session and process group with
//! its logs, environment and limits; tell whether a recorded process is still the one we
//! started (robust against PID reuse and reboots); stop a whole process group with a signal,
//! a grace period, then SIGKILL. Processes outlive the controller: an identity recorded in the
//! inventory is all a new daemon needs to adopt them again.
//!
//! On Linux the mechanism reads `/proc` ([`process::mechanism`] says `linux-proc`); elsewhere,
//! or when `/proc` is not mounted, it polls `kill(pid, 0)` and checks the start time with `ps`
//! (`portable-kill0`), as DESIGN.md §9 asks. `status` shows which one is in force.
//!
//! A reconciler uses it like this:
//!
//! ```text
//! spawn(spec)                 -> identity, recorded in the inventory
//! liveness(identity)          -> Running | Exited | Reused
//!   Exited                    -> stop(identity, ..) to clear what the service left in its group
//!                                (returns AlreadyGone when nothing did), then take_exit(identity)
//!                                for the exit status (our own children only), then restart policy
//!   Reused                    -> the process is gone and its PID belongs to someone else:
//!                                never signal it; treat as exited (no exit status)
//! stop(identity, signal, grace) on prune, update or shutdown of the service
//! ```

pub mod cgroup;
pub mod job;
pub mod listener;
pub mod log_times;
pub mod probe;
pub mod process;
pub mod sandbox;
pub mod watch;

pub use process::{
    boot_id, identify, liveness, mechanism, parse_env_file, rotate_log, rotate_running_log, spawn, stop, take_exit,
    Exit, Liveness, ProcessIdentity, SpawnError, SpawnSpec, StopOutcome, DEFAULT_PATH, INHERITED_ENV,
};
