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
