//! Timers and schedules: the backoff timer for held-back restarts, the drift-report and
//! memory-rules schedules, and the launch-agent runner.

use super::*;

impl Daemon {
    pub(super) fn resync_interval(&self) -> Duration {
        self.current
            .as_ref()
            .map(|s| s.controller().resync().as_std())
            .unwrap_or(Duration::from_secs(30))
            .max(Duration::from_secs(1))
    }

    /// Wakes the loop when the earliest held-back restart is due. A pass over one service knows
    /// nothing of the others' timers, so a timer is only ever replaced by an earlier one; one
    /// that fires early or needlessly costs a pass that finds nothing to do.
    pub(super) fn arm_backoff(&mut self, retry_at: Option<i64>) {
        let Some(at) = retry_at else { return };
        if let Some((due, timer)) = &self.backoff_timer {
            if *due <= at && !timer.is_finished() {
                return;
            }
            timer.abort();
        }
        let wait = Duration::from_millis((at - now_ms()).max(0) as u64);
        let events = self.events.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let _ = events.send(Event::RestartDue);
        });
        self.backoff_timer = Some((at, task.abort_handle()));
    }

    /// Arms the memory-rules schedule of the state in force (an `every` schedule runs its first
    /// pass at once), or disarms it when the state has no MemoryRule.
    pub(super) fn sync_memory_schedule(&mut self) {
        let schedule = self
            .current
            .as_ref()
            .filter(|s| memory::has_rules(s))
            .map(|s| s.controller().memory_schedule());
        let wanted = schedule.as_ref().map(|s| format!("{s:?}"));
        if wanted == self.memory_timer.as_ref().map(|(armed, _)| armed.clone()) {
            return;
        }
        if let Some((_, timer)) = self.memory_timer.take() {
            timer.abort();
        }
        if let Some(schedule) = schedule {
            self.arm_memory_timer(&schedule, true);
        }
    }

    pub(super) fn arm_memory_timer(&mut self, schedule: &Schedule, first: bool) {
        let wait = match schedule {
            Schedule::Every(_) if first => Duration::ZERO,
            Schedule::Every(every) => every.as_std(),
            Schedule::Cron(cron) => {
                let now = chrono::Local::now();
                let Ok(next) = cron.schedule().find_next_occurrence(&now, false) else {
                    tracing::warn!(cron = cron.as_str(), "the memory-rules schedule never fires");
                    return;
                };
                (next - now).to_std().unwrap_or_default()
            }
        };
        let events = self.events.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let _ = events.send(Event::MemoryRulesDue);
        });
        self.memory_timer = Some((format!("{schedule:?}"), task.abort_handle()));
    }

    /// Runs the MemoryRules of the state in force over the truth store (beside the loop: a pass
    /// over a million items takes seconds), then arms the next run.
    pub(super) fn memory_rules_due(&mut self) {
        self.memory_timer = None;
        let Some(state) = self.current.clone().filter(|s| memory::has_rules(s)) else {
            return;
        };
        let store = self.config.context.store.clone();
        let recorder = self.recorder.clone();
        let next = state.controller().memory_schedule();
        tokio::spawn(async move {
            let run_id = crate::store::new_id();
            let outcome = memory::apply(&state, &store, &recorder, &run_id).await;
            match (&outcome.error, &outcome.skipped) {
                (Some(error), _) => tracing::warn!(%error, "memory rules"),
                (None, Some(why)) => tracing::info!(%why, "memory rules skipped"),
                (None, None) => {
                    for m in outcome.moves.iter().filter(|m| m.count > 0) {
                        tracing::info!(rule = %m.rule, moved = m.count, from = %m.from_tier, to = %m.to_tier, run = %run_id, "memory rule applied");
                    }
                }
            }
        });
        self.arm_memory_timer(&next, false);
    }

    /// Arms the drift-report cron and notes the resync interval of the state in force.
    pub(super) fn sync_schedules(&mut self) {
        self.sync_memory_schedule();
        let cron = self
            .current
            .as_ref()
            .and_then(|s| s.controller().drift_report_cron().cloned());
        let armed = self.report_timer.as_ref().map(|(expr, _)| expr.clone());
        if cron.as_ref().map(|c| c.as_str().to_string()) == armed {
            return;
        }
        if let Some((_, timer)) = self.report_timer.take() {
            timer.abort();
        }
        let Some(cron) = cron else { return };
        let schedule = cron.schedule();
        let now = chrono::Local::now();
        let Ok(next) = schedule.find_next_occurrence(&now, false) else {
            tracing::warn!(cron = cron.as_str(), "the drift-report schedule never fires");
            return;
        };
        let wait = (next - now).to_std().unwrap_or_default();
        let events = self.events.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let _ = events.send(Event::DriftReportDue);
        });
        self.report_timer = Some((cron.as_str().to_string(), task.abort_handle()));
    }

    /// Brings the launch agents in line with the state now in force; receipts for what changed.
    pub(super) fn sync_jobs(&self, reconciler: &Reconciler, state: &DesiredState) {
        let desired = reconciler.desired_jobs(state);
        let commit = state.commit.clone();
        let recorder = reconciler.recorder().clone();
        let jobs = self.jobs.clone();
        let (context, metrics) = (self.config.context.clone(), self.metrics.clone());
        let shutting_down = self.shutting_down.is_some();
        tokio::spawn(async move {
            let mut guard = jobs.lock().await;
            if guard.is_none() && !desired.is_empty() && !shutting_down {
                match start_jobs(&context, recorder.clone(), metrics).await {
                    Ok(runner) => *guard = Some(runner),
                    Err(e) => {
                        tracing::warn!(error = %e, "starting the launch-agent runner failed");
                        return;
                    }
                }
            }
            let Some(runner) = guard.as_mut() else { return };
            match runner.sync(commit.as_deref(), desired).await {
                Ok(changes) => {
                    for change in changes {
                        tracing::info!(agent = %change.name, change = change.kind.as_str(), detail = %change.detail, "launch agent");
                        recorder.receipt(crate::store::ReceiptDraft {
                            run_id: None,
                            commit: commit.clone(),
                            kind: Kind::LaunchAgent.to_string(),
                            name: change.name.clone(),
                            action: change.kind.as_str().to_string(),
                            reason: change.detail.clone(),
                            detail: serde_json::json!({"ok": true, "detail": change.detail}).to_string(),
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "syncing launch agents failed"),
            }
        });
    }
}

pub(super) async fn start_jobs(
    context: &Context,
    recorder: crate::store::Recorder,
    metrics: Arc<Metrics>,
) -> Result<JobRunner, DaemonError> {
    let runner = JobRunner::start(context.state_dir.clone(), context.host.clone(), recorder).await?;
    runner.observe_runs(Arc::new(move |label, outcome| metrics.job_run(label, outcome)));
    Ok(runner)
}

/// How often the loop tells /healthz it is alive when nothing happens.
pub(super) const HEARTBEAT: Duration = Duration::from_secs(10);

/// Markdown drift reports kept in `<state dir>/reports/`.
pub(super) const REPORTS_KEPT: usize = 200;
