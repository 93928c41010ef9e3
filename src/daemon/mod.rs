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

mod event;
mod event_loop;
mod providers;
mod startup;
mod status;
mod timers;
mod watchers;
mod work;

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
use event::{Event, Finished, Probing, Work};
use metrics::Metrics;
use timers::{start_jobs, HEARTBEAT, REPORTS_KEPT};
use work::perform;

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
    let (mut daemon, mut wiring) = startup::start(config, render).await?;
    daemon.queue.push_back(Work::Full {
        trigger: "startup",
        reload: true,
    });
    daemon.next();
    event_loop::run_loop(&mut daemon, &mut wiring.inbox).await;
    startup::shut_down(daemon, wiring).await;
    Ok(())
}
