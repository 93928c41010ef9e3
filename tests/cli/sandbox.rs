//! The sandbox trampoline (`mirrorctl __sandbox-exec`): Landlock denies writes outside the
//! sandbox where the kernel supports it; the advisory mode and `--require` where it does not
//! (emulated with a seccomp filter that answers ENOSYS to the Landlock system calls, as a
//! kernel without Landlock does).

// A measurement or test harness: raw signals and process calls (each block says why it is sound).
#![allow(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use mirrorctl::supervisor::sandbox::{self, Support};

use crate::support::{Run, Sandbox};

fn run(mut command: Command) -> Run {
    let output = command.output().expect("run mirrorctl");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `mirrorctl __sandbox-exec [extra] --write DIR -- /bin/sh -c SCRIPT`.
fn sandboxed_sh(sandbox: &Sandbox, extra: &[&str], write: &Path, script: &str) -> Command {
    let mut args: Vec<&str> = vec!["__sandbox-exec"];
    args.extend_from_slice(extra);
    args.extend(["--write", write.to_str().unwrap(), "--", "/bin/sh", "-c", script]);
    sandbox.cmd(&args)
}

/// Says a test is skipped, on the real stderr: `eprintln!` is captured for passing tests, and
/// a skip must show in a plain `cargo test`.
pub(crate) fn skipped(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
}

/// The kernel enforces Landlock, or the test says visibly why it is skipped.
fn enforced(test: &str) -> bool {
    match sandbox::support() {
        Support::Enforced { abi } => {
            eprintln!("{test}: Landlock ABI {abi}");
            true
        }
        Support::Advisory { reason } => {
            skipped(&format!("{test}: Landlock not available on this kernel ({reason})"));
            false
        }
    }
}

/// A file every system has to read.
fn readable_file() -> &'static str {
    ["/etc/hostname", "/etc/passwd", "/etc/os-release"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .expect("a file in /etc")
}

#[test]
fn writes_inside_the_sandbox_succeed_and_outside_are_denied() {
    if !enforced("writes_inside_the_sandbox_succeed_and_outside_are_denied") {
        return;
    }
    let sandbox = Sandbox::new();
    let inside = sandbox.root().join("agent");
    std::fs::create_dir_all(&inside).unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("existing"), "keep").unwrap();
    let in_tmp = PathBuf::from(format!("/tmp/mirrorctl-sandbox-test-{}", std::process::id()));
    let _ = std::fs::remove_file(&in_tmp);

    let script = format!(
        r#"
        set -u
        in='{inside}'; out='{outside}'
        echo one > "$in/file" && mkdir "$in/dir" && mv "$in/file" "$in/dir/moved" && echo ok-inside
        echo x > "$out/new" || echo denied-create
        echo x >> "$out/existing" || echo denied-append
        true > "$out/existing" || echo denied-truncate
        rm "$out/existing" || echo denied-remove
        mkdir "$out/dir" || echo denied-mkdir
        ln -s /etc "$out/link" || echo denied-symlink
        echo x > '{in_tmp}' || echo denied-tmp
        echo x > /dev/null && echo ok-devnull
        cat '{readable}' > /dev/null && echo ok-read
        /bin/sh -c 'echo ok-exec'
        "#,
        inside = inside.display(),
        outside = outside.path().display(),
        in_tmp = in_tmp.display(),
        readable = readable_file(),
    );
    let result = run(sandboxed_sh(&sandbox, &[], &inside, &script));
    let created_in_tmp = in_tmp.exists();
    let _ = std::fs::remove_file(&in_tmp);

    assert_eq!(result.code, 0, "{result:?}");
    for marker in [
        "ok-inside",
        "denied-create",
        "denied-append",
        "denied-truncate",
        "denied-remove",
        "denied-mkdir",
        "denied-symlink",
        "denied-tmp",
        "ok-devnull",
        "ok-read",
        "ok-exec",
    ] {
        assert!(
            result.stdout.lines().any(|l| l == marker),
            "missing {marker}\n{result:?}"
        );
    }
    assert!(result.stderr.contains("Permission denied"), "{result:?}");
    assert!(!result.stderr.contains("sandbox advisory"), "{result:?}");
    assert_eq!(std::fs::read_to_string(inside.join("dir/moved")).unwrap(), "one\n");
    assert!(!outside.path().join("new").exists());
    assert!(!outside.path().join("dir").exists());
    assert!(!outside.path().join("link").exists());
    assert_eq!(
        std::fs::read_to_string(outside.path().join("existing")).unwrap(),
        "keep"
    );
    assert!(!created_in_tmp, "a write to /tmp outside the sandbox got through");
}

#[test]
fn a_denied_write_is_eacces_for_the_program() {
    if !enforced("a_denied_write_is_eacces_for_the_program") {
        return;
    }
    let sandbox = Sandbox::new();
    let inside = sandbox.root().join("agent");
    std::fs::create_dir_all(&inside).unwrap();
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("f");
    // Python-free: the shell reports strerror(errno); EACCES is "Permission denied".
    let script = format!("exec 3>'{}'", target.display());
    let result = run(sandboxed_sh(&sandbox, &[], &inside, &script));
    assert_ne!(result.code, 0, "{result:?}");
    assert!(result.stderr.contains("Permission denied"), "{result:?}");
    assert!(!target.exists());
}

#[test]
fn the_programs_own_log_files_stay_writable_through_dev_stdout() {
    if !enforced("the_programs_own_log_files_stay_writable_through_dev_stdout") {
        return;
    }
    let sandbox = Sandbox::new();
    let inside = sandbox.root().join("agent");
    std::fs::create_dir_all(&inside).unwrap();
    let logs = tempfile::tempdir().unwrap();
    // Opened for appending, as the supervisor opens logs.
    let stdout = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(logs.path().join("agent.out"))
        .unwrap();
    let mut command = sandboxed_sh(
        &sandbox,
        &[],
        &inside,
        "echo direct; echo reopened >> /dev/stdout; echo x > \"$0\" || echo denied-sibling",
    );
    // $0 of `sh -c SCRIPT NAME`: a file next to the log, which stays denied.
    command.arg(logs.path().join("other")).stdout(Stdio::from(stdout));
    let result = run(command);
    assert_eq!(result.code, 0, "{result:?}");
    let log = std::fs::read_to_string(logs.path().join("agent.out")).unwrap();
    assert_eq!(log, "direct\nreopened\ndenied-sibling\n", "{result:?}");
    assert!(!logs.path().join("other").exists());
}

#[test]
fn a_missing_write_path_is_skipped_with_a_warning() {
    let sandbox = Sandbox::new();
    let missing = sandbox.root().join("not-yet");
    let result = run(sandboxed_sh(&sandbox, &[], &missing, "echo ran"));
    assert_eq!(result.code, 0, "{result:?}");
    assert_eq!(result.stdout, "ran\n");
    if sandbox::support().is_enforced() {
        assert!(
            result
                .stderr
                .contains(&format!("mirrorctl: sandbox: write path {} skipped", missing.display())),
            "{result:?}"
        );
    }
}

#[test]
fn a_missing_program_exits_127_naming_it() {
    let sandbox = Sandbox::new();
    let result = sandbox.run(&["__sandbox-exec", "--", "/nonexistent/agent-binary", "--flag"]);
    assert_eq!(result.code, 127, "{result:?}");
    assert!(
        result
            .stderr
            .contains("mirrorctl: error: cannot execute /nonexistent/agent-binary: No such file or directory"),
        "{result:?}"
    );
}

#[test]
fn the_program_keeps_environment_cwd_and_arguments() {
    let sandbox = Sandbox::new();
    let inside = sandbox.root().join("agent");
    std::fs::create_dir_all(&inside).unwrap();
    let mut command = sandbox.cmd(&[
        "__sandbox-exec",
        "--write",
        inside.to_str().unwrap(),
        "--read",
        "/usr",
        "--",
        "/bin/sh",
        "-c",
        "echo \"$AGENT_NAME $PWD $1 $2\"",
        "sh",
        "--write",
        "-x",
    ]);
    command.env("AGENT_NAME", "summarizer").current_dir(&inside);
    let result = run(command);
    assert_eq!(result.code, 0, "{result:?}");
    assert_eq!(result.stdout, format!("summarizer {} --write -x\n", inside.display()));
}

#[test]
fn the_trampoline_is_hidden_from_help() {
    let sandbox = Sandbox::new();
    let result = sandbox.run(&["--help"]);
    assert_eq!(result.code, 0, "{result:?}");
    assert!(!result.stdout.contains("sandbox-exec"), "{}", result.stdout);
}

/// Runs `command` as on a kernel without Landlock: a seccomp filter makes the three Landlock
/// system calls fail with ENOSYS. None where this cannot be arranged (then the caller skips).
#[cfg(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64")))]
pub(crate) fn without_landlock(mut command: Command) -> Option<Run> {
    use std::os::unix::process::CommandExt;

    #[cfg(target_arch = "x86_64")]
    const AUDIT_ARCH: u32 = 0xC000_003E;
    #[cfg(target_arch = "aarch64")]
    const AUDIT_ARCH: u32 = 0xC000_00B7;
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06;
    const RET_ALLOW: u32 = 0x7fff_0000;
    const RET_ERRNO: u32 = 0x0005_0000;
    const PR_SET_SECCOMP: libc::c_int = 22;
    const SECCOMP_MODE_FILTER: libc::c_ulong = 2;

    let stmt = |code: u16, k: u32| libc::sock_filter { code, jt: 0, jf: 0, k };
    let jump = |k: i64, jt: u8, jf: u8| libc::sock_filter {
        code: JEQ_K,
        jt,
        jf,
        k: k as u32,
    };
    let filter: [libc::sock_filter; 9] = [
        stmt(LD_W_ABS, 4), // seccomp_data.arch
        jump(AUDIT_ARCH as i64, 1, 0),
        stmt(RET_K, RET_ALLOW),
        stmt(LD_W_ABS, 0), // seccomp_data.nr
        jump(libc::SYS_landlock_create_ruleset, 2, 0),
        jump(libc::SYS_landlock_add_rule, 1, 0),
        jump(libc::SYS_landlock_restrict_self, 0, 1),
        stmt(RET_K, RET_ERRNO | libc::ENOSYS as u32),
        stmt(RET_K, RET_ALLOW),
    ];
    // SAFETY: the hook only makes two prctl calls with data on its own stack (no allocation,
    // no locks), which is allowed between fork and exec.
    unsafe {
        command.pre_exec(move || {
            let program = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program as *const libc::sock_fprog) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    match command.output() {
        Ok(output) => Some(Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }),
        Err(e) => {
            skipped(&format!("cannot emulate a kernel without Landlock here (seccomp: {e})"));
            None
        }
    }
}

#[cfg(not(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64"))))]
fn without_landlock(command: Command) -> Option<Run> {
    // No Landlock at all on this platform: the real thing.
    Some(run(command))
}

#[test]
fn without_landlock_the_program_runs_with_one_warning() {
    let sandbox = Sandbox::new();
    let inside = sandbox.root().join("agent");
    std::fs::create_dir_all(&inside).unwrap();
    let outside = tempfile::tempdir().unwrap();
    let script = format!("echo x > '{}/new' && echo wrote-outside", outside.path().display());
    let Some(result) = without_landlock(sandboxed_sh(&sandbox, &[], &inside, &script)) else {
        return;
    };
    assert_eq!(result.code, 0, "{result:?}");
    assert_eq!(result.stdout, "wrote-outside\n");
    let warnings: Vec<&str> = result.stderr.lines().collect();
    assert_eq!(warnings.len(), 1, "{result:?}");
    assert!(
        warnings[0].starts_with("mirrorctl: sandbox advisory: Landlock not available on this kernel (")
            && warnings[0].ends_with("); nothing is restricted"),
        "{result:?}"
    );
    assert!(outside.path().join("new").exists());
}

#[test]
fn require_refuses_to_run_without_landlock() {
    let sandbox = Sandbox::new();
    let inside = sandbox.root().join("agent");
    std::fs::create_dir_all(&inside).unwrap();
    let marker = inside.join("ran");
    let script = format!("touch '{}'", marker.display());
    let Some(result) = without_landlock(sandboxed_sh(&sandbox, &["--require"], &inside, &script)) else {
        return;
    };
    assert_eq!(result.code, 126, "{result:?}");
    assert!(
        result
            .stderr
            .contains("mirrorctl: error: Landlock not available on this kernel (")
            && result.stderr.contains("refusing to run unsandboxed (--require)"),
        "{result:?}"
    );
    assert!(!marker.exists(), "the program ran");
}

#[test]
fn require_runs_where_landlock_is_enforced() {
    if !enforced("require_runs_where_landlock_is_enforced") {
        return;
    }
    let sandbox = Sandbox::new();
    let inside = sandbox.root().join("agent");
    std::fs::create_dir_all(&inside).unwrap();
    let script = format!("echo x > '{}/f' && echo ok", inside.display());
    let result = run(sandboxed_sh(&sandbox, &["--require"], &inside, &script));
    assert_eq!(result.code, 0, "{result:?}");
    assert_eq!(result.stdout, "ok\n");
    assert_eq!(result.stderr, "");
}

#[test]
fn a_file_write_path_allows_that_file_only() {
    if !enforced("a_file_write_path_allows_that_file_only") {
        return;
    }
    let sandbox = Sandbox::new();
    let dir = tempfile::tempdir().unwrap();
    let allowed = dir.path().join("state.json");
    std::fs::write(&allowed, "{}").unwrap();
    let script = format!(
        "echo '{{\"n\":1}}' > '{allowed}' && echo ok-file; echo x > '{sibling}' || echo denied-sibling",
        allowed = allowed.display(),
        sibling = dir.path().join("other").display(),
    );
    let result = run(sandboxed_sh(&sandbox, &[], &allowed, &script));
    assert_eq!(result.code, 0, "{result:?}");
    assert_eq!(result.stdout, "ok-file\ndenied-sibling\n", "{result:?}");
    assert_eq!(std::fs::read_to_string(&allowed).unwrap(), "{\"n\":1}\n");
    assert!(!dir.path().join("other").exists());
}
