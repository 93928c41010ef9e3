//! Load and validate 10,000 resources in 500 files from a git commit (issue 2's target: at most
//! 1 s wall and 200 MiB peak RSS), next to the raw YAML parse throughput of the same bytes.
//!
//! Run: `cargo bench --bench load` (release build). `-- --quick` does fewer rounds;
//! `-- --generate DIR` only writes the generated repository.

// A measurement or test harness: raw signals and process calls (each block says why it is sound).
#![allow(unsafe_code)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use git2::{Repository, RepositoryInitOptions, Signature};
use mirrorctl::source::{self, yaml, SourceOptions};

#[path = "common/results.rs"]
mod results;
use results::Measure;

const FILES: usize = 500;
const PER_FILE: usize = 20;

fn document(file: usize, slot: usize) -> String {
    let f = file;
    match slot {
        0..=7 => {
            let depends = if slot > 0 { format!("\n  dependsOn: [svc-{f}-{}]", slot - 1) } else { String::new() };
            format!(
                "apiVersion: mirror.os/v1\nkind: Service\nmetadata:\n  name: svc-{f}-{slot}\n  labels: {{team: t{f}, tier: backend}}\nspec:\n  command: [\"python3\", \"-m\", \"http.server\", \"{port}\", \"--bind\", \"127.0.0.1\"]\n  workingDir: /srv/app-{f}\n  env:\n    PORT: \"{port}\"\n    LOG_LEVEL: info\n    API_TOKEN: secret-{f}-{slot}\n  restart: on-failure\n  backoff: {{initial: 500ms, max: 30s}}{depends}\n  health:\n    http: {{url: \"http://127.0.0.1:{port}/healthz\"}}\n    interval: 5s\n    timeout: 1s\n    failureThreshold: 3\n  stop: {{signal: SIGTERM, grace: 10s}}\n  limits: {{memory: 512Mi, openFiles: 1024}}\n  logs: {{maxSize: 10Mi, maxFiles: 5}}\n",
                port = 10000 + (f * PER_FILE + slot) % 50000
            )
        }
        8..=11 => format!(
            "apiVersion: mirror.os/v1\nkind: Agent\nmetadata: {{name: agent-{f}-{slot}}}\nspec:\n  command: [\"python3\", \"agent.py\", \"--id\", \"{slot}\"]\n  policy: policy-{f}\n  model:\n    primary: {{provider: ollama-{f}, model: \"llama3.2:3b\"}}\n    fallbacks:\n      - {{provider: ollama-{f}, model: \"llama3.2:1b\"}}\n      - {{provider: backup-{f}, model: \"qwen2.5:0.5b\"}}\n  memory: {{read: [shared, agent-{slot}], write: [agent-{slot}]}}\n  budget: {{tokensPerDay: 200000}}\n  dependsOn: [svc-{f}-0]\n"
        ),
        12 => format!(
            "apiVersion: mirror.os/v1\nkind: ModelProvider\nmetadata: {{name: ollama-{f}}}\nspec:\n  api: ollama\n  url: http://127.0.0.1:11434\n  local: true\n  service: svc-{f}-0\n  models: [\"llama3.2:3b\", \"llama3.2:1b\"]\n  health: {{interval: 5s, timeout: 3s, failureThreshold: 2}}\n"
        ),
        13 => format!(
            "apiVersion: mirror.os/v1\nkind: ModelProvider\nmetadata: {{name: backup-{f}}}\nspec:\n  api: openai\n  url: http://127.0.0.1:8080/v1\n  local: true\n"
        ),
        14 => format!(
            "apiVersion: mirror.os/v1\nkind: Policy\nmetadata: {{name: policy-{f}}}\nspec:\n  cloudEscalation: deny\n  tools:\n    - {{name: fs.read, risk: low}}\n    - {{name: fs.write, risk: medium}}\n    - {{name: shell.exec, risk: high}}\n  approvalRequiredAbove: medium\n  budget: {{tokensPerDay: 500000, spendPerDayUsd: 0}}\n  onBudgetExceeded: suspend\n"
        ),
        15 | 16 => format!(
            "apiVersion: mirror.os/v1\nkind: MemoryRule\nmetadata: {{name: rule-{f}-{slot}}}\nspec:\n  priority: {slot}\n  match: {{tier: working, namespace: \"ns-{f}-*\", minUses: 3, verified: true}}\n  action: promote\n  to: long-term\n"
        ),
        _ => format!(
            "apiVersion: mirror.os/v1\nkind: LaunchAgent\nmetadata: {{name: job-{f}-{slot}}}\nspec:\n  label: ai.activemirror.job-{f}-{slot}\n  command: [\"sh\", \"-c\", \"date >> job.log\"]\n  schedule: {{cron: \"*/5 * * * *\"}}\n  timeout: 1m\n  concurrency: forbid\n"
        ),
    }
}

/// Writes 500 files of 20 resources into a new repository and commits them. Returns the bytes.
fn generate(dir: &Path) -> Vec<String> {
    let mut options = RepositoryInitOptions::new();
    options.initial_head("main");
    let repo = Repository::init_opts(dir, &options).unwrap();
    let mut texts = Vec::with_capacity(FILES);
    let mut index = repo.index().unwrap();
    for f in 0..FILES {
        let text: Vec<String> = (0..PER_FILE).map(|slot| document(f, slot)).collect();
        let text = text.join("---\n");
        let relative = format!("desired/group-{:02}/file-{f:03}.yaml", f % 25);
        let full = dir.join(&relative);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(&full, &text).unwrap();
        index.add_path(Path::new(&relative)).unwrap();
        texts.push(text);
    }
    index.write().unwrap();
    let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
    let signature = Signature::now("bench", "bench@localhost").unwrap();
    repo.commit(Some("HEAD"), &signature, &signature, "bench", &tree, &[])
        .unwrap();
    texts
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn time<T>(rounds: usize, mut f: impl FnMut() -> T) -> Duration {
    median(
        (0..rounds)
            .map(|_| {
                let start = Instant::now();
                std::hint::black_box(f());
                start.elapsed()
            })
            .collect(),
    )
}

fn children_peak_rss_kib() -> i64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    usage.ru_maxrss
}

/// `--measure PROGRAM ARGS...`: runs the program once and prints `wall_ns peak_rss_kib`.
/// A child's peak RSS includes its parent's high-water mark when spawned vfork-style (the
/// kernel records the shared address space at exec), so the parent here must be this small
/// launcher, not the benchmark that holds the generated files.
fn measure(args: &[String]) {
    let start = Instant::now();
    let out = Command::new(&args[0]).args(&args[1..]).output().unwrap();
    let wall = start.elapsed();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    println!("{} {}", wall.as_nanos(), children_peak_rss_kib());
}

/// Runs `mirrorctl validate --repo DIR` through the launcher: (wall, peak RSS in MiB).
fn run_binary(dir: &Path) -> (Duration, f64) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--measure", env!("CARGO_BIN_EXE_mirrorctl"), "validate", "--repo"])
        .arg(dir)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().unwrap());
    let (wall, rss) = (fields.next().unwrap(), fields.next().unwrap());
    (Duration::from_nanos(wall), rss as f64 / 1024.0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--measure") {
        return measure(&args[2..]);
    }
    // `-- --generate DIR`: only write the generated repository (to inspect or profile it).
    if let Some(at) = args.iter().position(|a| a == "--generate") {
        let dir = Path::new(args.get(at + 1).expect("--generate DIR"));
        std::fs::create_dir_all(dir).unwrap();
        generate(dir);
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let rounds = if quick { 3 } else { 10 };
    let dir = tempfile::tempdir().unwrap();
    let texts = generate(dir.path());
    let bytes: usize = texts.iter().map(String::len).sum();
    let mib = bytes as f64 / (1024.0 * 1024.0);

    // The whole pipeline in-process: git2 read of the commit tree, parse, decode, validate.
    let options = SourceOptions::new(dir.path());
    let state = source::load(&options).expect("the generated state is valid");
    assert_eq!(state.resources.len(), FILES * PER_FILE);
    let in_process = time(rounds, || source::load(&options).unwrap());

    // The real binary, as a user runs it: wall time and peak RSS of the process.
    run_binary(dir.path());
    let runs: Vec<(Duration, f64)> = (0..rounds).map(|_| run_binary(dir.path())).collect();
    let binary_wall = median(runs.iter().map(|r| r.0).collect());
    let binary_rss = runs.iter().map(|r| r.1).fold(0.0, f64::max);

    // Raw parser limits on the same bytes.
    let events = time(rounds, || {
        texts
            .iter()
            .map(|t| saphyr_parser::Parser::new_from_str(t).count())
            .sum::<usize>()
    });
    let tree = time(rounds, || {
        texts.iter().map(|t| yaml::parse_documents(t).0.len()).sum::<usize>()
    });
    let serde_yaml_value = time(rounds, || {
        texts
            .iter()
            .map(|t| {
                let mut documents = 0;
                for d in serde_yaml::Deserializer::from_str(t) {
                    std::hint::black_box(<serde_yaml::Value as serde::Deserialize>::deserialize(d).unwrap());
                    documents += 1;
                }
                documents
            })
            .sum::<usize>()
    });
    let rate = |d: Duration| mib / d.as_secs_f64();

    println!(
        "load: {} resources in {FILES} files, {mib:.2} MiB of YAML, median of {rounds} runs",
        FILES * PER_FILE
    );
    println!("| measurement | time | throughput | target |");
    println!("|---|---|---|---|");
    println!(
        "| `mirrorctl validate` (process wall) | {:.0} ms | {:.1} MiB/s | <= 1000 ms |",
        binary_wall.as_secs_f64() * 1e3,
        rate(binary_wall)
    );
    println!("| `mirrorctl validate` peak RSS (largest of the runs) | {binary_rss:.1} MiB | | <= 200 MiB |");
    println!(
        "| `source::load` in-process (git + parse + decode + validate) | {:.0} ms | {:.1} MiB/s | |",
        in_process.as_secs_f64() * 1e3,
        rate(in_process)
    );
    println!(
        "| YAML events only (saphyr-parser, the parser's limit) | {:.0} ms | {:.1} MiB/s | |",
        events.as_secs_f64() * 1e3,
        rate(events)
    );
    println!(
        "| YAML to positioned tree (`yaml::parse_documents`) | {:.0} ms | {:.1} MiB/s | |",
        tree.as_secs_f64() * 1e3,
        rate(tree)
    );
    println!(
        "| serde_yaml to `serde_yaml::Value` (for comparison) | {:.0} ms | {:.1} MiB/s | |",
        serde_yaml_value.as_secs_f64() * 1e3,
        rate(serde_yaml_value)
    );
    let pass = binary_wall <= Duration::from_secs(1) && binary_rss <= 200.0;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Measure::new(
        "load",
        "`mirrorctl validate`, 10,000 resources: wall (median)",
        ms(binary_wall),
        "ms",
    )
    .target("<= 1000 ms", binary_wall <= Duration::from_secs(1))
    .record();
    Measure::new(
        "load",
        "`mirrorctl validate`, 10,000 resources: peak RSS",
        binary_rss,
        "MiB",
    )
    .target("<= 200 MiB", binary_rss <= 200.0)
    .record();
    Measure::new("load", "YAML to positioned tree, 4 MiB (median)", ms(tree), "ms")
        .peer("serde_yaml `Value`", Some(ms(serde_yaml_value)))
        .record();
    println!("targets: {}", if pass { "met" } else { "MISSED" });
}
