//! Everyday use (issue 18): what a person sees where they look.

use std::time::Duration;

use crate::daemon::{service, Daemon};
use crate::support::*;

#[test]
fn a_failed_start_is_logged_by_the_daemon_at_warn_with_the_resource_and_the_reason() {
    let sandbox = Sandbox::new();
    let _cleanup = Cleanup(sandbox.root().to_path_buf());
    sandbox.write("ok.yaml", service("fine", "exec sleep 4400", ""));
    sandbox.write(
        "typo.yaml",
        "apiVersion: mirror.os/v1\nkind: Service\nmetadata: {name: typo}\nspec:\n  command: [pyhton3, -m, http.server]\n",
    );
    sandbox.commit("a typo in a program name");
    let daemon = Daemon::start(&sandbox, &[]).ready(&sandbox);
    wait_for("the failed start in the daemon's log", Duration::from_secs(10), || {
        daemon
            .log()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("action failed") && l.contains("Service/typo"))
    });
    let line = daemon
        .log()
        .lines()
        .find(|l| l.contains("action failed"))
        .unwrap()
        .to_string();
    assert!(line.contains("pyhton3"), "the reason names the program: {line}");
}

/// What the shell gets when it asks `mirrorctl` to complete `words` (the last one partial),
/// as the sourced bash script asks.
fn complete(sandbox: &Sandbox, words: &[&str]) -> Vec<String> {
    let mut args = vec!["--", "mirrorctl"];
    args.extend_from_slice(words);
    let output = sandbox
        .cmd(&args)
        .env("MIRRORCTL_COMPLETE", "bash")
        .env("_CLAP_COMPLETE_INDEX", words.len().to_string())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn completions_for_bash_zsh_and_fish_with_resource_names_and_a_manual_page() {
    let sandbox = Sandbox::new();
    let _cleanup = Cleanup(sandbox.root().to_path_buf());
    for shell in ["bash", "zsh", "fish"] {
        let run = sandbox.run(&["completions", shell]);
        assert_eq!(run.code, 0, "{shell}: {run:?}");
        assert!(
            run.stdout.contains("MIRRORCTL_COMPLETE") && run.stdout.contains("mirrorctl"),
            "{shell}: {}",
            run.stdout
        );
    }
    // The bash script is valid bash.
    let script = sandbox.root().join("mirrorctl.bash");
    std::fs::write(&script, sandbox.run(&["completions", "bash"]).stdout).unwrap();
    let check = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    // Commands, from the binary itself; the trampoline stays hidden.
    let commands = complete(&sandbox, &["re"]);
    for command in ["reconcile", "restart"] {
        assert!(commands.iter().any(|c| c == command), "{command} in {commands:?}");
    }
    assert!(complete(&sandbox, &["__"]).is_empty(), "the trampoline stays hidden");
    // Resource names: what this host runs.
    sandbox.write("web.yaml", service("web", "exec sleep 4418", ""));
    sandbox.commit("web");
    assert_eq!(sandbox.run(&["reconcile"]).code, 0);
    for command in ["stop", "start", "restart", "logs", "status"] {
        let names = complete(&sandbox, &[command, ""]);
        assert!(names.iter().any(|n| n == "web"), "{command} completes web: {names:?}");
    }
    let unknown = sandbox.run(&["completions", "powershell"]);
    assert_eq!(unknown.code, 1, "{unknown:?}");

    let man = sandbox.run(&["man"]);
    assert_eq!(man.code, 0, "{man:?}");
    assert!(
        man.stdout.starts_with(".ie") && man.stdout.contains(".SH NAME"),
        "{}",
        man.stdout
    );
    assert!(man.stdout.contains("reconcile"), "{}", man.stdout);
}

/// Runs the binary from `dir` (the sandbox's isolated HOME and state dir).
fn run_in(sandbox: &Sandbox, dir: &std::path::Path, args: &[&str]) -> Run {
    std::fs::create_dir_all(dir).unwrap();
    let output = sandbox.cmd(args).current_dir(dir).output().unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn sync_of(run: &Run, name: &str) -> String {
    let json = run.json();
    let resource = json["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("{name} in {}", run.stdout));
    resource["sync"].as_str().unwrap().to_string()
}

#[test]
fn commands_without_a_source_use_the_one_last_applied_from_any_directory() {
    let sandbox = Sandbox::new();
    let _cleanup = Cleanup(sandbox.root().to_path_buf());
    sandbox.write("desired/web.yaml", service("web", "exec sleep 4401", ""));
    sandbox.write("staging/api.yaml", service("api", "exec sleep 4404", ""));
    sandbox.commit("a host, and a staging one beside it");
    let applied = sandbox.run(&["reconcile", "--path", "desired"]);
    assert_eq!(applied.code, 0, "{applied:?}");

    // Outside any repository, at the repository's top, and in its subdirectory: the host.
    let elsewhere = sandbox.root().join("elsewhere");
    for dir in [elsewhere.clone(), sandbox.repo(), sandbox.repo().join("desired")] {
        let status = run_in(&sandbox, &dir, &["status", "--output", "json"]);
        assert_eq!(status.code, 0, "{}: {status:?}", dir.display());
        assert_eq!(sync_of(&status, "web"), "Synced", "from {}: {status:?}", dir.display());
        assert!(status.stderr.is_empty(), "no note needed: {}", status.stderr);
        let again = run_in(&sandbox, &dir, &["reconcile", "--dry-run"]);
        assert_eq!(again.code, 0, "nothing to change from {}: {again:?}", dir.display());
    }

    // Inside another repository, status still shows the host, and says which source it used.
    let other = sandbox.root().join("other");
    git2::Repository::init(&other).unwrap();
    let status = run_in(&sandbox, &other, &["status", "--output", "json"]);
    assert_eq!(sync_of(&status, "web"), "Synced", "{status:?}");
    assert!(
        status.stderr.contains("source in force") && status.stderr.contains("--repo"),
        "says which source, and how to choose another: {}",
        status.stderr
    );

    // Naming another path is a preview, and says so.
    let preview = sandbox.run(&["status", "--path", "staging", "--output", "json"]);
    assert!(preview.stderr.contains("preview"), "{preview:?}");
    assert_eq!(sync_of(&preview, "web"), "OutOfSync", "{preview:?}");
}

#[test]
fn validate_from_a_subdirectory_finds_the_repository_and_checks_where_the_user_stands() {
    let sandbox = Sandbox::new();
    sandbox.write("desired/web.yaml", service("web", "exec sleep 4402", ""));
    sandbox.write("elsewhere/broken.yaml", "kind: [\n");
    sandbox.commit("a host and a broken file beside it");
    let run = run_in(&sandbox, &sandbox.repo().join("desired"), &["validate"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("1 resource(s)"), "{}", run.stdout);
    let broken = run_in(&sandbox, &sandbox.repo().join("elsewhere"), &["validate"]);
    assert_eq!(broken.code, 1, "{broken:?}");
    assert!(broken.stdout.contains("broken.yaml"), "{}", broken.stdout);
    let outside = run_in(&sandbox, &sandbox.root().join("elsewhere"), &["validate"]);
    assert_eq!(outside.code, 1, "{outside:?}");
    assert!(outside.stderr.contains("not a git repository"), "{}", outside.stderr);
}

#[test]
fn with_a_daemon_running_commands_from_any_directory_use_its_source() {
    let sandbox = Sandbox::new();
    let _cleanup = Cleanup(sandbox.root().to_path_buf());
    sandbox.write("desired/web.yaml", service("web", "exec sleep 4403", ""));
    sandbox.commit("a host");
    let daemon = Daemon::start(&sandbox, &["--path", "desired"]);
    let socket = sandbox.root().join("state/control.sock");
    wait_for("the daemon's socket", Duration::from_secs(20), || socket.exists());
    let elsewhere = sandbox.root().join("elsewhere");
    wait_for("web synced, seen from elsewhere", Duration::from_secs(20), || {
        let status = run_in(&sandbox, &elsewhere, &["status", "--output", "json"]);
        status.json()["daemon"].as_u64() == Some(u64::from(daemon.child.id())) && status.stdout.contains("\"Synced\"")
    });
    // `cd ~/host; mirrorctl reconcile` applies the daemon's source through it.
    let pass = sandbox.run(&["reconcile"]);
    assert_eq!(pass.code, 0, "{pass:?}");
    let status = run_in(&sandbox, &elsewhere, &["status", "--output", "json"]);
    assert_eq!(sync_of(&status, "web"), "Synced", "{status:?}");
    // Another source is a preview: an apply is refused by the daemon, and says why.
    let other = sandbox.run(&["reconcile", "--path", "."]);
    assert_eq!(other.code, 1, "{other:?}");
    assert!(other.stderr.contains("--dry-run"), "{other:?}");
}

#[test]
fn a_failed_start_shows_in_status_with_the_reason_and_when_and_logs_says_why_it_is_empty() {
    let sandbox = Sandbox::new();
    let _cleanup = Cleanup(sandbox.root().to_path_buf());
    sandbox.write("web.yaml", service("web", "exec sleep 4405", ""));
    sandbox.write(
        "typo.yaml",
        "apiVersion: mirror.os/v1\nkind: Service\nmetadata: {name: typo}\nspec:\n  command: [pyhton3, -m, http.server]\n",
    );
    let commit = sandbox.commit("a typo in a program name");
    let pass = sandbox.run(&["reconcile"]);
    assert_eq!(pass.code, 1, "{pass:?}");

    let status = sandbox.run(&["status", "--output", "json"]);
    let json = status.json();
    let typo = json["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "typo")
        .unwrap();
    assert_eq!(typo["health"], "Degraded", "{typo}");
    let detail = typo["detail"].as_str().unwrap();
    assert!(
        detail.contains("pyhton3") && detail.contains("ago") && detail.contains(&commit[..12]),
        "{detail}"
    );
    assert_eq!(typo["failure"]["action"], "create", "{typo}");
    let text = sandbox.run(&["status"]);
    let line = text.stdout.lines().find(|l| l.contains("typo")).unwrap();
    assert!(line.contains("Degraded") && line.contains("pyhton3"), "{line}");

    let logs = sandbox.run(&["logs", "typo"]);
    assert_eq!(logs.code, 1, "{logs:?}");
    assert!(
        logs.stderr.contains("pyhton3") && logs.stderr.contains("Service/typo"),
        "{logs:?}"
    );
    let unknown = sandbox.run(&["logs", "nosuch"]);
    assert_eq!(unknown.code, 1, "{unknown:?}");
    assert!(unknown.stderr.contains("no service or agent `nosuch`"), "{unknown:?}");

    // The drift item of the failure is corrective: the next pass tries again.
    let drift = sandbox.run(&["drift", "report", "--output", "json"]);
    let report = drift.json();
    let item = report["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "typo" && i["drift"] == "failed");
    assert!(item.is_none_or(|i| i["corrective"] == true), "{report}");

    // Fixed: the failure is gone from status.
    sandbox.write(
        "typo.yaml",
        "apiVersion: mirror.os/v1\nkind: Service\nmetadata: {name: typo}\nspec:\n  command: [sleep, \"4406\"]\n",
    );
    sandbox.commit("fixed");
    assert_eq!(sandbox.run(&["reconcile"]).code, 0);
    let json = sandbox.run(&["status", "--output", "json"]).json();
    let typo = json["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "typo")
        .unwrap();
    assert_eq!(typo["health"], "Healthy", "{typo}");
    assert!(typo["failure"].is_null(), "{typo}");
}

#[test]
fn logs_tail_and_json() {
    let sandbox = Sandbox::new();
    let _cleanup = Cleanup(sandbox.root().to_path_buf());
    sandbox.write(
        "talk.yaml",
        service("talk", "for i in 1 2 3 4 5; do echo line $i; done; exec sleep 4407", ""),
    );
    sandbox.commit("a talker");
    assert_eq!(sandbox.run(&["reconcile"]).code, 0);
    wait_for("five lines", Duration::from_secs(10), || {
        sandbox.run(&["logs", "talk"]).stdout.lines().count() == 5
    });
    let tail = sandbox.run(&["logs", "talk", "--tail", "2"]);
    assert_eq!(tail.stdout, "line 4\nline 5\n", "{tail:?}");
    let json = sandbox.run(&["logs", "talk", "--tail", "1", "--output", "json"]);
    let line: serde_json::Value = serde_json::from_str(json.stdout.trim()).unwrap();
    assert_eq!(line["line"], "line 5");
    assert_eq!(line["name"], "talk");
    let detail = sandbox.run(&["status", "talk"]);
    assert!(
        detail.stdout.contains("last log lines:\n    line 1"),
        "{}",
        detail.stdout
    );

    sandbox.write("quiet.yaml", service("quiet", "exec sleep 4408", ""));
    sandbox.commit("a quiet one");
    assert_eq!(sandbox.run(&["reconcile"]).code, 0);
    let quiet = sandbox.run(&["logs", "quiet"]);
    assert_eq!(quiet.code, 0, "{quiet:?}");
    assert!(
        quiet.stderr.contains("printed nothing since it last started"),
        "{quiet:?}"
    );
}

#[test]
fn an_idle_daemon_stores_one_drift_report_and_counts_the_identical_passes() {
    let sandbox = Sandbox::new();
    let _cleanup = Cleanup(sandbox.root().to_path_buf());
    sandbox.write(
        "controller.yaml",
        "apiVersion: mirror.os/v1\nkind: Controller\nmetadata: {name: main}\nspec:\n  resync: 1s\n",
    );
    sandbox.write("web.yaml", service("web", "exec sleep 4409", ""));
    sandbox.commit("an idle host resyncing every second");
    let daemon = Daemon::start(&sandbox, &[]).ready(&sandbox);
    wait_for("four resync passes", Duration::from_secs(10), || {
        daemon.log().matches("trigger=\"resync\"").count() >= 4
    });
    let list = |args: &[&str]| {
        let mut all = vec!["drift", "list", "--output", "json"];
        all.extend_from_slice(args);
        let run = sandbox.run(&all);
        assert_eq!(run.code, 0, "{run:?}");
        run.json()["reports"].as_array().unwrap().clone()
    };
    wait_for("the repeats stored", Duration::from_secs(10), || {
        list(&[]).iter().any(|r| r["repeats"].as_u64() >= Some(3))
    });
    let reports = list(&[]);
    // The startup pass (web new) and the first resync (nothing) differ; the rest repeat it.
    assert!(reports.len() <= 2, "one report per change, not per pass: {reports:?}");
    let idle = &reports[0];
    assert_eq!(idle["items"], 0, "{idle}");
    assert!(idle["last_seen_at"].is_string(), "{idle}");

    // Filters, and an id prefix like git's.
    assert_eq!(list(&["--resource", "web"]).len(), reports.len() - 1, "{reports:?}");
    assert!(list(&["--severity", "critical"]).is_empty());
    assert_eq!(list(&["--since", "1h"]).len(), reports.len());
    let id = idle["id"].as_str().unwrap();
    let show = sandbox.run(&["drift", "show", &id[..id.len() - 4]]);
    assert_eq!(show.code, 0, "{show:?}");
    assert!(
        show.stdout.contains(id) && show.stdout.contains("later pass(es)"),
        "{}",
        show.stdout
    );
    if reports.len() == 2 {
        let ambiguous = sandbox.run(&["drift", "show", &id[..2]]);
        assert_eq!(ambiguous.code, 1, "{ambiguous:?}");
        assert!(ambiguous.stderr.contains("ambiguous"), "{ambiguous:?}");
    }
    let bad = sandbox.run(&["drift", "list", "--since", "soon"]);
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(bad.stderr.contains("10m, 2h or 1d"), "{bad:?}");
}

fn resource(sandbox: &Sandbox, name: &str) -> serde_json::Value {
    let json = sandbox.run(&["status", "--output", "json"]).json();
    json["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("{name} in {json}"))
}

/// `stop`, `start` and `restart`, with and without a daemon: a stop holds across passes until
/// `start` or the next commit, shows in status as Stopped with who and when, and as
/// intentional drift.
fn stop_start_restart(sandbox: &Sandbox, daemon: Option<&Daemon>) {
    let pid = resource(sandbox, "web")["pid"].as_i64().unwrap();
    let stop = sandbox.run(&["stop", "web"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    assert!(stop.stdout.contains(&format!("stopped pid {pid}")), "{stop:?}");
    assert!(stop.stdout.contains("mirrorctl start web"), "{stop:?}");
    let web = resource(sandbox, "web");
    assert_eq!(web["health"], "Stopped", "{web}");
    assert!(
        web["detail"].as_str().unwrap().contains("stopped by root (uid 0)"),
        "{web}"
    );
    // A pass (a resync, a `reconcile`) keeps it stopped; the drift item is intentional.
    assert_eq!(sandbox.run(&["reconcile"]).code, 0);
    assert_eq!(resource(sandbox, "web")["health"], "Stopped");
    let report = sandbox.run(&["drift", "report", "--output", "json"]).json();
    let item = report["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "web")
        .cloned()
        .unwrap();
    assert_eq!(item["corrective"], false, "{item}");
    assert!(item["detail"].as_str().unwrap().contains("stopped by"), "{item}");
    if let Some(daemon) = daemon {
        assert!(daemon.log().contains("asked by a person"), "{}", daemon.log());
    }
    // `start` ends it.
    let start = sandbox.run(&["start", "web"]);
    assert_eq!(start.code, 0, "{start:?}");
    let web = resource(sandbox, "web");
    assert_eq!(web["health"], "Healthy", "{web}");
    let started = web["pid"].as_i64().unwrap();
    // `restart` restarts what runs, and the receipt names who asked.
    let restart = sandbox.run(&["restart", "web"]);
    assert_eq!(restart.code, 0, "{restart:?}");
    assert!(
        restart.stdout.contains(&format!("stopped pid {started}")),
        "{restart:?}"
    );
    assert_ne!(resource(sandbox, "web")["pid"].as_i64().unwrap(), started);
    // `status web`: the resource in detail, with its last actions and who asked for them.
    let detail = sandbox.run(&["status", "web"]);
    assert_eq!(detail.code, 0, "{detail:?}");
    for expected in [
        "Service/web",
        "health    Healthy",
        "last actions",
        "restart asked by root (uid 0)",
        "command   sh -c",
    ] {
        assert!(detail.stdout.contains(expected), "{expected:?} in:\n{}", detail.stdout);
    }
    let json = sandbox.run(&["status", "web", "--output", "json"]).json();
    assert_eq!(json["resources"][0]["history"][0]["action"], "restart", "{json}");
    assert_eq!(json["resources"][0]["spec"]["command"][0], "sh", "{json}");
    let missing = sandbox.run(&["status", "web", "nosuch"]);
    assert_eq!(missing.code, 1, "{missing:?}");
    assert!(missing.stderr.contains("`nosuch`"), "{missing:?}");
    // A new commit ends a stop.
    assert_eq!(sandbox.run(&["stop", "web"]).code, 0);
    sandbox.write("other.yaml", service("other", "exec sleep 4412", ""));
    sandbox.commit("another commit");
    if daemon.is_none() {
        assert_eq!(sandbox.run(&["reconcile"]).code, 0);
    }
    wait_for("web started by the new commit", Duration::from_secs(15), || {
        resource(sandbox, "web")["health"] == "Healthy"
    });
    let unknown = sandbox.run(&["stop", "nosuch"]);
    assert_eq!(unknown.code, 1, "{unknown:?}");
    assert!(unknown.stderr.contains("no service or agent `nosuch`"), "{unknown:?}");
}

#[test]
fn stop_start_and_restart_without_a_daemon() {
    let sandbox = Sandbox::new();
    let _cleanup = Cleanup(sandbox.root().to_path_buf());
    sandbox.write("web.yaml", service("web", "exec sleep 4411", ""));
    sandbox.commit("web");
    assert_eq!(sandbox.run(&["reconcile"]).code, 0);
    stop_start_restart(&sandbox, None);
}

#[test]
fn stop_start_and_restart_through_the_daemon() {
    let sandbox = Sandbox::new();
    let _cleanup = Cleanup(sandbox.root().to_path_buf());
    sandbox.write("web.yaml", service("web", "exec sleep 4413", ""));
    sandbox.commit("web");
    let daemon = Daemon::start(&sandbox, &[]).ready(&sandbox);
    wait_for("web running", Duration::from_secs(10), || {
        resource(&sandbox, "web")["health"] == "Healthy"
    });
    stop_start_restart(&sandbox, Some(&daemon));
}

/// RESTARTS counts every restart; the backoff's own count starts again after a stable run, and
/// status used to show that one (2, then 1 after another restart).
#[test]
fn restarts_never_go_down_while_the_spec_stays() {
    let sandbox = Sandbox::new();
    let _cleanup = Cleanup(sandbox.root().to_path_buf());
    sandbox.write(
        "flaky.yaml",
        service(
            "flaky",
            "sleep 0.6; exit 3",
            "  restart: always\n  backoff: {initial: 100ms, max: 1s, resetAfter: 500ms}\n",
        ),
    );
    sandbox.commit("a service that runs stably, then exits");
    let _daemon = Daemon::start(&sandbox, &[]).ready(&sandbox);
    let mut seen = Vec::new();
    wait_for("three restarts", Duration::from_secs(20), || {
        let restarts = resource(&sandbox, "flaky")["restarts"].as_u64().unwrap();
        if seen.last() != Some(&restarts) {
            seen.push(restarts);
        }
        restarts >= 3
    });
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "RESTARTS went down: {seen:?}");
}

/// With no provider reachable, the daemon says so once per change of state: status never
/// shows a provider Healthy that its probe has refuted, the models check and the probe
/// failures are not logged at WARN on every pass or probe, and the agent does not hop down its
/// chain: its first route waits for the probes, which find nothing (one switch: lost).
#[test]
fn with_no_provider_reachable_the_daemon_says_so_once() {
    let sandbox = Sandbox::new();
    let _cleanup = Cleanup(sandbox.root().to_path_buf());
    let (dead, dead2, bus) = (
        crate::support::free_port(),
        crate::support::free_port(),
        crate::support::free_port(),
    );
    sandbox.write(
        "host.yaml",
        format!(
            "apiVersion: mirror.os/v1\nkind: Controller\nmetadata: {{name: main}}\nspec:\n  resync: 1s\n  bus: {{address: \"127.0.0.1:{bus}\"}}\n---\n\
             apiVersion: mirror.os/v1\nkind: ModelProvider\nmetadata: {{name: local}}\nspec:\n  api: ollama\n  url: http://127.0.0.1:{dead}\n  models: [\"llama3.2:1b\"]\n  health: {{interval: 200ms, timeout: 200ms, failureThreshold: 2}}\n---\n\
             apiVersion: mirror.os/v1\nkind: ModelProvider\nmetadata: {{name: spare}}\nspec:\n  api: openai\n  url: http://127.0.0.1:{dead2}/v1\n  health: {{interval: 200ms, timeout: 200ms, failureThreshold: 2}}\n---\n\
             apiVersion: mirror.os/v1\nkind: Policy\nmetadata: {{name: p}}\nspec: {{}}\n---\n\
             apiVersion: mirror.os/v1\nkind: Agent\nmetadata: {{name: scribe}}\nspec:\n  command: [sleep, \"4414\"]\n  policy: p\n  model:\n    primary: {{provider: local, model: \"llama3.2:1b\"}}\n    fallbacks: [{{provider: spare, model: m}}]\n"
        ),
    );
    sandbox.commit("a provider nobody serves");
    let daemon = Daemon::start(&sandbox, &[]).ready(&sandbox);
    wait_for("five resync passes", Duration::from_secs(15), || {
        daemon.log().matches("trigger=\"resync\"").count() >= 5
    });
    let json = sandbox.run(&["status", "--output", "json"]).json();
    let provider = &json["providers"][0];
    assert_ne!(provider["health"], "Healthy", "{provider}");
    assert_ne!(provider["health"], "Unknown", "probed by now: {provider}");
    let text = sandbox.run(&["status"]).stdout;
    let line = text.lines().find(|l| l.starts_with("local ")).unwrap();
    assert!(!line.contains("Healthy"), "{line}");
    let log = daemon.log();
    let warns = |what: &str| log.lines().filter(|l| l.contains("WARN") && l.contains(what)).count();
    assert!(warns("checking the provider's models failed") <= 1, "{log}");
    for provider in ["local", "spare"] {
        let changed = format!("provider health changed provider={provider} ");
        assert_eq!(warns(&changed), 1, "Unknown -> Down, once: {log}");
    }
    // The first route (news, INFO: the primary may be starting), then one warning: nothing to
    // route to. No failover down the chain to a fallback no probe has seen answer.
    let routes: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("agent=scribe") && l.contains("change="))
        .collect();
    assert_eq!(routes.len(), 2, "{log}");
    assert!(
        routes[0].contains("INFO") && routes[0].contains("change=Initial"),
        "{log}"
    );
    assert!(routes[1].contains("WARN") && routes[1].contains("change=Lost"), "{log}");
    let route = &json["routes"][0];
    assert!(route["provider"].is_null() && route["degraded"] == true, "{route}");
}

/// `reconcile` on a terminal says each action as it starts and ends, and that a long one is
/// still in progress; Ctrl-C stops it between actions, with what was done recorded and said, and
/// exit 130; Ctrl-C ends a second pass's wait for the first at once.
#[test]
fn reconcile_shows_each_action_and_ctrl_c_stops_between_actions_with_exit_130() {
    let sandbox = Sandbox::new();
    let _cleanup = Cleanup(sandbox.root().to_path_buf());
    let ready = sandbox.root().join("ready");
    sandbox.write(
        "a.yaml",
        service(
            "a",
            "exec sleep 4415",
            &format!(
                "  health: {{exec: {{command: [test, -e, {:?}]}}, interval: 100ms, startPeriod: 60s}}\n",
                ready.display().to_string()
            ),
        ),
    );
    sandbox.write("b.yaml", service("b", "exec sleep 4416", "  dependsOn: [Service/a]\n"));
    sandbox.write("c.yaml", service("c", "exec sleep 4417", "  dependsOn: [Service/a]\n"));
    sandbox.commit("a slow start, then two that depend on it");
    let mut child = sandbox
        .cmd(&["reconcile"])
        .env("MIRROR_PROGRESS", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let interrupt = |pid: u32| {
        std::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .unwrap()
    };
    read_until(&mut stderr, &mut seen, "→ Service/a: create");

    // A second pass waits for the first; Ctrl-C ends its wait at once, nothing done.
    let mut second = sandbox
        .cmd(&["reconcile"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut second_err = std::io::BufReader::new(second.stderr.take().unwrap());
    let mut second_seen = String::new();
    read_until(&mut second_err, &mut second_seen, "waiting for another mirrorctl");
    interrupt(second.id());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut second_err, &mut rest).unwrap();
    second_seen.push_str(&rest);
    assert_eq!(second.wait().unwrap().code(), Some(130), "{second_seen}");
    assert!(
        second_seen.contains("interrupted while waiting for another mirrorctl")
            && second_seen.contains("nothing was done"),
        "{second_seen}"
    );

    // A long wait says it is alive.
    read_until(&mut stderr, &mut seen, "… Service/a: create still in progress (5 s)");
    // Ctrl-C while a's start is being verified; then a proves itself.
    interrupt(child.id());
    std::fs::write(&ready, "").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let status = child.wait().unwrap();
    seen.push_str(&rest);
    assert_eq!(status.code(), Some(130), "{seen}");
    assert!(seen.contains("✓ Service/a: started pid"), "{seen}");
    assert!(!seen.contains("→ Service/b"), "stopped before b: {seen}");
    assert!(
        seen.contains("mirrorctl: interrupted: 1 action(s) done and recorded"),
        "{seen}"
    );
    assert!(resource(&sandbox, "a")["pid"].is_i64(), "a runs");
    assert_eq!(resource(&sandbox, "b")["health"], "Missing");
    // Without a terminal (and MIRROR_PROGRESS), no progress lines; the next pass finishes.
    let again = sandbox.run(&["reconcile"]);
    assert_eq!(again.code, 0, "{again:?}");
    assert!(!again.stderr.contains('→'), "{again:?}");
    assert!(resource(&sandbox, "c")["pid"].is_i64(), "c runs");
}

/// `logs --since`: services write their logs themselves; the daemon times each growth it sees
/// (once a second), so what was written within a duration is found to the second.
#[test]
fn logs_since_a_duration_from_the_times_the_daemon_records() {
    let sandbox = Sandbox::new();
    let _cleanup = Cleanup(sandbox.root().to_path_buf());
    sandbox.write(
        "talk.yaml",
        service("talk", "echo early; sleep 4; echo late; exec sleep 4419", ""),
    );
    sandbox.commit("a service that talks twice");
    let daemon = Daemon::start(&sandbox, &[]).ready(&sandbox);
    let index = sandbox.root().join("state/logs/talk.log.times");
    wait_for("both lines timed", Duration::from_secs(15), || {
        std::fs::read_to_string(&index).is_ok_and(|t| t.lines().count() >= 2)
    });
    let recent = sandbox.run(&["logs", "talk", "--since", "2s"]);
    assert_eq!(recent.code, 0, "{recent:?}");
    assert_eq!(recent.stdout, "late\n", "{recent:?}");
    let all = sandbox.run(&["logs", "talk", "--since", "1h"]);
    assert_eq!(all.stdout, "early\nlate\n", "{all:?}");
    let bad = sandbox.run(&["logs", "talk", "--since", "yesterday"]);
    assert_eq!(bad.code, 1, "{bad:?}");
    drop(daemon);
    // Without the daemon's times (a log no daemon watched), --since says so and what to use.
    std::fs::remove_file(&index).unwrap();
    let untimed = sandbox.run(&["logs", "talk", "--since", "1m"]);
    assert_eq!(untimed.code, 1, "{untimed:?}");
    assert!(
        untimed.stderr.contains("no times recorded") && untimed.stderr.contains("--tail"),
        "{untimed:?}"
    );
}

/// Through a daemon, `reconcile` says each action as it starts and ends too: the daemon sends
/// progress lines on the control socket before its answer.
#[test]
fn reconcile_through_the_daemon_streams_each_action() {
    let sandbox = Sandbox::new();
    let _cleanup = Cleanup(sandbox.root().to_path_buf());
    sandbox.write("web.yaml", service("web", "exec sleep 4420", ""));
    sandbox.write(
        "typo.yaml",
        "apiVersion: mirror.os/v1\nkind: Service\nmetadata: {name: typo}\nspec:\n  command: [pyhton3, -m, http.server]\n",
    );
    sandbox.commit("a typo the daemon retries at every pass");
    let _daemon = Daemon::start(&sandbox, &[]).ready(&sandbox);
    let output = sandbox
        .cmd(&["reconcile"])
        .env("MIRROR_PROGRESS", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("→ Service/typo: create"), "{stderr}");
    assert!(
        stderr.contains("✗ Service/typo: ") && stderr.contains("pyhton3"),
        "{stderr}"
    );
    let quiet = sandbox.run(&["reconcile"]);
    assert!(!quiet.stderr.contains('→'), "no progress off a terminal: {quiet:?}");
    let json = sandbox.run(&["reconcile", "--output", "json"]);
    assert!(
        serde_json::from_str::<serde_json::Value>(&json.stdout).is_ok(),
        "{json:?}"
    );
}

/// Every command's help lists the global options under their own heading, apart from its own.
#[test]
fn subcommand_help_lists_global_options_apart() {
    let sandbox = Sandbox::bare_dir();
    for command in [&["status"][..], &["logs"], &["memory", "add"], &["drift", "list"]] {
        let mut args = command.to_vec();
        args.push("--help");
        let help = sandbox.run(&args);
        assert_eq!(help.code, 0, "{help:?}");
        let (own, global) = help
            .stdout
            .split_once("Global options:")
            .unwrap_or_else(|| panic!("no Global options heading: {}", help.stdout));
        assert!(
            !own.contains("--state-dir") && !own.contains("--repo"),
            "{}",
            help.stdout
        );
        assert!(
            global.contains("--state-dir") && global.contains("--output"),
            "{}",
            help.stdout
        );
    }
}
