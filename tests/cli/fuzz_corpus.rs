//! Replays the fuzz targets' committed inputs on stable, without cargo-fuzz: every file of
//! `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` goes through the same check as in
//! the fuzz target (`mirrorctl::fuzzing`), which panics when an invariant fails.

use std::path::PathBuf;

use crate::support::project_path;

type Check = fn(&[u8]);

/// Each fuzz target, its check, and how many corpus inputs it must have at least.
const TARGETS: [(&str, Check, usize); 2] = [
    ("load", mirrorctl::fuzzing::check_load, 50),
    ("bus_request", mirrorctl::fuzzing::check_bus_request, 50),
];

/// The files of `fuzz/<kind>/<target>/`, sorted (none when the directory does not exist).
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(project_path(&format!("fuzz/{kind}/{target}"))) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs every input of one target; the names of those that failed, with the panic message.
fn replay(target: &str, check: Check, files: &[PathBuf]) -> Vec<String> {
    files
        .iter()
        .filter_map(|file| {
            let data = std::fs::read(file).expect("readable input");
            std::panic::catch_unwind(|| check(&data)).err().map(|panic| {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                format!("{target}: {}: {message}", file.display())
            })
        })
        .collect()
}

#[test]
fn every_fuzz_corpus_and_regression_input_passes_its_check() {
    let mut failures = Vec::new();
    for (target, check, min_corpus) in TARGETS {
        let corpus = inputs("corpus", target);
        assert!(
            corpus.len() >= min_corpus,
            "fuzz/corpus/{target} has {} inputs, expected at least {min_corpus}",
            corpus.len()
        );
        failures.extend(replay(target, check, &corpus));
        failures.extend(replay(target, check, &inputs("regressions", target)));
    }
    assert!(
        failures.is_empty(),
        "{} fuzz input(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
