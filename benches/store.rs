//! The truth store on both backends, in one run: SQLite (a file in a temp dir) and PostgreSQL
//! (a throwaway server from `scripts/throwaway-postgres`, destroyed at the end even on panic).
//!
//! 1. Store a drift report of 10,000 items with one `Store::write` (target: at most 300 ms).
//! 2. Sustain 100 runs/s from one writer through the `Recorder` (RunStarted, 5 receipts, a
//!    status change, RunFinished every 10 ms) without blocking the caller; then flush and check
//!    that every record arrived exactly once.
//! 3. Read and verify a chain of 100,000 receipts (target: at most 1 s).
//!
//! Run: `cargo bench --bench store` (release build). `-- --quick` does fewer rounds and a shorter
//! sustained phase; `-- --sqlite-only` skips PostgreSQL (to profile SQLite alone). Without
//! PostgreSQL server binaries the PostgreSQL column is skipped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mirrorctl::report::{now_ms, rfc3339, Drift, Severity};
use mirrorctl::store::chain::ChainHead;
use mirrorctl::store::recorder::RecorderConfig;
use mirrorctl::store::{
    self, new_id, verify_chain, DriftItem, DriftReport, Receipt, ReceiptDraft, Record, Recorder, RunFinished,
    RunStarted, StatusChange, Store, StoreUrl,
};
use tokio::runtime::Runtime;

#[path = "common/results.rs"]
mod results;
use results::Measure;

const REPORT_ITEMS: usize = 10_000;
const CHAIN_RECEIPTS: usize = 100_000;
const CHAIN_CHUNK: usize = 5_000;
const RUN_PERIOD: Duration = Duration::from_millis(10);
const RECEIPTS_PER_RUN: usize = 5;
const DRIFT_TARGET: Duration = Duration::from_millis(300);
const VERIFY_TARGET: Duration = Duration::from_secs(1);
const RUNS_PER_SECOND_TARGET: f64 = 100.0;
/// A call that takes longer than one run period would hold the caller back from its cadence.
const CALL_MAX_TARGET: Duration = RUN_PERIOD;
/// How long the backlog may take to drain before the benchmark gives up.
const DRAIN_LIMIT: Duration = Duration::from_secs(300);

struct Settings {
    drift_rounds: usize,
    chain_rounds: usize,
    sustain: Duration,
}

/// A throwaway PostgreSQL server; destroyed when dropped (also while unwinding from a panic).
struct Postgres {
    url: String,
    dir: PathBuf,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/throwaway-postgres")
}

impl Postgres {
    fn start() -> Result<Postgres, String> {
        let out = Command::new(script())
            .arg("start")
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script().display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut lines = stdout.lines();
        let (url, dir) = (lines.next().unwrap_or_default(), lines.next().unwrap_or_default());
        if !out.status.success() || url.is_empty() || dir.is_empty() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(format!(
                "`scripts/throwaway-postgres start` failed ({}): {}",
                out.status,
                stderr.trim()
            ));
        }
        Ok(Postgres {
            url: url.to_string(),
            dir: PathBuf::from(dir),
        })
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let status = Command::new(script()).arg("destroy").arg(&self.dir).status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!(
                "warning: could not destroy the throwaway PostgreSQL in {} ({status:?})",
                self.dir.display()
            );
        }
    }
}

/// What one backend measured.
struct Results {
    open: Duration,
    drift_write: Duration,
    runs: usize,
    runs_per_second: f64,
    calls: usize,
    call_p50: Duration,
    call_p99: Duration,
    call_max: Duration,
    tick_late_p99: Duration,
    tick_late_max: Duration,
    backlog_at_end: usize,
    drain: Duration,
    exactly_once: Result<(), String>,
    chain_write: Duration,
    chain_read: Duration,
    chain_verify: Duration,
    chain_total: Duration,
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// The `p` quantile (0..=1) of sorted samples.
fn quantile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn drift_report(host: &str) -> DriftReport {
    const KINDS: [&str; 4] = ["Service", "Agent", "ModelProvider", "LaunchAgent"];
    const DRIFTS: [Drift; 4] = [Drift::Missing, Drift::Changed, Drift::Degraded, Drift::Stale];
    const SEVERITIES: [Severity; 3] = [Severity::Info, Severity::Warning, Severity::Error];
    DriftReport {
        id: new_id(),
        host: host.to_string(),
        commit: Some("3f9c2a1b7d4e5f60718293a4b5c6d7e8f9012345".into()),
        run_id: Some(new_id()),
        started_at: rfc3339(now_ms()),
        observe_only: false,
        repeats: 0,
        last_seen_at: None,
        items: (0..REPORT_ITEMS)
            .map(|i| DriftItem {
                kind: KINDS[i % KINDS.len()].to_string(),
                name: format!("svc-{}-{}", i / 20, i % 20),
                drift: DRIFTS[i % DRIFTS.len()],
                corrective: i % 3 != 0,
                severity: SEVERITIES[i % SEVERITIES.len()],
                detail: format!(
                    "{{\"field\":\"spec.env.PORT\",\"desired\":\"{}\",\"actual\":\"{}\",\"pid\":{}}}",
                    10_000 + i,
                    20_000 + i,
                    4_000 + i
                ),
            })
            .collect(),
    }
}

fn draft(run_id: Option<String>, i: usize) -> ReceiptDraft {
    ReceiptDraft {
        run_id,
        commit: Some("3f9c2a1b7d4e5f60718293a4b5c6d7e8f9012345".into()),
        kind: "Service".into(),
        name: format!("svc-{}-{}", i / 20, i % 20),
        action: ["create", "restart", "update", "stop"][i % 4].into(),
        reason: "spec hash changed from 9a1f... to 4c2e...".into(),
        detail: format!(
            "{{\"pid\":{},\"port\":{},\"env\":{{\"API_TOKEN\":\"***\"}}}}",
            4_000 + i,
            10_000 + i
        ),
    }
}

async fn counts(store: &dyn Store) -> BTreeMap<String, i64> {
    store.counts().await.expect("count rows")
}

fn delta(before: &BTreeMap<String, i64>, after: &BTreeMap<String, i64>, table: &str) -> i64 {
    after.get(table).copied().unwrap_or(0) - before.get(table).copied().unwrap_or(0)
}

/// 1. One drift report of 10,000 items per `Store::write`, a new report id each round.
async fn bench_drift(store: &dyn Store, rounds: usize) -> Duration {
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let report = drift_report("bench-drift");
        let id = report.id.clone();
        let records = [Record::DriftReport(report)];
        let start = Instant::now();
        store.write(&records).await.expect("write drift report");
        samples.push(start.elapsed());
        let stored = store.drift_report(&id).await.expect("read drift report");
        assert_eq!(
            stored.map(|r| r.items.len()),
            Some(REPORT_ITEMS),
            "report {id} stored whole"
        );
    }
    median(samples)
}

/// 3. Seals and writes 100,000 receipts, then times reading them back and verifying the chain.
async fn bench_chain(store: &dyn Store, rounds: usize) -> (Duration, Duration, Duration, Duration) {
    let host = "bench-chain";
    let mut head = ChainHead::default();
    let start_ms = now_ms();
    let receipts: Vec<Record> = (0..CHAIN_RECEIPTS)
        .map(|i| {
            let receipt = Receipt::seal(
                draft(Some(format!("run-{}", i / RECEIPTS_PER_RUN)), i),
                new_id(),
                host,
                start_ms + i as i64,
                &head,
            );
            head = receipt.head();
            Record::Receipt(receipt)
        })
        .collect();
    let start = Instant::now();
    for chunk in receipts.chunks(CHAIN_CHUNK) {
        store.write(chunk).await.expect("write receipts");
    }
    let write = start.elapsed();
    drop(receipts);

    let (mut reads, mut verifies, mut totals) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let start = Instant::now();
        let receipts = store.receipts().await.expect("read receipts");
        let read = start.elapsed();
        let checked = verify_chain(&receipts);
        let total = start.elapsed();
        let ours = receipts.iter().filter(|r| r.host == host).count();
        assert_eq!(ours, CHAIN_RECEIPTS, "every sealed receipt is read back");
        assert_eq!(checked, Ok(receipts.len()), "the chain verifies");
        reads.push(read);
        verifies.push(total - read);
        totals.push(total);
        drop(receipts);
    }
    (write, median(reads), median(verifies), median(totals))
}

enum Call {
    Record(Record),
    Receipt(ReceiptDraft),
}

struct Sustained {
    runs: usize,
    runs_per_second: f64,
    latencies: Vec<Duration>,
    tick_late: Vec<Duration>,
    backlog_at_end: usize,
    drain: Duration,
    exactly_once: Result<(), String>,
}

/// 2. One writer emits a run every 10 ms through the recorder for `duration`, timing each call.
async fn bench_sustained(store: &dyn Store, url: &StoreUrl, duration: Duration) -> Sustained {
    let state = tempfile::tempdir().unwrap();
    let host = "bench-recorder".to_string();
    let before = counts(store).await;
    let (recorder, task) = Recorder::start(RecorderConfig::new(
        state.path().to_path_buf(),
        host.clone(),
        url.clone(),
    ))
    .expect("recorder");
    // The recorder opens its store on first write; warm it up so the loop measures steady state.
    recorder.record(Record::RunStarted(RunStarted {
        id: new_id(),
        host: host.clone(),
        commit: None,
        trigger: "bench-warmup".into(),
        started_ms: now_ms(),
    }));
    let warm = recorder.flush().await;
    assert_eq!(warm.pending, 0, "warm-up reached the store: {:?}", warm.store_error);
    let warm_runs = 1;

    let mut latencies = Vec::with_capacity(duration.as_millis() as usize / 10 * (RECEIPTS_PER_RUN + 3) + 64);
    let mut tick_late = Vec::with_capacity(duration.as_millis() as usize / 10 + 1);
    let start = Instant::now();
    let mut runs = 0usize;
    loop {
        let due = start + RUN_PERIOD * runs as u32;
        if due >= start + duration {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        tick_late.push(Instant::now().saturating_duration_since(due));
        // Build the run's records first: only the `record`/`receipt` calls themselves are timed.
        let run_id = new_id();
        let at = now_ms();
        let mut calls = Vec::with_capacity(RECEIPTS_PER_RUN + 3);
        calls.push(Call::Record(Record::RunStarted(RunStarted {
            id: run_id.clone(),
            host: host.clone(),
            commit: Some("3f9c2a1b7d4e5f60718293a4b5c6d7e8f9012345".into()),
            trigger: "bench".into(),
            started_ms: at,
        })));
        for i in 0..RECEIPTS_PER_RUN {
            calls.push(Call::Receipt(draft(Some(run_id.clone()), runs * RECEIPTS_PER_RUN + i)));
        }
        calls.push(Call::Record(Record::Status(StatusChange {
            id: new_id(),
            host: host.clone(),
            kind: "Service".into(),
            name: format!("svc-{}", runs % 50),
            sync: "synced".into(),
            health: "healthy".into(),
            detail: "{\"pid\":4242}".into(),
            at_ms: at,
        })));
        calls.push(Call::Record(Record::RunFinished(RunFinished {
            id: run_id,
            ended_ms: at + 5,
            outcome: "converged".into(),
            summary: format!("{RECEIPTS_PER_RUN} actions"),
        })));
        for call in calls {
            let start = Instant::now();
            match call {
                Call::Record(record) => recorder.record(record),
                Call::Receipt(draft) => recorder.receipt(draft),
            }
            latencies.push(start.elapsed());
        }
        runs += 1;
    }
    let elapsed = start.elapsed();
    let runs_per_second = runs as f64 / elapsed.as_secs_f64();
    // What the database had not taken yet when the caller stopped (read from the journal file;
    // records still on the channel are not counted).
    let backlog_at_end = store::journal::pending_records(&state.path().join("spool")).len();

    let drain_start = Instant::now();
    loop {
        let report = recorder.flush().await;
        if report.pending == 0 {
            break;
        }
        assert!(
            drain_start.elapsed() < DRAIN_LIMIT,
            "backlog not drained after {DRAIN_LIMIT:?}: {report:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drain = drain_start.elapsed();
    drop(recorder);
    task.await.expect("the recorder's writer task");

    let after = counts(store).await;
    let expected = [
        ("runs", (runs + warm_runs) as i64),
        ("receipts", (runs * RECEIPTS_PER_RUN) as i64),
        ("status_history", runs as i64),
    ];
    let mut problems: Vec<String> = expected
        .iter()
        .filter_map(|&(table, want)| {
            let got = delta(&before, &after, table);
            (got != want).then(|| format!("{table}: {got} rows written, {want} emitted"))
        })
        .collect();
    let receipts = store.receipts().await.expect("read receipts");
    let ours: Vec<Receipt> = receipts.into_iter().filter(|r| r.host == host).collect();
    if let Err(e) = verify_chain(&ours) {
        problems.push(format!("the recorder's chain is broken: {e}"));
    }
    Sustained {
        runs,
        runs_per_second,
        latencies,
        tick_late,
        backlog_at_end,
        drain,
        exactly_once: if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        },
    }
}

fn bench_backend(runtime: &Runtime, url: &StoreUrl, settings: &Settings) -> Results {
    runtime.block_on(async {
        let start = Instant::now();
        let store = store::open(url).await.expect("open the store");
        let open = start.elapsed();
        let drift_write = bench_drift(store.as_ref(), settings.drift_rounds).await;
        let (chain_write, chain_read, chain_verify, chain_total) =
            bench_chain(store.as_ref(), settings.chain_rounds).await;
        let sustained = bench_sustained(store.as_ref(), url, settings.sustain).await;
        let mut latencies = sustained.latencies;
        latencies.sort();
        let mut tick_late = sustained.tick_late;
        tick_late.sort();
        Results {
            open,
            drift_write,
            runs: sustained.runs,
            runs_per_second: sustained.runs_per_second,
            calls: latencies.len(),
            call_p50: quantile(&latencies, 0.50),
            call_p99: quantile(&latencies, 0.99),
            call_max: *latencies.last().unwrap(),
            tick_late_p99: quantile(&tick_late, 0.99),
            tick_late_max: *tick_late.last().unwrap(),
            backlog_at_end: sustained.backlog_at_end,
            drain: sustained.drain,
            exactly_once: sustained.exactly_once,
            chain_write,
            chain_read,
            chain_verify,
            chain_total,
        }
    })
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let sqlite_only = args.iter().any(|a| a == "--sqlite-only");
    let settings = Settings {
        drift_rounds: if quick { 3 } else { 7 },
        chain_rounds: if quick { 1 } else { 3 },
        sustain: Duration::from_secs(if quick { 2 } else { 5 }),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    let sqlite_dir = tempfile::tempdir().unwrap();
    let sqlite_url = StoreUrl::default_in(sqlite_dir.path());
    eprintln!("store bench: SQLite at {sqlite_url}");
    let sqlite = bench_backend(&runtime, &sqlite_url, &settings);

    let (postgres, skipped) = match if sqlite_only {
        Err("`--sqlite-only` was given".to_string())
    } else {
        Postgres::start()
    } {
        Ok(server) => {
            let url = StoreUrl::parse(&server.url).expect("the script prints a postgres:// URL");
            eprintln!("store bench: PostgreSQL at {url} (dir {})", server.dir.display());
            let results = bench_backend(&runtime, &url, &settings);
            drop(server);
            (Some(results), None)
        }
        Err(why) => (None, Some(why)),
    };

    println!(
        "store: drift report of {REPORT_ITEMS} items (median of {} writes), {} s of runs every {} ms \
         ({RECEIPTS_PER_RUN} receipts each), chain of {CHAIN_RECEIPTS} receipts (median of {} reads)",
        settings.drift_rounds,
        settings.sustain.as_secs(),
        RUN_PERIOD.as_millis(),
        settings.chain_rounds
    );
    if let Some(why) = &skipped {
        println!("PostgreSQL column skipped: {why}");
    }
    let backends: Vec<(&str, &Results)> = std::iter::once(("SQLite", &sqlite))
        .chain(postgres.as_ref().map(|r| ("PostgreSQL", r)))
        .collect();
    let row = |measurement: &str, cell: &dyn Fn(&Results) -> String, target: &str| {
        let pg = postgres.as_ref().map_or_else(|| "skipped".to_string(), cell);
        println!("| {measurement} | {} | {pg} | {target} |", cell(&sqlite));
    };
    println!("| measurement | SQLite | PostgreSQL | target |");
    println!("|---|---|---|---|");
    row("open store (connect + migrate)", &|r| ms(r.open), "");
    row(
        &format!("drift report, {REPORT_ITEMS} items: `Store::write`"),
        &|r| {
            let rows = (REPORT_ITEMS + 1) as f64 / r.drift_write.as_secs_f64();
            format!("{} ({:.0}k rows/s)", ms(r.drift_write), rows / 1e3)
        },
        "<= 300 ms",
    );
    row(
        "recorder: runs emitted / achieved rate",
        &|r| format!("{} / {:.1} runs/s", r.runs, r.runs_per_second),
        ">= 100 runs/s",
    );
    row(
        "recorder: caller latency per `record`/`receipt` p50 / p99 / max (µs)",
        &|r| {
            format!(
                "{} / {} / {} ({} calls)",
                us(r.call_p50),
                us(r.call_p99),
                us(r.call_max),
                r.calls
            )
        },
        "max < 10 ms",
    );
    row(
        "recorder: caller's wake-up lateness after its 10 ms tick, p99 / max",
        &|r| format!("{} / {}", ms(r.tick_late_p99), ms(r.tick_late_max)),
        "",
    );
    row(
        "recorder: backlog in the journal when the caller stopped",
        &|r| format!("{} records", r.backlog_at_end),
        "",
    );
    row("recorder: drain (flush until pending = 0)", &|r| ms(r.drain), "");
    row(
        "recorder: every record in the store exactly once",
        &|r| match &r.exactly_once {
            Ok(()) => "yes".to_string(),
            Err(e) => format!("NO: {e}"),
        },
        "yes",
    );
    row(
        &format!("chain: write {CHAIN_RECEIPTS} receipts (`Store::write` x {CHAIN_CHUNK})"),
        &|r| {
            let rate = CHAIN_RECEIPTS as f64 / r.chain_write.as_secs_f64();
            format!("{} ({:.0}k rows/s)", ms(r.chain_write), rate / 1e3)
        },
        "",
    );
    row("chain: `store.receipts()`", &|r| ms(r.chain_read), "");
    row("chain: `verify_chain`", &|r| ms(r.chain_verify), "");
    row("chain: read + verify", &|r| ms(r.chain_total), "<= 1000 ms");

    let millis = |d: Duration| d.as_secs_f64() * 1e3;
    for (name, r) in &backends {
        let measure =
            |what: &str, value: f64, unit: &str| Measure::new("store", &format!("{name}: {what}"), value, unit);
        measure(
            &format!("drift report, {REPORT_ITEMS} items: `Store::write`"),
            millis(r.drift_write),
            "ms",
        )
        .target("<= 300 ms", r.drift_write <= DRIFT_TARGET)
        .record();
        measure("recorder: achieved rate", r.runs_per_second, "runs/s")
            .higher_is_better()
            .target(">= 100 runs/s", r.runs_per_second >= RUNS_PER_SECOND_TARGET * 0.99)
            .record();
        measure("recorder: caller latency per call, max", millis(r.call_max), "ms")
            .target("< 10 ms (never blocks)", r.call_max < CALL_MAX_TARGET)
            .record();
        measure(
            "recorder: every record in the store exactly once",
            f64::from(r.exactly_once.is_ok()),
            "yes/no",
        )
        .higher_is_better()
        .target("yes", r.exactly_once.is_ok())
        .record();
        measure(
            &format!("chain: read + verify {CHAIN_RECEIPTS} receipts"),
            millis(r.chain_total),
            "ms",
        )
        .target("<= 1000 ms", r.chain_total <= VERIFY_TARGET)
        .record();
    }
    if let Some(why) = &skipped {
        results::note("store", &format!("PostgreSQL skipped: {why}"));
    }

    let mut missed = Vec::new();
    for (name, r) in &backends {
        if r.drift_write > DRIFT_TARGET {
            missed.push(format!("{name} drift report write {}", ms(r.drift_write)));
        }
        if r.runs_per_second < RUNS_PER_SECOND_TARGET * 0.99 {
            missed.push(format!("{name} sustained {:.1} runs/s", r.runs_per_second));
        }
        if r.call_max >= CALL_MAX_TARGET {
            missed.push(format!("{name} caller blocked up to {}", ms(r.call_max)));
        }
        if let Err(e) = &r.exactly_once {
            missed.push(format!("{name} records not exactly once ({e})"));
        }
        if r.chain_total > VERIFY_TARGET {
            missed.push(format!("{name} chain read + verify {}", ms(r.chain_total)));
        }
    }
    match (missed.is_empty(), &skipped) {
        (true, None) => println!("targets: met"),
        (true, Some(_)) => println!("targets: met (SQLite only; PostgreSQL skipped)"),
        (false, _) => println!("targets: MISSED: {}", missed.join("; ")),
    }
}
