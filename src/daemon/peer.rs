//! Who is on the other end of the control socket. The socket answers people (and their
//! scripts), never an agent: an agent that could ask for a reconcile or approve its own gate
//! request would be its own supervisor. The kernel says who connected (`SO_PEERCRED`: pid and
//! uid, unforgeable); this module says whether that process belongs to an agent:
//!
//! - its cgroup is an agent's (`agent.<name>`, see `supervisor::cgroup`): it cannot leave it,
//!   since its sandbox forbids writing to any cgroup's `cgroup.procs`;
//! - or it, an ancestor, its session leader or its group leader carries `MIRROR_AGENT` in its
//!   environment (what every agent is started with; a descendant that cleared its environment
//!   and left its session is found only by its cgroup);
//! - or its environment cannot be read although the daemon may read its own user's processes
//!   (an agent that made itself undumpable to hide).
//!
//! The approver a gate receipt names comes from here too (`user (uid N)`), never from the
//! request.

use std::path::PathBuf;

/// The process that connected, as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub pid: Option<i32>,
    pub uid: u32,
}

impl Peer {
    /// `name (uid N)`: who a decision is recorded as.
    pub fn describe(&self) -> String {
        match user_name(self.uid) {
            Some(name) => format!("{name} (uid {})", self.uid),
            None => format!("uid {}", self.uid),
        }
    }
}

/// Why a peer counts as an agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentPeer {
    /// The agent, when known.
    pub agent: Option<String>,
    pub evidence: String,
}

/// Whether the peer is (part of) an agent, or cannot be told from one (no pid from the kernel,
/// or a process already gone: an agent's child that connected and exited, its parent holding
/// the socket). Call it when the request has arrived: a process that is gone by then is refused.
pub fn agent_of(peer: &Peer) -> Option<AgentPeer> {
    let unknown = |why: String| AgentPeer {
        agent: None,
        evidence: why,
    };
    let Some(pid) = peer.pid.filter(|p| *p > 0) else {
        return Some(unknown("the kernel did not say which process connected".into()));
    };
    let verdict = imp::agent_of(pid, peer.uid);
    if verdict.is_none() && !imp::alive(pid) {
        return Some(unknown(format!(
            "pid {pid}, which connected, is gone: who it was cannot be told"
        )));
    }
    verdict
}

/// The user name of `uid`, from the password database.
pub fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id: u32 = fields.nth(1)?.parse().ok()?;
        (id == uid).then(|| name.to_string())
    })
}

/// The value of `MIRROR_AGENT` in an environment block (NUL-separated `KEY=value`).
fn agent_in_environ(environ: &[u8]) -> Option<String> {
    environ
        .split(|b| *b == 0)
        .find_map(|entry| entry.strip_prefix(b"MIRROR_AGENT="))
        .map(|name| String::from_utf8_lossy(name).into_owned())
}

/// The agent of a cgroup line of `/proc/PID/cgroup` (`ID:CONTROLLERS:PATH`), when PATH ends in
/// an agent's cgroup.
fn agent_in_cgroup(line: &str) -> Option<String> {
    let path = line.splitn(3, ':').nth(2)?;
    crate::supervisor::cgroup::agent_of_path(path)
}

#[cfg(target_os = "linux")]
mod imp {
    use super::*;

    fn proc_file(pid: i32, file: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{pid}/{file}"))
    }

    /// (ppid, pgid, sid) from `/proc/PID/stat`.
    fn family(pid: i32) -> Option<(i32, i32, i32)> {
        let stat = std::fs::read_to_string(proc_file(pid, "stat")).ok()?;
        // The command may hold spaces and parentheses: the fields start after the last ')'.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        Some((
            fields.get(1)?.parse().ok()?,
            fields.get(2)?.parse().ok()?,
            fields.get(3)?.parse().ok()?,
        ))
    }

    /// Whether `pid` still runs (not a zombie).
    pub fn alive(pid: i32) -> bool {
        std::fs::read_to_string(proc_file(pid, "stat")).is_ok_and(|stat| {
            stat.rfind(')')
                .and_then(|i| stat.get(i + 2..i + 3))
                .is_some_and(|state| state != "Z" && state != "X")
        })
    }

    pub fn agent_of(pid: i32, uid: u32) -> Option<AgentPeer> {
        if let Ok(cgroups) = std::fs::read_to_string(proc_file(pid, "cgroup")) {
            if let Some(agent) = cgroups.lines().find_map(agent_in_cgroup) {
                return Some(AgentPeer {
                    evidence: format!("pid {pid} is in agent {agent}'s cgroup"),
                    agent: Some(agent),
                });
            }
        }
        match std::fs::read(proc_file(pid, "environ")) {
            Ok(environ) => {
                if let Some(agent) = agent_in_environ(&environ) {
                    return Some(AgentPeer {
                        evidence: format!("pid {pid} runs with MIRROR_AGENT={agent}"),
                        agent: Some(agent),
                    });
                }
            }
            // Only a process of the daemon's own user can hide from it this way (a person's
            // `sudo mirrorctl` runs as another user, whose environment is simply not ours to read).
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && uid == rustix::process::getuid().as_raw() => {
                return Some(AgentPeer {
                    agent: None,
                    evidence: format!("pid {pid} hides its environment from the daemon"),
                })
            }
            Err(_) => {}
        }
        let (_, pgid, sid) = family(pid)?;
        let mut relatives = vec![sid, pgid];
        let mut current = pid;
        for _ in 0..64 {
            let Some((parent, _, _)) = family(current) else { break };
            if parent <= 1 {
                break;
            }
            relatives.push(parent);
            current = parent;
        }
        relatives
            .into_iter()
            .filter(|p| *p > 1 && *p != pid)
            .find_map(|relative| {
                let environ = std::fs::read(proc_file(relative, "environ")).ok()?;
                let agent = agent_in_environ(&environ)?;
                Some(AgentPeer {
                    evidence: format!("pid {pid} descends from pid {relative} of agent {agent}"),
                    agent: Some(agent),
                })
            })
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::*;

    /// Without `/proc` only the peer's uid is known: the check is advisory there.
    pub fn agent_of(_pid: i32, _uid: u32) -> Option<AgentPeer> {
        None
    }

    pub fn alive(_pid: i32) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_is_read_from_an_environment_block() {
        assert_eq!(
            agent_in_environ(b"PATH=/bin\0MIRROR_AGENT=scribe\0HOME=/root\0"),
            Some("scribe".to_string())
        );
        assert_eq!(agent_in_environ(b"XMIRROR_AGENT=x\0PATH=/bin\0"), None);
        assert_eq!(agent_in_environ(b""), None);
    }

    #[test]
    fn the_agent_is_read_from_a_cgroup_line() {
        assert_eq!(
            agent_in_cgroup("0::/mirrorctl.1a2b3c4d/agent.scribe"),
            Some("scribe".to_string())
        );
        assert_eq!(
            agent_in_cgroup("4:memory:/process_api/x/mirrorctl.1a2b3c4d/agent.scribe"),
            Some("scribe".to_string())
        );
        assert_eq!(agent_in_cgroup("0::/user.slice/session-1.scope"), None);
        assert_eq!(agent_in_cgroup("0::/mirrorctl.1a2b3c4d/service.web"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_test_is_a_person() {
        let peer = Peer {
            pid: Some(std::process::id() as i32),
            uid: rustix::process::getuid().as_raw(),
        };
        // The test runner is not an agent (unless a test runs inside one, which none does).
        if std::env::var_os("MIRROR_AGENT").is_none() {
            assert_eq!(agent_of(&peer), None);
        }
        // A peer the kernel could not name, or one that is gone, is refused.
        assert!(agent_of(&Peer { pid: None, uid: 0 }).is_some());
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id() as i32;
        child.wait().unwrap();
        let refused = agent_of(&Peer {
            pid: Some(gone),
            uid: 0,
        })
        .unwrap();
        assert!(refused.evidence.contains("is gone"), "{refused:?}");
        assert!(peer.describe().contains(&format!("uid {}", peer.uid)));
    }
}
