//! Table-driven corpus of invalid desired states (tests/invalid/).
//!
//! Each `tests/invalid/<NN-name>/` holds one or more YAML files (copied to the root of a fresh
//! git repository and committed) and `expected.txt`: the exact diagnostic lines `mirrorctl
//! validate` must print, in order, without the final `invalid: ...` summary line.
//!
//! `MIRROR_BLESS=1 cargo test --test cli invalid_corpus` rewrites every `expected.txt` from the
//! actual output. Review each rewritten file by hand: every line must be what a user should see
//! (the line and column on the offending token, the right `Kind/name` and field path, a message
//! that says what was expected).
//!
//! Cases that a directory cannot hold well (a symlink, a non-UTF-8 file, a file over the size
//! limit) and the valid counterpart of a policy rule are separate tests at the end.

use std::path::{Path, PathBuf};

use crate::support::{project_path, Run, Sandbox};

const MIN_CASES: usize = 45;
const EXPECTED: &str = "expected.txt";

fn corpus_dir() -> PathBuf {
    project_path("tests/invalid")
}

fn case_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("tests/invalid exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

fn bless() -> bool {
    std::env::var_os("MIRROR_BLESS").is_some_and(|v| v == "1")
}

/// The diagnostic lines of a run (all but the summary) and the summary line.
fn split_output(stdout: &str) -> (Vec<&str>, Option<&str>) {
    let mut lines: Vec<&str> = stdout.lines().collect();
    let summary = lines.pop();
    (lines, summary)
}

/// Runs `mirrorctl validate` on a fresh repository holding the case's files.
fn run_case(dir: &Path) -> Run {
    let sandbox = Sandbox::new();
    let mut files = 0;
    for entry in std::fs::read_dir(dir).expect("readable case dir") {
        let entry = entry.expect("readable entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == EXPECTED || !entry.file_type().expect("file type").is_file() {
            continue;
        }
        sandbox.write(&name, std::fs::read(entry.path()).expect("readable case file"));
        files += 1;
    }
    assert!(files > 0, "{}: no desired-state files in the case", dir.display());
    sandbox.commit("invalid desired state");
    sandbox.run(&["validate"])
}

/// Everything wrong with one case's run, or None when it printed exactly what is expected.
fn check_case(dir: &Path, run: &Run) -> Option<String> {
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    let (actual, summary) = split_output(&run.stdout);
    let mut problems = Vec::new();

    if bless() {
        let mut text = actual.join("\n");
        text.push('\n');
        std::fs::write(dir.join(EXPECTED), text).expect("write expected.txt");
    }
    let expected_text = match std::fs::read_to_string(dir.join(EXPECTED)) {
        Ok(text) => text,
        Err(e) => {
            problems.push(format!(
                "cannot read {EXPECTED}: {e} (run with MIRROR_BLESS=1 to create it, then review it)"
            ));
            String::new()
        }
    };
    let expected: Vec<&str> = expected_text.lines().collect();

    if run.code != 1 {
        problems.push(format!("exit code {} (expected 1)", run.code));
    }
    if run.stderr.contains("panicked") {
        problems.push(format!("the binary panicked:\n{}", run.stderr));
    }
    match summary {
        Some(line) if line.starts_with("invalid:") => {
            let count = format!("invalid: {} error(s)", actual.len());
            if !line.starts_with(&count) {
                problems.push(format!(
                    "summary `{line}` does not count the {} diagnostic line(s)",
                    actual.len()
                ));
            }
        }
        Some(line) => problems.push(format!("last line is not the `invalid:` summary: `{line}`")),
        None => problems.push("nothing printed on stdout".to_string()),
    }
    if expected.is_empty() && !expected_text.is_empty() {
        problems.push(format!("{EXPECTED} has no diagnostic lines"));
    }
    if actual != expected {
        problems.push(format!(
            "diagnostics differ\n  expected:\n{}\n  actual:\n{}",
            indent(&expected),
            indent(&actual)
        ));
    }
    if problems.is_empty() {
        return None;
    }
    let mut report = format!("--- {name}\n");
    for problem in problems {
        report.push_str(&format!("  * {problem}\n"));
    }
    if !run.stderr.trim().is_empty() && !run.stderr.contains("panicked") {
        report.push_str(&format!(
            "  stderr:\n{}\n",
            indent(&run.stderr.lines().collect::<Vec<_>>())
        ));
    }
    Some(report)
}

fn indent(lines: &[&str]) -> String {
    if lines.is_empty() {
        return "    (none)".to_string();
    }
    lines.iter().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

#[test]
fn every_invalid_case_prints_exactly_its_expected_diagnostics() {
    let dirs = case_dirs();
    assert!(
        dirs.len() >= MIN_CASES,
        "the corpus has {} cases, expected at least {MIN_CASES}",
        dirs.len()
    );

    // Each case is a git repository and a process: run them on a few threads to keep this fast.
    let threads = std::thread::available_parallelism().map_or(4, |n| n.get()).min(8);
    let chunk = dirs.len().div_ceil(threads);
    let mut failures: Vec<(usize, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = dirs
            .chunks(chunk)
            .enumerate()
            .map(|(c, dirs)| {
                scope.spawn(move || {
                    dirs.iter()
                        .enumerate()
                        .filter_map(|(i, dir)| check_case(dir, &run_case(dir)).map(|r| (c * chunk + i, r)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a case thread panicked"))
            .collect()
    });
    failures.sort();
    assert!(
        failures.is_empty(),
        "{} of {} invalid-corpus case(s) failed:\n\n{}",
        failures.len(),
        dirs.len(),
        failures.into_iter().map(|(_, r)| r).collect::<Vec<_>>().join("\n")
    );
}

/// Every case directory holds at least one YAML file and a non-empty expected.txt whose lines
/// all have the documented shape.
#[test]
fn corpus_cases_are_well_formed() {
    for dir in case_dirs() {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let yaml = std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".yaml"))
            .count();
        assert!(yaml > 0, "{name}: no .yaml file");
        if bless() {
            continue;
        }
        let expected = std::fs::read_to_string(dir.join(EXPECTED)).unwrap_or_default();
        assert!(!expected.trim().is_empty(), "{name}: {EXPECTED} is missing or empty");
        for line in expected.lines() {
            let parts: Vec<&str> = line.splitn(6, ": ").collect();
            let position: Vec<&str> = parts[0].split(':').collect();
            let well_formed = parts.len() >= 4
                && position.len() == 3
                && position[1].parse::<u32>().is_ok_and(|n| n > 0)
                && position[2].parse::<u32>().is_ok_and(|n| n > 0);
            assert!(
                well_formed,
                "{name}: `{line}` is not `FILE:LINE:COL: Kind/name: field.path: message`"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Cases a corpus directory cannot hold well.

fn assert_invalid(run: &Run, expected: &[&str]) {
    assert!(!run.stderr.contains("panicked"), "panicked:\n{}", run.stderr);
    let (actual, summary) = split_output(&run.stdout);
    assert_eq!(run.code, 1, "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    assert_eq!(actual, expected, "stdout:\n{}", run.stdout);
    let summary = summary.unwrap_or_default();
    assert!(
        summary.starts_with(&format!("invalid: {} error(s)", expected.len())),
        "summary: {summary}"
    );
}

const SERVICE: &str =
    "apiVersion: mirror.os/v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  command: [\"python3\"]\n";

#[test]
fn a_non_utf8_file_is_reported_at_its_first_bad_byte() {
    let sandbox = Sandbox::new();
    let mut bytes = b"apiVersion: mirror.os/v1\nkind: Service\nmetadata: {name: w".to_vec();
    bytes.push(0xff);
    bytes.extend_from_slice(b"eb}\nspec:\n  command: [\"python3\"]\n");
    sandbox.write("service.yaml", bytes);
    sandbox.commit("latin-1 garbage");
    assert_invalid(
        &sandbox.run(&["validate"]),
        &["service.yaml:3:19: -: -: not valid UTF-8 (byte 0xff at offset 57): desired-state files must be UTF-8 text"],
    );
}

#[test]
fn a_symlink_is_reported_not_followed() {
    let sandbox = Sandbox::new();
    sandbox.write("real/service.txt", SERVICE);
    std::os::unix::fs::symlink("real/service.txt", sandbox.repo().join("service.yaml")).unwrap();
    sandbox.commit("a symlink");
    assert_invalid(
        &sandbox.run(&["validate"]),
        &["service.yaml:1:1: -: -: symbolic links are not followed in the desired state: commit the file itself"],
    );
}

#[test]
fn a_file_over_the_size_limit_is_reported() {
    let sandbox = Sandbox::new();
    sandbox.write("small.yaml", SERVICE);
    // 2 KiB: the service, then comment lines.
    let mut big = SERVICE.replace("name: web", "name: api");
    while big.len() < 2048 {
        big.push_str("# padding padding padding padding padding padding padding padding\n");
    }
    big.truncate(2047);
    big.push('\n');
    assert_eq!(big.len(), 2048);
    sandbox.write("big.yaml", big);
    sandbox.commit("a big file");
    assert_invalid(
        &sandbox.run(&["validate", "--max-file-size", "1Ki"]),
        &["big.yaml:1:1: -: -: file is 2048 bytes, over the limit of 1024 bytes (--max-file-size)"],
    );
}

/// The valid counterpart of `45-cloud-fallback-denied-by-policy`: the same route is accepted when
/// the policy allows cloud escalation.
#[test]
fn a_cloud_fallback_is_valid_when_the_policy_allows_cloud_escalation() {
    let sandbox = Sandbox::new();
    let case = corpus_dir().join("45-cloud-fallback-denied-by-policy");
    for name in ["agents.yaml", "providers.yaml"] {
        sandbox.write(name, std::fs::read(case.join(name)).unwrap());
    }
    let policy = std::fs::read_to_string(case.join("policies.yaml")).unwrap();
    assert!(
        policy.contains("cloudEscalation: deny"),
        "the case's policy changed:\n{policy}"
    );
    sandbox.write(
        "policies.yaml",
        policy.replace("cloudEscalation: deny", "cloudEscalation: allow"),
    );
    sandbox.commit("allow cloud");
    let run = sandbox.run(&["validate"]);
    assert!(!run.stderr.contains("panicked"), "panicked:\n{}", run.stderr);
    assert_eq!(run.code, 0, "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.starts_with("valid: 4 resource(s) in 3 file(s)"),
        "stdout:\n{}",
        run.stdout
    );
}
