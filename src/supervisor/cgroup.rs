//! Agents in their own cgroup, where the host offers a writable one: limits that hold for the
//! whole tree (memory, processes, CPU), a membership no descendant can leave (its sandbox
//! forbids writing any `cgroup.procs`), and a stop that reaches every member, also those that
//! cleared their environment and left their session.
//!
//! Layout: beneath the daemon's own cgroup in each hierarchy,
//! `mirrorctl.<8 hex of the state dir>/agent.<name>`. cgroup v2 (a pure v2 host, or the
//! `unified` mount of a hybrid one) holds membership and `cgroup.kill` even without controllers;
//! v1 hierarchies (`memory`, `pids`, `cpu`) add limits where v2 does not offer them. The
//! process joins in the forked child, before `exec`, by writing `0` to pre-opened
//! `cgroup.procs` files (one `write(2)`, async-signal-safe), so even its first instruction runs
//! inside. Where no hierarchy is writable, [`Support::Unavailable`] says why and the rlimits of
//! `limits` are all there is (`status` says so).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::spec::common::Limits;

/// Prefix of the directory every state dir's cgroups live in.
const BASE_PREFIX: &str = "mirrorctl.";
/// Prefix of an agent's cgroup directory.
const AGENT_PREFIX: &str = "agent.";
/// Prefix of a Service's cgroup directory.
const SERVICE_PREFIX: &str = "service.";
/// Processes an agent may have when its spec sets no `limits.processes`: a fork bomb stays
/// inside.
pub const DEFAULT_AGENT_PROCESSES: u64 = 256;

/// The agent a cgroup path (as in `/proc/PID/cgroup`) belongs to.
pub fn agent_of_path(path: &str) -> Option<String> {
    let mut segments = path.trim_end_matches('/').rsplit('/');
    let last = segments.next()?;
    let parent = segments.next()?;
    let agent = last.strip_prefix(AGENT_PREFIX)?;
    (parent.starts_with(BASE_PREFIX) && !agent.is_empty()).then(|| agent.to_string())
}

/// A hierarchy the daemon may create cgroups in.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Hierarchy {
    /// `None` for v2; the controller of a v1 hierarchy.
    controller: Option<String>,
    /// The daemon's own cgroup in it (mount point + path).
    own: PathBuf,
}

/// Whether agents get cgroups here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Support {
    Available { how: String },
    Unavailable { reason: String },
}

/// One agent's cgroups: a directory per hierarchy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cgroup {
    /// The v2 directory (membership, `cgroup.kill`).
    pub v2: Option<PathBuf>,
    /// v1 directories by controller.
    pub v1: Vec<(String, PathBuf)>,
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{path}: creating the cgroup: {source}")]
    Create { path: PathBuf, source: std::io::Error },
    #[error("{path}: setting a limit: {source}")]
    Limit { path: PathBuf, source: std::io::Error },
}

/// The cgroup hierarchies of this host the daemon is in, read once per process (every start
/// asks; mounts and the daemon's own cgroup do not change under it).
fn hierarchies() -> Vec<Hierarchy> {
    static CACHED: std::sync::OnceLock<Vec<Hierarchy>> = std::sync::OnceLock::new();
    CACHED.get_or_init(read_hierarchies).clone()
}

/// From `/proc/self/mounts` and `/proc/self/cgroup`.
fn read_hierarchies() -> Vec<Hierarchy> {
    let (Ok(mounts), Ok(own)) = (
        std::fs::read_to_string("/proc/self/mounts"),
        std::fs::read_to_string("/proc/self/cgroup"),
    ) else {
        return Vec::new();
    };
    let own_path = |controller: Option<&str>| -> Option<String> {
        own.lines().find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let matches = match controller {
                None => controllers.is_empty(),
                Some(c) => controllers.split(',').any(|x| x == c),
            };
            matches.then(|| path.to_string())
        })
    };
    let mut out = Vec::new();
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(mount), Some(fstype), Some(options)) = (fields.get(1), fields.get(2), fields.get(3)) else {
            continue;
        };
        let controller = match *fstype {
            "cgroup2" => None,
            "cgroup" => match ["memory", "pids", "cpu"]
                .into_iter()
                .find(|c| options.split(',').any(|o| o == *c))
            {
                Some(c) => Some(c.to_string()),
                None => continue,
            },
            _ => continue,
        };
        let Some(path) = own_path(controller.as_deref()) else {
            continue;
        };
        out.push(Hierarchy {
            own: Path::new(mount).join(path.trim_start_matches('/')),
            controller,
        });
    }
    out
}

fn base_name(state_dir: &Path) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(state_dir.as_os_str().as_encoded_bytes());
    format!("{BASE_PREFIX}{}", &hex::encode(digest)[..8])
}

/// The cgroup of agent `name` of the daemon on `state_dir` (nothing is created).
pub fn for_agent(state_dir: &Path, name: &str) -> Cgroup {
    let base = base_name(state_dir);
    let leaf = format!("{AGENT_PREFIX}{name}");
    let mut cgroup = Cgroup::default();
    for h in hierarchies() {
        let dir = h.own.join(&base).join(&leaf);
        match h.controller {
            None => cgroup.v2 = Some(dir),
            Some(c) => cgroup.v1.push((c, dir)),
        }
    }
    cgroup
}

/// The cgroup of Service `name`: cgroup v2 only (membership and the kill that reaches every
/// descendant; on a pure v2 host its limits could go there too). One directory per Service is
/// what "where it costs nothing" allows: v1 hierarchies would triple the mkdirs of a start.
pub fn for_service(state_dir: &Path, name: &str) -> Cgroup {
    let base = base_name(state_dir);
    Cgroup {
        v2: hierarchies()
            .into_iter()
            .find(|h| h.controller.is_none())
            .map(|h| h.own.join(base).join(format!("{SERVICE_PREFIX}{name}"))),
        v1: Vec::new(),
    }
}

/// Whether agents of this state dir can have cgroups: creates (and keeps) the base directory
/// in each hierarchy to find out.
pub fn support(state_dir: &Path) -> Support {
    let base = base_name(state_dir);
    let mut usable = Vec::new();
    let mut problems = Vec::new();
    for h in hierarchies() {
        let dir = h.own.join(&base);
        match std::fs::create_dir_all(&dir) {
            Ok(()) => usable.push(match &h.controller {
                None => "v2".to_string(),
                Some(c) => format!("v1 {c}"),
            }),
            Err(e) => problems.push(format!("{}: {e}", dir.display())),
        }
    }
    if usable.is_empty() {
        Support::Unavailable {
            reason: if problems.is_empty() {
                "no cgroup hierarchy is mounted".into()
            } else {
                problems.join("; ")
            },
        }
    } else {
        Support::Available {
            how: format!("cgroup {}", usable.join(", ")),
        }
    }
}

/// The limits a cgroup enforces for an agent: its spec's, and 256 processes by default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupLimits {
    pub memory: Option<u64>,
    pub processes: Option<u64>,
    /// Microseconds of CPU per 100 ms period.
    pub cpu_quota_us: Option<u64>,
}

impl CgroupLimits {
    pub fn for_agent(limits: Option<&Limits>) -> CgroupLimits {
        let limits = limits.cloned().unwrap_or_default();
        CgroupLimits {
            memory: limits.memory.map(|m| m.0),
            processes: Some(limits.processes.unwrap_or(DEFAULT_AGENT_PROCESSES)),
            cpu_quota_us: limits.cpu.map(|cores| (cores * 100_000.0).round().max(1_000.0) as u64),
        }
    }
}

const CPU_PERIOD_US: u64 = 100_000;

impl Cgroup {
    pub fn is_empty(&self) -> bool {
        self.v2.is_none() && self.v1.is_empty()
    }

    /// Creates the directories and writes the limits. A hierarchy whose directory cannot be
    /// made is left out (returned as the error only when none is left).
    pub fn prepare(&mut self, limits: &CgroupLimits) -> Result<(), CgroupError> {
        let mut first_error = None;
        let mut keep = |dir: &Path| match std::fs::create_dir_all(dir) {
            Ok(()) => true,
            Err(source) => {
                first_error.get_or_insert(CgroupError::Create {
                    path: dir.to_path_buf(),
                    source,
                });
                false
            }
        };
        if self.v2.as_deref().is_some_and(|d| !keep(d)) {
            self.v2 = None;
        }
        self.v1.retain(|(_, dir)| keep(dir));
        if self.is_empty() {
            return first_error.map_or(Ok(()), Err);
        }
        let set = |dir: &Path, file: &str, value: String| -> Result<(), CgroupError> {
            let path = dir.join(file);
            std::fs::write(&path, value).map_err(|source| CgroupError::Limit { path, source })
        };
        // v2 limits where its controllers are enabled (a pure v2 host), else v1.
        let v2_has = |file: &str| self.v2.as_deref().is_some_and(|d| d.join(file).exists());
        let v1_dir = |controller: &str| self.v1.iter().find(|(c, _)| c == controller).map(|(_, d)| d.clone());
        if let Some(bytes) = limits.memory {
            if v2_has("memory.max") {
                set(self.v2.as_deref().expect("checked"), "memory.max", bytes.to_string())?;
            } else if let Some(dir) = v1_dir("memory") {
                set(&dir, "memory.limit_in_bytes", bytes.to_string())?;
            }
        }
        if let Some(max) = limits.processes {
            if v2_has("pids.max") {
                set(self.v2.as_deref().expect("checked"), "pids.max", max.to_string())?;
            } else if let Some(dir) = v1_dir("pids") {
                set(&dir, "pids.max", max.to_string())?;
            }
        }
        if let Some(quota) = limits.cpu_quota_us {
            if v2_has("cpu.max") {
                set(
                    self.v2.as_deref().expect("checked"),
                    "cpu.max",
                    format!("{quota} {CPU_PERIOD_US}"),
                )?;
            } else if let Some(dir) = v1_dir("cpu") {
                set(&dir, "cpu.cfs_period_us", CPU_PERIOD_US.to_string())?;
                set(&dir, "cpu.cfs_quota_us", quota.to_string())?;
            }
        }
        Ok(())
    }

    /// The `cgroup.procs` files to join, opened for writing (the child writes `0` to each).
    pub fn procs_files(&self) -> Vec<File> {
        self.dirs()
            .filter_map(|dir| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(dir.join("cgroup.procs"))
                    .ok()
            })
            .collect()
    }

    fn dirs(&self) -> impl Iterator<Item = &PathBuf> {
        self.v2.iter().chain(self.v1.iter().map(|(_, d)| d))
    }

    /// Every process in the cgroup (any hierarchy: a member cannot leave one and not another).
    pub fn members(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .dirs()
            .filter_map(|dir| std::fs::read_to_string(dir.join("cgroup.procs")).ok())
            .flat_map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect::<Vec<i32>>())
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// SIGKILLs every member (v2 `cgroup.kill` where there is one, else each member until none
    /// is left) and waits up to `wait` for them to go. Whether it is empty.
    pub fn kill(&self, wait: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + wait;
        loop {
            let members = self.members();
            if members.is_empty() {
                return true;
            }
            let killed = self
                .v2
                .as_deref()
                .and_then(|dir| {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(dir.join("cgroup.kill"))
                        .ok()
                })
                .is_some_and(|mut f| f.write_all(b"1").is_ok());
            if !killed {
                for pid in members {
                    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                    }
                }
            }
            if std::time::Instant::now() >= deadline {
                return self.members().is_empty();
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Removes the (empty) directories: the agent left the desired state.
    pub fn remove(&self) {
        for dir in self.dirs() {
            let _ = std::fs::remove_dir(dir);
        }
    }

    /// The limit files it holds: `pids.max (v1)`, `memory.max (v2)`, ... (those that exist).
    pub fn limit_files(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(dir) = &self.v2 {
            for file in ["pids.max", "memory.max", "cpu.max"] {
                if dir.join(file).exists() {
                    out.push(format!("{file} (v2)"));
                }
            }
        }
        for (controller, dir) in &self.v1 {
            let file = match controller.as_str() {
                "pids" => "pids.max",
                "memory" => "memory.limit_in_bytes",
                _ => "cpu.cfs_quota_us",
            };
            if dir.join(file).exists() {
                out.push(format!("{file} (v1)"));
            }
        }
        out
    }

    /// Where it is, for `status`: `cgroup v2 /sys/fs/cgroup/...`.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self.v2.iter().map(|d| format!("v2 {}", d.display())).collect();
        parts.extend(self.v1.iter().map(|(c, d)| format!("v1 {c} {}", d.display())));
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_is_known_by_its_cgroup_path() {
        assert_eq!(agent_of_path("/mirrorctl.0a1b2c3d/agent.scribe"), Some("scribe".into()));
        assert_eq!(
            agent_of_path("/x/mirrorctl.0a1b2c3d/agent.scribe/"),
            Some("scribe".into())
        );
        assert_eq!(agent_of_path("/agent.scribe"), None);
        assert_eq!(agent_of_path("/mirrorctl.0a1b2c3d/service.web"), None);
        assert_eq!(agent_of_path("/mirrorctl.0a1b2c3d/agent."), None);
        assert_eq!(agent_of_path("/"), None);
    }

    #[test]
    fn agents_get_a_process_limit_by_default() {
        let limits = CgroupLimits::for_agent(None);
        assert_eq!(limits.processes, Some(DEFAULT_AGENT_PROCESSES));
        assert_eq!(limits.memory, None);
        let spec: Limits =
            serde_json::from_value(serde_json::json!({"memory": "64Mi", "processes": 8, "cpu": 0.5})).unwrap();
        let limits = CgroupLimits::for_agent(Some(&spec));
        assert_eq!(limits.memory, Some(64 << 20));
        assert_eq!(limits.processes, Some(8));
        assert_eq!(limits.cpu_quota_us, Some(50_000));
    }

    #[test]
    fn a_service_cgroup_is_never_taken_for_an_agent() {
        let dir = Path::new("/var/lib/m");
        if let Some(v2) = for_service(dir, "web").v2 {
            assert!(v2.ends_with("service.web"), "{}", v2.display());
            assert_eq!(agent_of_path(&v2.to_string_lossy()), None);
        }
    }

    #[test]
    fn each_state_dir_has_its_own_base() {
        assert_ne!(base_name(Path::new("/a")), base_name(Path::new("/b")));
        assert!(base_name(Path::new("/a")).starts_with("mirrorctl."));
        assert_eq!(base_name(Path::new("/a")).len(), "mirrorctl.".len() + 8);
    }
}
