//! Starting services: `mirrorctl reconcile` (the real binary) against supervisord 4.3 (the peer),
//! from the command to every process running, for 50 and 1,000 services; then a
//! `reconcile --dry-run` over the 1,000 running ones. Targets (the reconcile issue): 50 services
//! in at most 300 ms, 1,000 in at most 3 s, the dry-run over 1,000 in at most 500 ms.
//!
//! Run: `cargo bench --bench reconcile` (release build); `-- --quick` does fewer rounds.
//!
//! - Ours: a git repository of N Services `command: ["sleep", "300.<i>"]`; the clock runs from
//!   spawning `mirrorctl reconcile --repo DIR --state-dir S` until every pid recorded in
//!   `S/inventory.json` is alive (`/proc/<pid>` exists, not a zombie). A fresh state dir per round.
//! - Peer: `supervisord -n -c CONF` with N `[program:x]` sections (`autostart=true`,
//!   `startsecs=0`, `autorestart=true`, stdout and stderr to one log file per program, as ours);
//!   the clock runs until all N `sleep` processes exist as its children (read from
//!   `/proc/<pid>/task/<pid>/children`, not through `supervisorctl`). The peer is installed into
//!   `target/supervisord-venv` when missing; when that fails the peer is skipped and ours is
//!   still measured.
//! - Cleanup: the benchmark makes itself a child subreaper, so every process it starts (also the
//!   services of a `mirrorctl` that has exited, and the programs of a killed supervisord) stays
//!   its descendant. A guard (also run on panic) kills supervisord and any `mirrorctl` still
//!   running, then `kill -9 -- -PGID` every group listed in the inventories and every program the
//!   peer started (each checked against its recorded start time first), sweeps any leftover child,
//!   and reaps them all.

// A measurement or test harness: raw signals and process calls (each block says why it is sound).
#![allow(unsafe_code)]

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use git2::{Repository, RepositoryInitOptions, Signature};
use mirrorctl::source::{self, SourceOptions};
use mirrorctl::store::journal::write_atomically;
use mirrorctl::store::InventoryEntry;
use serde_json::Value;

#[path = "common/results.rs"]
mod results;
use results::Measure;

const SMALL: usize = 50;
const LARGE: usize = 1000;
const SMALL_TARGET: Duration = Duration::from_millis(300);
const LARGE_TARGET: Duration = Duration::from_secs(3);
const DRY_RUN_TARGET: Duration = Duration::from_millis(500);
const PEER_VERSION: &str = "4.3.0";
/// Longest a single start may take before the round is abandoned.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// A peer round slower than this is not repeated (the bench stays within a few minutes).
const PEER_REPEAT_LIMIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Processes

/// A process this benchmark is responsible for, with what makes sure it is still the same one.
#[derive(Clone, Copy, Debug)]
struct Tracked {
    pid: i32,
    pgid: i32,
    start_time: u64,
}

/// What `/proc/<pid>/stat` says: (command name, state, parent, process group, start time).
fn stat(pid: i32) -> Option<(String, u8, i32, i32, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_string();
    let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
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

/// Running: `/proc/<pid>` exists and is neither a zombie nor dead.
fn alive(pid: i32) -> bool {
    matches!(stat(pid), Some((_, state, ..)) if state != b'Z' && state != b'X')
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

/// The children of `pid` (from the kernel's per-task list, else by scanning /proc).
fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    match fs::read_dir(format!("/proc/{pid}/task")) {
        Ok(tasks) => {
            for task in tasks.flatten() {
                if let Ok(text) = fs::read_to_string(task.path().join("children")) {
                    out.extend(text.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
                }
            }
        }
        Err(_) => return out,
    }
    if out.is_empty() && !Path::new(&format!("/proc/{pid}/task/{pid}/children")).exists() {
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

/// The processes an inventory records (pid, group, start time and start wall clock).
fn inventory_processes(bytes: &[u8]) -> Vec<(Tracked, i64)> {
    let Ok(Value::Array(entries)) = serde_json::from_slice::<Value>(bytes) else {
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
            let tracked = Tracked {
                pid,
                pgid: process.get("pgid").and_then(Value::as_i64).map_or(pid, |g| g as i32),
                start_time: process.get("start_time")?.as_u64()?,
            };
            Some((tracked, process.get("started_ms").and_then(Value::as_i64).unwrap_or(0)))
        })
        .collect()
}

fn read_inventory(state_dir: &Path) -> Vec<(Tracked, i64)> {
    fs::read(state_dir.join("inventory.json"))
        .map(|b| inventory_processes(&b))
        .unwrap_or_default()
}

/// Everything this benchmark started, stopped on `stop_all` and on drop (also when unwinding).
#[derive(Default)]
struct Guard {
    /// `mirrorctl` runs and supervisord while they run; the spawn floor's processes.
    children: Vec<Child>,
    /// State dirs whose inventory lists services that may be running.
    state_dirs: Vec<PathBuf>,
    /// Processes the peer started.
    tracked: Vec<Tracked>,
}

impl Guard {
    fn stop_all(&mut self) -> usize {
        let mut signalled = Vec::new();
        // First the parents, so that nothing restarts what is killed next (supervisord would).
        for mut child in self.children.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
        for dir in self.state_dirs.drain(..) {
            for (t, _) in read_inventory(&dir) {
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
        for pid in children_of(own) {
            if signalled.contains(&pid) {
                continue;
            }
            if let Some((_, state, _, pgrp, start_time)) = stat(pid) {
                if state == b'Z' {
                    signalled.push(pid);
                    continue;
                }
                leftovers += 1;
                kill_tracked(&Tracked {
                    pid,
                    pgid: pgrp,
                    start_time,
                });
                signalled.push(pid);
            }
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

// ---------------------------------------------------------------------------------------------
// The machine

fn raise_limits(services: usize) -> String {
    let mut notes = Vec::new();
    // SAFETY: getrlimit/setrlimit only read and write the struct given.
    unsafe {
        let mut files: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut files);
        // supervisord keeps ~4 descriptors per program (pipes and the log file).
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
        let need = services as u64 + 200;
        let running = fs::read_dir("/proc")
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_str().is_some_and(|n| n.parse::<u32>().is_ok()))
                    .count()
            })
            .unwrap_or(0) as u64;
        let root = libc::geteuid() == 0;
        if procs.rlim_cur == libc::RLIM_INFINITY {
            notes.push("ulimit -u unlimited".into());
        } else if procs.rlim_cur >= need + running || root {
            notes.push(format!(
                "ulimit -u {} (enough for {services} services + {running} running{})",
                procs.rlim_cur,
                if root { "; root is not bound by it" } else { "" }
            ));
        } else {
            notes.push(format!(
                "ulimit -u {} may be too low for {services} services + {running} running: raise it",
                procs.rlim_cur
            ));
        }
        let pid_max = fs::read_to_string("/proc/sys/kernel/pid_max").unwrap_or_default();
        notes.push(format!("pid_max {}", pid_max.trim()));
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
    let temp = std::env::temp_dir();
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let fs_type = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && temp.starts_with(f[1])).then(|| (f[1].len(), f[2].to_string()))
        })
        .max()
        .map_or("?".to_string(), |m| m.1);
    format!(
        "machine: nproc {cores}, {model}, Linux {}, state dirs in {} ({fs_type}); load average {}",
        kernel.trim(),
        temp.display(),
        load_average()
    )
}

// ---------------------------------------------------------------------------------------------
// Ours

fn service(i: usize) -> String {
    format!(
        "apiVersion: mirror.os/v1\nkind: Service\nmetadata: {{name: svc-{i}}}\nspec:\n  command: [\"sleep\", \"300.{i}\"]\n"
    )
}

/// A committed desired state of `n` Services, 100 per file.
fn generate(dir: &Path, n: usize) {
    let mut options = RepositoryInitOptions::new();
    options.initial_head("main");
    let repo = Repository::init_opts(dir, &options).unwrap();
    let mut index = repo.index().unwrap();
    for (f, chunk) in (0..n).collect::<Vec<_>>().chunks(100).enumerate() {
        let text: Vec<String> = chunk.iter().map(|&i| service(i)).collect();
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

fn epoch_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn mirrorctl(repo: &Path, state_dir: &Path, out: &Path, dry_run: bool) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mirrorctl"));
    command.arg("reconcile");
    if dry_run {
        command.arg("--dry-run");
    }
    command.arg("--repo").arg(repo).arg("--state-dir").arg(state_dir);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("MIRROR_") {
            command.env_remove(key);
        }
    }
    command
        .stdin(Stdio::null())
        .stdout(File::create(out.with_extension("out")).unwrap())
        .stderr(File::create(out.with_extension("err")).unwrap());
    command
}

fn output_of(out: &Path) -> String {
    let text = |ext| fs::read_to_string(out.with_extension(ext)).unwrap_or_default();
    let (stdout, stderr) = (text("out"), text("err"));
    let tail: Vec<&str> = stdout.lines().rev().take(5).collect();
    format!(
        "stderr: {stderr}\nstdout (last lines): {}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    )
}

/// One start of `n` services from nothing.
struct StartRun {
    /// Spawn to every recorded pid alive.
    all_running: Duration,
    /// Spawn to the command's exit.
    exited: Duration,
    /// Spawn to the first service started (exec, git load, plan, opening the state dir).
    before_first: i64,
    /// First to last service started (the apply loop), ms.
    loop_ms: i64,
    /// Mean ms per start over the first and the last tenth of the starts.
    early_ms: f64,
    late_ms: f64,
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack.windows(needle.len()).filter(|w| *w == needle).count()
}

fn start_ours(guard: &mut Guard, repo: &Path, state_dir: &Path, n: usize) -> StartRun {
    let inventory = state_dir.join("inventory.json");
    let out = state_dir.with_extension("log");
    let poll = if n <= 100 {
        Duration::from_millis(1)
    } else {
        Duration::from_millis(5)
    };
    guard.state_dirs.push(state_dir.to_path_buf());
    let spawned_ms = epoch_ms();
    let start = Instant::now();
    let child = mirrorctl(repo, state_dir, &out, false).spawn().unwrap();
    guard.children.push(child);
    let mut exited: Option<(Duration, ExitStatus)> = None;
    let mut seen = None;
    let mut last_parse = Instant::now();
    let all_running = loop {
        if start.elapsed() > START_TIMEOUT {
            panic!("{n} services not running after {START_TIMEOUT:?}\n{}", output_of(&out));
        }
        if exited.is_none() {
            if let Some(status) = guard.children.last_mut().unwrap().try_wait().unwrap() {
                exited = Some((start.elapsed(), status));
            }
        }
        if let Ok(meta) = fs::metadata(&inventory) {
            let key = (meta.ino(), meta.mtime_nsec(), meta.len());
            if seen != Some(key) {
                let bytes = fs::read(&inventory).unwrap_or_default();
                // A cheap count first; the JSON is parsed when it may be complete.
                if count(&bytes, b"\"pid") >= n || last_parse.elapsed() > Duration::from_millis(100) {
                    last_parse = Instant::now();
                    let processes = inventory_processes(&bytes);
                    if processes.len() >= n && processes.iter().all(|(t, _)| alive(t.pid)) {
                        break start.elapsed();
                    }
                    if processes.len() < n {
                        seen = Some(key);
                    }
                } else {
                    seen = Some(key);
                }
            }
        }
        if let Some((_, status)) = exited {
            if !status.success() || read_inventory(state_dir).len() < n {
                let processes = read_inventory(state_dir);
                let dead = processes.iter().filter(|(t, _)| !alive(t.pid)).count();
                panic!(
                    "mirrorctl reconcile exited ({status}) with {} of {n} services recorded, {dead} not running\n{}",
                    processes.len(),
                    output_of(&out)
                );
            }
        }
        std::thread::sleep(poll);
    };
    let mut child = guard.children.pop().unwrap();
    let (exited, status) = match exited {
        Some(e) => e,
        None => {
            let status = child.wait().unwrap();
            (start.elapsed(), status)
        }
    };
    assert!(
        status.success(),
        "mirrorctl reconcile failed ({status})\n{}",
        output_of(&out)
    );
    let mut started: Vec<i64> = read_inventory(state_dir).iter().map(|(_, ms)| *ms).collect();
    started.sort_unstable();
    let tenth = (started.len() / 10).max(1);
    let last = started.len() - 1;
    StartRun {
        all_running,
        exited,
        before_first: started[0] - spawned_ms,
        loop_ms: started[last] - started[0],
        early_ms: (started[tenth] - started[0]) as f64 / tenth as f64,
        late_ms: (started[last] - started[last - tenth]) as f64 / tenth as f64,
    }
}

fn dry_run(repo: &Path, state_dir: &Path) -> Duration {
    let out = state_dir.with_extension("dry-run");
    let start = Instant::now();
    let status = mirrorctl(repo, state_dir, &out, true).status().unwrap();
    let took = start.elapsed();
    assert!(
        status.code() == Some(0),
        "reconcile --dry-run over running services should exit 0 (in sync), got {status}\n{}",
        output_of(&out)
    );
    took
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

struct Ours {
    runs: Vec<StartRun>,
}

impl Ours {
    fn median_by(&self, f: impl Fn(&StartRun) -> Duration) -> Duration {
        median(self.runs.iter().map(f).collect())
    }
    /// The run whose time to all running is the median one (for its phases).
    fn median_run(&self) -> &StartRun {
        let mut runs: Vec<&StartRun> = self.runs.iter().collect();
        runs.sort_by_key(|r| r.all_running);
        runs[runs.len() / 2]
    }
}

/// `rounds` starts of `n` services from nothing; the last one is left running when `keep`.
fn measure_ours(guard: &mut Guard, work: &Path, repo: &Path, n: usize, rounds: usize, keep: bool) -> (Ours, PathBuf) {
    let mut runs = Vec::new();
    let mut last = PathBuf::new();
    for round in 0..rounds {
        last = work.join(format!("state-{n}-{round}"));
        runs.push(start_ours(guard, repo, &last, n));
        if !(keep && round + 1 == rounds) {
            guard.stop_all();
        }
    }
    (Ours { runs }, last)
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

/// supervisord 4.3 from `target/supervisord-venv`, installed there when missing.
fn ensure_peer() -> Result<Peer, String> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/supervisord-venv");
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

/// A supervisord.conf with `n` programs in `dir` (fresh logs per round).
fn peer_conf(dir: &Path, n: usize) -> PathBuf {
    fs::create_dir_all(dir.join("logs")).unwrap();
    let d = dir.display();
    let mut conf = format!(
        "[supervisord]\nnodaemon=true\nlogfile={d}/supervisord.log\npidfile={d}/supervisord.pid\nchildlogdir={d}/logs\nminfds={}\nminprocs={}\n\n[unix_http_server]\nfile={d}/supervisor.sock\n\n[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n[supervisorctl]\nserverurl=unix://{d}/supervisor.sock\n",
        (8 * n + 1024).max(1024),
        (n + 200).max(200)
    );
    for i in 0..n {
        conf.push_str(&format!(
            "\n[program:svc-{i}]\ncommand=sleep 300.{i}\nautostart=true\nstartsecs=0\nautorestart=true\nredirect_stderr=true\nstdout_logfile={d}/logs/svc-{i}.log\n"
        ));
    }
    let path = dir.join("supervisord.conf");
    fs::write(&path, conf).unwrap();
    path
}

/// Milliseconds of the day of a supervisord log line (`2026-11-24 04:00:56,632 INFO ...`).
fn log_ms(line: &str) -> Option<i64> {
    let time = line.split_whitespace().nth(1)?;
    let (hms, ms) = time.split_once(',')?;
    let mut parts = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, s) = (parts.next()??, parts.next()??, parts.next()??);
    Some(((h * 60 + m) * 60 + s) * 1000 + ms.parse::<i64>().ok()?)
}

/// From supervisord's own log: (started -> first spawn, first -> last spawn) in ms.
fn peer_phases(dir: &Path) -> Option<(i64, i64)> {
    let log = fs::read_to_string(dir.join("supervisord.log")).ok()?;
    let started = log
        .lines()
        .find(|l| l.contains("supervisord started with pid"))
        .and_then(log_ms)?;
    let spawns: Vec<i64> = log
        .lines()
        .filter(|l| l.contains("spawned: "))
        .filter_map(log_ms)
        .collect();
    Some((spawns.first()? - started, spawns.last()? - spawns.first()?))
}

struct PeerRun {
    all_exist: Duration,
    phases: Option<(i64, i64)>,
}

/// One start of supervisord with `n` programs, until all `n` exist. Left running.
fn start_peer(guard: &mut Guard, peer: &Peer, dir: &Path, n: usize) -> Result<PeerRun, String> {
    let conf = peer_conf(dir, n);
    let out = File::create(dir.join("supervisord.out")).unwrap();
    let poll = if n <= 100 {
        Duration::from_millis(1)
    } else {
        Duration::from_millis(5)
    };
    let start = Instant::now();
    let child = Command::new(&peer.supervisord)
        .args(["-n", "-c"])
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .map_err(|e| format!("supervisord: {e}"))?;
    let pid = child.id() as i32;
    guard.children.push(child);
    let mut known: HashSet<i32> = HashSet::new();
    let mut running = 0;
    while running < n {
        if start.elapsed() > START_TIMEOUT {
            return Err(format!("only {running} of {n} programs after {START_TIMEOUT:?}"));
        }
        if let Some(status) = guard.children.last_mut().unwrap().try_wait().unwrap() {
            let log = fs::read(dir.join("supervisord.out")).unwrap_or_default();
            return Err(format!("supervisord exited ({status}): {}", tail(&log)));
        }
        for kid in children_of(pid) {
            if known.contains(&kid) {
                continue;
            }
            // A child is counted once it is `sleep` (exec done) and not a zombie.
            if let Some((comm, state, _, pgrp, start_time)) = stat(kid) {
                if comm == "sleep" && state != b'Z' && state != b'X' {
                    known.insert(kid);
                    guard.tracked.push(Tracked {
                        pid: kid,
                        pgid: pgrp,
                        start_time,
                    });
                    running += 1;
                }
            }
        }
        if running < n {
            std::thread::sleep(poll);
        }
    }
    let all_exist = start.elapsed();
    Ok(PeerRun {
        all_exist,
        phases: peer_phases(dir),
    })
}

fn measure_peer(
    guard: &mut Guard,
    peer: &Peer,
    work: &Path,
    n: usize,
    rounds: usize,
    keep: bool,
) -> Result<(Vec<PeerRun>, PathBuf), String> {
    let mut runs = Vec::new();
    let mut dir = PathBuf::new();
    for round in 0..rounds {
        dir = work.join(format!("peer-{n}-{round}"));
        let run = start_peer(guard, peer, &dir, n);
        let slow = run.as_ref().is_ok_and(|r| r.all_exist > PEER_REPEAT_LIMIT);
        let last = round + 1 == rounds || slow;
        if run.is_err() || !(keep && last) {
            guard.stop_all();
        }
        runs.push(run?);
        if slow {
            break;
        }
    }
    Ok((runs, dir))
}

/// `supervisorctl reread` (its check of the configuration against what runs, changing nothing).
fn peer_reread(peer: &Peer, dir: &Path) -> Result<Duration, String> {
    let start = Instant::now();
    let out = Command::new(&peer.supervisorctl)
        .arg("-c")
        .arg(dir.join("supervisord.conf"))
        .arg("reread")
        .output()
        .map_err(|e| format!("supervisorctl: {e}"))?;
    let took = start.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("No config updates") {
        Ok(took)
    } else {
        Err(format!("supervisorctl reread: {}", tail(&out.stdout)))
    }
}

// ---------------------------------------------------------------------------------------------
// Where the time goes

/// What `reconcile::start` and `supervisor::process::spawn` do for each service, without the
/// reconcile around it (no inventory): create `services/<name>` (the working dir), open the log
/// (append), fork, setsid, exec `sleep` (waiting for the exec), read `/proc/<pid>/stat`. Left
/// running (the guard holds them).
fn spawn_floor(guard: &mut Guard, dir: &Path, n: usize) -> Duration {
    fs::create_dir_all(dir.join("logs")).unwrap();
    let start = Instant::now();
    for i in 0..n {
        let working_dir = dir.join("services").join(format!("svc-{i}"));
        fs::create_dir_all(&working_dir).unwrap();
        let log = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(dir.join("logs").join(format!("svc-{i}.log")))
            .unwrap();
        let mut command = Command::new("sleep");
        command
            .arg(format!("300.{i}"))
            .current_dir(&working_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // SAFETY: setsid is async-signal-safe; the closure allocates nothing.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().unwrap();
        // What `identify_child` reads after a start.
        std::hint::black_box(stat(child.id() as i32));
        guard.children.push(child);
    }
    start.elapsed()
}

struct Replay {
    serialize: Duration,
    write: Duration,
    bytes: usize,
    /// One `write_atomically` of an empty inventory: the fixed cost of a save.
    fixed_each: Duration,
}

/// `LocalInventory::save` as a pass of `n` starts calls it: after start k, the whole inventory
/// of k entries is serialized (`to_vec_pretty`) and written with `write_atomically` (temp file,
/// fdatasync, rename). `fixed_each`: the same write of an empty inventory (mean of 200).
fn replay_inventory(entries: &[InventoryEntry], dir: &Path) -> Replay {
    fs::create_dir_all(dir).unwrap();
    let path = dir.join("inventory.json");
    let (mut serialize, mut write, mut bytes) = (Duration::ZERO, Duration::ZERO, 0);
    for k in 1..=entries.len() {
        let start = Instant::now();
        let some: Vec<&InventoryEntry> = entries[..k].iter().collect();
        let text = serde_json::to_vec_pretty(&some).unwrap();
        serialize += start.elapsed();
        let start = Instant::now();
        write_atomically(&path, &text).unwrap();
        write += start.elapsed();
        bytes += text.len();
    }
    let fixed_writes = entries.len().min(200);
    let start = Instant::now();
    for _ in 0..fixed_writes {
        write_atomically(&path, b"[]").unwrap();
    }
    Replay {
        serialize,
        write,
        bytes,
        fixed_each: start.elapsed() / fixed_writes as u32,
    }
}

// ---------------------------------------------------------------------------------------------

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

/// `median ms (min-max)` of several samples; just the time of one.
fn spread(samples: &[Duration]) -> String {
    let (min, max) = (samples.iter().min().unwrap(), samples.iter().max().unwrap());
    if samples.len() < 2 {
        return ms(*min);
    }
    format!(
        "{} ({:.0}-{:.0})",
        ms(median(samples.to_vec())),
        min.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    )
}

fn ratio(ours: Duration, peer: Option<Duration>) -> String {
    peer.map_or("-".into(), |p| format!("{:.1}x", p.as_secs_f64() / ours.as_secs_f64()))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let (small_rounds, large_rounds, dry_rounds, small_peer_rounds, large_peer_rounds) =
        if quick { (3, 1, 3, 2, 1) } else { (10, 3, 10, 5, 2) };

    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) only changes how orphans are reparented.
    let subreaper = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } == 0;
    let limits = raise_limits(LARGE);
    let mut guard = Guard::default();
    let work = tempfile::tempdir().unwrap();
    let peer = ensure_peer();
    let load_before = load_average();

    // --- 50 services
    let small_repo = work.path().join("repo-50");
    generate(&small_repo, SMALL);
    let (small, _) = measure_ours(&mut guard, work.path(), &small_repo, SMALL, small_rounds, false);
    let small_peer = peer
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|p| measure_peer(&mut guard, p, work.path(), SMALL, small_peer_rounds, false));

    // --- 1,000 services, then the dry-run over them while they run
    let large_repo = work.path().join("repo-1000");
    generate(&large_repo, LARGE);
    let (large, large_state) = measure_ours(&mut guard, work.path(), &large_repo, LARGE, large_rounds, true);
    let dry_samples: Vec<Duration> = (0..dry_rounds).map(|_| dry_run(&large_repo, &large_state)).collect();
    let dry = median(dry_samples.clone());
    let entries: Vec<InventoryEntry> =
        serde_json::from_slice(&fs::read(large_state.join("inventory.json")).unwrap()).unwrap();
    guard.stop_all();

    let large_peer = peer
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|p| measure_peer(&mut guard, p, work.path(), LARGE, large_peer_rounds, true));
    let reread = match (&peer, &large_peer) {
        (Ok(p), Ok((_, dir))) => {
            let samples: Result<Vec<Duration>, String> = (0..dry_rounds.min(5)).map(|_| peer_reread(p, dir)).collect();
            Some(samples)
        }
        _ => None,
    };
    guard.stop_all();

    // --- where the time goes (1,000 starts)
    let load = {
        let options = SourceOptions::new(&large_repo);
        let start = Instant::now();
        let state = source::load(&options).expect("the generated state is valid");
        assert_eq!(state.resources.len(), LARGE);
        start.elapsed()
    };
    let replay = replay_inventory(&entries, &work.path().join("replay"));
    let floor = spawn_floor(&mut guard, &work.path().join("floor"), LARGE);
    guard.stop_all();

    // --- report
    let peer_median = |r: &Result<(Vec<PeerRun>, PathBuf), String>| {
        r.as_ref()
            .ok()
            .map(|(runs, _)| median(runs.iter().map(|r| r.all_exist).collect()))
    };
    let small_ours = small.median_by(|r| r.all_running);
    let large_ours = large.median_by(|r| r.all_running);
    let small_sv = peer_median(&small_peer);
    let large_sv = peer_median(&large_peer);
    let skipped = |r: &Result<(Vec<PeerRun>, PathBuf), String>| match r {
        Ok(_) => String::new(),
        Err(e) => format!("skipped: {e}"),
    };
    let cell = |r: &Result<(Vec<PeerRun>, PathBuf), String>| match r {
        Ok((runs, _)) => spread(&runs.iter().map(|r| r.all_exist).collect::<Vec<_>>()),
        Err(_) => skipped(r),
    };
    let ours_cell = |o: &Ours, f: fn(&StartRun) -> Duration| spread(&o.runs.iter().map(f).collect::<Vec<_>>());

    println!(
        "reconcile: start N Services (`sleep 300.<i>`) from a git commit with `mirrorctl reconcile` vs supervisord {PEER_VERSION} (`supervisord -n`); median (min-max) of {small_rounds} (50) / {large_rounds} (1,000) runs, peer {small_peer_rounds} / {large_peer_rounds}, dry-run {dry_rounds}"
    );
    println!("| measurement | mirrorctl | supervisord | target | ratio |");
    println!("|---|---|---|---|---|");
    println!(
        "| start 50 services: command to all running | {} | {} | <= 300 ms | {} |",
        ours_cell(&small, |r| r.all_running),
        cell(&small_peer),
        ratio(small_ours, small_sv)
    );
    println!(
        "| start 50 services: command to exit (ours: after the truth-store flush) | {} | (stays in the foreground) | | |",
        ours_cell(&small, |r| r.exited)
    );
    println!(
        "| start 1,000 services: command to all running | {} | {} | <= 3000 ms | {} |",
        ours_cell(&large, |r| r.all_running),
        cell(&large_peer),
        ratio(large_ours, large_sv)
    );
    println!(
        "| start 1,000 services: command to exit (ours: after the truth-store flush) | {} | (stays in the foreground) | | |",
        ours_cell(&large, |r| r.exited)
    );
    let reread_cell = match &reread {
        Some(Ok(d)) => format!("{} (`supervisorctl reread`)", spread(d)),
        Some(Err(e)) => format!("failed: {e}"),
        None => skipped(&large_peer),
    };
    let reread_ratio = match &reread {
        Some(Ok(d)) => ratio(dry, Some(median(d.clone()))),
        _ => "-".into(),
    };
    println!(
        "| `reconcile --dry-run` over 1,000 running (in sync, exit 0) | {} | {reread_cell} | <= 500 ms | {reread_ratio} |",
        spread(&dry_samples)
    );
    println!(
        "ratio: supervisord / mirrorctl (above 1: mirrorctl is faster). mirrorctl: all pids of <state dir>/inventory.json alive (/proc, not zombie); supervisord: all {{50, 1000}} `sleep` children of the supervisord pid exist (/proc/<pid>/task/<pid>/children, not zombie); supervisorctl is not used for the start times."
    );
    println!("{} (at the start: {load_before})", machine());
    println!(
        "limits: {limits}; child subreaper: {}",
        if subreaper {
            "yes (every started process is reaped here)"
        } else {
            "no"
        }
    );

    println!("\nwhere the time goes (median run; phases from the `started_ms` of each inventory record):");
    for (n, ours) in [(SMALL, &small), (LARGE, &large)] {
        let run = ours.median_run();
        println!(
            "- mirrorctl, {n} services: spawn -> first service started {} ms (exec, git load, plan, state dir); first -> last started {} ms ({:.2} ms/start: {:.2} over the first tenth, {:.2} over the last); last started -> all running seen {} ms; -> exit {} ms (journal, SQLite, output)",
            run.before_first,
            run.loop_ms,
            run.loop_ms as f64 / (n - 1) as f64,
            run.early_ms,
            run.late_ms,
            run.all_running.as_millis() as i64 - run.before_first - run.loop_ms,
            (run.exited.as_millis() as i64 - run.before_first - run.loop_ms).max(0),
        );
    }
    println!(
        "- in-process `source::load` of the 1,000 services (git read + parse + validate): {}",
        ms(load)
    );
    let fixed_ms = replay.fixed_each.as_secs_f64() * 1e3;
    let n = entries.len();
    println!(
        "- for comparison, the inventory as it was before its append-only log (the whole file rewritten after every start), {n} saves: {} = serialize (`to_vec_pretty`) {} + `write_atomically` (create, write, fdatasync, rename) {}; {:.0} MiB written; of that, the fixed cost of a save (an empty inventory): {fixed_ms:.2} ms each, {:.0} ms for {n}",
        ms(replay.serialize + replay.write),
        ms(replay.serialize),
        ms(replay.write),
        replay.bytes as f64 / (1024.0 * 1024.0),
        fixed_ms * n as f64,
    );
    println!(
        "- start floor: the same services/<name> mkdir + log open + fork + setsid + exec (waited for) + /proc read, in-process without any inventory, 1,000 times: {} ({:.2} ms/start)",
        ms(floor),
        floor.as_secs_f64() * 1e3 / LARGE as f64
    );
    let large_loop = large.median_run().loop_ms as f64;
    let explained = (replay.serialize + replay.write + floor).as_secs_f64() * 1e3;
    println!(
        "- the 1,000-start loop ({large_loop:.0} ms) less the replayed saves and the start floor: {:.0} ms not reproduced by either alone (bookkeeping; file-system work of the two interleaved)",
        large_loop - explained
    );
    for (n, r) in [(SMALL, &small_peer), (LARGE, &large_peer)] {
        if let Ok((runs, _)) = r {
            let mut runs: Vec<&PeerRun> = runs.iter().collect();
            runs.sort_by_key(|r| r.all_exist);
            if let Some((first, spread)) = runs[runs.len() / 2].phases {
                println!(
                    "- supervisord, {n} programs (its log): started -> first spawn {first} ms (its main loop's first tick), first -> last spawn {spread} ms"
                );
            }
        }
    }
    if let Err(e) = &peer {
        println!("peer skipped: {e}");
    }

    let millis = |d: Duration| d.as_secs_f64() * 1e3;
    let peer_name = format!("supervisord {PEER_VERSION}");
    Measure::new(
        "reconcile",
        "start 50 services: command to all running (median)",
        millis(small_ours),
        "ms",
    )
    .peer(&peer_name, small_sv.map(millis))
    .target("<= 300 ms", small_ours <= SMALL_TARGET)
    .record();
    Measure::new(
        "reconcile",
        "start 1,000 services: command to all running (median)",
        millis(large_ours),
        "ms",
    )
    .peer(&peer_name, large_sv.map(millis))
    .target("<= 3000 ms", large_ours <= LARGE_TARGET)
    .record();
    Measure::new(
        "reconcile",
        "`reconcile --dry-run` over 1,000 running (median)",
        millis(dry),
        "ms",
    )
    .peer(
        &format!("{peer_name} `supervisorctl reread`"),
        match &reread {
            Some(Ok(d)) => Some(millis(median(d.clone()))),
            _ => None,
        },
    )
    .target("<= 500 ms", dry <= DRY_RUN_TARGET)
    .record();
    if let Err(e) = &peer {
        results::note("reconcile", &format!("supervisord skipped: {e}"));
    }

    let met = small_ours <= SMALL_TARGET && large_ours <= LARGE_TARGET && dry <= DRY_RUN_TARGET;
    println!("targets: {}", if met { "met" } else { "MISSED" });
}
