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

/// Whether a listener bound to `hex` (the address column of `/proc/net/tcp{,6}`) receives
/// connections to `ip`: the same address, or the wildcard of its family.
fn receives(hex: &str, ip: Option<std::net::IpAddr>) -> bool {
    let Some(ip) = ip else { return true };
    let wildcard = hex.bytes().all(|b| b == b'0');
    let bound: Option<std::net::IpAddr> = match hex.len() {
        // One little-endian 32-bit word.
        8 => u32::from_str_radix(hex, 16)
            .ok()
            .map(|v| std::net::Ipv4Addr::from(v.swap_bytes()).into()),
        // Four such words.
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in hex.as_bytes().chunks(8).enumerate() {
                let word = u32::from_str_radix(std::str::from_utf8(chunk).ok().unwrap_or(""), 16).ok();
                let Some(word) = word else { return true };
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word.to_le_bytes());
            }
            Some(std::net::Ipv6Addr::from(bytes).into())
        }
        _ => None,
    };
    let Some(bound) = bound else { return true };
    let same_family = bound.is_ipv4() == ip.is_ipv4();
    let mapped =
        matches!((bound, ip), (std::net::IpAddr::V6(b), std::net::IpAddr::V4(v4)) if b.to_ipv4_mapped() == Some(v4));
    // A v6 wildcard takes v4 connections too (unless IPV6_V6ONLY, which cannot be told here).
    (wildcard && (same_family || bound.is_ipv6())) || bound == ip || mapped
}

/// The inodes of the sockets listening on TCP `port` that receive connections to `ip`, from
/// `/proc/net/tcp`-format `text`.
fn listening_inodes(text: &str, port: u16, ip: Option<std::net::IpAddr>) -> Vec<u64> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1)?;
            let state = fields.get(3)?;
            let (hex_ip, hex_port) = local.rsplit_once(':')?;
            let listening = *state == "0A" && u16::from_str_radix(hex_port, 16).ok()? == port && receives(hex_ip, ip);
            listening.then(|| fields.get(9)?.parse().ok()).flatten()
        })
        .filter(|inode| *inode != 0)
        .collect()
}

/// Whether the listeners on `port` that receive connections to `ip` belong to `service`: its
/// process group or `members` (its cgroup's processes, which may have left the group). None:
/// the Service does not run, so any listener is a stranger.
pub fn check(ip: Option<std::net::IpAddr>, port: u16, service: Option<&ProcessIdentity>, members: &[i32]) -> Ownership {
    #[cfg(target_os = "linux")]
    {
        linux::check(ip, port, service, members)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (ip, port, service, members);
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

    /// Whether `pid` has a descriptor on socket `inode`; None when its descriptors cannot be
    /// read (an undumpable process of our user): then who holds the port cannot be told.
    fn holds(pid: i32, inode: u64) -> Option<bool> {
        let fds = match std::fs::read_dir(format!("/proc/{pid}/fd")) {
            Ok(fds) => fds,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return None,
            Err(_) => return Some(false),
        };
        let wanted = format!("socket:[{inode}]");
        Some(
            fds.flatten()
                .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == wanted.as_str())),
        )
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

    pub fn check(
        ip: Option<std::net::IpAddr>,
        port: u16,
        service: Option<&ProcessIdentity>,
        members: &[i32],
    ) -> Ownership {
        let mut inodes = Vec::new();
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            if let Ok(text) = std::fs::read_to_string(table) {
                inodes.extend(listening_inodes(&text, port, ip));
            }
        }
        if inodes.is_empty() {
            return Ownership::Unknown;
        }
        let all = pids();
        let mut ours: Vec<i32> = match service {
            Some(service) => all.iter().copied().filter(|p| pgid(*p) == Some(service.pgid)).collect(),
            None => Vec::new(),
        };
        if service.is_some() {
            ours.extend_from_slice(members);
        }
        for inode in inodes {
            match ours
                .iter()
                .map(|pid| holds(*pid, inode))
                .try_fold(false, |any, h| Some(any || h?))
            {
                Some(true) => continue,
                None => return Ownership::Unknown,
                Some(false) => {}
            }
            let holder = all
                .iter()
                .copied()
                .find(|pid| holds(*pid, inode) == Some(true))
                .map(|pid| Holder {
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
    fn only_listening_sockets_of_the_port_and_address_count() {
        let loopback = Some("127.0.0.1".parse().unwrap());
        assert_eq!(listening_inodes(TABLE, 8080, loopback), vec![4242]);
        assert_eq!(listening_inodes(TABLE, 8080, None), vec![4242]);
        // Bound to 127.0.0.1: it does not receive what goes to another address.
        assert!(listening_inodes(TABLE, 8080, Some("10.0.0.5".parse().unwrap())).is_empty());
        // The wildcard receives everything of its family.
        assert_eq!(listening_inodes(TABLE, 11486, loopback), vec![4444]);
        assert!(listening_inodes(TABLE, 9, loopback).is_empty());
    }

    #[test]
    fn v6_addresses_are_read_word_by_word() {
        let v6_loopback = "00000000000000000000000001000000";
        assert!(receives(v6_loopback, Some("::1".parse().unwrap())));
        assert!(!receives(v6_loopback, Some("127.0.0.1".parse().unwrap())));
        let v6_any = "00000000000000000000000000000000";
        assert!(receives(v6_any, Some("127.0.0.1".parse().unwrap())));
        assert!(!receives("0100007F", Some("::1".parse().unwrap())));
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
        let ip = Some("127.0.0.1".parse().unwrap());
        assert_eq!(check(ip, port, Some(&ours), &[]), Ownership::Owned);
        let other = ProcessIdentity {
            pgid: i32::MAX - 7,
            ..ours
        };
        // Its cgroup's processes count as the Service's too.
        assert_eq!(check(ip, port, Some(&other), &[me]), Ownership::Owned);
        for service in [Some(&other), None] {
            match check(ip, port, service, &[]) {
                Ownership::Stranger(Some(holder)) => assert_eq!(holder.pid, me),
                other => panic!("{other:?}"),
            }
        }
        drop(listener);
        assert_eq!(check(ip, port, Some(&other), &[]), Ownership::Unknown);
    }
}
