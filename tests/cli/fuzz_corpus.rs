//! The fuzz targets on stable, without cargo-fuzz (CI's smoke run): every file of
//! `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` goes through the same check as in
//! the fuzz target (`mirrorctl::fuzzing`), which panics when an invariant fails; then a short
//! mutation run from a fixed seed mutates corpus inputs the way libFuzzer does (bit flips,
//! interesting bytes, inserted tokens, deleted and copied ranges, splices) and checks those.
//! `MIRROR_FUZZ_SEED` and `MIRROR_FUZZ_RUNS` change the seed and the number of inputs per target.

use std::path::PathBuf;

use crate::support::project_path;

type Check = fn(&[u8]);

/// Each fuzz target, its check, how many corpus inputs it must have at least, and how many
/// mutated inputs the smoke run checks (about 3 s for `load`, 0.5 s for `bus_request`).
const TARGETS: [(&str, Check, usize, u64); 2] = [
    ("load", mirrorctl::fuzzing::check_load, 50, 15_000),
    ("bus_request", mirrorctl::fuzzing::check_bus_request, 50, 100_000),
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

/// The panic message of a check that failed on `data`.
fn failure(check: Check, data: &[u8]) -> Option<String> {
    std::panic::catch_unwind(|| check(data)).err().map(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    })
}

/// Runs every input of one target; the names of those that failed, with the panic message.
fn replay(target: &str, check: Check, files: &[PathBuf]) -> Vec<String> {
    files
        .iter()
        .filter_map(|file| {
            let data = std::fs::read(file).expect("readable input");
            failure(check, &data).map(|message| format!("{target}: {}: {message}", file.display()))
        })
        .collect()
}

/// Tokens the mutator inserts: the YAML and JSON that the targets' parsers branch on.
const TOKENS: &[&[u8]] = &[
    b"apiVersion: mirror.os/v1\n",
    b"kind: Service\n",
    b"kind: Agent\n",
    b"kind: ModelProvider\n",
    b"metadata:\n  name: a\n",
    b"spec:\n",
    b"\n---\n",
    b"\x00",
    b"- ",
    b": ",
    b"  ",
    b"&a ",
    b"*a",
    b"<<: *a\n",
    b"!!binary ",
    b"!!str ",
    b"~",
    b"null",
    b"true",
    b"1e400",
    b"-9223372036854775809",
    b"18446744073709551616",
    b"0.1000000000000000055511151231257827",
    b"\"\\u0000\"",
    b"\"\\ud800\"",
    b"{}",
    b"[]",
    b"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
    b"\"stream\":true,",
    b"data: ",
    b"data: [DONE]\n\n",
    b"\xff",
    b"\r\n",
    b"\t",
];

/// A small deterministic generator (SplitMix64): the same seed gives the same inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// In `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Inputs stay under the fuzz runs' default `-max_len` region (the corpus' largest is ~4 KiB).
const MAX_LEN: usize = 8192;

/// One to four libFuzzer-style mutations of `input`; `other` is spliced from.
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut data = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(data.len() + 1);
        match rng.below(7) {
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            1 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] = b"\0\n\r\t :-\"'{}[]#&*!|>%@`,\\\xff"[rng.below(25)];
            }
            2 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                data.splice(at..at, token.iter().copied());
            }
            3 if !data.is_empty() => {
                let end = (at + 1 + rng.below(64)).min(data.len());
                data.drain(at.min(end)..end);
            }
            4 if !data.is_empty() => {
                let from = rng.below(data.len());
                let end = (from + 1 + rng.below(128)).min(data.len());
                let copy = data[from..end].to_vec();
                data.splice(at..at, copy);
            }
            5 if !other.is_empty() => {
                let from = rng.below(other.len());
                let end = (from + 1 + rng.below(256)).min(other.len());
                data.splice(at..at, other[from..end].iter().copied());
            }
            _ => {
                let byte = rng.next() as u8;
                data.insert(at, byte);
            }
        }
    }
    data.truncate(MAX_LEN);
    data
}

/// A whole number from the environment, when set.
fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value}: expected a whole number")),
    )
}

#[test]
fn every_fuzz_corpus_and_regression_input_passes_its_check() {
    let mut failures = Vec::new();
    for (target, check, min_corpus, _) in TARGETS {
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

#[test]
fn a_short_mutation_run_from_the_corpus_finds_nothing() {
    let seed = env_number("MIRROR_FUZZ_SEED").unwrap_or(0x6d69_7272_6f72);
    let asked_runs = env_number("MIRROR_FUZZ_RUNS");
    let saved = std::env::temp_dir().join(format!("mirrorctl-fuzz-smoke-{}", std::process::id()));
    let mut failures = Vec::new();
    for (target, check, _, default_runs) in TARGETS {
        let runs = asked_runs.unwrap_or(default_runs);
        let corpus: Vec<Vec<u8>> = inputs("corpus", target)
            .iter()
            .chain(&inputs("regressions", target))
            .map(|file| std::fs::read(file).expect("readable input"))
            .collect();
        let mut rng = Rng(seed ^ target.len() as u64);
        let started = std::time::Instant::now();
        for run in 0..runs {
            let input = &corpus[rng.below(corpus.len())];
            let other = &corpus[rng.below(corpus.len())];
            let data = mutate(&mut rng, input, other);
            if let Some(message) = failure(check, &data) {
                std::fs::create_dir_all(&saved).expect("a directory for failing inputs");
                let file = saved.join(format!("{target}-{run}"));
                std::fs::write(&file, &data).expect("failing input saved");
                failures.push(format!(
                    "{target}: run {run} of seed {seed}: {message}\n  input saved to {} \
                     (replay: cargo +nightly fuzz run {target} FILE, or add it to fuzz/regressions/{target}/)",
                    file.display()
                ));
            }
        }
        eprintln!(
            "fuzz smoke: {target}: {runs} mutated inputs from {} in {:.1?} (seed {seed})",
            corpus.len(),
            started.elapsed()
        );
    }
    assert!(
        failures.is_empty(),
        "{} mutated input(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
