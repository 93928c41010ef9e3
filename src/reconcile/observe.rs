//! What runs: each owned process's record in the inventory, alive or not, its probe, its cgroup,
//! and the log space left.

use super::*;

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
pub(super) struct StoppedOnExit {
    pub(super) stopped_ms: i64,
    /// RESTARTS before the stop: kept, shown, and carried on when it starts again.
    #[serde(default)]
    pub(super) total_restarts: u32,
}

impl StoppedOnExit {
    pub(super) fn of(entry: &InventoryEntry) -> Option<StoppedOnExit> {
        entry.process.as_deref().and_then(|p| serde_json::from_str(p).ok())
    }

    pub(super) fn describe(&self, now_ms: i64) -> String {
        format!(
            "stopped {} ago when the daemon exited (--stop-services-on-exit); the next pass starts it again",
            crate::report::elapsed(self.stopped_ms, now_ms)
        )
    }
}

pub fn process_record(entry: &InventoryEntry) -> Option<ProcessRecord> {
    entry.process.as_deref().and_then(|p| serde_json::from_str(p).ok())
}

pub(super) fn identity_of(entry: &InventoryEntry) -> Option<ProcessIdentity> {
    process_record(entry).map(|r| r.identity)
}

/// What the host runs of what it owns: the inventory, checked against the process table.
pub(super) fn observe(
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
pub(super) fn probe_running(probe: &crate::spec::common::Probe, started_ms: i64) -> Option<Result<String, String>> {
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
pub(super) fn cgroup_of(state_dir: &Path, id: &ResourceId) -> cgroup::Cgroup {
    match id.kind {
        Kind::Agent => cgroup::for_agent(state_dir, &id.name),
        _ => cgroup::for_service(state_dir, &id.name),
    }
}

/// Below this much free space, the log directory counts as full.
pub(super) const LOG_SPACE_LOW: u64 = 64 << 10;

/// A full log directory: services keep running (their writes fail, their output is lost), and
/// each of them gets a `degraded` item naming the directory. Nothing when there is room.
pub(super) fn log_space_drift(state_dir: &Path, desired: &[DesiredService]) -> Vec<DriftItem> {
    let dir = crate::state::Layout::of(state_dir).logs();
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
    let dir = crate::state::Layout::of(state_dir).logs();
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
