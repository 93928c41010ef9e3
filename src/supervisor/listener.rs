//! Who listens on a TCP port: a provider's answer counts only when the listener belongs to the
//! Service that should serve it. A process that took the port (after killing the Service, or
//! before it started) would otherwise be probed Healthy and receive every agent's prompts.
//!
//! Linux: the listening sockets of the port are read from `/proc/net/tcp` and `/proc/net/tcp6`
//! (their inodes); the Service's processes (its process group, as the supervisor starts every
//! process as a group and session leader) must hold every one of them (`/proc/PID/fd/*` ->
//! `socket:[INODE]`). When one is held by another process, that process is named. Elsewhere
//! (no `/proc`) nothing can be told and every answer counts: advisory.

use serde::Serialize;

use super::process::ProcessIdentity;

/// A process holding a port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Holder {
    pub pid: i32,
    pub command: String,
}

/// Whose listener answered on a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// Every listener on the port belongs to the Service's process group.
    Owned,
    /// A listener belongs to another process (named when it could be found).
    Stranger(Option<Holder>),
    /// Nothing listens on the port in this network namespace, or it cannot be told here.
    Unknown,
}

/// The inodes of the sockets listening on TCP `port`, from `/proc/net/tcp`-format `text`.
fn listening_inodes(text: &str, port: u16) -> Vec<u64> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1)?;
            let state = fields.get(3)?;
            let (_, hex_port) = local.rsplit_once(':')?;
            let listening = *state == "0A" && u16::from_str_radix(hex_port, 16).ok()? == port;
            listening.then(|| fields.get(9)?.parse().ok()).flatten()
        })
        .filter(|inode| *inode != 0)
        .collect()
}

/// Whether the listeners on `port` belong to the process group of `service` (None: the Service
/// does not run, so any listener is a stranger).
pub fn check(port: u16, service: Option<&ProcessIdentity>) -> Ownership {
    #[cfg(target_os = "linux")]
    {
        linux::check(port, service)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (port, service);
        Ownership::Unknown
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use super::*;

    fn pids() -> Vec<i32> {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect()
    }

    /// The process group of `pid` (field 5 of `/proc/PID/stat`).
    fn pgid(pid: i32) -> Option<i32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &stat[stat.rfind(')')? + 2..];
        rest.split(' ').nth(2)?.parse().ok()
    }

    /// Whether `pid` has a descriptor on socket `inode`.
    fn holds(pid: i32, inode: u64) -> bool {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            return false;
        };
        let wanted = format!("socket:[{inode}]");
        fds.flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == wanted.as_str()))
    }

    fn command(pid: i32) -> String {
        let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let text = String::from_utf8_lossy(&raw).replace('\0', " ");
        let text = text.trim();
        if text.is_empty() {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .unwrap_or_default()
                .trim()
                .to_string()
        } else {
            text.chars().take(120).collect()
        }
    }

    pub fn check(port: u16, service: Option<&ProcessIdentity>) -> Ownership {
        let mut inodes = Vec::new();
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            if let Ok(text) = std::fs::read_to_string(table) {
                inodes.extend(listening_inodes(&text, port));
            }
        }
        if inodes.is_empty() {
            return Ownership::Unknown;
        }
        let all = pids();
        let group: Vec<i32> = match service {
            Some(service) => all.iter().copied().filter(|p| pgid(*p) == Some(service.pgid)).collect(),
            None => Vec::new(),
        };
        for inode in inodes {
            if group.iter().any(|pid| holds(*pid, inode)) {
                continue;
            }
            let holder = all.iter().copied().find(|pid| holds(*pid, inode)).map(|pid| Holder {
                pid,
                command: command(pid),
            });
            return Ownership::Stranger(holder);
        }
        Ownership::Owned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 20 4 30 10 -1
   2: 00000000:2CDE 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn only_listening_sockets_of_the_port_count() {
        assert_eq!(listening_inodes(TABLE, 8080), vec![4242]);
        assert_eq!(listening_inodes(TABLE, 11486), vec![4444]);
        assert!(listening_inodes(TABLE, 9).is_empty());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_listener_of_this_process_is_owned_by_its_group_and_a_stranger_to_another() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let me = std::process::id() as i32;
        let own_group = rustix::process::getpgrp().as_raw_nonzero().get();
        let ours = ProcessIdentity {
            pid: me,
            pgid: own_group,
            start_time: 0,
            boot_id: String::new(),
        };
        assert_eq!(check(port, Some(&ours)), Ownership::Owned);
        let other = ProcessIdentity {
            pgid: i32::MAX - 7,
            ..ours
        };
        for service in [Some(&other), None] {
            match check(port, service) {
                Ownership::Stranger(Some(holder)) => assert_eq!(holder.pid, me),
                other => panic!("{other:?}"),
            }
        }
        drop(listener);
        assert_eq!(check(port, Some(&other)), Ownership::Unknown);
    }
}
