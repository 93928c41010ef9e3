//! `mirrorctl reconcile` on real commits with real processes.

use std::path::Path;
use std::time::Duration;

use crate::support::*;

/// Kills every process group this test's controller started, whatever happens in the test.
struct Reaper<'a>(&'a Sandbox);

impl Drop for Reaper<'_> {
    fn drop(&mut self) {
        for pid in owned_pids(self.0) {
            let _ = std::process::Command::new("kill")
                .args(["-9", "--", &format!("-{pid}")])
                .status();
        }
    }
}

fn service(name: &str, command: &str, extra: &str) -> String {
    format!(
        "apiVersion: mirror.os/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  command: [\"sh\", \"-c\", {command:?}]\n  stop: {{grace: 2s}}\n{extra}"
    )
}

/// The pid of each owned service, from the local inventory.
fn owned(sandbox: &Sandbox) -> Vec<(String, i32)> {
    let Ok(text) = std::fs::read_to_string(sandbox.root().join("state/inventory.json")) else {
        return Vec::new();
    };
    let entries: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    entries
        .iter()
        .filter_map(|e| {
            let process: serde_json::Value = serde_json::from_str(e["process"].as_str()?).ok()?;
            Some((e["name"].as_str()?.to_string(), process["pid"].as_i64()? as i32))
        })
        .collect()
}

fn owned_pids(sandbox: &Sandbox) -> Vec<i32> {
    owned(sandbox).into_iter().map(|(_, pid)| pid).collect()
}

fn pid_of(sandbox: &Sandbox, name: &str) -> i32 {
    owned(sandbox)
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("{name} not owned"))
        .1
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            let state = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .next()
                .unwrap_or("");
            state != "Z"
        })
        .unwrap_or(false)
}

/// Pids whose process group is `pgid` (the service and everything it forked).
fn group_members(pgid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .is_some_and(|stat| {
                    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
                    fields.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid) && fields.first() != Some(&"Z")
                })
        })
        .collect()
}

fn kill9(pid: i32) {
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
}

/// One resource of `status --output json`, by name.
fn resource(status: &serde_json::Value, name: &str) -> serde_json::Value {
    status["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap()
        .clone()
}

fn log_of(sandbox: &Sandbox, name: &str) -> String {
    std::fs::read_to_string(sandbox.root().join(format!("state/logs/{name}.log"))).unwrap_or_default()
}

#[test]
fn a_commit_starts_services_and_a_second_pass_changes_nothing() {
    let sandbox = Sandbox::new();
    let _reaper = Reaper(&sandbox);
    sandbox.write(
        "web.yaml",
        service(
            "web",
            "echo hello $GREETING; exec sleep 300",
            "  env: {GREETING: world}\n",
        ),
    );
    sandbox.write(
        "worker.yaml",
        service("worker", "exec sleep 300", "  dependsOn: [web]\n"),
    );
    sandbox.commit("two services");

    let dry = sandbox.run(&["reconcile", "--dry-run"]);
    assert_eq!(dry.code, 2, "{dry:?}");
    assert!(
        dry.stdout
            .contains("create:\n  + Service/web: new in the desired state"),
        "{}",
        dry.stdout
    );
    assert!(
        dry.stdout.contains("+GREETING: world") || dry.stdout.contains("+  GREETING: world"),
        "{}",
        dry.stdout
    );
    assert!(owned(&sandbox).is_empty(), "a dry-run starts nothing");

    let run = sandbox.run(&["reconcile"]);
    assert_eq!(run.code, 0, "{run:?}");
    let web = pid_of(&sandbox, "web");
    assert!(alive(web) && alive(pid_of(&sandbox, "worker")));
    wait_for("the log line", Duration::from_secs(5), || {
        log_of(&sandbox, "web").contains("hello world")
    });
    let web_stat = std::fs::read_to_string(format!("/proc/{web}/stat")).unwrap();
    let session: i32 = web_stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(3)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(session, web, "a service runs in its own session");

    let again = sandbox.run(&["reconcile", "--dry-run"]);
    assert_eq!(again.code, 0, "in sync: {again:?}");
    assert!(again
        .stdout
        .contains("0 to create, 0 to update, 0 to restart, 0 to prune, 0 to suspend, 2 unchanged"));
    assert_eq!(sandbox.run(&["reconcile"]).code, 0);
    assert_eq!(pid_of(&sandbox, "web"), web, "a second pass does not restart");

    let json = sandbox.run(&["reconcile", "--dry-run", "--output", "json"]).json();
    for key in ["commit", "changes", "summary"] {
        assert!(json.get(key).is_some(), "{key}: {json}");
    }
    assert_eq!(json["changes"][0]["action"], "noop");
}

#[test]
fn a_killed_service_is_restarted_and_reported_as_corrective() {
    let sandbox = Sandbox::new();
    let _reaper = Reaper(&sandbox);
    sandbox.write("web.yaml", service("web", "exec sleep 300", ""));
    sandbox.commit("web");
    assert_eq!(sandbox.run(&["reconcile"]).code, 0);
    let first = pid_of(&sandbox, "web");
    kill9(first);
    wait_for("the kill", Duration::from_secs(5), || !alive(first));

    let dry = sandbox.run(&["reconcile", "--dry-run"]);
    assert_eq!(dry.code, 2, "{dry:?}");
    assert!(
        dry.stdout
            .contains("restart:\n  ↻ Service/web: not running: start it again"),
        "{}",
        dry.stdout
    );
    let run = sandbox.run(&["reconcile", "--output", "json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let second = pid_of(&sandbox, "web");
    assert_ne!(second, first);
    assert!(alive(second));
    let report = run.json()["report_id"].as_str().unwrap().to_string();
    let shown = sandbox.run(&["drift", "show", &report, "--output", "json"]).json();
    assert_eq!(shown["items"][0]["drift"], "failed");
    assert_eq!(shown["items"][0]["corrective"], true);
}

#[test]
fn an_env_change_restarts_with_the_new_env_and_removal_stops_the_whole_tree() {
    let sandbox = Sandbox::new();
    let _reaper = Reaper(&sandbox);
    sandbox.write("keep.yaml", service("keep", "exec sleep 300", ""));
    sandbox.write(
        "web.yaml",
        service(
            "web",
            "echo mode=$MODE; sleep 300 & exec sleep 301",
            "  env: {MODE: one}\n",
        ),
    );
    sandbox.commit("v1");
    assert_eq!(sandbox.run(&["reconcile"]).code, 0);
    let first = pid_of(&sandbox, "web");
    wait_for("the tree", Duration::from_secs(5), || group_members(first).len() == 2);

    sandbox.write(
        "web.yaml",
        service(
            "web",
            "echo mode=$MODE; sleep 300 & exec sleep 301",
            "  env: {MODE: two}\n",
        ),
    );
    sandbox.commit("v2");
    let dry = sandbox.run(&["reconcile", "--dry-run"]);
    assert_eq!(dry.code, 2);
    assert!(
        dry.stdout.contains("update:\n  ~ Service/web: spec changed"),
        "{}",
        dry.stdout
    );
    assert!(
        dry.stdout.contains("-  MODE: one") && dry.stdout.contains("+  MODE: two"),
        "{}",
        dry.stdout
    );
    assert_eq!(sandbox.run(&["reconcile"]).code, 0);
    let second = pid_of(&sandbox, "web");
    assert_ne!(first, second);
    assert!(group_members(first).is_empty(), "the old tree is gone");
    wait_for("the new env", Duration::from_secs(5), || {
        log_of(&sandbox, "web").contains("mode=two")
    });

    sandbox.remove("web.yaml");
    sandbox.commit("remove web");
    let run = sandbox.run(&["reconcile"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        group_members(second).is_empty(),
        "the service and its children are gone"
    );
    assert!(
        owned(&sandbox).iter().all(|(name, _)| name != "web"),
        "it left the inventory"
    );
    assert!(alive(pid_of(&sandbox, "keep")));
}

#[test]
fn an_invalid_commit_changes_nothing() {
    let sandbox = Sandbox::new();
    let _reaper = Reaper(&sandbox);
    sandbox.write("web.yaml", service("web", "exec sleep 300", ""));
    sandbox.commit("web");
    assert_eq!(sandbox.run(&["reconcile"]).code, 0);
    let pid = pid_of(&sandbox, "web");
    sandbox.write("web.yaml", service("web", "exec sleep 300", "  restart: sometimes\n"));
    sandbox.write("other.yaml", service("other", "exec sleep 300", ""));
    sandbox.commit("broken");
    let run = sandbox.run(&["reconcile"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout
            .contains("web.yaml:7:12: Service/web: spec.restart: unknown value `sometimes`"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("nothing was applied"));
    assert_eq!(pid_of(&sandbox, "web"), pid);
    assert!(alive(pid));
    assert_eq!(owned(&sandbox).len(), 1, "the valid new service was not started either");
    let reports = sandbox.run(&["drift", "list", "--output", "json"]).json();
    let latest = reports["reports"][0]["id"].as_str().unwrap().to_string();
    let shown = sandbox.run(&["drift", "show", &latest, "--output", "json"]).json();
    assert_eq!(shown["items"][0]["drift"], "invalid_source");
}

#[test]
fn emptying_the_path_is_refused_by_the_prune_guard() {
    let sandbox = Sandbox::new();
    let _reaper = Reaper(&sandbox);
    sandbox.write("desired/a.yaml", service("a", "exec sleep 300", ""));
    sandbox.write("desired/b.yaml", service("b", "exec sleep 300", ""));
    sandbox.commit("two");
    assert_eq!(sandbox.run(&["reconcile", "--path", "desired"]).code, 0);
    let pids = owned_pids(&sandbox);
    sandbox.remove("desired/a.yaml");
    sandbox.remove("desired/b.yaml");
    sandbox.write("desired/README.md", "nothing here\n");
    sandbox.commit("empty");
    let run = sandbox.run(&["reconcile", "--path", "desired"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout
            .contains("refused: refusing to prune all 2 owned resource(s)"),
        "{}",
        run.stdout
    );
    assert!(pids.iter().all(|pid| alive(*pid)), "everything keeps running");
    let run = sandbox.run(&["reconcile", "--path", "desired", "--allow-mass-prune"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(owned(&sandbox).is_empty());
    for pid in pids {
        wait_for("the prune", Duration::from_secs(5), || !alive(pid));
    }
}

#[test]
fn a_recycled_pid_is_not_mistaken_for_the_service() {
    let sandbox = Sandbox::new();
    let _reaper = Reaper(&sandbox);
    sandbox.write("web.yaml", service("web", "exec sleep 300", ""));
    sandbox.commit("web");
    assert_eq!(sandbox.run(&["reconcile"]).code, 0);
    let original = pid_of(&sandbox, "web");
    kill9(original);
    wait_for("the kill", Duration::from_secs(5), || !alive(original));

    // An unrelated process now holds the pid the inventory remembers (as after PID reuse).
    let mut stranger = std::process::Command::new("sleep").arg("300").spawn().unwrap();
    let path = sandbox.root().join("state/inventory.json");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace(
            &format!("\\\"pid\\\":{original}"),
            &format!("\\\"pid\\\":{}", stranger.id()),
        ),
    )
    .unwrap();
    assert_eq!(pid_of(&sandbox, "web"), stranger.id() as i32);

    let run = sandbox.run(&["reconcile"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_ne!(
        pid_of(&sandbox, "web"),
        stranger.id() as i32,
        "a new process was started"
    );
    assert!(stranger.try_wait().unwrap().is_none(), "the stranger was not killed");
    stranger.kill().unwrap();
    let _ = stranger.wait();
}

#[test]
fn a_secret_in_an_env_file_never_appears() {
    let sandbox = Sandbox::new();
    let _reaper = Reaper(&sandbox);
    let state = sandbox.root().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("web.env"), "API_TOKEN=hunter2-very-secret\n").unwrap();
    let extra = "  envFiles: [web.env]\n  env: {DB_PASSWORD: also-a-secret-value, PORT: \"8080\"}\n";
    sandbox.write("web.yaml", service("web", "exec sleep 300", extra));
    sandbox.commit("web");
    let mut seen = String::new();
    for args in [
        &["reconcile", "--dry-run"][..],
        &["reconcile"],
        &["reconcile", "--dry-run", "--output", "json"],
    ] {
        let run = sandbox.run(args);
        seen.push_str(&run.stdout);
        seen.push_str(&run.stderr);
    }
    std::fs::write(state.join("web.env"), "API_TOKEN=rotated-secret-value\n").unwrap();
    let dry = sandbox.run(&["reconcile", "--dry-run"]);
    assert_eq!(dry.code, 2, "a changed secret is a change: {dry:?}");
    assert!(dry.stdout.contains("web.env: (redacted "), "{}", dry.stdout);
    seen.push_str(&dry.stdout);
    let reports = sandbox.run(&["drift", "list", "--output", "json"]);
    seen.push_str(&reports.stdout);
    assert!(seen.contains("(redacted "), "{seen}");
    for secret in ["hunter2-very-secret", "also-a-secret-value", "rotated-secret-value"] {
        assert!(!seen.contains(secret), "{secret} printed");
        for file in stored_files(&state) {
            let bytes = std::fs::read(&file).unwrap();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} stored in {}",
                file.display()
            );
        }
    }
}

/// Every file mirrorctl keeps, except the service logs (a service's own output is its own) and
/// the env file itself.
fn stored_files(state: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![state.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if !path.ends_with("logs") {
                    stack.push(path);
                }
            } else if path.file_name().unwrap() != "web.env" {
                files.push(path);
            }
        }
    }
    files
}

#[test]
fn status_shows_sync_health_pid_and_restarts() {
    let sandbox = Sandbox::new();
    let _reaper = Reaper(&sandbox);
    sandbox.write("web.yaml", service("web", "echo up; exec sleep 300", ""));
    sandbox.write("later.yaml", service("later", "exec sleep 300", "  suspend: true\n"));
    sandbox.commit("web");
    let before = sandbox.run(&["status", "--output", "json"]).json();
    assert_eq!(before["resources"][0]["health"], "Suspended");
    assert_eq!(before["resources"][1]["health"], "Missing");
    assert_eq!(before["resources"][1]["sync"], "OutOfSync");

    assert_eq!(sandbox.run(&["reconcile"]).code, 0);
    let pid = pid_of(&sandbox, "web");
    let json = sandbox.run(&["status", "--output", "json"]).json();
    let web = resource(&json, "web");
    assert_eq!(
        (web["kind"].as_str(), web["sync"].as_str(), web["health"].as_str()),
        (Some("Service"), Some("Synced"), Some("Healthy"))
    );
    assert_eq!(web["pid"], pid);
    assert_eq!(web["restarts"], 0);
    assert_eq!(json["mechanism"], "linux-proc");
    let text = sandbox.run(&["status"]);
    assert_eq!(text.code, 0);
    assert!(text.stdout.starts_with("KIND"), "{}", text.stdout);
    assert!(
        text.stdout.contains(&format!(
            "Service        web                      Synced     Healthy     {pid:>8}"
        )),
        "{}",
        text.stdout
    );

    kill9(pid);
    wait_for("the kill", Duration::from_secs(5), || !alive(pid));
    let json = sandbox.run(&["status", "--output", "json"]).json();
    let web = resource(&json, "web");
    assert_eq!(
        (web["sync"].as_str(), web["health"].as_str()),
        (Some("Synced"), Some("Degraded"))
    );
    assert_eq!(web["pid"], serde_json::Value::Null);

    let logs = sandbox.run(&["logs", "web"]);
    assert_eq!(logs.code, 0);
    assert_eq!(logs.stdout, "up\n");
    assert_eq!(sandbox.run(&["logs", "nothing"]).code, 1);
}

#[test]
fn a_crash_loop_backs_off_exponentially() {
    let sandbox = Sandbox::new();
    let _reaper = Reaper(&sandbox);
    sandbox.write(
        "bad.yaml",
        service("bad", "exit 3", "  backoff: {initial: 1s, max: 2s}\n"),
    );
    sandbox.commit("crashes at once");
    let reason = |sandbox: &Sandbox| {
        let json = sandbox.run(&["reconcile", "--output", "json"]).json();
        (
            json["changes"][0]["action"].as_str().unwrap().to_string(),
            json["changes"][0]["reason"].as_str().unwrap().to_string(),
        )
    };
    assert_eq!(sandbox.run(&["reconcile"]).code, 0);
    wait_for("the crash", Duration::from_secs(5), || !alive(pid_of(&sandbox, "bad")));
    let (action, why) = reason(&sandbox);
    assert_eq!(action, "restart", "the first restart is immediate: {why}");
    wait_for("the crash", Duration::from_secs(5), || !alive(pid_of(&sandbox, "bad")));
    let (action, why) = reason(&sandbox);
    assert_eq!(action, "noop");
    assert!(
        why.starts_with("CrashLoopBackOff: not running after 1 restart(s); next restart in 1s"),
        "{why}"
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (action, why) = reason(&sandbox);
    assert_eq!(action, "restart", "after the initial delay: {why}");
    wait_for("the crash", Duration::from_secs(5), || !alive(pid_of(&sandbox, "bad")));
    let (action, why) = reason(&sandbox);
    assert_eq!(action, "noop");
    assert!(
        why.contains("after 2 restart(s); next restart in 2s"),
        "the delay doubled: {why}"
    );
    let status = sandbox.run(&["status", "--output", "json"]).json();
    assert_eq!(status["resources"][0]["restarts"], 2);
    assert_eq!(status["resources"][0]["health"], "Degraded");
}

#[test]
fn dependents_start_once_their_dependency_answers_its_probe() {
    let sandbox = Sandbox::new();
    let _reaper = Reaper(&sandbox);
    let port = free_port();
    // The web server needs a moment to listen; `app` records whether web answered when it started.
    let web = format!(
        "apiVersion: mirror.os/v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  command: [\"sh\", \"-c\", \"sleep 0.3; exec python3 -m http.server {port} --bind 127.0.0.1\"]\n  health: {{http: {{url: \"http://127.0.0.1:{port}/\"}}, interval: 1s, timeout: 1s, failureThreshold: 5}}\n"
    );
    let check = format!("python3 -c \"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/'); print('web answered')\"; exec sleep 300");
    sandbox.write("web.yaml", web);
    sandbox.write("app.yaml", service("app", &check, "  dependsOn: [web]\n"));
    sandbox.commit("web and app");
    let run = sandbox.run(&["reconcile", "--output", "json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let applied = run.json()["applied"].clone();
    assert!(
        applied[0]["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("healthy: http://127.0.0.1:{port}/ answered 200")),
        "{applied}"
    );
    wait_for("app's check", Duration::from_secs(5), || {
        log_of(&sandbox, "app").contains("web answered")
    });
    let status = sandbox.run(&["status", "--output", "json"]).json();
    let web = resource(&status, "web");
    assert!(web["last_probe"].as_str().unwrap().starts_with("ok: "), "{web}");
}

#[test]
fn a_service_that_never_answers_its_probe_fails_the_pass_and_blocks_its_dependents() {
    let sandbox = Sandbox::new();
    let _reaper = Reaper(&sandbox);
    let port = free_port();
    let probe = format!(
        "  health: {{tcp: {{address: \"127.0.0.1:{port}\"}}, interval: 200ms, timeout: 100ms, failureThreshold: 2}}\n"
    );
    sandbox.write("db.yaml", service("db", "exec sleep 300", &probe));
    sandbox.write("api.yaml", service("api", "exec sleep 300", "  dependsOn: [db]\n"));
    sandbox.commit("db never listens");
    let run = sandbox.run(&["reconcile"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout.contains("failed: Service/db (create): started pid"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("but it is not healthy: probe failed"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("failed: Service/api (create): not started: its dependency Service/db failed"),
        "{}",
        run.stdout
    );
    assert!(owned(&sandbox).iter().all(|(name, _)| name != "api"));
    let status = sandbox.run(&["status", "--output", "json"]).json();
    let db = resource(&status, "db");
    assert_eq!(db["health"], "Degraded");
}

#[test]
fn labels_alone_change_nothing_suspend_stops_and_the_prune_opt_out_holds() {
    let sandbox = Sandbox::new();
    let _reaper = Reaper(&sandbox);
    let with_meta = |name: &str, meta: &str, extra: &str| {
        service(name, "exec sleep 300", extra).replace(
            &format!("metadata: {{name: {name}}}"),
            &format!("metadata: {{name: {name}, {meta}}}"),
        )
    };
    sandbox.write("a.yaml", with_meta("a", "labels: {team: one}", ""));
    sandbox.write("b.yaml", service("b", "exec sleep 300", ""));
    sandbox.write(
        "keep.yaml",
        with_meta("keep", "annotations: {mirror.os/prune: disabled}", ""),
    );
    sandbox.write("other.yaml", service("other", "exec sleep 300", ""));
    sandbox.commit("four");
    assert_eq!(sandbox.run(&["reconcile"]).code, 0);
    let (a, b, keep) = (pid_of(&sandbox, "a"), pid_of(&sandbox, "b"), pid_of(&sandbox, "keep"));

    sandbox.write("a.yaml", with_meta("a", "labels: {team: two}", ""));
    sandbox.commit("relabel");
    let dry = sandbox.run(&["reconcile", "--dry-run"]);
    assert_eq!(dry.code, 0, "a label is not a spec change: {dry:?}");
    assert_eq!(pid_of(&sandbox, "a"), a);

    sandbox.write("b.yaml", service("b", "exec sleep 300", "  suspend: true\n"));
    sandbox.commit("suspend b");
    let run = sandbox.run(&["reconcile"]);
    assert_eq!(run.code, 0, "{run:?}");
    wait_for("b to stop", Duration::from_secs(5), || !alive(b));
    assert_eq!(
        sandbox.run(&["reconcile", "--dry-run"]).code,
        0,
        "a suspended service stays stopped"
    );
    let status = sandbox.run(&["status", "--output", "json"]).json();
    let b_status = resource(&status, "b");
    assert_eq!(b_status["health"], "Suspended");

    sandbox.remove("keep.yaml");
    sandbox.commit("drop keep");
    let run = sandbox.run(&["reconcile"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(alive(keep), "mirror.os/prune: disabled keeps it running");
    assert!(alive(a));
}

#[test]
fn a_running_service_log_is_rotated_past_its_size() {
    let sandbox = Sandbox::new();
    let _reaper = Reaper(&sandbox);
    // The output starts after the first pass has ended (and rotated an empty log), so the
    // second pass is the one that finds it past maxSize, whatever the machine's speed.
    let command = "sleep 2; i=0; while [ $i -lt 400 ]; do echo line-$i-0123456789012345678901234567890123456789; i=$((i+1)); done; exec sleep 300";
    sandbox.write(
        "chatty.yaml",
        service("chatty", command, "  logs: {maxSize: 4Ki, maxFiles: 2}\n"),
    );
    sandbox.commit("chatty");
    assert_eq!(sandbox.run(&["reconcile"]).code, 0);
    let logs = sandbox.root().join("state/logs");
    wait_for("the output", Duration::from_secs(5), || {
        log_of(&sandbox, "chatty").contains("line-399-")
            || std::fs::read_to_string(logs.join("chatty.log.1")).is_ok_and(|t| t.contains("line-399-"))
    });
    assert_eq!(sandbox.run(&["reconcile"]).code, 0);
    assert!(
        std::fs::metadata(logs.join("chatty.log")).unwrap().len() < 4096,
        "the live log was truncated"
    );
    assert!(
        std::fs::read_to_string(logs.join("chatty.log.1"))
            .unwrap()
            .contains("line-399-"),
        "and kept as .1"
    );
    assert!(!logs.join("chatty.log.3").exists());
}

#[test]
fn a_running_service_that_fails_its_probe_is_restarted() {
    let sandbox = Sandbox::new();
    let _reaper = Reaper(&sandbox);
    let port = free_port();
    // Listens at first, then stops answering while the process stays alive (a hang).
    let command = format!(
        "python3 -c \"import socket, time; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(1); s.close(); time.sleep(300)\""
    );
    let probe = format!(
        "  health: {{tcp: {{address: \"127.0.0.1:{port}\"}}, interval: 100ms, timeout: 100ms, failureThreshold: 3}}\n"
    );
    sandbox.write("hang.yaml", service("hang", &command, &probe));
    sandbox.commit("hangs after a second");
    assert_eq!(sandbox.run(&["reconcile"]).code, 0);
    let first = pid_of(&sandbox, "hang");
    std::thread::sleep(std::time::Duration::from_millis(1300));
    assert!(alive(first), "the process is alive but not answering");
    let dry = sandbox.run(&["reconcile", "--dry-run"]);
    assert_eq!(dry.code, 2, "{dry:?}");
    assert!(dry.stdout.contains("probe failed 3 time(s) in a row"), "{}", dry.stdout);
    assert_eq!(sandbox.run(&["reconcile"]).code, 0);
    let second = pid_of(&sandbox, "hang");
    assert_ne!(first, second);
    wait_for("the hung process to be stopped", Duration::from_secs(5), || {
        !alive(first)
    });
}

#[test]
fn concurrent_passes_do_not_duplicate_services() {
    let sandbox = Sandbox::new();
    let _reaper = Reaper(&sandbox);
    for i in 0..10 {
        sandbox.write(
            &format!("s{i}.yaml"),
            service(&format!("s{i}"), &format!("exec sleep 77{i}"), ""),
        );
    }
    sandbox.commit("ten");
    let children: Vec<_> = (0..3).map(|_| sandbox.cmd(&["reconcile"]).spawn().unwrap()).collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    assert_eq!(owned(&sandbox).len(), 10);
    for i in 0..10 {
        let pattern = format!("sleep 77{i}");
        let running = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
            .filter(|cmdline| String::from_utf8_lossy(cmdline).replace('\0', " ").trim_end() == pattern)
            .count();
        assert_eq!(running, 1, "`{pattern}` runs exactly once");
    }
}

#[test]
fn placement_selects_the_hosts_that_run_a_service() {
    let sandbox = Sandbox::new();
    let _reaper = Reaper(&sandbox);
    sandbox.write(
        "here.yaml",
        service("here", "exec sleep 300", "  placement: {hosts: [\"mini-*\"]}\n"),
    );
    sandbox.write(
        "there.yaml",
        service("there", "exec sleep 300", "  placement: {hosts: [\"studio\"]}\n"),
    );
    sandbox.commit("placed");
    let run = sandbox
        .cmd(&["reconcile"])
        .env("MIRROR_HOST", "mini-2")
        .output()
        .unwrap();
    assert!(run.status.success(), "{run:?}");
    let names: Vec<String> = owned(&sandbox).into_iter().map(|(name, _)| name).collect();
    assert_eq!(names, vec!["here".to_string()], "only the service placed on mini-*");
    // The same commit on another host: `here` is not for it (and is pruned), `there` is.
    let other = sandbox
        .cmd(&["reconcile", "--allow-mass-prune"])
        .env("MIRROR_HOST", "studio")
        .output()
        .unwrap();
    assert!(other.status.success(), "{other:?}");
    let names: Vec<String> = owned(&sandbox).into_iter().map(|(name, _)| name).collect();
    assert_eq!(names, vec!["there".to_string()]);
}

#[test]
fn drift_report_observes_and_exits_by_what_it_found() {
    let sandbox = Sandbox::new();
    let _reaper = Reaper(&sandbox);
    sandbox.write("a.yaml", service("a", "exec sleep 300", ""));
    sandbox.commit("a");
    let before = sandbox.run(&["drift", "report", "--output", "json"]);
    assert_eq!(before.code, 2, "{before:?}");
    let report = before.json();
    assert_eq!(report["items"][0]["drift"], "missing", "{report}");
    assert!(report["id"].is_string() && report["host"].is_string() && report["started_at"].is_string());
    assert!(owned(&sandbox).is_empty(), "observe-only");
    let stored = sandbox.run(&["drift", "show", report["id"].as_str().unwrap()]);
    assert_eq!(stored.code, 0, "{stored:?}");

    assert_eq!(sandbox.run(&["reconcile"]).code, 0);
    let after = sandbox.run(&["drift", "report"]);
    assert_eq!(after.code, 0, "{after:?}");
    assert!(after.stdout.contains("no drift"), "{}", after.stdout);

    sandbox.write("a.yaml", "kind: [");
    sandbox.commit("broken");
    let broken = sandbox.run(&["drift", "report"]);
    assert_eq!(broken.code, 1, "{broken:?}");
    assert!(broken.stdout.contains("invalid_source"), "{}", broken.stdout);
}

/// `scripts/fake-llm --port 0` as a child of the test: (child, port); killed by the caller.
fn fake_llm(name: &str, models: &str) -> (std::process::Child, u16) {
    fake_llm_with(name, models, &[])
}

fn fake_llm_with(name: &str, models: &str, extra: &[&str]) -> (std::process::Child, u16) {
    use std::io::BufRead;
    let mut child = std::process::Command::new("python3")
        .arg(project_path("scripts/fake-llm"))
        .args(["--port", "0", "--name", name, "--models", models])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 runs");
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let port = first
        .trim()
        .strip_prefix("listening on http://127.0.0.1:")
        .unwrap_or_else(|| panic!("first line {first:?}"))
        .parse()
        .unwrap();
    (child, port)
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_dry_run_lists_model_pulls_and_routes_and_an_apply_pulls_with_progress() {
    let sandbox = Sandbox::new();
    // The apply starts the agent: it must not outlive the test.
    let _cleanup = Cleanup(sandbox.root().to_path_buf());
    let (child, port) = fake_llm("local", "llama3.2:1b");
    let _fake = KillOnDrop(child);
    let unused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    sandbox.write(
        "models.yaml",
        format!(
            "apiVersion: mirror.os/v1\nkind: ModelProvider\nmetadata: {{name: local}}\nspec:\n  api: ollama\n  url: http://127.0.0.1:{port}\n  models: [\"llama3.2:1b\", \"qwen2.5:0.5b\"]\n---\napiVersion: mirror.os/v1\nkind: ModelProvider\nmetadata: {{name: gone}}\nspec:\n  api: ollama\n  url: http://127.0.0.1:{unused}\n  models: [\"llama3.2:1b\"]\n---\napiVersion: mirror.os/v1\nkind: Policy\nmetadata: {{name: default}}\nspec: {{}}\n---\napiVersion: mirror.os/v1\nkind: Agent\nmetadata: {{name: scribe}}\nspec:\n  command: [sleep, \"4300\"]\n  policy: default\n  model:\n    primary: {{provider: gone, model: \"llama3.2:1b\"}}\n    fallbacks: [{{provider: local, model: \"llama3.2:1b\"}}]\n"
        ),
    );
    sandbox.commit("two providers, one down; an agent");

    let plan = sandbox.run(&["reconcile", "--dry-run"]);
    assert_eq!(plan.code, 2, "a missing model is a pending change: {plan:?}");
    for expected in [
        "models and routes:",
        "↓ ModelProvider/local: pull qwen2.5:0.5b: qwen2.5:0.5b is not on local",
        "? ModelProvider/gone: models not checked:",
        "→ Agent/scribe: route to local/llama3.2:1b:",
        "1 model(s) to pull",
    ] {
        assert!(plan.stdout.contains(expected), "{expected:?} in:\n{}", plan.stdout);
    }
    let json = sandbox.run(&["reconcile", "--dry-run", "--output", "json"]).json();
    let pulls: Vec<_> = json["models"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["action"] == "pull")
        .map(|m| {
            (
                m["name"].as_str().unwrap(),
                m["target"].as_str().unwrap(),
                m["pending"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(pulls, vec![("local", "qwen2.5:0.5b", true)], "{json:#}");

    // The apply pulls, with progress on stderr as it comes, and a receipt.
    let applied = sandbox.run(&["reconcile"]);
    assert_eq!(applied.code, 0, "{applied:?}");
    assert!(
        applied.stderr.contains("local: qwen2.5:0.5b: pulling"),
        "progress: {}",
        applied.stderr
    );
    assert!(
        applied.stdout.contains("↓ ModelProvider/local: pulled qwen2.5:0.5b"),
        "{}",
        applied.stdout
    );
    let receipts = sandbox.run(&["audit", "verify", "--output", "json"]);
    assert_eq!(receipts.code, 0, "{receipts:?}");

    // Nothing left to pull: the dry-run is in sync again (routes alone are no change).
    let again = sandbox.run(&["reconcile", "--dry-run"]);
    assert_eq!(again.code, 0, "{again:?}");
    assert!(!again.stdout.contains("pull "), "{}", again.stdout);
}

/// Ctrl-C during a pull (which can take many minutes) stops it at once: exit 130, said why; the
/// next pass pulls again.
#[test]
fn ctrl_c_stops_a_pull() {
    let sandbox = Sandbox::new();
    // Each progress line of a pull takes a second here: the pull would take ~15 s.
    let (child, port) = fake_llm_with("local", "llama3.2:1b", &["--token-delay-ms", "1000"]);
    let _fake = KillOnDrop(child);
    sandbox.write(
        "models.yaml",
        format!(
            "apiVersion: mirror.os/v1\nkind: ModelProvider\nmetadata: {{name: local}}\nspec:\n  api: ollama\n  url: http://127.0.0.1:{port}\n  models: [\"qwen2.5:0.5b\"]\n"
        ),
    );
    sandbox.commit("a model to pull");
    let mut pass = sandbox
        .cmd(&["reconcile"])
        .env("MIRROR_PROGRESS", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(pass.stderr.take().unwrap());
    let mut seen = String::new();
    read_until(&mut stderr, &mut seen, "local: qwen2.5:0.5b: pulling");
    let interrupted_at = std::time::Instant::now();
    std::process::Command::new("kill")
        .args(["-INT", &pass.id().to_string()])
        .status()
        .unwrap();
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut pass.stdout.take().unwrap(), &mut stdout).unwrap();
    let status = pass.wait().unwrap();
    assert!(
        interrupted_at.elapsed() < std::time::Duration::from_secs(5),
        "stopped at once"
    );
    assert_eq!(status.code(), Some(130), "{seen}\n{stdout}");
    assert!(stdout.contains("interrupted (SIGINT) while pulling"), "{stdout}");
}

fn agent_files(policy_tools: &str, outside: &Path) -> String {
    format!(
        "apiVersion: mirror.os/v1\nkind: Policy\nmetadata: {{name: default}}\nspec:\n  tools: {policy_tools}\n---\napiVersion: mirror.os/v1\nkind: Agent\nmetadata: {{name: scribe}}\nspec:\n  policy: default\n  memory: {{read: [shared], write: [scribe]}}\n  command:\n    - sh\n    - -c\n    - |\n      echo agent scribe up\n      env > \"$MIRROR_SANDBOX/env\"\n      echo inside > \"$MIRROR_SANDBOX/inside\"\n      (echo outside > {outside:?}) 2> \"$MIRROR_SANDBOX/denied\"\n      trap 'echo reloaded >> \"$MIRROR_SANDBOX/hup\"' HUP\n      while true; do sleep 0.2; done\n",
    )
}

#[test]
fn an_agent_is_enrolled_sandboxed_told_of_policy_changes_and_revoked_when_removed() {
    use std::os::unix::fs::PermissionsExt;
    let sandbox = Sandbox::new();
    let _reaper = Reaper(&sandbox);
    let outside = sandbox.root().join("outside.txt");
    sandbox.write("agent.yaml", agent_files("[{name: fs.read, risk: low}]", &outside));
    sandbox.commit("an agent");

    let applied = sandbox.run(&["reconcile"]);
    assert_eq!(applied.code, 0, "{applied:?}");
    assert!(applied.stdout.contains("enrolled: sandbox"), "{}", applied.stdout);
    assert!(
        applied
            .stdout
            .contains("note: agents reach the model bus at 127.0.0.1:11500 only while `mirrorctl run` serves it"),
        "{}",
        applied.stdout
    );
    let state = sandbox.root().join("state");
    let home = state.join("sandboxes/scribe");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&home), 0o700, "the sandbox is private");
    let token_file = state.join("agents/scribe/bus-token");
    assert_eq!(mode(&token_file), 0o600);
    let token = std::fs::read_to_string(&token_file).unwrap();
    let enrollment = std::fs::read_to_string(state.join("agents/scribe/enrollment.json")).unwrap();
    assert!(!enrollment.contains(&token), "only the token's hash is kept");

    // The agent runs in its sandbox and learns who it is from its environment.
    wait_for("the agent's first writes", Duration::from_secs(10), || {
        home.join("denied").exists()
    });
    let env = std::fs::read_to_string(home.join("env")).unwrap();
    for expected in [
        "MIRROR_AGENT=scribe".to_string(),
        format!("MIRROR_AGENT_TOKEN={token}"),
        "MIRROR_BUS_URL=http://127.0.0.1:11500".to_string(),
        format!("MIRROR_SANDBOX={}", home.display()),
        "MIRROR_MEMORY_READ=shared".to_string(),
        "MIRROR_MEMORY_WRITE=scribe".to_string(),
        format!("PWD={}", home.display()),
    ] {
        assert!(env.lines().any(|l| l == expected), "{expected} in:\n{env}");
    }
    assert!(home.join("inside").exists(), "writes inside the sandbox work");
    let logs = sandbox.run(&["logs", "scribe"]);
    assert!(
        logs.stdout.contains("agent scribe up"),
        "the agent's log by its name: {logs:?}"
    );
    let status = sandbox.run(&["status", "--output", "json"]).json();
    let enforced = status["sandbox"].as_str().unwrap().starts_with("enforced");
    if enforced {
        assert!(!outside.exists(), "a write outside the sandbox is denied");
        let denied = std::fs::read_to_string(home.join("denied")).unwrap();
        assert!(denied.contains("Permission denied"), "{denied}");
    } else {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "SKIPPED (Landlock): {}", status["sandbox"]);
    }
    let policy_file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("agents/scribe/view/policy.json")).unwrap()).unwrap();
    assert_eq!(policy_file["policy"]["version"], 1, "{policy_file}");
    let pid = owned(&sandbox).into_iter().find(|(n, _)| n == "scribe").unwrap().1;

    // A policy change: a new version, reviewed as a diff, then reaching the running agent.
    sandbox.write(
        "agent.yaml",
        agent_files("[{name: fs.read, risk: low}, {name: shell.exec, risk: high}]", &outside),
    );
    sandbox.commit("the agent may ask for a shell");
    let plan = sandbox.run(&["reconcile", "--dry-run"]);
    assert_eq!(plan.code, 2, "{plan:?}");
    assert!(
        plan.stdout.contains("~ Policy/default: version 1 -> 2"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("+") && plan.stdout.contains("shell.exec"),
        "{}",
        plan.stdout
    );
    let applied = sandbox.run(&["reconcile"]);
    assert_eq!(applied.code, 0, "{applied:?}");
    let policy_file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("agents/scribe/view/policy.json")).unwrap()).unwrap();
    assert_eq!(policy_file["policy"]["version"], 2, "{policy_file}");
    wait_for("the agent told by SIGHUP", Duration::from_secs(10), || {
        home.join("hup").exists()
    });
    let same_pid = owned(&sandbox).into_iter().find(|(n, _)| n == "scribe").unwrap().1;
    assert_eq!(same_pid, pid, "a signalled agent keeps running");
    assert_eq!(sandbox.run(&["reconcile", "--dry-run"]).code, 0, "nothing pending");

    // Removed: stopped, token revoked, sandbox kept (and said so).
    sandbox.remove("agent.yaml");
    sandbox.write(
        "keep.yaml",
        "apiVersion: mirror.os/v1\nkind: Policy\nmetadata: {name: default}\nspec: {}\n",
    );
    sandbox.commit("the agent leaves");
    let pruned = sandbox.run(&["reconcile", "--allow-mass-prune"]);
    assert_eq!(pruned.code, 0, "{pruned:?}");
    assert!(
        pruned.stdout.contains("token revoked; sandbox kept at"),
        "{}",
        pruned.stdout
    );
    assert!(!token_file.exists());
    assert!(home.join("inside").exists());
}
