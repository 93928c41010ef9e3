//! What each piece of work does, on the blocking thread: the only place the daemon reads the
//! source (with `status_while_busy`), checks its trust, and runs a pass.

use super::*;

/// Does one piece of work on the blocking thread: with `status_while_busy`, the only places the
/// daemon reads the source.
pub(super) fn perform(
    reconciler: &mut Reconciler,
    work: &Work,
    current: Option<Arc<DesiredState>>,
    probes: Probes,
    trust: Option<&AllowedSigners>,
    route_drift: Vec<DriftItem>,
    routing: &RoutingSnapshot,
) -> (Answer, Option<Arc<DesiredState>>) {
    let own_source = reconciler.context().source.clone();
    let mut job = Job {
        reconciler,
        current,
        probes,
        trust,
        route_drift,
        routing,
        own_source,
    };
    match work {
        Work::One { id, trigger } => job.one(id, trigger),
        Work::Full { trigger, reload } => job.full(trigger, *reload),
        Work::ScheduledReport => job.scheduled_report(),
        Work::Asked((request, reply)) => match request {
            Request::Reconcile {
                dry_run,
                allow_mass_prune,
                source,
                ..
            } => job.reconcile(source, *dry_run, *allow_mass_prune, reply),
            Request::DriftReport { source, .. } => job.drift_report(source),
            Request::Operate { name, verb, by, .. } => job.operate(name, *verb, by),
            // Answered by the event loop itself (see `Daemon::control`).
            Request::GatePending { .. } | Request::GateDecide { .. } => {
                (Answer::Error("gate requests are not passes".into()), None)
            }
            Request::Status { source, .. } => job.status(source),
        },
    }
}

/// One piece of work and what it is done with.
struct Job<'a> {
    reconciler: &'a mut Reconciler,
    current: Option<Arc<DesiredState>>,
    probes: Probes,
    trust: Option<&'a AllowedSigners>,
    /// Known to the daemon only: full passes and reports carry it.
    route_drift: Vec<DriftItem>,
    routing: &'a RoutingSnapshot,
    own_source: SourceOptions,
}

type Done = (Answer, Option<Arc<DesiredState>>);

fn not_yet() -> Done {
    (Answer::Error("no desired state in force yet".into()), None)
}

impl Job<'_> {
    fn with_routes(&self, mut input: PassInput) -> PassInput {
        input.extra_drift.extend(self.route_drift.iter().cloned());
        input
    }

    /// Observe-only passes count pending memory moves (drift items of their report) first.
    fn memory_preview(&self, input: &mut PassInput) -> Option<crate::reconcile::memory::MemoryOutcome> {
        let state = input.desired.as_ref().ok()?.clone();
        let store = &self.reconciler.context().store;
        let preview = tokio::runtime::Handle::current().block_on(memory::preview(&state, store));
        input.extra_drift.extend(memory::pending_drift(&preview));
        Some(preview)
    }

    /// The last state, as it is (no source read).
    fn in_force(
        &self,
        only: Option<ResourceId>,
        operation: Option<crate::reconcile::overrides::Operation>,
    ) -> Option<PassInput> {
        Some(PassInput {
            desired: Ok(self.current.clone()?),
            extra_drift: Vec::new(),
            only,
            operation,
            probes: self.probes.clone(),
        })
    }

    /// A pass over one service or agent that ended or fails its probe.
    fn one(&mut self, id: &ResourceId, trigger: &str) -> Done {
        let Some(input) = self.in_force(Some(id.clone()), None) else {
            return not_yet();
        };
        let options = pass_options(false, false, trigger);
        (Answer::Pass(Box::new(self.reconciler.pass(input, &options))), None)
    }

    /// A pass over everything: the source read again (and, when a starting daemon finds HEAD
    /// broken, the commit it recorded in force), or the last state.
    fn full(&mut self, trigger: &str, reload: bool) -> Done {
        let (input, applied) = if reload {
            let starting = self.current.is_none();
            let read = read_trusted(&self.own_source, self.current.clone(), self.trust, self.probes.clone());
            match read {
                (Ok(failed), None) if starting && failed.desired.is_err() => {
                    let state_dir = self.reconciler.context().state_dir.clone();
                    match recorded_state(&self.own_source, &state_dir, self.trust, self.probes.clone(), &failed) {
                        Some((input, state)) => (Ok(input), Some(state)),
                        None => (Ok(failed), None),
                    }
                }
                read => read,
            }
        } else {
            match self.in_force(None, None) {
                Some(input) => (Ok(input), None),
                None => return not_yet(),
            }
        };
        let options = pass_options(false, false, trigger);
        match input {
            Ok(input) => {
                let input = self.with_routes(input);
                (Answer::Pass(Box::new(self.reconciler.pass(input, &options))), applied)
            }
            Err(e) => (Answer::Error(e), None),
        }
    }

    /// The scheduled observe-only drift report.
    fn scheduled_report(&mut self) -> Done {
        match read_trusted(&self.own_source, self.current.clone(), self.trust, self.probes.clone()).0 {
            Ok(mut input) => {
                self.memory_preview(&mut input);
                let options = pass_options(true, false, "schedule");
                let input = self.with_routes(input);
                (Answer::Pass(Box::new(self.reconciler.pass(input, &options))), None)
            }
            Err(e) => (Answer::Error(e), None),
        }
    }

    /// `mirrorctl reconcile` through the daemon: its own source (or a dry-run of another), each
    /// action streamed back as it starts and ends, then the models and memory steps.
    fn reconcile(
        &mut self,
        source: &control::SourceRequest,
        dry_run: bool,
        allow_mass_prune: bool,
        reply: &Reply,
    ) -> Done {
        let own = &self.own_source;
        let asked = source_options(source, own);
        if !dry_run && !same_source(&asked, own) {
            return (
                Answer::Error(format!(
                    "this daemon applies {} (path {}, ref {}); a pass over another source can only be a --dry-run",
                    own.repo.display(),
                    own.path.display(),
                    own.reference
                )),
                None,
            );
        }
        let (mut input, applied) = read_trusted(&asked, self.current.clone(), self.trust, self.probes.clone());
        if !same_source(&asked, own) {
            input = input.map(without_credentials);
        }
        let options = pass_options(dry_run, allow_mass_prune, "cli");
        let mut input = match input {
            Ok(input) => input,
            Err(e) => return (Answer::Error(e), None),
        };
        let state = input.desired.as_ref().ok().cloned();
        let preview = if dry_run { self.memory_preview(&mut input) } else { None };
        // Each action as it starts and ends, to the asking command.
        let progress = reply.progress.clone();
        let input = self.with_routes(input);
        let mut outcome = self.reconciler.pass_reporting(input, &options, &mut |line| {
            let _ = progress.send(line);
        });
        let converging = outcome.plan.as_ref().is_some_and(|p| p.refused.is_none());
        if let (true, Some(state)) = (converging, state) {
            self.models_and_memory(&state, dry_run, &mut outcome);
        }
        if let Some(preview) = preview {
            outcome.memory = preview;
        }
        (Answer::Pass(Box::new(outcome)), if dry_run { None } else { applied })
    }

    /// The models step: a dry-run shows pulls and route decisions; an apply's pulls run in the
    /// daemon after the pass (progress: its log), and its memory rules run now.
    fn models_and_memory(&mut self, state: &Arc<DesiredState>, dry_run: bool, outcome: &mut PassOutcome) {
        let runtime = tokio::runtime::Handle::current();
        let mut actions = runtime.block_on(models::preview(state, Some(self.routing)));
        if !dry_run {
            actions.retain(|a| a.action == ModelActionKind::Pull);
        }
        outcome.models = actions;
        if !dry_run {
            let run_id = outcome.report.run_id.clone().unwrap_or_else(crate::store::new_id);
            let store = self.reconciler.context().store.clone();
            outcome.memory = runtime.block_on(memory::apply(state, &store, self.reconciler.recorder(), &run_id));
        }
    }

    /// `mirrorctl drift report` through the daemon: observe-only.
    fn drift_report(&mut self, source: &control::SourceRequest) -> Done {
        let asked = source_options(source, &self.own_source);
        let mut input = read_trusted(&asked, self.current.clone(), self.trust, self.probes.clone()).0;
        if !same_source(&asked, &self.own_source) {
            input = input.map(without_credentials);
        }
        match input {
            Ok(mut input) => {
                self.memory_preview(&mut input);
                let options = pass_options(true, false, "drift-report");
                let input = self.with_routes(input);
                (Answer::Pass(Box::new(self.reconciler.pass(input, &options))), None)
            }
            Err(e) => (Answer::Error(e), None),
        }
    }

    /// `mirrorctl stop/start/restart NAME`: a pass over that resource with the operation.
    fn operate(&mut self, name: &str, verb: crate::reconcile::overrides::Verb, by: &str) -> Done {
        let Some(state) = self.current.clone() else {
            return not_yet();
        };
        let state_dir = self.reconciler.context().state_dir.clone();
        match crate::reconcile::overrides::prepare(&state_dir, &state, name, verb, by, now_ms()) {
            Ok(operation) => {
                tracing::info!(resource = %operation.id, verb = verb.as_str(), %by, "asked by a person");
                let id = operation.id.clone();
                let input = self.in_force(Some(id), Some(operation)).expect("state in force");
                let options = pass_options(false, false, verb.as_str());
                (Answer::Pass(Box::new(self.reconciler.pass(input, &options))), None)
            }
            Err(e) => (Answer::Error(e.to_string()), None),
        }
    }

    /// `mirrorctl status` through the daemon.
    fn status(&mut self, source: &control::SourceRequest) -> Done {
        let asked = source_options(source, &self.own_source);
        let (desired, kept) = status_source(&asked, &self.own_source, self.current.clone(), self.trust);
        let report = self.reconciler.status(desired, &self.probes);
        (Answer::Status(Box::new(with_kept(report, kept))), None)
    }
}

/// What `status` compares the host with: the asked source as read, or, when it is the daemon's
/// own and HEAD broke (or was broken when the daemon started) or is not trusted
/// (`--require-signed`), the commit the daemon keeps in force, since that is what it
/// supervises; then also why HEAD is not in force, and HEAD's commit when it has one.
pub(super) fn status_source(
    asked: &SourceOptions,
    own: &SourceOptions,
    current: Option<Arc<DesiredState>>,
    trust: Option<&AllowedSigners>,
) -> (Result<Arc<DesiredState>, String>, Option<HeadRefused>) {
    let own_asked = same_source(asked, own);
    match (crate::source::load(asked), current) {
        (Ok(state), Some(in_force)) if own_asked && state.commit != in_force.commit => {
            match untrusted(asked, &state, trust) {
                Some(why) => (
                    Ok(in_force),
                    Some(HeadRefused {
                        why,
                        head: state.commit.clone(),
                    }),
                ),
                None => (Ok(Arc::new(state)), None),
            }
        }
        (Ok(state), _) => (Ok(Arc::new(state)), None),
        (Err(e), Some(in_force)) if own_asked => (
            Ok(in_force),
            Some(HeadRefused {
                why: e.summary(),
                head: None,
            }),
        ),
        (Err(e), _) => (Err(e.summary()), None),
    }
}

/// Why HEAD is not the commit in force, as `status` says it.
pub(super) struct HeadRefused {
    why: String,
    head: Option<String>,
}

/// Under `--require-signed`, why a loaded commit is not trusted (None: trusted, or no trust
/// required).
pub(super) fn untrusted(
    source: &SourceOptions,
    state: &DesiredState,
    trust: Option<&AllowedSigners>,
) -> Option<String> {
    let allowed = trust?;
    let Some(commit) = &state.commit else {
        return Some("no commit to verify".to_string());
    };
    match git2::Repository::discover(&source.repo) {
        Err(e) => Some(e.message().to_string()),
        Ok(repo) => crate::source::trust::verify_commit(&repo, commit, allowed)
            .err()
            .map(|e| format!("not trusted: {e}")),
    }
}

/// A status report marked as comparing with the commit in force when HEAD is not applied.
pub(super) fn with_kept(report: StatusReport, refused: Option<HeadRefused>) -> StatusReport {
    match refused {
        Some(refused) => report.kept_in_force(refused.why, refused.head),
        None => report,
    }
}

pub(super) fn pass_options(dry_run: bool, allow_mass_prune: bool, trigger: &str) -> PassOptions {
    PassOptions {
        models: false,
        memory: false,
        dry_run,
        allow_mass_prune,
        trigger: trigger.to_string(),
    }
}

pub(super) fn same_source(a: &SourceOptions, b: &SourceOptions) -> bool {
    let canonical = |p: &std::path::Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    canonical(&a.repo) == canonical(&b.repo)
        && a.path == b.path
        && a.reference == b.reference
        && a.worktree == b.worktree
}

pub(super) fn source_options(asked: &control::SourceRequest, own: &SourceOptions) -> SourceOptions {
    SourceOptions {
        repo: asked.repo.clone(),
        path: asked.path.clone(),
        reference: asked.reference.clone(),
        worktree: asked.worktree,
        max_file_size: own.max_file_size,
        host_base: own.host_base.clone(),
    }
}

/// A daemon starting on a HEAD it cannot apply (invalid, unreadable, untrusted) with no state in
/// force: the commit in force when a daemon last ran here (`in_force`), read again and checked
/// again (a signature too, under `--require-signed`), so services keep being supervised. The pass
/// reports HEAD's problem as a critical `invalid_source` item naming the commit kept. `None`: no
/// such commit, or it cannot be applied either (then HEAD's failure is reported as it is).
pub(super) fn recorded_state(
    own_source: &SourceOptions,
    state_dir: &std::path::Path,
    trust: Option<&AllowedSigners>,
    probes: Probes,
    failed: &PassInput,
) -> Option<(PassInput, Arc<DesiredState>)> {
    if own_source.worktree {
        return None;
    }
    let commit = crate::reconcile::in_force::recall(state_dir)?;
    let short = &commit[..12];
    let at_commit = SourceOptions {
        reference: commit.clone(),
        ..own_source.clone()
    };
    let (input, state) = match read_trusted(&at_commit, None, trust, probes) {
        (Ok(input), Some(state)) => (input, state),
        (input, _) => {
            let why = match &input {
                Ok(PassInput { desired: Err(e), .. }) => e.to_string(),
                Ok(_) => "not trusted".to_string(),
                Err(e) => e.clone(),
            };
            tracing::warn!(commit = %commit, %why, "the commit in force before this daemon started cannot be applied either");
            return None;
        }
    };
    let problem = match &failed.desired {
        Err(invalid @ LoadError::Invalid { diagnostics, .. }) if !diagnostics.is_empty() => {
            for d in diagnostics {
                tracing::warn!(diagnostic = %d, "the desired state at {} is invalid", own_source.reference);
            }
            invalid.summary()
        }
        Err(LoadError::Invalid { .. }) => "its commit is not trusted".to_string(),
        Err(e) => format!("it cannot be read: {e}"),
        Ok(_) => return None,
    };
    let reference = &own_source.reference;
    let detail = format!(
        "{reference} is not applied: {problem}; commit {short}, in force when the daemon last ran, stays in force"
    );
    tracing::warn!(commit = %commit, %reference, %problem, "starting on the commit in force before, not on {reference}");
    let mut extra_drift = failed.extra_drift.clone();
    extra_drift.push(DriftItem {
        kind: "Source".into(),
        name: own_source.path.display().to_string(),
        drift: Drift::InvalidSource,
        corrective: false,
        severity: Severity::Critical,
        detail,
    });
    extra_drift.extend(input.extra_drift);
    Some((PassInput { extra_drift, ..input }, state))
}

/// Reads the source and, under `--require-signed`, checks the commit's signature. An untrusted
/// commit is not applied: the state in force stays, and the report says `untrusted_source`.
/// Returns the pass input and the state to keep in force afterwards (the new one, if trusted).
/// A source other than the daemon's own (a preview someone asked for) is read without the
/// daemon's credentials: no `apiKeyEnv` is resolved, so a repository that names a provider on a
/// port its author listens on learns no key from the probe.
pub(super) fn without_credentials(mut input: PassInput) -> PassInput {
    if let Ok(state) = &mut input.desired {
        let state = Arc::make_mut(state);
        for resource in &mut state.resources {
            if let Spec::ModelProvider(provider) = &mut resource.spec {
                provider.api_key_env = None;
            }
        }
    }
    input
}

pub(super) fn read_trusted(
    source: &SourceOptions,
    current: Option<Arc<DesiredState>>,
    trust: Option<&AllowedSigners>,
    probes: Probes,
) -> (Result<PassInput, String>, Option<Arc<DesiredState>>) {
    let loaded = match load_source(source) {
        Ok(loaded) => loaded,
        Err(e) => {
            // Unreadable: nothing applied; the state in force stays.
            return (
                Ok(PassInput {
                    desired: Err(LoadError::Read(match e {
                        ReconcileError::Source(e) => e,
                        other => return (Err(other.to_string()), None),
                    })),
                    extra_drift: Vec::new(),
                    only: None,
                    operation: None,
                    probes,
                }),
                None,
            );
        }
    };
    let state = match loaded {
        Ok(state) => state,
        Err(invalid) => return (Ok(PassInput::whole(Err(invalid), probes)), None),
    };
    let Some(allowed) = trust else {
        let state = Arc::new(state);
        return (Ok(PassInput::whole(Ok(state.clone()), probes)), Some(state));
    };
    let verdict = match (&state.commit, git2::Repository::discover(&source.repo)) {
        (None, _) => Err("no commit to verify".to_string()),
        (Some(_), Err(e)) => Err(e.message().to_string()),
        (Some(commit), Ok(repo)) => crate::source::trust::verify_commit(&repo, commit, allowed)
            .map(|v| format!("signed by {} ({})", v.principal, v.fingerprint))
            .map_err(|e| e.to_string()),
    };
    match verdict {
        Ok(signer) => {
            tracing::info!(commit = state.commit.as_deref().unwrap_or("-"), %signer, "commit trusted");
            let state = Arc::new(state);
            (Ok(PassInput::whole(Ok(state.clone()), probes)), Some(state))
        }
        Err(why) => {
            let commit = state.commit.clone().unwrap_or_default();
            let short = &commit[..commit.len().min(12)];
            let in_force = current.as_ref().and_then(|s| s.commit.clone());
            let detail = match &in_force {
                Some(trusted) => format!(
                    "commit {short} is not applied: {why}; commit {} stays in force",
                    &trusted[..trusted.len().min(12)]
                ),
                None => format!("commit {short} is not applied: {why}; no trusted commit yet, nothing applied"),
            };
            tracing::warn!(commit = %commit, %why, "untrusted commit refused");
            let item = DriftItem {
                kind: "Source".into(),
                name: source.path.display().to_string(),
                drift: Drift::UntrustedSource,
                corrective: false,
                severity: Severity::Critical,
                detail,
            };
            let desired = match current {
                Some(state) => Ok(state),
                None => Err(LoadError::Invalid {
                    commit: state.commit.clone(),
                    files: 0,
                    diagnostics: Vec::new(),
                }),
            };
            (
                Ok(PassInput {
                    desired,
                    extra_drift: vec![item],
                    only: None,
                    operation: None,
                    probes,
                }),
                None,
            )
        }
    }
}
