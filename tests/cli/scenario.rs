//! End to end, as a user lives it: `mirrorctl init`, the daemon, then a series of commits (add a
//! service, change its env, add a provider and an agent, break the YAML, fix it, remove things,
//! empty the path); after each, the processes, routes, status and the stored drift reports.

use std::time::Duration;

use serde_json::Value;

use crate::daemon::{alive, Daemon};
use crate::support::*;

/// Every command of this scenario reads `desired/` of the repository `init` made.
fn mirror(sandbox: &Sandbox, args: &[&str]) -> Run {
    let mut all = args.to_vec();
    all.extend(["--path", "desired"]);
    sandbox.run(&all)
}

fn status(sandbox: &Sandbox) -> Value {
    serde_json::from_str(&mirror(sandbox, &["status", "--output", "json"]).stdout).unwrap_or(Value::Null)
}

/// The pid of a running resource (`Kind/name`), as `status` says.
fn pid(sandbox: &Sandbox, kind: &str, name: &str) -> Option<i64> {
    status(sandbox)["resources"]
        .as_array()?
        .iter()
        .find(|r| r["kind"] == kind && r["name"] == name)?["pid"]
        .as_i64()
}

/// The provider an agent is routed to: the agent's own `route` in `resources` (the JSON
/// contract), which must agree with the daemon's `routes` list.
fn route(sandbox: &Sandbox, agent: &str) -> Option<String> {
    let status = status(sandbox);
    let listed = status["routes"]
        .as_array()?
        .iter()
        .find(|r| r["agent"] == agent)
        .and_then(|r| r["provider"].as_str());
    let resource = status["resources"]
        .as_array()?
        .iter()
        .find(|r| r["kind"] == "Agent" && r["name"] == agent)?;
    let own = resource["route"]["provider"].as_str();
    assert_eq!(
        own, listed,
        "the agent's route and the routes list disagree: {status:#}"
    );
    if own.is_some() {
        assert!(resource["route"]["model"].is_string(), "{status:#}");
        assert!(resource["route"]["probed"].is_boolean(), "{status:#}");
    }
    own.map(str::to_string)
}

/// The stored drift reports, newest first.
fn reports(sandbox: &Sandbox) -> Vec<Value> {
    let list = mirror(sandbox, &["drift", "list", "--output", "json"]).json();
    list["reports"].as_array().cloned().unwrap_or_default()
}

/// Waits for a stored report newer than `seen` whose items satisfy `check`; returns its items.
fn wait_for_report(sandbox: &Sandbox, seen: &[Value], what: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let known: Vec<&Value> = seen.iter().map(|r| &r["id"]).collect();
    let mut found = Vec::new();
    wait_for(what, Duration::from_secs(15), || {
        for report in reports(sandbox) {
            if known.contains(&&report["id"]) {
                continue;
            }
            let id = report["id"].as_str().unwrap_or_default().to_string();
            let shown = mirror(sandbox, &["drift", "show", &id, "--output", "json"]).json();
            let items = shown["items"].as_array().cloned().unwrap_or_default();
            if check(&items) {
                found = items;
                return true;
            }
        }
        false
    });
    found
}

fn environ(pid: i64) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default()).replace('\0', "\n")
}

fn worker(greeting: &str) -> String {
    format!(
        "apiVersion: mirror.os/v1\nkind: Service\nmetadata: {{name: worker}}\nspec:\n  command: [sh, -c, \"exec sleep 4100\"]\n  env: {{GREETING: {greeting}}}\n  stop: {{grace: 2s}}\n"
    )
}

/// A model server run as a Service, and its provider.
fn local_llm(port: u16) -> String {
    let fake = project_path("scripts/fake-llm").display().to_string();
    format!(
        "apiVersion: mirror.os/v1\nkind: Service\nmetadata: {{name: llm}}\nspec:\n  command: [python3, {fake:?}, --port, \"{port}\", --name, local]\n  stop: {{grace: 1s}}\n---\napiVersion: mirror.os/v1\nkind: ModelProvider\nmetadata: {{name: local}}\nspec:\n  api: ollama\n  url: http://127.0.0.1:{port}\n  service: llm\n  models: [\"llama3.2:1b\"]\n  health: {{interval: 300ms, timeout: 1s, failureThreshold: 2}}\n"
    )
}

const AGENT: &str = "apiVersion: mirror.os/v1\nkind: Agent\nmetadata: {name: helper}\nspec:\n  command: [sleep, \"4200\"]\n  policy: default\n  model: {primary: {provider: local, model: \"llama3.2:1b\"}}\n";

#[test]
fn a_host_lives_through_a_series_of_commits() {
    let sandbox = Sandbox::bare_dir();
    let _cleanup = Cleanup(sandbox.root().to_path_buf());
    let init = sandbox.run(&["init", sandbox.root().join("repo").to_str().unwrap()]);
    assert_eq!(init.code, 0, "{init:?}");

    // 1. This host's ports (the example's are fixed), committed; the daemon makes it so.
    // Never a well-known port of the host: a real Ollama on 11434 must not change the test.
    let (web, bus, backup, ollama) = (free_port(), free_port(), free_port(), free_port());
    let edit = |file: &str, from: &str, to: &str| {
        let path = sandbox.repo().join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{file} has {from}");
        std::fs::write(&path, text.replace(from, to)).unwrap();
    };
    edit("desired/services.yaml", "8787", &web.to_string());
    edit(
        "desired/controller.yaml",
        "127.0.0.1:11500",
        &format!("127.0.0.1:{bus}"),
    );
    edit(
        "desired/providers.yaml",
        "127.0.0.1:8080",
        &format!("127.0.0.1:{backup}"),
    );
    edit(
        "desired/providers.yaml",
        "127.0.0.1:11434",
        &format!("127.0.0.1:{ollama}"),
    );
    edit(
        "desired/services.yaml",
        "127.0.0.1:11434",
        &format!("127.0.0.1:{ollama}"),
    );
    sandbox.commit("this host's ports");
    let daemon = Daemon::start(&sandbox, &["--path", "desired"]).ready(&sandbox);
    wait_for("web and the example agent running", Duration::from_secs(20), || {
        pid(&sandbox, "Service", "web").is_some() && pid(&sandbox, "Agent", "archivist").is_some()
    });
    wait_for("web answering on its port", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", web)).is_ok()
    });
    assert_eq!(pid(&sandbox, "Service", "ollama"), None, "ollama ships suspended");
    wait_for(
        "the example agent without a route (no provider answers)",
        Duration::from_secs(15),
        || route(&sandbox, "archivist").is_none(),
    );
    let first = wait_for_report(&sandbox, &[], "the first report", |items| {
        items.iter().any(|i| i["kind"] == "Agent" && i["name"] == "archivist")
    });
    assert!(first.iter().all(|i| i["drift"] != "invalid_source"), "{first:?}");
    let web_pid = pid(&sandbox, "Service", "web").unwrap();

    // 2. Add a service.
    sandbox.write("desired/worker.yaml", worker("hello"));
    sandbox.commit("a worker");
    wait_for("the worker running", Duration::from_secs(10), || {
        pid(&sandbox, "Service", "worker").is_some()
    });
    let worker_pid = pid(&sandbox, "Service", "worker").unwrap();
    assert!(environ(worker_pid).contains("GREETING=hello"));

    // 3. Change its env: restarted with the new env, the old process gone.
    sandbox.write("desired/worker.yaml", worker("bonjour"));
    sandbox.commit("the worker speaks French");
    wait_for("the worker restarted", Duration::from_secs(10), || {
        pid(&sandbox, "Service", "worker").is_some_and(|p| p != worker_pid)
    });
    let worker_pid = pid(&sandbox, "Service", "worker").unwrap();
    assert!(environ(worker_pid).contains("GREETING=bonjour"));
    assert_eq!(pid(&sandbox, "Service", "web"), Some(web_pid), "web untouched");

    // 4. A provider (a model server run as a Service) and an agent routed to it.
    let llm = free_port();
    sandbox.write("desired/local-llm.yaml", format!("{}---\n{AGENT}", local_llm(llm)));
    sandbox.commit("a local model and an agent on it");
    wait_for("the agent routed to the new provider", Duration::from_secs(20), || {
        route(&sandbox, "helper").as_deref() == Some("local")
    });
    let helper_pid = pid(&sandbox, "Agent", "helper").expect("the agent runs");
    let token = sandbox.root().join("state/agents/helper/bus-token");
    assert!(token.exists(), "enrolled: its token handed over");

    // 5. Broken YAML: nothing changes, and the report says where.
    let before = reports(&sandbox);
    sandbox.write("desired/worker.yaml", format!("{}  restart: [always\n", worker("hola")));
    sandbox.commit("a typo");
    let items = wait_for_report(&sandbox, &before, "a report of the invalid commit", |items| {
        items.iter().any(|i| i["drift"] == "invalid_source")
    });
    let invalid = items.iter().find(|i| i["drift"] == "invalid_source").unwrap();
    assert!(
        invalid["detail"].as_str().unwrap().contains("worker.yaml:"),
        "{invalid}"
    );
    let dry = mirror(&sandbox, &["reconcile", "--dry-run"]);
    assert_eq!(dry.code, 1, "{dry:?}");
    assert!(dry.stdout.contains("worker.yaml:"), "{}", dry.stdout);
    for (kind, name, was) in [
        ("Service", "worker", worker_pid),
        ("Service", "web", web_pid),
        ("Agent", "helper", helper_pid),
    ] {
        assert_eq!(
            pid(&sandbox, kind, name),
            Some(was),
            "{kind}/{name} untouched by an invalid commit"
        );
    }

    // 6. Fixed: the fix applies.
    sandbox.write("desired/worker.yaml", worker("hola"));
    sandbox.commit("fix the typo");
    wait_for("the fixed worker restarted", Duration::from_secs(10), || {
        pid(&sandbox, "Service", "worker").is_some_and(|p| p != worker_pid)
    });
    let fixed = pid(&sandbox, "Service", "worker").unwrap();
    assert!(environ(fixed).contains("GREETING=hola"));
    assert!(!alive(worker_pid));

    // 7. Remove the worker and the agent: stopped, the agent's token revoked.
    sandbox.remove("desired/worker.yaml");
    sandbox.write("desired/local-llm.yaml", local_llm(llm));
    sandbox.commit("retire the worker and the helper");
    wait_for("the worker and the agent stopped", Duration::from_secs(10), || {
        !alive(fixed) && !alive(helper_pid)
    });
    assert_eq!(pid(&sandbox, "Service", "worker"), None);
    assert_eq!(route(&sandbox, "helper"), None);
    assert!(!token.exists(), "the revoked agent's token is gone");
    let llm_pid = pid(&sandbox, "Service", "llm").unwrap();

    // 8. Empty the path: the prune guard refuses to stop everything; the report says so.
    let before = reports(&sandbox);
    for file in [
        "agents.yaml",
        "controller.yaml",
        "launch-agents.yaml",
        "local-llm.yaml",
        "memory-rules.yaml",
        "policies.yaml",
        "providers.yaml",
        "services.yaml",
    ] {
        sandbox.remove(&format!("desired/{file}"));
    }
    sandbox.write("desired/.keep", "");
    sandbox.commit("empty the path");
    let dry = mirror(&sandbox, &["reconcile", "--dry-run"]);
    assert_eq!(dry.code, 1, "{dry:?}");
    assert!(dry.stdout.contains("refused"), "{}", dry.stdout);
    std::thread::sleep(Duration::from_secs(1));
    for (kind, name, was) in [("Service", "web", web_pid), ("Service", "llm", llm_pid)] {
        assert!(alive(was), "{kind}/{name} still runs");
    }
    let items = wait_for_report(&sandbox, &before, "a report of the emptied path", |items| {
        items.iter().any(|i| i["name"] == "web")
    });
    let web_item = items.iter().find(|i| i["name"] == "web").unwrap();
    assert_eq!(web_item["drift"], "stale", "{items:?}");
    assert_eq!(web_item["corrective"], false, "not pruned: {items:?}");
    let text = mirror(&sandbox, &["status"]).stdout;
    assert!(text.contains("web"), "{text}");
    assert!(daemon.log().contains("refused"), "{}", daemon.log());

    // 9. Everything the host wrote in its state dir is named in its layout (what an agent must
    // never reach, what a backup takes): nothing written by a module on its own.
    let known: Vec<&str> = mirrorctl::state::ENTRIES.iter().map(|e| e.name).collect();
    for entry in std::fs::read_dir(sandbox.root().join("state")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(known.contains(&name.as_str()), "{name} is not in state::ENTRIES");
    }
}
