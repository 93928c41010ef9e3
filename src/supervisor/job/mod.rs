//! Launch agents: jobs in the launchd sense, run on their schedule (`every` or cron, through
//! tokio-cron-scheduler), at load when asked (`runAtLoad`), and once at start for runs missed
//! while the daemon was down (`catchUp`, as launchd does after sleep; several missed runs still
//! run once).
//!
//! A run is a process started with [`process::spawn`](super::process::spawn) (own session and process group, clean
//! environment + env files + env, limits, output appended to `<state dir>/logs/<name>.log`),
//! watched with [`watch::ended`](super::watch::ended), and stopped as a whole group with [`process::stop`](super::process::stop) when it
//! outlives its `timeout`, when a `replace` run takes over, or when its agent is pruned or
//! suspended. A run due while another is going follows the agent's concurrency policy: `forbid`
//! skips it, `allow` starts it beside the other, `replace` stops the other first. Every run,
//! skipped ones too, becomes a [`JobRun`](crate::store::JobRun) record (through the non-blocking [`Recorder`](crate::store::Recorder)) and a
//! `tracing` event.
//!
//! What this host owns is kept in `<state dir>/launch-agents.json`, written atomically after each
//! change: per agent its spec hash, when a run was last due, the last run, and the identities of
//! running instances. Runs outlive the daemon as services do; a new runner adopts them by
//! identity (PID-reuse safe), keeps enforcing their timeout, and counts them under `forbid`.
//!
//! A changed spec takes effect with the next run: a running instance is left to finish.
//!
//! The parts: `runner` is the [`JobRunner`] (sync, status, shutdown); `run` starts, follows,
//! times out and records one run; `schedule` turns an agent's schedule into scheduler jobs and
//! next-run times (with `clock` for the host's wall clock); `saved_state` is
//! `launch-agents.json`; `agents` is the in-memory table the runner and its run tasks share.

mod agents;
mod clock;
mod run;
mod runner;
mod saved_state;
mod schedule;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::process::Exit;
use crate::spec::common::Schedule;
use crate::spec::launch_agent::{Concurrency, LaunchAgentSpec};

pub use runner::JobRunner;

/// Called with (label, outcome) of every recorded run.
pub type RunObserver = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// A LaunchAgent of the desired state, already filtered to this host.
#[derive(Clone, Debug)]
pub struct DesiredJob {
    /// `metadata.name`.
    pub name: String,
    pub spec: LaunchAgentSpec,
    /// The spec hash: changes when the spec changes.
    pub hash: String,
}

/// Why a run started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    /// Its schedule came due.
    Schedule,
    /// It was loaded with `runAtLoad`.
    AtLoad,
    /// A scheduled run was missed while the daemon was down.
    CatchUp,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::AtLoad => "at-load",
            Trigger::CatchUp => "catch-up",
        }
    }
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Exit code 0.
    Ok,
    /// A non-zero exit code, or killed by a signal it did not get from us.
    Failed,
    /// It outlived its `timeout`: its process group was stopped.
    Timeout,
    /// It was due while another run was going, under `forbid`.
    Skipped,
    /// Its process could not be started (missing program, env file, working dir, ...).
    StartFailed,
    /// The runner stopped it: replaced, pruned, suspended, or shut down with `stop_running`.
    Stopped,
    /// It ended while no runner watched it, or was adopted from an earlier daemon (whose exit
    /// status went to its new parent).
    Unknown,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Timeout => "timeout",
            Outcome::Skipped => "skipped",
            Outcome::StartFailed => "start-failed",
            Outcome::Stopped => "stopped",
            Outcome::Unknown => "unknown",
        }
    }

    fn of_exit(exit: Option<Exit>) -> Outcome {
        match exit {
            Some(exit) if exit.success() => Outcome::Ok,
            Some(_) => Outcome::Failed,
            None => Outcome::Unknown,
        }
    }
}

/// What `sync` did to one agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobChangeKind {
    Created,
    Updated,
    Pruned,
    Suspended,
}

impl JobChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobChangeKind::Created => "created",
            JobChangeKind::Updated => "updated",
            JobChangeKind::Pruned => "pruned",
            JobChangeKind::Suspended => "suspended",
        }
    }
}

/// One agent `sync` changed, for the caller's receipts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JobChange {
    pub kind: JobChangeKind,
    pub name: String,
    pub detail: String,
}

/// The last run of an agent that was not skipped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastRun {
    /// The id of its [`JobRun`](crate::store::JobRun) record.
    pub id: String,
    pub trigger: Trigger,
    pub started_ms: i64,
    pub duration_ms: i64,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub outcome: Outcome,
}

/// One agent, for `mirrorctl status` and the daemon's API.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobStatus {
    pub name: String,
    pub label: String,
    /// None for an agent known only from `launch-agents.json` (before the first sync).
    pub schedule: Option<Schedule>,
    pub concurrency: Concurrency,
    pub suspended: bool,
    /// Processes of its running instances (several only under `allow`).
    pub pids: Vec<i32>,
    pub last_run: Option<LastRun>,
    /// When a run was last skipped (forbid).
    pub last_skipped_ms: Option<i64>,
    /// When its schedule next comes due (to the scheduler's half-second).
    pub next_run_ms: Option<i64>,
}

/// Why the runner failed; named after the operation.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("cannot read {}: {message}", .path.display())]
    LoadState { path: PathBuf, message: String },
    #[error("cannot save {}: {message}", .path.display())]
    SaveState { path: PathBuf, message: String },
    #[error("cannot start the launch-agent scheduler: {message}")]
    StartScheduler { message: String },
    #[error("cannot schedule launch agent {name}: {message}")]
    Schedule { name: String, message: String },
    #[error("cannot unschedule launch agent {name}: {message}")]
    Unschedule { name: String, message: String },
}

// ---------------------------------------------------------------------------------------------
