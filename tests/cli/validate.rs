use crate::support::*;

#[test]
fn the_example_desired_state_validates() {
    let sandbox = Sandbox::new();
    copy_dir(&sandbox, &project_path("desired"), "desired");
    let commit = sandbox.commit("example");
    let run = sandbox.run(&["validate"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.starts_with(&format!(
            "valid: 13 resource(s) in 7 file(s) at commit {}",
            &commit[..12]
        )),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("2 Service"), "{}", run.stdout);
}

#[test]
fn the_design_canonical_examples_are_accepted_as_written() {
    let sandbox = Sandbox::new();
    sandbox.write(
        "examples.yaml",
        std::fs::read(project_path("tests/fixtures/design-examples.yaml")).unwrap(),
    );
    sandbox.write(
        "ollama-service.yaml",
        std::fs::read(project_path("tests/fixtures/design-examples-companion.yaml")).unwrap(),
    );
    sandbox.commit("design examples");
    let run = sandbox.run(&["validate", "--output", "json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let json = run.json();
    let kinds: Vec<&str> = json["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    for kind in [
        "Service",
        "LaunchAgent",
        "ModelProvider",
        "Agent",
        "Policy",
        "MemoryRule",
        "Controller",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
}

#[test]
fn json_output_lists_every_error_with_its_position() {
    let sandbox = Sandbox::new();
    sandbox.write(
        "a.yaml",
        "apiVersion: mirror.os/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  command: [python3]\n  restart: sometimes\n",
    );
    sandbox.write(
        "b.yaml",
        "apiVersion: mirror.os/v2\nkind: Service\nmetadata: {name: api}\nspec: {command: [x]}\n",
    );
    let commit = sandbox.commit("two errors");
    let run = sandbox.run(&["validate", "--output", "json"]);
    assert_eq!(run.code, 1);
    let json = run.json();
    assert_eq!(json["valid"], false);
    assert_eq!(json["commit"], commit.as_str());
    let errors = json["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(errors[0]["file"], "a.yaml");
    assert_eq!(errors[0]["line"], 6);
    assert_eq!(errors[0]["column"], 12);
    assert_eq!(errors[0]["resource"], "Service/web");
    assert_eq!(errors[0]["field"], "spec.restart");
    assert_eq!(
        errors[0]["message"],
        "unknown value `sometimes`: expected one of `always`, `on-failure`, `never`"
    );
    assert_eq!(errors[1]["file"], "b.yaml");
    assert_eq!(
        errors[1]["message"],
        "unknown apiVersion `mirror.os/v2`: expected `mirror.os/v1`"
    );
}

#[test]
fn global_options_work_before_or_after_the_command_and_from_the_environment() {
    let sandbox = Sandbox::new();
    copy_dir(&sandbox, &project_path("desired"), "state/desired");
    sandbox.commit("nested");
    let repo = sandbox.repo();
    let repo = repo.to_str().unwrap();
    let before = sandbox.run(&["--repo", repo, "--path", "state/desired", "validate"]);
    let after = sandbox.run(&["validate", "--repo", repo, "--path", "state/desired"]);
    assert_eq!(before.code, 0, "{before:?}");
    assert_eq!(before.stdout, after.stdout);
    let from_env = sandbox
        .cmd(&["validate"])
        .current_dir(sandbox.root())
        .env("MIRROR_REPO", repo)
        .env("MIRROR_PATH", "state/desired")
        .output()
        .unwrap();
    assert!(from_env.status.success(), "{from_env:?}");
    assert_eq!(String::from_utf8_lossy(&from_env.stdout), before.stdout);
}

#[test]
fn usage_errors_exit_1_not_2() {
    let sandbox = Sandbox::new();
    let run = sandbox.run(&["validate", "--no-such-flag"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("--no-such-flag"));
}

#[test]
fn an_empty_path_is_an_empty_valid_state_but_a_missing_one_is_an_error() {
    let sandbox = Sandbox::new();
    sandbox.write("README.md", "no yaml here\n");
    sandbox.commit("docs only");
    let run = sandbox.run(&["validate"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.starts_with("valid: 0 resource(s) in 0 file(s)"),
        "{}",
        run.stdout
    );
    let run = sandbox.run(&["validate", "--path", "desired"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("path `desired` does not exist in commit"),
        "{}",
        run.stderr
    );
}

#[test]
fn hidden_directories_such_as_github_workflows_are_not_desired_state() {
    let sandbox = Sandbox::new();
    sandbox.write(".github/workflows/ci.yml", "on: push\njobs: {}\n");
    sandbox.write(
        "svc.yaml",
        "apiVersion: mirror.os/v1\nkind: Service\nmetadata: {name: a}\nspec: {command: [true]}\n",
    );
    sandbox.commit("with workflows");
    let run = sandbox.run(&["validate"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.starts_with("valid: 1 resource(s) in 1 file(s)"),
        "{}",
        run.stdout
    );
}
