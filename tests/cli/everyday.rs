//! Everyday use (issue 18): what a person sees where they look.

use std::time::Duration;

use crate::daemon::{service, wait_for, Cleanup, Daemon};
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

#[test]
fn completions_for_bash_zsh_and_fish_and_a_manual_page() {
    let sandbox = Sandbox::bare_dir();
    for shell in ["bash", "zsh", "fish"] {
        let run = sandbox.run(&["completions", shell]);
        assert_eq!(run.code, 0, "{shell}: {run:?}");
        for command in ["reconcile", "status", "drift", "memory", "completions"] {
            assert!(run.stdout.contains(command), "{shell} completes {command}");
        }
        assert!(
            !run.stdout.contains("__sandbox-exec"),
            "{shell}: the trampoline stays hidden"
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
