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
mod interrupt;
pub mod last_report;
pub mod memory;
pub mod models;
pub mod overrides;
pub mod policies;

mod apply;
mod desired;
mod observe;
mod pass;
mod status;

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

// The pass's steps see each other's helpers through this module (they are `pub(super)`).
use apply::*;
use desired::*;
use observe::*;
use status::*;

#[cfg(unix)]
pub use interrupt::interrupt_on_sigint;
pub use interrupt::{interrupt, interrupted};
pub use observe::{log_limits, process_record, ProcessRecord};
pub use status::{status, status_from_disk, PassRunning, ResourceStatus, StatusReport};

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

impl PassOutcome {
    /// A pass that ended with `report` and nothing else to say yet.
    fn reported(report: DriftReport) -> PassOutcome {
        PassOutcome {
            commit: None,
            plan: None,
            diagnostics: Vec::new(),
            applied: Vec::new(),
            report,
            error: None,
            store: FlushReport::default(),
            policies: Vec::new(),
            models: Vec::new(),
            memory: memory::MemoryOutcome::default(),
            notes: Vec::new(),
        }
    }
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
        PassInput::whole(desired.map(Arc::new), Probes::RunNow)
    }

    /// A pass over everything in `desired`, with the probe verdicts it is given.
    pub fn whole(desired: Result<Arc<DesiredState>, LoadError>, probes: Probes) -> PassInput {
        PassInput {
            desired,
            extra_drift: Vec::new(),
            only: None,
            operation: None,
            probes,
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
}

/// Reads the source: `Err` when it cannot be read, `Ok(Err)` when it is invalid.
pub fn load_source(options: &SourceOptions) -> Result<Result<DesiredState, LoadError>, ReconcileError> {
    match source::load(options) {
        Err(LoadError::Read(e)) => Err(e.into()),
        other => Ok(other),
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
