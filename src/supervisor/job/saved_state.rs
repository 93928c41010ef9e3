//! `launch-agents.json`: what this host owns and what is kept between daemon runs (spec hash,
//! when a run was last due, the last run, the identities of running instances), read at start
//! and written atomically after each change.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use super::agents::Shared;
use super::{JobError, LastRun, Trigger};
use crate::spec::common::{Duration as SpecDuration, Stop};
use crate::store::journal::write_atomically;
use crate::supervisor::process::ProcessIdentity;

/// The whole file: the host it belongs to and its launch agents by name.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct SavedState {
    pub(super) host: String,
    #[serde(default)]
    pub(super) agents: BTreeMap<String, SavedAgent>,
}

/// One launch agent as kept between daemon runs.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct SavedAgent {
    pub(super) label: String,
    pub(super) hash: String,
    #[serde(default)]
    pub(super) suspended: bool,
    /// When a run was last due (and run, skipped or replaced): what a catch-up counts from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) last_scheduled_ms: Option<i64>,
    /// When it was first scheduled: what a catch-up counts from before any run was due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) scheduled_since_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) last_run: Option<LastRun>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) last_skipped_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) running: Vec<RunningRun>,
}

/// A run whose process is going: all a runner needs to watch, stop and record it, also one
/// that adopts it after a restart (when the agent may have changed or left the desired state).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RunningRun {
    pub(super) id: String,
    pub(super) identity: ProcessIdentity,
    pub(super) trigger: Trigger,
    #[serde(default)]
    pub(super) commit: Option<String>,
    pub(super) label: String,
    pub(super) started_ms: i64,
    /// Where this run's output begins in the agent's log.
    pub(super) log_offset: u64,
    #[serde(default)]
    pub(super) timeout: Option<SpecDuration>,
    #[serde(default)]
    pub(super) stop: Stop,
}

// ---------------------------------------------------------------------------------------------
// In memory

impl SavedState {
    /// Reads `<state dir>/launch-agents.json` (creating the state dir); a missing file is an
    /// empty state.
    pub(super) fn load(state_dir: &Path) -> Result<SavedState, JobError> {
        let path = crate::state::Layout::of(state_dir).launch_agents_state();
        let load_error = |message: String| JobError::LoadState {
            path: path.clone(),
            message,
        };
        fs::create_dir_all(state_dir).map_err(|e| load_error(e.to_string()))?;
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| load_error(e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SavedState::default()),
            Err(e) => Err(load_error(e.to_string())),
        }
    }

    /// Whether `<state dir>/launch-agents.json` lists any launch agent (unreadable: none).
    pub(super) fn lists_any(state_dir: &Path) -> bool {
        fs::read(crate::state::Layout::of(state_dir).launch_agents_state())
            .ok()
            .and_then(|bytes| serde_json::from_slice::<SavedState>(&bytes).ok())
            .is_some_and(|saved| !saved.agents.is_empty())
    }

    /// The agents of `host`: a state dir moved to another host name starts that host's own set
    /// (as the chain head does).
    pub(super) fn owned_by(self, host: &str, path: &Path) -> BTreeMap<String, SavedAgent> {
        if self.host == host || self.agents.is_empty() {
            self.agents
        } else {
            tracing::warn!(file = %path.display(), other = %self.host, "launch agents of another host are ignored");
            BTreeMap::new()
        }
    }
}

impl Shared {
    pub(super) fn save(&self) -> Result<(), JobError> {
        let _order = self.save_lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.retired.load(Ordering::SeqCst) {
            return Ok(());
        }
        let state = SavedState {
            host: self.host.clone(),
            agents: self.agents().iter().map(|(n, a)| (n.clone(), a.snapshot())).collect(),
        };
        let path = crate::state::Layout::of(&self.state_dir).launch_agents_state();
        let json = serde_json::to_vec_pretty(&state).expect("the state serializes");
        write_atomically(&path, &json).map_err(|e| JobError::SaveState {
            path,
            message: e.to_string(),
        })
    }

    /// For saves from run tasks, which have no caller to report to.
    pub(super) fn save_or_warn(&self) {
        if let Err(e) = self.save() {
            tracing::warn!(error = %e, "launch agents: state not saved");
        }
    }
}
