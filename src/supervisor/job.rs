//! Launch agents: jobs in the launchd sense, run on their schedule (`every` or cron, through
//! tokio-cron-scheduler), at load when asked (`runAtLoad`), and once at start for runs missed
//! while the daemon was down (`catchUp`, as launchd does after sleep; several missed runs still
//! run once).
//!
//! A run is a process started with [`process::spawn`] (own session and process group, clean
//! environment + env files + env, limits, output appended to `<state dir>/logs/<name>.log`),
//! watched with [`watch::ended`], and stopped as a whole group with [`process::stop`] when it
//! outlives its `timeout`, when a `replace` run takes over, or when its agent is pruned or
//! suspended. A run due while another is going follows the agent's concurrency policy: `forbid`
//! skips it, `allow` starts it beside the other, `replace` stops the other first. Every run,
//! skipped ones too, becomes a [`JobRun`] record (through the non-blocking [`Recorder`]) and a
//! `tracing` event.
//!
//! What this host owns is kept in `<state dir>/launch-agents.json`, written atomically after each
//! change: per agent its spec hash, when a run was last due, the last run, and the identities of
//! running instances. Runs outlive the daemon as services do; a new runner adopts them by
//! identity (PID-reuse safe), keeps enforcing their timeout, and counts them under `forbid`.
//!
//! A changed spec takes effect with the next run: a running instance is left to finish.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;
use tokio_cron_scheduler::{Job, JobScheduler};
use uuid::Uuid;

use super::process::{self, Exit, Liveness, ProcessIdentity, SpawnSpec, StopOutcome};
use super::watch;
use crate::report::now_ms;
use crate::spec::common::{CronExpr, Duration as SpecDuration, Schedule, Stop};
use crate::spec::launch_agent::{Concurrency, LaunchAgentSpec};
use crate::store::journal::write_atomically;
use crate::store::{new_id, JobRun, Record, Recorder};

/// What this host owns, in the state dir.
pub const STATE_FILE: &str = "launch-agents.json";
/// A run's output tail: at most this many lines ...
const TAIL_LINES: usize = 20;
/// ... and at most this many bytes.
const TAIL_BYTES: u64 = 4096;

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
    /// The id of its [`JobRun`] record.
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
// launch-agents.json

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SavedState {
    host: String,
    #[serde(default)]
    agents: BTreeMap<String, SavedAgent>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SavedAgent {
    label: String,
    hash: String,
    #[serde(default)]
    suspended: bool,
    /// When a run was last due (and run, skipped or replaced): what a catch-up counts from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_scheduled_ms: Option<i64>,
    /// When it was first scheduled: what a catch-up counts from before any run was due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scheduled_since_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_run: Option<LastRun>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_skipped_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    running: Vec<RunningRun>,
}

/// A run whose process is going: all a runner needs to watch, stop and record it, also one
/// that adopts it after a restart (when the agent may have changed or left the desired state).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RunningRun {
    id: String,
    identity: ProcessIdentity,
    trigger: Trigger,
    #[serde(default)]
    commit: Option<String>,
    label: String,
    started_ms: i64,
    /// Where this run's output begins in the agent's log.
    log_offset: u64,
    #[serde(default)]
    timeout: Option<SpecDuration>,
    #[serde(default)]
    stop: Stop,
}

// ---------------------------------------------------------------------------------------------
// In memory

struct Agent {
    /// What `launch-agents.json` keeps (its `running` is filled from `running` when saved).
    saved: SavedAgent,
    /// None while the agent is known only from `launch-agents.json`.
    spec: Option<LaunchAgentSpec>,
    /// The commit of the last sync that desired it: what its runs are recorded under.
    commit: Option<String>,
    /// Whether a sync of this runner has brought it in line (and so loaded it).
    synced: bool,
    /// Its job in the scheduler.
    scheduled: Option<Uuid>,
    /// Bumped whenever it is (un)scheduled: a tick of an older scheduler job finds a different
    /// generation and does nothing (removal from the scheduler is not instant).
    generation: u64,
    /// For `every`: the first tick of its scheduler job.
    first_tick_ms: Option<i64>,
    /// For cron: the UTC offset its scheduler job was made with (rescheduled when it changes).
    cron_offset_secs: Option<i32>,
    running: Vec<Instance>,
    /// A `replace` run waits for the runs it stops; runs due meanwhile are skipped.
    replacing: bool,
}

impl Agent {
    fn from_saved(saved: SavedAgent) -> Agent {
        Agent {
            saved,
            spec: None,
            commit: None,
            synced: false,
            scheduled: None,
            generation: 0,
            first_tick_ms: None,
            cron_offset_secs: None,
            running: Vec::new(),
            replacing: false,
        }
    }

    fn snapshot(&self) -> SavedAgent {
        let mut saved = self.saved.clone();
        saved.running = self.running.iter().map(|i| i.run.clone()).collect();
        saved
    }

    fn describe_running(&self) -> String {
        let runs: Vec<String> = self
            .running
            .iter()
            .map(|i| format!("run {} (pid {})", i.run.id, i.run.identity.pid))
            .collect();
        runs.join(", ")
    }
}

/// A running instance and the task that follows it.
struct Instance {
    run: RunningRun,
    /// Asks the task to stop the run's process group.
    stop: Option<oneshot::Sender<StopCause>>,
    /// Closes when the task is over (done or aborted): `changed()` then fails.
    finished: tokio::sync::watch::Receiver<()>,
    task: AbortHandle,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StopCause {
    Replaced,
    Pruned,
    Suspended,
    Shutdown,
}

impl StopCause {
    fn describe(self) -> &'static str {
        match self {
            StopCause::Replaced => "replaced by a new run (concurrency: replace)",
            StopCause::Pruned => "the launch agent left the desired state",
            StopCause::Suspended => "the launch agent was suspended",
            StopCause::Shutdown => "the runner shut down",
        }
    }
}

/// How a followed run came to its end.
enum End {
    Exited(Option<Exit>),
    TimedOut(SpecDuration),
    Stopped(StopCause),
}

struct Shared {
    state_dir: PathBuf,
    host: String,
    recorder: Recorder,
    agents: Mutex<BTreeMap<String, Agent>>,
    /// Orders writes of `launch-agents.json`: the file always gets the newest snapshot last.
    save_lock: Mutex<()>,
    /// No more runs start (shutdown or drop).
    closed: AtomicBool,
    /// No more saves: a later runner owns `launch-agents.json`.
    retired: AtomicBool,
    /// Told of every recorded run (label, outcome): the daemon's metrics.
    observer: Mutex<Option<RunObserver>>,
}

/// Called with (label, outcome) of every recorded run.
pub type RunObserver = Arc<dyn Fn(&str, &str) + Send + Sync>;

impl Shared {
    fn agents(&self) -> MutexGuard<'_, BTreeMap<String, Agent>> {
        self.agents.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.state_dir.join("logs").join(format!("{name}.log"))
    }

    fn save(&self) -> Result<(), JobError> {
        let _order = self.save_lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.retired.load(Ordering::SeqCst) {
            return Ok(());
        }
        let state = SavedState {
            host: self.host.clone(),
            agents: self.agents().iter().map(|(n, a)| (n.clone(), a.snapshot())).collect(),
        };
        let path = self.state_dir.join(STATE_FILE);
        let json = serde_json::to_vec_pretty(&state).expect("the state serializes");
        write_atomically(&path, &json).map_err(|e| JobError::SaveState {
            path,
            message: e.to_string(),
        })
    }

    /// For saves from run tasks, which have no caller to report to.
    fn save_or_warn(&self) {
        if let Err(e) = self.save() {
            tracing::warn!(error = %e, "launch agents: state not saved");
        }
    }

    /// A run of `name` is due. Starts it, skips it or replaces the running one, as the agent's
    /// concurrency says. `generation` is the scheduler job's (None for at-load and catch-up).
    /// Returns what it did, in words; None when nothing was due (a stale tick, suspended, closed).
    fn due(self: &Arc<Self>, name: &str, generation: Option<u64>, trigger: Trigger) -> Option<String> {
        if self.closed() {
            return None;
        }
        let what = {
            let mut agents = self.agents();
            let agent = agents.get_mut(name)?;
            if generation.is_some_and(|g| g != agent.generation || agent.scheduled.is_none()) {
                return None;
            }
            let spec = agent.spec.clone().filter(|s| !s.suspend)?;
            let now = now_ms();
            agent.saved.last_scheduled_ms = Some(now);
            if agent.replacing {
                self.skip(name, agent, trigger, now, "a replacing run is about to start".into())
            } else if agent.running.is_empty() || spec.concurrency == Concurrency::Allow {
                self.start_run(name, agent, &spec, trigger)
            } else if spec.concurrency == Concurrency::Forbid {
                let detail = format!("{} is still running (concurrency: forbid)", agent.describe_running());
                self.skip(name, agent, trigger, now, detail)
            } else {
                // Replace: the running ones are stopped, then the new run starts.
                let what = format!("replacing {}", agent.describe_running());
                agent.replacing = true;
                let waits = request_stop(&mut agent.running, StopCause::Replaced);
                let shared = Arc::clone(self);
                let name = name.to_string();
                tokio::spawn(async move {
                    wait_finished(waits).await;
                    {
                        let mut agents = shared.agents();
                        if let Some(agent) = agents.get_mut(&name) {
                            agent.replacing = false;
                            // Pruned, suspended or shut down meanwhile: nothing starts.
                            if let Some(spec) = agent.spec.clone().filter(|s| !s.suspend && !shared.closed()) {
                                let _ = shared.start_run(&name, agent, &spec, trigger);
                            }
                        }
                    }
                    shared.save_or_warn();
                });
                what
            }
        };
        self.save_or_warn();
        Some(what)
    }

    fn skip(&self, name: &str, agent: &mut Agent, trigger: Trigger, now: i64, detail: String) -> String {
        let what = format!("skipped: {detail}");
        let run = RunRecord {
            id: new_id(),
            label: agent.saved.label.clone(),
            trigger,
            commit: agent.commit.clone(),
            started_ms: now,
            ended_ms: now,
            exit: None,
            outcome: Outcome::Skipped,
            detail,
            output_tail: String::new(),
        };
        self.record(name, run);
        agent.saved.last_skipped_ms = Some(now);
        what
    }

    /// Starts a run now (or records why it could not start). Returns what happened, in words.
    fn start_run(self: &Arc<Self>, name: &str, agent: &mut Agent, spec: &LaunchAgentSpec, trigger: Trigger) -> String {
        let started_ms = now_ms();
        match self.spawn_process(name, spec) {
            Ok((identity, log_offset)) => {
                let run = RunningRun {
                    id: new_id(),
                    identity,
                    trigger,
                    commit: agent.commit.clone(),
                    label: spec.label.clone(),
                    started_ms,
                    log_offset,
                    timeout: spec.timeout,
                    stop: spec.stop(),
                };
                tracing::info!(
                    agent = name,
                    label = %run.label,
                    trigger = trigger.as_str(),
                    pid = run.identity.pid,
                    run = %run.id,
                    "launch agent run started"
                );
                let what = format!("started run {} (pid {})", run.id, run.identity.pid);
                agent.running.push(self.follow(name, run));
                what
            }
            Err(detail) => {
                let what = format!("could not start: {detail}");
                let run = RunRecord {
                    id: new_id(),
                    label: spec.label.clone(),
                    trigger,
                    commit: agent.commit.clone(),
                    started_ms,
                    ended_ms: started_ms,
                    exit: None,
                    outcome: Outcome::StartFailed,
                    detail,
                    output_tail: String::new(),
                };
                agent.saved.last_run = Some(self.record(name, run));
                what
            }
        }
    }

    /// Starts the process as a Service is started (working dir and env files relative to the
    /// state dir); returns its identity and where its output begins in the log.
    fn spawn_process(&self, name: &str, spec: &LaunchAgentSpec) -> Result<(ProcessIdentity, u64), String> {
        let working_dir = match &spec.working_dir {
            Some(dir) => resolve(&self.state_dir, dir),
            None => {
                let dir = self.state_dir.join("launch-agents").join(name);
                fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                dir
            }
        };
        let env_files: Vec<PathBuf> = spec.env_files.iter().map(|p| resolve(&self.state_dir, p)).collect();
        let logs = spec.logs.clone().unwrap_or_default();
        let log_path = self.log_path(name);
        let log_dir = log_path.parent().expect("a log path has a directory");
        let before = fs::metadata(&log_path).ok().map(|m| (m.ino(), m.len()));
        // Each run gets its own spawn tag (a committed one would tie runs together).
        let mut env = spec.env.clone();
        env.remove(process::SPAWN_ENV);
        let identity = process::spawn(&SpawnSpec {
            name,
            command: &spec.command,
            working_dir: Some(&working_dir),
            env: &env,
            env_files: &env_files,
            limits: spec.limits.as_ref(),
            log_dir,
            log_max_size: logs.max_size().0,
            log_max_files: logs.max_files(),
            cgroup_procs: &[],
        })
        .map_err(|e| e.to_string())?;
        // spawn rotates a full log first: then this run's output starts a new file.
        let log_offset = match (before, fs::metadata(&log_path)) {
            (Some((inode, len)), Ok(now)) if now.ino() == inode => len,
            _ => 0,
        };
        Ok((identity, log_offset))
    }

    /// Follows a run in a task until it ends, times out or is asked to stop.
    fn follow(self: &Arc<Self>, name: &str, run: RunningRun) -> Instance {
        let (stop, stop_requests) = oneshot::channel();
        let (finished_tx, finished) = tokio::sync::watch::channel(());
        let task = tokio::spawn(Arc::clone(self).follow_run(name.to_string(), run.clone(), stop_requests, finished_tx));
        Instance {
            run,
            stop: Some(stop),
            finished,
            task: task.abort_handle(),
        }
    }

    async fn follow_run(
        self: Arc<Self>,
        name: String,
        run: RunningRun,
        mut stop_requests: oneshot::Receiver<StopCause>,
        _finished: tokio::sync::watch::Sender<()>,
    ) {
        let identity = run.identity.clone();
        let ended = watch::ended(identity.clone());
        tokio::pin!(ended);
        let (timeout, started_ms) = (run.timeout, run.started_ms);
        let timer = async move {
            match timeout {
                Some(timeout) => {
                    // Counted from the run's start, also for a run adopted after a restart.
                    let left = started_ms + timeout.as_std().as_millis() as i64 - now_ms();
                    tokio::time::sleep(Duration::from_millis(left.max(0) as u64)).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::pin!(timer);
        let mut requests_open = true;
        let end = loop {
            tokio::select! {
                ended = &mut ended => break End::Exited(ended.exit),
                _ = &mut timer => break End::TimedOut(timeout.expect("the timer runs only with a timeout")),
                request = &mut stop_requests, if requests_open => match request {
                    Ok(cause) => break End::Stopped(cause),
                    // The runner let go of the run without asking (dropped): keep following it.
                    Err(_) => requests_open = false,
                },
            }
        };
        let signal = run.stop.signal().unwrap_or("SIGTERM");
        let grace = run.stop.grace().as_std();
        let (exit, outcome, detail) = match end {
            End::Exited(exit) => {
                // What the run left in its group goes with it (launchd's AbandonProcessGroup=false).
                let detail = match stop_group(&identity, signal, grace).await {
                    StopOutcome::AlreadyGone => String::new(),
                    outcome => format!("stopped what it left running in its process group ({outcome:?})"),
                };
                (exit, Outcome::of_exit(exit), detail)
            }
            End::TimedOut(timeout) => {
                let stopped = stop_group(&identity, signal, grace).await;
                let detail = format!(
                    "ran longer than its timeout of {timeout}: process group stopped with {signal} ({stopped:?})"
                );
                (process::take_exit(&identity), Outcome::Timeout, detail)
            }
            End::Stopped(cause) => {
                let stopped = stop_group(&identity, signal, grace).await;
                let detail = format!(
                    "{}: process group stopped with {signal} ({stopped:?})",
                    cause.describe()
                );
                (process::take_exit(&identity), Outcome::Stopped, detail)
            }
        };
        // No await from here on: an abort (shutdown) cannot cut the record off from the state.
        self.finish(&name, &run, exit, outcome, detail);
    }

    /// Records a run that ended and forgets it as running.
    fn finish(&self, name: &str, run: &RunningRun, exit: Option<Exit>, outcome: Outcome, detail: String) {
        let record = RunRecord {
            id: run.id.clone(),
            label: run.label.clone(),
            trigger: run.trigger,
            commit: run.commit.clone(),
            started_ms: run.started_ms,
            ended_ms: now_ms(),
            exit,
            outcome,
            detail,
            output_tail: output_tail(&self.log_path(name), run.log_offset),
        };
        let last = self.record(name, record);
        if let Some(agent) = self.agents().get_mut(name) {
            agent.running.retain(|i| i.run.id != run.id);
            agent.saved.last_run = Some(last);
        }
        self.save_or_warn();
    }

    /// Writes a [`JobRun`] record and a tracing event; returns the run for `last_run`.
    fn record(&self, name: &str, run: RunRecord) -> LastRun {
        let exit_code = run.exit.and_then(|e| e.code);
        let signal = run.exit.and_then(|e| e.signal);
        let duration_ms = run.ended_ms - run.started_ms;
        tracing::info!(
            agent = name,
            label = %run.label,
            trigger = run.trigger.as_str(),
            outcome = run.outcome.as_str(),
            exit_code = ?exit_code,
            signal = ?signal,
            duration_ms,
            detail = %run.detail,
            "launch agent run"
        );
        let last = LastRun {
            id: run.id.clone(),
            trigger: run.trigger,
            started_ms: run.started_ms,
            duration_ms,
            exit_code,
            signal,
            outcome: run.outcome,
        };
        let observer = self.observer.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(observe) = observer {
            observe(&run.label, run.outcome.as_str());
        }
        self.recorder.record(Record::JobRun(JobRun {
            id: run.id,
            host: self.host.clone(),
            name: name.to_string(),
            label: run.label,
            commit: run.commit,
            trigger: run.trigger.as_str().to_string(),
            started_ms: run.started_ms,
            ended_ms: run.ended_ms,
            exit_code,
            signal,
            outcome: run.outcome.as_str().to_string(),
            detail: run.detail,
            output_tail: run.output_tail,
        }));
        last
    }
}

/// A run as recorded.
struct RunRecord {
    id: String,
    label: String,
    trigger: Trigger,
    commit: Option<String>,
    started_ms: i64,
    ended_ms: i64,
    exit: Option<Exit>,
    outcome: Outcome,
    detail: String,
    output_tail: String,
}

/// Asks the tasks of `running` to stop their runs; returns what to wait on for them to be over.
fn request_stop(running: &mut [Instance], cause: StopCause) -> Vec<tokio::sync::watch::Receiver<()>> {
    running
        .iter_mut()
        .map(|instance| {
            if let Some(stop) = instance.stop.take() {
                let _ = stop.send(cause);
            }
            instance.finished.clone()
        })
        .collect()
}

async fn wait_finished(mut waits: Vec<tokio::sync::watch::Receiver<()>>) {
    for finished in &mut waits {
        // Nothing is ever sent: `changed` fails once the task has dropped its sender.
        while finished.changed().await.is_ok() {}
    }
}

/// `process::stop` blocks (signal, grace, SIGKILL): on a blocking thread.
async fn stop_group(identity: &ProcessIdentity, signal: &'static str, grace: Duration) -> StopOutcome {
    let identity = identity.clone();
    tokio::task::spawn_blocking(move || process::stop(&identity, signal, grace))
        .await
        .unwrap_or(StopOutcome::AlreadyGone)
}

/// Relative working dirs and env files are relative to the state dir, as for Services.
fn resolve(state_dir: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        state_dir.join(path)
    }
}

/// The last [`TAIL_LINES`] lines, at most [`TAIL_BYTES`], written to `log` from `offset` on.
fn output_tail(log: &Path, offset: u64) -> String {
    let Ok(mut file) = File::open(log) else {
        return String::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    if len <= offset {
        return String::new();
    }
    let start = offset.max(len - len.min(TAIL_BYTES));
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.take(TAIL_BYTES).read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    // Cut at a byte count: drop the partial first line, unless it is all there is.
    let text = match text.find('\n') {
        Some(newline) if start > offset && newline + 1 < text.len() => &text[newline + 1..],
        _ => &text[..],
    };
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// Schedules

/// tokio-cron-scheduler counts intervals in whole seconds: rounded up, at least one.
fn interval(every: SpecDuration) -> Duration {
    let every = every.as_std();
    Duration::from_secs((every.as_secs() + u64::from(every.subsec_nanos() > 0)).max(1))
}

/// The expression with a seconds field, as tokio-cron-scheduler requires.
fn with_seconds(expr: &CronExpr) -> String {
    if expr.as_str().split_whitespace().count() == 5 {
        format!("0 {expr}")
    } else {
        expr.to_string()
    }
}

/// Parsed as tokio-cron-scheduler parses it (seconds required; day of month AND day of week),
/// so catch-up and status agree with when the scheduler runs it.
fn scheduler_cron(expr: &CronExpr) -> Option<croner::Cron> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(&with_seconds(expr))
        .ok()
}

fn describe_schedule(schedule: &Schedule) -> String {
    match schedule {
        Schedule::Every(every) => format!("every {every}"),
        Schedule::Cron(expr) => format!("cron `{expr}`"),
    }
}

/// Whether a run came due after `since_ms` and before `now_ms`.
fn missed(schedule: &Schedule, since_ms: i64, now_ms: i64) -> bool {
    match schedule {
        Schedule::Every(every) => since_ms + interval(*every).as_millis() as i64 <= now_ms,
        Schedule::Cron(expr) => scheduler_cron(expr)
            .and_then(|cron| clock::next_cron_ms(&cron, since_ms))
            .is_some_and(|next| next <= now_ms),
    }
}

fn next_run_ms(agent: &Agent, now: i64) -> Option<i64> {
    agent.scheduled?;
    match agent.spec.as_ref()?.schedule.as_ref()? {
        Schedule::Every(every) => {
            let first = agent.first_tick_ms?;
            let step = interval(*every).as_millis() as i64;
            Some(if first > now {
                first
            } else {
                first + ((now - first) / step + 1) * step
            })
        }
        Schedule::Cron(expr) => clock::next_cron_ms(&scheduler_cron(expr)?, now),
    }
}

type Tick = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The scheduler job of one agent: each tick makes a run due.
fn scheduler_job(shared: Weak<Shared>, name: &str, generation: u64, schedule: &Schedule) -> Result<Job, String> {
    let name = name.to_string();
    let tick = move |_job: Uuid, _scheduler: JobScheduler| -> Tick {
        let shared = shared.clone();
        let name = name.clone();
        Box::pin(async move {
            if let Some(shared) = shared.upgrade() {
                let _ = shared.due(&name, Some(generation), Trigger::Schedule);
            }
        })
    };
    match schedule {
        Schedule::Every(every) => Job::new_repeated_async(interval(*every), tick),
        Schedule::Cron(expr) => clock::local_cron_job(&with_seconds(expr), tick),
    }
    .map_err(|e| e.to_string())
}

/// Wall-clock computations for cron schedules, in the host's local time.
///
/// chrono is not a direct dependency of mirrorctl: its types are reached through
/// tokio-cron-scheduler (`JobAndNextTick::utc` makes a `DateTime<Utc>`) and named by inference.
/// With `chrono` in Cargo.toml, `parse_like` becomes `chrono::FixedOffset::east_opt`.
mod clock {
    use std::str::FromStr;

    use tokio_cron_scheduler::job::job_data::JobAndNextTick;
    use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};
    use uuid::Uuid;

    use super::Tick;

    /// Parses `text` as a value of the type of `_like`.
    fn parse_like<T: FromStr>(_like: &T, text: &str) -> Option<T> {
        text.parse().ok()
    }

    /// The host's offset from UTC at `at_s` (seconds since the epoch), in seconds east.
    pub(super) fn local_offset_secs(at_s: i64) -> i32 {
        let time = at_s as libc::time_t;
        // SAFETY: localtime_r reads `time` and writes only into `tm`, both alive for the call;
        // an all-zero `tm` is a valid value of the C struct.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        let converted = unsafe { !libc::localtime_r(&time, &mut tm).is_null() };
        if converted {
            tm.tm_gmtoff as i32
        } else {
            0
        }
    }

    fn offset_text(secs: i32) -> String {
        let sign = if secs < 0 { '-' } else { '+' };
        let secs = secs.unsigned_abs();
        format!("{sign}{:02}:{:02}", secs / 3600, secs % 3600 / 60)
    }

    #[cfg(test)]
    #[test]
    fn offsets_are_written_and_read_back() {
        assert_eq!(offset_text(19_800), "+05:30");
        assert_eq!(offset_text(-3 * 3600), "-03:00");
        assert_eq!(offset_text(0), "+00:00");
        let utc = JobAndNextTick::utc(0);
        let zone = parse_like(&utc.fixed_offset().timezone(), "+05:30").unwrap();
        assert_eq!(zone.local_minus_utc(), 19_800);
        // 1970-01-01T00:00:00Z is 05:30 in +05:30: the next 06:00 there is 30 minutes later.
        let six_am: croner::Cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Required)
            .build()
            .parse("0 0 6 * * *")
            .unwrap();
        let next = six_am.find_next_occurrence(&utc.with_timezone(&zone), false).unwrap();
        assert_eq!(next.timestamp_millis(), 30 * 60 * 1000);
    }

    fn now_s() -> u64 {
        (crate::report::now_ms() / 1000).max(0) as u64
    }

    /// The first time after `after_ms` that `cron` matches on the host's clock.
    pub(super) fn next_cron_ms(cron: &croner::Cron, after_ms: i64) -> Option<i64> {
        let after_s = u64::try_from(after_ms.div_euclid(1000)).ok()?;
        let utc = JobAndNextTick::utc(after_s);
        let zone = parse_like(
            &utc.fixed_offset().timezone(),
            &offset_text(local_offset_secs(after_s as i64)),
        )?;
        let next = cron.find_next_occurrence(&utc.with_timezone(&zone), false).ok()?;
        Some(next.timestamp_millis())
    }

    /// A scheduler job on `expr` (six fields) in the host's local time, at today's offset.
    pub(super) fn local_cron_job<T>(expr: &str, tick: T) -> Result<Job, JobSchedulerError>
    where
        T: FnMut(Uuid, JobScheduler) -> Tick + Send + Sync + 'static,
    {
        let utc = JobAndNextTick::utc(now_s());
        let zone = utc.fixed_offset().timezone();
        let zone = parse_like(&zone, &offset_text(local_offset_secs(now_s() as i64))).unwrap_or(zone);
        Job::new_async_tz(expr, zone, tick)
    }
}

// ---------------------------------------------------------------------------------------------
// The runner

/// Runs this host's launch agents. See the module documentation.
pub struct JobRunner {
    shared: Arc<Shared>,
    scheduler: JobScheduler,
}

impl JobRunner {
    /// Loads `<state dir>/launch-agents.json` (what this host owns: name, hash, last scheduled
    /// run time, last run result, identity of a running instance), adopts running instances
    /// that are still there (recording the ones that ended meanwhile), and starts the scheduler
    /// on the current tokio runtime. Nothing is scheduled before the first `sync`.
    pub async fn start(state_dir: PathBuf, host: String, recorder: Recorder) -> Result<JobRunner, JobError> {
        let path = state_dir.join(STATE_FILE);
        let load_error = |message: String| JobError::LoadState {
            path: path.clone(),
            message,
        };
        fs::create_dir_all(&state_dir).map_err(|e| load_error(e.to_string()))?;
        let saved: SavedState = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| load_error(e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => SavedState::default(),
            Err(e) => return Err(load_error(e.to_string())),
        };
        let scheduler = JobScheduler::new()
            .await
            .map_err(|e| JobError::StartScheduler { message: e.to_string() })?;
        scheduler
            .start()
            .await
            .map_err(|e| JobError::StartScheduler { message: e.to_string() })?;
        let shared = Arc::new(Shared {
            state_dir,
            host,
            recorder,
            agents: Mutex::new(BTreeMap::new()),
            save_lock: Mutex::new(()),
            closed: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            observer: Mutex::new(None),
        });
        // A state dir moved to another host name starts that host's own set (as the chain head does).
        let owned = if saved.host == shared.host || saved.agents.is_empty() {
            saved.agents
        } else {
            tracing::warn!(file = %path.display(), other = %saved.host, "launch agents of another host are ignored");
            BTreeMap::new()
        };
        {
            let mut agents = shared.agents();
            for (name, mut saved) in owned {
                let runs = std::mem::take(&mut saved.running);
                let mut agent = Agent::from_saved(saved);
                for run in runs {
                    if process::liveness(&run.identity) == Liveness::Running {
                        tracing::info!(agent = %name, pid = run.identity.pid, run = %run.id, "launch agent run adopted");
                        agent.running.push(shared.follow(&name, run));
                        continue;
                    }
                    let exit = process::take_exit(&run.identity);
                    let record = RunRecord {
                        id: run.id.clone(),
                        label: run.label.clone(),
                        trigger: run.trigger,
                        commit: run.commit.clone(),
                        started_ms: run.started_ms,
                        ended_ms: now_ms(),
                        exit,
                        outcome: Outcome::of_exit(exit),
                        detail: "ended while no runner was following it (the end time is when that was noticed)".into(),
                        output_tail: output_tail(&shared.log_path(&name), run.log_offset),
                    };
                    agent.saved.last_run = Some(shared.record(&name, record));
                }
                agents.insert(name, agent);
            }
        }
        // Made first, so that a failed save drops it: the scheduler stops and no run starts.
        let runner = JobRunner { shared, scheduler };
        runner.shared.save()?;
        Ok(runner)
    }

    /// Brings the schedule in line with `desired` (the launch agents of `commit`, filtered to
    /// this host): schedules new ones (running at load as asked), loads the ones owned from an
    /// earlier run (running at load, or once to catch up a missed run), reschedules changed
    /// ones (a running instance is left to finish), suspends and resumes, and removes owned
    /// ones that are gone (stopping a running instance). Returns one change per agent changed.
    pub async fn sync(&mut self, commit: Option<&str>, desired: Vec<DesiredJob>) -> Result<Vec<JobChange>, JobError> {
        let result = self.bring_in_line(commit, desired).await;
        let saved = self.shared.save();
        let changes = result?;
        saved?;
        Ok(changes)
    }

    async fn bring_in_line(
        &mut self,
        commit: Option<&str>,
        desired: Vec<DesiredJob>,
    ) -> Result<Vec<JobChange>, JobError> {
        let wanted: BTreeSet<&str> = desired.iter().map(|d| d.name.as_str()).collect();
        let gone: Vec<String> = self
            .shared
            .agents()
            .keys()
            .filter(|name| !wanted.contains(name.as_str()))
            .cloned()
            .collect();
        let mut changes = Vec::new();
        for name in gone {
            changes.push(self.prune(&name).await?);
        }
        for job in desired {
            if let Some(change) = self.sync_one(commit, job).await? {
                changes.push(change);
            }
        }
        Ok(changes)
    }

    async fn prune(&self, name: &str) -> Result<JobChange, JobError> {
        self.unschedule(name).await?;
        let stopped = self.stop_running(name, StopCause::Pruned).await;
        self.shared.agents().remove(name);
        Ok(JobChange {
            kind: JobChangeKind::Pruned,
            name: name.to_string(),
            detail: sentence(["unscheduled".to_string(), stopped]),
        })
    }

    async fn sync_one(&self, commit: Option<&str>, job: DesiredJob) -> Result<Option<JobChange>, JobError> {
        let DesiredJob { name, spec, hash } = job;
        let change = |kind, details: Vec<String>| {
            Some(JobChange {
                kind,
                name: name.clone(),
                detail: sentence(details),
            })
        };
        // Take the new spec in, remembering what was there.
        let previous = {
            let mut agents = self.shared.agents();
            let previous = agents
                .get(&name)
                .map(|a| (a.synced, a.saved.hash.clone(), a.saved.suspended, a.spec.clone()));
            let agent = agents.entry(name.clone()).or_insert_with(|| {
                Agent::from_saved(SavedAgent {
                    label: spec.label.clone(),
                    hash: hash.clone(),
                    ..SavedAgent::default()
                })
            });
            agent.saved.label = spec.label.clone();
            agent.saved.hash = hash.clone();
            agent.saved.suspended = spec.suspend;
            agent.spec = Some(spec.clone());
            agent.commit = commit.map(String::from);
            agent.synced = true;
            previous
        };
        let Some((synced, old_hash, was_suspended, old_spec)) = previous else {
            // New: scheduled, and run now when it asks to be run at load.
            if spec.suspend {
                return Ok(change(JobChangeKind::Created, vec!["suspended: not scheduled".into()]));
            }
            let mut details = vec![self.schedule(&name, spec.schedule.as_ref()).await?];
            if spec.run_at_load {
                details.extend(
                    self.shared
                        .due(&name, None, Trigger::AtLoad)
                        .map(|what| format!("at load: {what}")),
                );
            }
            return Ok(change(JobChangeKind::Created, details));
        };
        let changed = old_hash != hash;
        if spec.suspend {
            if synced && was_suspended && !changed {
                return Ok(None);
            }
            // Newly suspended, or loaded suspended: nothing scheduled, nothing running.
            self.unschedule(&name).await?;
            let stopped = self.stop_running(&name, StopCause::Suspended).await;
            return Ok(match (was_suspended, changed) {
                (false, _) => change(JobChangeKind::Suspended, vec!["unscheduled".into(), stopped]),
                (true, true) => change(JobChangeKind::Updated, vec!["changed; still suspended".into(), stopped]),
                (true, false) => None,
            });
        }
        if !synced || was_suspended {
            // Loaded: at the first sync of this runner, or resumed.
            let load = if spec.run_at_load {
                Some(Trigger::AtLoad)
            } else if !synced && spec.catch_up() && self.missed_while_down(&name, spec.schedule.as_ref()) {
                Some(Trigger::CatchUp)
            } else {
                None
            };
            let mut details = vec![self.schedule(&name, spec.schedule.as_ref()).await?];
            if let Some(trigger) = load {
                let when = match trigger {
                    Trigger::CatchUp => "a run was missed while the daemon was down",
                    _ => "at load",
                };
                details.extend(
                    self.shared
                        .due(&name, None, trigger)
                        .map(|what| format!("{when}: {what}")),
                );
            }
            return Ok(match (was_suspended, changed) {
                (true, _) => change(JobChangeKind::Updated, [vec!["resumed".into()], details].concat()),
                (false, true) => change(
                    JobChangeKind::Updated,
                    [vec!["changed while the daemon was down".into()], details].concat(),
                ),
                (false, false) => None,
            });
        }
        let schedule_changed = old_spec.as_ref().map(|s| &s.schedule) != Some(&spec.schedule);
        if !changed {
            // A cron job keeps the UTC offset it was made with: made again when it changes (DST).
            if !schedule_changed && self.cron_offset_changed(&name) {
                self.schedule(&name, spec.schedule.as_ref()).await?;
            }
            return Ok(None);
        }
        // Changed: takes effect with the next run; a running instance is left to finish.
        let mut details = vec!["takes effect with the next run".to_string()];
        if schedule_changed {
            details.push(format!("re{}", self.schedule(&name, spec.schedule.as_ref()).await?));
        }
        let running = self
            .shared
            .agents()
            .get(&name)
            .map(Agent::describe_running)
            .unwrap_or_default();
        if !running.is_empty() {
            details.push(format!("{running} left to finish"));
        }
        Ok(change(JobChangeKind::Updated, details))
    }

    /// Whether a scheduled run came due while the daemon was down.
    fn missed_while_down(&self, name: &str, schedule: Option<&Schedule>) -> bool {
        let Some(schedule) = schedule else { return false };
        let agents = self.shared.agents();
        let Some(since) = agents
            .get(name)
            .and_then(|a| a.saved.last_scheduled_ms.or(a.saved.scheduled_since_ms))
        else {
            return false;
        };
        missed(schedule, since, now_ms())
    }

    fn cron_offset_changed(&self, name: &str) -> bool {
        let agents = self.shared.agents();
        agents
            .get(name)
            .and_then(|a| a.cron_offset_secs)
            .is_some_and(|offset| offset != clock::local_offset_secs(now_ms() / 1000))
    }

    /// (Re)schedules an agent: its old scheduler job, if any, is removed. Returns what was done.
    async fn schedule(&self, name: &str, schedule: Option<&Schedule>) -> Result<String, JobError> {
        self.unschedule(name).await?;
        let Some(schedule) = schedule else {
            return Ok("no schedule: runs only at load".into());
        };
        let generation = match self.shared.agents().get_mut(name) {
            Some(agent) => agent.generation,
            None => return Ok(String::new()),
        };
        let schedule_error = |message: String| JobError::Schedule {
            name: name.to_string(),
            message,
        };
        let job = scheduler_job(Arc::downgrade(&self.shared), name, generation, schedule).map_err(schedule_error)?;
        let now = now_ms();
        let id = self
            .scheduler
            .add(job)
            .await
            .map_err(|e| schedule_error(e.to_string()))?;
        if let Some(agent) = self.shared.agents().get_mut(name) {
            agent.scheduled = Some(id);
            agent.saved.scheduled_since_ms.get_or_insert(now);
            match schedule {
                // As the scheduler counts: from this second on.
                Schedule::Every(every) => {
                    agent.first_tick_ms = Some((now / 1000) * 1000 + interval(*every).as_millis() as i64);
                }
                Schedule::Cron(_) => agent.cron_offset_secs = Some(clock::local_offset_secs(now / 1000)),
            }
        }
        Ok(format!("scheduled {}", describe_schedule(schedule)))
    }

    async fn unschedule(&self, name: &str) -> Result<(), JobError> {
        let job = match self.shared.agents().get_mut(name) {
            Some(agent) => {
                // Ticks of the old job already on their way find another generation.
                agent.generation += 1;
                agent.first_tick_ms = None;
                agent.cron_offset_secs = None;
                agent.scheduled.take()
            }
            None => None,
        };
        if let Some(id) = job {
            self.scheduler.remove(&id).await.map_err(|e| JobError::Unschedule {
                name: name.to_string(),
                message: e.to_string(),
            })?;
        }
        Ok(())
    }

    /// Stops the running instances of an agent and waits until they are recorded. Returns
    /// what was stopped, in words.
    async fn stop_running(&self, name: &str, cause: StopCause) -> String {
        let (waits, stopped) = match self.shared.agents().get_mut(name) {
            Some(agent) if !agent.running.is_empty() => {
                let stopped = format!("stopped {}", agent.describe_running());
                (request_stop(&mut agent.running, cause), stopped)
            }
            _ => return String::new(),
        };
        wait_finished(waits).await;
        stopped
    }

    /// Per agent: label, schedule, running pids, last run, next run time. By name.
    /// Whether `<state dir>/launch-agents.json` lists launch agents this host owns (a runner
    /// must start to adopt or prune them even when the desired state has none).
    pub fn owns_any(state_dir: &Path) -> bool {
        fs::read(state_dir.join(STATE_FILE))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<SavedState>(&bytes).ok())
            .is_some_and(|saved| !saved.agents.is_empty())
    }

    /// Tells `observer` of every run recorded from now on.
    pub fn observe_runs(&self, observer: RunObserver) {
        *self.shared.observer.lock().unwrap_or_else(|e| e.into_inner()) = Some(observer);
    }

    pub fn status(&self) -> Vec<JobStatus> {
        let now = now_ms();
        self.shared
            .agents()
            .iter()
            .map(|(name, agent)| JobStatus {
                name: name.clone(),
                label: agent.saved.label.clone(),
                schedule: agent.spec.as_ref().and_then(|s| s.schedule.clone()),
                concurrency: agent.spec.as_ref().map(|s| s.concurrency).unwrap_or_default(),
                suspended: agent.saved.suspended,
                pids: agent.running.iter().map(|i| i.run.identity.pid).collect(),
                last_run: agent.saved.last_run.clone(),
                last_skipped_ms: agent.saved.last_skipped_ms,
                next_run_ms: next_run_ms(agent, now),
            })
            .collect()
    }

    /// Stops scheduling. Running instances are stopped (and recorded) when `stop_running`;
    /// otherwise they are left to finish: they outlive the daemon as services do, and the next
    /// runner adopts them from `launch-agents.json`.
    pub async fn shutdown(self, stop_running: bool) {
        self.shared.closed.store(true, Ordering::SeqCst);
        let mut scheduler = self.scheduler.clone();
        if let Err(e) = scheduler.shutdown().await {
            tracing::warn!(error = %e, "launch agents: the scheduler did not shut down cleanly");
        }
        let waits: Vec<_> = {
            let mut agents = self.shared.agents();
            agents
                .values_mut()
                .flat_map(|agent| {
                    if stop_running {
                        request_stop(&mut agent.running, StopCause::Shutdown)
                    } else {
                        // Only the following ends; the processes go on, recorded as running.
                        agent.running.iter().for_each(|i| i.task.abort());
                        agent.running.iter().map(|i| i.finished.clone()).collect()
                    }
                })
                .collect()
        };
        wait_finished(waits).await;
        self.shared.save_or_warn();
        self.shared.retired.store(true, Ordering::SeqCst);
    }
}

impl Drop for JobRunner {
    /// Without `shutdown` (a panic, an early return): no run starts any more, the scheduler
    /// stops ticking; runs in progress are still followed and recorded.
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let mut scheduler = self.scheduler.clone();
            runtime.spawn(async move {
                let _ = scheduler.shutdown().await;
            });
        }
    }
}

/// Joins the non-empty parts with "; ".
fn sentence(parts: impl IntoIterator<Item = String>) -> String {
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::store::recorder::RecorderConfig;
    use crate::store::{self, Store, StoreUrl};

    const HOST: &str = "mini";
    /// Every test process carries `MIRRORCTL_JOB_TEST=<its temp dir>`: how cleanup finds them.
    const MARK: &str = "MIRRORCTL_JOB_TEST";

    struct Harness {
        dir: tempfile::TempDir,
        recorder: Recorder,
        store: Box<dyn Store>,
    }

    impl Harness {
        async fn new() -> Harness {
            let dir = tempfile::tempdir().unwrap();
            let url = StoreUrl::parse(&format!("sqlite://{}", dir.path().join("truth.db").display())).unwrap();
            let store = store::open(&url).await.unwrap();
            let config = RecorderConfig::new(dir.path().join("state"), HOST.into(), url);
            let (recorder, _) = Recorder::start(config).unwrap();
            Harness { dir, recorder, store }
        }

        fn state_dir(&self) -> PathBuf {
            self.dir.path().join("state")
        }

        fn mark(&self) -> String {
            self.dir.path().display().to_string()
        }

        fn spec(&self, script: &str) -> LaunchAgentSpec {
            LaunchAgentSpec {
                label: "ai.activemirror.test".into(),
                command: vec!["sh".into(), "-c".into(), script.into()],
                env: [(MARK.to_string(), self.mark())].into(),
                ..LaunchAgentSpec::default()
            }
        }

        async fn runner(&self) -> JobRunner {
            JobRunner::start(self.state_dir(), HOST.into(), self.recorder.clone())
                .await
                .unwrap()
        }

        /// The recorded runs of `name`, oldest first.
        async fn runs(&self, name: &str) -> Vec<JobRun> {
            let report = self.recorder.flush().await;
            assert_eq!(report.store_error, None);
            let mut runs = self.store.job_runs(HOST, name, 1000).await.unwrap();
            runs.reverse();
            runs
        }

        async fn wait_runs(
            &self,
            name: &str,
            what: &str,
            limit: Duration,
            mut done: impl FnMut(&[JobRun]) -> bool,
        ) -> Vec<JobRun> {
            let deadline = Instant::now() + limit;
            loop {
                let runs = self.runs(name).await;
                if done(&runs) {
                    return runs;
                }
                assert!(Instant::now() < deadline, "timed out waiting for {what}: {runs:#?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }

        fn saved(&self) -> SavedState {
            serde_json::from_slice(&fs::read(self.state_dir().join(STATE_FILE)).unwrap()).unwrap()
        }
    }

    impl Drop for Harness {
        /// Kills what a test left running (a failed assertion skips its shutdown): the runs
        /// recorded as running, and on Linux every process carrying the test's mark.
        fn drop(&mut self) {
            if let Ok(bytes) = fs::read(self.state_dir().join(STATE_FILE)) {
                if let Ok(saved) = serde_json::from_slice::<SavedState>(&bytes) {
                    for run in saved.agents.values().flat_map(|a| &a.running) {
                        process::stop(&run.identity, "SIGKILL", Duration::ZERO);
                    }
                }
            }
            #[cfg(target_os = "linux")]
            for (pid, _) in marked(&self.mark()) {
                if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
        }
    }

    fn desired(name: &str, spec: &LaunchAgentSpec) -> DesiredJob {
        DesiredJob {
            name: name.into(),
            spec: spec.clone(),
            hash: serde_json::to_string(spec).unwrap(),
        }
    }

    fn every_second() -> Option<Schedule> {
        Some(Schedule::Every(SpecDuration::from_secs(1)))
    }

    /// Live (not zombie) processes carrying `mark`, with their command names.
    #[cfg(target_os = "linux")]
    fn marked(mark: &str) -> Vec<(i32, String)> {
        let entry = format!("{MARK}={mark}");
        let Ok(proc) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        proc.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|b| *b == 0).any(|e| e == entry.as_bytes()))
            })
            .filter(|pid| !gone(*pid))
            .filter_map(|pid| {
                Some((
                    pid,
                    fs::read_to_string(format!("/proc/{pid}/comm")).ok()?.trim().to_string(),
                ))
            })
            .collect()
    }

    /// Whether a process has ended (a zombie counts as ended).
    fn gone(pid: i32) -> bool {
        #[cfg(target_os = "linux")]
        if let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) {
            let state = stat[stat.rfind(')').unwrap() + 1..].split_whitespace().next();
            return state == Some("Z");
        }
        let Some(pid) = rustix::process::Pid::from_raw(pid) else {
            return true;
        };
        rustix::process::test_kill_process(pid) == Err(rustix::io::Errno::SRCH)
    }

    async fn eventually(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn pids(runner: &JobRunner, name: &str) -> Vec<i32> {
        runner
            .status()
            .into_iter()
            .find(|s| s.name == name)
            .map(|s| s.pids)
            .unwrap_or_default()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn every_second_each_run_is_recorded_with_exit_code_and_output() {
        let h = Harness::new().await;
        let mut runner = h.runner().await;
        let mut spec = h.spec("echo tick; echo tock; exit 3");
        spec.schedule = every_second();
        let synced_ms = now_ms();
        let changes = runner.sync(Some("c1"), vec![desired("ticker", &spec)]).await.unwrap();
        assert_eq!(
            changes,
            [JobChange {
                kind: JobChangeKind::Created,
                name: "ticker".into(),
                detail: "scheduled every 1s".into()
            }]
        );
        let runs = h
            .wait_runs("ticker", "two runs", Duration::from_secs(5), |r| r.len() >= 2)
            .await;
        // Whole seconds, checked every half second by the scheduler: two runs in ~2.5 s.
        assert!(runs[1].started_ms - synced_ms < 2800, "{runs:#?}");
        for run in &runs[..2] {
            assert_eq!(run.trigger, "schedule");
            assert_eq!((run.exit_code, run.signal), (Some(3), None));
            assert_eq!(run.outcome, "failed");
            assert_eq!(run.output_tail, "tick\ntock", "only this run's output");
            assert_eq!((run.host.as_str(), run.label.as_str()), (HOST, "ai.activemirror.test"));
            assert_eq!(run.commit.as_deref(), Some("c1"));
            assert!(run.ended_ms >= run.started_ms);
        }
        let status = runner.status();
        assert_eq!(status.len(), 1);
        let last = status[0].last_run.clone().unwrap();
        assert_eq!((last.exit_code, last.outcome), (Some(3), Outcome::Failed));
        let next = status[0].next_run_ms.unwrap();
        assert!(next > now_ms() - 1000 && next <= now_ms() + 1000, "{next}");
        runner.shutdown(true).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn run_at_load_runs_at_once_in_its_own_working_dir() {
        let h = Harness::new().await;
        let mut runner = h.runner().await;
        let mut spec = h.spec("echo loaded; pwd");
        spec.run_at_load = true;
        let synced_ms = now_ms();
        let changes = runner.sync(None, vec![desired("loader", &spec)]).await.unwrap();
        assert!(
            changes[0]
                .detail
                .starts_with("no schedule: runs only at load; at load: started run ")
                && changes[0].detail.contains("(pid "),
            "{}",
            changes[0].detail
        );
        let runs = h
            .wait_runs("loader", "the run", Duration::from_secs(3), |r| !r.is_empty())
            .await;
        let run = &runs[0];
        assert!(run.started_ms - synced_ms < 500, "started at once");
        assert_eq!(
            (run.trigger.as_str(), run.outcome.as_str(), run.exit_code),
            ("at-load", "ok", Some(0))
        );
        let working_dir = h.state_dir().join("launch-agents/loader").canonicalize().unwrap();
        assert_eq!(run.output_tail, format!("loaded\n{}", working_dir.display()));
        assert_eq!(runner.status()[0].next_run_ms, None, "no schedule");

        // A run that cannot start is recorded as such.
        let mut broken = h.spec("");
        broken.command = vec!["no-such-program-mirrorctl".into()];
        broken.run_at_load = true;
        let changes = runner
            .sync(None, vec![desired("loader", &spec), desired("broken", &broken)])
            .await
            .unwrap();
        assert_eq!(
            changes[0].detail,
            "no schedule: runs only at load; at load: could not start: program `no-such-program-mirrorctl` not found on PATH"
        );
        let runs = h.runs("broken").await;
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].outcome, "start-failed");
        assert_eq!(runs[0].detail, "program `no-such-program-mirrorctl` not found on PATH");
        runner.shutdown(true).await;
    }

    #[cfg(target_os = "linux")]
    #[tokio::test(flavor = "multi_thread")]
    async fn a_timeout_stops_the_whole_process_group() {
        let h = Harness::new().await;
        let mut runner = h.runner().await;
        let mut spec = h.spec("sleep 30 & sleep 30");
        spec.run_at_load = true;
        spec.timeout = Some(SpecDuration::from_secs(1));
        runner.sync(None, vec![desired("slow", &spec)]).await.unwrap();
        let mut sleeps = Vec::new();
        eventually("both sleeps", Duration::from_secs(3), || {
            sleeps = marked(&h.mark())
                .into_iter()
                .filter(|(_, c)| c == "sleep")
                .map(|(p, _)| p)
                .collect();
            sleeps.len() == 2
        })
        .await;
        let runs = h
            .wait_runs("slow", "the run", Duration::from_secs(5), |r| !r.is_empty())
            .await;
        let run = &runs[0];
        assert_eq!(run.outcome, "timeout");
        assert_eq!(
            (run.exit_code, run.signal),
            (None, Some(15)),
            "ended by the stop signal"
        );
        assert!(run.detail.contains("timeout of 1s"), "{}", run.detail);
        let took = run.ended_ms - run.started_ms;
        assert!((1000..3000).contains(&took), "{took} ms");
        for pid in sleeps {
            assert!(gone(pid), "sleep {pid} of the group survived");
        }
        assert!(marked(&h.mark()).is_empty());
        assert!(runner.status()[0].pids.is_empty());
        runner.shutdown(true).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn forbid_skips_a_run_due_while_one_is_running() {
        let h = Harness::new().await;
        let mut runner = h.runner().await;
        let mut spec = h.spec("sleep 2; echo done");
        spec.schedule = every_second();
        spec.run_at_load = true;
        runner.sync(None, vec![desired("single", &spec)]).await.unwrap();
        let runs = h
            .wait_runs(
                "single",
                "a finished run and a skipped one",
                Duration::from_secs(6),
                |runs| {
                    assert!(pids(&runner, "single").len() <= 1, "never two at once");
                    runs.iter().any(|r| r.outcome == "ok") && runs.iter().any(|r| r.outcome == "skipped")
                },
            )
            .await;
        let first = &runs[0];
        assert_eq!((first.trigger.as_str(), first.outcome.as_str()), ("at-load", "ok"));
        assert_eq!(first.output_tail, "done");
        for skipped in runs.iter().filter(|r| r.outcome == "skipped") {
            assert_eq!(skipped.trigger, "schedule");
            assert!(skipped.started_ms >= first.started_ms && skipped.started_ms <= first.ended_ms);
            assert!(skipped.detail.contains("is still running"), "{}", skipped.detail);
        }
        assert!(runner.status()[0].last_skipped_ms.is_some());
        runner.shutdown(true).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn allow_lets_runs_overlap() {
        let h = Harness::new().await;
        let mut runner = h.runner().await;
        let mut spec = h.spec("sleep 1.7");
        spec.schedule = every_second();
        spec.run_at_load = true;
        spec.concurrency = Concurrency::Allow;
        runner.sync(None, vec![desired("many", &spec)]).await.unwrap();
        eventually("two runs at once", Duration::from_secs(3), || {
            pids(&runner, "many").len() == 2
        })
        .await;
        runner.shutdown(true).await;
        let runs = h.runs("many").await;
        assert!(runs.len() >= 2, "{runs:#?}");
        assert!(runs[1].started_ms < runs[0].ended_ms, "overlapping: {runs:#?}");
        assert!(runs.iter().all(|r| r.outcome != "skipped"));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn replace_stops_the_running_run_then_starts_the_new_one() {
        let h = Harness::new().await;
        let mut runner = h.runner().await;
        let mut spec = h.spec("sleep 30");
        spec.schedule = every_second();
        spec.run_at_load = true;
        spec.concurrency = Concurrency::Replace;
        runner.sync(None, vec![desired("fresh", &spec)]).await.unwrap();
        let first = pids(&runner, "fresh");
        assert_eq!(first.len(), 1);
        let runs = h
            .wait_runs("fresh", "the replaced run", Duration::from_secs(4), |r| !r.is_empty())
            .await;
        assert_eq!(
            (runs[0].trigger.as_str(), runs[0].outcome.as_str()),
            ("at-load", "stopped")
        );
        assert!(runs[0].detail.contains("replaced"), "{}", runs[0].detail);
        assert!(gone(first[0]));
        eventually("the new run", Duration::from_secs(2), || {
            let now = pids(&runner, "fresh");
            now.len() == 1 && now != first
        })
        .await;
        runner.shutdown(true).await;
        let runs = h.runs("fresh").await;
        assert!(runs.len() >= 2, "{runs:#?}");
        assert!(runs.iter().all(|r| r.outcome == "stopped"), "{runs:#?}");
        assert!(runs.last().unwrap().detail.contains("shut down"));
        for pair in runs.windows(2) {
            assert!(
                pair[1].started_ms >= pair[0].ended_ms,
                "the old run ended before the new one started"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_missed_run_runs_once_at_start_unless_catch_up_is_off() {
        let h = Harness::new().await;
        let hour = 3_600_000;
        let mut catcher = h.spec("echo caught up");
        catcher.schedule = Some(Schedule::Every(SpecDuration::from_secs(3600)));
        let mut no_catch = catcher.clone();
        no_catch.catch_up = Some(false);
        let agents = [("catcher", &catcher), ("no-catch", &no_catch)];
        // The daemon was down for two intervals.
        let saved = SavedState {
            host: HOST.into(),
            agents: agents
                .iter()
                .map(|(name, spec)| {
                    let agent = SavedAgent {
                        label: spec.label.clone(),
                        hash: desired(name, spec).hash,
                        last_scheduled_ms: Some(now_ms() - 2 * hour - 1000),
                        ..SavedAgent::default()
                    };
                    (name.to_string(), agent)
                })
                .collect(),
        };
        fs::create_dir_all(h.state_dir()).unwrap();
        fs::write(h.state_dir().join(STATE_FILE), serde_json::to_vec(&saved).unwrap()).unwrap();
        let all = || {
            agents
                .iter()
                .map(|(name, spec)| desired(name, spec))
                .collect::<Vec<_>>()
        };

        let mut runner = h.runner().await;
        let changes = runner.sync(Some("c1"), all()).await.unwrap();
        assert!(changes.is_empty(), "nothing changed: {changes:?}");
        let runs = h
            .wait_runs("catcher", "the catch-up", Duration::from_secs(3), |r| !r.is_empty())
            .await;
        assert_eq!((runs[0].trigger.as_str(), runs[0].outcome.as_str()), ("catch-up", "ok"));
        assert_eq!(runs[0].output_tail, "caught up");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(h.runs("catcher").await.len(), 1, "two missed runs run once");
        assert!(h.runs("no-catch").await.is_empty(), "catchUp: false");

        // The catch-up counts as the run that was due: a restart has nothing to catch up.
        runner.shutdown(false).await;
        let mut runner = h.runner().await;
        runner.sync(Some("c1"), all()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(h.runs("catcher").await.len(), 1);
        runner.shutdown(true).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_agent_leaving_the_desired_state_is_unscheduled_and_its_run_stopped() {
        let h = Harness::new().await;
        let mut runner = h.runner().await;
        let mut spec = h.spec("sleep 30");
        spec.schedule = every_second();
        spec.run_at_load = true;
        runner.sync(Some("c1"), vec![desired("leaver", &spec)]).await.unwrap();
        let pid = pids(&runner, "leaver")[0];
        let changes = runner.sync(Some("c2"), vec![]).await.unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!(
            (changes[0].kind, changes[0].name.as_str()),
            (JobChangeKind::Pruned, "leaver")
        );
        assert!(
            changes[0].detail.starts_with("unscheduled; stopped run "),
            "{}",
            changes[0].detail
        );
        assert!(
            changes[0].detail.contains(&format!("(pid {pid})")),
            "{}",
            changes[0].detail
        );
        assert!(gone(pid));
        assert!(runner.status().is_empty());
        assert!(h.saved().agents.is_empty(), "no longer owned");
        let runs = h.runs("leaver").await;
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].outcome, "stopped");
        assert!(runs[0].detail.contains("left the desired state"), "{}", runs[0].detail);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(h.runs("leaver").await.len(), 1, "unscheduled");
        runner.shutdown(true).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_changed_spec_waits_for_the_next_run_and_suspend_stops_the_run() {
        let h = Harness::new().await;
        let mut runner = h.runner().await;
        let mut spec = h.spec("sleep 30");
        spec.schedule = every_second();
        spec.run_at_load = true;
        runner.sync(Some("c1"), vec![desired("job", &spec)]).await.unwrap();
        let pid = pids(&runner, "job")[0];

        spec.env.insert("VERSION".into(), "2".into());
        let changes = runner.sync(Some("c2"), vec![desired("job", &spec)]).await.unwrap();
        assert_eq!(changes[0].kind, JobChangeKind::Updated);
        assert!(
            changes[0].detail.starts_with("takes effect with the next run; run "),
            "{}",
            changes[0].detail
        );
        assert!(
            changes[0].detail.ends_with(&format!("(pid {pid}) left to finish")),
            "{}",
            changes[0].detail
        );
        assert_eq!(pids(&runner, "job"), [pid], "left running");

        spec.suspend = true;
        let changes = runner.sync(Some("c3"), vec![desired("job", &spec)]).await.unwrap();
        assert_eq!(changes[0].kind, JobChangeKind::Suspended);
        assert!(
            changes[0].detail.contains(&format!("(pid {pid})")),
            "{}",
            changes[0].detail
        );
        assert!(gone(pid));
        let status = &runner.status()[0];
        assert!(status.suspended && status.pids.is_empty() && status.next_run_ms.is_none());
        let runs = h.runs("job").await;
        let stopped = runs.iter().find(|r| r.outcome == "stopped").unwrap();
        assert!(stopped.detail.contains("suspended"), "{}", stopped.detail);
        assert_eq!(
            stopped.commit.as_deref(),
            Some("c1"),
            "recorded under the commit it started from"
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(h.runs("job").await.len(), runs.len(), "nothing runs while suspended");

        spec.suspend = false;
        let changes = runner.sync(Some("c4"), vec![desired("job", &spec)]).await.unwrap();
        assert_eq!(changes[0].kind, JobChangeKind::Updated);
        assert!(
            changes[0]
                .detail
                .starts_with("resumed; scheduled every 1s; at load: started run "),
            "{}",
            changes[0].detail
        );
        assert_eq!(pids(&runner, "job").len(), 1);
        runner.shutdown(true).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_restarted_runner_adopts_the_running_run_and_starts_no_second_one() {
        let h = Harness::new().await;
        let mut spec = h.spec("sleep 30");
        spec.run_at_load = true;
        let mut runner = h.runner().await;
        runner.sync(Some("c1"), vec![desired("keeper", &spec)]).await.unwrap();
        let pid = pids(&runner, "keeper")[0];
        runner.shutdown(false).await;
        assert!(!gone(pid), "left to finish");
        let saved = h.saved();
        assert_eq!(saved.agents["keeper"].running.len(), 1);
        assert_eq!(saved.agents["keeper"].running[0].identity.pid, pid);

        let mut runner = h.runner().await;
        assert_eq!(pids(&runner, "keeper"), [pid], "adopted at start");
        let changes = runner.sync(Some("c1"), vec![desired("keeper", &spec)]).await.unwrap();
        assert!(changes.is_empty(), "{changes:?}");
        let runs = h
            .wait_runs("keeper", "the skipped load", Duration::from_secs(2), |r| !r.is_empty())
            .await;
        assert_eq!(
            (runs[0].trigger.as_str(), runs[0].outcome.as_str()),
            ("at-load", "skipped")
        );
        assert!(
            runs[0].detail.contains(&format!("(pid {pid}) is still running")),
            "{}",
            runs[0].detail
        );
        assert_eq!(pids(&runner, "keeper"), [pid]);
        #[cfg(target_os = "linux")]
        assert_eq!(marked(&h.mark()).iter().filter(|(_, c)| c == "sleep").count(), 1);

        runner.shutdown(true).await;
        assert!(gone(pid));
        let runs = h.runs("keeper").await;
        assert_eq!(runs.len(), 2);
        assert_eq!(
            (runs[0].trigger.as_str(), runs[0].outcome.as_str()),
            ("at-load", "stopped")
        );
        assert_eq!(runs[0].signal, Some(15));
        assert!(h.saved().agents["keeper"].running.is_empty());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_cron_schedule_with_seconds_runs() {
        let h = Harness::new().await;
        let mut runner = h.runner().await;
        let mut spec = h.spec("echo cron");
        spec.schedule = Some(Schedule::Cron("* * * * * *".parse().unwrap()));
        let changes = runner.sync(None, vec![desired("cron", &spec)]).await.unwrap();
        assert_eq!(changes[0].detail, "scheduled cron `* * * * * *`");
        let next = runner.status()[0].next_run_ms.unwrap();
        assert!(next > now_ms() - 1000 && next <= now_ms() + 1000, "{next}");
        let runs = h
            .wait_runs("cron", "a run", Duration::from_secs(3), |r| !r.is_empty())
            .await;
        assert_eq!((runs[0].trigger.as_str(), runs[0].outcome.as_str()), ("schedule", "ok"));
        runner.shutdown(true).await;
    }

    #[test]
    fn missed_runs_per_schedule() {
        let hour = 3_600_000;
        let now = 1_700_000_000_000;
        let hourly = Schedule::Every(SpecDuration::from_secs(3600));
        assert!(missed(&hourly, now - 2 * hour, now));
        assert!(missed(&hourly, now - hour, now));
        assert!(!missed(&hourly, now - hour + 1, now));
        // 2023-11-14T22:13:20Z: the next minute begins 40 s later (in any whole-minute time zone).
        let minutely: CronExpr = "* * * * *".parse().unwrap();
        let cron = scheduler_cron(&minutely).unwrap();
        assert_eq!(clock::next_cron_ms(&cron, now), Some(now + 40_000));
        assert!(missed(&Schedule::Cron(minutely.clone()), now, now + 40_000));
        assert!(!missed(&Schedule::Cron(minutely.clone()), now, now + 39_999));
        assert_eq!(with_seconds(&minutely), "0 * * * * *");
        assert_eq!(interval(SpecDuration::from_millis(1500)), Duration::from_secs(2));
        assert_eq!(interval(SpecDuration::from_millis(200)), Duration::from_secs(1));
    }

    #[test]
    fn the_output_tail_is_the_end_of_this_run() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("job.log");
        let earlier = "an earlier run\n";
        let lines: String = (1..=30).map(|n| format!("line {n}\n")).collect();
        fs::write(&log, format!("{earlier}{lines}")).unwrap();
        let expected: Vec<String> = (11..=30).map(|n| format!("line {n}")).collect();
        assert_eq!(output_tail(&log, earlier.len() as u64), expected.join("\n"));
        assert_eq!(output_tail(&log, earlier.len() as u64 + lines.len() as u64), "");
        fs::write(&log, format!("{}\nlast\n", "x".repeat(10_000))).unwrap();
        assert_eq!(output_tail(&log, 0), "last", "a cut line is dropped");
        fs::write(&log, "y".repeat(10_000)).unwrap();
        assert_eq!(output_tail(&log, 0).len(), 4096, "at most 4 KiB");
        assert_eq!(output_tail(&dir.path().join("missing.log"), 0), "");
    }
}
