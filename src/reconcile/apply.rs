//! Carrying out one planned action: start (verified), stop, restart, prune; enrolling agents and
//! reloading their policies; what stays unchanged is refreshed in the inventory.

use super::*;

/// Carries out one change; Ok(detail) or Err(why it failed).
pub(super) fn apply_change(
    context: &Context,
    key: &[u8],
    action: Action,
    id: &ResourceId,
    desired: Option<&DesiredService>,
    inventory: &mut LocalInventory,
    recorder: &Recorder,
) -> Result<String, String> {
    let current = inventory.get(id.kind.as_str(), &id.name).cloned();
    let local_error = |e: crate::store::StoreError| e.to_string();
    match action {
        Action::Noop => Ok(String::new()),
        Action::Create | Action::Update | Action::Restart => {
            let desired = desired.ok_or("no desired spec")?;
            let stopped = if action == Action::Create {
                String::new()
            } else {
                stop_owned(context, id, current.as_ref())
            };
            let counts = restart_counts(action, current.as_ref(), desired);
            let started = Starting {
                context,
                key,
                id,
                desired,
                recorder,
            }
            .start(counts, inventory)?;
            let identity = started.identity;
            let stopped = format!("{stopped}{}", started.enrolled);
            verify_start(desired, &identity, &stopped)
        }
        Action::Suspend => {
            let stopped = stop_owned(context, id, current.as_ref());
            if let Some(mut entry) = current {
                entry.process = None;
                entry.updated_ms = now_ms();
                inventory.upsert(entry, recorder).map_err(local_error)?;
            }
            Ok(format!("{stopped}suspended"))
        }
        Action::Prune => {
            let stopped = stop_owned(context, id, current.as_ref());
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

/// Stops the process the inventory records for `id` (with its spec's stop signal and grace),
/// then whatever is left in its cgroup; what was stopped, for the change's detail.
fn stop_owned(context: &Context, id: &ResourceId, entry: Option<&InventoryEntry>) -> String {
    let Some(identity) = entry.and_then(identity_of) else {
        return String::new();
    };
    let (signal, grace) = match entry.map(|e| stop_settings(&e.last_applied)) {
        Some(settings) => settings,
        None => ("SIGTERM", Duration::from_secs(10)),
    };
    let outcome = process::stop(&identity, signal, grace);
    // An agent's descendants that left its group and cleared their environment are still in
    // its cgroup: they go with it.
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
}

/// The restarts in a row (for the backoff) and in all (shown) the new process starts with.
/// A restart counts towards the backoff unless the last run was stable.
fn restart_counts(action: Action, current: Option<&InventoryEntry>, desired: &DesiredService) -> (u32, u32) {
    match (action, current.and_then(process_record)) {
        (Action::Restart, Some(previous)) => {
            let backoff = desired.spec.backoff();
            let in_a_row = crate::plan::next_restart(&backoff, previous.restarts, previous.started_ms, now_ms()).0 + 1;
            (in_a_row, previous.restarts_shown() + 1)
        }
        // Started again after a daemon stopped it on exit: the count goes on.
        (Action::Restart, None) => (0, current.and_then(StoppedOnExit::of).map_or(0, |s| s.total_restarts)),
        _ => (0, 0),
    }
}

/// A start waits for a service's probe (when it has one) before its dependents start.
fn verify_start(desired: &DesiredService, identity: &ProcessIdentity, stopped: &str) -> Result<String, String> {
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

/// Starting one service or agent.
struct Starting<'a> {
    context: &'a Context,
    key: &'a [u8],
    id: &'a ResourceId,
    desired: &'a DesiredService,
    recorder: &'a Recorder,
}

/// A started process, and what enrolling its agent did.
struct Started {
    identity: ProcessIdentity,
    enrolled: String,
}

impl Starting<'_> {
    /// Spawns the process in its cgroup (an agent enrolled, sandboxed and given its token first)
    /// and records it in the inventory. The spawn is marked (a file, and the process's
    /// environment) until the inventory records it: a controller killed in between finds and
    /// stops the unrecorded process when it opens again, instead of starting a second one.
    fn start(&self, (restarts, total_restarts): (u32, u32), inventory: &mut LocalInventory) -> Result<Started, String> {
        let (context, id) = (self.context, self.id);
        let mut run = self.desired.spec.clone();
        let (cgroup_procs, enrolled, log_name) = match &self.desired.agent {
            None => {
                // Membership only (no limits): a stop reaches every descendant.
                let mut group = cgroup::for_service(&context.state_dir, &id.name);
                let procs = match group.prepare(&cgroup::CgroupLimits::default()) {
                    Ok(()) => group.procs_files(),
                    Err(_) => Vec::new(),
                };
                (procs, String::new(), id.name.clone())
            }
            Some((agent, policy, profile)) => self.prepare_agent(agent, policy.as_ref(), profile, &mut run)?,
        };
        let spawn_id = new_id();
        run.env.insert(SPAWN_ENV.into(), spawn_id.clone());
        let marker = crate::state::Layout::of(&context.state_dir).spawning();
        std::fs::write(&marker, &spawn_id).map_err(|e| format!("{}: {e}", marker.display()))?;
        let identity = start(context, &log_name, &run, &cgroup_procs);
        let identity = identity.inspect_err(|_| {
            let _ = std::fs::remove_file(&marker);
        })?;
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
            spec_hash: self.desired.item.hash.clone(),
            last_applied: self.desired.item.rendered.to_string(),
            process: Some(serde_json::to_string(&record).expect("records serialize")),
            updated_ms: now_ms(),
        };
        inventory.upsert(entry, self.recorder).map_err(|e| e.to_string())?;
        let _ = std::fs::remove_file(&marker);
        Ok(Started { identity, enrolled })
    }

    /// An agent: its cgroup with its limits (the cgroup first: the enrollment records what
    /// contains it), enrolled with a token in its environment, its command sandboxed, its log
    /// apart from a service's of the same name. The cgroup's procs files, the enrollment's
    /// detail, and the log name.
    fn prepare_agent(
        &self,
        agent: &AgentSpec,
        policy: Option<&crate::policy::AgentPolicy>,
        profile: &Profile,
        run: &mut ServiceSpec,
    ) -> Result<(Vec<std::fs::File>, String, String), String> {
        let (context, id) = (self.context, self.id);
        let mut cgroup_procs = Vec::new();
        let mut group = cgroup::for_agent(&context.state_dir, &id.name);
        match group.prepare(&cgroup::CgroupLimits::for_agent(agent.limits.as_ref())) {
            Ok(()) => {
                // The cgroup holds the tree's memory: an address-space rlimit would only break
                // interpreters that reserve more than they use.
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
        let (enrolled, token) = enroll_agent(context, self.key, &id.name, agent, policy, self.recorder)?;
        for variable in agents::TOKEN_VARIABLES {
            run.env.insert(variable.to_string(), token.clone());
        }
        run.command = agents::sandboxed_command(profile, agent);
        // An agent and a service may share a name: their logs must not.
        Ok((cgroup_procs, enrolled, format!("agent-{}", id.name)))
    }
}

/// Enrolls an agent the first time it starts (sandbox, token, a record and a receipt) and
/// writes its policy file; what happened (for the change's detail) and the agent's token.
pub(super) fn enroll_agent(
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
pub(super) fn reload_policies(
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
pub(super) fn revoke_agent(context: &Context, name: &str, recorder: &Recorder) -> String {
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
pub(super) fn refresh_unchanged(
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
pub(super) fn rotate_logs(state_dir: &Path, desired: &[DesiredService]) {
    for service in desired {
        let logs = service.spec.logs();
        let path = crate::state::Layout::of(state_dir).service_log(&service.item.id.name);
        let _ = process::rotate_running_log(&path, logs.max_size().0, logs.max_files());
    }
}

/// After a controller was killed between starting a process and recording it: stops that
/// process (the only one marked with the interrupted spawn's id and not in the inventory), so
/// the next pass starts exactly one.
pub(super) fn stop_unrecorded_spawn(state_dir: &Path, inventory: &LocalInventory) {
    let marker = crate::state::Layout::of(state_dir).spawning();
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

/// The stop signal and grace of a last-applied spec.
pub(super) fn stop_settings(last_applied: &str) -> (&'static str, Duration) {
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

pub(super) fn start(
    context: &Context,
    name: &str,
    spec: &ServiceSpec,
    cgroup_procs: &[std::fs::File],
) -> Result<ProcessIdentity, String> {
    let working_dir = match &spec.working_dir {
        Some(dir) => resolve(&context.state_dir, dir),
        None => crate::state::Layout::of(&context.state_dir).service_dir(name),
    };
    if spec.working_dir.is_none() {
        std::fs::create_dir_all(&working_dir).map_err(|e| format!("{}: {e}", working_dir.display()))?;
    }
    let env_files: Vec<PathBuf> = spec.env_files.iter().map(|p| resolve(&context.state_dir, p)).collect();
    let logs = spec.logs();
    let log_dir = crate::state::Layout::of(&context.state_dir).logs();
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
