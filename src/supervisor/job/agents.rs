//! The in-memory state of a runner: one [`Agent`] per launch agent this host owns, in the
//! [`Shared`] table the runner, its scheduler jobs and its run tasks all reach.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use uuid::Uuid;

use super::run::Instance;
use super::saved_state::SavedAgent;
use super::RunObserver;
use crate::spec::launch_agent::LaunchAgentSpec;
use crate::store::Recorder;

/// One launch agent as the runner knows it.
pub(super) struct Agent {
    /// What `launch-agents.json` keeps (its `running` is filled from `running` when saved).
    pub(super) saved: SavedAgent,
    /// None while the agent is known only from `launch-agents.json`.
    pub(super) spec: Option<LaunchAgentSpec>,
    /// The commit of the last sync that desired it: what its runs are recorded under.
    pub(super) commit: Option<String>,
    /// Whether a sync of this runner has brought it in line (and so loaded it).
    pub(super) synced: bool,
    /// Its job in the scheduler.
    pub(super) scheduled: Option<Uuid>,
    /// Bumped whenever it is (un)scheduled: a tick of an older scheduler job finds a different
    /// generation and does nothing (removal from the scheduler is not instant).
    pub(super) generation: u64,
    /// For `every`: the first tick of its scheduler job.
    pub(super) first_tick_ms: Option<i64>,
    /// For cron: the UTC offset its scheduler job was made with (rescheduled when it changes).
    pub(super) cron_offset_secs: Option<i32>,
    pub(super) running: Vec<Instance>,
    /// A `replace` run waits for the runs it stops; runs due meanwhile are skipped.
    pub(super) replacing: bool,
}

impl Agent {
    pub(super) fn from_saved(saved: SavedAgent) -> Agent {
        Agent {
            saved,
            spec: None,
            commit: None,
            synced: false,
            scheduled: None,
            generation: 0,
            first_tick_ms: None,
            cron_offset_secs: None,
            running: Vec::new(),
            replacing: false,
        }
    }

    pub(super) fn snapshot(&self) -> SavedAgent {
        let mut saved = self.saved.clone();
        saved.running = self.running.iter().map(|i| i.run.clone()).collect();
        saved
    }

    pub(super) fn describe_running(&self) -> String {
        let runs: Vec<String> = self
            .running
            .iter()
            .map(|i| format!("run {} (pid {})", i.run.id, i.run.identity.pid))
            .collect();
        runs.join(", ")
    }
}

/// What the runner and its tasks share.
pub(super) struct Shared {
    pub(super) state_dir: PathBuf,
    pub(super) host: String,
    pub(super) recorder: Recorder,
    pub(super) agents: Mutex<BTreeMap<String, Agent>>,
    /// Orders writes of `launch-agents.json`: the file always gets the newest snapshot last.
    pub(super) save_lock: Mutex<()>,
    /// No more runs start (shutdown or drop).
    pub(super) closed: AtomicBool,
    /// No more saves: a later runner owns `launch-agents.json`.
    pub(super) retired: AtomicBool,
    /// Told of every recorded run (label, outcome): the daemon's metrics.
    pub(super) observer: Mutex<Option<RunObserver>>,
}

impl Shared {
    pub(super) fn agents(&self) -> MutexGuard<'_, BTreeMap<String, Agent>> {
        self.agents.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    pub(super) fn log_path(&self, name: &str) -> PathBuf {
        crate::state::Layout::of(&self.state_dir).launch_agent_log(name)
    }
}
