//! The everyday commands on the example host (issue 18's target: every command answers in
//! <= 50 ms, with or without a daemon). The release binary, a repository made by `mirrorctl
//! init` (the example, its `web` moved to a free port), one `reconcile`, then each command 20
//! times from a directory outside the repository (the source in force is found from the state
//! dir): p50 and p95 wall time, first without a daemon, then with `mirrorctl run` answering.
//!
//! Peer: `supervisorctl status` and `supervisorctl status NAME` against supervisord 4.3 with
//! the same two programs, from `<target dir>/supervisord-venv` (the daemon benchmark installs
//! it; skipped with a note when absent).
//!
//! Run: `cargo bench --bench commands` (about 20 s); `-- --quick` for 5 rounds.

#[path = "common/results.rs"]
mod results;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TARGET_MS: f64 = 50.0;

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

fn mirrorctl(state: &Path, cwd: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mirrorctl"));
    command
        .env("MIRROR_STATE_DIR", state)
        .env_remove("MIRROR_REPO")
        .env_remove("MIRROR_PATH")
        .current_dir(cwd)
        .stdin(Stdio::null());
    command
}

/// Milliseconds per run of `command` (its exit code checked against `ok`), `rounds` times.
fn time(mut make: impl FnMut() -> Command, ok: &[i32], rounds: usize) -> Vec<f64> {
    (0..rounds)
        .map(|_| {
            let mut command = make();
            let began = Instant::now();
            let out = command.output().expect("run");
            let ms = began.elapsed().as_secs_f64() * 1e3;
            let code = out.status.code().unwrap_or(-1);
            assert!(
                ok.contains(&code),
                "{command:?}: exit {code}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            ms
        })
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `mirrorctl init`, the example's `web` on a free port (never 8787 a host may use), committed.
fn example_host(dir: &Path) -> PathBuf {
    let repo = dir.join("host");
    let out = Command::new(env!("CARGO_BIN_EXE_mirrorctl"))
        .arg("init")
        .arg(&repo)
        .env("MIRROR_STATE_DIR", dir.join("unused"))
        .output()
        .unwrap();
    assert!(out.status.success(), "init: {out:?}");
    let services = repo.join("desired/services.yaml");
    let text = std::fs::read_to_string(&services).unwrap();
    std::fs::write(&services, text.replace("8787", &free_port().to_string())).unwrap();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(args)
            .current_dir(&repo)
            .env("GIT_AUTHOR_NAME", "bench")
            .env("GIT_AUTHOR_EMAIL", "bench@localhost")
            .env("GIT_COMMITTER_NAME", "bench")
            .env("GIT_COMMITTER_EMAIL", "bench@localhost")
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
    };
    git(&["commit", "-qam", "web on a free port"]);
    repo
}

/// The commands a person types, and the exit codes they end with here.
const COMMANDS: &[(&str, &[&str], &[i32])] = &[
    ("status", &["status"], &[0]),
    ("status web", &["status", "web"], &[0]),
    ("validate", &["validate"], &[0]),
    ("reconcile --dry-run", &["reconcile", "--dry-run"], &[0, 2]),
    ("drift list", &["drift", "list"], &[0]),
    ("logs web --tail 5", &["logs", "web", "--tail", "5"], &[0]),
    ("completions (stop <TAB>)", &["--", "mirrorctl", "stop", ""], &[0]),
];

/// Stops what the benchmark started: the example's services (`mirrorctl stop`), then the daemon.
struct Stop(Vec<Child>, PathBuf);

impl Drop for Stop {
    fn drop(&mut self) {
        for name in ["web", "ollama"] {
            let _ = mirrorctl(&self.1, Path::new("/")).args(["stop", name]).output();
        }
        for child in &mut self.0 {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let _ = child.wait();
        }
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 5 } else { 20 };
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let repo = example_host(dir.path());
    let mut guard = Stop(Vec::new(), state.clone());
    let applied = mirrorctl(&state, &repo)
        .args(["reconcile", "--path", "desired"])
        .output()
        .unwrap();
    assert!(applied.status.success(), "reconcile: {applied:?}");

    let mut rows = Vec::new();
    for daemon in [false, true] {
        if daemon {
            let child = mirrorctl(&state, &repo)
                .args(["run", "--path", "desired"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            guard.0.push(child);
            let deadline = Instant::now() + Duration::from_secs(20);
            while !state.join("control.sock").exists() {
                assert!(Instant::now() < deadline, "the daemon did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
            // Its startup pass over: status answers without `pass_running`.
            loop {
                let out = mirrorctl(&state, &elsewhere)
                    .args(["status", "--output", "json"])
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                if text.contains("\"daemon\": ")
                    && text.contains("\"pass_running\": null")
                    && !text.contains("\"daemon\": null")
                {
                    break;
                }
                assert!(Instant::now() < deadline, "the daemon did not answer: {text}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        for (name, args, ok) in COMMANDS {
            let completion = args.first() == Some(&"--");
            let mut samples = time(
                || {
                    let mut command = mirrorctl(&state, &elsewhere);
                    command.args(*args);
                    if completion {
                        command
                            .env("MIRRORCTL_COMPLETE", "bash")
                            .env("_CLAP_COMPLETE_INDEX", "2");
                    }
                    command
                },
                ok,
                rounds,
            );
            let p50 = percentile(&mut samples, 0.5);
            let p95 = percentile(&mut samples, 0.95);
            rows.push((name.to_string(), daemon, p50, p95));
        }
    }

    let peer = peer_times(dir.path(), rounds);
    println!("\n{:<28} {:<10} {:>9} {:>9}", "command", "daemon", "p50 ms", "p95 ms");
    for (name, daemon, p50, p95) in &rows {
        println!(
            "{name:<28} {:<10} {p50:>9.1} {p95:>9.1}",
            if *daemon { "running" } else { "none" }
        );
        let peer_value = match name.as_str() {
            "status" => peer.as_ref().ok().map(|p| p.0),
            "status web" => peer.as_ref().ok().map(|p| p.1),
            _ => None,
        };
        results::Measure::new(
            "commands",
            &format!("{name}, {} daemon: p95", if *daemon { "with a" } else { "no" }),
            *p95,
            "ms",
        )
        .peer("supervisorctl 4.3.0 (p95)", peer_value.filter(|_| *daemon))
        .target("<= 50 ms", *p95 <= TARGET_MS)
        .record();
    }
    match &peer {
        Ok((status, one)) => println!("supervisorctl status: p95 {status:.1} ms; status NAME: p95 {one:.1} ms"),
        Err(why) => {
            println!("peer skipped: {why}");
            results::note("commands", &format!("supervisorctl skipped: {why}"));
        }
    }
    drop(guard);
}

/// p95 of `supervisorctl status` and `supervisorctl status web` against supervisord with two
/// programs.
fn peer_times(dir: &Path, rounds: usize) -> Result<(f64, f64), String> {
    let target = Path::new(env!("CARGO_BIN_EXE_mirrorctl"))
        .parent()
        .and_then(Path::parent)
        .ok_or("no target dir")?
        .to_path_buf();
    let bin = target.join("supervisord-venv/bin");
    if !bin.join("supervisorctl").exists() {
        return Err(format!(
            "{} is missing (`cargo bench --bench daemon` installs it)",
            bin.display()
        ));
    }
    let d = dir.join("peer");
    std::fs::create_dir_all(d.join("logs")).unwrap();
    let ds = d.display();
    let conf = d.join("supervisord.conf");
    std::fs::write(
        &conf,
        format!(
            "[supervisord]\nnodaemon=true\nlogfile={ds}/supervisord.log\npidfile={ds}/supervisord.pid\n\n[unix_http_server]\nfile={ds}/supervisor.sock\n\n[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n[supervisorctl]\nserverurl=unix://{ds}/supervisor.sock\n\n[program:web]\ncommand=sleep 301\nstdout_logfile={ds}/logs/web.log\n\n[program:worker]\ncommand=sleep 302\nstdout_logfile={ds}/logs/worker.log\n"
        ),
    )
    .unwrap();
    let mut daemon = Command::new(bin.join("supervisord"))
        .args(["-n", "-c"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("supervisord: {e}"))?;
    let ctl = || {
        let mut command = Command::new(bin.join("supervisorctl"));
        command.arg("-c").arg(&conf);
        command
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ctl()
        .arg("status")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("RUNNING"))
    {
        if Instant::now() > deadline {
            let _ = daemon.kill();
            return Err("supervisord did not start its programs".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut all = time(
        || {
            let mut c = ctl();
            c.arg("status");
            c
        },
        &[0],
        rounds,
    );
    let mut one = time(
        || {
            let mut c = ctl();
            c.args(["status", "web"]);
            c
        },
        &[0],
        rounds,
    );
    let _ = daemon.kill();
    let _ = daemon.wait();
    Ok((percentile(&mut all, 0.95), percentile(&mut one, 0.95)))
}
