//! `status`: every resource's sync and health, from the inventory and the desired state, with or
//! without a daemon.

use super::*;

impl Reconciler {
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
pub(super) fn process_kind(kind: &str) -> Option<Kind> {
    [Kind::Service, Kind::Agent].into_iter().find(|k| k.as_str() == kind)
}

pub(super) fn status_of(
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
    let seen = Seen {
        inventory,
        state_dir,
        owned: &owned,
        desired: &desired,
        failures: failures::Failures::load(state_dir),
        source_error: source_error.is_some(),
        now: now_ms(),
    };
    let resources = plan.changes.iter().map(|change| seen.resource(change)).collect();
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

/// What `status` has seen, to say of each resource.
struct Seen<'a> {
    inventory: &'a LocalInventory,
    state_dir: &'a Path,
    owned: &'a [OwnedItem],
    desired: &'a [DesiredService],
    failures: failures::Failures,
    source_error: bool,
    now: i64,
}

impl Seen<'_> {
    /// One resource's sync, health, pid, restarts, uptime, last exit and probe, and why.
    fn resource(&self, change: &crate::plan::Change) -> ResourceStatus {
        let (inventory, state_dir, now) = (self.inventory, self.state_dir, self.now);
        let failures = &self.failures;
        let source_error = self.source_error;
        let id = ResourceId::new(change.kind, change.name.clone());
        let o = self.owned.iter().find(|o| o.id == id);
        let d = self.desired.iter().find(|d| d.item.id == id);
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
            sync: if synced && !source_error { "Synced" } else { "OutOfSync" },
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
    }
}
