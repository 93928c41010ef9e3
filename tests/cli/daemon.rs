//! `mirrorctl run`: the real daemon, real commits, real processes.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// A running `mirrorctl run`; SIGKILLed if the test did not stop it.
pub(crate) struct Daemon {
    pub(crate) child: Child,
    log: PathBuf,
}

impl Daemon {
    pub(crate) fn start(sandbox: &Sandbox, extra: &[&str]) -> Daemon {
        let log = unique(sandbox.root().join("daemon"));
        let mut args = vec!["run"];
        args.extend_from_slice(extra);
        let child = sandbox
            .cmd(&args)
            .env("MIRROR_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Daemon { child, log }
    }

    /// Waits until the daemon answers on its socket.
    pub(crate) fn ready(self, sandbox: &Sandbox) -> Daemon {
        let socket = sandbox.root().join("state/control.sock");
        // This daemon answers (a status without one says `"daemon": null`; a socket left by
        // an earlier daemon refuses connections), and its startup pass is over (a status read
        // while a pass runs says so in `pass_running`).
        let pid = u64::from(self.child.id());
        wait_for("the daemon's socket", Duration::from_secs(20), || {
            socket.exists()
                && serde_json::from_str::<serde_json::Value>(&status(sandbox).stdout)
                    .is_ok_and(|json| json["daemon"].as_u64() == Some(pid) && json["pass_running"].is_null())
        });
        self
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub(crate) fn signal(&self, signal: &str) {
        std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .unwrap();
    }

    /// Waits for the daemon to exit; its exit code.
    pub(crate) fn wait(mut self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "the daemon did not exit:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn unique(path: PathBuf) -> PathBuf {
    let mut n = 0;
    loop {
        let candidate = path.with_extension(format!("{n}.log"));
        if !candidate.exists() {
            return candidate;
        }
        n += 1;
    }
}

pub(crate) fn service(name: &str, command: &str, extra: &str) -> String {
    format!(
        "apiVersion: mirror.os/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  command: [\"sh\", \"-c\", {command:?}]\n  stop: {{grace: 2s}}\n{extra}"
    )
}

pub(crate) fn status(sandbox: &Sandbox) -> Run {
    sandbox.run(&["status", "--output", "json"])
}

/// A resource of a `status --output json` answer, by name.
pub(crate) fn resource_of(json: &serde_json::Value, name: &str) -> Option<serde_json::Value> {
    json["resources"]
        .as_array()?
        .iter()
        .find(|r| r["name"] == name)
        .cloned()
}

/// (pid, restarts, health) of a service, as `mirrorctl status` says.
pub(crate) fn service_state(sandbox: &Sandbox, name: &str) -> Option<(Option<i64>, u64, String)> {
    let run = status(sandbox);
    let json: serde_json::Value = serde_json::from_str(&run.stdout).ok()?;
    let r = resource_of(&json, name)?;
    Some((
        r["pid"].as_i64(),
        r["restarts"].as_u64().unwrap_or(0),
        r["health"].as_str().unwrap_or("").to_string(),
    ))
}

pub(crate) fn running_pid(sandbox: &Sandbox, name: &str) -> Option<i64> {
    service_state(sandbox, name).and_then(|(pid, _, _)| pid)
}

pub(crate) fn kill9(pid: i64) {
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
}

pub(crate) fn alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| stat.rsplit(')').next().unwrap_or("").split_whitespace().next() != Some("Z"))
        .unwrap_or(false)
}

/// Processes of this sandbox that run `sleep` (the services of these tests).
fn service_processes(sandbox: &Sandbox) -> usize {
    working_in(sandbox.root())
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| c.starts_with(b"sleep"))
                .unwrap_or(false)
        })
        .count()
}

#[test]
fn a_commit_converges_with_no_other_command() {
    let sandbox = Sandbox::new();
    let _cleanup = Cleanup(sandbox.root().to_path_buf());
    sandbox.write("a.yaml", service("a", "exec sleep 4000", ""));
    sandbox.commit("a");
    let daemon = Daemon::start(&sandbox, &[]).ready(&sandbox);
    wait_for("a running", Duration::from_secs(10), || {
        running_pid(&sandbox, "a").is_some()
    });

    sandbox.write("b.yaml", service("b", "exec sleep 4000", ""));
    sandbox.commit("b");
    wait_for("b started by the commit alone", Duration::from_secs(10), || {
        running_pid(&sandbox, "b").is_some()
    });
    // An edit that is not committed changes nothing.
    sandbox.write("c.yaml", service("c", "exec sleep 4000", ""));
    std::thread::sleep(Duration::from_millis(500));
    assert!(service_state(&sandbox, "c").is_none_or(|(pid, _, _)| pid.is_none()));
    sandbox.remove("c.yaml");
    // Removing a service from the desired state stops it.
    let b = running_pid(&sandbox, "b").unwrap();
    sandbox.remove("b.yaml");
    sandbox.commit("no b");
    wait_for("b stopped by the commit", Duration::from_secs(10), || !alive(b));
    assert!(daemon.log().contains("trigger=\"commit\""), "{}", daemon.log());
    assert_eq!(service_processes(&sandbox), 1);
}

#[test]
fn a_killed_service_is_restarted_at_once_and_a_crash_loop_backs_off() {
    let sandbox = Sandbox::new();
    let _cleanup = Cleanup(sandbox.root().to_path_buf());
    sandbox.write("a.yaml", service("a", "exec sleep 4000", ""));
    sandbox.write(
        "crash.yaml",
        service("crash", "exit 3", "  backoff: {initial: 1s, max: 2s, multiplier: 2}\n"),
    );
    sandbox.commit("a and a crasher");
    let daemon = Daemon::start(&sandbox, &[]).ready(&sandbox);
    wait_for("a running", Duration::from_secs(10), || {
        running_pid(&sandbox, "a").is_some()
    });
    let first = running_pid(&sandbox, "a").unwrap();
    kill9(first);
    wait_for("a replaced", Duration::from_secs(5), || {
        running_pid(&sandbox, "a").is_some_and(|pid| pid != first)
    });
    let (_, restarts, health) = service_state(&sandbox, "a").unwrap();
    assert_eq!((restarts, health.as_str()), (1, "Healthy"));
    assert!(daemon.log().contains("trigger=\"child-exit\""), "{}", daemon.log());

    // The crasher: restarted at once, then after 1 s, then every 2 s: a few restarts in 3 s,
    // never a spin.
    std::thread::sleep(Duration::from_secs(3));
    let (_, restarts, _) = service_state(&sandbox, "crash").unwrap();
    assert!(
        (2..=4).contains(&restarts),
        "restarts in 3 s: {restarts}\n{}",
        daemon.log()
    );
    let report = sandbox.run(&["drift", "report", "--output", "json"]);
    assert_eq!(report.code, 2, "{report:?}");
    let items = report.json()["items"].as_array().unwrap().clone();
    assert!(
        items.iter().any(|i| i["name"] == "crash"
            && i["detail"]
                .as_str()
                .unwrap()
                .contains("CrashLoopBackOff: exited with status 3")),
        "{items:?}"
    );
}

#[test]
fn a_new_daemon_adopts_running_services_after_kill_9() {
    let sandbox = Sandbox::new();
    let _cleanup = Cleanup(sandbox.root().to_path_buf());
    for name in ["a", "b", "c"] {
        sandbox.write(&format!("{name}.yaml"), service(name, "exec sleep 4000", ""));
    }
    sandbox.commit("three");
    let daemon = Daemon::start(&sandbox, &[]).ready(&sandbox);
    wait_for("three running", Duration::from_secs(10), || {
        ["a", "b", "c"].iter().all(|n| running_pid(&sandbox, n).is_some())
    });
    let before: Vec<i64> = ["a", "b", "c"]
        .iter()
        .map(|n| running_pid(&sandbox, n).unwrap())
        .collect();
    daemon.signal("KILL");
    assert_eq!(daemon.wait(), -1);

    let again = Daemon::start(&sandbox, &[]).ready(&sandbox);
    std::thread::sleep(Duration::from_millis(500));
    for (name, pid) in ["a", "b", "c"].iter().zip(&before) {
        let (now, restarts, health) = service_state(&sandbox, name).unwrap();
        assert_eq!((now, restarts, health.as_str()), (Some(*pid), 0, "Healthy"), "{name}");
    }
    assert_eq!(service_processes(&sandbox), 3, "no duplicates");
    // Adopted processes are watched too: killing one restarts it.
    kill9(before[0]);
    wait_for("adopted a replaced", Duration::from_secs(5), || {
        running_pid(&sandbox, "a").is_some_and(|pid| pid != before[0])
    });
    // SIGTERM ends the daemon and leaves the services running.
    again.signal("TERM");
    assert_eq!(again.wait(), 0);
    assert!(alive(before[1]) && alive(before[2]));
    assert!(!sandbox.root().join("state/control.sock").exists());

    // --stop-services-on-exit stops them.
    let last = Daemon::start(&sandbox, &["--stop-services-on-exit"]).ready(&sandbox);
    let restarts_of = |json: &serde_json::Value| -> Vec<u64> {
        json["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["restarts"].as_u64().unwrap())
            .collect()
    };
    let restarts_before = restarts_of(&status(&sandbox).json());
    last.signal("TERM");
    assert_eq!(last.wait(), 0);
    assert!(!alive(before[1]) && !alive(before[2]));
    assert_eq!(service_processes(&sandbox), 0);
    // Status says they were stopped on purpose, not that they failed.
    let json = status(&sandbox).json();
    for resource in json["resources"].as_array().unwrap() {
        assert_eq!(resource["health"], "Stopped", "{resource}");
        assert!(
            resource["detail"].as_str().unwrap().contains("--stop-services-on-exit"),
            "{resource}"
        );
    }
    assert_eq!(restarts_of(&json), restarts_before, "RESTARTS kept through the stop");
    assert!(restarts_before.iter().any(|r| *r > 0), "{restarts_before:?}");
    // The next pass starts them again, the count going on.
    assert_eq!(sandbox.run(&["reconcile"]).code, 0);
    let json = status(&sandbox).json();
    assert_eq!(json["resources"][0]["health"], "Healthy");
    assert_eq!(restarts_of(&json), restarts_before, "{json}");
}

/// After a reboot (or a crash) on a HEAD that cannot be applied, the commit that was in force
/// stays in force: adopted services are still restarted, and the report says why HEAD is not.
#[test]
fn a_daemon_started_on_a_broken_head_keeps_the_commit_that_was_in_force() {
    let sandbox = Sandbox::new();
    let _cleanup = Cleanup(sandbox.root().to_path_buf());
    sandbox.write("a.yaml", service("a", "exec sleep 4000", ""));
    let first = sandbox.commit("a");
    let daemon = Daemon::start(&sandbox, &[]).ready(&sandbox);
    wait_for("a running", Duration::from_secs(10), || {
        running_pid(&sandbox, "a").is_some()
    });
    let before = running_pid(&sandbox, "a").unwrap();
    daemon.signal("TERM");
    assert_eq!(daemon.wait(), 0);
    let recorded = || std::fs::read_to_string(sandbox.root().join("state/in-force-commit")).unwrap();
    assert_eq!(recorded().trim(), first);
    // A one-shot reconcile records what it applies too (or a later daemon would roll it back).
    sandbox.write("c.yaml", service("c", "exec sleep 4000", ""));
    let good = sandbox.commit("c");
    let run = sandbox.run(&["reconcile"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(recorded().trim(), good);
    let c = running_pid(&sandbox, "c").unwrap();

    // HEAD breaks while no daemon runs; the next daemon starts on it.
    sandbox.write(
        "b.yaml",
        "apiVersion: mirror.os/v1\nkind: Service\nmetadata: {name: b}\nspec: {command: 7}\n",
    );
    sandbox.commit("broken");
    let again = Daemon::start(&sandbox, &[]).ready(&sandbox);
    let kept = format!(
        "commit {}, in force when the daemon last ran, stays in force",
        &good[..12]
    );
    let source_problems = || -> Vec<String> {
        let list = sandbox.run(&["drift", "list", "--output", "json"]).json();
        let reports = list["reports"].as_array().cloned().unwrap_or_default();
        reports
            .iter()
            .flat_map(|r| {
                let id = r["id"].as_str().unwrap_or_default().to_string();
                let shown = sandbox.run(&["drift", "show", &id, "--output", "json"]).json();
                shown["items"].as_array().cloned().unwrap_or_default()
            })
            .filter(|i| i["drift"] == "invalid_source")
            .map(|i| i["detail"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    wait_for("the startup report", Duration::from_secs(10), || {
        source_problems().iter().any(|d| d.contains(&kept))
    });
    let problems = source_problems();
    assert!(
        problems
            .iter()
            .any(|d| d.contains(&kept) && d.contains("b.yaml") && d.starts_with("HEAD is not applied")),
        "{problems:#?}"
    );
    assert_eq!(running_pid(&sandbox, "a"), Some(before), "adopted, not restarted");
    // status compares with the commit in force and says HEAD is not applied.
    let status = sandbox.run(&["status", "--output", "json"]);
    assert_eq!(status.code, 0, "{status:?}");
    let status = status.json();
    assert_eq!(status["daemon"], again.pid(), "{status:#}");
    assert_eq!(status["commit"], good.as_str(), "{status:#}");
    assert_eq!(status["kept_in_force"], true, "{status:#}");
    assert!(
        status["source_error"].as_str().unwrap().contains("b.yaml"),
        "{status:#}"
    );
    let resources: Vec<(String, String)> = status["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["health"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        resources,
        [
            ("a".to_string(), "Healthy".to_string()),
            ("c".to_string(), "Healthy".to_string())
        ],
        "b is not in force: {status:#}"
    );
    let text = sandbox.run(&["status"]).stdout;
    assert!(
        text.starts_with("HEAD is not applied (") && text.contains(&format!("commit {} stays in force", &good[..12])),
        "{text}"
    );
    kill9(before);
    wait_for("a replaced", Duration::from_secs(5), || {
        running_pid(&sandbox, "a").is_some_and(|pid| pid != before)
    });
    assert_eq!(
        running_pid(&sandbox, "c"),
        Some(c),
        "the one-shot's commit stays in force"
    );
    assert_eq!(service_processes(&sandbox), 2, "no duplicate, and b never started");
    again.signal("TERM");
    assert_eq!(again.wait(), 0);
}

#[test]
fn a_service_is_progressing_until_its_probe_first_answers() {
    let sandbox = Sandbox::new();
    let _cleanup = Cleanup(sandbox.root().to_path_buf());
    let ready = sandbox.root().join("ready");
    sandbox.write(
        "a.yaml",
        service(
            "a",
            "exec sleep 4000",
            &format!(
                "  health: {{exec: {{command: [test, -e, {:?}]}}, interval: 100ms, failureThreshold: 40}}\n",
                ready.display().to_string()
            ),
        ),
    );
    sandbox.write("b.yaml", service("b", "exec sleep 4000", ""));
    sandbox.commit("a with a probe, b without");
    let daemon = Daemon::start(&sandbox, &[]).ready(&sandbox);
    wait_for("a and b running", Duration::from_secs(10), || {
        running_pid(&sandbox, "a").is_some() && running_pid(&sandbox, "b").is_some()
    });
    // The start's verification gave up (4 s: interval x threshold); the daemon's probes fail
    // too, still below their threshold: started, not proven, not failed.
    let health = |name: &str| service_state(&sandbox, name).map(|(_, _, health)| health);
    assert_eq!(health("a").as_deref(), Some("Progressing"));
    assert_eq!(health("b").as_deref(), Some("Healthy"), "no probe: running is healthy");
    let text = sandbox.run(&["status"]).stdout;
    assert!(
        text.lines().any(|l| l.contains(" a ") && l.contains("Progressing")),
        "{text}"
    );
    std::fs::write(&ready, "").unwrap();
    wait_for("a proven healthy", Duration::from_secs(5), || {
        health("a").as_deref() == Some("Healthy")
    });
    daemon.signal("TERM");
    assert_eq!(daemon.wait(), 0);
}

#[test]
fn status_answers_at_once_while_a_pass_verifies_a_slow_start() {
    let sandbox = Sandbox::new();
    let _cleanup = Cleanup(sandbox.root().to_path_buf());
    let ready = sandbox.root().join("ready");
    // The startup pass verifies slow's start: it waits for its probe, up to its 60 s start period.
    sandbox.write(
        "slow.yaml",
        service(
            "slow",
            "exec sleep 4000",
            &format!(
                "  health: {{exec: {{command: [test, -e, {:?}]}}, interval: 100ms, startPeriod: 60s}}\n",
                ready.display().to_string()
            ),
        ),
    );
    sandbox.write("quick.yaml", service("quick", "exec sleep 4000", ""));
    sandbox.commit("a service slow to prove itself, and a quick one");
    let daemon = Daemon::start(&sandbox, &[]);
    let pid = u64::from(daemon.child.id());
    let mut seen = None;
    wait_for("this daemon answering status", Duration::from_secs(20), || {
        let asked = Instant::now();
        let run = status(&sandbox);
        let took = asked.elapsed();
        let json = serde_json::from_str::<serde_json::Value>(&run.stdout).unwrap_or_default();
        // The pass has started the slow service (on a slow machine the first answers come before).
        let started = resource_of(&json, "slow").is_some_and(|r| r["pid"].is_i64());
        let answered = json["daemon"].as_u64() == Some(pid)
            && json["resources"].as_array().is_some_and(|r| r.len() == 2)
            && started;
        if answered {
            seen = Some((json, took));
        }
        answered
    });
    let (json, took) = seen.unwrap();
    assert!(took < Duration::from_secs(2), "status took {took:?}");
    assert_eq!(json["pass_running"]["trigger"], "startup", "{json:#}");
    let resource = |json: &serde_json::Value, name: &str| resource_of(json, name).unwrap_or_default();
    // What the pass has done so far: slow started, its probe not answered yet.
    let slow = resource(&json, "slow");
    assert!(slow["pid"].is_i64(), "{json:#}");
    assert_eq!(slow["health"], "Progressing", "{json:#}");
    let text = sandbox.run(&["status"]).stdout;
    assert!(text.contains("a pass is running (startup, for "), "{text}");
    // Once the probe answers, the pass ends and status says so.
    std::fs::write(&ready, "").unwrap();
    wait_for("the pass over, slow healthy", Duration::from_secs(10), || {
        let json = serde_json::from_str::<serde_json::Value>(&status(&sandbox).stdout).unwrap_or_default();
        json["pass_running"].is_null()
            && resource(&json, "slow")["health"] == "Healthy"
            && resource(&json, "quick")["health"] == "Healthy"
    });
    daemon.signal("TERM");
    assert_eq!(daemon.wait(), 0);
}

#[test]
fn one_writer_a_second_daemon_refuses_and_commands_ask_the_daemon() {
    let sandbox = Sandbox::new();
    let _cleanup = Cleanup(sandbox.root().to_path_buf());
    sandbox.write("a.yaml", service("a", "exec sleep 4000", ""));
    sandbox.commit("a");
    let daemon = Daemon::start(&sandbox, &[]).ready(&sandbox);

    let socket = sandbox.root().join("state/control.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");

    let second = sandbox.run(&["run"]);
    assert_eq!(second.code, 1, "{second:?}");
    assert!(
        second
            .stderr
            .contains(&format!("another mirrorctl daemon (pid {}) already runs", daemon.pid())),
        "{}",
        second.stderr
    );

    // Commands are answered by the daemon (status names it), with their usual exit codes.
    let text = sandbox.run(&["status"]);
    assert!(
        text.stdout.contains(&format!("daemon pid {}", daemon.pid())),
        "{}",
        text.stdout
    );
    sandbox.write("b.yaml", service("b", "exec sleep 4000", ""));
    let preview = sandbox.run(&["reconcile", "--dry-run", "--worktree"]);
    assert_eq!(preview.code, 2, "{preview:?}");
    assert!(
        preview.stdout.contains("+ Service/b: new in the desired state"),
        "{}",
        preview.stdout
    );
    let apply = sandbox.run(&["reconcile"]);
    assert_eq!(apply.code, 0, "{apply:?}");
    assert!(running_pid(&sandbox, "b").is_none(), "b is not committed");
    let other_ref = sandbox.run(&["reconcile", "--ref", "HEAD~0"]);
    assert_eq!(other_ref.code, 1, "{other_ref:?}");
    assert!(
        other_ref.stderr.contains("can only be a --dry-run"),
        "{}",
        other_ref.stderr
    );
    let report = sandbox.run(&["drift", "report"]);
    assert_eq!(report.code, 0, "{report:?}");
    assert!(report.stdout.contains("no drift"), "{}", report.stdout);
    assert!(daemon.log().contains("trigger=\"control\""), "{}", daemon.log());
}

#[test]
fn scheduled_drift_reports_land_in_the_store_and_as_markdown() {
    let sandbox = Sandbox::new();
    let _cleanup = Cleanup(sandbox.root().to_path_buf());
    sandbox.write("a.yaml", service("a", "exec sleep 4000", ""));
    sandbox.write(
        "controller.yaml",
        "apiVersion: mirror.os/v1\nkind: Controller\nmetadata: {name: main}\nspec:\n  driftReports: {cron: \"* * * * * *\"}\n",
    );
    sandbox.commit("a and reports every second");
    let _daemon = Daemon::start(&sandbox, &[]).ready(&sandbox);
    let reports = sandbox.root().join("state/reports");
    wait_for("two Markdown reports", Duration::from_secs(10), || {
        std::fs::read_dir(&reports).map(|d| d.count() >= 2).unwrap_or(false)
    });
    let newest = std::fs::read_dir(&reports)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    let text = std::fs::read_to_string(&newest).unwrap();
    assert!(text.starts_with("# Drift report for "), "{text}");
    assert!(text.contains("Observe-only: yes"), "{text}");
    let list = sandbox.run(&["drift", "list", "--output", "json"]);
    assert!(list.stdout.matches("\"id\"").count() >= 2, "{}", list.stdout);
}

#[test]
fn metrics_and_healthz_are_served() {
    let sandbox = Sandbox::new();
    let _cleanup = Cleanup(sandbox.root().to_path_buf());
    sandbox.write("a.yaml", service("a", "exec sleep 4000", ""));
    // An agent runs as a process too; it is not a desired service (the gauges said 2 of 1).
    sandbox.write(
        "agent.yaml",
        format!("apiVersion: mirror.os/v1\nkind: Policy\nmetadata: {{name: p}}\nspec: {{}}\n---\napiVersion: mirror.os/v1\nkind: Agent\nmetadata: {{name: helper}}\nspec:\n  command: [sleep, \"4001\"]\n  policy: p\n---\napiVersion: mirror.os/v1\nkind: Controller\nmetadata: {{name: main}}\nspec:\n  bus: {{address: \"127.0.0.1:{}\"}}\n", free_port()),
    );
    sandbox.commit("a, and an agent");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let daemon = Daemon::start(&sandbox, &["--metrics-addr", &addr, "--log-format", "json"]).ready(&sandbox);
    wait_for("a and the agent running", Duration::from_secs(10), || {
        running_pid(&sandbox, "a").is_some() && running_pid(&sandbox, "helper").is_some()
    });
    kill9(running_pid(&sandbox, "a").unwrap());
    wait_for("a restarted", Duration::from_secs(5), || {
        service_state(&sandbox, "a").is_some_and(|(pid, restarts, _)| pid.is_some() && restarts == 1)
    });
    let get = |path: &str| {
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    };
    let health = get("/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let metrics = get("/metrics");
    for expected in [
        "mirrorctl_reconcile_total{",
        "trigger=\"startup\"",
        "mirrorctl_service_restarts_total{service=\"a\"} 1",
        "mirrorctl_services_running 1\n",
        "mirrorctl_services_desired 1\n",
        "mirrorctl_reconcile_duration_seconds_bucket",
    ] {
        assert!(metrics.contains(expected), "{expected} missing:\n{metrics}");
    }
    // JSON logs: one object per line.
    let log = daemon.log();
    let first = log.lines().next().unwrap();
    let parsed: serde_json::Value = serde_json::from_str(first).unwrap_or_else(|e| panic!("{e}: {first}"));
    assert_eq!(parsed["level"], "INFO");
    // A service a person stopped is not desired running: no gap for an alert to fire on.
    assert_eq!(sandbox.run(&["stop", "a"]).code, 0);
    wait_for("the gauges without a", Duration::from_secs(5), || {
        let metrics = get("/metrics");
        metrics.contains("mirrorctl_services_running 0\n") && metrics.contains("mirrorctl_services_desired 0\n")
    });
}

/// Runs git with an isolated configuration.
fn git(sandbox: &Sandbox, args: &[&str]) {
    let output = std::process::Command::new("git")
        .args(args)
        .current_dir(sandbox.repo())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", sandbox.root())
        .env("GIT_AUTHOR_NAME", "Alice")
        .env("GIT_AUTHOR_EMAIL", "alice@example.com")
        .env("GIT_COMMITTER_NAME", "Alice")
        .env("GIT_COMMITTER_EMAIL", "alice@example.com")
        .output()
        .unwrap();
    assert!(output.status.success(), "git {args:?}: {output:?}");
}

#[test]
fn an_unsigned_commit_is_refused_under_require_signed() {
    let sandbox = Sandbox::new();
    let _cleanup = Cleanup(sandbox.root().to_path_buf());
    let key = sandbox.root().join("key");
    let keygen = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "alice", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(keygen.status.success(), "{keygen:?}");
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let allowed = sandbox.root().join("allowed_signers");
    std::fs::write(&allowed, format!("alice@example.com namespaces=\"git\" {public}")).unwrap();
    let signing = key.with_extension("pub").display().to_string();
    let signed = |message: &str| {
        git(&sandbox, &["add", "-A"]);
        git(
            &sandbox,
            &[
                "-c",
                "gpg.format=ssh",
                "-c",
                &format!("user.signingkey={signing}"),
                "commit",
                "-q",
                "-S",
                "-m",
                message,
            ],
        );
    };
    sandbox.write("a.yaml", service("a", "exec sleep 4000", ""));
    signed("a, signed");
    let allowed_arg = allowed.display().to_string();
    let daemon = Daemon::start(&sandbox, &["--require-signed", "--allowed-signers", &allowed_arg]).ready(&sandbox);
    wait_for("a running (signed)", Duration::from_secs(10), || {
        running_pid(&sandbox, "a").is_some()
    });

    sandbox.write("b.yaml", service("b", "exec sleep 4000", ""));
    git(&sandbox, &["add", "-A"]);
    git(&sandbox, &["commit", "-q", "-m", "b, unsigned"]);
    wait_for("the unsigned commit refused", Duration::from_secs(10), || {
        daemon.log().contains("untrusted commit refused")
    });
    let report = sandbox.run(&["drift", "report", "--output", "json"]);
    let items = report.json()["items"].as_array().unwrap().clone();
    let untrusted = items
        .iter()
        .find(|i| i["drift"] == "untrusted_source")
        .unwrap_or_else(|| panic!("{items:?}"));
    assert!(
        untrusted["detail"].as_str().unwrap().contains("stays in force"),
        "{untrusted}"
    );
    assert!(running_pid(&sandbox, "b").is_none(), "b came in an unsigned commit");
    assert!(running_pid(&sandbox, "a").is_some());
    // Status names the commit in force, HEAD, and why HEAD is not in force; it does not claim
    // that the unsigned commit's changes are on their way.
    let head = git2::Repository::open(sandbox.repo())
        .unwrap()
        .head()
        .unwrap()
        .peel_to_commit()
        .unwrap()
        .id()
        .to_string();
    let json = status(&sandbox).json();
    assert_eq!(json["kept_in_force"], true, "{json}");
    assert_eq!(json["head"], head.as_str(), "{json}");
    assert_ne!(json["commit"], head.as_str(), "{json}");
    assert!(json["source_error"].as_str().unwrap().contains("not trusted"), "{json}");
    let names: Vec<&str> = json["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a"], "b is not shown as pending: {json}");
    let text = sandbox.run(&["status"]).stdout;
    assert!(
        text.contains(&format!("HEAD (commit {}) is not applied", &head[..12])) && text.contains("stays in force"),
        "{text}"
    );

    // A signed commit on top is applied.
    sandbox.write("c.yaml", service("c", "exec sleep 4000", ""));
    signed("c, signed");
    wait_for("b and c running (signed)", Duration::from_secs(10), || {
        running_pid(&sandbox, "b").is_some() && running_pid(&sandbox, "c").is_some()
    });
}

fn launch_agent(name: &str, command: &str, extra: &str) -> String {
    format!(
        "apiVersion: mirror.os/v1\nkind: LaunchAgent\nmetadata: {{name: {name}}}\nspec:\n  label: ai.test.{name}\n  command: [\"sh\", \"-c\", {command:?}]\n{extra}"
    )
}

/// A launch agent of `status --output json`, by name.
fn agent_state(sandbox: &Sandbox, name: &str) -> Option<serde_json::Value> {
    let json: serde_json::Value = serde_json::from_str(&status(sandbox).stdout).ok()?;
    json["launch_agents"]
        .as_array()?
        .iter()
        .find(|a| a["name"] == name)
        .cloned()
}

fn processes_running(command_line: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .filter(|c| String::from_utf8_lossy(c).replace('\0', " ").trim_end() == command_line)
        .count()
}

#[test]
fn launch_agents_run_on_schedule_and_a_timeout_kills_the_whole_run() {
    let sandbox = Sandbox::new();
    let _cleanup = Cleanup(sandbox.root().to_path_buf());
    sandbox.write(
        "tick.yaml",
        launch_agent("tick", "echo tick", "  schedule: {every: 1s}\n"),
    );
    sandbox.write(
        "slow.yaml",
        launch_agent(
            "slow",
            "sleep 4101 & sleep 4102",
            "  runAtLoad: true\n  timeout: 1s\n  stop: {grace: 1s}\n",
        ),
    );
    sandbox.commit("two launch agents");
    let daemon = Daemon::start(&sandbox, &[]).ready(&sandbox);

    wait_for("the slow run with its child", Duration::from_secs(10), || {
        processes_running("sleep 4101") == 1 && processes_running("sleep 4102") == 1
    });
    wait_for("the timeout to end the run", Duration::from_secs(10), || {
        agent_state(&sandbox, "slow").is_some_and(|a| a["lastRun"]["outcome"] == "timeout")
    });
    assert_eq!(processes_running("sleep 4101"), 0, "the run's child was killed too");
    assert_eq!(processes_running("sleep 4102"), 0);

    let log = sandbox.root().join("state/logs/tick.log");
    wait_for("two scheduled runs", Duration::from_secs(10), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.matches("tick").count() >= 2)
    });
    let tick = agent_state(&sandbox, "tick").unwrap();
    assert_eq!(tick["lastRun"]["exitCode"], 0, "{tick}");
    assert_eq!(tick["lastRun"]["outcome"], "ok", "{tick}");
    let text = sandbox.run(&["status"]).stdout;
    assert!(text.contains("LAUNCH AGENT") && text.contains("every 1s"), "{text}");

    // Leaving the desired state unschedules it.
    sandbox.remove("tick.yaml");
    sandbox.commit("no tick");
    wait_for("tick gone", Duration::from_secs(10), || {
        agent_state(&sandbox, "tick").is_none()
    });
    let runs = std::fs::read_to_string(&log).unwrap().matches("tick").count();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(std::fs::read_to_string(&log).unwrap().matches("tick").count(), runs);
    assert!(daemon.log().contains("launch agent run"), "{}", daemon.log());
}

pub(crate) fn post(port: u16, path: &str, body: &str) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200"),
        "{answer}"
    );
}

/// The route of an agent, as `status --output json` says: (provider, degraded).
pub(crate) fn route_of(sandbox: &Sandbox, agent: &str) -> Option<(String, bool)> {
    let json: serde_json::Value = serde_json::from_str(&status(sandbox).stdout).ok()?;
    let route = json["routes"].as_array()?.iter().find(|r| r["agent"] == agent)?.clone();
    Some((route["provider"].as_str()?.to_string(), route["degraded"].as_bool()?))
}

/// The agent is routed to `provider`, not degraded, and every provider named has answered a
/// probe (an agent's first route is decided before any probe, and a provider still binding its
/// port can fail its first probes and move the agent).
pub(crate) fn settled_on(sandbox: &Sandbox, agent: &str, provider: &str, probed: &[&str]) -> bool {
    let Ok(json) = serde_json::from_str::<serde_json::Value>(&status(sandbox).stdout) else {
        return false;
    };
    let routed = json["routes"]
        .as_array()
        .and_then(|routes| routes.iter().find(|r| r["agent"] == agent))
        .is_some_and(|r| r["provider"] == provider && r["degraded"] == false && r["probed"] == true);
    let healthy = |name: &&str| {
        json["providers"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == *name))
            .is_some_and(|p| p["healthy"] == true && p["healthy_since_ms"].is_i64())
    };
    routed && probed.iter().all(healthy)
}

#[test]
fn a_hung_provider_fails_agents_over_restarts_its_service_and_fails_back() {
    // The Services declare no probe of their own: the provider's verdict restarts them.
    let sandbox = Sandbox::new();
    let _cleanup = Cleanup(sandbox.root().to_path_buf());
    let fake = project_path("scripts/fake-llm").display().to_string();
    let (primary, backup) = (free_port(), free_port());
    let llm = |name: &str, port: u16| {
        format!(
            "apiVersion: mirror.os/v1\nkind: Service\nmetadata: {{name: llm-{name}}}\nspec:\n  command: [python3, {fake:?}, --port, \"{port}\", --name, {name}]\n  stop: {{grace: 1s}}\n---\napiVersion: mirror.os/v1\nkind: ModelProvider\nmetadata: {{name: {name}}}\nspec:\n  api: ollama\n  url: http://127.0.0.1:{port}\n  service: llm-{name}\n  models: [\"llama3.2:1b\", \"qwen2.5:0.5b\"]\n  health: {{interval: 200ms, timeout: 1s, failureThreshold: 2}}\n"
        )
    };
    sandbox.write("primary.yaml", llm("primary", primary));
    sandbox.write("backup.yaml", llm("backup", backup));
    sandbox.write(
        "agent.yaml",
        "apiVersion: mirror.os/v1\nkind: Policy\nmetadata: {name: default}\nspec: {}\n---\napiVersion: mirror.os/v1\nkind: Agent\nmetadata: {name: scribe}\nspec:\n  command: [\"sleep\", \"4200\"]\n  policy: default\n  model:\n    primary: {provider: primary, model: \"llama3.2:1b\"}\n    fallbacks: [{provider: backup, model: \"llama3.2:1b\"}]\n    failbackAfter: 2s\n",
    );
    let bus = free_port();
    sandbox.write(
        "controller.yaml",
        format!("apiVersion: mirror.os/v1\nkind: Controller\nmetadata: {{name: main}}\nspec:\n  bus: {{address: \"127.0.0.1:{bus}\"}}\n"),
    );
    sandbox.commit("two local models and an agent");
    let daemon = Daemon::start(&sandbox, &[]).ready(&sandbox);
    wait_for(
        "the agent on its primary, both probed healthy",
        Duration::from_secs(20),
        || settled_on(&sandbox, "scribe", "primary", &["primary", "backup"]),
    );
    let llm_pid = running_pid(&sandbox, "llm-primary").unwrap();

    // The bus: the agent's token (handed over in the state dir), the routed model answers.
    let token_path = sandbox.root().join("state/agents/scribe/bus-token");
    wait_for("the agent's bus token", Duration::from_secs(5), || token_path.exists());
    assert_eq!(
        std::fs::metadata(&token_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let token = std::fs::read_to_string(&token_path).unwrap();
    let chat = |token: &str| {
        let body = r#"{"model": "anything", "messages": [{"role": "user", "content": "hi"}], "stream": false}"#;
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", bus)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(
            stream,
            "POST /api/chat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    };
    wait_for(
        "the bus and both model servers listening",
        Duration::from_secs(10),
        || {
            [bus, primary, backup]
                .iter()
                .all(|port| std::net::TcpStream::connect(("127.0.0.1", *port)).is_ok())
        },
    );
    let answer = chat(&token);
    assert!(answer.contains("[primary]"), "{answer}");
    assert!(
        answer.to_lowercase().contains("x-mirror-route: primary/llama3.2:1b"),
        "{answer}"
    );
    assert!(chat("not-a-token").starts_with("HTTP/1.1 401"), "strangers are refused");
    // Models a provider lacks are pulled.
    wait_for("the missing model pulled", Duration::from_secs(10), || {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", primary)).unwrap();
        write!(stream, "GET /api/tags HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer.contains("qwen2.5:0.5b")
    });

    // Generation hangs while /api/version still answers (ollama#1863): failover, service restarted.
    post(primary, "/_fault", r#"{"mode": "hang-generate"}"#);
    wait_for("failover to the backup", Duration::from_secs(10), || {
        route_of(&sandbox, "scribe") == Some(("backup".into(), true))
    });
    let answer = chat(&token);
    assert!(
        answer.contains("[backup]"),
        "the agent is answered by the fallback: {answer}"
    );
    wait_for("the hung provider's service restarted", Duration::from_secs(10), || {
        running_pid(&sandbox, "llm-primary").is_some_and(|pid| pid != llm_pid)
    });
    let report = sandbox.run(&["drift", "report", "--output", "json"]);
    let items = report.json()["items"].as_array().unwrap().clone();
    assert!(
        items.iter().any(|i| i["kind"] == "Agent" && i["drift"] == "degraded"),
        "{items:?}"
    );
    // The fresh process answers; after 2 s of health the agent fails back.
    wait_for("failback to the primary", Duration::from_secs(15), || {
        route_of(&sandbox, "scribe") == Some(("primary".into(), false))
    });
    let log = daemon.log();
    assert!(log.contains("Failover") && log.contains("Failback"), "{log}");
    let text = sandbox.run(&["status"]).stdout;
    assert!(text.contains("MODEL PROVIDER") && text.contains("scribe"), "{text}");
}

/// A daemon running one model server, Service `llm` (`command`, and `health` for the Service),
/// and its Ollama provider (`provider_health`) on `port`, committed as `message`; returns the
/// daemon once the server runs, and the server's pid.
fn one_model_server(
    sandbox: &Sandbox,
    port: u16,
    command: &str,
    health: &str,
    provider_health: &str,
    message: &str,
) -> (Daemon, i64) {
    sandbox.write(
        "llm.yaml",
        format!(
            "apiVersion: mirror.os/v1\nkind: Service\nmetadata: {{name: llm}}\nspec:\n  command: {command}\n  stop: {{grace: 1s}}\n  health: {health}\n---\napiVersion: mirror.os/v1\nkind: ModelProvider\nmetadata: {{name: llm}}\nspec:\n  api: ollama\n  url: http://127.0.0.1:{port}\n  service: llm\n  health: {provider_health}\n"
        ),
    );
    sandbox.commit(message);
    let daemon = Daemon::start(sandbox, &[]).ready(sandbox);
    wait_for("llm running", Duration::from_secs(10), || {
        running_pid(sandbox, "llm").is_some()
    });
    let pid = running_pid(sandbox, "llm").unwrap();
    (daemon, pid)
}

#[test]
fn a_provider_still_in_its_start_period_is_not_restarted_for_a_slow_generation() {
    let sandbox = Sandbox::new();
    let _cleanup = Cleanup(sandbox.root().to_path_buf());
    let fake = project_path("scripts/fake-llm").display().to_string();
    let port = free_port();
    let (daemon, pid) = one_model_server(
        &sandbox,
        port,
        &format!("[python3, {fake:?}, --port, \"{port}\", --name, solo]"),
        &format!("{{tcp: {{address: \"127.0.0.1:{port}\"}}, interval: 200ms, startPeriod: 60s}}"),
        "{interval: 200ms, timeout: 1s, failureThreshold: 2, probeModel: \"llama3.2:1b\"}",
        "one model server that loads slowly",
    );
    wait_for("the fake listening", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    // Its probe answers within the start period: Healthy at once, not Progressing for 60 s.
    wait_for("llm healthy", Duration::from_secs(5), || {
        service_state(&sandbox, "llm").is_some_and(|(_, _, health)| health == "Healthy")
    });
    post(port, "/_fault", r#"{"mode": "hang-generate"}"#);
    wait_for("the hang noticed", Duration::from_secs(10), || {
        daemon.log().contains("not restarted (still loading?)")
    });
    assert_eq!(
        running_pid(&sandbox, "llm"),
        Some(pid),
        "no restart within the start period"
    );
}

#[test]
fn a_provider_not_listening_yet_within_its_start_period_is_not_restarted() {
    let sandbox = Sandbox::new();
    let _cleanup = Cleanup(sandbox.root().to_path_buf());
    let fake = project_path("scripts/fake-llm").display().to_string();
    let port = free_port();
    // The server binds its port 3 s after it starts (as Ollama does while it loads its state);
    // the Service's own probe only checks the process, so the start is verified at once and the
    // provider is probed while nothing listens yet.
    let (daemon, pid) = one_model_server(
        &sandbox,
        port,
        &format!("[sh, -c, \"sleep 3; exec python3 {fake} --port {port} --name late\"]"),
        "{exec: {command: [\"true\"]}, interval: 200ms, startPeriod: 60s}",
        "{interval: 200ms, timeout: 1s, failureThreshold: 2}",
        "one model server that binds its port late",
    );
    wait_for(
        "the provider found down while its service starts",
        Duration::from_secs(10),
        || daemon.log().contains("not restarted (still starting?)"),
    );
    wait_for("the provider healthy once it listens", Duration::from_secs(15), || {
        daemon.log().contains("to=\"Healthy\"")
    });
    assert_eq!(
        running_pid(&sandbox, "llm"),
        Some(pid),
        "not restarted while it was starting: {}",
        daemon.log()
    );
    assert!(
        !daemon.log().contains("restarting the provider's service"),
        "{}",
        daemon.log()
    );
}

#[test]
fn a_dry_run_through_the_daemon_shows_a_failback_waiting_for_its_stable_window() {
    let sandbox = Sandbox::new();
    let _cleanup = Cleanup(sandbox.root().to_path_buf());
    let fake = project_path("scripts/fake-llm").display().to_string();
    let (primary, backup) = (free_port(), free_port());
    // Providers that name no Service: a hang is only routed around, nothing is restarted.
    let llm = |name: &str, port: u16| {
        format!(
            "apiVersion: mirror.os/v1\nkind: Service\nmetadata: {{name: llm-{name}}}\nspec:\n  command: [python3, {fake:?}, --port, \"{port}\", --name, {name}]\n  stop: {{grace: 1s}}\n---\napiVersion: mirror.os/v1\nkind: ModelProvider\nmetadata: {{name: {name}}}\nspec:\n  api: ollama\n  url: http://127.0.0.1:{port}\n  models: [\"llama3.2:1b\"]\n  health: {{interval: 200ms, timeout: 1s, failureThreshold: 2}}\n"
        )
    };
    sandbox.write("primary.yaml", llm("primary", primary));
    sandbox.write("backup.yaml", llm("backup", backup));
    sandbox.write(
        "agent.yaml",
        "apiVersion: mirror.os/v1\nkind: Policy\nmetadata: {name: default}\nspec: {}\n---\napiVersion: mirror.os/v1\nkind: Agent\nmetadata: {name: scribe}\nspec:\n  command: [\"sleep\", \"4400\"]\n  policy: default\n  model:\n    primary: {provider: primary, model: \"llama3.2:1b\"}\n    fallbacks: [{provider: backup, model: \"llama3.2:1b\"}]\n    failbackAfter: 5m\n",
    );
    sandbox.write(
        "controller.yaml",
        format!("apiVersion: mirror.os/v1\nkind: Controller\nmetadata: {{name: main}}\nspec:\n  bus: {{address: \"127.0.0.1:{}\"}}\n", free_port()),
    );
    sandbox.commit("two local models and an agent");
    let _daemon = Daemon::start(&sandbox, &[]).ready(&sandbox);
    wait_for(
        "the agent on its primary, both probed healthy",
        Duration::from_secs(20),
        || settled_on(&sandbox, "scribe", "primary", &["primary", "backup"]),
    );
    wait_for("both model servers listening", Duration::from_secs(10), || {
        [primary, backup]
            .iter()
            .all(|port| std::net::TcpStream::connect(("127.0.0.1", *port)).is_ok())
    });
    post(primary, "/_fault", r#"{"mode": "hang-generate"}"#);
    wait_for("failover to the backup", Duration::from_secs(10), || {
        route_of(&sandbox, "scribe") == Some(("backup".into(), true))
    });
    post(primary, "/_fault", r#"{"mode": "none"}"#);
    let mut plan = None;
    wait_for(
        "the dry-run to show the failback waiting",
        Duration::from_secs(10),
        || {
            let run = sandbox.run(&["reconcile", "--dry-run"]);
            let waiting = run
                .stdout
                .contains("… Agent/scribe: failback backup/llama3.2:1b -> primary/llama3.2:1b in ");
            plan = Some(run);
            waiting
        },
    );
    let plan = plan.unwrap();
    assert!(
        plan.stdout.contains("once primary has been healthy for 5m"),
        "{}",
        plan.stdout
    );
    assert_eq!(plan.code, 0, "a failback that waits is no pending change: {plan:?}");
    // The route stays on the backup: the stable window holds it.
    assert_eq!(route_of(&sandbox, "scribe"), Some(("backup".into(), true)));
}

/// An HTTP/1.1 request to 127.0.0.1:`port`: (status, body).
fn http(port: u16, method: &str, path: &str, token: &str, body: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let status = answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn the_gate_asks_a_person_for_risky_tools_and_a_budget_refuses_the_request_after_crossing() {
    let sandbox = Sandbox::new();
    let _cleanup = Cleanup(sandbox.root().to_path_buf());
    let fake = project_path("scripts/fake-llm").display().to_string();
    let (llm, bus) = (free_port(), free_port());
    sandbox.write(
        "all.yaml",
        format!(
            "apiVersion: mirror.os/v1\nkind: Service\nmetadata: {{name: llm}}\nspec:\n  command: [python3, {fake:?}, --port, \"{llm}\", --name, solo]\n---\napiVersion: mirror.os/v1\nkind: ModelProvider\nmetadata: {{name: solo}}\nspec:\n  api: ollama\n  url: http://127.0.0.1:{llm}\n---\napiVersion: mirror.os/v1\nkind: Policy\nmetadata: {{name: careful}}\nspec:\n  tools: [{{name: fs.read, risk: low}}, {{name: shell.exec, risk: high}}]\n  budget: {{tokensPerDay: 30}}\n---\napiVersion: mirror.os/v1\nkind: Agent\nmetadata: {{name: scribe}}\nspec:\n  command: [sleep, \"4600\"]\n  policy: careful\n  memory: {{read: [shared, notes], write: [notes]}}\n  model: {{primary: {{provider: solo, model: \"llama3.2:1b\"}}}}\n---\napiVersion: mirror.os/v1\nkind: Controller\nmetadata: {{name: main}}\nspec:\n  bus: {{address: \"127.0.0.1:{bus}\"}}\n"
        ),
    );
    sandbox.write(
        "other.yaml",
        "apiVersion: mirror.os/v1\nkind: Agent\nmetadata: {name: other}\nspec:\n  command: [sleep, \"4601\"]\n  policy: careful\n",
    );
    sandbox.commit("an agent on a budget, with a risky tool");
    let _daemon = Daemon::start(&sandbox, &[]).ready(&sandbox);
    let token_path = sandbox.root().join("state/agents/scribe/bus-token");
    wait_for("the agent enrolled", Duration::from_secs(15), || token_path.exists());
    let token = std::fs::read_to_string(&token_path).unwrap();
    wait_for("the bus and the model listening", Duration::from_secs(10), || {
        [llm, bus]
            .iter()
            .all(|port| std::net::TcpStream::connect(("127.0.0.1", *port)).is_ok())
    });

    // The gate: a low-risk tool is allowed, an unlisted one denied, a high-risk one waits.
    let (status, body) = http(
        bus,
        "POST",
        "/v1/gate",
        &token,
        r#"{"tool": "fs.read", "args": {"path": "notes"}}"#,
    );
    assert_eq!((status, body.contains("\"allow\"")), (200, true), "{body}");
    let (status, body) = http(bus, "POST", "/v1/gate", &token, r#"{"tool": "net.fetch"}"#);
    assert_eq!((status, body.contains("\"deny\"")), (200, true), "{body}");
    let shell = r#"{"tool": "shell.exec", "args": {"cmd": "ls"}}"#;
    let (status, body) = http(bus, "POST", "/v1/gate", &token, shell);
    assert_eq!(status, 202, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(http(bus, "POST", "/v1/gate", "not-a-token", shell).0, 401);
    let pending = sandbox.run(&["gate", "pending"]);
    assert!(
        pending.stdout.contains(&id) && pending.stdout.contains("shell.exec"),
        "{pending:?}"
    );
    // A forged approver is not even accepted: who decides is who the daemon sees.
    assert_eq!(sandbox.run(&["gate", "approve", &id, "--by", "alice"]).code, 1);
    let approved = sandbox.run(&["gate", "approve", &id]);
    assert_eq!(approved.code, 0, "{approved:?}");
    assert!(approved.stdout.contains("approved"), "{approved:?}");
    let me = format!("(uid {})", rustix::process::getuid().as_raw());
    assert!(
        approved.stdout.contains(&me),
        "the approver is the caller's uid: {approved:?}"
    );
    let (_, polled) = http(bus, "GET", &format!("/v1/gate/{id}"), &token, "");
    assert!(polled.contains("\"approved\""), "{polled}");
    let (status, body) = http(bus, "POST", "/v1/gate", &token, shell);
    assert_eq!(
        (status, body.contains("\"allow\"")),
        (200, true),
        "the approved call: {body}"
    );
    assert_eq!(
        sandbox.run(&["gate", "approve", &id]).code,
        1,
        "an approval is decided once"
    );

    // The memory API: within the agent's scope only.
    let (status, body) = http(
        bus,
        "POST",
        "/v1/memory",
        &token,
        r#"{"namespace": "notes", "content": "the backup model is smollm2", "tags": ["models"]}"#,
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = http(
        bus,
        "POST",
        "/v1/memory",
        &token,
        r#"{"namespace": "ops", "content": "not mine"}"#,
    );
    assert_eq!(status, 403, "outside the writable scope: {body}");
    let (status, body) = http(bus, "GET", "/v1/memory/search?q=smollm2", &token, "");
    assert!(
        status == 200 && body.contains("the backup model is smollm2"),
        "{status} {body}"
    );
    let (status, _) = http(bus, "GET", "/v1/memory/search?q=x&namespace=ops", &token, "");
    assert_eq!(status, 403, "outside the readable scope");
    let listed = sandbox.run(&["memory", "list", "--output", "json"]);
    assert!(listed.stdout.contains("\"source_agent\": \"scribe\""), "{listed:?}");

    // The budget: 30 tokens a day; each answer here costs more than 10.
    let chat = r#"{"model": "x", "messages": [{"role": "user", "content": "hi"}], "stream": false}"#;
    let mut answered = 0;
    let refused = loop {
        let (status, body) = http(bus, "POST", "/api/chat", &token, chat);
        if status == 429 {
            break body;
        }
        assert_eq!(status, 200, "{body}");
        answered += 1;
        assert!(answered < 10, "never refused");
    };
    assert!(refused.contains("budget"), "{refused}");
    let report = sandbox.run(&["drift", "report", "--output", "json"]).json();
    assert!(
        report["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["drift"] == "over_budget" && i["name"] == "scribe"),
        "{report:#}"
    );

    // Every decision is a receipt (written by the recorder in the background).
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let actions = || -> Vec<String> {
        runtime.block_on(async {
            let url = mirrorctl::store::StoreUrl::default_in(&sandbox.root().join("state"));
            let store = mirrorctl::store::open(&url).await.unwrap();
            store.receipts().await.unwrap().into_iter().map(|r| r.action).collect()
        })
    };
    let wanted = ["enroll", "gate-allow", "gate-deny", "gate-needs-approval", "approve"];
    wait_for("the receipts", Duration::from_secs(10), || {
        let actions = actions();
        wanted.iter().all(|w| actions.iter().any(|a| a == w))
    });

    // The agent leaves: its token is revoked, the bus refuses it (the other agent keeps the bus).
    let all = std::fs::read_to_string(sandbox.repo().join("all.yaml")).unwrap();
    let without: Vec<&str> = all.split("---\n").filter(|doc| !doc.contains("kind: Agent")).collect();
    sandbox.write("all.yaml", without.join("---\n"));
    sandbox.commit("scribe leaves");
    wait_for("the token revoked", Duration::from_secs(15), || {
        http(bus, "GET", "/v1/models", &token, "").0 == 401
    });
    assert!(!token_path.exists());
}

/// The daemon runs MemoryRules on the Controller's `memory.schedule`: an item that comes to
/// match is moved by the schedule alone, once; a dry-run through the daemon
/// then has nothing to move.
#[test]
fn the_memory_schedule_applies_rules() {
    let sandbox = Sandbox::new();
    let _cleanup = Cleanup(sandbox.root().to_path_buf());
    sandbox.write(
        "memory.yaml",
        "apiVersion: mirror.os/v1\nkind: MemoryRule\nmetadata: {name: promote-verified}\nspec:\n  match: {tier: working, minUses: 1, verified: true}\n  action: promote\n---\napiVersion: mirror.os/v1\nkind: Controller\nmetadata: {name: main}\nspec:\n  memory: {schedule: {every: 1s}}\n",
    );
    sandbox.commit("memory rules");
    let daemon = Daemon::start(&sandbox, &[]).ready(&sandbox);
    let added = sandbox.run(&[
        "memory",
        "add",
        "--namespace",
        "notes",
        "--output",
        "json",
        "ports: 11434",
    ]);
    assert_eq!(added.code, 0, "{added:?}");
    let id = added.json()["id"].as_str().unwrap().to_string();
    let tier = || sandbox.run(&["memory", "show", &id, "--output", "json"]).json()["tier"].clone();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(tier(), "working", "not matching yet: {}", daemon.log());
    for verb in ["touch", "verify"] {
        assert_eq!(sandbox.run(&["memory", verb, &id]).code, 0);
    }
    wait_for("the schedule to promote the item", Duration::from_secs(10), || {
        tier() == "long-term"
    });
    assert!(daemon.log().contains("memory rule applied"), "{}", daemon.log());
    std::thread::sleep(Duration::from_millis(1500));
    let history = sandbox.run(&["memory", "history", &id, "--output", "json"]).json();
    assert_eq!(
        history["transitions"].as_array().unwrap().len(),
        1,
        "moved once: {history}"
    );
    let dry = sandbox.run(&["reconcile", "--dry-run"]);
    assert_eq!(dry.code, 0, "{dry:?}");
    assert!(dry.stdout.contains("= nothing to move (1 rule(s))"), "{}", dry.stdout);
}

/// The Controller's `resync` applies from the first state in force (not after one default 30 s
/// interval).
#[test]
fn the_committed_resync_interval_applies_from_the_start() {
    let sandbox = Sandbox::new();
    let _cleanup = Cleanup(sandbox.root().to_path_buf());
    sandbox.write(
        "controller.yaml",
        "apiVersion: mirror.os/v1\nkind: Controller\nmetadata: {name: main}\nspec:\n  resync: 1s\n",
    );
    sandbox.commit("resync every second");
    let daemon = Daemon::start(&sandbox, &[]).ready(&sandbox);
    wait_for("two resync passes", Duration::from_secs(6), || {
        daemon.log().matches("trigger=\"resync\"").count() >= 2
    });
}
