//! One reconcile pass: source -> observe -> plan -> (a dry-run stops here) -> apply -> verify
//! -> store. The dry-run runs the very same steps up to the plan. Every pass writes one run
//! record and one drift report; every action one receipt.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub mod agents;
pub mod failures;
pub mod in_force;
pub mod last_report;
pub mod memory;
pub mod models;
pub mod overrides;
pub mod policies;

use serde::Serialize;
use serde_json::{json, Value};

use crate::plan::redact::{render_spec, spec_hash};
use crate::plan::{self, Action, DesiredItem, OwnedItem, Plan, PlanInput};
use crate::report::{now_ms, rfc3339, Drift, DriftItem, DriftReport, Severity};
use crate::source::{self, DesiredState, LoadError, SourceOptions};
use crate::spec::agent::AgentSpec;
use crate::spec::{parse_dependency, Kind, ResourceId, ServiceSpec, Spec};
use crate::store::inventory::LocalInventory;
use crate::store::recorder::{FlushReport, RecorderConfig};
use crate::store::{new_id, InventoryEntry, ReceiptDraft, Record, Recorder, RunFinished, RunStarted, StoreUrl};
use crate::supervisor::cgroup;
use crate::supervisor::probe;
use crate::supervisor::process::{self, Liveness, ProcessIdentity, SpawnSpec, SPAWN_ENV};
use crate::supervisor::sandbox::Profile;

/// Where a pass reads and writes.
#[derive(Clone, Debug)]
pub struct Context {
    pub source: SourceOptions,
    pub state_dir: PathBuf,
    pub store: StoreUrl,
    pub host: String,
}

#[derive(Clone, Debug)]
pub struct PassOptions {
    pub dry_run: bool,
    pub allow_mass_prune: bool,
    /// What started the pass: `cli`, `commit`, `resync`, ...
    pub trigger: String,
    /// Also the models step (one-shot `reconcile`): a dry-run lists pulls and routes, an apply
    /// pulls missing models.
    pub models: bool,
    /// Also the memory step (one-shot `reconcile`): a dry-run counts what MemoryRules would
    /// move, an apply moves it.
    pub memory: bool,
}

/// What apply did with one change.
#[derive(Clone, Debug, Serialize)]
pub struct Applied {
    pub kind: Kind,
    pub name: String,
    pub action: Action,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug)]
pub struct PassOutcome {
    pub commit: Option<String>,
    /// None when the source was invalid.
    pub plan: Option<Plan>,
    pub diagnostics: Vec<source::Diagnostic>,
    pub applied: Vec<Applied>,
    pub report: DriftReport,
    /// Why the pass did not converge: an invalid source, the prune guard, failed actions.
    pub error: Option<String>,
    pub store: FlushReport,
    /// Policy versions this pass creates (a dry-run: would create), each with its diff.
    pub policies: Vec<crate::policy::NewVersion>,
    /// Model pulls and route decisions (see [`models`]); empty unless asked for.
    pub models: Vec<crate::router::preview::ModelAction>,
    /// What MemoryRules moved or would move (see [`memory`]); empty unless asked for.
    pub memory: memory::MemoryOutcome,
    /// Things the user should know that are not changes (printed after the summary).
    pub notes: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Source(#[from] source::ReadSourceError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("{path}: {message}")]
    StateDir { path: PathBuf, message: String },
    /// Ctrl-C before the pass began.
    #[error("{0}")]
    Interrupted(String),
}

/// Set by SIGINT during a one-shot pass (see [`interrupt_on_sigint`]).
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the pass should stop before its next action.
pub fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
}

/// Asks the running pass to stop before its next action.
pub fn interrupt() {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// A one-shot pass: the first Ctrl-C stops it between actions (what was done is recorded and
/// summarized, exit 130); a second one ends the process at once.
#[cfg(unix)]
pub fn interrupt_on_sigint() {
    extern "C" fn on_sigint(_: libc::c_int) {
        // Async-signal-safe: an atomic store and a signal disposition.
        INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
        // SAFETY: restoring the default disposition is async-signal-safe.
        unsafe {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
        }
    }
    // SAFETY: installs a handler that only does async-signal-safe work.
    unsafe {
        libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
    }
}

/// How often a long action (a start being verified, a stop waiting out its grace) says it is
/// still at it.
const STILL_WAITING_EVERY: Duration = Duration::from_secs(5);

/// Runs `action` on a thread of its own (in the caller's tokio context) and calls `still` with
/// the whole seconds waited every [`STILL_WAITING_EVERY`] until it is done: a person watching a
/// 40 s start verification sees it is alive.
fn with_still_waiting_lines<T: Send>(action: impl FnOnce() -> T + Send, still: &mut dyn FnMut(u64)) -> T {
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

/// How long a pass waits for the truth store before leaving the rest in the journal.
const STORE_WAIT: Duration = Duration::from_secs(5);

/// One-shot pass (the CLI without a daemon): takes the state dir's writer lock, runs one pass
/// over the source (and the models step when asked: `progress` gets pull progress lines),
/// waits (bounded) for the truth store.
pub async fn run_pass(
    context: &Context,
    options: &PassOptions,
    progress: &mut (dyn FnMut(String) + Send),
) -> Result<PassOutcome, ReconcileError> {
    // One pass at a time: two would race on the inventory and the journal.
    let _lock = crate::state::lock_state_dir_unless(&context.state_dir, &interrupted).map_err(|e| {
        if e.kind() == std::io::ErrorKind::Interrupted {
            return ReconcileError::Interrupted(e.to_string());
        }
        ReconcileError::StateDir {
            path: context.state_dir.clone(),
            message: e.to_string(),
        }
    })?;
    let mut reconciler = Reconciler::open(context.clone())?;
    let loaded = reconciler.load()?.map(Arc::new);
    let state = loaded.as_ref().ok().cloned();
    // A dry-run counts memory moves first: they are drift items of its report.
    let memory_preview = match (&state, options.memory && options.dry_run) {
        (Some(state), true) => Some(memory::preview(state, &context.store).await),
        _ => None,
    };
    let input = PassInput {
        desired: loaded,
        extra_drift: memory_preview.as_ref().map(memory::pending_drift).unwrap_or_default(),
        only: None,
        operation: None,
        probes: Probes::RunNow,
    };
    let mut outcome = reconciler.pass_reporting(input, options, &mut |line| progress(line));
    let converging = outcome.plan.as_ref().is_some_and(|p| p.refused.is_none()) && !interrupted();
    if let (true, true, Some(state)) = (options.models, converging, &state) {
        outcome.models = if options.dry_run {
            models::preview(state, None).await
        } else {
            models::ensure_all(state, reconciler.recorder(), progress).await
        };
    }
    if let Some(preview) = memory_preview {
        outcome.memory = preview;
    } else if let (true, true, Some(state)) = (options.memory, converging, &state) {
        let run_id = outcome.report.run_id.clone().unwrap_or_else(new_id);
        outcome.memory = memory::apply(state, &context.store, reconciler.recorder(), &run_id).await;
    }
    // Agents were given the bus's address, but only the daemon serves it.
    let has_agents = state
        .as_ref()
        .is_some_and(|s| s.resources.iter().any(|r| r.kind == Kind::Agent));
    if has_agents && !options.dry_run && converging {
        let address = state.as_ref().map(|s| s.controller().bus_address());
        outcome.notes.push(format!(
            "agents reach the model bus at {} only while `mirrorctl run` serves it; this one-shot pass does not",
            address.map(|a| a.to_string()).unwrap_or_default()
        ));
    }
    outcome.store = reconciler.flush().await;
    Ok(outcome)
}

/// Probe verdicts a pass uses for running services.
#[derive(Clone, Debug)]
pub enum Probes {
    /// Probe now, up to `failureThreshold` times (one-shot passes).
    RunNow,
    /// What the daemon's probe schedule found, by service name, for the identity probed:
    /// `Err` only once `failureThreshold` probes failed in a row.
    Known(BTreeMap<ResourceId, (ProcessIdentity, Result<String, String>)>),
}

/// What a pass works on.
pub struct PassInput {
    /// The desired state, or why there is none to apply.
    pub desired: Result<Arc<DesiredState>, LoadError>,
    /// Drift found before planning (an untrusted commit).
    pub extra_drift: Vec<DriftItem>,
    /// Only this resource (the daemon's answer to one exited or unhealthy service); None: all.
    pub only: Option<ResourceId>,
    /// A person's `stop|start|restart NAME` (with `only` on that resource).
    pub operation: Option<overrides::Operation>,
    pub probes: Probes,
}

impl PassInput {
    pub fn full(desired: Result<DesiredState, LoadError>) -> PassInput {
        PassInput {
            desired: desired.map(Arc::new),
            extra_drift: Vec::new(),
            only: None,
            operation: None,
            probes: Probes::RunNow,
        }
    }
}

/// What the host is made to match, across passes: the truth-store writer, the inventory, the
/// fingerprint key and the exit statuses the daemon saw. A one-shot command makes one for a
/// single pass; the daemon keeps one for its life. Passes block (process stops, probes): the
/// daemon runs them on a blocking thread.
pub struct Reconciler {
    context: Context,
    recorder: Recorder,
    _writer: tokio::task::JoinHandle<()>,
    key: Vec<u8>,
    inventory: LocalInventory,
    /// Exit statuses of services that ended, noticed by the daemon as their parent.
    exits: BTreeMap<ResourceId, (ProcessIdentity, process::Exit)>,
}

impl Reconciler {
    /// Starts the recorder on the current tokio runtime and loads the inventory.
    pub fn open(context: Context) -> Result<Reconciler, ReconcileError> {
        let config = RecorderConfig::new(context.state_dir.clone(), context.host.clone(), context.store.clone());
        let (recorder, writer) = Recorder::start(config)?;
        let key = secret_key(&context.state_dir)?;
        let inventory = LocalInventory::load(&context.state_dir)?;
        stop_unrecorded_spawn(&context.state_dir, &inventory);
        Ok(Reconciler {
            context,
            recorder,
            _writer: writer,
            key,
            inventory,
            exits: BTreeMap::new(),
        })
    }

    pub fn context(&self) -> &Context {
        &self.context
    }

    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    /// Reads and validates the source; an unreadable source is an error (never an empty state).
    pub fn load(&self) -> Result<Result<DesiredState, LoadError>, ReconcileError> {
        load_source(&self.context.source)
    }

    /// Remembers how a service's process ended (the daemon reaped it).
    pub fn note_exit(&mut self, id: &ResourceId, identity: ProcessIdentity, exit: process::Exit) {
        self.exits.insert(id.clone(), (identity, exit));
    }

    /// The LaunchAgents of `state` this host runs (placement), each with a keyed spec hash.
    pub fn desired_jobs(&self, state: &DesiredState) -> Vec<crate::supervisor::job::DesiredJob> {
        let host = &self.context.host;
        state
            .resources
            .iter()
            .filter_map(|r| match &r.spec {
                Spec::LaunchAgent(spec) if spec.placement.as_ref().is_none_or(|p| p.selects(host)) => {
                    let env_files: BTreeMap<PathBuf, Option<Vec<u8>>> = spec
                        .env_files
                        .iter()
                        .map(|p| (p.clone(), std::fs::read(resolve(&self.context.state_dir, p)).ok()))
                        .collect();
                    let raw = serde_json::to_value(spec).expect("specs serialize");
                    let hash = spec_hash(&render_spec(raw, &self.key, &env_files));
                    Some(crate::supervisor::job::DesiredJob {
                        name: r.metadata.name.clone(),
                        spec: spec.clone(),
                        hash,
                    })
                }
                _ => None,
            })
            .collect()
    }

    /// The bus tokens of the enrolled agents, by agent.
    pub fn agent_tokens(&self) -> BTreeMap<String, String> {
        agents::tokens(&self.context.state_dir, &self.key)
    }

    /// When the recorded process of a service or agent was started.
    pub fn started_ms(&self, id: &ResourceId) -> Option<i64> {
        self.inventory
            .get(id.kind.as_str(), &id.name)
            .and_then(process_record)
            .map(|r| r.started_ms)
    }

    /// Running processes this host owns (services and agents), as the inventory records them.
    pub fn owned_processes(&self) -> Vec<(ResourceId, ProcessIdentity)> {
        self.inventory
            .entries()
            .filter_map(|e| {
                let kind = process_kind(&e.kind)?;
                identity_of(e).map(|id| (ResourceId::new(kind, e.name.clone()), id))
            })
            .collect()
    }

    /// Stops every owned service (dependents first) and forgets their processes: what
    /// `mirrorctl run --stop-services-on-exit` does on its way out.
    pub fn stop_all(&mut self) -> Vec<String> {
        let mut stopped = Vec::new();
        let mut entries: Vec<InventoryEntry> = self
            .inventory
            .entries()
            .filter(|e| process_kind(&e.kind).is_some())
            .cloned()
            .collect();
        entries.reverse();
        // Agents use services (models, tools): they stop first.
        entries.sort_by_key(|e| e.kind != Kind::Agent.as_str());
        for mut entry in entries {
            let Some(identity) = identity_of(&entry) else { continue };
            let (signal, grace) = stop_settings(&entry.last_applied);
            let outcome = process::stop(&identity, signal, grace);
            if let Some(kind) = process_kind(&entry.kind) {
                cgroup_of(&self.context.state_dir, &ResourceId::new(kind, entry.name.clone()))
                    .kill(Duration::from_secs(2));
            }
            stopped.push(format!("{} (pid {}): {outcome:?}", entry.name, identity.pid));
            // No process any more, and why: `status` shows it Stopped, not Degraded.
            let note = StoppedOnExit {
                stopped_ms: now_ms(),
                total_restarts: process_record(&entry).map_or(0, |r| r.restarts_shown()),
            };
            entry.process = Some(serde_json::to_string(&note).expect("notes serialize"));
            entry.updated_ms = now_ms();
            let _ = self.inventory.upsert(entry, &self.recorder);
        }
        let _ = self.inventory.compact();
        stopped
    }

    /// Waits, bounded, until the truth store has what was recorded (or the journal holds it).
    pub async fn flush(&self) -> FlushReport {
        flush(&self.recorder).await
    }

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
        let context = self.context.clone();
        let context = &context;
        let recorder = self.recorder.clone();
        let run_id = new_id();
        let started_ms = now_ms();

        let (state, commit) = match input.desired {
            Ok(state) => {
                let commit = state.commit.clone();
                (state, commit)
            }
            Err(LoadError::Read(e)) => {
                // Only the daemon gets here (one-shot passes stop at `load`): nothing applied.
                recorder.record(run_started(&run_id, context, &None, options, started_ms));
                let mut items = input.extra_drift;
                items.push(source_item(context, Drift::InvalidSource, e.to_string()));
                let report = drift_report(context, &None, &run_id, options, started_ms, items);
                let report = store_report(context, &recorder, report, options, true);
                recorder.record(run_finished(&run_id, "unreadable-source", "nothing applied".into()));
                return PassOutcome {
                    commit: None,
                    plan: None,
                    diagnostics: Vec::new(),
                    applied: Vec::new(),
                    report,
                    error: Some(format!("the desired state cannot be read: {e}")),
                    store: FlushReport::default(),
                    policies: Vec::new(),
                    models: Vec::new(),
                    memory: memory::MemoryOutcome::default(),
                    notes: Vec::new(),
                };
            }
            Err(LoadError::Invalid {
                commit, diagnostics, ..
            }) => {
                // An invalid source applies nothing; the report says why.
                recorder.record(run_started(&run_id, context, &commit, options, started_ms));
                let mut items = input.extra_drift;
                // No diagnostics: an untrusted commit and no trusted one before it (the daemon).
                if let Some(detail) = crate::source::summarize(&diagnostics) {
                    items.push(source_item(context, Drift::InvalidSource, detail));
                }
                let report = drift_report(context, &commit, &run_id, options, started_ms, items);
                let report = store_report(context, &recorder, report, options, true);
                recorder.record(run_finished(&run_id, "invalid-source", "nothing applied".into()));
                let error = if diagnostics.is_empty() {
                    "the commit is not trusted and none was before it: nothing was applied"
                } else {
                    "the desired state is invalid: nothing was applied"
                };
                return PassOutcome {
                    commit,
                    plan: None,
                    diagnostics,
                    applied: Vec::new(),
                    report,
                    error: Some(error.into()),
                    store: FlushReport::default(),
                    policies: Vec::new(),
                    models: Vec::new(),
                    memory: memory::MemoryOutcome::default(),
                    notes: Vec::new(),
                };
            }
        };
        recorder.record(run_started(&run_id, context, &commit, options, started_ms));

        // A pass over one service renders and observes that one only (milliseconds at any size).
        let selected = |id: &ResourceId| input.only.as_ref().is_none_or(|only| only == id);
        let policies = policies::PolicyPlan::of(&state, &context.state_dir);
        let desired = desired_services(
            &state,
            &self.key,
            &context.state_dir,
            &context.host,
            &policies,
            &selected,
        );
        let owned = observe(
            &self.inventory,
            &desired,
            &input.probes,
            &mut self.exits,
            &selected,
            true,
        );
        let controller = state.controller();
        let mut plan = plan::plan(PlanInput {
            commit: commit.clone(),
            desired: desired.iter().map(|d| d.item.clone()).collect(),
            owned,
            max_prune_fraction: controller.prune_max_fraction(),
            allow_mass_prune: options.allow_mass_prune || input.only.is_some(),
            now_ms: now_ms(),
        });
        let suspended: Vec<ResourceId> = desired
            .iter()
            .filter(|d| d.spec.suspend)
            .map(|d| d.item.id.clone())
            .collect();
        overrides::apply_to_plan(
            &mut plan,
            &stopped_of(&desired),
            &suspended,
            input.operation.as_ref(),
            now_ms(),
        );

        let mut applied = Vec::new();
        let mut error = plan.refused.clone();
        if !options.dry_run && plan.refused.is_none() {
            let specs: BTreeMap<&ResourceId, &DesiredService> = desired.iter().map(|d| (&d.item.id, d)).collect();
            let mut failed: Vec<ResourceId> = Vec::new();
            let total = plan.pending().count();
            for (done, change) in plan.pending().enumerate() {
                let id = ResourceId::new(change.kind, change.name.clone());
                if interrupted() {
                    error = Some(format!(
                        "interrupted (SIGINT) after {done} of {total} action(s); the rest was not done: run the pass again to finish"
                    ));
                    break;
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
                        let apply = || apply_change(context, key, change.action, &id, desired, inventory, &recorder);
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
                recorder.receipt(ReceiptDraft {
                    run_id: Some(run_id.clone()),
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
            if !failed.is_empty() {
                error.get_or_insert(format!("{} action(s) failed", failed.len()));
            }
            record_failures(context, &applied, &desired, input.only.is_none(), &commit);
            if let Err(e) = refresh_unchanged(&plan, &desired, &mut self.inventory, &recorder) {
                error.get_or_insert(e.to_string());
            }
            // An interrupted pass did not apply the commit: nothing of it is recorded as in force.
            if input.only.is_none() && !interrupted() {
                if let Err(e) = self.inventory.compact() {
                    error.get_or_insert(e.to_string());
                }
                if let Err(e) = policies.record(&context.state_dir, &recorder, &commit) {
                    error.get_or_insert(e);
                }
                // A new commit ends the overrides made at the one before.
                if let Err(e) = overrides::Overrides::end_stale(&context.state_dir, &commit) {
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
                reload_policies(context, &desired, &changed, &self.inventory, &recorder);
            }
            rotate_logs(&context.state_dir, &desired);
        }

        let mut items = input.extra_drift;
        items.extend(plan.drift.iter().cloned());
        items.extend(log_space_drift(&context.state_dir, &desired));
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
        let report = drift_report(context, &commit, &run_id, options, started_ms, items);
        recorder.set_report_retention(controller.report_retention().as_std());
        let report = store_report(context, &recorder, report, options, input.only.is_none());
        let outcome = match (&error, options.dry_run, plan.pending().count()) {
            (Some(_), _, _) => "failed",
            (None, true, 0) | (None, false, _) => "converged",
            (None, true, _) => "changes-pending",
        };
        recorder.record(run_finished(&run_id, outcome, plan.summary()));
        PassOutcome {
            commit,
            plan: Some(plan),
            diagnostics: Vec::new(),
            applied,
            report,
            error,
            store: FlushReport::default(),
            policies: policies.new_versions,
            models: Vec::new(),
            memory: memory::MemoryOutcome::default(),
            notes: Vec::new(),
        }
    }

    /// `mirrorctl status` against this reconciler's inventory.
    pub fn status(&mut self, desired: Result<Arc<DesiredState>, String>, probes: &Probes) -> StatusReport {
        status_of(
            &self.inventory,
            &self.key,
            &self.context.state_dir,
            &self.context.host,
            desired,
            probes,
            &mut self.exits,
        )
    }
}

/// Reads the source: `Err` when it cannot be read, `Ok(Err)` when it is invalid.
pub fn load_source(options: &SourceOptions) -> Result<Result<DesiredState, LoadError>, ReconcileError> {
    match source::load(options) {
        Err(LoadError::Read(e)) => Err(e.into()),
        other => Ok(other),
    }
}

fn source_item(context: &Context, drift: Drift, detail: String) -> DriftItem {
    DriftItem {
        kind: "Source".into(),
        name: context.source.path.display().to_string(),
        drift,
        corrective: false,
        severity: Severity::Critical,
        detail,
    }
}

async fn flush(recorder: &Recorder) -> FlushReport {
    tokio::time::timeout(STORE_WAIT, recorder.flush())
        .await
        .unwrap_or_else(|_| FlushReport {
            pending: 1,
            store_error: Some(format!(
                "the truth store did not answer within {}s; records wait in the journal",
                STORE_WAIT.as_secs()
            )),
        })
}

fn run_started(id: &str, context: &Context, commit: &Option<String>, options: &PassOptions, started_ms: i64) -> Record {
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

fn run_finished(id: &str, outcome: &str, summary: String) -> Record {
    Record::RunFinished(RunFinished {
        id: id.to_string(),
        ended_ms: now_ms(),
        outcome: outcome.to_string(),
        summary,
    })
}

fn drift_report(
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

/// The key of secret fingerprints, made on first use (`<state dir>/secret.key`, mode 0600).
fn secret_key(state_dir: &Path) -> Result<Vec<u8>, ReconcileError> {
    let path = state_dir.join("secret.key");
    let error = |e: std::io::Error| ReconcileError::StateDir {
        path: path.clone(),
        message: e.to_string(),
    };
    match std::fs::read(&path) {
        Ok(key) if key.len() >= 32 => return Ok(key),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(error(e)),
    }
    let mut key = vec![0u8; 32];
    std::fs::create_dir_all(state_dir).map_err(error)?;
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .map_err(error)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    use std::io::Write;
    options.open(&path).and_then(|mut f| f.write_all(&key)).map_err(error)?;
    Ok(key)
}

/// A desired Service or Agent with what apply needs.
struct DesiredService {
    item: DesiredItem,
    /// How it runs (an agent: in its sandbox, with its environment).
    spec: ServiceSpec,
    /// For an agent: its spec and its effective policy (enrollment, the policy file).
    agent: Option<(AgentSpec, Option<crate::policy::AgentPolicy>, Profile)>,
    /// Kept stopped by a person (`mirrorctl stop`) until `start` or the next commit: planned as
    /// suspended.
    stopped: Option<overrides::Stopped>,
}

/// Relative env files and working dirs are relative to the state dir (secrets live outside git).
fn resolve(state_dir: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        state_dir.join(path)
    }
}

/// What every agent's sandbox hides of the rest of the host: other agents' sandboxes, every env
/// file (secrets), the credential stores of the daemon's user.
fn host_view(state: &DesiredState, state_dir: &Path) -> agents::HostView {
    let mut view = agents::HostView::from_env(state.controller().bus_address().port());
    for resource in &state.resources {
        match &resource.spec {
            Spec::Service(spec) => view
                .env_files
                .extend(spec.env_files.iter().map(|p| resolve(state_dir, p))),
            Spec::Agent(spec) => {
                view.env_files
                    .extend(spec.env_files.iter().map(|p| resolve(state_dir, p)));
                view.sandboxes.insert(
                    resource.metadata.name.clone(),
                    agents::sandbox_dir(state_dir, &resource.metadata.name, spec),
                );
            }
            _ => {}
        }
    }
    view
}

/// The Services and Agents this host runs (placement selects the host).
fn desired_services(
    state: &DesiredState,
    key: &[u8],
    state_dir: &Path,
    host: &str,
    policies: &policies::PolicyPlan,
    selected: &dyn Fn(&ResourceId) -> bool,
) -> Vec<DesiredService> {
    let bus_url = format!("http://{}", state.controller().bus_address());
    let view = host_view(state, state_dir);
    let overrides = overrides::Overrides::load(state_dir);
    state
        .resources
        .iter()
        .filter(|r| selected(&r.id()))
        .filter_map(|r| match &r.spec {
            Spec::Service(spec) if spec.placement.as_ref().is_none_or(|p| p.selects(host)) => {
                Some((r, spec.clone(), None))
            }
            // Validation refuses an agent without a policy: it never gets here.
            Spec::Agent(spec) if spec.placement.as_ref().is_none_or(|p| p.selects(host)) => {
                let policy = policies.for_agent(&r.metadata.name, spec);
                let service = agents::as_service(state_dir, &r.metadata.name, spec, &bus_url);
                let profile = agents::profile(
                    state_dir,
                    &r.metadata.name,
                    spec,
                    policy.as_ref().map(|p| &p.rules),
                    &view,
                );
                Some((r, service, Some((spec.clone(), policy, profile))))
            }
            _ => None,
        })
        .map(|(resource, spec, agent)| {
            let env_files: BTreeMap<PathBuf, Option<Vec<u8>>> = spec
                .env_files
                .iter()
                .map(|p| (p.clone(), std::fs::read(resolve(state_dir, p)).ok()))
                .collect();
            let mut raw = serde_json::to_value(&spec).expect("specs serialize");
            if let Some((_, Some(policy), _)) = &agent {
                // What the policy adds to the sandbox: a running sandbox cannot change, so a
                // change restarts the agent.
                let rules = &policy.rules;
                if !rules.network.is_empty() || !rules.hide_paths.is_empty() {
                    raw["x-sandbox"] = json!({"network": rules.network, "hidePaths": rules.hide_paths});
                }
            }
            if let Some((agent, Some(policy), _)) = &agent {
                // A policy change restarts an agent that asks for it; others get the new file and
                // SIGHUP, the spec (and the process) unchanged.
                if agent.on_policy_change == crate::spec::agent::PolicyReload::Restart {
                    raw["x-policy"] = json!(format!(
                        "{} version {} ({})",
                        policy.policy.name, policy.policy.version, policy.hash
                    ));
                }
            }
            let rendered = render_spec(raw, key, &env_files);
            let hash = spec_hash(&rendered);
            let mut last_applied = rendered.clone();
            // Remember the prune opt-out with the spec: once the resource leaves the desired
            // state, the annotation is only known from here.
            if !resource.metadata.prune_allowed() {
                last_applied["x-prune"] = json!("disabled");
            }
            let stopped = overrides.active(&resource.id(), &state.commit).cloned();
            DesiredService {
                item: DesiredItem {
                    id: resource.id(),
                    rendered: last_applied,
                    hash,
                    suspend: spec.suspend || stopped.is_some(),
                    prune_allowed: resource.metadata.prune_allowed(),
                    depends_on: spec
                        .depends_on
                        .iter()
                        .filter_map(|d| parse_dependency(d).ok())
                        .collect(),
                    restart: spec.restart,
                    backoff: spec.backoff(),
                },
                spec,
                agent,
                stopped,
            }
        })
        .collect()
}

/// What the inventory keeps about a service's process: who it is, and its restart history.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct ProcessRecord {
    #[serde(flatten)]
    pub identity: ProcessIdentity,
    /// Restarts in a row that count towards the backoff (0 again after a stable run).
    #[serde(default)]
    pub restarts: u32,
    #[serde(default)]
    pub started_ms: i64,
    /// Every restart since it was created or last updated: what `status` shows (it never goes
    /// down while the spec stays).
    #[serde(default)]
    pub total_restarts: u32,
}

impl ProcessRecord {
    /// What `status` shows as RESTARTS (records from before `total_restarts` have only
    /// `restarts`).
    pub fn restarts_shown(&self) -> u32 {
        self.total_restarts.max(self.restarts)
    }
}

/// What the inventory keeps of a process the daemon stopped on its way out
/// (`--stop-services-on-exit`): not a process record, so planning sees nothing running.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StoppedOnExit {
    stopped_ms: i64,
    /// RESTARTS before the stop: kept, shown, and carried on when it starts again.
    #[serde(default)]
    total_restarts: u32,
}

impl StoppedOnExit {
    fn of(entry: &InventoryEntry) -> Option<StoppedOnExit> {
        entry.process.as_deref().and_then(|p| serde_json::from_str(p).ok())
    }

    fn describe(&self, now_ms: i64) -> String {
        format!(
            "stopped {} ago when the daemon exited (--stop-services-on-exit); the next pass starts it again",
            crate::report::elapsed(self.stopped_ms, now_ms)
        )
    }
}

pub fn process_record(entry: &InventoryEntry) -> Option<ProcessRecord> {
    entry.process.as_deref().and_then(|p| serde_json::from_str(p).ok())
}

fn identity_of(entry: &InventoryEntry) -> Option<ProcessIdentity> {
    process_record(entry).map(|r| r.identity)
}

/// What the host runs of what it owns: the inventory, checked against the process table.
fn observe(
    inventory: &LocalInventory,
    desired: &[DesiredService],
    probes: &Probes,
    exits: &mut BTreeMap<ResourceId, (ProcessIdentity, process::Exit)>,
    selected: &dyn Fn(&ResourceId) -> bool,
    take_exits: bool,
) -> Vec<OwnedItem> {
    let desired_by_id: BTreeMap<&ResourceId, &DesiredService> = desired.iter().map(|d| (&d.item.id, d)).collect();
    inventory
        .entries()
        .filter_map(|e| process_kind(&e.kind).map(|kind| (ResourceId::new(kind, e.name.clone()), e)))
        .filter(|(id, _)| selected(id))
        .map(|(id, entry)| {
            let probe = desired_by_id.get(&id).and_then(|d| d.spec.health.as_ref());
            let last_applied: Value = serde_json::from_str(&entry.last_applied).unwrap_or(Value::Null);
            let record = process_record(entry);
            let liveness = record.as_ref().map(|r| process::liveness(&r.identity));
            let noted = match (exits.get(&id), record.as_ref()) {
                (Some((identity, exit)), Some(r)) if *identity == r.identity => Some(*exit),
                _ => None,
            };
            let exit_code = noted
                .or_else(|| {
                    let identity = &record.as_ref()?.identity;
                    if take_exits {
                        process::take_exit(identity)
                    } else {
                        process::peek_exit(identity)
                    }
                })
                .and_then(|e| e.code);
            let probe = match (liveness, probe, record.as_ref(), probes) {
                (Some(Liveness::Running), Some(probe), Some(record), Probes::RunNow) => {
                    probe_running(probe, record.started_ms)
                }
                // The daemon's verdicts: the process's own probe, or its provider's (a hung model
                // server restarts its Service even when the Service declares no probe).
                (Some(Liveness::Running), _, Some(record), Probes::Known(known)) => known
                    .get(&id)
                    .filter(|(identity, _)| *identity == record.identity)
                    .map(|(_, verdict)| verdict.clone()),
                _ => None,
            };
            OwnedItem {
                id,
                hash: entry.spec_hash.clone(),
                prune_allowed: last_applied.get("x-prune").and_then(Value::as_str) != Some("disabled"),
                last_applied,
                running: liveness == Some(Liveness::Running),
                probe,
                restarts: record.as_ref().map_or(0, |r| r.restarts),
                started_ms: record.as_ref().map_or(0, |r| r.started_ms),
                exit_code,
            }
        })
        .collect()
}

/// Probes a running service: `Ok(answer)` on the first success, `Err(why)` when it fails
/// `failureThreshold` times in a row; None within its start period. A pass counts the failures
/// itself, at most 200 ms apart (the daemon probes every `interval`).
fn probe_running(probe: &crate::spec::common::Probe, started_ms: i64) -> Option<Result<String, String>> {
    if now_ms() - started_ms < probe.start_period().as_std().as_millis() as i64 {
        return None;
    }
    let pause = probe.interval().as_std().min(Duration::from_millis(200));
    let threshold = probe.failure_threshold().max(1);
    let mut last = String::new();
    for attempt in 1..=threshold {
        match probe::check(probe) {
            Ok(answer) => return Some(Ok(answer)),
            Err(why) => last = why,
        }
        if attempt < threshold {
            std::thread::sleep(pause);
        }
    }
    Some(Err(format!("probe failed {threshold} time(s) in a row: {last}")))
}

/// The cgroup an owned Service or Agent runs in (where the host offers one).
fn cgroup_of(state_dir: &Path, id: &ResourceId) -> cgroup::Cgroup {
    match id.kind {
        Kind::Agent => cgroup::for_agent(state_dir, &id.name),
        _ => cgroup::for_service(state_dir, &id.name),
    }
}

/// Carries out one change; Ok(detail) or Err(why it failed).
fn apply_change(
    context: &Context,
    key: &[u8],
    action: Action,
    id: &ResourceId,
    desired: Option<&DesiredService>,
    inventory: &mut LocalInventory,
    recorder: &Recorder,
) -> Result<String, String> {
    let current = inventory.get(id.kind.as_str(), &id.name).cloned();
    let stop_current = |inventory_entry: &Option<InventoryEntry>| -> String {
        let Some(identity) = inventory_entry.as_ref().and_then(identity_of) else {
            return String::new();
        };
        let (signal, grace) = match inventory_entry.as_ref().map(|e| stop_settings(&e.last_applied)) {
            Some(settings) => settings,
            None => ("SIGTERM", Duration::from_secs(10)),
        };
        let outcome = process::stop(&identity, signal, grace);
        // An agent's descendants that left its group and cleared their environment are still
        // in its cgroup: they go with it.
        let strays = {
            let cgroup = cgroup_of(&context.state_dir, id);
            let left = cgroup.members().len();
            if left > 0 {
                cgroup.kill(Duration::from_secs(2));
            }
            // Empty now: made again at the next start (no empty cgroups left behind).
            cgroup.remove();
            left
        };
        match strays {
            0 => format!("stopped pid {} ({outcome:?}); ", identity.pid),
            n => format!(
                "stopped pid {} ({outcome:?}) and {n} more process(es) of its cgroup; ",
                identity.pid
            ),
        }
    };
    let local_error = |e: crate::store::StoreError| e.to_string();
    match action {
        Action::Noop => Ok(String::new()),
        Action::Create | Action::Update | Action::Restart => {
            let desired = desired.ok_or("no desired spec")?;
            let stopped = if action == Action::Create {
                String::new()
            } else {
                stop_current(&current)
            };
            // A restart counts towards the backoff unless the last run was stable.
            let (restarts, total_restarts) = match (action, current.as_ref().and_then(process_record)) {
                (Action::Restart, Some(previous)) => {
                    let backoff = desired.spec.backoff();
                    let in_a_row =
                        crate::plan::next_restart(&backoff, previous.restarts, previous.started_ms, now_ms()).0 + 1;
                    (in_a_row, previous.restarts_shown() + 1)
                }
                // Started again after a daemon stopped it on exit: the count goes on.
                (Action::Restart, None) => (
                    0,
                    current
                        .as_ref()
                        .and_then(StoppedOnExit::of)
                        .map_or(0, |s| s.total_restarts),
                ),
                _ => (0, 0),
            };
            let mut run = desired.spec.clone();
            let mut cgroup_procs = Vec::new();
            if desired.agent.is_none() {
                // Membership only (no limits): a stop reaches every descendant.
                let mut group = cgroup::for_service(&context.state_dir, &id.name);
                if group.prepare(&cgroup::CgroupLimits::default()).is_ok() {
                    cgroup_procs = group.procs_files();
                }
            }
            let mut enrolled = String::new();
            let mut log_name = id.name.clone();
            if let Some((agent, policy, profile)) = &desired.agent {
                // The cgroup first: the enrollment records what contains the agent.
                let mut group = cgroup::for_agent(&context.state_dir, &id.name);
                match group.prepare(&cgroup::CgroupLimits::for_agent(agent.limits.as_ref())) {
                    Ok(()) => {
                        // The cgroup holds the tree's memory: an address-space rlimit would only
                        // break interpreters that reserve more than they use.
                        let memory_in_cgroup = group.v1.iter().any(|(c, _)| c == "memory")
                            || group.v2.as_deref().is_some_and(|d| d.join("memory.max").exists());
                        if memory_in_cgroup {
                            if let Some(limits) = run.limits.as_mut() {
                                limits.memory = None;
                            }
                        }
                        cgroup_procs = group.procs_files();
                    }
                    Err(e) => {
                        tracing::warn!(agent = %id.name, error = %e, "no cgroup for the agent: its limits are rlimits only")
                    }
                }
                let token;
                (enrolled, token) = enroll_agent(context, key, &id.name, agent, policy.as_ref(), recorder)?;
                for variable in agents::TOKEN_VARIABLES {
                    run.env.insert(variable.to_string(), token.clone());
                }
                run.command = agents::sandboxed_command(profile, agent);
                // An agent and a service may share a name: their logs must not.
                log_name = format!("agent-{}", id.name);
            }
            // The spawn is marked (a file, and the process's environment) until the inventory
            // records it: a controller killed in between finds and stops the unrecorded process
            // when it opens again, instead of starting a second one.
            let spawn_id = new_id();
            run.env.insert(SPAWN_ENV.into(), spawn_id.clone());
            let marker = context.state_dir.join(SPAWNING);
            std::fs::write(&marker, &spawn_id).map_err(|e| format!("{}: {e}", marker.display()))?;
            let identity = start(context, &log_name, &run, &cgroup_procs);
            let identity = identity.inspect_err(|_| {
                let _ = std::fs::remove_file(&marker);
            })?;
            let stopped = format!("{stopped}{enrolled}");
            let record = ProcessRecord {
                identity: identity.clone(),
                restarts,
                started_ms: now_ms(),
                total_restarts,
            };
            let entry = InventoryEntry {
                host: context.host.clone(),
                kind: id.kind.to_string(),
                name: id.name.clone(),
                spec_hash: desired.item.hash.clone(),
                last_applied: desired.item.rendered.to_string(),
                process: Some(serde_json::to_string(&record).expect("records serialize")),
                updated_ms: now_ms(),
            };
            inventory.upsert(entry, recorder).map_err(local_error)?;
            let _ = std::fs::remove_file(&marker);
            // Verify: a service with a probe must answer it before its dependents start.
            match &desired.spec.health {
                Some(probe) => {
                    let deadline = std::time::Instant::now() + probe::verify_budget(probe);
                    match probe::wait_healthy(probe, deadline) {
                        Ok(answer) => Ok(format!("{stopped}started pid {}; healthy: {answer}", identity.pid)),
                        Err(why) => Err(format!(
                            "{stopped}started pid {} but it is not healthy: {why}",
                            identity.pid
                        )),
                    }
                }
                None => Ok(format!("{stopped}started pid {}", identity.pid)),
            }
        }
        Action::Suspend => {
            let stopped = stop_current(&current);
            if let Some(mut entry) = current {
                entry.process = None;
                entry.updated_ms = now_ms();
                inventory.upsert(entry, recorder).map_err(local_error)?;
            }
            Ok(format!("{stopped}suspended"))
        }
        Action::Prune => {
            let stopped = stop_current(&current);
            inventory
                .remove(&context.host, id.kind.as_str(), &id.name, recorder)
                .map_err(local_error)?;
            cgroup_of(&context.state_dir, id).remove();
            let revoked = if id.kind == Kind::Agent {
                revoke_agent(context, &id.name, recorder)
            } else {
                String::new()
            };
            Ok(format!("{stopped}forgotten{revoked}"))
        }
    }
}

/// Enrolls an agent the first time it starts (sandbox, token, a record and a receipt) and
/// writes its policy file; what happened (for the change's detail) and the agent's token.
fn enroll_agent(
    context: &Context,
    key: &[u8],
    name: &str,
    agent: &AgentSpec,
    policy: Option<&crate::policy::AgentPolicy>,
    recorder: &Recorder,
) -> Result<(String, String), String> {
    let (enrollment, token, new) =
        agents::ensure(&context.state_dir, key, name, agent, now_ms()).map_err(|e| e.to_string())?;
    let policy_hash = policy.map(|p| p.hash.clone()).unwrap_or_default();
    if let Some(policy) = policy {
        agents::write_policy(&context.state_dir, name, &policy.file_text()).map_err(|e| e.to_string())?;
    }
    if !new {
        return Ok((String::new(), token));
    }
    recorder.record(Record::Enrollment(crate::store::Enrollment {
        host: context.host.clone(),
        agent: name.to_string(),
        token_hash: enrollment.token_hash.clone(),
        policy: enrollment.policy.clone(),
        policy_hash: policy_hash.clone(),
        sandbox: enrollment.sandbox.display().to_string(),
        enrolled_ms: enrollment.enrolled_ms,
    }));
    let detail = format!(
        "enrolled: sandbox {} (0700), policy {} ({}), token in agents/{name}/bus-token",
        enrollment.sandbox.display(),
        enrollment.policy,
        &policy_hash[..policy_hash.len().min(12)]
    );
    let protections = agents::containment(&context.state_dir, name);
    agents::record_protections(&context.state_dir, name, &protections).map_err(|e| e.to_string())?;
    recorder.receipt(ReceiptDraft {
        run_id: None,
        commit: None,
        kind: Kind::Agent.to_string(),
        name: name.to_string(),
        action: "enroll".into(),
        reason: "first start of the agent".into(),
        detail: json!({"ok": true, "detail": detail, "protections": protections}).to_string(),
    });
    Ok((format!("{detail}; "), token))
}

/// Running agents whose effective policy changed get the new file and SIGHUP (`onPolicyChange:
/// signal`; `restart` is a spec change the plan already restarted); a receipt each.
fn reload_policies(
    context: &Context,
    desired: &[DesiredService],
    changed: &[&ResourceId],
    inventory: &LocalInventory,
    recorder: &Recorder,
) {
    for d in desired {
        let Some((agent, Some(policy), _)) = &d.agent else {
            continue;
        };
        if changed.contains(&&d.item.id) || agent.on_policy_change != crate::spec::agent::PolicyReload::Signal {
            continue;
        }
        let Some(identity) = inventory
            .get(Kind::Agent.as_str(), &d.item.id.name)
            .and_then(identity_of)
        else {
            continue; // not running: it reads the file when it starts
        };
        match agents::write_policy(&context.state_dir, &d.item.id.name, &policy.file_text()) {
            Ok(false) => {}
            Ok(true) => {
                let signalled = process::notify(&identity, "SIGHUP");
                let detail = format!(
                    "policy {} version {} written; {}",
                    policy.policy.name,
                    policy.policy.version,
                    if signalled {
                        "SIGHUP sent"
                    } else {
                        "the process was not signalled (gone)"
                    }
                );
                tracing::info!(agent = %d.item.id.name, %detail, "policy reloaded");
                recorder.receipt(ReceiptDraft {
                    run_id: None,
                    commit: None,
                    kind: Kind::Agent.to_string(),
                    name: d.item.id.name.clone(),
                    action: "policy-reload".into(),
                    reason: "its policy changed".into(),
                    detail: json!({"ok": signalled, "detail": detail}).to_string(),
                });
            }
            Err(e) => tracing::warn!(agent = %d.item.id.name, error = %e, "writing the agent's policy failed"),
        }
    }
}

/// Revokes a pruned agent's token (its sandbox is kept); what happened.
fn revoke_agent(context: &Context, name: &str, recorder: &Recorder) -> String {
    let Some(enrollment) = agents::revoke(&context.state_dir, name) else {
        return String::new();
    };
    recorder.record(Record::EnrollmentRevoked {
        host: context.host.clone(),
        agent: name.to_string(),
        revoked_ms: now_ms(),
    });
    let detail = format!("token revoked; sandbox kept at {}", enrollment.sandbox.display());
    recorder.receipt(ReceiptDraft {
        run_id: None,
        commit: None,
        kind: Kind::Agent.to_string(),
        name: name.to_string(),
        action: "revoke".into(),
        reason: "the agent left the desired state".into(),
        detail: json!({"ok": true, "detail": detail}).to_string(),
    });
    format!("; {detail}")
}

/// Unchanged resources whose recorded spec differs only in what does not restart them (the
/// prune opt-out): the inventory learns it, the process is left alone.
fn refresh_unchanged(
    plan: &Plan,
    desired: &[DesiredService],
    inventory: &mut LocalInventory,
    recorder: &Recorder,
) -> Result<(), ReconcileError> {
    for change in plan.changes.iter().filter(|c| c.action == Action::Noop) {
        let Some(d) = desired
            .iter()
            .find(|d| d.item.id.kind == change.kind && d.item.id.name == change.name)
        else {
            continue;
        };
        if let Some(mut entry) = inventory.get(change.kind.as_str(), &change.name).cloned() {
            let rendered = d.item.rendered.to_string();
            if entry.last_applied != rendered && entry.spec_hash == d.item.hash {
                entry.last_applied = rendered;
                entry.updated_ms = now_ms();
                inventory.upsert(entry, recorder)?;
            }
        }
    }
    Ok(())
}

/// Bounds the logs of running services: each pass copies and truncates a log past its
/// `logs.maxSize` (the process keeps writing to the same file; its O_APPEND writes land at the
/// new end). Errors leave the log as it is.
fn rotate_logs(state_dir: &Path, desired: &[DesiredService]) {
    for service in desired {
        let logs = service.spec.logs();
        let path = state_dir.join("logs").join(format!("{}.log", service.item.id.name));
        let _ = process::rotate_running_log(&path, logs.max_size().0, logs.max_files());
    }
}

/// Marks a spawn in progress: `<state dir>/spawning` holds its id, and so does the process's
/// environment under [`SPAWN_ENV`]. Written without a sync: it guards against the controller's
/// death (its writes survive it), not the host's (which ends the process too).
const SPAWNING: &str = "spawning";

/// After a controller was killed between starting a process and recording it: stops that
/// process (the only one marked with the interrupted spawn's id and not in the inventory), so
/// the next pass starts exactly one.
fn stop_unrecorded_spawn(state_dir: &Path, inventory: &LocalInventory) {
    let marker = state_dir.join(SPAWNING);
    let Ok(spawn_id) = std::fs::read_to_string(&marker) else {
        return;
    };
    let recorded: Vec<i32> = inventory.entries().filter_map(identity_of).map(|i| i.pid).collect();
    for pid in process::leaders_with_env(SPAWN_ENV, spawn_id.trim()) {
        if recorded.contains(&pid) {
            continue;
        }
        if let Some(identity) = process::identify(pid) {
            let outcome = process::stop(&identity, "SIGTERM", Duration::from_secs(10));
            tracing::warn!(
                pid,
                outcome = ?outcome,
                "stopped a process started by an interrupted pass and never recorded"
            );
        }
    }
    let _ = std::fs::remove_file(&marker);
}

/// Below this much free space, the log directory counts as full.
const LOG_SPACE_LOW: u64 = 64 << 10;

/// A full log directory: services keep running (their writes fail, their output is lost), and
/// each of them gets a `degraded` item naming the directory. Nothing when there is room.
fn log_space_drift(state_dir: &Path, desired: &[DesiredService]) -> Vec<DriftItem> {
    let dir = state_dir.join("logs");
    let Ok(fs) = rustix::fs::statvfs(&dir) else {
        return Vec::new();
    };
    let free = fs.f_bavail.saturating_mul(fs.f_frsize);
    if free >= LOG_SPACE_LOW {
        return Vec::new();
    }
    desired
        .iter()
        .map(|d| DriftItem {
            kind: d.item.id.kind.to_string(),
            name: d.item.id.name.clone(),
            drift: Drift::Degraded,
            corrective: false,
            severity: Severity::Warning,
            detail: format!(
                "the log directory {} is full ({free} bytes free): output is lost until there is room",
                dir.display()
            ),
        })
        .collect()
}

/// The logs of a state's services and agents with their rotation settings: (path, maxSize,
/// maxFiles). The daemon checks them between passes (`daemon::log_watch`), so a service
/// flooding its log is rotated within a second, not at the next resync.
pub fn log_limits(state: &DesiredState, state_dir: &Path) -> Vec<(PathBuf, u64, u32)> {
    let dir = state_dir.join("logs");
    state
        .resources
        .iter()
        .filter_map(|r| {
            let (file, logs) = match &r.spec {
                Spec::Service(spec) => (format!("{}.log", r.metadata.name), spec.logs()),
                Spec::Agent(agent) => (
                    format!("agent-{}.log", r.metadata.name),
                    agent.logs.clone().unwrap_or_default(),
                ),
                _ => return None,
            };
            Some((dir.join(file), logs.max_size().0, logs.max_files()))
        })
        .collect()
}

/// The stop signal and grace of a last-applied spec.
fn stop_settings(last_applied: &str) -> (&'static str, Duration) {
    let spec: Option<ServiceSpec> = serde_json::from_str::<Value>(last_applied).ok().and_then(|mut v| {
        if let Some(o) = v.as_object_mut() {
            o.remove("x-prune");
            o.remove("envFiles");
        }
        serde_json::from_value(v).ok()
    });
    let stop = spec.map(|s| s.stop()).unwrap_or_default();
    (stop.signal().unwrap_or("SIGTERM"), stop.grace().as_std())
}

fn start(
    context: &Context,
    name: &str,
    spec: &ServiceSpec,
    cgroup_procs: &[std::fs::File],
) -> Result<ProcessIdentity, String> {
    let working_dir = match &spec.working_dir {
        Some(dir) => resolve(&context.state_dir, dir),
        None => context.state_dir.join("services").join(name),
    };
    if spec.working_dir.is_none() {
        std::fs::create_dir_all(&working_dir).map_err(|e| format!("{}: {e}", working_dir.display()))?;
    }
    let env_files: Vec<PathBuf> = spec.env_files.iter().map(|p| resolve(&context.state_dir, p)).collect();
    let logs = spec.logs();
    let log_dir = context.state_dir.join("logs");
    let spawn = SpawnSpec {
        name,
        command: &spec.command,
        working_dir: Some(&working_dir),
        env: &spec.env,
        env_files: &env_files,
        limits: spec.limits.as_ref(),
        log_dir: &log_dir,
        log_max_size: logs.max_size().0,
        log_max_files: logs.max_files(),
        cgroup_procs,
    };
    let identity = process::spawn(&spawn).map_err(|e| e.to_string())?;
    Ok(identity)
}

/// One resource in `mirrorctl status`.
#[derive(Clone, Debug, Serialize)]
pub struct ResourceStatus {
    pub kind: Kind,
    pub name: String,
    /// `Synced` when what runs is the committed spec, else `OutOfSync`.
    pub sync: &'static str,
    /// `Healthy`, `Progressing`, `Degraded`, `Missing` or `Suspended`.
    pub health: &'static str,
    pub pid: Option<i32>,
    pub restarts: u32,
    pub uptime_s: Option<u64>,
    pub last_exit: Option<i32>,
    /// One probe run now, for running services that have one.
    pub last_probe: Option<String>,
    pub detail: String,
    /// The last action on it that failed, while it does not run as desired (null otherwise).
    pub failure: Option<failures::Failure>,
    /// Agents only: the model the bus routes them to, `{"provider", "model", "degraded",
    /// "reason"}` (the daemon routes; null without one, or with no healthy model).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<Value>,
    /// Agents only: what contains it on this host, enforced or advisory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protections: Option<Vec<crate::supervisor::sandbox::Protection>>,
}

#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub commit: Option<String>,
    /// How liveness is checked on this platform (`linux-proc` or `portable-kill0`).
    pub mechanism: &'static str,
    pub resources: Vec<ResourceStatus>,
    /// Set when the desired state could not be loaded: status then shows the inventory alone, or,
    /// when a daemon keeps an earlier commit in force (`kept_in_force`), compares with that.
    pub source_error: Option<String>,
    /// HEAD is not applied (it could not be loaded, or is not trusted) and `commit` is the
    /// commit the daemon keeps in force.
    pub kept_in_force: bool,
    /// HEAD's commit when it is not the one in force (read, but not trusted); null otherwise.
    pub head: Option<String>,
    /// Launch agents, as the daemon's runner knows them (empty without a daemon).
    pub launch_agents: Vec<crate::supervisor::job::JobStatus>,
    /// Model providers' health (the daemon probes them; null without a daemon).
    pub providers: Value,
    /// Each agent's route (the daemon routes; null without a daemon).
    pub routes: Value,
    /// Whether agents' sandboxes are enforced on this kernel (Landlock) or only advisory.
    pub sandbox: String,
    /// Set by a daemon that answers while a pass runs: what it is doing and for how long. The
    /// report is then read from the inventory on disk (written as the pass goes).
    pub pass_running: Option<PassRunning>,
}

/// A pass in progress, as `status` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct PassRunning {
    pub trigger: String,
    pub for_ms: u64,
}

impl StatusReport {
    /// HEAD could not be loaded (`head_error`) and the report compares with the commit kept in
    /// force: none is Synced (HEAD is not applied).
    pub fn kept_in_force(mut self, head_error: String, head: Option<String>) -> Self {
        for resource in &mut self.resources {
            resource.sync = "OutOfSync";
        }
        self.source_error = Some(head_error);
        self.kept_in_force = true;
        self.head = head;
        self
    }
}

/// Stores the pass's drift report, or, when it says exactly what the last stored one said,
/// counts it there (`last_report`); returns the report as stored (its id, and its count).
fn store_report(
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

fn remember_report(context: &Context, last: &last_report::LastReport) {
    if let Err(e) = last_report::remember(&context.state_dir, last) {
        tracing::warn!(state_dir = %context.state_dir.display(), error = %e, "cannot remember the last drift report: the next one is stored whole");
    }
}

/// The resources people keep stopped (`mirrorctl stop`).
fn stopped_of(desired: &[DesiredService]) -> Vec<(ResourceId, overrides::Stopped)> {
    desired
        .iter()
        .filter_map(|d| Some((d.item.id.clone(), d.stopped.clone()?)))
        .collect()
}

/// Keeps `failures.json` in step with this pass's actions (and, on a full pass, forgets what is
/// no longer desired), so `status` can say why a resource does not run.
fn record_failures(
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

/// What runs against what is desired, without changing anything or writing to the store.
pub fn status(context: &Context) -> Result<StatusReport, ReconcileError> {
    let desired = source::load(&context.source).map(Arc::new).map_err(|e| e.summary());
    status_from_disk(context, desired, &Probes::RunNow)
}

/// Status from the inventory on disk rather than a reconciler's: the one-shot command, and a
/// daemon answering while its reconciler is busy with a pass.
pub fn status_from_disk(
    context: &Context,
    desired: Result<Arc<DesiredState>, String>,
    probes: &Probes,
) -> Result<StatusReport, ReconcileError> {
    let inventory = LocalInventory::load(&context.state_dir)?;
    let key = secret_key(&context.state_dir)?;
    Ok(status_of(
        &inventory,
        &key,
        &context.state_dir,
        &context.host,
        desired,
        probes,
        &mut BTreeMap::new(),
    ))
}

/// The kinds the supervisor runs as processes.
fn process_kind(kind: &str) -> Option<Kind> {
    [Kind::Service, Kind::Agent].into_iter().find(|k| k.as_str() == kind)
}

fn status_of(
    inventory: &LocalInventory,
    key: &[u8],
    state_dir: &Path,
    host: &str,
    desired_state: Result<Arc<DesiredState>, String>,
    probes: &Probes,
    exits: &mut BTreeMap<ResourceId, (ProcessIdentity, process::Exit)>,
) -> StatusReport {
    let (state, source_error) = match desired_state {
        Ok(state) => (Some(state), None),
        Err(e) => (None, Some(e)),
    };
    let desired = state
        .as_ref()
        .map(|s| {
            desired_services(
                s,
                key,
                state_dir,
                host,
                &policies::PolicyPlan::of(s, state_dir),
                &|_| true,
            )
        })
        .unwrap_or_default();
    // Status only looks: an exit status stays for the pass that reports it.
    let owned = observe(inventory, &desired, probes, exits, &|_| true, false);
    let plan = plan::plan(PlanInput {
        commit: state.as_ref().and_then(|s| s.commit.clone()),
        desired: desired.iter().map(|d| d.item.clone()).collect(),
        owned: owned.clone(),
        max_prune_fraction: 1.0,
        allow_mass_prune: true,
        now_ms: now_ms(),
    });
    let now = now_ms();
    let failures = failures::Failures::load(state_dir);
    let resources = plan
        .changes
        .iter()
        .map(|change| {
            let id = ResourceId::new(change.kind, change.name.clone());
            let o = owned.iter().find(|o| o.id == id);
            let d = desired.iter().find(|d| d.item.id == id);
            let record = inventory.get(id.kind.as_str(), &id.name).and_then(process_record);
            let synced = match (d, o) {
                (Some(d), Some(o)) => d.item.hash == o.hash,
                (Some(d), None) => d.item.suspend,
                _ => false,
            };
            let running = o.is_some_and(|o| o.running);
            let last_probe = o.and_then(|o| o.probe.clone());
            // Started, with a probe that has not answered for this process yet (its start
            // period, or the daemon's first probe still to come).
            let unproven = last_probe.is_none() && d.is_some_and(|d| d.spec.health.is_some());
            // The last action on it failed and it does not run as desired: say why and when.
            let failure = failures.get(&id).filter(|_| d.is_some() && !(synced && running));
            let stopped = d.and_then(|d| d.stopped.as_ref());
            let on_exit = inventory
                .get(id.kind.as_str(), &id.name)
                .and_then(StoppedOnExit::of)
                .filter(|_| !running);
            let health = match (d, o) {
                (Some(_), _) if stopped.is_some() && !running => "Stopped",
                (_, Some(_)) if on_exit.is_some() => "Stopped",
                (Some(d), _) if d.item.suspend && !running => "Suspended",
                _ if failure.is_some() => "Degraded",
                (_, Some(_)) if running && matches!(last_probe, Some(Err(_))) => "Degraded",
                (_, Some(_)) if running && unproven => "Progressing",
                (_, Some(_)) if running => "Healthy",
                (_, Some(_)) => "Degraded",
                (_, None) => "Missing",
            };
            ResourceStatus {
                kind: id.kind,
                name: id.name.clone(),
                sync: if synced && source_error.is_none() {
                    "Synced"
                } else {
                    "OutOfSync"
                },
                health,
                pid: record.as_ref().filter(|_| running).map(|r| r.identity.pid),
                restarts: record
                    .as_ref()
                    .map(ProcessRecord::restarts_shown)
                    .or_else(|| on_exit.as_ref().map(|s| s.total_restarts))
                    .unwrap_or(0),
                uptime_s: record
                    .as_ref()
                    .filter(|_| running)
                    .map(|r| ((now - r.started_ms).max(0) / 1000) as u64),
                last_exit: o.and_then(|o| o.exit_code),
                last_probe: last_probe.map(|result| match result {
                    Ok(answer) => format!("ok: {answer}"),
                    Err(why) => format!("failed: {why}"),
                }),
                detail: match (stopped, failure, &on_exit) {
                    (Some(stop), _, _) => stop.describe(&id.name, now),
                    (None, Some(f), _) => f.describe(now),
                    (None, None, Some(exit)) => exit.describe(now),
                    (None, None, None) => change.reason.clone(),
                },
                failure: failure.cloned(),
                route: (id.kind == Kind::Agent).then_some(Value::Null),
                protections: (id.kind == Kind::Agent).then(|| agents::containment(state_dir, &id.name)),
            }
        })
        .collect();
    StatusReport {
        commit: state.and_then(|s| s.commit.clone()),
        mechanism: process::mechanism(),
        resources,
        source_error,
        kept_in_force: false,
        head: None,
        launch_agents: Vec::new(),
        providers: Value::Null,
        routes: Value::Null,
        sandbox: crate::supervisor::sandbox::support().to_string(),
        pass_running: None,
    }
}
