//! The daemon, `mirrorctl run` (the real release binary), against supervisord 4.3 (the peer),
//! side by side in one run. Targets (the daemon issue):
//!
//! - kill -9 of a supervised process -> its replacement exists: p50 at most 10 ms;
//! - git commit -> the new service running: p50 at most 300 ms;
//! - idle with 50 services: RSS at most 15 MiB, CPU at most 0.1 % of one core;
//! - 1,000 services: all started within 3 s of the daemon starting, RSS at most 50 MiB.
//!
//! Run: `cargo bench --bench daemon` (about 3 minutes); `-- --quick` for fewer rounds and a
//! shorter idle window.
//!
//! How each is measured (ours and the peer the same way, from outside, through `/proc`):
//!
//! - "A process exists": a child of the daemon (or of supervisord) whose argv is the service's
//!   (`sleep 300.<i>`, a unique marker per service), i.e. forked and exec'd. The observer reads
//!   `/proc/<parent>/task/*/children` and the argv of pids it has not seen before, every 0.2 ms;
//!   one scan costs tens of microseconds (printed), so it adds well under 1 ms.
//! - Restart: 50 services `sleep 300.<i>`; each round SIGKILLs a different one (the daemon's
//!   backoff restarts a first crash at once; a second crash of the same service within a minute
//!   would wait out the backoff, which is not what is measured). The clock runs from kill(2)
//!   returning to the replacement existing. Rounds are spaced by a varying pause, so kills do not
//!   line up with either daemon's periodic timers.
//! - Commit: each round commits (git2, in-process) a file with one new Service `sleep 301.<r>`;
//!   the clock runs from the commit call returning to the new process existing. The peer has no
//!   git: its nearest equivalent is writing a new `[program:x]` file into an `[include]`d
//!   directory, then `supervisorctl reread` and `supervisorctl update`; the clock runs from the
//!   file written to the process existing.
//! - Idle: three daemons side by side, each supervising 50 `sleep` services: ours without probes,
//!   ours with an HTTP probe every 10 s on every service (answered by a tiny responder thread of
//!   this benchmark), and supervisord. After a settle time, VmRSS (/proc/<pid>/status, the
//!   largest of one sample per second) and utime+stime (/proc/<pid>/stat, all threads, also
//!   those that ended) over the window. Only the daemon process itself is measured.
//! - 1,000 services: the clock runs from spawning the daemon to 1,000 `sleep` children existing;
//!   RSS is read 2 s after the daemon logged the end of its startup pass. The peer: from
//!   spawning `supervisord -n` to 1,000 children, RSS 2 s later.
//!
//! The daemon's own JSON log (`--log-format json`) gives the breakdown: when the exit was noticed
//! (the `service ended` line), and each pass's `took_ms`; supervisord's log gives when it noticed
//! the exit and when it spawned the replacement.
//!
//! Cleanup: the benchmark makes itself a child subreaper, runs each daemon in a process group of
//! its own (a Ctrl-C reaches only the benchmark, which then cleans up), and a guard (also run on
//! panic and on SIGINT/SIGTERM/SIGHUP) sends SIGTERM to each `mirrorctl run` (SIGKILL after 5 s),
//! SIGKILL to supervisord, then `kill -9 -- -PGID` to every service either started (checked
//! against its start time first), sweeps any leftover child, and reaps them all. Every run has its
//! own temp repository and state dir.

// A measurement or test harness: raw signals and process calls (each block says why it is sound).
#![allow(unsafe_code)]

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::TimeZone;
use git2::{Repository, RepositoryInitOptions, Signature};
use serde_json::Value;

#[path = "common/results.rs"]
mod results;
use results::Measure;

const SERVICES: usize = 50;
const LARGE: usize = 1000;
const PEER_VERSION: &str = "4.3.0";

const RESTART_TARGET: Duration = Duration::from_millis(10);
const COMMIT_TARGET: Duration = Duration::from_millis(300);
const IDLE_RSS_TARGET_KIB: u64 = 15 * 1024;
const IDLE_CPU_TARGET_PCT: f64 = 0.1;
const LARGE_START_TARGET: Duration = Duration::from_secs(3);
const LARGE_RSS_TARGET_KIB: u64 = 50 * 1024;

/// Pause between two scans of the process table while waiting for a process.
const SCAN_PAUSE: Duration = Duration::from_micros(200);
/// Longest wait for one replacement or new service before the round counts as missed.
const WAIT_LIMIT: Duration = Duration::from_secs(10);
/// Longest wait for all services of a start.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the HTTP-probe variant's probes wait between checks.
const PROBE_INTERVAL: &str = "10s";

struct Rounds {
    kills: usize,
    peer_kills: usize,
    commits: usize,
    peer_commits: usize,
    idle: Duration,
    settle: Duration,
    large_kills: usize,
}

// ---------------------------------------------------------------------------------------------
// Interruption

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT, SIGTERM and SIGHUP set a flag; the next [`pause`] panics, so the guard cleans up.
fn catch_signals() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(signal, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t);
        }
    }
}

/// Sleeps, unless the benchmark was interrupted: then it unwinds (the guard stops everything).
fn pause(d: Duration) {
    if INTERRUPTED.load(Ordering::SeqCst) {
        panic!("interrupted: stopping every process this benchmark started");
    }
    std::thread::sleep(d);
}

// ---------------------------------------------------------------------------------------------
// Processes

/// A process this benchmark is responsible for, with what makes sure it is still the same one.
#[derive(Clone, Copy, Debug)]
struct Tracked {
    pid: i32,
    pgid: i32,
    start_time: u64,
}

/// The fields of `/proc/<pid>/stat` after the command name.
fn stat_fields(pid: i32) -> Option<(String, Vec<String>)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_string();
    let fields = text[close + 1..].split_whitespace().map(str::to_string).collect();
    Some((comm, fields))
}

/// What `/proc/<pid>/stat` says: (command name, state, parent, process group, start time).
fn stat(pid: i32) -> Option<(String, u8, i32, i32, u64)> {
    let (comm, fields) = stat_fields(pid)?;
    // After the name: state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt
    // utime stime cutime cstime priority nice num_threads itrealvalue starttime.
    Some((
        comm,
        *fields.first()?.as_bytes().first()?,
        fields.get(1)?.parse().ok()?,
        fields.get(2)?.parse().ok()?,
        fields.get(19)?.parse().ok()?,
    ))
}

/// utime + stime of the whole process (every thread, also ended ones), in clock ticks.
fn cpu_ticks(pid: i32) -> Option<u64> {
    let (_, fields) = stat_fields(pid)?;
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// A `kB` line of `/proc/<pid>/status` (`VmRSS`, `VmHWM`, `RssAnon`, `RssFile`), in KiB.
fn status_kib(pid: i32, key: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

fn open_fds(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn threads(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

/// Summed over the live threads of `pid` (`/proc/<pid>/task/*/schedstat`): (time on a CPU,
/// time runnable but waiting for a CPU), in ns.
fn sched(pid: i32) -> (u64, u64) {
    let mut total = (0, 0);
    for task in fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(text) = fs::read_to_string(task.path().join("schedstat")) {
            let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().unwrap_or(0));
            total.0 += fields.next().unwrap_or(0);
            total.1 += fields.next().unwrap_or(0);
        }
    }
    total
}

/// `/proc/stat`'s first line: (busy, total) jiffies of all CPUs.
fn machine_jiffies() -> (u64, u64) {
    let text = fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// How busy all CPUs were since `before` (from `machine_jiffies`), in %.
fn busy_since(before: (u64, u64)) -> f64 {
    let after = machine_jiffies();
    let total = after.1.saturating_sub(before.1).max(1);
    after.0.saturating_sub(before.0) as f64 / total as f64 * 100.0
}

/// The argv of a process (empty for a zombie or a kernel thread).
fn argv(pid: i32) -> Option<Vec<String>> {
    let bytes = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        bytes
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// Whether `pid` runs `want` (argv[0] compared by its file name: supervisord execs a full path).
fn runs(pid: i32, want: &[String]) -> bool {
    let Some(have) = argv(pid) else { return false };
    have.len() == want.len()
        && Path::new(&have[0]).file_name() == Path::new(&want[0]).file_name()
        && have[1..] == want[1..]
}

/// `kill -9 -- -PGID` when the leader is still the process recorded (same start time, same
/// group); a plain `kill -9 PID` when it is not a group leader. Returns whether it signalled.
fn kill_tracked(t: &Tracked) -> bool {
    match stat(t.pid) {
        Some((_, _, _, pgrp, start)) if start == t.start_time => {
            let target = if pgrp == t.pgid && t.pgid == t.pid && t.pgid > 1 {
                -t.pgid
            } else {
                t.pid
            };
            // SAFETY: kill has no memory effects; the target was checked above.
            unsafe { libc::kill(target, libc::SIGKILL) == 0 }
        }
        _ => false,
    }
}

/// Reaps the given pids where they are our children (we are their subreaper); gives up on each
/// after a short wait (a pid that is not our child answers ECHILD at once).
fn reap(pids: &[i32]) {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut left: Vec<i32> = pids.to_vec();
    while !left.is_empty() && Instant::now() < deadline {
        left.retain(|&pid| {
            let mut status = 0;
            // SAFETY: waitpid only writes the status it is given.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            r == 0
        });
        if !left.is_empty() {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// The children of `pid` (from the kernel's per-task lists, else by scanning /proc).
fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut lists = 0;
    match fs::read_dir(format!("/proc/{pid}/task")) {
        Ok(tasks) => {
            for task in tasks.flatten() {
                if let Ok(text) = fs::read_to_string(task.path().join("children")) {
                    lists += 1;
                    out.extend(text.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
                }
            }
        }
        Err(_) => return out,
    }
    if lists == 0 {
        // No CONFIG_PROC_CHILDREN: scan the process table.
        for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
            if let Some(p) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) {
                if matches!(stat(p), Some((_, _, ppid, ..)) if ppid == pid) {
                    out.push(p);
                }
            }
        }
    }
    out
}

fn tracked_children(pid: i32) -> Vec<Tracked> {
    children_of(pid)
        .into_iter()
        .filter_map(|kid| {
            let (_, _, _, pgid, start_time) = stat(kid)?;
            Some(Tracked {
                pid: kid,
                pgid,
                start_time,
            })
        })
        .collect()
}

/// The processes a state dir's `inventory.json` records.
fn inventory_processes(state_dir: &Path) -> Vec<Tracked> {
    let Ok(bytes) = fs::read(state_dir.join("inventory.json")) else {
        return Vec::new();
    };
    let Ok(Value::Array(entries)) = serde_json::from_slice::<Value>(&bytes) else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|e| {
            let process = match e.get("process")? {
                Value::String(s) => serde_json::from_str::<Value>(s).ok()?,
                v @ Value::Object(_) => v.clone(),
                _ => return None,
            };
            let pid = process.get("pid")?.as_i64()? as i32;
            Some(Tracked {
                pid,
                pgid: process.get("pgid").and_then(Value::as_i64).map_or(pid, |g| g as i32),
                start_time: process.get("start_time")?.as_u64()?,
            })
        })
        .collect()
}

/// Everything this benchmark started, stopped on `stop_all` and on drop (also when unwinding).
#[derive(Default)]
struct Guard {
    /// `mirrorctl run`, with its state dir: SIGTERM first.
    daemons: Vec<(Child, PathBuf)>,
    /// supervisord: SIGKILL (it would otherwise stop, or restart, its programs one by one).
    peers: Vec<Child>,
    tracked: Vec<Tracked>,
}

impl Guard {
    /// Whether the daemon or peer with this pid has exited (and how).
    fn exited(&mut self, pid: i32) -> Option<ExitStatus> {
        let child = self
            .daemons
            .iter_mut()
            .map(|(c, _)| c)
            .chain(self.peers.iter_mut())
            .find(|c| c.id() as i32 == pid)?;
        child.try_wait().ok().flatten()
    }

    /// SIGTERM (SIGKILL after 5 s), then the services it ran, by process group.
    fn terminate_daemon(mut child: Child, state_dir: &Path, signalled: &mut Vec<i32>) {
        let pid = child.id() as i32;
        let mut services = tracked_children(pid);
        if child.try_wait().ok().flatten().is_none() {
            // SAFETY: kill has no memory effects; the child is ours and not yet reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if child.try_wait().ok().flatten().is_none() {
                eprintln!("cleanup: mirrorctl run (pid {pid}) ignored SIGTERM for 5 s; SIGKILL");
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        services.extend(inventory_processes(state_dir));
        for t in services {
            if kill_tracked(&t) {
                signalled.push(t.pid);
            }
        }
    }

    /// Stops one daemon (and its services) now.
    fn stop_daemon(&mut self, pid: i32) {
        if let Some(at) = self.daemons.iter().position(|(c, _)| c.id() as i32 == pid) {
            let (child, dir) = self.daemons.remove(at);
            let mut signalled = Vec::new();
            Self::terminate_daemon(child, &dir, &mut signalled);
            reap(&signalled);
        }
    }

    fn stop_all(&mut self) -> usize {
        let mut signalled = Vec::new();
        for (child, dir) in std::mem::take(&mut self.daemons) {
            Self::terminate_daemon(child, &dir, &mut signalled);
        }
        for mut child in self.peers.drain(..) {
            let programs = tracked_children(child.id() as i32);
            let _ = child.kill();
            let _ = child.wait();
            for t in programs {
                if kill_tracked(&t) {
                    signalled.push(t.pid);
                }
            }
        }
        for t in self.tracked.drain(..) {
            if kill_tracked(&t) {
                signalled.push(t.pid);
            }
        }
        // Whatever is left among our children (orphans reparented to us, the subreaper).
        // SAFETY: getpid has no preconditions.
        let own = unsafe { libc::getpid() };
        let mut leftovers = 0;
        for t in tracked_children(own) {
            if signalled.contains(&t.pid) {
                continue;
            }
            if matches!(stat(t.pid), Some((_, state, ..)) if state != b'Z') {
                leftovers += 1;
                kill_tracked(&t);
            }
            signalled.push(t.pid);
        }
        reap(&signalled);
        leftovers
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let leftovers = self.stop_all();
        if leftovers > 0 {
            eprintln!("cleanup: killed {leftovers} leftover process(es) found among our children");
        }
    }
}

/// Waits until `n` children of `parent` run `sleep` (exec done, not a zombie); the time from
/// `since`. Fails when the parent exits first or after [`START_TIMEOUT`].
fn wait_children(guard: &mut Guard, parent: i32, n: usize, since: Instant, poll: Duration) -> Result<Duration, String> {
    let mut known: HashSet<i32> = HashSet::new();
    loop {
        for kid in children_of(parent) {
            if known.contains(&kid) {
                continue;
            }
            if matches!(stat(kid), Some((comm, state, ..)) if comm == "sleep" && state != b'Z' && state != b'X') {
                known.insert(kid);
            }
        }
        if known.len() >= n {
            return Ok(since.elapsed());
        }
        if let Some(status) = guard.exited(parent) {
            return Err(format!(
                "pid {parent} exited ({status}) with {} of {n} services running",
                known.len()
            ));
        }
        if since.elapsed() > START_TIMEOUT {
            return Err(format!(
                "only {} of {n} services running after {START_TIMEOUT:?}",
                known.len()
            ));
        }
        pause(poll);
    }
}

/// How long one look for a new process takes, summed over a wait.
#[derive(Default, Clone, Copy)]
struct ScanCost {
    scans: u32,
    total: Duration,
}

impl ScanCost {
    fn add(&mut self, other: ScanCost) {
        self.scans += other.scans;
        self.total += other.total;
    }
    fn mean_us(&self) -> f64 {
        self.total.as_secs_f64() * 1e6 / f64::from(self.scans.max(1))
    }
}

/// Polls every [`SCAN_PAUSE`] until a child of `parent` that is not in `skip` runs `want`;
/// returns the time from `since` to that scan (None after [`WAIT_LIMIT`]).
fn wait_new_child(
    parent: i32,
    want: &[String],
    skip: &HashSet<i32>,
    since: Instant,
) -> (Option<(Duration, i32)>, ScanCost) {
    let mut cost = ScanCost::default();
    loop {
        let scan = Instant::now();
        let found = children_of(parent)
            .into_iter()
            .find(|kid| !skip.contains(kid) && runs(*kid, want));
        cost.scans += 1;
        cost.total += scan.elapsed();
        if let Some(pid) = found {
            return (Some((since.elapsed(), pid)), cost);
        }
        if since.elapsed() > WAIT_LIMIT {
            return (None, cost);
        }
        pause(SCAN_PAUSE);
    }
}

// ---------------------------------------------------------------------------------------------
// The machine

fn raise_limits(services: usize) -> String {
    let mut notes = Vec::new();
    // SAFETY: getrlimit/setrlimit only read and write the struct given.
    unsafe {
        let mut files: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut files);
        // The daemon keeps a pidfd per service; supervisord ~4 descriptors per program.
        let want = (8 * services as u64 + 1024).min(files.rlim_max);
        if files.rlim_cur < want {
            let old = files.rlim_cur;
            files.rlim_cur = want;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &files) == 0 {
                notes.push(format!(
                    "RLIMIT_NOFILE raised {old} -> {want} (hard {})",
                    files.rlim_max
                ));
            } else {
                notes.push(format!("RLIMIT_NOFILE {old}: could not raise it to {want}"));
            }
        } else {
            notes.push(format!("RLIMIT_NOFILE {} (enough)", files.rlim_cur));
        }
        let mut procs: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NPROC, &mut procs);
        if procs.rlim_cur == libc::RLIM_INFINITY {
            notes.push("ulimit -u unlimited".into());
        } else {
            notes.push(format!("ulimit -u {}", procs.rlim_cur));
        }
    }
    notes.join(", ")
}

/// `/proc/loadavg`'s 1, 5 and 15 minute averages (other work on the machine skews the times).
fn load_average() -> String {
    let text = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split(':').nth(1)))
        .map_or("unknown CPU".to_string(), |m| m.trim().to_string());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let memory = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
        .map_or("?".into(), |kib| format!("{:.0} GiB", kib as f64 / 1024.0 / 1024.0));
    format!(
        "machine: nproc {cores}, {model}, {memory} RAM, Linux {}; load average {}",
        kernel.trim(),
        load_average()
    )
}

fn epoch_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as i64
}

// ---------------------------------------------------------------------------------------------
// Ours

fn service(name: &str, seconds: &str, probe_port: Option<u16>) -> String {
    let mut text = format!(
        "apiVersion: mirror.os/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  command: [\"sleep\", \"{seconds}\"]\n"
    );
    if let Some(port) = probe_port {
        text.push_str(&format!(
            "  health: {{http: {{url: \"http://127.0.0.1:{port}/healthz\"}}, interval: {PROBE_INTERVAL}}}\n"
        ));
    }
    text
}

fn sleep_argv(seconds: &str) -> Vec<String> {
    vec!["sleep".into(), seconds.into()]
}

/// A committed desired state of `n` Services `svc-<i>`: `sleep 300.<i>`, 100 per file.
fn generate(dir: &Path, n: usize, probe_port: Option<u16>) {
    let mut options = RepositoryInitOptions::new();
    options.initial_head("main");
    let repo = Repository::init_opts(dir, &options).unwrap();
    let mut index = repo.index().unwrap();
    for (f, chunk) in (0..n).collect::<Vec<_>>().chunks(100).enumerate() {
        let text: Vec<String> = chunk
            .iter()
            .map(|&i| service(&format!("svc-{i}"), &format!("300.{i}"), probe_port))
            .collect();
        let relative = format!("desired/services-{f:02}.yaml");
        let full = dir.join(&relative);
        fs::create_dir_all(full.parent().unwrap()).unwrap();
        fs::write(&full, text.join("---\n")).unwrap();
        index.add_path(Path::new(&relative)).unwrap();
    }
    index.write().unwrap();
    let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
    let signature = Signature::now("bench", "bench@localhost").unwrap();
    repo.commit(Some("HEAD"), &signature, &signature, "bench", &tree, &[])
        .unwrap();
}

/// Writes `relative` with `text`, stages it and commits on HEAD. Returns how long the
/// `commit` call itself took (objects, ref and reflog written) and when it returned.
fn commit_file(dir: &Path, relative: &str, text: &str) -> (Duration, Instant, i64) {
    let full = dir.join(relative);
    fs::create_dir_all(full.parent().unwrap()).unwrap();
    fs::write(&full, text).unwrap();
    let repo = Repository::open(dir).unwrap();
    let mut index = repo.index().unwrap();
    index.add_path(Path::new(relative)).unwrap();
    index.write().unwrap();
    let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
    let signature = Signature::now("bench", "bench@localhost").unwrap();
    let parent = repo.head().unwrap().peel_to_commit().unwrap();
    let begun = Instant::now();
    repo.commit(Some("HEAD"), &signature, &signature, relative, &tree, &[&parent])
        .unwrap();
    (begun.elapsed(), Instant::now(), epoch_us())
}

/// A running `mirrorctl run`.
struct Daemon {
    pid: i32,
    repo: PathBuf,
    state_dir: PathBuf,
    log: PathBuf,
    spawned: Instant,
}

fn start_daemon(guard: &mut Guard, repo: &Path, state_dir: &Path) -> Daemon {
    let log = state_dir.with_extension("log");
    let mut command = Command::new(env!("CARGO_BIN_EXE_mirrorctl"));
    command
        .arg("run")
        .arg("--repo")
        .arg(repo)
        .arg("--state-dir")
        .arg(state_dir)
        .args(["--log-format", "json"]);
    for (key, _) in std::env::vars_os() {
        let key_text = key.to_string_lossy();
        if key_text.starts_with("MIRROR_") || key_text == "RUST_LOG" {
            command.env_remove(key);
        }
    }
    command
        .env("MIRROR_LOG", "info")
        .stdin(Stdio::null())
        .stdout(File::create(state_dir.with_extension("out")).unwrap())
        .stderr(File::create(&log).unwrap())
        .process_group(0);
    let spawned = Instant::now();
    let child = command.spawn().expect("spawning mirrorctl run");
    let pid = child.id() as i32;
    guard.daemons.push((child, state_dir.to_path_buf()));
    Daemon {
        pid,
        repo: repo.to_path_buf(),
        state_dir: state_dir.to_path_buf(),
        log,
        spawned,
    }
}

/// One line of the daemon's JSON log.
struct LogLine {
    at_us: i64,
    message: String,
    fields: Value,
}

impl LogLine {
    fn field(&self, key: &str) -> Option<&str> {
        self.fields.get(key)?.as_str()
    }
}

fn read_log(path: &Path) -> Vec<LogLine> {
    let text = fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let value: Value = serde_json::from_str(line).ok()?;
            let at = chrono::DateTime::parse_from_rfc3339(value.get("timestamp")?.as_str()?).ok()?;
            let fields = value.get("fields")?.clone();
            Some(LogLine {
                at_us: at.timestamp_micros(),
                message: fields.get("message")?.as_str()?.to_string(),
                fields,
            })
        })
        .collect()
}

/// The daemon's `pass` lines with this trigger: (logged at, took_ms).
fn passes(lines: &[LogLine], trigger: &str) -> Vec<(i64, u64)> {
    lines
        .iter()
        .filter(|l| l.message == "pass" && l.field("trigger") == Some(trigger))
        .map(|l| (l.at_us, l.fields.get("took_ms").and_then(Value::as_u64).unwrap_or(0)))
        .collect()
}

/// Waits until the daemon logged at least `n` passes with `trigger`; returns them.
fn wait_passes(daemon: &Daemon, trigger: &str, n: usize, limit: Duration) -> Vec<(i64, u64)> {
    let begun = Instant::now();
    loop {
        let found = passes(&read_log(&daemon.log), trigger);
        if found.len() >= n || begun.elapsed() > limit {
            return found;
        }
        pause(Duration::from_millis(2));
    }
}

/// `mirrorctl status --output json`, answered by the daemon over its socket.
fn status_json(daemon: &Daemon) -> Result<(Value, Duration), String> {
    let begun = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_mirrorctl"))
        .arg("status")
        .arg("--repo")
        .arg(&daemon.repo)
        .arg("--state-dir")
        .arg(&daemon.state_dir)
        .args(["--output", "json"])
        .env_remove("MIRROR_STATE_DIR")
        .output()
        .map_err(|e| format!("mirrorctl status: {e}"))?;
    let took = begun.elapsed();
    let value: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "mirrorctl status --output json ({}): {e}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok((value, took))
}

/// What `status` says: (resources, synced, restarted at least once, answered by a daemon).
fn status_summary(value: &Value) -> (usize, usize, usize, bool) {
    let resources = value
        .get("resources")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let synced = resources
        .iter()
        .filter(|r| r.get("sync").and_then(Value::as_str) == Some("Synced"))
        .count();
    let restarted = resources
        .iter()
        .filter(|r| r.get("restarts").and_then(Value::as_u64).unwrap_or(0) > 0)
        .count();
    (
        resources.len(),
        synced,
        restarted,
        value.get("daemon").is_some_and(|d| !d.is_null()),
    )
}

// ---------------------------------------------------------------------------------------------
// The peer

struct Peer {
    supervisord: PathBuf,
    supervisorctl: PathBuf,
}

fn tail(text: &[u8]) -> String {
    let text = String::from_utf8_lossy(text);
    let lines: Vec<&str> = text.lines().rev().take(3).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

fn peer_version(bin: &Path) -> Option<String> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// supervisord 4.3 from `<target dir>/supervisord-venv` (shared with the reconcile benchmark),
/// installed there when missing.
fn ensure_peer() -> Result<Peer, String> {
    let target = Path::new(env!("CARGO_BIN_EXE_mirrorctl"))
        .parent()
        .and_then(Path::parent)
        .map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("target"),
            Path::to_path_buf,
        );
    let venv = target.join("supervisord-venv");
    let bin = venv.join("bin");
    let peer = Peer {
        supervisord: bin.join("supervisord"),
        supervisorctl: bin.join("supervisorctl"),
    };
    if peer_version(&peer.supervisord).as_deref() == Some(PEER_VERSION) {
        return Ok(peer);
    }
    eprintln!(
        "installing the peer: supervisor=={PEER_VERSION} into {}",
        venv.display()
    );
    if !bin.join("pip").exists() {
        let out = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .output()
            .map_err(|e| format!("python3 -m venv: {e}"))?;
        if !out.status.success() {
            return Err(format!("python3 -m venv failed: {}", tail(&out.stderr)));
        }
    }
    let out = Command::new(bin.join("pip"))
        .args(["install", "--quiet", &format!("supervisor=={PEER_VERSION}")])
        .output()
        .map_err(|e| format!("pip install: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "pip install supervisor=={PEER_VERSION} failed: {}",
            tail(&out.stderr)
        ));
    }
    match peer_version(&peer.supervisord) {
        Some(v) if v == PEER_VERSION => Ok(peer),
        other => Err(format!("supervisord --version says {other:?}, not {PEER_VERSION}")),
    }
}

fn program(name: &str, seconds: &str, d: &str) -> String {
    format!(
        "\n[program:{name}]\ncommand=sleep {seconds}\nautostart=true\nstartsecs=0\nautorestart=true\nredirect_stderr=true\nstdout_logfile={d}/logs/{name}.log\n"
    )
}

/// A supervisord.conf with `n` programs `svc-<i>` (`sleep 300.<i>`) and `conf.d/*.conf`
/// included.
fn peer_conf(dir: &Path, n: usize) -> PathBuf {
    fs::create_dir_all(dir.join("logs")).unwrap();
    fs::create_dir_all(dir.join("conf.d")).unwrap();
    let d = dir.display().to_string();
    let mut conf = format!(
        "[supervisord]\nnodaemon=true\nlogfile={d}/supervisord.log\npidfile={d}/supervisord.pid\nchildlogdir={d}/logs\nminfds={}\nminprocs={}\n\n[unix_http_server]\nfile={d}/supervisor.sock\n\n[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n[supervisorctl]\nserverurl=unix://{d}/supervisor.sock\n\n[include]\nfiles = {d}/conf.d/*.conf\n",
        (8 * n + 1024).max(1024),
        (n + 200).max(200)
    );
    for i in 0..n {
        conf.push_str(&program(&format!("svc-{i}"), &format!("300.{i}"), &d));
    }
    let path = dir.join("supervisord.conf");
    fs::write(&path, conf).unwrap();
    path
}

struct PeerRun {
    pid: i32,
    dir: PathBuf,
    conf: PathBuf,
    /// Spawn to all `n` programs existing.
    all_exist: Duration,
}

/// Starts `supervisord -n` with `n` programs and waits until all exist. Left running.
fn start_peer(guard: &mut Guard, peer: &Peer, dir: &Path, n: usize) -> Result<PeerRun, String> {
    let conf = peer_conf(dir, n);
    let out = File::create(dir.join("supervisord.out")).unwrap();
    let spawned = Instant::now();
    let child = Command::new(&peer.supervisord)
        .args(["-n", "-c"])
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("supervisord: {e}"))?;
    let pid = child.id() as i32;
    guard.peers.push(child);
    let poll = Duration::from_millis(if n <= 100 { 1 } else { 5 });
    let all_exist = wait_children(guard, pid, n, spawned, poll).map_err(|e| {
        let log = fs::read(dir.join("supervisord.out")).unwrap_or_default();
        format!("supervisord: {e}: {}", tail(&log))
    })?;
    Ok(PeerRun {
        pid,
        dir: dir.to_path_buf(),
        conf,
        all_exist,
    })
}

/// A supervisord log line's time (`2026-11-24 04:00:56,632 INFO ...`, local time) in µs.
fn peer_log_us(line: &str) -> Option<i64> {
    let stamp = line.get(..23)?;
    let naive = chrono::NaiveDateTime::parse_from_str(stamp, "%Y-%m-%d %H:%M:%S,%3f").ok()?;
    Some(chrono::Local.from_local_datetime(&naive).single()?.timestamp_micros())
}

/// The first supervisord log line at or after `after_us` that contains `needle`: its time.
fn peer_log_after(log: &str, needle: &str, after_us: i64) -> Option<i64> {
    log.lines()
        .filter(|l| l.contains(needle))
        .filter_map(peer_log_us)
        // The log has millisecond stamps: allow the truncation.
        .find(|&t| t + 1000 >= after_us)
}

// ---------------------------------------------------------------------------------------------
// The measurements

/// One kill -9 and the replacement.
struct Kill {
    service: usize,
    at_us: i64,
    latency: Option<Duration>,
    /// The supervisor's threads, from just before the kill to the replacement seen: time on a
    /// CPU and time waiting for one (ns).
    cpu_ns: u64,
    wait_ns: u64,
}

/// Kills `svc-<i>` for each of `services`, one at a time, and waits for its replacement.
fn kill_series(parent: i32, services: &[usize]) -> Result<(Vec<Kill>, ScanCost), String> {
    let mut kills = Vec::new();
    let mut cost = ScanCost::default();
    for (round, &i) in services.iter().enumerate() {
        let want = sleep_argv(&format!("300.{i}"));
        let before = children_of(parent);
        let Some(old) = before.iter().copied().find(|&p| runs(p, &want)) else {
            return Err(format!("svc-{i} (`sleep 300.{i}`) is not running under pid {parent}"));
        };
        let skip: HashSet<i32> = before.into_iter().collect();
        let sched_before = sched(parent);
        // SAFETY: kill has no memory effects; `old` is a live child of the supervisor measured.
        if unsafe { libc::kill(old, libc::SIGKILL) } != 0 {
            return Err(format!("kill -9 {old}: {}", std::io::Error::last_os_error()));
        }
        let killed = Instant::now();
        let at_us = epoch_us();
        let (found, scans) = wait_new_child(parent, &want, &skip, killed);
        let sched_after = sched(parent);
        cost.add(scans);
        kills.push(Kill {
            service: i,
            at_us,
            latency: found.map(|(d, _)| d),
            cpu_ns: sched_after.0.saturating_sub(sched_before.0),
            wait_ns: sched_after.1.saturating_sub(sched_before.1),
        });
        // A varying pause, so kills fall at every phase of the supervisors' periodic timers.
        pause(Duration::from_millis(60 + (round as u64 * 97) % 300));
    }
    Ok((kills, cost))
}

/// One commit (or config edit) and the new service.
struct NewService {
    latency: Option<Duration>,
    at_us: i64,
    /// Ours: the `commit` call. Peer: the edit to `supervisorctl update` exiting.
    side: Duration,
}

fn commit_series(daemon: &Daemon, rounds: usize) -> (Vec<NewService>, ScanCost) {
    let mut out = Vec::new();
    let mut cost = ScanCost::default();
    let already = passes(&read_log(&daemon.log), "commit").len();
    for r in 0..rounds {
        let name = format!("new-{r}");
        let seconds = format!("301.{r}");
        let skip: HashSet<i32> = children_of(daemon.pid).into_iter().collect();
        let text = service(&name, &seconds, None);
        let (commit_call, returned, at_us) = commit_file(&daemon.repo, &format!("desired/{name}.yaml"), &text);
        let (found, scans) = wait_new_child(daemon.pid, &sleep_argv(&seconds), &skip, returned);
        cost.add(scans);
        out.push(NewService {
            latency: found.map(|(d, _)| d),
            at_us,
            side: commit_call,
        });
        // The pass has ended (its inventory written) before the next commit.
        wait_passes(daemon, "commit", already + r + 1, Duration::from_secs(10));
        pause(Duration::from_millis(50 + (r as u64 * 97) % 200));
    }
    (out, cost)
}

/// The peer's nearest equivalent of a commit: a new program in an included file, then
/// `supervisorctl reread` and `supervisorctl update`.
fn peer_edit_series(peer: &Peer, run: &PeerRun, rounds: usize) -> Result<(Vec<NewService>, ScanCost), String> {
    let mut out = Vec::new();
    let mut cost = ScanCost::default();
    let d = run.dir.display().to_string();
    for r in 0..rounds {
        let name = format!("new-{r}");
        let seconds = format!("301.{r}");
        let skip: HashSet<i32> = children_of(run.pid).into_iter().collect();
        fs::write(
            run.dir.join("conf.d").join(format!("{name}.conf")),
            program(&name, &seconds, &d),
        )
        .unwrap();
        let edited = Instant::now();
        let at_us = epoch_us();
        let reread = Command::new(&peer.supervisorctl)
            .arg("-c")
            .arg(&run.conf)
            .arg("reread")
            .output()
            .map_err(|e| format!("supervisorctl reread: {e}"))?;
        if !String::from_utf8_lossy(&reread.stdout).contains("available") {
            return Err(format!("supervisorctl reread: {}", tail(&reread.stdout)));
        }
        let update = Command::new(&peer.supervisorctl)
            .arg("-c")
            .arg(&run.conf)
            .arg("update")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("supervisorctl update: {e}"))?;
        // Its exit is timed on a thread of its own while the process table is watched here.
        let waiter = std::thread::spawn(move || {
            let output = update.wait_with_output();
            (edited.elapsed(), output)
        });
        let (found, scans) = wait_new_child(run.pid, &sleep_argv(&seconds), &skip, edited);
        cost.add(scans);
        let (update_done, output) = waiter.join().expect("the waiter does not panic");
        let output = output.map_err(|e| format!("supervisorctl update: {e}"))?;
        if !output.status.success() {
            return Err(format!("supervisorctl update: {}", tail(&output.stdout)));
        }
        out.push(NewService {
            latency: found.map(|(d, _)| d),
            at_us,
            side: update_done,
        });
        pause(Duration::from_millis(50 + (r as u64 * 97) % 200));
    }
    Ok((out, cost))
}

/// One daemon over an idle window.
#[derive(Clone, Copy, Default)]
struct Idle {
    rss_max_kib: u64,
    rss_end_kib: u64,
    anon_kib: u64,
    file_kib: u64,
    ticks: u64,
    threads: usize,
    fds: usize,
}

impl Idle {
    fn cpu_pct(&self, window: Duration) -> f64 {
        self.ticks as f64 / clock_ticks_per_second() / window.as_secs_f64() * 100.0
    }
}

/// Samples every pid once a second for `window`: the largest VmRSS, and utime+stime used.
fn idle_window(pids: &[i32], window: Duration) -> Vec<Idle> {
    let start_ticks: Vec<u64> = pids.iter().map(|&p| cpu_ticks(p).unwrap_or(0)).collect();
    let mut out = vec![Idle::default(); pids.len()];
    let begun = Instant::now();
    loop {
        for (i, &pid) in pids.iter().enumerate() {
            out[i].rss_max_kib = out[i].rss_max_kib.max(status_kib(pid, "VmRSS").unwrap_or(0));
        }
        if begun.elapsed() >= window {
            break;
        }
        pause(Duration::from_secs(1).min(window.saturating_sub(begun.elapsed())));
    }
    for (i, &pid) in pids.iter().enumerate() {
        out[i].ticks = cpu_ticks(pid).unwrap_or(0).saturating_sub(start_ticks[i]);
        out[i].rss_end_kib = status_kib(pid, "VmRSS").unwrap_or(0);
        out[i].anon_kib = status_kib(pid, "RssAnon").unwrap_or(0);
        out[i].file_kib = status_kib(pid, "RssFile").unwrap_or(0);
        out[i].threads = threads(pid);
        out[i].fds = open_fds(pid);
    }
    out
}

/// Answers every HTTP request with 200 (the probes' target); counts the requests.
fn responder() -> (u16, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a local port");
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicU64::new(0));
    let counter = count.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    (port, count)
}

/// RSS and more of a daemon that just started `n` services.
struct Large {
    all_running: Duration,
    startup_pass_ms: Option<u64>,
    rss_kib: u64,
    hwm_kib: u64,
    anon_kib: u64,
    fds: usize,
    status: Option<(usize, usize, Duration)>,
    /// From the spawn to all running: the supervisor's time on a CPU and waiting for one (ns).
    cpu_ns: u64,
    wait_ns: u64,
    /// How busy the machine was meanwhile (all CPUs, %).
    machine_busy: f64,
    /// kill -9 -> replacement, while all 1,000 run (ours only).
    kills: Vec<Kill>,
    /// Their breakdown from the daemon's log (see [`kill_breakdown`]).
    kill_log: (Vec<f64>, Vec<f64>, Vec<f64>),
}

fn large_ours(guard: &mut Guard, work: &Path, large_kills: usize) -> Result<Large, String> {
    let repo = work.join("repo-1000");
    generate(&repo, LARGE, None);
    let jiffies = machine_jiffies();
    let daemon = start_daemon(guard, &repo, &work.join("state-1000"));
    let all_running =
        wait_children(guard, daemon.pid, LARGE, daemon.spawned, Duration::from_millis(5)).map_err(|e| {
            format!(
                "mirrorctl run: {e}\n{}",
                tail(&fs::read(&daemon.log).unwrap_or_default())
            )
        })?;
    let (cpu_ns, wait_ns) = sched(daemon.pid);
    let machine_busy = busy_since(jiffies);
    let startup = wait_passes(&daemon, "startup", 1, Duration::from_secs(30));
    pause(Duration::from_secs(2));
    let status = status_json(&daemon).ok().map(|(v, took)| {
        let (n, synced, ..) = status_summary(&v);
        (n, synced, took)
    });
    let rss_kib = status_kib(daemon.pid, "VmRSS").unwrap_or(0);
    let hwm_kib = status_kib(daemon.pid, "VmHWM").unwrap_or(0);
    let anon_kib = status_kib(daemon.pid, "RssAnon").unwrap_or(0);
    let fds = open_fds(daemon.pid);
    // A few restarts while 1,000 run: does the exit path's cost grow with what runs?
    let victims: Vec<usize> = (0..large_kills).map(|k| k * (LARGE / large_kills.max(1))).collect();
    let kills = kill_series(daemon.pid, &victims).map(|(k, _)| k).unwrap_or_default();
    let kill_log = kill_breakdown(&read_log(&daemon.log), &kills);
    guard.stop_all();
    Ok(Large {
        all_running,
        startup_pass_ms: startup.first().map(|p| p.1),
        rss_kib,
        hwm_kib,
        anon_kib,
        fds,
        status,
        cpu_ns,
        wait_ns,
        machine_busy,
        kills,
        kill_log,
    })
}

fn large_peer(guard: &mut Guard, peer: &Peer, work: &Path) -> Result<Large, String> {
    let jiffies = machine_jiffies();
    let run = start_peer(guard, peer, &work.join("peer-1000"), LARGE)?;
    let (cpu_ns, wait_ns) = sched(run.pid);
    let machine_busy = busy_since(jiffies);
    pause(Duration::from_secs(2));
    let large = Large {
        all_running: run.all_exist,
        startup_pass_ms: None,
        rss_kib: status_kib(run.pid, "VmRSS").unwrap_or(0),
        hwm_kib: status_kib(run.pid, "VmHWM").unwrap_or(0),
        anon_kib: status_kib(run.pid, "RssAnon").unwrap_or(0),
        fds: open_fds(run.pid),
        status: None,
        cpu_ns,
        wait_ns,
        machine_busy,
        kills: Vec::new(),
        kill_log: Default::default(),
    };
    guard.stop_all();
    Ok(large)
}

// ---------------------------------------------------------------------------------------------
// Statistics and the report

/// Nearest-rank percentile (`p` in 0..=100) of non-empty samples.
fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    let v = d.as_secs_f64() * 1e3;
    if v < 10.0 {
        format!("{v:.2} ms")
    } else {
        format!("{v:.0} ms")
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// `p50 / p90 / max (n)`, plus how many were never seen.
fn distribution(latencies: &[Option<Duration>]) -> (Option<Duration>, String) {
    let seen: Vec<Duration> = latencies.iter().flatten().copied().collect();
    let missed = latencies.len() - seen.len();
    if seen.is_empty() {
        return (None, format!("none seen in {} rounds", latencies.len()));
    }
    let p50 = percentile(&seen, 50.0);
    let mut text = format!(
        "{} / {} / {} (n={})",
        ms(p50),
        ms(percentile(&seen, 90.0)),
        ms(*seen.iter().max().unwrap()),
        seen.len()
    );
    if missed > 0 {
        text.push_str(&format!(", {missed} not within {}s", WAIT_LIMIT.as_secs()));
    }
    (if missed > 0 { None } else { Some(p50) }, text)
}

fn median_ms(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    Some(values[values.len() / 2])
}

/// From the daemon's log, per kill: kill -> `service ended` logged, kill -> the child-exit pass
/// logged, and that pass's `took_ms` (ms).
fn kill_breakdown(log: &[LogLine], kills: &[Kill]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut noticed, mut pass_logged, mut took) = (Vec::new(), Vec::new(), Vec::new());
    for kill in kills {
        let name = format!("svc-{}", kill.service);
        let ended = log.iter().find(|l| {
            l.message == "service ended" && l.field("service") == Some(&name) && l.at_us >= kill.at_us - 1000
        });
        if let Some(ended) = ended {
            noticed.push((ended.at_us - kill.at_us) as f64 / 1e3);
            if let Some(pass) = log
                .iter()
                .find(|l| l.message == "pass" && l.field("trigger") == Some("child-exit") && l.at_us >= ended.at_us)
            {
                pass_logged.push((pass.at_us - kill.at_us) as f64 / 1e3);
                took.push(pass.fields.get("took_ms").and_then(Value::as_u64).unwrap_or(0) as f64);
            }
        }
    }
    (noticed, pass_logged, took)
}

/// Medians over kill rounds of the supervisor's CPU time and run-queue wait.
fn sched_text(kills: &[Kill]) -> String {
    let mut cpu: Vec<f64> = kills.iter().map(|k| k.cpu_ns as f64 / 1e6).collect();
    let mut wait: Vec<f64> = kills.iter().map(|k| k.wait_ns as f64 / 1e6).collect();
    let max_wait = wait.iter().copied().fold(0.0, f64::max);
    format!(
        "its threads on a CPU {:.1} ms, runnable but waiting for a CPU {:.1} ms (max {max_wait:.1} ms)",
        median_ms(&mut cpu).unwrap_or(0.0),
        median_ms(&mut wait).unwrap_or(0.0)
    )
}

fn verdict(pass: bool) -> &'static str {
    if pass {
        "PASS"
    } else {
        "FAIL"
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let rounds = if quick {
        Rounds {
            kills: 10,
            peer_kills: 8,
            commits: 5,
            peer_commits: 3,
            idle: Duration::from_secs(15),
            settle: Duration::from_secs(3),
            large_kills: 4,
        }
    } else {
        Rounds {
            kills: 40,
            peer_kills: 30,
            commits: 15,
            peer_commits: 10,
            idle: Duration::from_secs(60),
            settle: Duration::from_secs(5),
            large_kills: 10,
        }
    };
    let bench_started = Instant::now();
    catch_signals();
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) only changes how orphans are reparented.
    let subreaper = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } == 0;
    let limits = raise_limits(LARGE);
    let mut guard = Guard::default();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let peer = ensure_peer();
    let load_before = load_average();
    let machine_line = machine();
    let (probe_port, probes_answered) = responder();

    // --- 50 services: three daemons side by side
    let repo = w.join("repo-50");
    generate(&repo, SERVICES, None);
    let probed_repo = w.join("repo-50-probed");
    generate(&probed_repo, SERVICES, Some(probe_port));
    let ours = start_daemon(&mut guard, &repo, &w.join("state-50"));
    let ours_start = wait_children(&mut guard, ours.pid, SERVICES, ours.spawned, Duration::from_millis(1))
        .unwrap_or_else(|e| panic!("mirrorctl run: {e}\n{}", tail(&fs::read(&ours.log).unwrap_or_default())));
    let probed = start_daemon(&mut guard, &probed_repo, &w.join("state-50-probed"));
    wait_children(
        &mut guard,
        probed.pid,
        SERVICES,
        probed.spawned,
        Duration::from_millis(1),
    )
    .unwrap_or_else(|e| {
        panic!(
            "mirrorctl run (probed): {e}\n{}",
            tail(&fs::read(&probed.log).unwrap_or_default())
        )
    });
    let peer_run = peer
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|p| start_peer(&mut guard, p, &w.join("peer-50"), SERVICES));
    eprintln!(
        "50 services running: mirrorctl run {} after spawn, supervisord {}; settling {}s, then {}s idle",
        ms(ours_start),
        peer_run.as_ref().map_or_else(|e| e.clone(), |r| ms(r.all_exist)),
        rounds.settle.as_secs(),
        rounds.idle.as_secs()
    );

    // --- idle
    pause(rounds.settle);
    let mut idle_pids = vec![ours.pid, probed.pid];
    if let Ok(run) = &peer_run {
        idle_pids.push(run.pid);
    }
    let idle_begun_us = epoch_us();
    let probes_before = probes_answered.load(Ordering::Relaxed);
    let idle_jiffies = machine_jiffies();
    let idle = idle_window(&idle_pids, rounds.idle);
    let idle_machine_busy = busy_since(idle_jiffies);
    let probes_in_window = probes_answered.load(Ordering::Relaxed) - probes_before;
    let idle_end_us = epoch_us();
    let passes_in = |d: &Daemon| {
        read_log(&d.log)
            .iter()
            .filter(|l| l.message == "pass" && l.at_us >= idle_begun_us && l.at_us <= idle_end_us)
            .count()
    };
    let (ours_idle_passes, probed_idle_passes) = (passes_in(&ours), passes_in(&probed));
    let probed_unhealthy = read_log(&probed.log)
        .iter()
        .filter(|l| l.message == "service unhealthy")
        .count();
    guard.stop_daemon(probed.pid);

    // --- kill -9 -> replacement
    let victims: Vec<usize> = (0..rounds.kills.min(SERVICES)).collect();
    eprintln!("kill -9: {} rounds on mirrorctl run", victims.len());
    let (ours_kills, ours_kill_scan) = kill_series(ours.pid, &victims).unwrap_or_else(|e| panic!("mirrorctl run: {e}"));
    let peer_kills = peer_run.as_ref().map_err(Clone::clone).and_then(|run| {
        eprintln!("kill -9: {} rounds on supervisord", rounds.peer_kills.min(SERVICES));
        let victims: Vec<usize> = (0..rounds.peer_kills.min(SERVICES)).collect();
        kill_series(run.pid, &victims)
    });
    let after_kills = status_json(&ours);

    // --- commit -> new service
    eprintln!("commit -> running: {} rounds on mirrorctl run", rounds.commits);
    let (ours_commits, ours_commit_scan) = commit_series(&ours, rounds.commits);
    let peer_edits = match (&peer, &peer_run) {
        (Ok(p), Ok(run)) => {
            eprintln!(
                "config edit + supervisorctl reread && update: {} rounds on supervisord",
                rounds.peer_commits
            );
            peer_edit_series(p, run, rounds.peer_commits)
        }
        (_, Err(e)) | (Err(e), _) => Err(e.clone()),
    };
    let after_commits = status_json(&ours);
    let ours_log = read_log(&ours.log);
    let peer_log = peer_run
        .as_ref()
        .ok()
        .map(|r| fs::read_to_string(r.dir.join("supervisord.log")).unwrap_or_default());
    guard.stop_all();

    // --- 1,000 services
    eprintln!("1,000 services: mirrorctl run");
    let large = large_ours(&mut guard, w, rounds.large_kills);
    let large_sv = peer.as_ref().map_err(Clone::clone).and_then(|p| {
        eprintln!("1,000 services: supervisord");
        large_peer(&mut guard, p, w)
    });
    let leftovers = guard.stop_all();

    // --- report
    let (kill_p50, kill_cell) = distribution(&ours_kills.iter().map(|k| k.latency).collect::<Vec<_>>());
    let peer_kill_cell = match &peer_kills {
        Ok((k, _)) => distribution(&k.iter().map(|k| k.latency).collect::<Vec<_>>()).1,
        Err(e) => format!("skipped: {e}"),
    };
    let (commit_p50, commit_cell) = distribution(&ours_commits.iter().map(|c| c.latency).collect::<Vec<_>>());
    let peer_edit_cell = match &peer_edits {
        Ok((e, _)) => format!(
            "{} (`reread && update`)",
            distribution(&e.iter().map(|c| c.latency).collect::<Vec<_>>()).1
        ),
        Err(e) => format!("skipped: {e}"),
    };
    let window = rounds.idle;
    let (ours_idle, probed_idle) = (idle[0], idle[1]);
    let peer_idle = idle.get(2).copied();
    let idle_rss_pass = ours_idle.rss_max_kib <= IDLE_RSS_TARGET_KIB;
    let idle_cpu_pass = ours_idle.cpu_pct(window) <= IDLE_CPU_TARGET_PCT;
    let peer_cell = |f: &dyn Fn(&Idle) -> String| peer_idle.as_ref().map_or("skipped".to_string(), f);

    println!(
        "\ndaemon: `mirrorctl run` vs supervisord {PEER_VERSION} (`supervisord -n`, startsecs=0, autorestart=true), side by side in one run{}",
        if quick { " (--quick)" } else { "" }
    );
    println!("| measurement | mirrorctl run | supervisord {PEER_VERSION} | target | verdict |");
    println!("|---|---|---|---|---|");
    println!(
        "| kill -9 -> replacement exists, 50 services: p50 / p90 / max | {kill_cell} | {peer_kill_cell} | p50 <= 10 ms | {} |",
        verdict(kill_p50.is_some_and(|p| p <= RESTART_TARGET))
    );
    println!(
        "| git commit -> new service running: p50 / p90 / max | {commit_cell} | {peer_edit_cell} | p50 <= 300 ms | {} |",
        verdict(commit_p50.is_some_and(|p| p <= COMMIT_TARGET))
    );
    println!(
        "| idle, 50 services, no probes: RSS (largest of 1/s samples, {}s) | {} | {} | <= 15 MiB | {} |",
        window.as_secs(),
        mib(ours_idle.rss_max_kib),
        peer_cell(&|i| mib(i.rss_max_kib)),
        verdict(idle_rss_pass)
    );
    println!(
        "| idle, 50 services, no probes: CPU (utime+stime over {}s) | {:.3} % ({} ticks) | {} | <= 0.1 % | {} |",
        window.as_secs(),
        ours_idle.cpu_pct(window),
        ours_idle.ticks,
        peer_cell(&|i| format!("{:.3} % ({} ticks)", i.cpu_pct(window), i.ticks)),
        verdict(idle_cpu_pass)
    );
    println!(
        "| idle, 50 services, HTTP probe every {PROBE_INTERVAL} each: RSS / CPU | {} / {:.3} % ({} ticks) | (no probes in supervisord) | (info) | |",
        mib(probed_idle.rss_max_kib),
        probed_idle.cpu_pct(window),
        probed_idle.ticks
    );
    let (large_start_cell, large_rss_cell, large_start_pass, large_rss_pass) = match &large {
        Ok(l) => (
            ms(l.all_running),
            mib(l.rss_kib),
            l.all_running <= LARGE_START_TARGET,
            l.rss_kib <= LARGE_RSS_TARGET_KIB,
        ),
        Err(e) => (format!("failed: {e}"), "-".into(), false, false),
    };
    println!(
        "| 1,000 services: daemon spawned -> all running | {large_start_cell} | {} | <= 3 s | {} |",
        large_sv
            .as_ref()
            .map_or_else(|e| format!("skipped: {e}"), |l| ms(l.all_running)),
        verdict(large_start_pass)
    );
    println!(
        "| 1,000 services: RSS 2 s after they are up | {large_rss_cell} | {} | <= 50 MiB | {} |",
        large_sv.as_ref().map_or_else(|_| "-".into(), |l| mib(l.rss_kib)),
        verdict(large_rss_pass)
    );
    if let Ok(l) = &large {
        if !l.kills.is_empty() {
            println!(
                "| kill -9 -> replacement exists, 1,000 services: p50 / p90 / max | {} | (not measured) | (info) | |",
                distribution(&l.kills.iter().map(|k| k.latency).collect::<Vec<_>>()).1
            );
        }
    }

    // --- how, and where the time goes
    println!("\nhow and where the time goes:");
    println!(
        "- observer: a scan of /proc/<parent>/task/*/children plus argv of unseen pids every {} µs; one scan takes {:.0} µs (mirrorctl, kills) / {:.0} µs (commits){}",
        SCAN_PAUSE.as_micros(),
        ours_kill_scan.mean_us(),
        ours_commit_scan.mean_us(),
        peer_kills
            .as_ref()
            .map_or(String::new(), |(_, c)| format!(" / {:.0} µs (supervisord, kills)", c.mean_us()))
    );
    let (mut noticed, mut pass_logged, mut took) = kill_breakdown(&ours_log, &ours_kills);
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1} ms"));
    println!(
        "- mirrorctl, kill -9 (median of {}): kill -> `service ended` logged (pidfd) {}; kill -> child-exit pass logged {}; the pass's took_ms {} (whole ms); per kill until the replacement was seen, {}",
        noticed.len(),
        fmt(median_ms(&mut noticed)),
        fmt(median_ms(&mut pass_logged)),
        fmt(median_ms(&mut took)),
        sched_text(&ours_kills)
    );
    match &after_kills {
        Ok((v, took)) => {
            let (n, synced, restarted, daemon) = status_summary(v);
            println!(
                "- mirrorctl status --output json after the kills (answered by the daemon: {daemon}, in {}): {n} services, {synced} Synced, {restarted} with restarts > 0 ({} killed)",
                ms(*took),
                ours_kills.len()
            );
        }
        Err(e) => println!("- mirrorctl status after the kills failed: {e}"),
    }
    if let (Ok((kills, _)), Some(log)) = (&peer_kills, &peer_log) {
        let mut exited = Vec::new();
        let mut spawned = Vec::new();
        for kill in kills {
            let name = format!("svc-{}", kill.service);
            if let Some(t) = peer_log_after(log, &format!("exited: {name} "), kill.at_us) {
                exited.push((t - kill.at_us) as f64 / 1e3);
            }
            if let Some(t) = peer_log_after(log, &format!("spawned: '{name}' "), kill.at_us) {
                spawned.push((t - kill.at_us) as f64 / 1e3);
            }
        }
        println!(
            "- supervisord, kill -9 (median of {}, its log has ms stamps): {} of {} replacements within 1.5 s, the rest after ~2 s; kill -> `exited:` logged {}; kill -> `spawned:` logged {}; per kill, {}",
            exited.len(),
            kills.iter().filter(|k| k.latency.is_some_and(|l| l < Duration::from_millis(1500))).count(),
            kills.len(),
            fmt(median_ms(&mut exited)),
            fmt(median_ms(&mut spawned)),
            sched_text(kills)
        );
    }
    // Ours: commit -> the commit pass logged; its took_ms.
    let commit_passes = passes(&ours_log, "commit");
    let mut to_pass_end = Vec::new();
    let mut to_pass_start = Vec::new();
    let mut commit_took = Vec::new();
    for c in &ours_commits {
        if let Some((at, took)) = commit_passes.iter().find(|(at, _)| *at >= c.at_us) {
            to_pass_end.push((at - c.at_us) as f64 / 1e3);
            to_pass_start.push((at - c.at_us) as f64 / 1e3 - *took as f64);
            commit_took.push(*took as f64);
        }
    }
    let mut commit_calls: Vec<f64> = ours_commits.iter().map(|c| c.side.as_secs_f64() * 1e3).collect();
    println!(
        "- mirrorctl, commit (median of {}): the git2 `commit` call {}; commit -> pass begins (inotify + {} ms debounce) ~{}; pass took_ms {}; commit -> pass logged {}",
        to_pass_end.len(),
        fmt(median_ms(&mut commit_calls)),
        mirrorctl::daemon::git_watch::DEBOUNCE.as_millis(),
        fmt(median_ms(&mut to_pass_start)),
        fmt(median_ms(&mut commit_took)),
        fmt(median_ms(&mut to_pass_end))
    );
    if let Ok((edits, _)) = &peer_edits {
        let mut update_done: Vec<f64> = edits.iter().map(|e| e.side.as_secs_f64() * 1e3).collect();
        println!(
            "- supervisord, config edit (median of {}): edit -> `supervisorctl update` exited {} (two supervisorctl runs, Python start-up each); for scale, Flux polls git every 1 min, Argo CD every 3 min",
            edits.len(),
            fmt(median_ms(&mut update_done))
        );
    }
    match &after_commits {
        Ok((v, _)) => {
            let (n, synced, ..) = status_summary(v);
            println!(
                "- mirrorctl status after the commits: {n} services ({SERVICES} + {} committed), {synced} Synced",
                ours_commits.len()
            );
        }
        Err(e) => println!("- mirrorctl status after the commits failed: {e}"),
    }
    let idle_line = |who: &str, i: &Idle, extra: String| {
        println!(
            "- idle {who}: VmRSS {} at the end (RssAnon {}, RssFile {}), {} threads, {} fds, {:.3} % CPU{extra}",
            mib(i.rss_end_kib),
            mib(i.anon_kib),
            mib(i.file_kib),
            i.threads,
            i.fds,
            i.cpu_pct(window)
        );
    };
    idle_line(
        "mirrorctl, no probes",
        &ours_idle,
        format!("; {ours_idle_passes} passes in the window (resync every 30 s)"),
    );
    idle_line(
        "mirrorctl, HTTP probes",
        &probed_idle,
        format!(
            "; {probes_in_window} probes answered in the window (one per service per {PROBE_INTERVAL}: ~{}), {probed_idle_passes} passes, {probed_unhealthy} `service unhealthy`",
            SERVICES as u64 * window.as_secs() / 10
        ),
    );
    if let Some(p) = &peer_idle {
        idle_line("supervisord", p, String::new());
    }
    println!("- the machine (both CPUs, all processes) was {idle_machine_busy:.0} % busy during the idle window");
    if let Ok(l) = &large {
        println!(
            "- 1,000 services, mirrorctl: startup pass took_ms {}; spawn -> all running: daemon on a CPU {:.0} ms, waiting for a CPU {:.0} ms, machine {:.0} % busy; VmHWM {}, RssAnon {}, {} fds; status: {}",
            l.startup_pass_ms.map_or("-".into(), |t| t.to_string()),
            l.cpu_ns as f64 / 1e6,
            l.wait_ns as f64 / 1e6,
            l.machine_busy,
            mib(l.hwm_kib),
            mib(l.anon_kib),
            l.fds,
            l.status.map_or("failed".into(), |(n, synced, took)| format!(
                "{n} services, {synced} Synced, answered in {}",
                ms(took)
            ))
        );
    }
    if let Some(l) = large.as_ref().ok().filter(|l| !l.kills.is_empty()) {
        let (mut noticed, mut pass_logged, mut took) = l.kill_log.clone();
        println!(
            "- mirrorctl, kill -9 with 1,000 services (median of {}): kill -> `service ended` logged {}; kill -> child-exit pass logged {}; took_ms {}; per kill, {}",
            noticed.len(),
            fmt(median_ms(&mut noticed)),
            fmt(median_ms(&mut pass_logged)),
            fmt(median_ms(&mut took)),
            sched_text(&l.kills)
        );
    }
    if let Ok(l) = &large_sv {
        println!(
            "- 1,000 services, supervisord: spawn -> all running: on a CPU {:.0} ms, waiting for a CPU {:.0} ms, machine {:.0} % busy; VmHWM {}, RssAnon {}, {} fds",
            l.cpu_ns as f64 / 1e6,
            l.wait_ns as f64 / 1e6,
            l.machine_busy,
            mib(l.hwm_kib),
            mib(l.anon_kib),
            l.fds
        );
    }
    println!(
        "{machine_line} (at the start: {load_before}; at the end: {})",
        load_average()
    );
    println!(
        "limits: {limits}; child subreaper: {}; leftover processes at the end: {leftovers}; bench wall time {:.0} s",
        if subreaper { "yes" } else { "no" },
        bench_started.elapsed().as_secs_f64()
    );
    if let Err(e) = &peer {
        println!("peer skipped: {e}");
    }
    let millis = |d: Duration| d.as_secs_f64() * 1e3;
    let p50_of = |latencies: Vec<Option<Duration>>| distribution(&latencies).0.map(millis);
    let peer_name = format!("supervisord {PEER_VERSION}");
    let measure = |what: &str, value: f64, unit: &str| Measure::new("daemon", what, value, unit);
    measure(
        "kill -9 -> replacement exists, 50 services: p50",
        kill_p50.map_or(f64::NAN, millis),
        "ms",
    )
    .peer(
        &peer_name,
        peer_kills
            .as_ref()
            .ok()
            .and_then(|(k, _)| p50_of(k.iter().map(|k| k.latency).collect())),
    )
    .target("p50 <= 10 ms", kill_p50.is_some_and(|p| p <= RESTART_TARGET))
    .record();
    measure(
        "git commit -> new service running: p50",
        commit_p50.map_or(f64::NAN, millis),
        "ms",
    )
    .peer(
        &format!("{peer_name} (edit + `reread && update`)"),
        peer_edits
            .as_ref()
            .ok()
            .and_then(|(e, _)| p50_of(e.iter().map(|c| c.latency).collect())),
    )
    .target("p50 <= 300 ms", commit_p50.is_some_and(|p| p <= COMMIT_TARGET))
    .record();
    let kib_to_mib = |kib: u64| kib as f64 / 1024.0;
    measure(
        "idle, 50 services, no probes: RSS",
        kib_to_mib(ours_idle.rss_max_kib),
        "MiB",
    )
    .peer(&peer_name, peer_idle.map(|i| kib_to_mib(i.rss_max_kib)))
    .target("<= 15 MiB", idle_rss_pass)
    .record();
    measure(
        &format!("idle, 50 services, no probes: CPU over {} s", window.as_secs()),
        ours_idle.cpu_pct(window),
        "%",
    )
    .peer(&peer_name, peer_idle.map(|i| i.cpu_pct(window)))
    .target("<= 0.1 %", idle_cpu_pass)
    .record();
    let large_value = |f: &dyn Fn(&Large) -> f64| large.as_ref().map_or(f64::NAN, f);
    let large_peer_value = |f: &dyn Fn(&Large) -> f64| large_sv.as_ref().ok().map(f);
    measure(
        "1,000 services: daemon spawned -> all running",
        large_value(&|l| millis(l.all_running)),
        "ms",
    )
    .peer(&peer_name, large_peer_value(&|l| millis(l.all_running)))
    .target("<= 3 s", large_start_pass)
    .record();
    measure(
        "1,000 services: RSS 2 s after they are up",
        large_value(&|l| kib_to_mib(l.rss_kib)),
        "MiB",
    )
    .peer(&peer_name, large_peer_value(&|l| kib_to_mib(l.rss_kib)))
    .target("<= 50 MiB", large_rss_pass)
    .record();
    if let Err(e) = &peer {
        results::note("daemon", &format!("supervisord skipped: {e}"));
    }

    let all = kill_p50.is_some_and(|p| p <= RESTART_TARGET)
        && commit_p50.is_some_and(|p| p <= COMMIT_TARGET)
        && idle_rss_pass
        && idle_cpu_pass
        && large_start_pass
        && large_rss_pass;
    println!("targets: {}", if all { "all met" } else { "MISSED (see FAIL above)" });
}
