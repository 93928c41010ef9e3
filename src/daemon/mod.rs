//! The daemon (`mirrorctl run`): one event loop over a closed set of events. Passes block
//! (process stops, probe waits), so each runs on a blocking thread while the loop goes on
//! receiving events; one pass at a time, with the [`Reconciler`] handed to it and back.
//!
//! ```text
//! git watch ─┐  resync timer ─┐  child watchers ─┐  probe tasks ─┐  cron ─┐  socket ─┐  signals ─┐
//!            └────────────────┴──────────────────┴───────────────┴────────┴──────────┴───────────┴─> Event
//! Event -> queue of Work (a crashed service first) -> one pass on a blocking thread -> PassDone
//! PassDone -> watch the processes it started, probe them, arm the backoff timer, answer, metrics
//! ```

pub mod control;
pub mod git_watch;
pub mod log_watch;
pub mod metrics;
pub mod peer;
pub mod routing;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;

use crate::reconcile::memory;
use crate::reconcile::models::{self, RoutingSnapshot};
use crate::reconcile::{
    load_source, Context, PassInput, PassOptions, PassOutcome, Probes, ReconcileError, Reconciler, StatusReport,
};
use crate::report::{now_ms, Drift, DriftItem, Severity};
use crate::router::preview::ModelActionKind;
use crate::source::trust::AllowedSigners;
use crate::source::{DesiredState, LoadError, SourceOptions};
use crate::spec::common::{Probe, Schedule};
use crate::spec::{Kind, ResourceId, Spec};
use crate::supervisor::job::JobRunner;
use crate::supervisor::process::ProcessIdentity;
use crate::supervisor::watch::{self, Ended};
use control::{Asked, Reply, Request, Response};
use metrics::Metrics;

/// How `mirrorctl run` was started.
#[derive(Clone, Debug)]
pub struct Config {
    pub context: Context,
    pub stop_services_on_exit: bool,
    /// `--require-signed --allowed-signers FILE`: only commits signed by these keys apply.
    pub allowed_signers: Option<PathBuf>,
    pub metrics_addr: Option<SocketAddr>,
}

/// What a control request gets back before it is rendered.
pub enum Answer {
    Pass(Box<PassOutcome>),
    Status(Box<StatusReport>),
    Error(String),
}

/// Renders an answer exactly as the command would print it running alone (the CLI provides it).
pub type Renderer = Arc<dyn Fn(&Request, Answer) -> Response + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("another mirrorctl daemon (pid {pid}) already runs on {state_dir}; stop it first (kill -TERM {pid})")]
    AlreadyRunning { pid: String, state_dir: PathBuf },
    #[error("{path}: locking the state dir: {source}")]
    Lock { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
    #[error(transparent)]
    Control(#[from] control::ControlError),
    #[error(transparent)]
    Watch(#[from] git_watch::GitWatchError),
    #[error("{path}: reading the allowed signers: {message}")]
    AllowedSigners { path: PathBuf, message: String },
    #[error("{0}")]
    Metrics(std::io::Error),
    #[error("listening for signals: {0}")]
    Signals(std::io::Error),
    #[error(transparent)]
    Jobs(#[from] crate::supervisor::job::JobError),
}

/// The closed set of things the loop reacts to.
enum Event {
    /// The repository's refs moved (debounced).
    SourceChanged,
    /// The periodic resync (Controller `resync`).
    Resync,
    /// A supervised process ended, noticed the moment it did.
    ChildExited {
        id: ResourceId,
        identity: ProcessIdentity,
        ended: Ended,
    },
    /// A restart held back by its backoff is due.
    RestartDue,
    /// A health probe of a running service answered.
    Probed {
        id: ResourceId,
        identity: ProcessIdentity,
        result: Result<String, String>,
    },
    /// The Controller's drift-report schedule fired.
    DriftReportDue,
    /// The Controller's `memory.schedule` fired: MemoryRules run over the truth store.
    MemoryRulesDue,
    /// A one-shot command asks (through the control socket).
    Control(Asked),
    /// A pass finished on its blocking thread.
    PassDone(Box<Finished>),
    /// A model provider's health probe answered.
    ProviderProbed(routing::Probed),
    /// A failback may have come due.
    RouteCheck,
    /// A status read while a pass ran, to complete and answer.
    StatusRead(Box<StatusRead>),
    /// SIGTERM or SIGINT.
    Shutdown(&'static str),
}

/// A status request, its report read from disk (or why it could not be), and where to answer.
type StatusRead = (Request, Result<StatusReport, String>, Reply);

/// Work waiting for the reconciler, one at a time.
enum Work {
    /// A pass over everything, the source read again (unless `reload` is false: the last state).
    Full { trigger: &'static str, reload: bool },
    /// A pass over one service or agent that ended or fails its probe, on the last state.
    One { id: ResourceId, trigger: &'static str },
    /// A control request.
    Asked(Asked),
    /// The scheduled observe-only drift report.
    ScheduledReport,
}

struct Finished {
    reconciler: Reconciler,
    work: Work,
    result: Answer,
    /// The state the pass applied, when it was read again and trusted.
    applied: Option<Arc<DesiredState>>,
    took: Duration,
}

/// Per service: its probe task, and the consecutive failures of the process it probes.
struct Probing {
    identity: ProcessIdentity,
    task: AbortHandle,
    failures: u32,
    threshold: u32,
    /// When the process started and how long its probe's start period lasts (ms).
    started_ms: i64,
    start_period_ms: i64,
}

struct Daemon {
    config: Config,
    events: mpsc::UnboundedSender<Event>,
    metrics: Arc<Metrics>,
    render: Renderer,
    trust: Option<AllowedSigners>,
    /// None while a pass runs with it.
    reconciler: Option<Reconciler>,
    queue: VecDeque<Work>,
    /// The desired state in force: the last one read that was valid (and trusted).
    current: Option<Arc<DesiredState>>,
    /// Exit watchers, by service or agent.
    watchers: BTreeMap<ResourceId, (ProcessIdentity, AbortHandle)>,
    /// Identities whose end was already handled (never watched again).
    ended: BTreeSet<ProcessIdentity>,
    probing: BTreeMap<ResourceId, Probing>,
    /// Probe verdicts for passes: `Err` once the threshold is reached.
    verdicts: BTreeMap<ResourceId, (ProcessIdentity, Result<String, String>)>,
    /// When the armed backoff timer fires (ms), and the timer.
    backoff_timer: Option<(i64, AbortHandle)>,
    report_timer: Option<(String, AbortHandle)>,
    /// The memory-rules schedule armed (its description) and its timer.
    memory_timer: Option<(String, AbortHandle)>,
    shutting_down: Option<&'static str>,
    /// Provider health and agent routes.
    routing: routing::Routing,
    /// The model bus: tokens and routes it serves, and its server (address, stop).
    bus: crate::router::bus::BusState,
    bus_server: Option<(SocketAddr, oneshot::Sender<()>)>,
    bus_agents: BTreeSet<String>,
    /// Providers whose `models` are present or being pulled (by URL + models), so each set is
    /// ensured once; a failed pull is forgotten and tried again at the next resync.
    models_ensured: Arc<std::sync::Mutex<BTreeSet<String>>>,
    /// The last error of each provider's models check (logged at WARN when it changes).
    models_failing: Arc<std::sync::Mutex<BTreeMap<String, String>>>,
    pricing: Arc<std::sync::RwLock<BTreeMap<String, crate::spec::provider::Pricing>>>,
    probed: mpsc::UnboundedSender<routing::Probed>,
    route_timer: Option<(i64, AbortHandle)>,
    /// A handle to the truth-store writer (route changes are recorded while a pass runs).
    recorder: crate::store::Recorder,
    /// The launch-agent runner (None once shut down).
    jobs: Arc<tokio::sync::Mutex<Option<JobRunner>>>,
    /// Exit statuses seen while a pass had the reconciler.
    pending_exits: Vec<(ResourceId, ProcessIdentity, crate::supervisor::process::Exit)>,
    /// The work the reconciler is busy with (its trigger) and since when.
    busy: Option<(&'static str, Instant)>,
}

/// Runs the daemon until SIGTERM or SIGINT. Services keep running after it ends unless
/// `stop_services_on_exit`.
pub async fn run(config: Config, render: Renderer) -> Result<(), DaemonError> {
    // Undumpable: its environment (the keys `apiKeyEnv` names), memory and descriptors are not
    // readable through /proc by processes of its user without CAP_SYS_PTRACE (agents have none).
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable) {
        tracing::warn!(error = %e, "could not make the daemon undumpable: agents of its user may read its environment");
    }
    let state_dir = config.context.state_dir.clone();
    let _lock = crate::state::lock_state_dir_for_daemon(&state_dir).map_err(|e| match e {
        crate::state::LockError::Held { pid } => DaemonError::AlreadyRunning {
            pid,
            state_dir: state_dir.clone(),
        },
        crate::state::LockError::Io(source) => DaemonError::Lock {
            path: state_dir.join("lock"),
            source,
        },
    })?;
    let trust = match &config.allowed_signers {
        Some(path) => Some(AllowedSigners::load(path).map_err(|e| DaemonError::AllowedSigners {
            path: path.clone(),
            message: e.to_string(),
        })?),
        None => None,
    };
    // Commands run without --repo/--path (from any directory) default to this daemon's source.
    let source = crate::reconcile::in_force::applied_source(&config.context.source);
    if let Some(Err(e)) = source.map(|s| crate::reconcile::in_force::remember_source(&state_dir, &s)) {
        tracing::warn!(state_dir = %state_dir.display(), error = %e, "cannot record the daemon's source: commands from other directories will not find it");
    }
    let reconciler = Reconciler::open(config.context.clone())?;
    let (events, mut inbox) = mpsc::unbounded_channel();
    let metrics = Metrics::new();
    metrics.heartbeat();
    // The launch-agent runner starts when there is something to run or adopt (its scheduler
    // costs memory and wakes twice a second).
    let jobs = if crate::supervisor::job::JobRunner::owns_any(&state_dir) {
        Some(start_jobs(&config.context, reconciler.recorder().clone(), metrics.clone()).await?)
    } else {
        None
    };
    let jobs = Arc::new(tokio::sync::Mutex::new(jobs));

    // Control socket.
    let listener = control::bind(&state_dir)?;
    let (asked_tx, mut asked_rx) = mpsc::unbounded_channel::<Asked>();
    let refusals = reconciler.recorder().clone();
    let refused = Arc::new(move |peer: &peer::Peer, agent: &peer::AgentPeer| {
        tracing::warn!(pid = ?peer.pid, uid = peer.uid, evidence = %agent.evidence, "control socket: refused an agent's connection");
        refusals.receipt(crate::store::ReceiptDraft {
            run_id: None,
            commit: None,
            kind: "Agent".into(),
            name: agent.agent.clone().unwrap_or_else(|| "(unknown)".into()),
            action: "control-refused".into(),
            reason: format!("the control socket answers people, not agents: {}", agent.evidence),
            detail: serde_json::json!({"pid": peer.pid, "uid": peer.uid}).to_string(),
        });
    });
    let server = tokio::spawn(control::serve(listener, asked_tx, refused));
    let tx = events.clone();
    tokio::spawn(async move {
        while let Some(asked) = asked_rx.recv().await {
            if tx.send(Event::Control(asked)).is_err() {
                return;
            }
        }
    });

    // Provider probes.
    let (probed_tx, mut probed_rx) = mpsc::unbounded_channel::<routing::Probed>();
    let tx = events.clone();
    tokio::spawn(async move {
        while let Some(probed) = probed_rx.recv().await {
            if tx.send(Event::ProviderProbed(probed)).is_err() {
                return;
            }
        }
    });

    // Signals.
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let tx = events.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        let _ = tx.send(Event::Shutdown(name));
    });

    // The source.
    let (changed_tx, mut changed_rx) = mpsc::unbounded_channel();
    let source_watch = git_watch::watch(
        &config.context.source.repo,
        &config.context.source.reference,
        changed_tx,
    )?;
    let tx = events.clone();
    tokio::spawn(async move {
        while changed_rx.recv().await.is_some() {
            if tx.send(Event::SourceChanged).is_err() {
                return;
            }
        }
    });

    // Metrics.
    let (stop_metrics_tx, stop_metrics_rx) = oneshot::channel::<()>();
    let metrics_server = match config.metrics_addr {
        Some(addr) => {
            let (bound, handle) = metrics::serve(addr, metrics.clone(), Duration::from_secs(60), async {
                let _ = stop_metrics_rx.await;
            })
            .await
            .map_err(DaemonError::Metrics)?;
            tracing::info!(%bound, "serving /metrics and /healthz");
            Some(handle)
        }
        None => None,
    };
    tracing::info!(
        state_dir = %state_dir.display(),
        repo = %config.context.source.repo.display(),
        reference = %config.context.source.reference,
        watch = source_watch.mechanism(),
        exit_watch = if cfg!(target_os = "linux") { "pidfd" } else { "poll" },
        "mirrorctl daemon started (pid {})",
        std::process::id()
    );

    let reconciler_recorder = reconciler.recorder().clone();
    let mut daemon = Daemon {
        config,
        events: events.clone(),
        metrics: metrics.clone(),
        render,
        trust,
        reconciler: Some(reconciler),
        queue: VecDeque::new(),
        current: None,
        watchers: BTreeMap::new(),
        ended: BTreeSet::new(),
        probing: BTreeMap::new(),
        verdicts: BTreeMap::new(),
        backoff_timer: None,
        report_timer: None,
        memory_timer: None,
        shutting_down: None,
        pending_exits: Vec::new(),
        busy: None,
        routing: routing::Routing::default(),
        bus: crate::router::bus::BusState::default(),
        bus_server: None,
        bus_agents: BTreeSet::new(),
        models_ensured: Arc::new(std::sync::Mutex::new(BTreeSet::new())),
        models_failing: Arc::new(std::sync::Mutex::new(BTreeMap::new())),
        pricing: Arc::new(std::sync::RwLock::new(BTreeMap::new())),
        probed: probed_tx,
        route_timer: None,
        recorder: reconciler_recorder,
        jobs: jobs.clone(),
    };
    // Governance: every gate decision a receipt; today's usage and approvals survive a restart.
    {
        let governance = daemon.bus.governance().clone();
        let recorder = daemon.recorder.clone();
        governance.set_receipts(Arc::new(move |draft| recorder.receipt(draft)));
        let state_dir = &daemon.config.context.state_dir;
        governance.persist(state_dir.join("usage-today.json"), state_dir.join("approvals.json"));
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let governance = governance.clone();
                let _ = tokio::task::spawn_blocking(move || governance.save()).await;
            }
        });
    }
    daemon.queue.push_back(Work::Full {
        trigger: "startup",
        reload: true,
    });
    daemon.next();

    // Two timers, and otherwise the loop sleeps: the resync (the interval of the state in force,
    // counted from the last resync) and the heartbeat that tells /healthz the loop is alive.
    let mut resync_every = daemon.resync_interval();
    let mut next_resync = tokio::time::Instant::now() + resync_every;
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Logs are bounded between passes too (see `log_watch`).
    let mut log_watch = log_watch::LogWatch::default();
    let mut next_log_check = tokio::time::Instant::now() + log_watch::HOT_CHECK;

    loop {
        // A new state in force may set another interval: counted from the last resync.
        if daemon.resync_interval() != resync_every {
            let last = next_resync - resync_every;
            resync_every = daemon.resync_interval();
            next_resync = last + resync_every;
        }
        let event = tokio::select! {
            event = inbox.recv() => match event {
                Some(event) => event,
                None => break,
            },
            _ = tokio::time::sleep_until(next_resync) => {
                resync_every = daemon.resync_interval();
                next_resync = tokio::time::Instant::now() + resync_every;
                Event::Resync
            }
            _ = heartbeat.tick() => {
                metrics.heartbeat();
                continue;
            }
            _ = tokio::time::sleep_until(next_log_check) => {
                let wait = match &daemon.current {
                    Some(state) => log_watch.check(state, &daemon.config.context.state_dir),
                    None => log_watch::COLD_CHECK,
                };
                next_log_check = tokio::time::Instant::now() + wait;
                continue;
            }
        };
        metrics.heartbeat();
        match event {
            Event::Resync => daemon.enqueue(Work::Full {
                trigger: "resync",
                reload: true,
            }),
            Event::SourceChanged => daemon.enqueue(Work::Full {
                trigger: "commit",
                reload: true,
            }),
            Event::ChildExited { id, identity, ended } => daemon.child_exited(id, identity, ended),
            Event::RestartDue => daemon.enqueue(Work::Full {
                trigger: "backoff",
                reload: false,
            }),
            Event::Probed { id, identity, result } => daemon.probed(id, identity, result),
            Event::DriftReportDue => {
                daemon.report_timer = None;
                daemon.enqueue(Work::ScheduledReport);
            }
            Event::MemoryRulesDue => daemon.memory_rules_due(),
            Event::Control(asked) => daemon.control(asked),
            Event::ProviderProbed(probed) => daemon.provider_probed(probed),
            Event::RouteCheck => {
                daemon.route_timer = None;
                daemon.decide_routes();
            }
            Event::StatusRead(read) => {
                let (request, answer, reply) = *read;
                match answer {
                    Ok(report) => daemon.reply_status(request, report, reply),
                    Err(e) => {
                        let _ = reply.send((daemon.render)(&request, Answer::Error(e)));
                    }
                }
            }
            Event::PassDone(finished) => {
                daemon.finished(*finished);
                // A pass may have started services: their logs are looked at soon, not at the
                // next check at rest (a flood from the first line writes ~1.4 GB a second).
                next_log_check = next_log_check.min(tokio::time::Instant::now() + log_watch::HOT_CHECK);
            }
            Event::Shutdown(signal) => {
                tracing::info!(signal, "shutting down");
                daemon.shutting_down = Some(signal);
                for work in std::mem::take(&mut daemon.queue) {
                    if let Work::Asked((_, reply)) = work {
                        let _ = reply.send(Response {
                            exit_code: 1,
                            stdout: String::new(),
                            stderr: "mirrorctl: error: the daemon is shutting down\n".into(),
                        });
                    }
                }
            }
        }
        if daemon.shutting_down.is_some() && daemon.reconciler.is_some() {
            break;
        }
        daemon.next();
    }

    // Shutdown: no new work; services keep running unless asked otherwise.
    server.abort();
    drop(source_watch);
    for (_, (_, task)) in std::mem::take(&mut daemon.watchers) {
        task.abort();
    }
    for (_, probing) in std::mem::take(&mut daemon.probing) {
        probing.task.abort();
    }
    daemon.routing.stop();
    if let Some((_, stop)) = daemon.bus_server.take() {
        let _ = stop.send(());
    }
    let _ = std::fs::remove_file(control::socket_path(&state_dir));
    let mut reconciler = daemon.reconciler.take().expect("no pass runs at shutdown");
    if daemon.config.stop_services_on_exit {
        let (back, stopped) = tokio::task::spawn_blocking(move || {
            let stopped = reconciler.stop_all();
            (reconciler, stopped)
        })
        .await
        .expect("stopping services does not panic");
        reconciler = back;
        for line in stopped {
            tracing::info!("stopped {line}");
        }
    } else {
        tracing::info!("services keep running; a new `mirrorctl run` adopts them");
    }
    if let Some(runner) = jobs.lock().await.take() {
        runner.shutdown(daemon.config.stop_services_on_exit).await;
    }
    let flushed = reconciler.flush().await;
    if let Some(problem) = flushed.store_error {
        tracing::warn!(%problem, pending = flushed.pending, "the truth store was not written; records wait in the journal");
    }
    let _ = stop_metrics_tx.send(());
    if let Some(handle) = metrics_server {
        let _ = handle.await;
    }
    Ok(())
}

impl Daemon {
    fn resync_interval(&self) -> Duration {
        self.current
            .as_ref()
            .map(|s| s.controller().resync().as_std())
            .unwrap_or(Duration::from_secs(30))
            .max(Duration::from_secs(1))
    }

    fn enqueue(&mut self, work: Work) {
        if self.shutting_down.is_some() {
            if let Work::Asked((_, reply)) = work {
                let _ = reply.send(Response {
                    exit_code: 1,
                    stdout: String::new(),
                    stderr: "mirrorctl: error: the daemon is shutting down\n".into(),
                });
            }
            return;
        }
        match &work {
            // A crashed service goes first; once queued, once.
            Work::One { id, .. } => {
                if !self
                    .queue
                    .iter()
                    .any(|w| matches!(w, Work::One { id: queued, .. } if queued == id))
                {
                    let at = self.queue.iter().take_while(|w| matches!(w, Work::One { .. })).count();
                    self.queue.insert(at, work);
                }
            }
            Work::Full { reload, .. } => {
                // One waiting full pass covers every trigger (a re-read covers a re-use).
                let reload = *reload;
                if let Some(Work::Full { reload: queued, .. }) =
                    self.queue.iter_mut().find(|w| matches!(w, Work::Full { .. }))
                {
                    *queued |= reload;
                } else {
                    self.queue.push_back(work);
                }
            }
            Work::ScheduledReport => {
                if !self.queue.iter().any(|w| matches!(w, Work::ScheduledReport)) {
                    self.queue.push_back(work);
                }
            }
            Work::Asked(_) => self.queue.push_back(work),
        }
    }

    /// Starts the next piece of work if the reconciler is free.
    fn next(&mut self) {
        if self.reconciler.is_none() || self.shutting_down.is_some() {
            return;
        }
        let Some(work) = self.queue.pop_front() else { return };
        self.busy = Some((trigger_of(&work), Instant::now()));
        let mut reconciler = self.reconciler.take().expect("checked");
        let current = self.current.clone();
        let probes = Probes::Known(self.verdicts.clone());
        let trust = self.trust.clone();
        let events = self.events.clone();
        let mut route_drift = self.routing.drift(self.current.as_deref());
        route_drift.extend(self.bus.governance().budget_drift(now_ms()));
        let routing = self.routing.snapshot();
        tokio::task::spawn_blocking(move || {
            let begun = Instant::now();
            let (result, applied) = perform(
                &mut reconciler,
                &work,
                current,
                probes,
                trust.as_ref(),
                route_drift,
                &routing,
            );
            let _ = events.send(Event::PassDone(Box::new(Finished {
                reconciler,
                work,
                result,
                applied,
                took: begun.elapsed(),
            })));
        });
    }

    fn child_exited(&mut self, id: ResourceId, identity: ProcessIdentity, ended: Ended) {
        let current = self.watchers.get(&id).map(|(watched, _)| watched.clone());
        self.ended.insert(identity.clone());
        if current.as_ref() != Some(&identity) {
            return; // stopped on purpose by a pass (update, prune): not a crash
        }
        self.watchers.remove(&id);
        tracing::warn!(resource = %id, pid = identity.pid, exit = ?ended.exit, mechanism = ended.mechanism.as_str(), "process ended");
        if let (Some(reconciler), Some(exit)) = (self.reconciler.as_mut(), ended.exit) {
            reconciler.note_exit(&id, identity.clone(), exit);
        } else if let Some(exit) = ended.exit {
            self.pending_exits.push((id.clone(), identity.clone(), exit));
        }
        self.enqueue(Work::One {
            id,
            trigger: "child-exit",
        });
    }

    fn probed(&mut self, id: ResourceId, identity: ProcessIdentity, result: Result<String, String>) {
        let Some(probing) = self.probing.get_mut(&id) else {
            return;
        };
        if probing.identity != identity {
            return;
        }
        let hijack = (id.kind == Kind::Service)
            .then(|| self.current.as_ref().and_then(|s| self.routing.hijack_of(&id.name, s)))
            .flatten();
        match result {
            // The answer may have come from whoever holds the port: not healthy while it does.
            Ok(_) if hijack.is_some() => {
                self.verdicts.insert(id, (identity, Err(hijack.unwrap_or_default())));
            }
            Ok(answer) => {
                // One line per change of state: back to healthy after being called unhealthy.
                if probing.failures >= probing.threshold {
                    tracing::info!(resource = %id, %answer, "healthy again");
                }
                probing.failures = 0;
                self.verdicts.insert(id, (identity, Ok(answer)));
            }
            Err(why) => {
                probing.failures += 1;
                if probing.failures >= probing.threshold {
                    let verdict = format!("probe failed {} time(s) in a row: {why}", probing.failures);
                    // Said once when it becomes unhealthy; later failures only at debug.
                    if probing.failures == probing.threshold {
                        tracing::warn!(resource = %id, %verdict, "unhealthy");
                    } else {
                        tracing::debug!(resource = %id, %verdict, "still unhealthy");
                    }
                    self.verdicts.insert(id.clone(), (identity, Err(verdict)));
                    self.enqueue(Work::One { id, trigger: "probe" });
                }
            }
        }
    }

    fn finished(&mut self, finished: Finished) {
        let Finished {
            mut reconciler,
            work,
            result,
            applied,
            took,
        } = finished;
        for (id, identity, exit) in self.pending_exits.drain(..) {
            reconciler.note_exit(&id, identity, exit);
        }
        // Before the probe tasks start: whose listener each provider's answer must come from.
        self.routing.set_owners(
            reconciler
                .owned_processes()
                .into_iter()
                .filter(|(id, _)| id.kind == Kind::Service)
                .map(|(id, identity)| (id.name, identity))
                .collect(),
        );
        if let Some(state) = applied {
            self.sync_jobs(&reconciler, &state);
            self.routing.sync(&state, &self.config.context.state_dir, &self.probed);
            self.current = Some(state.clone());
            self.decide_routes();
            self.sync_bus(&reconciler, &state);
            self.ensure_models(&state);
        }
        self.busy = None;
        let trigger = trigger_of(&work);
        if let Answer::Pass(outcome) = &result {
            self.metrics.observe_pass(trigger, took, outcome.error.is_some());
            for a in &outcome.applied {
                if a.ok && a.action == crate::plan::Action::Restart {
                    self.metrics.restart(&a.name);
                }
            }
            let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
            for item in &outcome.report.items {
                *counts
                    .entry((item.drift.as_str().to_string(), item.severity.as_str().to_string()))
                    .or_default() += 1;
            }
            let counts: Vec<(String, String, u64)> = counts.into_iter().map(|((d, s), n)| (d, s, n)).collect();
            self.metrics.set_drift_items(&counts);
            if let Some(plan) = &outcome.plan {
                self.arm_backoff(plan.retry_at);
            }
            // Each failed action at WARN with its resource and reason (the pass line below only
            // counts them): a typo'd program name shows where people look.
            for failed in outcome.applied.iter().filter(|a| !a.ok) {
                tracing::warn!(
                    resource = %format!("{}/{}", failed.kind, failed.name),
                    action = failed.action.as_str(),
                    reason = %failed.detail,
                    "action failed"
                );
            }
            let level_error = outcome.error.as_deref();
            tracing::info!(
                trigger,
                took_ms = took.as_millis() as u64,
                commit = outcome.commit.as_deref().unwrap_or("-"),
                applied = outcome.applied.len(),
                drift = outcome.report.items.len(),
                error = level_error.unwrap_or(""),
                "pass"
            );
        }
        if let Work::ScheduledReport = &work {
            if let Answer::Pass(outcome) = &result {
                let dir = self.config.context.state_dir.join("reports");
                match crate::report::markdown::write(&dir, &outcome.report, REPORTS_KEPT) {
                    Ok(path) => tracing::info!(path = %path.display(), "drift report written"),
                    Err(e) => tracing::warn!(error = %e, "writing the drift report failed"),
                }
            }
        }
        self.sync_watchers(&reconciler);
        // A pass may have enrolled or revoked an agent: the bus learns its token at once.
        if applied_anything(&result) {
            if let Some(state) = self.current.clone() {
                self.sync_bus(&reconciler, &state);
            }
        }
        self.sync_schedules();
        if let Work::Asked((request, reply)) = work {
            match result {
                Answer::Status(report) => self.reply_status(request, *report, reply),
                other => {
                    let _ = reply.send((self.render)(&request, other));
                }
            }
        }
        self.reconciler = Some(reconciler);
    }

    /// Completes a status report with what only the daemon knows (provider health, routes,
    /// launch agents) and answers.
    fn reply_status(&self, request: Request, mut report: StatusReport, reply: Reply) {
        report.providers = serde_json::to_value(self.routing.providers()).unwrap_or_default();
        let routes = self.routing.routes(self.current.as_deref());
        for resource in report.resources.iter_mut().filter(|r| r.kind == Kind::Agent) {
            resource.route = routes
                .iter()
                .find(|r| r.agent == resource.name && r.provider.is_some())
                .map(|r| {
                    serde_json::json!({
                        "provider": r.provider,
                        "model": r.model,
                        "degraded": r.degraded,
                        "probed": r.probed,
                        "reason": r.reason,
                    })
                })
                .or(Some(serde_json::Value::Null));
        }
        report.routes = serde_json::to_value(routes).unwrap_or_default();
        // A Service whose provider's port another process holds is not healthy, whichever of
        // its (crash-looping) processes runs this instant.
        if let Some(state) = self.current.as_deref() {
            for resource in report.resources.iter_mut().filter(|r| r.kind == Kind::Service) {
                if let Some(why) = self.routing.hijack_of(&resource.name, state) {
                    if resource.health == "Healthy" || resource.health == "Progressing" {
                        resource.health = "Degraded";
                    }
                    resource.detail = why;
                }
            }
        }
        // Launch agents come from the runner (waiting for a sync in progress).
        let (jobs, render) = (self.jobs.clone(), self.render.clone());
        tokio::spawn(async move {
            if let Some(runner) = jobs.lock().await.as_ref() {
                report.launch_agents = runner.status();
            }
            let _ = reply.send(render(&request, Answer::Status(Box::new(report))));
        });
    }

    /// `status` while a pass has the reconciler: read from the inventory on disk (the pass
    /// appends to it as it goes) with the probe verdicts the daemon holds, so the answer does not
    /// wait for a pass that may be verifying a slow start; it says a pass is running.
    fn status_while_busy(&self, request: Request, reply: Reply) {
        let Request::Status { source, .. } = &request else {
            return;
        };
        let own = self.config.context.source.clone();
        let asked = source_options(source, &own);
        let context = self.config.context.clone();
        let current = self.current.clone();
        let trust = self.trust.clone();
        let probes = Probes::Known(self.verdicts.clone());
        let pass_running = self.busy.map(|(trigger, since)| crate::reconcile::PassRunning {
            trigger: trigger.to_string(),
            for_ms: since.elapsed().as_millis() as u64,
        });
        let events = self.events.clone();
        tokio::spawn(async move {
            let read = tokio::task::spawn_blocking(move || {
                let (desired, kept) = status_source(&asked, &own, current, trust.as_ref());
                crate::reconcile::status_from_disk(&context, desired, &probes).map(|report| with_kept(report, kept))
            })
            .await;
            let answer = match read {
                Ok(Ok(mut report)) => {
                    report.pass_running = pass_running;
                    Ok(report)
                }
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(format!("reading the status failed: {e}")),
            };
            // The event loop completes it (routes, providers, launch agents) and answers.
            let _ = events.send(Event::StatusRead(Box::new((request, answer, reply))));
        });
    }

    /// Brings the launch agents in line with the state now in force; receipts for what changed.
    fn sync_jobs(&self, reconciler: &Reconciler, state: &DesiredState) {
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

    /// A provider's probe answered: a change of health may restart its Service (down or hung)
    /// and move agents.
    fn provider_probed(&mut self, probed: routing::Probed) {
        let now = now_ms();
        // A provider that answers may now be listed: models not ensured yet (it was still
        // starting, or a pull failed) are tried again at once, not at the next resync.
        if probed.verdict.is_healthy() {
            if let Some(state) = self.current.clone() {
                self.ensure_models(&state);
            }
        }
        if let crate::router::health::Verdict::Hijacked { why } = &probed.verdict {
            self.mark_hijacked(&probed.provider, why);
        }
        let before = self.routing.health(&probed.provider);
        if !self.routing.observe(&probed, now) {
            return;
        }
        let healthy = self.routing.is_healthy(&probed.provider);
        // One line per change of what status shows (Down at the first refusal and Down at the
        // threshold are one state to a person).
        let health = self.routing.health(&probed.provider);
        if health != before {
            // Failing before any answer is a provider starting (news); failing after answering,
            // or down, is what a person must know.
            let news = health == "Healthy" || (health == "Failing" && before == "Unknown");
            if news {
                tracing::info!(provider = %probed.provider, from = before, to = health, verdict = ?probed.verdict, "provider health changed");
            } else {
                tracing::warn!(provider = %probed.provider, from = before, to = health, verdict = ?probed.verdict, "provider health changed");
            }
        }
        if !healthy {
            self.restart_provider_service(&probed);
        }
        self.decide_routes();
    }

    /// Another process holds a provider's port: its Service (if it runs) is not healthy, with
    /// who holds the port as the reason; an error in the log when that is news.
    fn mark_hijacked(&mut self, provider: &str, why: &str) {
        let Some(state) = self.current.clone() else { return };
        let Some(Spec::ModelProvider(spec)) = state.get(Kind::ModelProvider, provider).map(|r| &r.spec) else {
            return;
        };
        let Some(service) = spec.service.clone() else { return };
        let service = ResourceId::new(Kind::Service, service);
        let reason = format!("provider {provider} hijacked: {why}");
        // Not running: its own restarts show; the provider's change of health is logged.
        let Some((identity, _)) = self.watchers.get(&service).cloned() else {
            return;
        };
        let known = self
            .verdicts
            .get(&service)
            .is_some_and(|(_, v)| v.as_ref().err() == Some(&reason));
        if !known {
            tracing::error!(service = %service, %provider, %why, "provider port hijacked");
        }
        self.verdicts.insert(service, (identity, Err(reason)));
    }

    /// A provider that is down or hung and names its Service gets that Service restarted (a hung
    /// process is stopped first: the restart stops it).
    fn restart_provider_service(&mut self, probed: &routing::Probed) {
        let Some(state) = self.current.clone() else { return };
        let Some(Spec::ModelProvider(spec)) = state.get(Kind::ModelProvider, &probed.provider).map(|r| &r.spec) else {
            return;
        };
        let Some(service) = spec.service.clone() else { return };
        let service = ResourceId::new(Kind::Service, service);
        let Some((identity, _)) = self.watchers.get(&service).cloned() else {
            return; // not running: the service's own restart policy is at work
        };
        // A server still binding its port reads as down, a model still loading as a hung
        // generation: within the Service's health.startPeriod (failures there do not count, as
        // for the Service's own probe) a failed provider moves agents but its Service is not
        // restarted.
        let starting = self
            .probing
            .get(&service)
            .filter(|p| p.identity == identity)
            .is_some_and(|p| now_ms() - p.started_ms < p.start_period_ms);
        if starting {
            let guess = match &probed.verdict {
                crate::router::health::Verdict::Hung { .. } => {
                    "generation not answering within the service's start period: not restarted (still loading?)"
                }
                _ => "provider not answering within the service's start period: not restarted (still starting?)",
            };
            tracing::info!(service = %service, provider = %probed.provider, "{guess}");
            return;
        }
        let why = match &probed.verdict {
            // Restarting the Service would not free its port (`mark_hijacked` showed it).
            crate::router::health::Verdict::Hijacked { .. } => return,
            crate::router::health::Verdict::Hung { why } => format!("provider {} is hung: {why}", probed.provider),
            crate::router::health::Verdict::Down { why } => format!("provider {} is down: {why}", probed.provider),
            crate::router::health::Verdict::Healthy { .. } => return,
        };
        tracing::warn!(service = %service, %why, "restarting the provider's service");
        self.verdicts.insert(service.clone(), (identity, Err(why)));
        self.enqueue(Work::One {
            id: service,
            trigger: "provider",
        });
    }

    /// Recomputes routes; records each switch (route history, receipt, metrics) and arms the
    /// timer for the next failback that may come due.
    fn decide_routes(&mut self) {
        let Some(state) = self.current.clone() else { return };
        let now = now_ms();
        let (switches, next_check) = self.routing.decide(&state, now);
        for switch in switches {
            let (provider, model) = switch.to.as_ref().map_or((String::new(), String::new()), |r| {
                (r.provider.clone(), r.model.clone())
            });
            // A loss of service is a warning; a first route or a return to health is news.
            use crate::router::route::ChangeKind;
            match switch.kind {
                ChangeKind::Failover | ChangeKind::Lost => {
                    tracing::warn!(agent = %switch.agent, change = ?switch.kind, %provider, %model, reason = %switch.reason, "route")
                }
                _ => {
                    tracing::info!(agent = %switch.agent, change = ?switch.kind, %provider, %model, reason = %switch.reason, "route")
                }
            }
            self.metrics.route_change(&switch.agent);
            self.recorder
                .record(crate::store::Record::Route(crate::store::RouteChange {
                    id: crate::store::new_id(),
                    host: self.config.context.host.clone(),
                    agent: switch.agent.clone(),
                    provider: provider.clone(),
                    model: model.clone(),
                    at_ms: now,
                    reason: switch.reason.clone(),
                }));
            self.recorder.receipt(crate::store::ReceiptDraft {
                run_id: None,
                commit: state.commit.clone(),
                kind: Kind::Agent.to_string(),
                name: switch.agent.clone(),
                action: format!("{:?}", switch.kind).to_lowercase(),
                reason: switch.reason.clone(),
                detail: serde_json::json!({"ok": true, "provider": provider, "model": model}).to_string(),
            });
        }
        self.update_bus_routes(&state);
        if let Some((_, timer)) = self.route_timer.take() {
            timer.abort();
        }
        if let Some(at) = next_check {
            let wait = Duration::from_millis((at - now).max(0) as u64 + 1);
            let events = self.events.clone();
            let task = tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                let _ = events.send(Event::RouteCheck);
            });
            self.route_timer = Some((at, task.abort_handle()));
        }
    }

    /// The bus follows the state in force: each enrolled agent's token (revoked ones are gone),
    /// the server on the Controller's bus address (only while there are agents), prices for
    /// metering.
    fn sync_bus(&mut self, reconciler: &Reconciler, state: &DesiredState) {
        let agents: BTreeSet<String> = state
            .resources
            .iter()
            .filter(|r| matches!(r.spec, Spec::Agent(_)))
            .map(|r| r.metadata.name.clone())
            .collect();
        for gone in self.bus_agents.difference(&agents) {
            self.bus.remove_agent(gone);
            self.bus.governance().remove_agent(gone);
        }
        // Each agent's effective rules: budgets and the tool gate.
        let policies = crate::reconcile::policies::PolicyPlan::of(state, &self.config.context.state_dir);
        for resource in &state.resources {
            if let Spec::Agent(spec) = &resource.spec {
                self.bus.set_memory_scope(&resource.metadata.name, spec.memory());
                match policies.for_agent(&resource.metadata.name, spec) {
                    Some(policy) => self.bus.governance().set_policy(&resource.metadata.name, policy.rules),
                    None => self.bus.governance().remove_agent(&resource.metadata.name),
                }
            }
        }
        // Only enrolled agents have a token (enrollment happens when an agent first starts).
        let tokens = reconciler.agent_tokens();
        for agent in &agents {
            match tokens.get(agent) {
                Some(token) => self.bus.set_token(agent, token),
                None => self.bus.remove_agent(agent),
            }
        }
        self.bus_agents = agents;
        if let Ok(mut pricing) = self.pricing.write() {
            pricing.clear();
            for r in &state.resources {
                if let Spec::ModelProvider(spec) = &r.spec {
                    if let Some(price) = &spec.pricing {
                        pricing.insert(r.metadata.name.clone(), price.clone());
                    }
                }
            }
        }
        let wanted = (!self.bus_agents.is_empty()).then(|| state.controller().bus_address());
        if self.bus_server.as_ref().map(|(addr, _)| *addr) != wanted {
            if let Some((_, stop)) = self.bus_server.take() {
                let _ = stop.send(());
            }
            if let Some(addr) = wanted {
                let (stop_tx, stop_rx) = oneshot::channel::<()>();
                let (bus, meter) = (self.bus.clone(), self.meter());
                let store_url = self.config.context.store.clone();
                let first_tier = state
                    .controller()
                    .memory_tiers()
                    .into_iter()
                    .next()
                    .unwrap_or_else(|| "working".into());
                tokio::spawn(async move {
                    // The memory API answers from the store itself (an agent needs its item's id).
                    let memory = match crate::store::open(&store_url).await {
                        Ok(store) => {
                            let callers = bus.clone();
                            Some(crate::router::memory_api::router(
                                Arc::from(store),
                                Arc::new(move |headers: &axum::http::HeaderMap| callers.memory_caller(headers)),
                                first_tier,
                            ))
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "the memory API is off: the truth store cannot be opened");
                            None
                        }
                    };
                    match crate::router::bus::serve(addr, bus, meter, memory, async {
                        let _ = stop_rx.await;
                    })
                    .await
                    {
                        Ok((bound, _)) => tracing::info!(%bound, "model bus listening"),
                        Err(e) => tracing::error!(%addr, error = %e, "the model bus cannot listen"),
                    }
                });
                self.bus_server = Some((addr, stop_tx));
            }
        }
        self.update_bus_routes(state);
    }

    /// Pulls the models each Ollama provider lacks, with progress in the log, a receipt per model
    /// pulled (or failed); OpenAI-style providers are only checked.
    fn ensure_models(&self, state: &DesiredState) {
        for resource in &state.resources {
            let Spec::ModelProvider(spec) = &resource.spec else {
                continue;
            };
            if spec.models.is_empty() {
                continue;
            }
            let key = format!("{}|{}|{}", resource.metadata.name, spec.url, spec.models.join(","));
            {
                let Ok(mut ensured) = self.models_ensured.lock() else {
                    continue;
                };
                if !ensured.insert(key.clone()) {
                    continue;
                }
            }
            let target = crate::router::health::ProbeTarget::from_spec(&resource.metadata.name, spec);
            let wanted = spec.models.clone();
            let (recorder, ensured, commit) =
                (self.recorder.clone(), self.models_ensured.clone(), state.commit.clone());
            let failing = self.models_failing.clone();
            let provider = resource.metadata.name.clone();
            tokio::spawn(async move {
                let mut last_logged = std::time::Instant::now() - Duration::from_secs(10);
                let mut progress = |p: crate::router::models::PullProgress| {
                    // Progress lines come many per second: one log line a second is plenty.
                    if last_logged.elapsed() >= Duration::from_secs(1) || p.status == "success" {
                        last_logged = std::time::Instant::now();
                        tracing::info!(provider = %target.provider, model = %p.model, "{}", crate::router::models::describe(&p));
                    }
                };
                let outcome = models::pull_missing(&target, &wanted, &recorder, &commit, &mut progress).await;
                let pulled = match outcome {
                    Ok(pulled) => {
                        if failing.lock().is_ok_and(|mut f| f.remove(&key).is_some()) {
                            tracing::info!(%provider, "checking the provider's models works again");
                        }
                        pulled
                    }
                    Err(e) => {
                        // One WARN per change of error, not one per resync.
                        let error = e.to_string();
                        let new = failing
                            .lock()
                            .is_ok_and(|mut f| f.insert(key.clone(), error.clone()).as_ref() != Some(&error));
                        if new {
                            tracing::warn!(%provider, %error, "checking the provider's models failed; trying again at each resync (said again only if the error changes)");
                        } else {
                            tracing::debug!(%provider, %error, "checking the provider's models failed again");
                        }
                        if let Ok(mut ensured) = ensured.lock() {
                            ensured.remove(&key);
                        }
                        return;
                    }
                };
                let failed = pulled.iter().any(|p| matches!(p.result, Some(Err(_))));
                if failed {
                    if let Ok(mut ensured) = ensured.lock() {
                        ensured.remove(&key);
                    }
                }
            });
        }
    }

    /// A control request: gate approvals are answered at once (they touch no pass); the rest
    /// waits for the reconciler.
    fn control(&mut self, asked: Asked) {
        let (request, reply) = asked;
        match request {
            Request::GatePending { json } => {
                let pending = self.bus.governance().pending(now_ms());
                let _ = reply.send(crate::cli::gate::render_pending(&pending, json));
            }
            Request::GateDecide { id, approve, by, json } => {
                let decided = self.bus.governance().decide(&id, approve, &by, now_ms());
                let _ = reply.send(crate::cli::gate::render_decided(&decided, json));
            }
            request @ Request::Status { .. } if self.reconciler.is_none() && self.shutting_down.is_none() => {
                self.status_while_busy(request, reply)
            }
            request => self.enqueue(Work::Asked((request, reply))),
        }
    }

    fn update_bus_routes(&self, state: &DesiredState) {
        for (agent, candidates) in self.routing.bus_routes(state) {
            self.bus.set_routes(&agent, candidates);
        }
    }

    /// Usage records (tokens, and cost from the provider's pricing) for every answered request.
    fn meter(&self) -> crate::router::bus::Meter {
        let (recorder, host, pricing, governance) = (
            self.recorder.clone(),
            self.config.context.host.clone(),
            self.pricing.clone(),
            self.bus.governance().clone(),
        );
        Arc::new(move |m: crate::router::bus::Metered| {
            let cost = pricing
                .read()
                .ok()
                .and_then(|p| p.get(&m.provider).cloned())
                .map_or(0.0, |p| {
                    (m.prompt_tokens as f64 * p.input_per_million_tokens_usd
                        + m.completion_tokens as f64 * p.output_per_million_tokens_usd)
                        / 1e6
                });
            let now = now_ms();
            governance.record_usage(&m.agent, m.prompt_tokens + m.completion_tokens, cost, now);
            recorder.record(crate::store::Record::Usage(crate::store::Usage {
                id: crate::store::new_id(),
                host: host.clone(),
                agent: m.agent,
                provider: m.provider,
                model: m.model,
                prompt_tokens: m.prompt_tokens as i64,
                completion_tokens: m.completion_tokens as i64,
                cost_usd: cost,
                at_ms: now,
            }));
        })
    }

    /// Watches (for its end) and probes every owned running process; forgets the rest.
    fn sync_watchers(&mut self, reconciler: &Reconciler) {
        let owned: BTreeMap<ResourceId, ProcessIdentity> = reconciler.owned_processes().into_iter().collect();
        self.watchers.retain(|name, (identity, task)| {
            let keep = owned.get(name) == Some(identity);
            if !keep {
                task.abort();
            }
            keep
        });
        self.probing.retain(|name, probing| {
            let keep = owned.get(name) == Some(&probing.identity);
            if !keep {
                probing.task.abort();
            }
            keep
        });
        self.verdicts
            .retain(|name, (identity, _)| owned.get(name) == Some(identity));
        self.ended.retain(|identity| owned.values().any(|o| o == identity));
        let mut running = 0;
        for (name, identity) in &owned {
            if self.ended.contains(identity) {
                continue;
            }
            // The gauge is about services (agents run as processes too, but are not desired
            // services: counting them showed 2 running of 1 desired).
            if name.kind == Kind::Service {
                running += 1;
            }
            if !self.watchers.contains_key(name) {
                let events = self.events.clone();
                let (name_c, identity_c) = (name.clone(), identity.clone());
                let task = tokio::spawn(async move {
                    let ended = watch::ended(identity_c.clone()).await;
                    let _ = events.send(Event::ChildExited {
                        id: name_c,
                        identity: identity_c,
                        ended,
                    });
                });
                self.watchers
                    .insert(name.clone(), (identity.clone(), task.abort_handle()));
            }
            if !self.probing.contains_key(name) {
                if let Some((probe, started_ms)) = self.probe_of(name, reconciler) {
                    let task = tokio::spawn(probe_loop(
                        self.events.clone(),
                        name.clone(),
                        identity.clone(),
                        probe.clone(),
                        started_ms,
                    ));
                    self.probing.insert(
                        name.clone(),
                        Probing {
                            identity: identity.clone(),
                            task: task.abort_handle(),
                            failures: 0,
                            threshold: probe.failure_threshold().max(1),
                            started_ms,
                            start_period_ms: probe.start_period().as_std().as_millis() as i64,
                        },
                    );
                }
            }
        }
        let host = &self.config.context.host;
        // Desired running: not suspended, placed here, not stopped by a person (`mirrorctl stop`).
        let stopped = crate::reconcile::overrides::Overrides::load(&self.config.context.state_dir);
        let desired = self.current.as_ref().map_or(0, |s| {
            s.resources
                .iter()
                .filter(|r| match &r.spec {
                    Spec::Service(spec) => {
                        !spec.suspend
                            && spec.placement.as_ref().is_none_or(|p| p.selects(host))
                            && stopped.active(&r.id(), &s.commit).is_none()
                    }
                    _ => false,
                })
                .count()
        });
        self.metrics.set_services(running as u64, desired as u64);
    }

    fn probe_of(&self, id: &ResourceId, reconciler: &Reconciler) -> Option<(Probe, i64)> {
        let state = self.current.as_ref()?;
        let resource = state.get(id.kind, &id.name)?;
        let probe = match &resource.spec {
            Spec::Service(spec) => spec.health.clone()?,
            Spec::Agent(spec) => spec.health.clone()?,
            _ => return None,
        };
        Some((probe, reconciler.started_ms(id).unwrap_or_else(now_ms)))
    }

    /// Wakes the loop when the earliest held-back restart is due. A pass over one service knows
    /// nothing of the others' timers, so a timer is only ever replaced by an earlier one; one
    /// that fires early or needlessly costs a pass that finds nothing to do.
    fn arm_backoff(&mut self, retry_at: Option<i64>) {
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
    fn sync_memory_schedule(&mut self) {
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

    fn arm_memory_timer(&mut self, schedule: &Schedule, first: bool) {
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
    fn memory_rules_due(&mut self) {
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
    fn sync_schedules(&mut self) {
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
}

async fn start_jobs(
    context: &Context,
    recorder: crate::store::Recorder,
    metrics: Arc<Metrics>,
) -> Result<JobRunner, DaemonError> {
    let runner = JobRunner::start(context.state_dir.clone(), context.host.clone(), recorder).await?;
    runner.observe_runs(Arc::new(move |label, outcome| metrics.job_run(label, outcome)));
    Ok(runner)
}

/// How often the loop tells /healthz it is alive when nothing happens.
const HEARTBEAT: Duration = Duration::from_secs(10);

/// Markdown drift reports kept in `<state dir>/reports/`.
const REPORTS_KEPT: usize = 200;

/// Probes one process every `interval`; every answer is an event, except failures within its
/// start period (they do not count; a success does, so `status` shows a service that answers
/// as Healthy at once rather than Progressing for its whole start period).
async fn probe_loop(
    events: mpsc::UnboundedSender<Event>,
    id: ResourceId,
    identity: ProcessIdentity,
    probe: Probe,
    started_ms: i64,
) {
    let grace_until = started_ms + probe.start_period().as_std().as_millis() as i64;
    let interval = probe.interval().as_std().max(Duration::from_millis(100));
    loop {
        let check = probe.clone();
        let result = tokio::task::spawn_blocking(move || crate::supervisor::probe::check(&check))
            .await
            .unwrap_or_else(|e| Err(format!("the probe panicked: {e}")));
        if result.is_err() && now_ms() < grace_until {
            tokio::time::sleep(interval).await;
            continue;
        }
        if events
            .send(Event::Probed {
                id: id.clone(),
                identity: identity.clone(),
                result,
            })
            .is_err()
        {
            return;
        }
        tokio::time::sleep(interval).await;
    }
}

/// Whether a pass changed anything on the host.
fn applied_anything(result: &Answer) -> bool {
    matches!(result, Answer::Pass(outcome) if !outcome.applied.is_empty())
}

/// What set a piece of work going (logs, metrics, `status` while it runs).
fn trigger_of(work: &Work) -> &'static str {
    match work {
        Work::Full { trigger, .. } | Work::One { trigger, .. } => trigger,
        Work::Asked(_) => "control",
        Work::ScheduledReport => "schedule",
    }
}

/// Does one piece of work on the blocking thread: with `status_while_busy`, the only places the
/// daemon reads the source.
fn perform(
    reconciler: &mut Reconciler,
    work: &Work,
    current: Option<Arc<DesiredState>>,
    probes: Probes,
    trust: Option<&AllowedSigners>,
    route_drift: Vec<DriftItem>,
    routing: &RoutingSnapshot,
) -> (Answer, Option<Arc<DesiredState>>) {
    // Route drift is known to the daemon only: full passes and reports carry it.
    let with_routes = |mut input: PassInput| {
        input.extra_drift.extend(route_drift.iter().cloned());
        input
    };
    // Observe-only passes count pending memory moves (drift items of their report) first.
    let store = reconciler.context().store.clone();
    let memory_preview = |input: &mut PassInput| {
        let state = input.desired.as_ref().ok()?.clone();
        let preview = tokio::runtime::Handle::current().block_on(memory::preview(&state, &store));
        input.extra_drift.extend(memory::pending_drift(&preview));
        Some(preview)
    };
    let own_source = reconciler.context().source.clone();
    match work {
        Work::One { id, trigger } => {
            let Some(state) = current else {
                return (Answer::Error("no desired state in force yet".into()), None);
            };
            let input = PassInput {
                desired: Ok(state),
                extra_drift: Vec::new(),
                only: Some(id.clone()),
                operation: None,
                probes,
            };
            let options = pass_options(false, false, trigger);
            (Answer::Pass(Box::new(reconciler.pass(input, &options))), None)
        }
        Work::Full { trigger, reload } => {
            let (input, applied) = if *reload {
                let starting = current.is_none();
                let read = read_trusted(&own_source, current, trust, probes.clone());
                match read {
                    (Ok(failed), None) if starting && failed.desired.is_err() => {
                        let state_dir = reconciler.context().state_dir.clone();
                        match recorded_state(&own_source, &state_dir, trust, probes, &failed) {
                            Some((input, state)) => (Ok(input), Some(state)),
                            None => (Ok(failed), None),
                        }
                    }
                    read => read,
                }
            } else {
                match current {
                    Some(state) => (
                        Ok(PassInput {
                            desired: Ok(state),
                            extra_drift: Vec::new(),
                            only: None,
                            operation: None,
                            probes,
                        }),
                        None,
                    ),
                    None => return (Answer::Error("no desired state in force yet".into()), None),
                }
            };
            let options = pass_options(false, false, trigger);
            match input {
                Ok(input) => (
                    Answer::Pass(Box::new(reconciler.pass(with_routes(input), &options))),
                    applied,
                ),
                Err(e) => (Answer::Error(e), None),
            }
        }
        Work::ScheduledReport => match read_trusted(&own_source, current, trust, probes).0 {
            Ok(mut input) => {
                memory_preview(&mut input);
                let options = pass_options(true, false, "schedule");
                (
                    Answer::Pass(Box::new(reconciler.pass(with_routes(input), &options))),
                    None,
                )
            }
            Err(e) => (Answer::Error(e), None),
        },
        Work::Asked((request, reply)) => match request {
            Request::Reconcile {
                dry_run,
                allow_mass_prune,
                source,
                ..
            } => {
                let asked = source_options(source, &own_source);
                if !dry_run && !same_source(&asked, &own_source) {
                    return (
                        Answer::Error(format!(
                            "this daemon applies {} (path {}, ref {}); a pass over another source can only be a --dry-run",
                            own_source.repo.display(),
                            own_source.path.display(),
                            own_source.reference
                        )),
                        None,
                    );
                }
                let (mut input, applied) = read_trusted(&asked, current, trust, probes);
                if !same_source(&asked, &own_source) {
                    input = input.map(without_credentials);
                }
                let options = pass_options(*dry_run, *allow_mass_prune, "cli");
                match input {
                    Ok(mut input) => {
                        let state = input.desired.as_ref().ok().cloned();
                        let preview = if *dry_run { memory_preview(&mut input) } else { None };
                        // Each action as it starts and ends, to the asking command.
                        let progress = reply.progress.clone();
                        let mut outcome = reconciler.pass_reporting(with_routes(input), &options, &mut |line| {
                            let _ = progress.send(line);
                        });
                        let converging = outcome.plan.as_ref().is_some_and(|p| p.refused.is_none());
                        if let (true, Some(state)) = (converging, state) {
                            // The models step: a dry-run shows pulls and route decisions; an
                            // apply's pulls run in the daemon after the pass (progress: its log).
                            let mut actions =
                                tokio::runtime::Handle::current().block_on(models::preview(&state, Some(routing)));
                            if !dry_run {
                                actions.retain(|a| a.action == ModelActionKind::Pull);
                            }
                            outcome.models = actions;
                            if !dry_run {
                                let run_id = outcome.report.run_id.clone().unwrap_or_else(crate::store::new_id);
                                let runtime = tokio::runtime::Handle::current();
                                outcome.memory =
                                    runtime.block_on(memory::apply(&state, &store, reconciler.recorder(), &run_id));
                            }
                        }
                        if let Some(preview) = preview {
                            outcome.memory = preview;
                        }
                        (Answer::Pass(Box::new(outcome)), if *dry_run { None } else { applied })
                    }
                    Err(e) => (Answer::Error(e), None),
                }
            }
            Request::DriftReport { source, .. } => {
                let asked = source_options(source, &own_source);
                let mut input = read_trusted(&asked, current, trust, probes).0;
                if !same_source(&asked, &own_source) {
                    input = input.map(without_credentials);
                }
                match input {
                    Ok(mut input) => {
                        memory_preview(&mut input);
                        let options = pass_options(true, false, "drift-report");
                        (
                            Answer::Pass(Box::new(reconciler.pass(with_routes(input), &options))),
                            None,
                        )
                    }
                    Err(e) => (Answer::Error(e), None),
                }
            }
            Request::Operate { name, verb, by, .. } => {
                let Some(state) = current else {
                    return (Answer::Error("no desired state in force yet".into()), None);
                };
                let state_dir = reconciler.context().state_dir.clone();
                match crate::reconcile::overrides::prepare(&state_dir, &state, name, *verb, by, now_ms()) {
                    Ok(operation) => {
                        tracing::info!(resource = %operation.id, verb = verb.as_str(), %by, "asked by a person");
                        let input = PassInput {
                            desired: Ok(state),
                            extra_drift: Vec::new(),
                            only: Some(operation.id.clone()),
                            operation: Some(operation),
                            probes,
                        };
                        let options = pass_options(false, false, verb.as_str());
                        (Answer::Pass(Box::new(reconciler.pass(input, &options))), None)
                    }
                    Err(e) => (Answer::Error(e.to_string()), None),
                }
            }
            // Answered by the event loop itself (see `Daemon::control`).
            Request::GatePending { .. } | Request::GateDecide { .. } => {
                (Answer::Error("gate requests are not passes".into()), None)
            }
            Request::Status { source, .. } => {
                let asked = source_options(source, &own_source);
                let (desired, kept) = status_source(&asked, &own_source, current, trust);
                let report = reconciler.status(desired, &probes);
                (Answer::Status(Box::new(with_kept(report, kept))), None)
            }
        },
    }
}

/// What `status` compares the host with: the asked source as read, or, when it is the daemon's
/// own and HEAD broke (or was broken when the daemon started) or is not trusted
/// (`--require-signed`), the commit the daemon keeps in force, since that is what it
/// supervises; then also why HEAD is not in force, and HEAD's commit when it has one.
fn status_source(
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
struct HeadRefused {
    why: String,
    head: Option<String>,
}

/// Under `--require-signed`, why a loaded commit is not trusted (None: trusted, or no trust
/// required).
fn untrusted(source: &SourceOptions, state: &DesiredState, trust: Option<&AllowedSigners>) -> Option<String> {
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
fn with_kept(report: StatusReport, refused: Option<HeadRefused>) -> StatusReport {
    match refused {
        Some(refused) => report.kept_in_force(refused.why, refused.head),
        None => report,
    }
}

fn pass_options(dry_run: bool, allow_mass_prune: bool, trigger: &str) -> PassOptions {
    PassOptions {
        models: false,
        memory: false,
        dry_run,
        allow_mass_prune,
        trigger: trigger.to_string(),
    }
}

fn same_source(a: &SourceOptions, b: &SourceOptions) -> bool {
    let canonical = |p: &std::path::Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    canonical(&a.repo) == canonical(&b.repo)
        && a.path == b.path
        && a.reference == b.reference
        && a.worktree == b.worktree
}

fn source_options(asked: &control::SourceRequest, own: &SourceOptions) -> SourceOptions {
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
fn recorded_state(
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
fn without_credentials(mut input: PassInput) -> PassInput {
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

fn read_trusted(
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
        Err(invalid) => {
            return (
                Ok(PassInput {
                    desired: Err(invalid),
                    extra_drift: Vec::new(),
                    only: None,
                    operation: None,
                    probes,
                }),
                None,
            )
        }
    };
    let Some(allowed) = trust else {
        let state = Arc::new(state);
        return (
            Ok(PassInput {
                desired: Ok(state.clone()),
                extra_drift: Vec::new(),
                only: None,
                operation: None,
                probes,
            }),
            Some(state),
        );
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
            (
                Ok(PassInput {
                    desired: Ok(state.clone()),
                    extra_drift: Vec::new(),
                    only: None,
                    operation: None,
                    probes,
                }),
                Some(state),
            )
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
