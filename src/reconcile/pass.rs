//! The pass itself, step by step: read, observe, plan, apply (each action said as it starts and
//! ends), verify, record (run, receipts, drift report stored only when it differs).

use super::*;

impl Reconciler {
    /// One pass: observe -> plan -> (dry-run stops here) -> apply -> verify -> record. Never
    /// waits for the truth store (see [`Reconciler::flush`]).
    pub fn pass(&mut self, input: PassInput, options: &PassOptions) -> PassOutcome {
        self.pass_reporting(input, options, &mut |_| {})
    }

    /// A pass that tells `progress` each action as it starts (`→ ...`) and ends (`✓ ...` or
    /// `✗ ...`), and stops before the next action once [`interrupt`] was called (SIGINT): what
    /// was done is recorded, the rest is reported as not done.
    pub fn pass_reporting(
        &mut self,
        input: PassInput,
        options: &PassOptions,
        progress: &mut dyn FnMut(String),
    ) -> PassOutcome {
        let run = Run {
            context: self.context.clone(),
            recorder: self.recorder.clone(),
            id: new_id(),
            started_ms: now_ms(),
            options: options.clone(),
        };
        let PassInput {
            desired: source,
            extra_drift,
            only,
            operation,
            probes,
        } = input;
        let (state, commit) = match source {
            Ok(state) => {
                let commit = state.commit.clone();
                (state, commit)
            }
            Err(error) => return run.nothing_applied(error, extra_drift),
        };
        run.recorder
            .record(run_started(&run.id, &run.context, &commit, options, run.started_ms));

        // A pass over one service renders and observes that one only (milliseconds at any size).
        let selected = |id: &ResourceId| only.as_ref().is_none_or(|only| only == id);
        let policies = policies::PolicyPlan::of(&state, &run.context.state_dir);
        let desired = desired_services(
            &state,
            &self.key,
            &run.context.state_dir,
            &run.context.host,
            &policies,
            &selected,
        );
        let asked = Asked {
            only: only.as_ref(),
            operation: operation.as_ref(),
            probes: &probes,
        };
        let plan = self.plan(&state, &commit, &desired, &asked, options);

        let mut applied = Vec::new();
        let mut error = plan.refused.clone();
        if !options.dry_run && plan.refused.is_none() {
            error = self.apply_plan(&run, &commit, &plan, &desired, &mut applied, progress);
            record_failures(&run.context, &applied, &desired, only.is_none(), &commit);
            if let Err(e) = refresh_unchanged(&plan, &desired, &mut self.inventory, &run.recorder) {
                error.get_or_insert(e.to_string());
            }
            // An interrupted pass did not apply the commit: nothing of it is recorded as in force.
            if only.is_none() && !interrupted() {
                if let Some(e) = self.record_in_force(&run, &state, &commit, &policies, &desired, &applied) {
                    error.get_or_insert(e);
                }
            }
            rotate_logs(&run.context.state_dir, &desired);
        }

        let items = report_items(&run.context, extra_drift, &plan, &desired, &applied);
        let report = drift_report(&run.context, &commit, &run.id, options, run.started_ms, items);
        run.recorder
            .set_report_retention(state.controller().report_retention().as_std());
        let report = store_report(&run.context, &run.recorder, report, options, only.is_none());
        let outcome = match (&error, options.dry_run, plan.pending().count()) {
            (Some(_), _, _) => "failed",
            (None, true, 0) | (None, false, _) => "converged",
            (None, true, _) => "changes-pending",
        };
        run.recorder.record(run_finished(&run.id, outcome, plan.summary()));
        PassOutcome {
            commit,
            plan: Some(plan),
            applied,
            error,
            policies: policies.new_versions,
            ..PassOutcome::reported(report)
        }
    }

    /// Observe what runs, plan against the desired services, then apply the overrides a person
    /// asked for (`stop`, `start`, `restart`) and the suspended resources.
    fn plan(
        &mut self,
        state: &DesiredState,
        commit: &Option<String>,
        desired: &[DesiredService],
        asked: &Asked,
        options: &PassOptions,
    ) -> Plan {
        let selected = |id: &ResourceId| asked.only.is_none_or(|only| only == id);
        let owned = observe(&self.inventory, desired, asked.probes, &mut self.exits, &selected, true);
        let controller = state.controller();
        let mut plan = plan::plan(PlanInput {
            commit: commit.clone(),
            desired: desired.iter().map(|d| d.item.clone()).collect(),
            owned,
            max_prune_fraction: controller.prune_max_fraction(),
            allow_mass_prune: options.allow_mass_prune || asked.only.is_some(),
            now_ms: now_ms(),
        });
        let suspended: Vec<ResourceId> = desired
            .iter()
            .filter(|d| d.spec.suspend)
            .map(|d| d.item.id.clone())
            .collect();
        overrides::apply_to_plan(&mut plan, &stopped_of(desired), &suspended, asked.operation, now_ms());
        plan
    }

    /// Carries out the plan's pending actions in order, each said as it starts and ends and
    /// receipted; a resource whose dependency failed is not started. Stops between actions on
    /// SIGINT. The error, if the pass did not converge.
    fn apply_plan(
        &mut self,
        run: &Run,
        commit: &Option<String>,
        plan: &Plan,
        desired: &[DesiredService],
        applied: &mut Vec<Applied>,
        progress: &mut dyn FnMut(String),
    ) -> Option<String> {
        let specs: BTreeMap<&ResourceId, &DesiredService> = desired.iter().map(|d| (&d.item.id, d)).collect();
        let mut failed: Vec<ResourceId> = Vec::new();
        let total = plan.pending().count();
        for (done, change) in plan.pending().enumerate() {
            let id = ResourceId::new(change.kind, change.name.clone());
            if interrupted() {
                return Some(format!(
                    "interrupted (SIGINT) after {done} of {total} action(s); the rest was not done: run the pass again to finish"
                ));
            }
            progress(format!("→ {id}: {} ({})", change.action.as_str(), change.reason));
            let began = std::time::Instant::now();
            let blocked = specs
                .get(&id)
                .and_then(|d| d.item.depends_on.iter().find(|dep| failed.contains(dep)))
                .cloned();
            let result = match blocked {
                Some(dep) => Err(format!("not started: its dependency {dep} failed")),
                None => {
                    let (key, inventory, desired) = (&self.key, &mut self.inventory, specs.get(&id).copied());
                    let (context, recorder) = (&run.context, &run.recorder);
                    let apply = || apply_change(context, key, change.action, &id, desired, inventory, recorder);
                    with_still_waiting_lines(apply, &mut |waited| {
                        progress(format!(
                            "… {id}: {} still in progress ({waited} s)",
                            change.action.as_str()
                        ))
                    })
                }
            };
            let (ok, detail) = match result {
                Ok(detail) => (true, detail),
                Err(detail) => {
                    failed.push(id.clone());
                    (false, detail)
                }
            };
            let took = began.elapsed().as_secs_f64();
            let mark = if ok { "✓" } else { "✗" };
            progress(format!("{mark} {id}: {} ({took:.1} s)", detail.trim_end_matches("; ")));
            run.recorder.receipt(ReceiptDraft {
                run_id: Some(run.id.clone()),
                commit: commit.clone(),
                kind: change.kind.to_string(),
                name: change.name.clone(),
                action: if ok {
                    change.action.as_str().to_string()
                } else {
                    format!("{}-failed", change.action.as_str())
                },
                reason: change.reason.clone(),
                detail: json!({"ok": ok, "detail": detail}).to_string(),
            });
            applied.push(Applied {
                kind: change.kind,
                name: change.name.clone(),
                action: change.action,
                ok,
                detail,
            });
        }
        (!failed.is_empty()).then(|| format!("{} action(s) failed", failed.len()))
    }

    /// After a whole pass applied: the inventory compacted, policy versions recorded, earlier
    /// commits' overrides ended, the commit and source in force remembered, and the policies of
    /// agents that did not restart reloaded. The first error, if any.
    fn record_in_force(
        &mut self,
        run: &Run,
        state: &DesiredState,
        commit: &Option<String>,
        policies: &policies::PolicyPlan,
        desired: &[DesiredService],
        applied: &[Applied],
    ) -> Option<String> {
        let context = &run.context;
        let mut error = None;
        if let Err(e) = self.inventory.compact() {
            error.get_or_insert(e.to_string());
        }
        if let Err(e) = policies.record(&context.state_dir, &run.recorder, commit) {
            error.get_or_insert(e);
        }
        // A new commit ends the overrides made at the one before.
        if let Err(e) = overrides::Overrides::end_stale(&context.state_dir, commit) {
            tracing::warn!(error = %e, "cannot end the overrides of an earlier commit");
        }
        // What a daemon starting on a HEAD it cannot apply keeps in force (`in_force`).
        if let Some(applied_commit) = commit.as_deref().filter(|_| !state.worktree) {
            if let Err(e) = in_force::remember(&context.state_dir, applied_commit) {
                tracing::warn!(state_dir = %context.state_dir.display(), error = %e, "cannot record the commit in force");
            }
            let source = in_force::applied_source(&context.source);
            if let Some(Err(e)) = source.map(|s| in_force::remember_source(&context.state_dir, &s)) {
                tracing::warn!(state_dir = %context.state_dir.display(), error = %e, "cannot record the source in force");
            }
        }
        let changed: Vec<&ResourceId> = desired
            .iter()
            .map(|d| &d.item.id)
            .filter(|id| applied.iter().any(|a| a.kind == id.kind && a.name == id.name))
            .collect();
        reload_policies(context, desired, &changed, &self.inventory, &run.recorder);
        error
    }
}

/// What the pass was asked to look at beside the desired state.
struct Asked<'a> {
    /// One resource only (a crash, a probe, `stop NAME`).
    only: Option<&'a ResourceId>,
    operation: Option<&'a overrides::Operation>,
    probes: &'a Probes,
}

/// One pass's identity and where it records.
pub(super) struct Run {
    context: Context,
    recorder: Recorder,
    id: String,
    started_ms: i64,
    options: PassOptions,
}

impl Run {
    /// A source that cannot be read or is invalid (or untrusted with nothing trusted before it):
    /// nothing is applied, and the report says why.
    fn nothing_applied(&self, error: LoadError, extra_drift: Vec<DriftItem>) -> PassOutcome {
        let (context, options) = (&self.context, &self.options);
        let mut items = extra_drift;
        let (commit, diagnostics, outcome, error) = match error {
            // Only the daemon gets here (one-shot passes stop at `load`).
            LoadError::Read(e) => {
                items.push(source_item(context, Drift::InvalidSource, e.to_string()));
                let error = format!("the desired state cannot be read: {e}");
                (None, Vec::new(), "unreadable-source", error)
            }
            LoadError::Invalid {
                commit, diagnostics, ..
            } => {
                // No diagnostics: an untrusted commit and no trusted one before it (the daemon).
                if let Some(detail) = crate::source::summarize(&diagnostics) {
                    items.push(source_item(context, Drift::InvalidSource, detail));
                }
                let error = if diagnostics.is_empty() {
                    "the commit is not trusted and none was before it: nothing was applied"
                } else {
                    "the desired state is invalid: nothing was applied"
                };
                (commit, diagnostics, "invalid-source", error.to_string())
            }
        };
        self.recorder
            .record(run_started(&self.id, context, &commit, options, self.started_ms));
        let report = drift_report(context, &commit, &self.id, options, self.started_ms, items);
        let report = store_report(context, &self.recorder, report, options, true);
        self.recorder
            .record(run_finished(&self.id, outcome, "nothing applied".into()));
        PassOutcome {
            commit,
            diagnostics,
            error: Some(error),
            ..PassOutcome::reported(report)
        }
    }
}

/// The pass's drift items: those it was given (routes, memory, source), the plan's, log space,
/// agents' containment, and each failed action.
fn report_items(
    context: &Context,
    extra_drift: Vec<DriftItem>,
    plan: &Plan,
    desired: &[DesiredService],
    applied: &[Applied],
) -> Vec<DriftItem> {
    let mut items = extra_drift;
    items.extend(plan.drift.iter().cloned());
    items.extend(log_space_drift(&context.state_dir, desired));
    let running_agents: Vec<&str> = desired
        .iter()
        .filter(|d| d.agent.is_some() && !d.item.suspend)
        .map(|d| d.item.id.name.as_str())
        .collect();
    items.extend(agents::containment_drift(&context.state_dir, &running_agents));
    for a in applied.iter().filter(|a| !a.ok) {
        items.push(DriftItem {
            kind: a.kind.to_string(),
            name: a.name.clone(),
            drift: Drift::Failed,
            // The next pass tries again: acting on it repairs the host.
            corrective: true,
            severity: Severity::Error,
            detail: a.detail.clone(),
        });
    }
    items
}

/// How often a long action (a start being verified, a stop waiting out its grace) says it is
/// still at it.
pub(super) const STILL_WAITING_EVERY: Duration = Duration::from_secs(5);

/// Runs `action` on a thread of its own (in the caller's tokio context) and calls `still` with
/// the whole seconds waited every [`STILL_WAITING_EVERY`] until it is done: a person watching a
/// 40 s start verification sees it is alive.
pub(super) fn with_still_waiting_lines<T: Send>(action: impl FnOnce() -> T + Send, still: &mut dyn FnMut(u64)) -> T {
    let runtime = tokio::runtime::Handle::try_current().ok();
    let began = std::time::Instant::now();
    std::thread::scope(|scope| {
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let worker = scope.spawn(move || {
            let _entered = runtime.as_ref().map(tokio::runtime::Handle::enter);
            let result = action();
            drop(done_tx);
            result
        });
        // Disconnected: done (or panicked, which the join passes on).
        while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(STILL_WAITING_EVERY) {
            still(began.elapsed().as_secs());
        }
        match worker.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

pub(super) fn source_item(context: &Context, drift: Drift, detail: String) -> DriftItem {
    DriftItem {
        kind: "Source".into(),
        name: context.source.path.display().to_string(),
        drift,
        corrective: false,
        severity: Severity::Critical,
        detail,
    }
}

pub(super) fn run_started(
    id: &str,
    context: &Context,
    commit: &Option<String>,
    options: &PassOptions,
    started_ms: i64,
) -> Record {
    Record::RunStarted(RunStarted {
        id: id.to_string(),
        host: context.host.clone(),
        commit: commit.clone(),
        trigger: if options.dry_run {
            format!("{} (dry-run)", options.trigger)
        } else {
            options.trigger.clone()
        },
        started_ms,
    })
}

pub(super) fn run_finished(id: &str, outcome: &str, summary: String) -> Record {
    Record::RunFinished(RunFinished {
        id: id.to_string(),
        ended_ms: now_ms(),
        outcome: outcome.to_string(),
        summary,
    })
}

pub(super) fn drift_report(
    context: &Context,
    commit: &Option<String>,
    run_id: &str,
    options: &PassOptions,
    started_ms: i64,
    items: Vec<DriftItem>,
) -> DriftReport {
    DriftReport {
        id: new_id(),
        host: context.host.clone(),
        commit: commit.clone(),
        run_id: Some(run_id.to_string()),
        started_at: rfc3339(started_ms),
        observe_only: options.dry_run,
        items,
        repeats: 0,
        last_seen_at: None,
    }
}

/// Stores the pass's drift report, or, when it says exactly what the last stored one said,
/// counts it there (`last_report`); returns the report as stored (its id, and its count).
pub(super) fn store_report(
    context: &Context,
    recorder: &Recorder,
    report: DriftReport,
    options: &PassOptions,
    full: bool,
) -> DriftReport {
    let scheduled = options.trigger == "schedule";
    let store = context.store.to_string();
    // A pass over one resource (a crash, a probe, a person's stop) reports on that one only:
    // stored, and not what later full passes are compared with.
    if !full {
        recorder.record(Record::DriftReport(report.clone()));
        return report;
    }
    match last_report::decide(&context.state_dir, &report, &store, scheduled) {
        last_report::Decision::Repeat(last) => {
            let seen_ms = now_ms();
            recorder.record(Record::DriftRepeated {
                id: last.id.clone(),
                repeats: last.repeats,
                seen_ms,
            });
            remember_report(context, &last);
            DriftReport {
                id: last.id,
                started_at: last.started_at,
                repeats: last.repeats,
                last_seen_at: Some(rfc3339(seen_ms)),
                ..report
            }
        }
        last_report::Decision::Store => {
            recorder.record(Record::DriftReport(report.clone()));
            let last = last_report::LastReport {
                id: report.id.clone(),
                fingerprint: last_report::fingerprint(&report),
                started_at: report.started_at.clone(),
                repeats: 0,
                store,
            };
            remember_report(context, &last);
            report
        }
    }
}

pub(super) fn remember_report(context: &Context, last: &last_report::LastReport) {
    if let Err(e) = last_report::remember(&context.state_dir, last) {
        tracing::warn!(state_dir = %context.state_dir.display(), error = %e, "cannot remember the last drift report: the next one is stored whole");
    }
}

/// The resources people keep stopped (`mirrorctl stop`).
pub(super) fn stopped_of(desired: &[DesiredService]) -> Vec<(ResourceId, overrides::Stopped)> {
    desired
        .iter()
        .filter_map(|d| Some((d.item.id.clone(), d.stopped.clone()?)))
        .collect()
}

/// Keeps `failures.json` in step with this pass's actions (and, on a full pass, forgets what is
/// no longer desired), so `status` can say why a resource does not run.
pub(super) fn record_failures(
    context: &Context,
    applied: &[Applied],
    desired: &[DesiredService],
    full: bool,
    commit: &Option<String>,
) {
    let mut failures = failures::Failures::load(&context.state_dir);
    let mut changed = false;
    for a in applied {
        let id = ResourceId::new(a.kind, a.name.clone());
        let outcome = if a.ok {
            Ok(())
        } else {
            Err(failures::Failure {
                action: a.action.as_str().to_string(),
                reason: a.detail.clone(),
                at_ms: now_ms(),
                commit: commit.clone(),
            })
        };
        changed |= failures.record(&id, outcome);
    }
    if full {
        changed |= failures.retain(|key| desired.iter().any(|d| d.item.id.to_string() == key));
    }
    if changed {
        if let Err(e) = failures.save(&context.state_dir) {
            tracing::warn!(state_dir = %context.state_dir.display(), error = %e, "cannot record failed actions for status");
        }
    }
}
