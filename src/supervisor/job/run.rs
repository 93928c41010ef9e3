//! The life of one run: made due by a tick, at load or to catch up (and then started, skipped
//! or replacing the running one, as the agent's concurrency says), its process started,
//! followed until it ends, times out or is stopped, and recorded with its output tail. Also
//! the adoption of runs an earlier daemon left going.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::AbortHandle;

use super::agents::{Agent, Shared};
use super::saved_state::{RunningRun, SavedAgent};
use super::{LastRun, Outcome, Trigger};
use crate::report::now_ms;
use crate::spec::common::Duration as SpecDuration;
use crate::spec::launch_agent::{Concurrency, LaunchAgentSpec};
use crate::store::{new_id, JobRun, Record};
use crate::supervisor::process::{self, Exit, Liveness, ProcessIdentity, SpawnSpec, StopOutcome};
use crate::supervisor::watch;

/// A run's output tail: at most this many lines ...
const TAIL_LINES: usize = 20;
/// ... and at most this many bytes.
const TAIL_BYTES: u64 = 4096;

/// A running instance and the task that follows it.
pub(super) struct Instance {
    pub(super) run: RunningRun,
    /// Asks the task to stop the run's process group.
    pub(super) stop: Option<oneshot::Sender<StopCause>>,
    /// Closes when the task is over (done or aborted): `changed()` then fails.
    pub(super) finished: tokio::sync::watch::Receiver<()>,
    pub(super) task: AbortHandle,
}

/// Why the runner stops a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum StopCause {
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

impl Shared {
    /// A run of `name` is due. Starts it, skips it or replaces the running one, as the agent's
    /// concurrency says. `generation` is the scheduler job's (None for at-load and catch-up).
    /// Returns what it did, in words; None when nothing was due (a stale tick, suspended, closed).
    pub(super) fn due(self: &Arc<Self>, name: &str, generation: Option<u64>, trigger: Trigger) -> Option<String> {
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
                let dir = crate::state::Layout::of(&self.state_dir).launch_agent_dir(name);
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

    /// Takes over an agent from `launch-agents.json`: follows its runs that are still going and
    /// records the ones that ended while no runner followed them.
    pub(super) fn adopt(self: &Arc<Self>, name: &str, mut saved: SavedAgent) -> Agent {
        let runs = std::mem::take(&mut saved.running);
        let mut agent = Agent::from_saved(saved);
        for run in runs {
            if process::liveness(&run.identity) == Liveness::Running {
                tracing::info!(agent = %name, pid = run.identity.pid, run = %run.id, "launch agent run adopted");
                agent.running.push(self.follow(name, run));
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
                output_tail: output_tail(&self.log_path(name), run.log_offset),
            };
            agent.saved.last_run = Some(self.record(name, record));
        }
        agent
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
pub(super) fn request_stop(running: &mut [Instance], cause: StopCause) -> Vec<tokio::sync::watch::Receiver<()>> {
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

pub(super) async fn wait_finished(mut waits: Vec<tokio::sync::watch::Receiver<()>>) {
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
pub(super) fn output_tail(log: &Path, offset: u64) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
