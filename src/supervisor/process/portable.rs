//! The portable mechanism (`portable-kill0`): `kill(pid, 0)` for existence, `getpgid` for the
//! group, `ps` for state and start time (seconds since the epoch), `sysctl` for the boot.
//! Compiled and tested on Linux too.

use std::io;
use std::path::Path;
use std::process::{Command, Stdio};

use chrono::NaiveDate;
use rustix::io::Errno;

use super::identity::{raw_pgid, reap, to_pid, Observed};
use super::ProcessIdentity;

/// `kern.bootsessionuuid` (macOS, one per boot), else `kern.boottime` (seconds part).
pub(super) fn boot_id() -> Option<String> {
    let sysctl = |name: &str| -> Option<String> {
        let program = ["/usr/sbin/sysctl", "/sbin/sysctl"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("sysctl");
        let output = Command::new(program)
            .args(["-n", name])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8(output.stdout).ok()?;
        let text = text.trim();
        (output.status.success() && !text.is_empty()).then(|| text.to_string())
    };
    if let Some(uuid) = sysctl("kern.bootsessionuuid") {
        return Some(uuid);
    }
    // `{ sec = 1712345678, usec = 123456 } Mon Apr  8 ...`: the seconds only (the
    // microseconds have been seen to move with clock adjustments).
    let boottime = sysctl("kern.boottime")?;
    let sec = boottime.split("sec =").nth(1)?.split(',').next()?.trim();
    sec.parse::<u64>().ok().map(|s| format!("boottime-{s}"))
}

/// `ps -o stat=,lstart= -p PID` in the C locale and UTC: the state letter and the start
/// time in seconds since the epoch. `Ok(None)`: no such process. `Err`: ps could not run.
pub(super) fn ps(pid: i32) -> io::Result<Option<(u8, u64)>> {
    let program = ["/bin/ps", "/usr/bin/ps"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("ps");
    let output = Command::new(program)
        .args(["-o", "stat=,lstart=", "-p", &pid.to_string()])
        .env_clear()
        .env("LC_ALL", "C")
        .env("TZ", "UTC")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().find(|l| !l.trim().is_empty());
    let Some(line) = line else { return Ok(None) };
    let mut fields = line.split_whitespace();
    let state = fields.next().and_then(|s| s.bytes().next());
    let start = parse_lstart(&fields.collect::<Vec<_>>().join(" "));
    Ok(state.zip(start))
}

/// `Tue Nov 24 03:35:06 2026` (UTC) to seconds since the epoch.
pub(super) fn parse_lstart(text: &str) -> Option<u64> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let fields: Vec<&str> = text.split_whitespace().collect();
    let [_, month, day, time, year] = fields[..] else {
        return None;
    };
    let month = MONTHS.iter().position(|m| *m == month)? as u32 + 1;
    let day: u32 = day.parse().ok()?;
    let year: i32 = year.parse().ok()?;
    let mut hms = time.split(':').map(|p| p.parse::<u32>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    let started = NaiveDate::from_ymd_opt(year, month, day)?.and_hms_opt(h, m, s)?;
    u64::try_from(started.and_utc().timestamp()).ok()
}

pub(super) fn observe(id: &ProcessIdentity) -> Observed {
    let Some(target) = to_pid(id.pid) else {
        return Observed::Exited { anchor: false };
    };
    if let Err(Errno::SRCH) = rustix::process::test_kill_process(target) {
        return Observed::Exited { anchor: false };
    }
    match raw_pgid(target.as_raw_nonzero().get()) {
        Err(Errno::SRCH) => return Observed::Exited { anchor: false },
        Ok(group) if group != id.pgid => return Observed::Reused,
        _ => {}
    }
    match ps(id.pid) {
        Ok(None) => Observed::Exited { anchor: false },
        Ok(Some((_, start))) if start != id.start_time => Observed::Reused,
        Ok(Some((b'Z', _))) => {
            // `kill(-pgid, 0)` counts zombies, so remaining members cannot be told from the
            // leader's own zombie here: reap it, and leave the group be.
            reap(id);
            Observed::Exited { anchor: false }
        }
        Ok(Some(_)) => Observed::Running { verified: true },
        // ps could not run: alive by kill(pid, 0), but unproven, so never signalled.
        Err(_) => Observed::Running { verified: false },
    }
}
