//! Starting and stopping the daemon: the state dir's lock, the tasks that turn the outside world
//! into events (control socket, provider probes, signals, the source's refs, metrics), and the
//! orderly end (services keep running unless asked otherwise; the journal is flushed).

use super::*;

/// What runs beside the loop, kept until it ends.
pub(super) struct Wiring {
    pub(super) inbox: mpsc::UnboundedReceiver<Event>,
    control_server: tokio::task::JoinHandle<()>,
    source_watch: git_watch::SourceWatch,
    stop_metrics: oneshot::Sender<()>,
    metrics_server: Option<tokio::task::JoinHandle<()>>,
    /// Held for the daemon's whole life.
    _lock: crate::state::StateLock,
}

/// Everything up to the first event: the daemon, and what feeds it.
pub(super) async fn start(config: Config, render: Renderer) -> Result<(Daemon, Wiring), DaemonError> {
    make_undumpable();
    let state_dir = config.context.state_dir.clone();
    let lock = lock(&state_dir)?;
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
    let (events, inbox) = mpsc::unbounded_channel();
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

    let control_server = serve_control(&state_dir, reconciler.recorder().clone(), &events)?;
    let probed = forward(&events, Event::ProviderProbed);
    forward_signals(&events)?;
    let changed = forward(&events, |()| Event::SourceChanged);
    let source_watch = git_watch::watch(&config.context.source.repo, &config.context.source.reference, changed)?;
    let (stop_metrics, metrics_server) = serve_metrics(config.metrics_addr, &metrics).await?;
    tracing::info!(
        state_dir = %state_dir.display(),
        repo = %config.context.source.repo.display(),
        reference = %config.context.source.reference,
        watch = source_watch.mechanism(),
        exit_watch = if cfg!(target_os = "linux") { "pidfd" } else { "poll" },
        "mirrorctl daemon started (pid {})",
        std::process::id()
    );

    let recorder = reconciler.recorder().clone();
    let daemon = Daemon {
        config,
        events,
        metrics,
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
        probed,
        route_timer: None,
        recorder,
        jobs,
    };
    persist_governance(&daemon);
    let wiring = Wiring {
        inbox,
        control_server,
        source_watch,
        stop_metrics,
        metrics_server,
        _lock: lock,
    };
    Ok((daemon, wiring))
}

/// Undumpable: its environment (the keys `apiKeyEnv` names), memory and descriptors are not
/// readable through /proc by processes of its user without CAP_SYS_PTRACE (agents have none).
fn make_undumpable() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable) {
        tracing::warn!(error = %e, "could not make the daemon undumpable: agents of its user may read its environment");
    }
}

/// The state dir's writer lock for the daemon's life; another daemon holding it is an error.
fn lock(state_dir: &std::path::Path) -> Result<crate::state::StateLock, DaemonError> {
    crate::state::lock_state_dir_for_daemon(state_dir).map_err(|e| match e {
        crate::state::LockError::Held { pid } => DaemonError::AlreadyRunning {
            pid,
            state_dir: state_dir.to_path_buf(),
        },
        crate::state::LockError::Io(source) => DaemonError::Lock {
            path: crate::state::Layout::of(state_dir).lock(),
            source,
        },
    })
}

/// A sender whose every message becomes an event (until the loop is gone).
fn forward<T: Send + 'static>(events: &mpsc::UnboundedSender<Event>, wrap: fn(T) -> Event) -> mpsc::UnboundedSender<T> {
    let (tx, mut rx) = mpsc::unbounded_channel::<T>();
    let events = events.clone();
    tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            if events.send(wrap(message)).is_err() {
                return;
            }
        }
    });
    tx
}

/// The control socket: requests become events; an agent's connection is refused with a receipt.
fn serve_control(
    state_dir: &std::path::Path,
    refusals: crate::store::Recorder,
    events: &mpsc::UnboundedSender<Event>,
) -> Result<tokio::task::JoinHandle<()>, DaemonError> {
    let listener = control::bind(state_dir)?;
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
    Ok(tokio::spawn(control::serve(
        listener,
        forward(events, Event::Control),
        refused,
    )))
}

/// SIGTERM or SIGINT becomes the shutdown event.
fn forward_signals(events: &mpsc::UnboundedSender<Event>) -> Result<(), DaemonError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let events = events.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        let _ = events.send(Event::Shutdown(name));
    });
    Ok(())
}

/// `/metrics` and `/healthz` on `addr`, when asked; the sender stops the server.
async fn serve_metrics(
    addr: Option<SocketAddr>,
    metrics: &Arc<Metrics>,
) -> Result<(oneshot::Sender<()>, Option<tokio::task::JoinHandle<()>>), DaemonError> {
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let Some(addr) = addr else {
        return Ok((stop_tx, None));
    };
    let (bound, handle) = metrics::serve(addr, metrics.clone(), Duration::from_secs(60), async {
        let _ = stop_rx.await;
    })
    .await
    .map_err(DaemonError::Metrics)?;
    tracing::info!(%bound, "serving /metrics and /healthz");
    Ok((stop_tx, Some(handle)))
}

/// Governance: every gate decision a receipt; today's usage and approvals survive a restart.
fn persist_governance(daemon: &Daemon) {
    let governance = daemon.bus.governance().clone();
    let recorder = daemon.recorder.clone();
    governance.set_receipts(Arc::new(move |draft| recorder.receipt(draft)));
    let state_dir = &daemon.config.context.state_dir;
    let layout = crate::state::Layout::of(state_dir);
    governance.persist(layout.usage_today(), layout.approvals());
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

/// The orderly end: no new work; services keep running unless asked otherwise; the launch
/// agents' runner stops; what the truth store has not taken waits in the journal.
pub(super) async fn shut_down(mut daemon: Daemon, wiring: Wiring) {
    wiring.control_server.abort();
    drop(wiring.source_watch);
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
    let _ = std::fs::remove_file(control::socket_path(&daemon.config.context.state_dir));
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
    if let Some(runner) = daemon.jobs.lock().await.take() {
        runner.shutdown(daemon.config.stop_services_on_exit).await;
    }
    let flushed = reconciler.flush().await;
    if let Some(problem) = flushed.store_error {
        tracing::warn!(%problem, pending = flushed.pending, "the truth store was not written; records wait in the journal");
    }
    let _ = wiring.stop_metrics.send(());
    if let Some(handle) = wiring.metrics_server {
        let _ = handle.await;
    }
}
