//! The runner: starts with what `launch-agents.json` says this host owns, brings its launch
//! agents in line with each desired state (`sync`), reports their status and shuts down.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio_cron_scheduler::JobScheduler;

use super::agents::{Agent, Shared};
use super::run::{request_stop, wait_finished, StopCause};
use super::saved_state::{SavedAgent, SavedState};
use super::schedule::next_run_ms;
use super::{DesiredJob, JobChange, JobChangeKind, JobError, JobStatus, RunObserver, Trigger};
use crate::report::now_ms;
use crate::spec::launch_agent::LaunchAgentSpec;
use crate::store::Recorder;

/// Runs this host's launch agents. See the module documentation.
pub struct JobRunner {
    pub(super) shared: Arc<Shared>,
    pub(super) scheduler: JobScheduler,
}

impl JobRunner {
    /// Loads `<state dir>/launch-agents.json` (what this host owns: name, hash, last scheduled
    /// run time, last run result, identity of a running instance), adopts running instances
    /// that are still there (recording the ones that ended meanwhile), and starts the scheduler
    /// on the current tokio runtime. Nothing is scheduled before the first `sync`.
    pub async fn start(state_dir: PathBuf, host: String, recorder: Recorder) -> Result<JobRunner, JobError> {
        let saved = SavedState::load(&state_dir)?;
        let scheduler = JobScheduler::new()
            .await
            .map_err(|e| JobError::StartScheduler { message: e.to_string() })?;
        scheduler
            .start()
            .await
            .map_err(|e| JobError::StartScheduler { message: e.to_string() })?;
        let path = crate::state::Layout::of(&state_dir).launch_agents_state();
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
        let owned = saved.owned_by(&shared.host, &path);
        {
            let mut agents = shared.agents();
            for (name, saved) in owned {
                let agent = shared.adopt(&name, saved);
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
        let Some(previous) = self.take_in(commit, &name, &spec, &hash) else {
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
        let Previous {
            synced,
            hash: old_hash,
            suspended: was_suspended,
            spec: old_spec,
        } = previous;
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
            let details = self.load(&name, &spec, synced).await?;
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

    /// Takes the new spec of `name` in (a new agent is added); returns what was there before.
    fn take_in(&self, commit: Option<&str>, name: &str, spec: &LaunchAgentSpec, hash: &str) -> Option<Previous> {
        let mut agents = self.shared.agents();
        let previous = agents.get(name).map(|a| Previous {
            synced: a.synced,
            hash: a.saved.hash.clone(),
            suspended: a.saved.suspended,
            spec: a.spec.clone(),
        });
        let agent = agents.entry(name.to_string()).or_insert_with(|| {
            Agent::from_saved(SavedAgent {
                label: spec.label.clone(),
                hash: hash.to_string(),
                ..SavedAgent::default()
            })
        });
        agent.saved.label = spec.label.clone();
        agent.saved.hash = hash.to_string();
        agent.saved.suspended = spec.suspend;
        agent.spec = Some(spec.clone());
        agent.commit = commit.map(String::from);
        agent.synced = true;
        previous
    }

    /// Loads an agent, at the first sync of this runner (`synced` false) or when resumed:
    /// schedules it and runs it at load, or once to catch up a run missed while the daemon
    /// was down. Returns what was done.
    async fn load(&self, name: &str, spec: &LaunchAgentSpec, synced: bool) -> Result<Vec<String>, JobError> {
        let load = if spec.run_at_load {
            Some(Trigger::AtLoad)
        } else if !synced && spec.catch_up() && self.missed_while_down(name, spec.schedule.as_ref()) {
            Some(Trigger::CatchUp)
        } else {
            None
        };
        let mut details = vec![self.schedule(name, spec.schedule.as_ref()).await?];
        if let Some(trigger) = load {
            let when = match trigger {
                Trigger::CatchUp => "a run was missed while the daemon was down",
                _ => "at load",
            };
            details.extend(
                self.shared
                    .due(name, None, trigger)
                    .map(|what| format!("{when}: {what}")),
            );
        }
        Ok(details)
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

    /// Whether `<state dir>/launch-agents.json` lists launch agents this host owns (a runner
    /// must start to adopt or prune them even when the desired state has none).
    pub fn owns_any(state_dir: &Path) -> bool {
        SavedState::lists_any(state_dir)
    }

    /// Tells `observer` of every run recorded from now on.
    pub fn observe_runs(&self, observer: RunObserver) {
        *self.shared.observer.lock().unwrap_or_else(|e| e.into_inner()) = Some(observer);
    }

    /// Per agent: label, schedule, running pids, last run, next run time. By name.
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

/// What an agent was before a sync took its new spec in.
struct Previous {
    /// Whether a sync of this runner had brought it in line.
    synced: bool,
    hash: String,
    suspended: bool,
    spec: Option<LaunchAgentSpec>,
}

/// Joins the non-empty parts with "; ".
fn sentence(parts: impl IntoIterator<Item = String>) -> String {
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}
