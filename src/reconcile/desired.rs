//! The desired services and agents of a state, resolved for this host: placement, env files,
//! sandbox profile, spec hash (keyed by the state dir's secret, so a secret's change shows).

use super::*;

/// The key of secret fingerprints, made on first use (`<state dir>/secret.key`, mode 0600).
pub(super) fn secret_key(state_dir: &Path) -> Result<Vec<u8>, ReconcileError> {
    let path = crate::state::Layout::of(state_dir).secret_key();
    let error = |e: std::io::Error| ReconcileError::StateDir {
        path: path.clone(),
        message: e.to_string(),
    };
    match std::fs::read(&path) {
        Ok(key) if key.len() >= 32 => return Ok(key),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(error(e)),
    }
    let mut key = vec![0u8; 32];
    std::fs::create_dir_all(state_dir).map_err(error)?;
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .map_err(error)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    use std::io::Write;
    options.open(&path).and_then(|mut f| f.write_all(&key)).map_err(error)?;
    Ok(key)
}

/// A desired Service or Agent with what apply needs.
pub(super) struct DesiredService {
    pub(super) item: DesiredItem,
    /// How it runs (an agent: in its sandbox, with its environment).
    pub(super) spec: ServiceSpec,
    /// For an agent: its spec and its effective policy (enrollment, the policy file).
    pub(super) agent: Option<(AgentSpec, Option<crate::policy::AgentPolicy>, Profile)>,
    /// Kept stopped by a person (`mirrorctl stop`) until `start` or the next commit: planned as
    /// suspended.
    pub(super) stopped: Option<overrides::Stopped>,
}

/// Relative env files and working dirs are relative to the state dir (secrets live outside git).
pub(super) fn resolve(state_dir: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        state_dir.join(path)
    }
}

/// What every agent's sandbox hides of the rest of the host: other agents' sandboxes, every env
/// file (secrets), the credential stores of the daemon's user.
pub(super) fn host_view(state: &DesiredState, state_dir: &Path) -> agents::HostView {
    let mut view = agents::HostView::from_env(state.controller().bus_address().port());
    for resource in &state.resources {
        match &resource.spec {
            Spec::Service(spec) => view
                .env_files
                .extend(spec.env_files.iter().map(|p| resolve(state_dir, p))),
            Spec::Agent(spec) => {
                view.env_files
                    .extend(spec.env_files.iter().map(|p| resolve(state_dir, p)));
                view.sandboxes.insert(
                    resource.metadata.name.clone(),
                    agents::sandbox_dir(state_dir, &resource.metadata.name, spec),
                );
            }
            _ => {}
        }
    }
    view
}

/// The Services and Agents this host runs (placement selects the host).
pub(super) fn desired_services(
    state: &DesiredState,
    key: &[u8],
    state_dir: &Path,
    host: &str,
    policies: &policies::PolicyPlan,
    selected: &dyn Fn(&ResourceId) -> bool,
) -> Vec<DesiredService> {
    let bus_url = format!("http://{}", state.controller().bus_address());
    let view = host_view(state, state_dir);
    let overrides = overrides::Overrides::load(state_dir);
    state
        .resources
        .iter()
        .filter(|r| selected(&r.id()))
        .filter_map(|r| match &r.spec {
            Spec::Service(spec) if spec.placement.as_ref().is_none_or(|p| p.selects(host)) => {
                Some((r, spec.clone(), None))
            }
            // Validation refuses an agent without a policy: it never gets here.
            Spec::Agent(spec) if spec.placement.as_ref().is_none_or(|p| p.selects(host)) => {
                let policy = policies.for_agent(&r.metadata.name, spec);
                let service = agents::as_service(state_dir, &r.metadata.name, spec, &bus_url);
                let profile = agents::profile(
                    state_dir,
                    &r.metadata.name,
                    spec,
                    policy.as_ref().map(|p| &p.rules),
                    &view,
                );
                Some((r, service, Some((spec.clone(), policy, profile))))
            }
            _ => None,
        })
        .map(|(resource, spec, agent)| {
            let env_files: BTreeMap<PathBuf, Option<Vec<u8>>> = spec
                .env_files
                .iter()
                .map(|p| (p.clone(), std::fs::read(resolve(state_dir, p)).ok()))
                .collect();
            let mut raw = serde_json::to_value(&spec).expect("specs serialize");
            if let Some((_, Some(policy), _)) = &agent {
                // What the policy adds to the sandbox: a running sandbox cannot change, so a
                // change restarts the agent.
                let rules = &policy.rules;
                if !rules.network.is_empty() || !rules.hide_paths.is_empty() {
                    raw["x-sandbox"] = json!({"network": rules.network, "hidePaths": rules.hide_paths});
                }
            }
            if let Some((agent, Some(policy), _)) = &agent {
                // A policy change restarts an agent that asks for it; others get the new file and
                // SIGHUP, the spec (and the process) unchanged.
                if agent.on_policy_change == crate::spec::agent::PolicyReload::Restart {
                    raw["x-policy"] = json!(format!(
                        "{} version {} ({})",
                        policy.policy.name, policy.policy.version, policy.hash
                    ));
                }
            }
            let rendered = render_spec(raw, key, &env_files);
            let hash = spec_hash(&rendered);
            let mut last_applied = rendered.clone();
            // Remember the prune opt-out with the spec: once the resource leaves the desired
            // state, the annotation is only known from here.
            if !resource.metadata.prune_allowed() {
                last_applied["x-prune"] = json!("disabled");
            }
            let stopped = overrides.active(&resource.id(), &state.commit).cloned();
            DesiredService {
                item: DesiredItem {
                    id: resource.id(),
                    rendered: last_applied,
                    hash,
                    suspend: spec.suspend || stopped.is_some(),
                    prune_allowed: resource.metadata.prune_allowed(),
                    depends_on: spec
                        .depends_on
                        .iter()
                        .filter_map(|d| parse_dependency(d).ok())
                        .collect(),
                    restart: spec.restart,
                    backoff: spec.backoff(),
                },
                spec,
                agent,
                stopped,
            }
        })
        .collect()
}
