//! The user contract of DESIGN.md §4 (and the agent's environment of §3), walked as users rely on
//! it: every command of the table, the global options before or after the command and from the
//! environment, the exit codes, the JSON keys of plan, status, memory item and drift report, and
//! `status --fleet`.

use std::time::Duration;

use crate::daemon::service;
use crate::support::*;

/// DESIGN.md §4's command table.
const COMMANDS: &[&[&str]] = &[
    &["init"],
    &["validate"],
    &["reconcile"],
    &["run"],
    &["status"],
    &["drift", "report"],
    &["drift", "list"],
    &["drift", "show"],
    &["memory", "add"],
    &["memory", "list"],
    &["memory", "show"],
    &["memory", "touch"],
    &["memory", "verify"],
    &["memory", "history"],
    &["crds"],
    &["restart"],
    &["stop"],
    &["start"],
    &["completions"],
];

/// The global options and their environment variables (None: no variable).
const GLOBAL_OPTIONS: &[(&str, Option<&str>)] = &[
    ("--repo", Some("MIRROR_REPO")),
    ("--path", Some("MIRROR_PATH")),
    ("--ref", Some("MIRROR_REF")),
    ("--worktree", None),
    ("--store", Some("MIRROR_STORE")),
    ("--state-dir", Some("MIRROR_STATE_DIR")),
    ("--output", None),
];

#[test]
fn every_command_of_the_table_exists_with_its_help_and_the_global_options() {
    let sandbox = Sandbox::bare_dir();
    for command in COMMANDS {
        let mut args = command.to_vec();
        args.push("--help");
        let mut help = sandbox.run(&args);
        assert_eq!(help.code, 0, "{command:?}: {help:?}");
        // Help is wrapped to the terminal: compare words, not lines.
        help.stdout = help.stdout.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            help.stdout.contains(&format!("Usage: mirrorctl {}", command.join(" "))),
            "{command:?}: {}",
            help.stdout
        );
        for (option, env) in GLOBAL_OPTIONS {
            assert!(help.stdout.contains(option), "{command:?} lacks {option}");
            if let Some(env) = env {
                assert!(
                    help.stdout.contains(&format!("[env: {env}=")),
                    "{command:?}: {option} from {env}"
                );
            }
        }
    }
    let fleet = sandbox.run(&["status", "--help"]);
    assert!(fleet.stdout.contains("--fleet"), "{}", fleet.stdout);
}

/// A host with a service and an agent that writes down what it was given.
fn host(sandbox: &Sandbox) {
    sandbox.write("web.yaml", service("web", "exec sleep 4701", ""));
    sandbox.write(
        "agent.yaml",
        "apiVersion: mirror.os/v1\nkind: ModelProvider\nmetadata: {name: local}\nspec: {api: ollama, url: \"http://127.0.0.1:9\"}\n---\n\
         apiVersion: mirror.os/v1\nkind: Policy\nmetadata: {name: p}\nspec: {}\n---\n\
         apiVersion: mirror.os/v1\nkind: Agent\nmetadata: {name: scribe}\nspec:\n  policy: p\n  \
         model: {primary: {provider: local, model: \"llama3.2:1b\"}}\n  command:\n    - sh\n    - -c\n    - \
         'env > \"$MIRROR_SANDBOX/env\"; pwd > \"$MIRROR_SANDBOX/pwd\"; exec sleep 4702'\n",
    );
    sandbox.commit("a service and an agent");
}

#[test]
fn exit_codes_and_json_keys_as_the_design_promises() {
    let sandbox = Sandbox::new();
    let _cleanup = Cleanup(sandbox.root().to_path_buf());
    host(&sandbox);

    // validate: 0 valid, 1 invalid.
    assert_eq!(sandbox.run(&["validate"]).code, 0);
    // reconcile --dry-run: 2 pending, with the plan's keys; the options before or after.
    let before = sandbox.run(&["--output", "json", "reconcile", "--dry-run"]);
    let after = sandbox.run(&["reconcile", "--dry-run", "--output", "json"]);
    assert_eq!((before.code, after.code), (2, 2), "{before:?}");
    let plan = after.json();
    for key in ["commit", "changes", "summary"] {
        assert!(plan.get(key).is_some(), "plan.{key}: {plan}");
    }
    assert_eq!(before.json()["changes"], plan["changes"]);
    let change = &plan["changes"][0];
    for key in ["kind", "name", "action", "reason", "diff"] {
        assert!(change.get(key).is_some(), "plan.changes[].{key}: {change}");
    }
    // drift report: 2 with drift, its keys.
    let report = sandbox.run(&["drift", "report", "--output", "json"]);
    assert_eq!(report.code, 2, "{report:?}");
    let report = report.json();
    for key in ["id", "host", "commit", "started_at", "items"] {
        assert!(report.get(key).is_some(), "drift report.{key}: {report}");
    }
    let item = &report["items"][0];
    for key in ["kind", "name", "drift", "corrective", "severity", "detail"] {
        assert!(item.get(key).is_some(), "drift item.{key}: {item}");
    }
    // reconcile: 0 converged; then in sync (0) and no drift (0).
    let applied = sandbox.run(&["reconcile"]);
    assert_eq!(applied.code, 0, "{applied:?}");
    assert_eq!(sandbox.run(&["reconcile", "--dry-run"]).code, 0);
    // status: 0, its keys; an agent carries its route.
    let status = sandbox.run(&["status", "--output", "json"]);
    assert_eq!(status.code, 0);
    let status = status.json();
    assert!(status.get("commit").is_some(), "{status}");
    for resource in status["resources"].as_array().unwrap() {
        for key in ["kind", "name", "sync", "health", "pid", "restarts"] {
            assert!(resource.get(key).is_some(), "status.resources[].{key}: {resource}");
        }
    }
    let agent = status["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "Agent")
        .unwrap();
    // Routes are the daemon's (it probes providers and runs the bus): without one, `route` is
    // there and null; through a daemon it names the provider and model (tests/cli/daemon.rs).
    assert!(agent.get("route").is_some(), "{agent}");
    // An invalid commit: validate 1, reconcile 1, nothing applied.
    sandbox.write("bad.yaml", "kind: [");
    sandbox.commit("broken");
    assert_eq!(sandbox.run(&["validate"]).code, 1);
    assert_eq!(sandbox.run(&["reconcile"]).code, 1);
    assert_eq!(sandbox.run(&["drift", "report"]).code, 1);

    // memory add (DESIGN's form) prints its id; the item's keys.
    let added = sandbox.run(&[
        "memory",
        "add",
        "--namespace",
        "notes",
        "--content",
        "the bus is identity",
        "--tag",
        "design",
        "--output",
        "json",
    ]);
    assert_eq!(added.code, 0, "{added:?}");
    let id = added.json()["id"].as_str().unwrap().to_string();
    let item = sandbox.run(&["memory", "show", &id, "--output", "json"]).json();
    for key in ["id", "namespace", "tier", "uses", "confidence", "verified", "tags"] {
        assert!(item.get(key).is_some(), "memory item.{key}: {item}");
    }
}

/// §3: an agent's working directory is its sandbox, and its environment points unmodified client
/// libraries at the bus with its token.
#[test]
fn an_agent_is_given_what_the_design_says() {
    let sandbox = Sandbox::new();
    let _cleanup = Cleanup(sandbox.root().to_path_buf());
    host(&sandbox);
    assert_eq!(sandbox.run(&["reconcile"]).code, 0);
    let home = sandbox.root().join("state/sandboxes/scribe");
    wait_for("the agent's notes", Duration::from_secs(10), || {
        home.join("env").exists() && home.join("pwd").exists()
    });
    let pwd = std::fs::read_to_string(home.join("pwd")).unwrap();
    assert_eq!(std::path::Path::new(pwd.trim()), home.canonicalize().unwrap());
    let env = std::fs::read_to_string(home.join("env")).unwrap();
    let value = |name: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} not given: {env}"))
            .to_string()
    };
    assert_eq!(value("MIRROR_AGENT"), "scribe");
    let token = value("MIRROR_AGENT_TOKEN");
    assert!(!token.is_empty());
    for same in ["OPENAI_API_KEY", "OLLAMA_API_KEY"] {
        assert_eq!(value(same), token, "{same}");
    }
    let bus = value("MIRROR_BUS_URL");
    assert_eq!(value("OPENAI_BASE_URL"), format!("{}/v1", bus.trim_end_matches('/')));
    assert!(!value("OLLAMA_HOST").is_empty());
    assert_eq!(
        std::path::Path::new(&value("MIRROR_SANDBOX")),
        home.canonicalize().unwrap()
    );
    assert!(std::path::Path::new(&value("MIRROR_POLICY_FILE")).is_file());
    // ANTHROPIC_BASE_URL and ANTHROPIC_API_KEY come once the bus serves the Messages API (issue 20).
}

/// `status --fleet`: every host writing to one truth store, with its last pass and its drift.
#[test]
fn status_fleet_shows_every_host_of_the_store() {
    let sandbox = Sandbox::new();
    let _cleanup = Cleanup(sandbox.root().to_path_buf());
    sandbox.write("web.yaml", service("web", "exec sleep 4703", ""));
    sandbox.commit("web");
    let store = format!("sqlite://{}", sandbox.root().join("fleet.db").display());
    for host in ["alpha", "beta"] {
        let state = sandbox.root().join(host);
        let mut pass = sandbox.cmd(&["reconcile", "--dry-run", "--store", &store]);
        pass.env("MIRROR_HOST", host).env("MIRROR_STATE_DIR", &state);
        assert_eq!(pass.output().unwrap().status.code(), Some(2));
    }
    let fleet = sandbox.run(&["status", "--fleet", "--store", &store]);
    assert_eq!(fleet.code, 0, "{fleet:?}");
    for expected in ["HOST", "alpha", "beta", "changes-pending", "Service/web: missing"] {
        assert!(fleet.stdout.contains(expected), "{expected:?} in:\n{}", fleet.stdout);
    }
    let json = sandbox
        .run(&["status", "--fleet", "--store", &store, "--output", "json"])
        .json();
    let hosts: Vec<&str> = json["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["host"].as_str().unwrap())
        .collect();
    assert_eq!(hosts, ["alpha", "beta"]);
    assert_eq!(json["hosts"][0]["drift"]["items"][0]["name"], "web", "{json}");
}
