//! The attack suite: an enrolled agent that wants out, under a real daemon. Every escape of
//! issue 17 is tried from inside the agent (`tests/fixtures/attacker.py`) and must be refused;
//! the agent must still work (the bus answers it through the standard client environment, its
//! sandbox is writable, its declared ports work). Needs Landlock ABI 6 and a writable cgroup
//! (this machine and CI have both, as root); elsewhere it is skipped, visibly.

use std::time::Duration;

use mirrorctl::supervisor::sandbox::{self, Support};

use crate::daemon::{resource_of, status, Daemon};
use crate::sandbox::skipped;
use crate::support::*;

/// Landlock with signal scoping (ABI 6) and a writable cgroup v2 or pids hierarchy.
fn contained_host(test: &str) -> bool {
    match sandbox::support() {
        Support::Enforced { abi } if abi >= 6 => {}
        other => {
            skipped(&format!("{test}: needs Landlock ABI 6, this kernel: {other}"));
            return false;
        }
    }
    let probe = tempfile::tempdir().unwrap();
    match mirrorctl::supervisor::cgroup::support(probe.path()) {
        mirrorctl::supervisor::cgroup::Support::Available { .. } => true,
        mirrorctl::supervisor::cgroup::Support::Unavailable { reason } => {
            skipped(&format!("{test}: needs a writable cgroup ({reason})"));
            false
        }
    }
}

const PROVIDER: &str = "apiVersion: mirror.os/v1
kind: ModelProvider
metadata: {name: solo}
spec:
  api: ollama
  url: http://127.0.0.1:LLM
  service: llm
";

#[test]
fn an_agent_cannot_read_signal_connect_or_approve_its_way_out() {
    if !contained_host("an_agent_cannot_read_signal_connect_or_approve_its_way_out") {
        return;
    }
    let sandbox = Sandbox::new();
    let _cleanup = Cleanup(sandbox.root().to_path_buf());
    let state = sandbox.root().join("state");
    let (llm, bus, service_port, allowed, bind) = (free_port(), free_port(), free_port(), free_port(), free_port());
    let abstract_name = format!("mirrorctl-test-{}-{llm}", std::process::id());

    // What the agent must not reach: secrets of a Service, another agent's notes, the user's key.
    std::fs::create_dir_all(state.join("secrets")).unwrap();
    std::fs::write(state.join("secrets/llm.env"), "CLOUD_API_KEY=sk-do-not-leak\n").unwrap();
    std::fs::create_dir_all(state.join("sandboxes/victim")).unwrap();
    std::fs::write(state.join("sandboxes/victim/notes.txt"), "private").unwrap();
    std::fs::create_dir_all(sandbox.root().join("home/.ssh")).unwrap();
    std::fs::write(sandbox.root().join("home/.ssh/id_ed25519"), "PRIVATE KEY").unwrap();
    // A declared port that answers, and an abstract socket made outside the sandbox.
    let allowed_listener = std::net::TcpListener::bind(("127.0.0.1", allowed)).unwrap();
    use std::os::linux::net::SocketAddrExt;
    let abstract_listener = std::os::unix::net::UnixListener::bind_addr(
        &std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes()).unwrap(),
    )
    .unwrap();

    let attacker = sandbox.repo().join("attacker.py");
    std::fs::copy(project_path("tests/fixtures/attacker.py"), &attacker).unwrap();
    let fake = project_path("scripts/fake-llm").display().to_string();
    let args = [
        state.display().to_string(),
        llm.to_string(),
        service_port.to_string(),
        allowed.to_string(),
        bind.to_string(),
        abstract_name.clone(),
        env!("CARGO_BIN_EXE_mirrorctl").to_string(),
    ];
    sandbox.write(
        "host.yaml",
        format!(
            "apiVersion: mirror.os/v1\nkind: Service\nmetadata: {{name: llm}}\nspec:\n  command: [python3, {fake:?}, --port, \"{llm}\", --name, solo]\n  envFiles: [secrets/llm.env]\n---\n{}---\napiVersion: mirror.os/v1\nkind: Policy\nmetadata: {{name: jail}}\nspec:\n  tools: [{{name: shell.exec, risk: high}}]\n  network: {{connect: [{allowed}], bind: [{bind}]}}\n---\napiVersion: mirror.os/v1\nkind: Agent\nmetadata: {{name: mallory}}\nspec:\n  command: [python3, {attacker:?}, {}]\n  policy: jail\n  model: {{primary: {{provider: solo, model: \"llama3.2:1b\"}}}}\n  limits: {{memory: 256Mi}}\n---\napiVersion: mirror.os/v1\nkind: Agent\nmetadata: {{name: victim}}\nspec:\n  command: [sleep, \"4999\"]\n  policy: jail\n---\napiVersion: mirror.os/v1\nkind: Controller\nmetadata: {{name: main}}\nspec:\n  bus: {{address: \"127.0.0.1:{bus}\"}}\n",
            PROVIDER.replace("LLM", &llm.to_string()),
            args.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", "),
        ),
    );
    sandbox.commit("an attacker, a victim, a model");
    let daemon = Daemon::start(&sandbox, &[]).ready(&sandbox);
    let results_path = state.join("sandboxes/mallory/results.json");
    wait_for("the attacker's results", Duration::from_secs(60), || {
        results_path.exists()
    });
    let results: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&results_path).unwrap()).unwrap();
    let shown = serde_json::to_string_pretty(&results).unwrap();
    drop((allowed_listener, abstract_listener));

    let works = [
        "chat through the bus (OpenAI env)",
        "list models through the bus (Ollama env)",
        "write in its sandbox",
        "read its policy file",
        "connect to a declared port",
        "bind a declared port",
        "read system files",
    ];
    assert_eq!(results.len(), 30, "every attempt reported:\n{shown}");
    for (attempt, outcome) in &results {
        let outcome = outcome.as_str().unwrap();
        if works.contains(&attempt.as_str()) {
            assert!(outcome.starts_with("ok: "), "{attempt}: {outcome}\n{shown}");
        } else {
            assert!(outcome.starts_with("refused: "), "{attempt}: {outcome}\n{shown}");
        }
    }
    // Refused by the kernel, not by an accident of the test (a busy port, a missing file).
    for attempt in [
        "read another agent's token",
        "read the host key",
        "read the user's ssh key",
        "read another agent's sandbox",
        "connect to the provider's port",
        "bind the service's port",
        "SIGSTOP the daemon",
        "SIGKILL another agent",
        "connect to an abstract socket outside",
        "read another agent's environment",
        "read the daemon's environment",
    ] {
        assert!(
            results[attempt]
                .as_str()
                .unwrap()
                .starts_with("refused: PermissionError"),
            "{attempt}: {}",
            results[attempt]
        );
    }
    assert!(results["chat through the bus (OpenAI env)"]
        .as_str()
        .unwrap()
        .contains("[solo]"));

    // The host is unharmed: the daemon answers, the victim and the model run, nothing restarted.
    let json = status(&sandbox).json();
    for name in ["victim", "llm", "mallory"] {
        let resource = resource_of(&json, name).unwrap();
        assert_eq!(resource["health"], "Healthy", "{name}: {resource}");
        assert_eq!(resource["restarts"], 0, "{name}: {resource}");
    }
    // What contains the agent is shown, all of it enforced on this host.
    let protections = resource_of(&json, "mallory").unwrap()["protections"].clone();
    let names: Vec<&str> = protections
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            // Pathname Unix sockets: Landlock ABI 9 (not on this kernel line); said, not hidden.
            let expected = if p["name"] == "unix-sockets" {
                "advisory"
            } else {
                "enforced"
            };
            assert_eq!(p["state"], expected, "{p}");
            p["name"].as_str().unwrap()
        })
        .collect();
    for expected in [
        "limits",
        "unix-sockets",
        "reads",
        "writes",
        "tcp",
        "signals",
        "abstract-sockets",
        "cgroup",
        "control-socket",
    ] {
        assert!(names.contains(&expected), "{expected} in {protections}");
    }
    assert!(status_text_says_contained(&sandbox));
    // The refusals are logged (and receipted) with the agent named.
    let log = daemon.log();
    assert!(
        log.contains("control socket: refused an agent's connection") && log.contains("mallory"),
        "{log}"
    );
    // The enrollment records what contained it.
    let enrollment = std::fs::read_to_string(state.join("agents/mallory/enrollment.json")).unwrap();
    assert!(
        enrollment.contains("\"protections\"") && enrollment.contains("cgroup"),
        "{enrollment}"
    );
}

fn status_text_says_contained(sandbox: &Sandbox) -> bool {
    let text = sandbox.run(&["status"]).stdout;
    text.lines()
        .any(|l| l.starts_with("agent mallory contained: writes, reads, ptrace, tcp, signals, abstract-sockets, cgroup, limits, control-socket enforced; unix-sockets advisory (pathname Unix sockets stay connectable"))
        || panic!("{text}")
}

#[test]
fn stopping_an_agent_or_a_service_stops_what_left_its_group_and_cleared_its_environment() {
    if !contained_host("stopping_an_agent_or_a_service_stops_what_left_its_group_and_cleared_its_environment") {
        return;
    }
    let sandbox = Sandbox::new();
    let _cleanup = Cleanup(sandbox.root().to_path_buf());
    let marker = format!("{}", 4000 + free_port() % 1000);
    // The bus on a free port, never the default one a user's host may serve.
    sandbox.write(
        "policy.yaml",
        format!("apiVersion: mirror.os/v1\nkind: Policy\nmetadata: {{name: p}}\nspec: {{}}\n---\napiVersion: mirror.os/v1\nkind: Controller\nmetadata: {{name: main}}\nspec:\n  bus: {{address: \"127.0.0.1:{}\"}}\n", free_port()),
    );
    // What stays (removing most resources at once would be refused as a mass prune).
    sandbox.write("svc.yaml", crate::daemon::service("stays", "exec sleep 4701", ""));
    sandbox.write("svc2.yaml", crate::daemon::service("stays2", "exec sleep 4703", ""));
    sandbox.write("svc3.yaml", crate::daemon::service("stays3", "exec sleep 4704", ""));
    // The escapees: a new session, an empty environment, the parent gone (reparented to init).
    sandbox.write(
        "agent.yaml",
        format!(
            "apiVersion: mirror.os/v1\nkind: Agent\nmetadata: {{name: sneaky}}\nspec:\n  command: [sh, -c, \"setsid env -i /bin/sleep 7{marker} & exec sleep 4700\"]\n  policy: p\n"
        ),
    );
    sandbox.write(
        "leaky.yaml",
        crate::daemon::service(
            "leaky",
            &format!("setsid env -i /bin/sleep 8{marker} & exec sleep 4702"),
            "",
        ),
    );
    sandbox.commit("a sneaky agent and a leaky service");
    let _daemon = Daemon::start(&sandbox, &[]).ready(&sandbox);
    let escapees = || {
        let mut pids = pids_with_cmdline(&format!("/bin/sleep 7{marker}"));
        pids.extend(pids_with_cmdline(&format!("/bin/sleep 8{marker}")));
        pids
    };
    wait_for("the escapees", Duration::from_secs(15), || escapees().len() == 2);
    for pid in escapees() {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        assert!(environ.is_empty(), "the escapee cleared its environment");
    }

    sandbox.remove("agent.yaml");
    sandbox.remove("leaky.yaml");
    sandbox.commit("they leave");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !escapees().is_empty() {
        if std::time::Instant::now() > deadline {
            let left: Vec<String> = escapees()
                .iter()
                .map(|pid| {
                    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
                    format!("{pid} {}: {cgroup}", String::from_utf8_lossy(&cmd))
                })
                .collect();
            panic!("escapees left running: {left:#?}\n{}", _daemon.log());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn pids_with_cmdline(needle: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " ").trim_end() == needle)
                .unwrap_or(false)
        })
        .collect()
}

#[test]
fn a_preview_of_another_repository_gets_none_of_the_daemons_credentials() {
    let sandbox = Sandbox::new();
    let _cleanup = Cleanup(sandbox.root().to_path_buf());
    sandbox.write("svc.yaml", crate::daemon::service("a", "exec sleep 4800", ""));
    sandbox.commit("the daemon's own source");
    // The daemon has a cloud key in its environment.
    let log = sandbox.root().join("daemon.log");
    let mut child = sandbox
        .cmd(&["run"])
        .env("CLOUD_API_KEY", "sk-daemon-secret")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for("the daemon", Duration::from_secs(20), || {
        sandbox.root().join("state/control.sock").exists()
    });

    // Another repository (anyone's) whose provider points at a port its author listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            use std::io::{Read, Write};
            let mut stream = stream;
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buffer = [0u8; 4096];
            let n = stream.read(&mut buffer).unwrap_or(0);
            sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buffer[..n]));
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{\"data\":[]}");
        }
    });
    let other = Sandbox::new();
    other.write("svc.yaml", crate::daemon::service("a", "exec sleep 4800", ""));
    other.write(
        "p.yaml",
        format!("apiVersion: mirror.os/v1\nkind: ModelProvider\nmetadata: {{name: cloud}}\nspec:\n  api: openai\n  url: http://127.0.0.1:{port}/v1\n  local: true\n  apiKeyEnv: CLOUD_API_KEY\n  models: [gpt-x]\n"),
    );
    other.commit("a provider that phones home");
    let preview = sandbox.run(&["reconcile", "--dry-run", "--repo", other.repo().to_str().unwrap()]);
    assert!(matches!(preview.code, 0 | 2), "{preview:?}");
    wait_for("the probe", Duration::from_secs(10), || {
        !seen.lock().unwrap().is_empty()
    });
    let requests = seen.lock().unwrap().clone();
    assert!(!requests.contains("sk-daemon-secret"), "the key leaked:\n{requests}");
    assert!(!requests.to_ascii_lowercase().contains("authorization"), "{requests}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn ports_and_hidden_paths_of_a_policy_are_checked_with_their_position() {
    let sandbox = Sandbox::new();
    sandbox.write(
        "policy.yaml",
        "apiVersion: mirror.os/v1\nkind: Policy\nmetadata: {name: p}\nspec:\n  network:\n    connect: [443, 70000]\n    bind: [0]\n  hidePaths: [relative/path]\n",
    );
    sandbox.write(
        "agent.yaml",
        "apiVersion: mirror.os/v1\nkind: Agent\nmetadata: {name: a}\nspec:\n  command: [sleep, \"1\"]\n  policy: p\n  limits: {cpu: 0}\n",
    );
    sandbox.commit("bad ports");
    let run = sandbox.run(&["validate"]);
    assert_eq!(run.code, 1, "{run:?}");
    for expected in [
        "policy.yaml:6:20: Policy/p: spec.network.connect[1]: expected a TCP port from 1 to 65535, found 70000",
        "policy.yaml:7:12: Policy/p: spec.network.bind[0]: expected a TCP port from 1 to 65535, found 0",
        "policy.yaml:8:15: Policy/p: spec.hidePaths[0]: expected an absolute path or one starting with `~/`, found `relative/path`",
        "agent.yaml:7:17: Agent/a: spec.limits.cpu: expected a number of CPU cores from 0.01 to 4096 (e.g. 0.5), found 0",
    ] {
        assert!(run.stdout.contains(expected) || run.stderr.contains(expected), "missing {expected}\n{run:?}");
    }
}

#[test]
fn a_stranger_on_a_providers_port_is_hijacked_not_healthy() {
    let sandbox = Sandbox::new();
    let _cleanup = Cleanup(sandbox.root().to_path_buf());
    let fake = project_path("scripts/fake-llm").display().to_string();
    let (port, backup, bus) = (free_port(), free_port(), free_port());
    // The stranger holds the local model's port before its Service starts (or after killing it).
    let mut stranger = std::process::Command::new("python3")
        .args([fake.as_str(), "--port", &port.to_string(), "--name", "evil"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the stranger listening", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let health = "{interval: 200ms, timeout: 2s, failureThreshold: 2}";
    sandbox.write(
        "host.yaml",
        format!(
            "apiVersion: mirror.os/v1\nkind: Service\nmetadata: {{name: llm}}\nspec:\n  command: [python3, {fake:?}, --port, \"{port}\", --name, solo]\n---\napiVersion: mirror.os/v1\nkind: Service\nmetadata: {{name: llm2}}\nspec:\n  command: [python3, {fake:?}, --port, \"{backup}\", --name, backup]\n---\napiVersion: mirror.os/v1\nkind: ModelProvider\nmetadata: {{name: solo}}\nspec:\n  api: ollama\n  url: http://127.0.0.1:{port}\n  service: llm\n  health: {health}\n---\napiVersion: mirror.os/v1\nkind: ModelProvider\nmetadata: {{name: backup}}\nspec:\n  api: ollama\n  url: http://127.0.0.1:{backup}\n  service: llm2\n  health: {health}\n---\napiVersion: mirror.os/v1\nkind: Policy\nmetadata: {{name: p}}\nspec: {{}}\n---\napiVersion: mirror.os/v1\nkind: Agent\nmetadata: {{name: a}}\nspec:\n  command: [sleep, \"4900\"]\n  policy: p\n  model:\n    primary: {{provider: solo, model: \"llama3.2:1b\"}}\n    fallbacks: [{{provider: backup, model: \"llama3.2:1b\"}}]\n---\napiVersion: mirror.os/v1\nkind: Controller\nmetadata: {{name: main}}\nspec:\n  bus: {{address: \"127.0.0.1:{bus}\"}}\n"
        ),
    );
    sandbox.commit("a local model whose port is taken");
    let daemon = Daemon::start(&sandbox, &[]).ready(&sandbox);
    let provider = |json: &serde_json::Value, name: &str| {
        json["providers"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name).cloned())
            .unwrap_or_default()
    };
    let held_by = format!("held by pid {}", stranger.id());
    wait_for(
        "the provider found hijacked and the agent moved",
        Duration::from_secs(20),
        || {
            let json = status(&sandbox).json();
            let solo = provider(&json, "solo");
            solo["verdict"]["state"] == "hijacked"
                && solo["verdict"]["why"].as_str().is_some_and(|w| w.contains(&held_by))
                && provider(&json, "backup")["healthy_since_ms"].is_i64()
                && crate::daemon::route_of(&sandbox, "a") == Some(("backup".into(), true))
        },
    );
    let json = status(&sandbox).json();
    let why = provider(&json, "solo")["verdict"]["why"].as_str().unwrap().to_string();
    assert!(why.contains("evil") && why.contains("not by Service/llm"), "{why}");
    assert_ne!(resource_of(&json, "llm").unwrap()["health"], "Healthy", "{json}");
    let text = sandbox.run(&["status"]).stdout;
    assert!(
        text.lines().any(|l| l.starts_with("solo") && l.contains("Hijacked")),
        "{text}"
    );

    // The agent's requests go to the backup, never to the stranger.
    let token = std::fs::read_to_string(sandbox.root().join("state/agents/a/bus-token")).unwrap();
    let answer = chat(bus, &token);
    assert!(answer.contains("[backup]") && !answer.contains("[evil]"), "{answer}");
    // The drift report names the holder.
    let report = sandbox.run(&["drift", "report", "--output", "json"]).json();
    let item = report["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["kind"] == "ModelProvider" && i["name"] == "solo")
        .cloned()
        .unwrap_or_else(|| panic!("{report}"));
    assert!(item["detail"].as_str().unwrap().contains(&held_by), "{item}");
    assert!(daemon.log().contains("hijacked"), "{}", daemon.log());

    // Suspended, the Service is not ours to run: whoever serves the port is not judged (Ollama
    // started by hand on a host whose Ollama Service ships suspended).
    let text = std::fs::read_to_string(sandbox.repo().join("host.yaml")).unwrap();
    let suspended = text.replacen("--name, solo]\n", "--name, solo]\n  suspend: true\n", 1);
    assert_ne!(text, suspended);
    sandbox.write("host.yaml", suspended);
    sandbox.commit("the local model's Service suspended");
    wait_for("the provider answering, not judged", Duration::from_secs(20), || {
        provider(&status(&sandbox).json(), "solo")["verdict"]["state"] == "healthy"
    });
    let _ = stranger.kill();
    let _ = stranger.wait();
}

/// One chat completion through the bus as the agent; the answer's body.
fn chat(bus: u16, token: &str) -> String {
    use std::io::{Read, Write};
    let body = r#"{"model": "x", "messages": [{"role": "user", "content": "hi"}]}"#;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", bus)).unwrap();
    write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

#[test]
fn a_declared_read_path_that_does_not_exist_is_an_error_at_its_position() {
    let sandbox = Sandbox::new();
    let missing = sandbox.root().join("no-such-dir");
    sandbox.write(
        "agent.yaml",
        format!(
            "apiVersion: mirror.os/v1\nkind: Policy\nmetadata: {{name: p}}\nspec: {{}}\n---\napiVersion: mirror.os/v1\nkind: Agent\nmetadata: {{name: a}}\nspec:\n  command: [sleep, \"1\"]\n  policy: p\n  sandbox:\n    readPaths: [/etc, {missing:?}]\n    writePaths: [\".\", agents]\n"
        ),
    );
    sandbox.commit("a read path that is not there");
    let run = sandbox.run(&["validate"]);
    assert_eq!(run.code, 1, "{run:?}");
    let expected = format!(
        "agent.yaml:13:23: Agent/a: spec.sandbox.readPaths[1]: expected a path that exists on this host, found `{0}` ({0} does not exist)",
        missing.display()
    );
    assert!(run.stdout.contains(&expected), "{run:?}");
    // No declared path may open the state dir (its tokens, keys, truth store) to the agent.
    let state = sandbox.root().join("state");
    for expected in [
        format!("agent.yaml:14:18: Agent/a: spec.sandbox.writePaths[0]: expected a path outside the state dir, found `.`, which is or holds {} (tokens, keys, the truth store)", state.display()),
        format!("agent.yaml:14:23: Agent/a: spec.sandbox.writePaths[1]: expected a path outside the state dir, found `agents` inside {}", state.display()),
    ] {
        assert!(run.stdout.contains(&expected), "missing {expected}\n{run:?}");
    }
    // Nothing is applied from such a commit.
    let reconcile = sandbox.run(&["reconcile"]);
    assert_eq!(reconcile.code, 1, "{reconcile:?}");
    assert!(!sandbox.root().join("state/agents/a").exists());
    std::fs::create_dir_all(&missing).unwrap();
    assert_eq!(sandbox.run(&["validate"]).code, 1, "the write paths are still wrong");
}

#[cfg(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64")))]
#[test]
fn without_landlock_an_agent_still_starts_and_every_protection_says_advisory() {
    use crate::sandbox::without_landlock;
    let sandbox = Sandbox::new();
    let _cleanup = Cleanup(sandbox.root().to_path_buf());
    sandbox.write(
        "agent.yaml",
        "apiVersion: mirror.os/v1\nkind: Policy\nmetadata: {name: p}\nspec: {}\n---\napiVersion: mirror.os/v1\nkind: Agent\nmetadata: {name: plain}\nspec:\n  command: [sleep, \"4950\"]\n  policy: p\n",
    );
    sandbox.commit("an agent on an old kernel");
    // A kernel without Landlock, emulated: its system calls answer ENOSYS.
    let Some(applied) = without_landlock(sandbox.cmd(&["reconcile", "--output", "json"])) else {
        return;
    };
    assert_eq!(applied.code, 0, "{applied:?}");
    let id = applied.json()["report_id"].as_str().unwrap().to_string();
    let items = sandbox.run(&["drift", "show", &id, "--output", "json"]).json()["items"].clone();
    let warning = items
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["kind"] == "Agent" && i["name"] == "plain" && i["drift"] == "degraded")
        .unwrap_or_else(|| panic!("no drift item for the agent: {items}"));
    assert_eq!(warning["severity"], "warning", "{warning}");
    assert!(
        warning["detail"]
            .as_str()
            .unwrap()
            .starts_with("containment advisory on this host: writes (ENOSYS"),
        "{warning}"
    );
    let status = without_landlock(sandbox.cmd(&["status", "--output", "json"])).unwrap();
    let agent = resource_of(&status.json(), "plain").unwrap();
    assert_eq!(agent["health"], "Healthy", "it still runs: {agent}");
    let advisory: Vec<&str> = agent["protections"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["state"] == "advisory")
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        advisory,
        [
            "writes",
            "reads",
            "ptrace",
            "tcp",
            "signals",
            "abstract-sockets",
            "unix-sockets"
        ],
        "{agent}"
    );
    let log = std::fs::read_to_string(sandbox.root().join("state/logs/agent-plain.log")).unwrap();
    assert!(log.contains("sandbox advisory: Landlock not available"), "{log}");
}
