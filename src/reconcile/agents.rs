//! Agents as supervised processes: enrollment the first time an agent starts (its sandbox
//! directory, mode 0700, and an identity token, kept only as a hash), the environment it runs
//! with, and revocation when it leaves the desired state (the sandbox is kept).
//!
//! An enrollment lives in `<state dir>/agents/<name>/enrollment.json`; the token itself is never
//! stored: it is derived from the host's secret key and the enrollment time, so a re-enrolled
//! agent gets a new token and a revoked one stays revoked. It is handed to the agent in its
//! environment and, for people and tools, in `agents/<name>/bus-token` (mode 0600).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::spec::agent::AgentSpec;
use crate::spec::service::ServiceSpec;
use crate::supervisor::sandbox::Profile;

/// What enrolling an agent established.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrollment {
    pub agent: String,
    pub enrolled_ms: i64,
    /// SHA-256 (hex) of the token.
    pub token_hash: String,
    pub policy: String,
    pub sandbox: PathBuf,
    /// What contained the agent when it enrolled (enforced or advisory, and how).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub protections: Vec<crate::supervisor::sandbox::Protection>,
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("creating the sandbox {path}: {source}")]
    Sandbox { path: PathBuf, source: std::io::Error },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// The agent's sandbox: `sandbox.dir` (relative to the state dir) or `sandboxes/<name>`.
pub fn sandbox_dir(state_dir: &Path, name: &str, spec: &AgentSpec) -> PathBuf {
    match spec.sandbox().dir {
        Some(dir) if dir.is_absolute() => dir,
        Some(dir) => state_dir.join(dir),
        None => crate::state::Layout::of(state_dir).sandbox(name),
    }
}

fn agent_dir(state_dir: &Path, name: &str) -> PathBuf {
    crate::state::Layout::of(state_dir).agent(name)
}

/// What the agent may read of its own record: a directory holding only its policy file (the
/// rest of `agents/<name>/`, its token above all, is hidden with the state dir).
pub fn view_dir(state_dir: &Path, name: &str) -> PathBuf {
    agent_dir(state_dir, name).join("view")
}

/// `MIRROR_POLICY_FILE`.
pub fn policy_file(state_dir: &Path, name: &str) -> PathBuf {
    view_dir(state_dir, name).join("policy.json")
}

/// The bus token of an enrollment: keyed by the host's secret, so it cannot be guessed from
/// the name, and new for every enrollment.
pub fn token(key: &[u8], agent: &str, enrolled_ms: i64) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(b"mirrorctl agent token\0");
    mac.update(agent.as_bytes());
    mac.update(b"\0");
    mac.update(enrolled_ms.to_string().as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

pub fn token_hash(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// The agent's current enrollment, if it has one.
pub fn load(state_dir: &Path, name: &str) -> Option<Enrollment> {
    let text = std::fs::read_to_string(agent_dir(state_dir, name).join("enrollment.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// Enrolls the agent: creates its sandbox (0700; an existing one is kept and tightened), records
/// the enrollment and writes the token file. Returns the enrollment and the token.
pub fn enroll(
    state_dir: &Path,
    key: &[u8],
    name: &str,
    spec: &AgentSpec,
    now_ms: i64,
) -> Result<(Enrollment, String), EnrollError> {
    let sandbox = sandbox_dir(state_dir, name, spec);
    private_dir(&sandbox).map_err(|source| EnrollError::Sandbox {
        path: sandbox.clone(),
        source,
    })?;
    private_dir(&sandbox.join("tmp")).map_err(|source| EnrollError::Sandbox {
        path: sandbox.clone(),
        source,
    })?;
    let token = token(key, name, now_ms);
    let enrollment = Enrollment {
        agent: name.to_string(),
        enrolled_ms: now_ms,
        token_hash: token_hash(&token),
        policy: spec.policy.clone().unwrap_or_default(),
        sandbox,
        protections: Vec::new(),
    };
    let dir = agent_dir(state_dir, name);
    let json = serde_json::to_vec_pretty(&enrollment).expect("enrollments serialize");
    write_private(&dir, "enrollment.json", &json)?;
    write_private(&dir, "bus-token", token.as_bytes())?;
    Ok((enrollment, token))
}

/// The enrollment in force, or a new one; the token; and whether it is new.
pub fn ensure(
    state_dir: &Path,
    key: &[u8],
    name: &str,
    spec: &AgentSpec,
    now_ms: i64,
) -> Result<(Enrollment, String, bool), EnrollError> {
    if let Some(enrollment) = load(state_dir, name) {
        let token = token(key, name, enrollment.enrolled_ms);
        if token_hash(&token) == enrollment.token_hash {
            // The sandbox may have been removed by hand: an agent always starts in one.
            private_dir(&enrollment.sandbox.join("tmp")).map_err(|source| EnrollError::Sandbox {
                path: enrollment.sandbox.clone(),
                source,
            })?;
            return Ok((enrollment, token, false));
        }
    }
    let (enrollment, token) = enroll(state_dir, key, name, spec, now_ms)?;
    Ok((enrollment, token, true))
}

/// Records in the enrollment what contains the agent.
pub fn record_protections(
    state_dir: &Path,
    name: &str,
    protections: &[crate::supervisor::sandbox::Protection],
) -> Result<(), EnrollError> {
    let Some(mut enrollment) = load(state_dir, name) else {
        return Ok(());
    };
    enrollment.protections = protections.to_vec();
    let json = serde_json::to_vec_pretty(&enrollment).expect("enrollments serialize");
    write_private(&agent_dir(state_dir, name), "enrollment.json", &json)
}

/// Revokes the agent's enrollment: its token file and enrollment go, its sandbox stays.
pub fn revoke(state_dir: &Path, name: &str) -> Option<Enrollment> {
    let enrollment = load(state_dir, name);
    let dir = agent_dir(state_dir, name);
    let _ = std::fs::remove_file(dir.join("bus-token"));
    let _ = std::fs::remove_file(dir.join("enrollment.json"));
    enrollment
}

/// The tokens of every enrolled agent, by agent (what the bus accepts).
pub fn tokens(state_dir: &Path, key: &[u8]) -> BTreeMap<String, String> {
    let Ok(entries) = std::fs::read_dir(crate::state::Layout::of(state_dir).agents()) else {
        return BTreeMap::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|name| {
            let enrollment = load(state_dir, &name)?;
            let token = token(key, &name, enrollment.enrolled_ms);
            (token_hash(&token) == enrollment.token_hash).then_some((name, token))
        })
        .collect()
}

/// What the agent runs as: a Service spec in its sandbox, with the environment that tells it
/// who it is (everything but the token, which is added at start and never rendered).
pub fn as_service(state_dir: &Path, name: &str, spec: &AgentSpec, bus_url: &str) -> ServiceSpec {
    let sandbox = sandbox_dir(state_dir, name, spec);
    let memory = spec.memory();
    let mut env = spec.env.clone();
    let bus_host = bus_url.trim_start_matches("http://").trim_end_matches('/');
    let injected = [
        ("MIRROR_AGENT", name.to_string()),
        ("MIRROR_BUS_URL", bus_url.to_string()),
        // Unmodified Ollama and OpenAI clients reach the bus with no configuration; their keys
        // are the agent's token, added at start with MIRROR_AGENT_TOKEN (`client_keys`).
        ("OLLAMA_HOST", bus_host.to_string()),
        ("OPENAI_BASE_URL", format!("{}/v1", bus_url.trim_end_matches('/'))),
        ("MIRROR_SANDBOX", sandbox.display().to_string()),
        ("MIRROR_POLICY", spec.policy.clone().unwrap_or_default()),
        ("MIRROR_POLICY_FILE", policy_file(state_dir, name).display().to_string()),
        ("MIRROR_MEMORY_READ", memory.read.join(",")),
        ("MIRROR_MEMORY_WRITE", memory.write.join(",")),
        // Writes outside the sandbox are denied: temporary files go inside it.
        ("TMPDIR", sandbox.join("tmp").display().to_string()),
    ];
    for (key, value) in injected {
        env.insert(key.to_string(), value);
    }
    ServiceSpec {
        command: spec.command.clone(),
        working_dir: Some(sandbox),
        env,
        env_files: spec.env_files.clone(),
        restart: spec.restart,
        backoff: spec.backoff.clone(),
        depends_on: spec.depends_on.clone(),
        health: spec.health.clone(),
        stop: spec.stop.clone(),
        limits: spec.limits.clone(),
        logs: spec.logs.clone(),
        placement: spec.placement.clone(),
        suspend: spec.suspend,
    }
}

/// The variables that carry the agent's token (never part of a rendered spec): its own, and
/// the API keys of the Ollama and OpenAI clients, so they authenticate to the bus as the agent.
pub const TOKEN_VARIABLES: &[&str] = &["MIRROR_AGENT_TOKEN", "OPENAI_API_KEY", "OLLAMA_API_KEY"];

/// Writes the agent's policy file (`MIRROR_POLICY_FILE`); whether it changed.
pub fn write_policy(state_dir: &Path, name: &str, text: &str) -> Result<bool, EnrollError> {
    let dir = view_dir(state_dir, name);
    if std::fs::read(dir.join("policy.json")).ok().as_deref() == Some(text.as_bytes()) {
        return Ok(false);
    }
    write_private(&dir, "policy.json", text.as_bytes())?;
    Ok(true)
}

/// What else an agent's sandbox hides and allows, from the rest of the desired state: the
/// host-wide part of every agent's [`Profile`].
#[derive(Clone, Debug, Default)]
pub struct HostView {
    /// The daemon's home (credential stores, `~/` of `hidePaths`); None: none is known.
    pub home: Option<PathBuf>,
    /// Other directories that hold credentials (`$XDG_RUNTIME_DIR/gnupg`, ...).
    pub runtime: Vec<PathBuf>,
    /// Every agent's sandbox, by agent (another agent's is hidden).
    pub sandboxes: BTreeMap<String, PathBuf>,
    /// Every Service's and agent's env files, resolved (secrets).
    pub env_files: Vec<PathBuf>,
    /// The bus's TCP port (always reachable).
    pub bus_port: Option<u16>,
}

impl HostView {
    /// The view of this process's environment (`HOME`, `XDG_RUNTIME_DIR`).
    pub fn from_env(bus_port: u16) -> HostView {
        let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
        let runtime = std::env::var_os("XDG_RUNTIME_DIR")
            .filter(|h| !h.is_empty())
            .map(|dir| ["gnupg", "keyring"].iter().map(|d| Path::new(&dir).join(d)).collect())
            .unwrap_or_default();
        HostView {
            home,
            runtime,
            bus_port: Some(bus_port),
            ..HostView::default()
        }
    }
}

/// The agent's sandbox: writes to its sandbox and declared paths; reads everywhere but the
/// state dir, other agents' sandboxes, env files and credential stores (plus its policy's
/// `hidePaths`), with its own view dir and declared read paths readable; TCP to the bus and
/// the policy's ports; signals and abstract sockets scoped to its own processes.
pub fn profile(
    state_dir: &Path,
    name: &str,
    spec: &AgentSpec,
    rules: Option<&crate::policy::EffectivePolicy>,
    host: &HostView,
) -> Profile {
    let sandbox = spec.sandbox();
    let resolve = |p: &PathBuf| if p.is_absolute() { p.clone() } else { state_dir.join(p) };
    let own = sandbox_dir(state_dir, name, spec);
    let mut writes = vec![own.clone()];
    writes.extend(sandbox.write_paths.iter().map(resolve));
    let mut reads = vec![view_dir(state_dir, name)];
    reads.extend(sandbox.read_paths.iter().map(resolve));

    let mut hide = vec![state_dir.to_path_buf()];
    hide.extend(
        host.sandboxes
            .iter()
            .filter(|(agent, dir)| agent.as_str() != name && **dir != own)
            .map(|(_, dir)| dir.clone()),
    );
    hide.extend(host.env_files.iter().cloned());
    hide.extend(host.runtime.iter().cloned());
    hide.extend(
        crate::supervisor::sandbox::hide::SYSTEM_SECRETS
            .iter()
            .map(PathBuf::from),
    );
    if let Some(home) = &host.home {
        hide.extend(crate::supervisor::sandbox::hide::credential_stores(home));
    }
    let network = rules.map(|r| r.network.clone()).unwrap_or_default();
    if let Some(rules) = rules {
        let home = host.home.clone().unwrap_or_else(|| PathBuf::from("/"));
        hide.extend(
            rules
                .hide_paths
                .iter()
                .map(|p| crate::supervisor::sandbox::hide::expand_home(p, &home)),
        );
    }
    hide.sort();
    hide.dedup();
    let mut connect: Vec<u16> = host.bus_port.into_iter().chain(network.connect).collect();
    connect.sort_unstable();
    connect.dedup();
    Profile {
        writes,
        reads,
        hide,
        network: true,
        connect,
        bind: network.bind,
        scope: true,
    }
}

/// What contains agent `name` on this host, protection by protection: the kernel's sandbox
/// (`sandbox::protections`), its cgroup (limits, membership, stop), and the control socket's
/// peer check. Shown in `status` and recorded with the enrollment.
pub fn containment(state_dir: &Path, name: &str) -> Vec<crate::supervisor::sandbox::Protection> {
    use crate::supervisor::{cgroup, sandbox};
    let mut out = sandbox::protections(&sandbox::support());
    let group = cgroup::for_agent(state_dir, name);
    let present = cgroup::Cgroup {
        v2: group.v2.clone().filter(|d| d.is_dir()),
        v1: group.v1.iter().filter(|(_, d)| d.is_dir()).cloned().collect(),
    };
    out.push(if present.is_empty() {
        sandbox::Protection {
            name: "cgroup".into(),
            state: "advisory".into(),
            how: match cgroup::support(state_dir) {
                cgroup::Support::Unavailable { reason } => format!("no writable cgroup ({reason}): rlimits only"),
                cgroup::Support::Available { .. } => "not started in a cgroup yet".into(),
            },
        }
    } else {
        sandbox::Protection {
            name: "cgroup".into(),
            state: "enforced".into(),
            how: format!("{} (clone3 refused: it cannot leave)", present.describe()),
        }
    });
    // Which limits its cgroup holds (a pure v2 host without delegated controllers has none).
    let limits = present.limit_files();
    out.push(sandbox::Protection {
        name: "limits".into(),
        state: if limits.is_empty() { "advisory" } else { "enforced" }.into(),
        how: if limits.is_empty() {
            "no memory, pids or cpu controller in its cgroup: rlimits only".into()
        } else {
            limits.join(", ")
        },
    });
    // Landlock filters connecting to pathname Unix sockets only from ABI 9 (RESOLVE_UNIX), not
    // used yet: a D-Bus session bus, an ssh-agent or docker.sock stays reachable if it exists.
    out.push(sandbox::Protection {
        name: "unix-sockets".into(),
        state: "advisory".into(),
        how: "pathname Unix sockets stay connectable (Landlock RESOLVE_UNIX, ABI 9, not used yet)".into(),
    });
    out.push(sandbox::Protection {
        name: "control-socket".into(),
        state: if cfg!(target_os = "linux") {
            "enforced"
        } else {
            "advisory"
        }
        .into(),
        how: if cfg!(target_os = "linux") {
            "SO_PEERCRED: its processes are refused".into()
        } else {
            "no /proc to tell its processes from a person's".into()
        },
    });
    out
}

/// Agents whose containment is partly advisory on this host (an old kernel, no Landlock, no
/// writable cgroup): a warning drift item each, never a silent downgrade.
pub fn containment_drift(state_dir: &Path, agents: &[&str]) -> Vec<crate::report::DriftItem> {
    use crate::supervisor::{cgroup, sandbox};
    if agents.is_empty() {
        return Vec::new();
    }
    let mut host = sandbox::protections(&sandbox::support());
    if let cgroup::Support::Unavailable { reason } = cgroup::support(state_dir) {
        host.push(sandbox::Protection {
            name: "cgroup".into(),
            state: "advisory".into(),
            how: format!("no writable cgroup ({reason}): rlimits only"),
        });
    }
    advisory_items(agents, &host)
}

/// One warning per agent naming every advisory protection and why (pure).
fn advisory_items(
    agents: &[&str],
    protections: &[crate::supervisor::sandbox::Protection],
) -> Vec<crate::report::DriftItem> {
    use crate::report::{Drift, DriftItem, Severity};
    let advisory: Vec<String> = protections
        .iter()
        .filter(|p| p.state != "enforced")
        .map(|p| format!("{} ({})", p.name, p.how))
        .collect();
    if advisory.is_empty() {
        return Vec::new();
    }
    agents
        .iter()
        .map(|agent| DriftItem {
            kind: "Agent".into(),
            name: agent.to_string(),
            drift: Drift::Degraded,
            corrective: false,
            severity: Severity::Warning,
            detail: format!("containment advisory on this host: {}", advisory.join("; ")),
        })
        .collect()
}

/// The agent's command line: through the `__sandbox-exec` trampoline of this very binary, which
/// restricts itself to `profile` (Landlock, where the kernel has it), then execs the agent's
/// program in the same process; on macOS through `sandbox-exec` with the profile in SBPL.
pub fn sandboxed_command(profile: &Profile, spec: &AgentSpec) -> Vec<String> {
    // macOS: Seatbelt, through `sandbox-exec -p PROFILE` (Landlock's trampoline does nothing
    // there). Not run in CI (no macOS here); the profile's text is unit-tested.
    if cfg!(target_os = "macos") {
        let mut argv = vec![
            "/usr/bin/sandbox-exec".to_string(),
            "-p".to_string(),
            crate::supervisor::sandbox::seatbelt::profile_text(profile),
        ];
        argv.extend(spec.command.iter().cloned());
        return argv;
    }
    // The binary the child is (the daemon's, even after an upgrade replaced the file).
    let exe = if cfg!(target_os = "linux") {
        PathBuf::from("/proc/self/exe")
    } else {
        std::env::current_exe().unwrap_or_else(|_| PathBuf::from("mirrorctl"))
    };
    profile
        .trampoline_args(&exe, false, &spec.command)
        .into_iter()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect()
}

/// Creates `path` (mode 0700). A symbolic link there is refused, not followed: an agent may
/// plant one in its sandbox (`tmp` -> anywhere) to have the daemon chmod what it points to.
fn private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(std::io::Error::other(format!(
            "{} is a symbolic link, not a directory: refused",
            path.display()
        )));
    }
    std::fs::create_dir_all(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
}

/// Writes `dir/file` (the dir private) with mode 0600, atomically.
fn write_private(dir: &Path, file: &str, content: &[u8]) -> Result<(), EnrollError> {
    let path = dir.join(file);
    private_dir(dir)
        .and_then(|_| crate::state::write_private_file(&path, content))
        .map_err(|source| EnrollError::Write { path, source })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn spec() -> AgentSpec {
        AgentSpec {
            command: vec!["sleep".into(), "1".into()],
            policy: Some("default".into()),
            ..AgentSpec::default()
        }
    }

    #[test]
    fn enrollment_makes_a_private_sandbox_and_keeps_only_the_token_hash() {
        let dir = tempfile::tempdir().unwrap();
        let key = [7u8; 32];
        let (enrollment, token, new) = ensure(dir.path(), &key, "scribe", &spec(), 1_000).unwrap();
        assert!(new);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(enrollment.sandbox, dir.path().join("sandboxes/scribe"));
        assert_eq!(mode(&enrollment.sandbox), 0o700);
        let stored = std::fs::read_to_string(dir.path().join("agents/scribe/enrollment.json")).unwrap();
        assert!(!stored.contains(&token), "the token itself is not stored");
        assert!(stored.contains(&token_hash(&token)));
        assert_eq!(mode(&dir.path().join("agents/scribe/bus-token")), 0o600);

        // Again: the same enrollment and token.
        let (again, same, new) = ensure(dir.path(), &key, "scribe", &spec(), 5_000).unwrap();
        assert!(!new);
        assert_eq!((again, same.clone()), (enrollment, token.clone()));
        assert_eq!(
            tokens(dir.path(), &key),
            BTreeMap::from([("scribe".to_string(), token.clone())])
        );

        // Revoked: the token is gone for good; the sandbox stays; a new enrollment, a new token.
        std::fs::write(dir.path().join("sandboxes/scribe/notes"), "kept").unwrap();
        assert!(revoke(dir.path(), "scribe").is_some());
        assert!(tokens(dir.path(), &key).is_empty());
        assert!(dir.path().join("sandboxes/scribe/notes").exists());
        let (_, fresh, new) = ensure(dir.path(), &key, "scribe", &spec(), 9_000).unwrap();
        assert!(new);
        assert_ne!(fresh, token);
    }

    #[test]
    fn a_symlink_planted_as_the_sandbox_tmp_is_refused_not_followed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = [7u8; 32];
        let (enrollment, _, _) = ensure(dir.path(), &key, "scribe", &spec(), 1_000).unwrap();
        let victim = dir.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::remove_dir(enrollment.sandbox.join("tmp")).unwrap();
        std::os::unix::fs::symlink(&victim, enrollment.sandbox.join("tmp")).unwrap();
        let error = ensure(dir.path(), &key, "scribe", &spec(), 2_000).unwrap_err();
        assert!(error.to_string().contains("is a symbolic link"), "{error}");
        let mode = std::fs::metadata(&victim).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755, "the link's target was not touched");
    }

    #[test]
    fn advisory_protections_are_a_warning_per_agent_never_silence() {
        use crate::supervisor::sandbox::{protections, Support};
        assert!(advisory_items(&["a"], &protections(&Support::Enforced { abi: 7 })).is_empty());
        let old_kernel = protections(&Support::Enforced { abi: 3 });
        let items = advisory_items(&["a", "b"], &old_kernel);
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].severity, crate::report::Severity::Warning);
        assert_eq!(items[0].drift, crate::report::Drift::Degraded);
        assert!(
            items[0]
                .detail
                .contains("tcp (needs Landlock ABI 4, this kernel has 3)")
                && items[0].detail.contains("signals (needs Landlock ABI 6"),
            "{}",
            items[0].detail
        );
        let none = protections(&Support::Advisory {
            reason: "ENOSYS: no Landlock".into(),
        });
        assert!(advisory_items(&["a"], &none)[0]
            .detail
            .contains("reads (ENOSYS: no Landlock)"));
    }

    #[test]
    fn the_agent_runs_in_its_sandbox_and_learns_who_it_is_from_its_environment() {
        let state = Path::new("/var/lib/mirror");
        let service = as_service(state, "scribe", &spec(), "http://127.0.0.1:11500");
        assert_eq!(
            service.working_dir.as_deref(),
            Some(Path::new("/var/lib/mirror/sandboxes/scribe"))
        );
        assert_eq!(service.env["MIRROR_AGENT"], "scribe");
        assert_eq!(service.env["MIRROR_BUS_URL"], "http://127.0.0.1:11500");
        assert_eq!(
            service.env["MIRROR_POLICY_FILE"],
            "/var/lib/mirror/agents/scribe/view/policy.json"
        );
        // Unmodified Ollama and OpenAI clients find the bus; their keys come with the token.
        assert_eq!(service.env["OLLAMA_HOST"], "127.0.0.1:11500");
        assert_eq!(service.env["OPENAI_BASE_URL"], "http://127.0.0.1:11500/v1");
        for variable in TOKEN_VARIABLES {
            assert!(
                !service.env.contains_key(*variable),
                "{variable} is never in a rendered spec"
            );
        }
        assert!(
            !service.env.contains_key("MIRROR_AGENT_TOKEN"),
            "never in a rendered spec"
        );
    }
}
