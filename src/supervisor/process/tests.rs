//! Starting, watching and stopping real processes, env files and log rotation.

use std::time::{Duration, Instant};

use rustix::process::Signal;

use super::identity::{signallable, Observed};
use super::logs::numbered;
use super::*;
use crate::spec::common::{ByteSize, Duration as SpecDuration};

const WAIT: Duration = Duration::from_secs(3);

fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn argv(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

struct Fixture {
    dir: tempfile::TempDir,
    env: BTreeMap<String, String>,
    env_files: Vec<PathBuf>,
    limits: Option<Limits>,
    max_size: u64,
    max_files: u32,
}

impl Fixture {
    fn new() -> Self {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
            env: BTreeMap::new(),
            env_files: Vec::new(),
            limits: None,
            max_size: 1 << 20,
            max_files: 3,
        }
    }
    fn logs(&self) -> PathBuf {
        self.dir.path().join("logs")
    }
    fn log(&self, name: &str) -> String {
        fs::read_to_string(self.logs().join(format!("{name}.log"))).unwrap_or_default()
    }
    fn spawn(&self, name: &str, command: &[&str]) -> Result<ProcessIdentity, SpawnError> {
        let command = argv(command);
        let logs = self.logs();
        spawn(&SpawnSpec {
            name,
            command: &command,
            working_dir: None,
            env: &self.env,
            env_files: &self.env_files,
            limits: self.limits.as_ref(),
            log_dir: &logs,
            log_max_size: self.max_size,
            log_max_files: self.max_files,
            cgroup_procs: &[],
        })
    }
}

#[cfg(target_os = "linux")]
/// Gone: no /proc entry, or a zombie nobody has reaped yet (orphans go to PID 1).
fn gone(pid: i32) -> bool {
    linux::stat(pid).is_none_or(|s| s.state == b'Z')
}

#[cfg(target_os = "linux")]
fn sleeps_in_group(pgid: i32) -> Vec<i32> {
    linux::group_members(pgid)
        .into_iter()
        .filter(|(pid, stat)| {
            stat.state != b'Z' && fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
        })
        .map(|(pid, _)| pid)
        .collect()
}

#[test]
#[cfg(target_os = "linux")]
fn mechanism_and_boot_id_on_linux() {
    assert_eq!(mechanism(), "linux-proc");
    let id = boot_id();
    assert_eq!(id.len(), 36, "{id}");
    assert_eq!(id, boot_id());
}

#[test]
#[cfg(target_os = "linux")]
fn spawn_logs_both_streams_in_its_own_session() {
    let mut fx = Fixture::new();
    fx.env.insert("GREETING".into(), "hello from env".into());
    let id = fx
        .spawn("greeter", &["sh", "-c", "echo $GREETING; echo oops >&2; sleep 30"])
        .unwrap();
    assert_eq!(id.pgid, id.pid);
    assert_eq!(id.boot_id, boot_id());
    let stat = linux::stat(id.pid).unwrap();
    assert_eq!(stat.session, id.pid, "session leader");
    assert_eq!(stat.pgrp, id.pid, "group leader");
    assert_eq!(stat.start_time, id.start_time);
    // Our own session as /proc shows it (getsid may say 0 inside a PID namespace).
    let own = linux::stat(rustix::process::getpid().as_raw_nonzero().get()).unwrap();
    assert_ne!(stat.session, own.session);
    wait_for("both lines in the log", || {
        let log = fx.log("greeter");
        log.contains("hello from env\n") && log.contains("oops\n")
    });
    let meta = fs::metadata(fx.logs().join("greeter.log")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
    // stdin is /dev/null.
    let stdin = fs::read_link(format!("/proc/{}/fd/0", id.pid)).unwrap();
    assert_eq!(stdin, Path::new("/dev/null"));
    assert_eq!(liveness(&id), Liveness::Running);
    assert_eq!(stop(&id, "SIGTERM", Duration::from_secs(2)), StopOutcome::Exited);
    assert_eq!(liveness(&id), Liveness::Exited);
    assert_eq!(take_exit(&id).and_then(|e| e.signal), Some(Signal::TERM.as_raw()));
}

#[test]
fn log_is_appended_across_starts() {
    let fx = Fixture::new();
    for _ in 0..2 {
        let id = fx.spawn("twice", &["sh", "-c", "echo run"]).unwrap();
        wait_for("exit", || liveness(&id) == Liveness::Exited);
        assert_eq!(
            take_exit(&id),
            Some(Exit {
                code: Some(0),
                signal: None
            })
        );
    }
    assert_eq!(fx.log("twice"), "run\nrun\n");
}

#[test]
fn environment_is_clean_with_env_files_below_explicit_env() {
    let mut fx = Fixture::new();
    let file = fx.dir.path().join("app.env");
    fs::write(
        &file,
        "# settings\n\nexport FROM_FILE=plain value # comment\nQUOTED=\"a \\\"b\\\" c\"\nSINGLE='x # y'\nBOTH=file\n",
    )
    .unwrap();
    let second = fx.dir.path().join("second.env");
    fs::write(&second, "FROM_FILE=overridden by the later file\n").unwrap();
    fx.env_files = vec![file, second];
    fx.env.insert("BOTH".into(), "explicit".into());
    let script = "echo \"[$FROM_FILE][$QUOTED][$SINGLE][$BOTH][$CARGO_MANIFEST_DIR][${PATH:+path}]\"";
    let id = fx.spawn("envs", &["sh", "-c", script]).unwrap();
    wait_for("exit", || liveness(&id) == Liveness::Exited);
    assert!(
        std::env::var_os("CARGO_MANIFEST_DIR").is_some(),
        "cargo sets it for tests"
    );
    assert_eq!(
        fx.log("envs"),
        "[overridden by the later file][a \"b\" c][x # y][explicit][][path]\n"
    );
}

#[test]
fn env_file_errors_name_file_and_line_never_the_value() {
    let mut fx = Fixture::new();
    let file = fx.dir.path().join("bad.env");
    fs::write(&file, "GOOD=1\n# fine\nthis-line-holds-s3cr3t-and-no-equals\n").unwrap();
    fx.env_files = vec![file.clone()];
    let error = fx.spawn("bad", &["true"]).unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, SpawnError::EnvFile { line: 3, .. }), "{error:?}");
    assert!(message.contains(&format!("{}:3:", file.display())), "{message}");
    assert!(!message.contains("s3cr3t"), "{message}");
    assert!(!format!("{error:?}").contains("s3cr3t"));

    fs::write(&file, "TOKEN=\"s3cr3t\nOTHER=1\n").unwrap();
    let message = fx.spawn("bad", &["true"]).unwrap_err().to_string();
    assert!(message.contains(":1: TOKEN: unterminated double quote"), "{message}");
    assert!(!message.contains("s3cr3t"), "{message}");

    fs::write(&file, "s3cr3t value=1\n").unwrap();
    let message = fx.spawn("bad", &["true"]).unwrap_err().to_string();
    assert!(message.contains(":1: invalid variable name"), "{message}");
    assert!(!message.contains("s3cr3t"), "{message}");

    fx.env_files = vec![fx.dir.path().join("missing.env")];
    let message = fx.spawn("bad", &["true"]).unwrap_err().to_string();
    assert!(message.contains("missing.env: does not exist"), "{message}");
}

#[test]
fn env_file_syntax() {
    let parsed = parse_env_file(
        "A=1\n  export B = two words  \nC=\"line\\nbreak\" # note\nD='$literal \\n'\nE=\nF=a#b\nexport=3\nA=last\n",
    )
    .unwrap();
    let expected = [
        ("A", "1"),
        ("B", "two words"),
        ("C", "line\nbreak"),
        ("D", "$literal \\n"),
        ("E", ""),
        ("F", "a#b"),
        ("export", "3"),
        ("A", "last"),
    ];
    let expected: Vec<(String, String)> = expected.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    assert_eq!(parsed, expected);
    assert_eq!(parse_env_file("X='open\n").unwrap_err().0, 1);
    assert_eq!(
        parse_env_file("\n\nX=\"a\" b\n").unwrap_err(),
        (3, "X: unexpected text after the closing quote".into())
    );
    assert_eq!(parse_env_file("1X=a\n").unwrap_err().0, 1);
}

#[test]
fn missing_program_and_working_dir_are_errors() {
    let fx = Fixture::new();
    let error = fx.spawn("nope", &["no-such-program-mirrorctl"]).unwrap_err();
    assert!(matches!(error, SpawnError::Command { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        "program `no-such-program-mirrorctl` not found on PATH"
    );
    let error = fx.spawn("nope", &["/nonexistent/bin/prog"]).unwrap_err();
    assert_eq!(error.to_string(), "program `/nonexistent/bin/prog` not found");
    assert!(matches!(fx.spawn("nope", &[]), Err(SpawnError::EmptyCommand)));

    let command = argv(&["true"]);
    let missing = fx.dir.path().join("no-such-dir");
    let logs = fx.logs();
    let error = spawn(&SpawnSpec {
        name: "nope",
        command: &command,
        working_dir: Some(&missing),
        env: &fx.env,
        env_files: &[],
        limits: None,
        log_dir: &logs,
        log_max_size: 0,
        log_max_files: 0,
        cgroup_procs: &[],
    })
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("working directory {}: does not exist", missing.display())
    );
    assert!(!missing.exists(), "never created");
}

#[test]
fn working_dir_is_used() {
    let fx = Fixture::new();
    let work = fx.dir.path().join("work");
    fs::create_dir(&work).unwrap();
    let command = argv(&["sh", "-c", "pwd"]);
    let logs = fx.logs();
    let id = spawn(&SpawnSpec {
        name: "pwd",
        command: &command,
        working_dir: Some(&work),
        env: &fx.env,
        env_files: &[],
        limits: None,
        log_dir: &logs,
        log_max_size: 0,
        log_max_files: 0,
        cgroup_procs: &[],
    })
    .unwrap();
    wait_for("exit", || liveness(&id) == Liveness::Exited);
    assert_eq!(fx.log("pwd").trim(), work.display().to_string());
}

#[test]
#[cfg(target_os = "linux")]
fn limits_are_applied() {
    let mut fx = Fixture::new();
    fx.limits = Some(Limits {
        cpu: None,
        memory: Some(ByteSize(1 << 30)),
        open_files: Some(64),
        processes: Some(500),
        cpu_time: Some(SpecDuration::from_millis(1500)),
        file_size: Some(ByteSize(1 << 20)),
        core_size: Some(ByteSize(0)),
    });
    let id = fx.spawn("limited", &["sleep", "30"]).unwrap();
    let limits = fs::read_to_string(format!("/proc/{}/limits", id.pid)).unwrap();
    let row = |name: &str| -> Vec<String> {
        let line = limits.lines().find(|l| l.starts_with(name)).unwrap();
        line[name.len()..]
            .split_whitespace()
            .take(2)
            .map(String::from)
            .collect()
    };
    assert_eq!(row("Max open files"), ["64", "64"]);
    assert_eq!(row("Max address space"), ["1073741824", "1073741824"]);
    assert_eq!(row("Max processes"), ["500", "500"]);
    assert_eq!(row("Max cpu time"), ["2", "2"]);
    assert_eq!(row("Max file size"), ["1048576", "1048576"]);
    assert_eq!(row("Max core file size"), ["0", "0"]);
    assert_eq!(stop(&id, "TERM", Duration::from_secs(2)), StopOutcome::Exited);
}

#[test]
#[cfg(target_os = "linux")]
fn stop_terminates_the_whole_group() {
    let fx = Fixture::new();
    let id = fx.spawn("forker", &["sh", "-c", "sleep 30 & sleep 30"]).unwrap();
    wait_for("both sleeps", || sleeps_in_group(id.pgid).len() == 2);
    let sleeps = sleeps_in_group(id.pgid);
    assert_eq!(stop(&id, "SIGTERM", Duration::from_secs(2)), StopOutcome::Exited);
    assert!(gone(id.pid));
    for pid in sleeps {
        assert!(gone(pid), "grandchild {pid} survived");
    }
    assert_eq!(liveness(&id), Liveness::Exited);
    assert_eq!(stop(&id, "SIGTERM", Duration::from_secs(2)), StopOutcome::AlreadyGone);
}

/// Live processes whose command line is exactly `args` (NUL-separated in /proc).
#[cfg(target_os = "linux")]
fn processes_running(args: &[&str]) -> Vec<i32> {
    let wanted: Vec<u8> = args.iter().flat_map(|a| [a.as_bytes(), b"\0"].concat()).collect();
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == wanted))
        .filter(|pid| !gone(*pid))
        .collect()
}

#[test]
#[cfg(target_os = "linux")]
fn stop_also_ends_descendants_that_left_the_group_but_not_other_starts() {
    let fx = Fixture::new();
    // Two escapees in sessions of their own: one stops on SIGTERM, one ignores it.
    let script = "setsid sleep 3101 & setsid sh -c 'trap \"\" TERM; sleep 3102 & wait' & sleep 3100";
    let id = fx.spawn("escaper", &["sh", "-c", script]).unwrap();
    let bystander = fx.spawn("bystander", &["sleep", "3103"]).unwrap();
    wait_for("the escapees", || {
        [&["sleep", "3101"], &["sleep", "3102"]]
            .iter()
            .all(|args| processes_running(*args).len() == 1)
    });
    let escapees: Vec<i32> = [&["sleep", "3101"], &["sleep", "3102"]]
        .iter()
        .flat_map(|args| processes_running(*args))
        .collect();
    assert!(escapees.iter().all(|pid| linux::stat(*pid).unwrap().pgrp != id.pgid));

    let started = Instant::now();
    let grace = Duration::from_millis(300);
    assert_eq!(stop(&id, "SIGTERM", grace), StopOutcome::Killed);
    assert!(started.elapsed() >= grace, "the stubborn escapee had its grace");
    assert!(gone(id.pid));
    for pid in &escapees {
        assert!(gone(*pid), "escapee {pid} survived the stop");
    }
    assert!(processes_running(&["sh", "-c", "trap \"\" TERM; sleep 3102 & wait"]).is_empty());
    assert_eq!(liveness(&bystander), Liveness::Running, "another start is not touched");
    stop(&bystander, "SIGKILL", Duration::ZERO);
}

#[test]
#[cfg(target_os = "linux")]
fn a_group_ignoring_the_signal_is_killed_after_the_grace() {
    let fx = Fixture::new();
    let id = fx.spawn("stubborn", &["sh", "-c", "trap '' TERM; sleep 30"]).unwrap();
    wait_for("the sleep", || sleeps_in_group(id.pgid).len() == 1);
    let sleep = sleeps_in_group(id.pgid)[0];
    let started = Instant::now();
    let grace = Duration::from_millis(200);
    assert_eq!(stop(&id, "SIGTERM", grace), StopOutcome::Killed);
    let took = started.elapsed();
    assert!(took >= grace && took < grace + Duration::from_secs(1), "{took:?}");
    assert!(gone(id.pid) && gone(sleep));
    assert_eq!(liveness(&id), Liveness::Exited);
}

#[test]
fn a_reused_pid_is_never_signalled() {
    let fx = Fixture::new();
    let id = fx.spawn("victim", &["sleep", "30"]).unwrap();
    let reused = ProcessIdentity {
        start_time: id.start_time + 1,
        ..id.clone()
    };
    assert_eq!(liveness(&reused), Liveness::Reused);
    assert_eq!(stop(&reused, "SIGKILL", Duration::ZERO), StopOutcome::AlreadyGone);
    let other_group = ProcessIdentity {
        pgid: id.pgid + 1,
        ..id.clone()
    };
    assert_eq!(liveness(&other_group), Liveness::Reused);
    assert_eq!(stop(&other_group, "SIGKILL", Duration::ZERO), StopOutcome::AlreadyGone);
    let rebooted = ProcessIdentity {
        boot_id: "00000000-0000-0000-0000-000000000000".into(),
        ..id.clone()
    };
    assert_eq!(liveness(&rebooted), Liveness::Exited);
    assert_eq!(stop(&rebooted, "SIGKILL", Duration::ZERO), StopOutcome::AlreadyGone);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(liveness(&id), Liveness::Running, "the live process was not touched");
    assert_eq!(stop(&id, "SIGKILL", Duration::ZERO), StopOutcome::Killed);
    assert_eq!(take_exit(&id).and_then(|e| e.signal), Some(Signal::KILL.as_raw()));
}

#[test]
fn identities_of_init_or_the_controller_are_never_signalled() {
    let own = identify(rustix::process::getpid().as_raw_nonzero().get()).unwrap();
    assert!(!signallable(&own));
    assert_eq!(liveness(&own), Liveness::Reused);
    let init = ProcessIdentity {
        pid: 1,
        pgid: 1,
        start_time: 0,
        boot_id: boot_id(),
    };
    assert!(!signallable(&init));
    assert_eq!(liveness(&init), Liveness::Reused);
    for (pid, pgid) in [(0, 0), (-1, -1), (5000, 0), (5000, -1)] {
        let bogus = ProcessIdentity {
            pid,
            pgid,
            ..init.clone()
        };
        assert!(!signallable(&bogus));
        assert_ne!(liveness(&bogus), Liveness::Running);
    }
}

#[test]
#[cfg(target_os = "linux")]
fn an_ended_process_is_exited_and_reaped() {
    let fx = Fixture::new();
    let id = fx.spawn("short", &["sh", "-c", "exit 3"]).unwrap();
    wait_for("the zombie", || linux::stat(id.pid).is_some_and(|s| s.state == b'Z'));
    assert_eq!(liveness(&id), Liveness::Exited);
    assert!(linux::stat(id.pid).is_none(), "reaped");
    let exit = take_exit(&id).unwrap();
    assert_eq!(
        exit,
        Exit {
            code: Some(3),
            signal: None
        }
    );
    assert_eq!(exit.to_string(), "exit code 3");
    assert_eq!(take_exit(&id), None, "taken once");
    assert_eq!(liveness(&id), Liveness::Exited);
    assert_eq!(stop(&id, "SIGTERM", Duration::from_secs(1)), StopOutcome::AlreadyGone);
}

#[test]
#[cfg(target_os = "linux")]
fn leftovers_of_an_ended_leader_are_stopped() {
    let fx = Fixture::new();
    let id = fx.spawn("leaver", &["sh", "-c", "sleep 30 & exit 0"]).unwrap();
    wait_for("the leader to end", || {
        linux::stat(id.pid).is_some_and(|s| s.state == b'Z')
    });
    wait_for("the sleep", || sleeps_in_group(id.pgid).len() == 1);
    let sleep = sleeps_in_group(id.pgid)[0];
    assert_eq!(liveness(&id), Liveness::Exited);
    assert!(linux::stat(id.pid).is_some(), "the zombie anchors the group");
    assert_eq!(
        take_exit(&id),
        Some(Exit {
            code: Some(0),
            signal: None
        })
    );
    assert_eq!(stop(&id, "SIGTERM", Duration::from_secs(2)), StopOutcome::Exited);
    assert!(gone(sleep));
    assert!(linux::stat(id.pid).is_none(), "reaped");
    assert_eq!(stop(&id, "SIGTERM", Duration::from_secs(2)), StopOutcome::AlreadyGone);
}

#[test]
fn portable_mechanism_checks_start_time() {
    let fx = Fixture::new();
    let id = fx.spawn("portable", &["sleep", "30"]).unwrap();
    let (state, start) = portable::ps(id.pid).unwrap().unwrap();
    assert_ne!(state, b'Z');
    let portable_id = ProcessIdentity {
        start_time: start,
        ..id.clone()
    };
    assert_eq!(portable::observe(&portable_id), Observed::Running { verified: true });
    let reused = ProcessIdentity {
        start_time: start - 5,
        ..id.clone()
    };
    assert_eq!(portable::observe(&reused), Observed::Reused);
    assert_eq!(stop(&id, "SIGTERM", Duration::from_secs(2)), StopOutcome::Exited);
    assert_eq!(portable::observe(&portable_id), Observed::Exited { anchor: false });

    assert_eq!(portable::parse_lstart("Tue Nov 24 03:35:06 2026"), Some(1_795_491_306));
    assert_eq!(portable::parse_lstart("Thu Feb 29 23:59:59 2024"), Some(1_709_251_199));
    assert_eq!(portable::parse_lstart("Thu Jan  1 00:00:00 1970"), Some(0));
    assert_eq!(portable::parse_lstart("soon"), None);
}

#[test]
#[cfg(target_os = "linux")]
fn stat_parsing_survives_odd_command_names() {
    let text = "4242 (a) b) (c) S 1 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 0 0";
    let stat = linux::parse_stat(text).unwrap();
    assert_eq!(
        stat,
        linux::Stat {
            state: b'S',
            pgrp: 4242,
            session: 4242,
            start_time: 987654
        }
    );
    assert_eq!(linux::parse_stat("12 (x) S 1 2"), None);
}

#[test]
fn rotation_keeps_max_files() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("svc.log");
    assert!(!rotate_log(&log, 10, 2).unwrap(), "nothing to rotate");
    for (path, text) in [
        (log.clone(), "current log\n"),
        (numbered(&log, 1), "one\n"),
        (numbered(&log, 2), "two\n"),
        (numbered(&log, 3), "three, from a larger setting\n"),
    ] {
        fs::write(path, text).unwrap();
    }
    assert!(!rotate_log(&log, 1000, 2).unwrap(), "below max size");
    assert!(rotate_log(&log, 10, 2).unwrap());
    assert!(!log.exists());
    assert_eq!(fs::read_to_string(numbered(&log, 1)).unwrap(), "current log\n");
    assert_eq!(fs::read_to_string(numbered(&log, 2)).unwrap(), "one\n");
    assert!(!numbered(&log, 3).exists());

    // Through spawn: a full log is rotated before the start.
    let mut fx = Fixture::new();
    fx.max_size = 8;
    fx.max_files = 2;
    for round in 0..4 {
        let id = fx.spawn("svc", &["sh", "-c", &format!("echo round {round}")]).unwrap();
        wait_for("exit", || liveness(&id) == Liveness::Exited);
    }
    let path = fx.logs().join("svc.log");
    assert_eq!(fs::read_to_string(&path).unwrap(), "round 3\n");
    assert_eq!(fs::read_to_string(numbered(&path, 1)).unwrap(), "round 2\n");
    assert_eq!(fs::read_to_string(numbered(&path, 2)).unwrap(), "round 1\n");
    assert!(!numbered(&path, 3).exists());

    // max_files 0: the old log is dropped.
    assert!(rotate_log(&path, 1, 0).unwrap());
    assert!(!path.exists() && !numbered(&path, 1).exists());
}

#[test]
fn a_running_log_is_rotated_in_place() {
    let mut fx = Fixture::new();
    fx.max_size = 0;
    let id = fx.spawn("chatty", &["sh", "-c", "echo first; sleep 30"]).unwrap();
    let path = fx.logs().join("chatty.log");
    wait_for("the first line", || fx.log("chatty") == "first\n");
    assert!(rotate_running_log(&path, 6, 2).unwrap());
    assert_eq!(fs::read_to_string(numbered(&path, 1)).unwrap(), "first\n");
    assert_eq!(fs::metadata(&path).unwrap().len(), 0);
    assert_eq!(liveness(&id), Liveness::Running);
    assert_eq!(stop(&id, "SIGKILL", Duration::ZERO), StopOutcome::Killed);
}

#[test]
fn a_flooded_log_keeps_only_its_last_max_size_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flood.log");
    fs::write(&path, "0123456789".repeat(10)).unwrap();
    assert!(rotate_running_log(&path, 15, 1).unwrap());
    assert_eq!(fs::read_to_string(numbered(&path, 1)).unwrap(), "567890123456789");
    assert_eq!(fs::metadata(&path).unwrap().len(), 0);
}

#[test]
fn spawn_spec_debug_shows_no_values() {
    let mut env = BTreeMap::new();
    env.insert("API_TOKEN".to_string(), "s3cr3t".to_string());
    let command = argv(&["prog", "--flag"]);
    let spec = SpawnSpec {
        name: "x",
        command: &command,
        working_dir: None,
        env: &env,
        env_files: &[],
        limits: None,
        log_dir: Path::new("/tmp"),
        log_max_size: 0,
        log_max_files: 0,
        cgroup_procs: &[],
    };
    let text = format!("{spec:?}");
    assert!(text.contains("API_TOKEN") && !text.contains("s3cr3t"), "{text}");
}
