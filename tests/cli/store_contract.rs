//! The truth-store contract: one suite, run against SQLite and against PostgreSQL.
//!
//! PostgreSQL tests use the server named by `MIRROR_TEST_POSTGRES_URL` (`.ci/run` starts one
//! with `scripts/throwaway-postgres`), a new database per test. They are `#[ignore]`d (a plain
//! `cargo test` lists them as ignored) and run with `-- --ignored` where a server is provided.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mirrorctl::report::{now_ms, rfc3339, Drift, DriftItem, DriftReport, ReportFilter, Severity};
use mirrorctl::store::chain::{verify_chain, ChainBreak, ChainHead};
use mirrorctl::store::inventory::LocalInventory;
use mirrorctl::store::recorder::{FlushReport, RecorderConfig};
use mirrorctl::store::{
    self, known_schema_version, new_id, Enrollment, InventoryEntry, JobRun, MemoryFilter, MemoryQuery,
    MemoryTransition, NewMemory, PolicyVersion, Receipt, ReceiptDraft, Record, Recorder, RouteChange, RunFinished,
    RunStarted, StatusChange, Store, StoreError, StoreUrl, Usage,
};
use sqlx::Connection;

pub const POSTGRES_ENV: &str = "MIRROR_TEST_POSTGRES_URL";

/// A store for one test: its URL, a raw URL for tampering, and a state dir.
pub struct TestDb {
    pub url: StoreUrl,
    pub raw_url: String,
    pub dir: tempfile::TempDir,
}

impl TestDb {
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let raw_url = format!("sqlite://{}", dir.path().join("truth.db").display());
        TestDb {
            url: StoreUrl::parse(&raw_url).unwrap(),
            raw_url,
            dir,
        }
    }

    /// A new database on the shared test server. The PostgreSQL tests are ignored unless asked
    /// for (`--ignored`): asked for without a server, they fail, never pass unseen.
    pub async fn postgres() -> TestDb {
        let base = std::env::var(POSTGRES_ENV).unwrap_or_else(|_| {
            panic!("{POSTGRES_ENV} is not set: `scripts/throwaway-postgres start` prints one (.ci/run sets it)")
        });
        let name = format!("t_{}", new_id().replace('-', ""));
        let mut admin = sqlx::postgres::PgConnection::connect(&base)
            .await
            .expect("connect to the test server");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap();
        let (server, _) = base.rsplit_once('/').unwrap();
        let raw_url = format!("{server}/{name}");
        TestDb {
            url: StoreUrl::parse(&raw_url).unwrap(),
            raw_url,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn state_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub async fn open(&self) -> Box<dyn Store> {
        store::open(&self.url)
            .await
            .unwrap_or_else(|e| panic!("open {}: {e}", self.url))
    }

    /// Runs SQL straight on the database, as someone tampering with it would.
    pub async fn tamper(&self, sql: &str) {
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&self.raw_url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&mut conn)
            .await
            .unwrap();
    }

    pub fn recorder(&self, host: &str) -> Recorder {
        let config = RecorderConfig::new(self.state_dir(host), host.to_string(), self.url.clone());
        Recorder::start(config).unwrap().0
    }
}

pub fn draft(i: usize) -> ReceiptDraft {
    ReceiptDraft {
        run_id: Some(format!("run-{i}")),
        commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
        kind: "Service".into(),
        name: format!("svc-{i}"),
        action: "create".into(),
        reason: "missing".into(),
        detail: "{\"env\":{\"API_TOKEN\":\"(redacted)\"}}".into(),
    }
}

fn report(id: &str, started_ms: i64, items: usize) -> DriftReport {
    DriftReport {
        id: id.into(),
        host: "mini".into(),
        commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
        run_id: None,
        started_at: rfc3339(started_ms),
        observe_only: true,
        repeats: 0,
        last_seen_at: None,
        items: (0..items)
            .map(|i| DriftItem {
                kind: "Service".into(),
                name: format!("svc-{i}"),
                drift: if i % 2 == 0 { Drift::Missing } else { Drift::Changed },
                corrective: i % 2 == 0,
                severity: Severity::Warning,
                detail: format!("item {i}"),
            })
            .collect(),
    }
}

fn run_started(id: &str, host: &str) -> Record {
    Record::RunStarted(RunStarted {
        id: id.into(),
        host: host.into(),
        commit: None,
        trigger: "test".into(),
        started_ms: now_ms(),
    })
}

fn run_finished(id: &str) -> Record {
    Record::RunFinished(RunFinished {
        id: id.into(),
        ended_ms: now_ms(),
        outcome: "converged".into(),
        summary: "ok".into(),
    })
}

/// Flushes until the database has everything, or panics after `limit`.
pub async fn drain(recorder: &Recorder, limit: Duration) -> FlushReport {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let report = recorder.flush().await;
        if report.pending == 0 {
            return report;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "backlog not drained: {report:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn count(store: &dyn Store, table: &str) -> i64 {
    store.counts().await.unwrap()[table]
}

// ------------------------------------------------------------------------------------------
// The contract

async fn migrations_from_empty(db: TestDb) {
    let store = db.open().await;
    assert_eq!(
        store.schema_version().await.unwrap(),
        known_schema_version(store.backend())
    );
    assert!(store.counts().await.unwrap().values().all(|n| *n == 0));
    drop(store);
    let again = db.open().await;
    assert_eq!(
        again.schema_version().await.unwrap(),
        known_schema_version(again.backend())
    );
}

async fn records_round_trip_and_replay_once(db: TestDb) {
    let store = db.open().await;
    let mut head = ChainHead::default();
    let receipts: Vec<Record> = (0..3)
        .map(|i| {
            let receipt = Receipt::seal(draft(i), new_id(), "mini", now_ms(), &head);
            head = receipt.head();
            Record::Receipt(receipt)
        })
        .collect();
    let inventory = |name: &str, hash: &str| {
        Record::Inventory(InventoryEntry {
            host: "mini".into(),
            kind: "Service".into(),
            name: name.into(),
            spec_hash: hash.into(),
            last_applied: "{}".into(),
            process: Some("{\"pid\":42}".into()),
            updated_ms: now_ms(),
        })
    };
    let drift = report(&new_id(), now_ms(), 3);
    let mut records = vec![run_started("r1", "mini")];
    records.extend(receipts);
    records.extend([
        Record::DriftReport(drift.clone()),
        inventory("web", "h1"),
        inventory("web", "h2"),
        inventory("old", "h0"),
        Record::InventoryRemoved {
            host: "mini".into(),
            kind: "Service".into(),
            name: "old".into(),
        },
        Record::Status(StatusChange {
            id: new_id(),
            host: "mini".into(),
            kind: "Service".into(),
            name: "web".into(),
            sync: "Synced".into(),
            health: "Healthy".into(),
            detail: String::new(),
            at_ms: now_ms(),
        }),
        Record::Route(RouteChange {
            id: new_id(),
            host: "mini".into(),
            agent: "archivist".into(),
            provider: "ollama".into(),
            model: "llama3.2:3b".into(),
            at_ms: now_ms(),
            reason: "primary".into(),
        }),
        Record::Route(RouteChange {
            id: new_id(),
            host: "mini".into(),
            agent: "archivist".into(),
            provider: "backup".into(),
            model: "smollm2".into(),
            at_ms: now_ms(),
            reason: "ollama hung".into(),
        }),
        Record::Enrollment(Enrollment {
            host: "mini".into(),
            agent: "archivist".into(),
            token_hash: "ab".into(),
            policy: "default".into(),
            policy_hash: "cd".into(),
            sandbox: "/s".into(),
            enrolled_ms: now_ms(),
        }),
        Record::EnrollmentRevoked {
            host: "mini".into(),
            agent: "archivist".into(),
            revoked_ms: now_ms(),
        },
        Record::PolicyVersion(PolicyVersion {
            name: "default".into(),
            hash: "cd".into(),
            version: 1,
            compiled: "{}".into(),
            diff: String::new(),
            created_ms: now_ms(),
        }),
        Record::Usage(Usage {
            id: new_id(),
            host: "mini".into(),
            agent: "archivist".into(),
            provider: "ollama".into(),
            model: "llama3.2:3b".into(),
            prompt_tokens: 10,
            completion_tokens: 5,
            cost_usd: 0.0,
            at_ms: now_ms(),
        }),
        run_finished("r1"),
    ]);
    store.write(&records).await.unwrap();
    let first = store.counts().await.unwrap();
    assert_eq!(first["runs"], 1);
    assert_eq!(first["receipts"], 3);
    assert_eq!(first["drift_reports"], 1);
    assert_eq!(first["drift_items"], 3);
    assert_eq!(first["inventory"], 1);
    assert_eq!(first["routes"], 1);
    assert_eq!(first["route_history"], 2);

    assert_eq!(store.drift_report(&drift.id).await.unwrap(), Some(drift.clone()));
    let listed = store
        .drift_reports(&ReportFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].items, 3);
    let owned = store.inventory("mini").await.unwrap();
    assert_eq!(owned.len(), 1);
    assert_eq!((owned[0].name.as_str(), owned[0].spec_hash.as_str()), ("web", "h2"));
    assert_eq!(verify_chain(&store.receipts().await.unwrap()), Ok(3));

    // A replay (the journal after a crash) writes nothing twice.
    store.write(&records).await.unwrap();
    assert_eq!(store.counts().await.unwrap(), first);
}

async fn concurrent_writers(db: TestDb) {
    let store = db.open().await;
    let mut tasks = Vec::new();
    for host in ["mini-a", "mini-b", "mini-c", "mini-d"] {
        let recorder = db.recorder(host);
        tasks.push(tokio::spawn(async move {
            for i in 0..150 {
                let run = format!("{host}-run-{i}");
                recorder.record(run_started(&run, host));
                recorder.receipt(draft(i));
                recorder.receipt(draft(i + 1000));
                recorder.record(run_finished(&run));
                if i % 25 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            drain(&recorder, Duration::from_secs(60)).await
        }));
    }
    for task in tasks {
        let report = task.await.unwrap();
        assert_eq!(report.store_error, None);
    }
    assert_eq!(count(&*store, "runs").await, 600);
    assert_eq!(count(&*store, "receipts").await, 1200);
    assert_eq!(verify_chain(&store.receipts().await.unwrap()), Ok(1200));
}

async fn audit_catches_edited_deleted_and_reordered_receipts(db: TestDb) {
    let store = db.open().await;
    for host in ["a-edit", "b-delete", "c-reorder"] {
        let recorder = db.recorder(host);
        for i in 0..10 {
            recorder.receipt(draft(i));
        }
        drain(&recorder, Duration::from_secs(30)).await;
    }
    let receipts = store.receipts().await.unwrap();
    assert_eq!(verify_chain(&receipts), Ok(30));
    let id_of = |host: &str, seq: i64| {
        receipts
            .iter()
            .find(|r| r.host == host && r.seq == seq)
            .unwrap()
            .id
            .clone()
    };

    db.tamper("UPDATE receipts SET reason = 'nothing happened' WHERE host = 'a-edit' AND seq = 5")
        .await;
    let broken = verify_chain(&store.receipts().await.unwrap()).unwrap_err();
    assert_eq!(
        broken,
        ChainBreak::Edited {
            host: "a-edit".into(),
            seq: 5,
            id: id_of("a-edit", 5)
        }
    );
    db.tamper("UPDATE receipts SET reason = 'missing' WHERE host = 'a-edit' AND seq = 5")
        .await;
    assert_eq!(verify_chain(&store.receipts().await.unwrap()), Ok(30));

    db.tamper("DELETE FROM receipts WHERE host = 'b-delete' AND seq = 8")
        .await;
    let broken = verify_chain(&store.receipts().await.unwrap()).unwrap_err();
    assert_eq!(
        broken,
        ChainBreak::Deleted {
            host: "b-delete".into(),
            missing_from: 8,
            missing_to: 8,
            before_id: id_of("b-delete", 9)
        }
    );
    db.tamper("DELETE FROM receipts WHERE host = 'b-delete'").await;

    // Swap receipts 6 and 7 of the last host (seq is unique, hence the detour through -1).
    db.tamper("UPDATE receipts SET seq = -1 WHERE host = 'c-reorder' AND seq = 6")
        .await;
    db.tamper("UPDATE receipts SET seq = 6 WHERE host = 'c-reorder' AND seq = 7")
        .await;
    db.tamper("UPDATE receipts SET seq = 7 WHERE host = 'c-reorder' AND seq = -1")
        .await;
    let broken = verify_chain(&store.receipts().await.unwrap()).unwrap_err();
    assert_eq!(
        broken,
        ChainBreak::Reordered {
            host: "c-reorder".into(),
            seq: 6,
            id: id_of("c-reorder", 7)
        }
    );
}

async fn retention_deletes_old_reports_and_keeps_receipts(db: TestDb) {
    let store = db.open().await;
    let mut config = RecorderConfig::new(db.state_dir("mini"), "mini".into(), db.url.clone());
    config.report_retention = Some(Duration::from_secs(3600));
    let (recorder, _) = Recorder::start(config).unwrap();
    let old = report("old-report", now_ms() - 2 * 3600 * 1000, 5);
    let new = report("new-report", now_ms(), 5);
    recorder.record(Record::DriftReport(old));
    recorder.receipt(draft(1));
    drain(&recorder, Duration::from_secs(30)).await;
    recorder.record(Record::DriftReport(new));
    recorder.receipt(draft(2));
    drain(&recorder, Duration::from_secs(30)).await;
    let ids: Vec<String> = store
        .drift_reports(&ReportFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, ["new-report"]);
    assert_eq!(
        count(&*store, "drift_items").await,
        5,
        "the old report's items go with it"
    );
    assert_eq!(count(&*store, "receipts").await, 2, "receipts are kept");
}

async fn a_newer_schema_is_refused_and_left_alone(db: TestDb) {
    let store = db.open().await;
    store.write(&[run_started("r1", "mini")]).await.unwrap();
    drop(store);
    db.tamper("CREATE TABLE from_the_future (x BIGINT)").await;
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&db.raw_url).await.unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES ($1, $2, TRUE, $3, 0)",
    )
    .bind(99_990_001_i64)
    .bind("from a newer mirrorctl")
    .bind(vec![0u8; 48])
    .execute(&mut conn)
    .await
    .unwrap();

    let error = match store::open(&db.url).await {
        Ok(_) => panic!("a newer schema was accepted"),
        Err(e) => e,
    };
    assert!(
        matches!(error, StoreError::NewerSchema { found: 99_990_001, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("written by a newer mirrorctl"), "{error}");
    let row: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM runs")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(row.0, 1, "the data is untouched");
    let row: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM _sqlx_migrations")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        row.0,
        known_schema_version(db.url.backend()) + 1,
        "no migration was added or removed"
    );
}

async fn job_runs_round_trip_newest_first(db: TestDb) {
    let store = db.open().await;
    let run = |name: &str, started_ms: i64, outcome: &str, exit_code: Option<i32>, signal: Option<i32>| JobRun {
        id: new_id(),
        host: "mini".into(),
        name: name.into(),
        label: format!("ai.activemirror.{name}"),
        commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
        trigger: "schedule".into(),
        started_ms,
        ended_ms: started_ms + 250,
        exit_code,
        signal,
        outcome: outcome.into(),
        detail: String::new(),
        output_tail: format!("line 1\nline 2 of {name} at {started_ms}\n"),
    };
    let older = run("backup", 1_000, "ok", Some(0), None);
    let newer = run("backup", 2_000, "timeout", None, Some(15));
    let skipped = JobRun {
        commit: None,
        trigger: "catch-up".into(),
        ended_ms: 3_000,
        detail: "run 1 (pid 42) is still running".into(),
        output_tail: String::new(),
        ..run("backup", 3_000, "skipped", None, None)
    };
    let other_job = run("tunnel-check", 2_500, "failed", Some(3), None);
    let other_host = JobRun {
        host: "studio".into(),
        ..run("backup", 2_600, "ok", Some(0), None)
    };
    // Through the recorder, as the runner writes them.
    let recorder = db.recorder("mini");
    for r in [&older, &newer, &skipped, &other_job, &other_host] {
        recorder.record(Record::JobRun(r.clone()));
    }
    drain(&recorder, Duration::from_secs(30)).await;
    assert_eq!(count(&*store, "job_runs").await, 5);
    assert_eq!(
        store.job_runs("mini", "backup", 10).await.unwrap(),
        vec![skipped.clone(), newer.clone(), older.clone()]
    );
    assert_eq!(
        store.job_runs("mini", "backup", 1).await.unwrap(),
        vec![skipped.clone()]
    );
    assert_eq!(
        store.job_runs("mini", "tunnel-check", 10).await.unwrap(),
        vec![other_job]
    );
    assert_eq!(store.job_runs("studio", "backup", 10).await.unwrap(), vec![other_host]);
    assert!(store.job_runs("mini", "nothing", 10).await.unwrap().is_empty());
    // A replay writes nothing twice.
    store
        .write(&[Record::JobRun(older), Record::JobRun(newer), Record::JobRun(skipped)])
        .await
        .unwrap();
    assert_eq!(count(&*store, "job_runs").await, 5);
}

async fn the_local_inventory_does_not_need_the_store(db: TestDb) {
    // The store is unreachable: an unwritable location for SQLite, a closed port for PostgreSQL.
    let unreachable = match db.url.backend() {
        store::Backend::Sqlite => {
            let blocker = db.dir.path().join("not-a-dir");
            std::fs::write(&blocker, "").unwrap();
            StoreUrl::parse(&format!("sqlite://{}/truth.db", blocker.display())).unwrap()
        }
        store::Backend::Postgres => StoreUrl::parse("postgres://postgres@127.0.0.1:1/none").unwrap(),
    };
    let state_dir = db.state_dir("mini");
    let (recorder, _) = Recorder::start(RecorderConfig::new(state_dir.clone(), "mini".into(), unreachable)).unwrap();
    let mut inventory = LocalInventory::load(&state_dir).unwrap();
    let entry = InventoryEntry {
        host: "mini".into(),
        kind: "Service".into(),
        name: "web".into(),
        spec_hash: "h1".into(),
        last_applied: "{}".into(),
        process: Some("{\"pid\":7}".into()),
        updated_ms: now_ms(),
    };
    inventory.upsert(entry.clone(), &recorder).unwrap();
    let report = recorder.flush().await;
    assert_eq!(report.pending, 1);
    assert!(report.store_error.is_some());
    assert_eq!(
        LocalInventory::load(&state_dir).unwrap().get("Service", "web"),
        Some(&entry)
    );
    drop(recorder);

    // The same state dir against a reachable store: the journal replays the mirror.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (recorder, _) = Recorder::start(RecorderConfig::new(state_dir, "mini".into(), db.url.clone())).unwrap();
    drain(&recorder, Duration::from_secs(30)).await;
    assert_eq!(db.open().await.inventory("mini").await.unwrap(), vec![entry]);
}

async fn sqlite_outage_and_replay(db: TestDb) {
    // The database's directory is blocked by a file while records are written, then unblocked.
    let blocked = db.dir.path().join("db");
    std::fs::write(&blocked, "in the way").unwrap();
    let url = StoreUrl::parse(&format!("sqlite://{}/truth.db", blocked.display())).unwrap();
    let (recorder, _) = Recorder::start(RecorderConfig::new(db.state_dir("mini"), "mini".into(), url.clone())).unwrap();
    for i in 0..300 {
        let run = format!("run-{i}");
        recorder.record(run_started(&run, "mini"));
        recorder.receipt(draft(i));
        recorder.record(run_finished(&run));
        if i == 150 {
            let report = recorder.flush().await;
            assert!(report.pending > 0 && report.store_error.is_some(), "{report:?}");
            std::fs::remove_file(&blocked).unwrap();
        }
    }
    drain(&recorder, Duration::from_secs(30)).await;
    let store = store::open(&url).await.unwrap();
    assert_eq!(count(&*store, "runs").await, 300);
    assert_eq!(count(&*store, "receipts").await, 300);
    assert_eq!(verify_chain(&store.receipts().await.unwrap()), Ok(300));
}

pub fn memory(namespace: &str, content: &str, tags: &[&str], confidence: Option<f64>, at_ms: i64) -> NewMemory {
    NewMemory {
        namespace: namespace.into(),
        content: content.into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        confidence,
        source_agent: Some("scribe".into()),
        tier: "working".into(),
        at_ms,
    }
}

async fn memory_items_merge_duplicates_per_namespace(db: TestDb) {
    let store = db.open().await;
    let first = store
        .memory_add(&memory("notes", "The sky is blue", &["sky"], Some(0.4), 1_000))
        .await
        .unwrap();
    assert!(!first.merged);
    let item = store.memory_get(&first.id).await.unwrap().unwrap();
    assert_eq!(item.namespace, "notes");
    assert_eq!(item.tier, "working");
    assert_eq!(item.content, "The sky is blue");
    assert_eq!(
        item.content_hash,
        mirrorctl::store::memory::content_hash("The sky is blue")
    );
    assert_eq!(item.source_agent.as_deref(), Some("scribe"));
    assert_eq!((item.created_ms, item.last_used_ms, item.uses), (1_000, 1_000, 0));
    assert_eq!(item.confidence, 0.4);
    assert!(!item.verified);
    assert_eq!(item.tags, vec!["sky"]);

    // The same content (after trimming) in the same namespace: merged into the first item.
    let mut again = memory("notes", "  The sky is blue\n", &["colour", "sky"], Some(0.9), 2_000);
    again.source_agent = Some("other".into());
    let second = store.memory_add(&again).await.unwrap();
    assert_eq!(second.id, first.id);
    assert!(second.merged);
    let merged = store.memory_get(&first.id).await.unwrap().unwrap();
    assert_eq!((merged.created_ms, merged.last_used_ms, merged.uses), (1_000, 2_000, 1));
    assert_eq!(merged.confidence, 0.9, "the higher confidence wins");
    assert_eq!(merged.tags, vec!["colour", "sky"]);
    assert_eq!(
        merged.source_agent.as_deref(),
        Some("scribe"),
        "the first source is kept"
    );

    // A lower confidence does not lower it; no confidence leaves it alone.
    store
        .memory_add(&memory("notes", "The sky is blue", &[], Some(0.1), 3_000))
        .await
        .unwrap();
    store
        .memory_add(&memory("notes", "The sky is blue", &[], None, 4_000))
        .await
        .unwrap();
    let merged = store.memory_get(&first.id).await.unwrap().unwrap();
    assert_eq!((merged.uses, merged.confidence), (3, 0.9));

    // The same content in another namespace is another item.
    let elsewhere = store
        .memory_add(&memory("team-a", "The sky is blue", &[], None, 5_000))
        .await
        .unwrap();
    assert!(!elsewhere.merged);
    assert_ne!(elsewhere.id, first.id);
    assert_eq!(
        store.memory_get(&elsewhere.id).await.unwrap().unwrap().confidence,
        mirrorctl::store::memory::DEFAULT_CONFIDENCE
    );
    assert_eq!(count(&*store, "memory_items").await, 2);
    assert_eq!(count(&*store, "memory_item_tags").await, 2);
    assert!(store.memory_get("no-such-item").await.unwrap().is_none());

    let refused = store
        .memory_add(&memory("team-*", "x", &[], None, 1))
        .await
        .unwrap_err();
    assert!(matches!(refused, StoreError::Invalid(_)), "{refused}");
    let refused = store.memory_add(&memory("notes", " ", &[], None, 1)).await.unwrap_err();
    assert!(refused.to_string().contains("empty"), "{refused}");
}

/// Agents adding the same memory at once: one item, every add but one merged into it.
async fn memory_concurrent_duplicates_make_one_item(db: TestDb) {
    let store: std::sync::Arc<dyn Store> = std::sync::Arc::from(db.open().await);
    let adds: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let tag = format!("t{i}");
                store
                    .memory_add(&memory(
                        "notes",
                        "said by everyone",
                        &[&tag],
                        Some(0.1 * i as f64),
                        1_000 + i,
                    ))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut results = Vec::new();
    for add in adds {
        results.push(add.await.unwrap());
    }
    let id = &results[0].id;
    assert!(results.iter().all(|r| &r.id == id), "{results:?}");
    assert_eq!(results.iter().filter(|r| !r.merged).count(), 1, "{results:?}");
    let item = store.memory_get(id).await.unwrap().unwrap();
    assert_eq!(item.uses, 7);
    assert_eq!(item.tags.len(), 8);
    assert!((item.confidence - 0.7).abs() < 1e-9, "{}", item.confidence);
    assert_eq!(count(&*store, "memory_items").await, 1);
}

async fn memory_list_search_touch_verify_and_move(db: TestDb) {
    let store = db.open().await;
    let add = |ns: &'static str, content: &'static str, tags: &'static [&'static str], at: i64| {
        let store = &store;
        async move { store.memory_add(&memory(ns, content, tags, None, at)).await.unwrap().id }
    };
    let a = add("notes", "Ollama listens on 11434", &["ops"], 1_000).await;
    let b = add("team-a", "The 50% rule_of thumb", &["ops", "math"], 2_000).await;
    let c = add("team-b", "OLLAMA models live in ~/.ollama", &[], 3_000).await;
    let d = add("teams", "ollama is not here", &[], 4_000).await;

    let ids = |items: &[mirrorctl::store::MemoryItem]| items.iter().map(|i| i.id.clone()).collect::<Vec<_>>();
    let all = store
        .memory_list(&MemoryFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        ids(&all),
        vec![d.clone(), c.clone(), b.clone(), a.clone()],
        "newest first"
    );
    assert_eq!(all[2].tags, vec!["math", "ops"]);
    let filter = |namespaces: &[&str], tier: Option<&str>, tag: Option<&str>, limit: u32| MemoryFilter {
        namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
        tier: tier.map(Into::into),
        tag: tag.map(Into::into),
        limit,
    };
    let listed = store.memory_list(&filter(&["team-*"], None, None, 100)).await.unwrap();
    assert_eq!(
        ids(&listed),
        vec![c.clone(), b.clone()],
        "a glob is a prefix, not a LIKE"
    );
    let listed = store.memory_list(&filter(&[], None, Some("ops"), 100)).await.unwrap();
    assert_eq!(ids(&listed), vec![b.clone(), a.clone()]);
    let listed = store
        .memory_list(&filter(&["notes", "teams"], None, None, 1))
        .await
        .unwrap();
    assert_eq!(ids(&listed), vec![d.clone()]);
    assert!(store
        .memory_list(&filter(&[], Some("core"), None, 100))
        .await
        .unwrap()
        .is_empty());

    // Search: case-insensitive substring, only within the given namespaces, most recently used first.
    let search = |namespaces: &[&str], text: &str| MemoryQuery {
        namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
        text: text.into(),
        limit: 10,
    };
    let found = store
        .memory_search(&search(&["notes", "team-*"], "ollama"))
        .await
        .unwrap();
    assert_eq!(ids(&found), vec![c.clone(), a.clone()]);
    let found = store.memory_search(&search(&["*"], "50%")).await.unwrap();
    assert_eq!(ids(&found), vec![b.clone()], "% is literal");
    assert!(
        store.memory_search(&search(&["*"], "50_")).await.unwrap().is_empty(),
        "_ is literal"
    );
    assert!(store.memory_search(&search(&[], "ollama")).await.unwrap().is_empty());
    assert_eq!(store.memory_search(&search(&["team-a"], "")).await.unwrap().len(), 1);

    // Touch: uses + 1, last used now; it comes first in a search.
    let touched = store.memory_touch(&a, 10_000).await.unwrap().unwrap();
    assert_eq!((touched.uses, touched.last_used_ms), (1, 10_000));
    let found = store
        .memory_search(&search(&["notes", "team-*"], "OLLAMA"))
        .await
        .unwrap();
    assert_eq!(ids(&found), vec![a.clone(), c.clone()]);
    assert!(store.memory_touch("no-such-item", 1).await.unwrap().is_none());

    // Verify, with and without a confidence.
    let verified = store.memory_verify(&b, None).await.unwrap().unwrap();
    assert!(verified.verified);
    assert_eq!(verified.confidence, mirrorctl::store::memory::DEFAULT_CONFIDENCE);
    let verified = store.memory_verify(&b, Some(0.95)).await.unwrap().unwrap();
    assert_eq!((verified.verified, verified.confidence), (true, 0.95));
    assert!(store.memory_verify("no-such-item", None).await.unwrap().is_none());
    assert!(store.memory_verify(&b, Some(2.0)).await.is_err());

    // Moves: recorded once, only from the tier the item is in.
    let transition = |id: &str, from: &str, to: &str, at_ms: i64| MemoryTransition {
        id: new_id(),
        item_id: id.into(),
        from_tier: from.into(),
        to_tier: to.into(),
        rule: Some("promote-used".into()),
        run_id: Some("run-1".into()),
        at_ms,
    };
    let up = transition(&a, "working", "long-term", 20_000);
    assert!(store.memory_move(&up).await.unwrap());
    assert!(
        !store.memory_move(&up).await.unwrap(),
        "a replayed transition moves nothing"
    );
    assert!(!store
        .memory_move(&transition(&a, "working", "core", 21_000))
        .await
        .unwrap());
    let archive = transition(&a, "long-term", "archived", 30_000);
    assert!(store.memory_move(&archive).await.unwrap());
    assert_eq!(store.memory_get(&a).await.unwrap().unwrap().tier, "archived");
    assert_eq!(store.memory_history(&a).await.unwrap(), vec![up, archive]);
    assert!(store.memory_history(&b).await.unwrap().is_empty());
    let archived = store
        .memory_list(&filter(&[], Some("archived"), None, 100))
        .await
        .unwrap();
    assert_eq!(ids(&archived), vec![a.clone()]);
    assert_eq!(count(&*store, "memory_items").await, 4, "nothing is deleted");
}

/// Identical passes counted on a report (idempotently: a replay counts nothing twice), `drift
/// list` filters, and ids found by a unique prefix.
async fn drift_repeats_filters_and_id_prefixes(db: TestDb) {
    let store = db.open().await;
    let hour = 3600 * 1000;
    let old = report("0193aaaa-0000-7000-8000-000000000001", now_ms() - 3 * hour, 2);
    let mut severe = report("0193aaaa-0000-7000-8000-000000000002", now_ms() - 2 * hour, 1);
    severe.items[0].severity = Severity::Critical;
    severe.items[0].kind = "Source".into();
    let recent = report("0193bbbb-0000-7000-8000-000000000003", now_ms(), 3);
    let repeated = Record::DriftRepeated {
        id: old.id.clone(),
        repeats: 4,
        seen_ms: now_ms() - 60_000,
    };
    let records = vec![
        Record::DriftReport(old.clone()),
        Record::DriftReport(severe.clone()),
        Record::DriftReport(recent.clone()),
        repeated.clone(),
    ];
    store.write(&records).await.unwrap();
    store.write(&[repeated]).await.unwrap();
    let stored = store.drift_report(&old.id).await.unwrap().unwrap();
    assert_eq!(stored.repeats, 4, "a replayed count is not added twice");
    assert!(stored.last_seen_at.is_some());

    let list = |filter: ReportFilter| {
        let store = &store;
        async move {
            let reports = store.drift_reports(&filter).await.unwrap();
            reports.into_iter().map(|r| r.id).collect::<Vec<_>>()
        }
    };
    let all = ReportFilter {
        limit: 10,
        ..Default::default()
    };
    assert_eq!(
        list(all.clone()).await,
        [recent.id.as_str(), severe.id.as_str(), old.id.as_str()]
    );
    let since = ReportFilter {
        since_ms: Some(now_ms() - hour),
        ..all.clone()
    };
    assert_eq!(
        list(since).await,
        [recent.id.as_str(), old.id.as_str()],
        "the old one was seen again a minute ago"
    );
    let critical = ReportFilter {
        min_severity: Some(Severity::Error),
        ..all.clone()
    };
    assert_eq!(list(critical).await, [severe.id.as_str()]);
    let kind = ReportFilter {
        kind: Some("Source".into()),
        ..all.clone()
    };
    assert_eq!(list(kind).await, [severe.id.as_str()]);
    let resource = ReportFilter {
        resource: Some("svc-2".into()),
        ..all.clone()
    };
    assert_eq!(
        list(resource).await,
        [recent.id.as_str()],
        "only the recent one has a third item"
    );
    let hostile = ReportFilter {
        resource: Some("x' OR 1=1 --".into()),
        ..all
    };
    assert!(list(hostile).await.is_empty(), "filters are bound, never spliced");

    assert_eq!(
        store.drift_report_ids("0193b", 10).await.unwrap(),
        vec![recent.id.clone()]
    );
    assert_eq!(store.drift_report_ids("0193AAAA", 10).await.unwrap().len(), 2);
    assert!(
        store.drift_report_ids("%", 10).await.unwrap().is_empty(),
        "no wildcard gets through"
    );
    assert!(store.drift_report_ids("", 10).await.unwrap().is_empty());

    // Retention keeps a report that is still being seen.
    assert_eq!(
        store.delete_drift_reports_before(now_ms() - 30 * 60_000).await.unwrap(),
        1
    );
    assert!(store.drift_report(&old.id).await.unwrap().is_some());
    assert!(store.drift_report(&severe.id).await.unwrap().is_none());
}

on_both_backends!(
    drift_repeats_filters_and_id_prefixes,
    memory_items_merge_duplicates_per_namespace,
    memory_concurrent_duplicates_make_one_item,
    memory_list_search_touch_verify_and_move,
    migrations_from_empty,
    records_round_trip_and_replay_once,
    concurrent_writers,
    audit_catches_edited_deleted_and_reordered_receipts,
    retention_deletes_old_reports_and_keeps_receipts,
    a_newer_schema_is_refused_and_left_alone,
    job_runs_round_trip_newest_first,
    the_local_inventory_does_not_need_the_store,
);

/// SQLite reads receipts through its C API (src/store/sqlite_receipts.rs): a value it cannot
/// read is an error naming the column and the receipt, never a receipt with a field made up.
#[tokio::test]
async fn sqlite_unreadable_receipt_names_column_and_receipt() {
    let db = TestDb::sqlite();
    let store = db.open().await;
    let recorder = db.recorder("mini");
    for i in 0..3 {
        recorder.receipt(draft(i));
    }
    drain(&recorder, Duration::from_secs(30)).await;
    let receipts = store.receipts().await.unwrap();
    assert_eq!(verify_chain(&receipts), Ok(3));
    let second = receipts.iter().find(|r| r.seq == 2).unwrap().id.clone();

    db.tamper("UPDATE receipts SET detail = CAST(x'ff41' AS TEXT) WHERE seq = 2")
        .await;
    let error = store.receipts().await.unwrap_err().to_string();
    assert!(
        error.contains(&format!("column `detail` of receipt {second}: expected UTF-8 text")),
        "{error}"
    );

    db.tamper("UPDATE receipts SET detail = 'ok', at_ms = 'yesterday' WHERE seq = 2")
        .await;
    let error = store.receipts().await.unwrap_err().to_string();
    assert!(
        error.contains(&format!(
            "column `at_ms` of receipt {second}: expected an integer, found text"
        )),
        "{error}"
    );

    db.tamper("DROP TABLE receipts").await;
    let error = store.receipts().await.unwrap_err().to_string();
    assert!(
        error.contains("read receipts") && error.contains("no such table: receipts"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_outage_nothing_lost_nothing_twice() {
    sqlite_outage_and_replay(TestDb::sqlite()).await;
}

/// A PostgreSQL server of this test's own, so it can be stopped and started.
pub(crate) struct OwnServer {
    pub(crate) url: String,
    dir: String,
}

impl OwnServer {
    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/throwaway-postgres")
    }

    pub(crate) fn start() -> OwnServer {
        let out = std::process::Command::new(Self::script())
            .arg("start")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        let mut lines = text.lines();
        OwnServer {
            url: lines.next().unwrap().into(),
            dir: lines.next().unwrap().into(),
        }
    }

    pub(crate) fn run(&self, verb: &str) {
        let out = std::process::Command::new(Self::script())
            .args([verb, &self.dir])
            .output()
            .unwrap();
        assert!(out.status.success(), "{verb}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = std::process::Command::new(Self::script())
            .args(["destroy", &self.dir])
            .output();
    }
}

/// The PostgreSQL server is stopped in the middle of a run of writes and started again: every
/// record arrives, once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(mirror_ci_parts),
    ignore = "needs PostgreSQL: MIRROR_TEST_POSTGRES_URL (scripts/throwaway-postgres start; .ci/run provides it)"
)]
async fn postgres_outage_nothing_lost_nothing_twice() {
    assert!(std::env::var(POSTGRES_ENV).is_ok(), "{POSTGRES_ENV} is not set");
    let server = OwnServer::start();
    let url = StoreUrl::parse(&server.url).unwrap();
    let state = tempfile::tempdir().unwrap();
    store::open(&url).await.unwrap();
    let mut config = RecorderConfig::new(state.path().to_path_buf(), "mini".into(), url.clone());
    config.retry_max = Duration::from_millis(500);
    let (recorder, _) = Recorder::start(config).unwrap();

    const RUNS: usize = 600;
    let mut outage_seen = false;
    for i in 0..RUNS {
        let run = format!("run-{i}");
        recorder.record(run_started(&run, "mini"));
        recorder.receipt(draft(i));
        recorder.record(run_finished(&run));
        if i == 200 {
            assert_eq!(recorder.flush().await.pending, 0);
            server.run("stop");
        }
        if i == 300 {
            let report = recorder.flush().await;
            outage_seen = report.pending > 0 && report.store_error.is_some();
        }
        if i == 400 {
            server.run("resume");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(
        outage_seen,
        "the writes during the outage should have waited in the journal"
    );
    drain(&recorder, Duration::from_secs(60)).await;

    let store = store::open(&url).await.unwrap();
    assert_eq!(count(&*store, "runs").await, RUNS as i64, "nothing lost, nothing twice");
    assert_eq!(count(&*store, "receipts").await, RUNS as i64);
    assert_eq!(verify_chain(&store.receipts().await.unwrap()), Ok(RUNS));
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&server.url).await.unwrap();
    let unfinished: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM runs WHERE ended_ms IS NULL")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(unfinished.0, 0, "every run's end arrived after its start");
}

/// A new SQLite store opened by several at once (a pass's recorder and its memory step did
/// this, and one of them failed 1 time in 3: "table runs already exists"): every opener
/// succeeds, the migrations run once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_sqlite_store_opened_by_several_at_once_migrates_once() {
    for round in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let url = StoreUrl::parse(&format!("sqlite://{}/truth.db", dir.path().display())).unwrap();
        let opens: Vec<_> = (0..4)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { store::open(&url).await.map(|_| ()) })
            })
            .collect();
        for open in opens {
            let opened = open.await.unwrap();
            assert!(
                opened.is_ok(),
                "round {round}: {:?}",
                opened.err().map(|e| e.to_string())
            );
        }
    }
}
