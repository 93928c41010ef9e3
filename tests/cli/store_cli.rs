//! `drift list|show` and `audit verify` through the real binary, on both backends.

use std::time::Duration;

use mirrorctl::report::{now_ms, rfc3339, Drift, DriftItem, DriftReport, Severity};
use mirrorctl::store::Record;

use crate::store_contract::{draft, drain, TestDb};
use crate::support::Sandbox;

fn report(id: &str, minutes_ago: i64) -> DriftReport {
    DriftReport {
        id: id.into(),
        host: "mini".into(),
        commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
        run_id: None,
        started_at: rfc3339(now_ms() - minutes_ago * 60_000),
        observe_only: true,
        repeats: 0,
        last_seen_at: None,
        items: vec![
            DriftItem {
                kind: "Service".into(),
                name: "web".into(),
                drift: Drift::Failed,
                corrective: true,
                severity: Severity::Error,
                detail: "exited with status 1".into(),
            },
            DriftItem {
                kind: "Agent".into(),
                name: "archivist".into(),
                drift: Drift::Changed,
                corrective: false,
                severity: Severity::Info,
                detail: "commit changes spec.model".into(),
            },
        ],
    }
}

/// Writes two reports and ten receipts through the recorder (as the daemon will).
async fn seed(db: &TestDb) {
    let recorder = db.recorder("mini");
    recorder.record(Record::DriftReport(report("report-older", 10)));
    recorder.record(Record::DriftReport(report("report-newer", 1)));
    for i in 0..10 {
        recorder.receipt(draft(i));
    }
    drain(&recorder, Duration::from_secs(30)).await;
}

fn store_args(db: &TestDb) -> Vec<String> {
    vec!["--store".into(), db.raw_url.clone()]
}

fn run(sandbox: &Sandbox, db: &TestDb, args: &[&str]) -> crate::support::Run {
    let mut all: Vec<String> = store_args(db);
    all.extend(args.iter().map(|a| a.to_string()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    sandbox.run(&refs)
}

async fn drift_list_and_show(db: TestDb) {
    seed(&db).await;
    let sandbox = Sandbox::bare_dir();
    let list = run(&sandbox, &db, &["drift", "list"]);
    assert_eq!(list.code, 0, "{list:?}");
    let lines: Vec<&str> = list.stdout.lines().collect();
    assert!(lines[0].starts_with("ID"), "{}", list.stdout);
    assert!(
        lines[1].starts_with("report-newer") && lines[2].starts_with("report-older"),
        "{}",
        list.stdout
    );
    assert!(lines[1].contains("mini") && lines[1].contains("0123456789ab") && lines[1].contains("observe-only"));

    let json = run(&sandbox, &db, &["drift", "list", "--output", "json", "--limit", "1"]).json();
    assert_eq!(json["reports"].as_array().unwrap().len(), 1);
    assert_eq!(json["reports"][0]["id"], "report-newer");
    assert_eq!(json["reports"][0]["items"], 2);

    let show = run(&sandbox, &db, &["drift", "show", "report-older"]);
    assert_eq!(show.code, 0, "{show:?}");
    assert!(
        show.stdout
            .contains("drift report report-older on mini at commit 0123456789ab"),
        "{}",
        show.stdout
    );
    assert!(
        show.stdout
            .contains("error    failed           Service/web: exited with status 1 [corrective]"),
        "{}",
        show.stdout
    );
    assert!(
        show.stdout
            .contains("Agent/archivist: commit changes spec.model [intentional]"),
        "{}",
        show.stdout
    );

    let json = run(&sandbox, &db, &["drift", "show", "report-older", "--output", "json"]).json();
    for key in ["id", "host", "commit", "started_at", "items"] {
        assert!(json.get(key).is_some(), "{key} missing: {json}");
    }
    assert_eq!(json["items"][0]["drift"], "failed");
    assert_eq!(json["items"][0]["corrective"], true);
    assert_eq!(json["items"][0]["severity"], "error");

    let missing = run(&sandbox, &db, &["drift", "show", "no-such-report"]);
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.contains("no drift report with id `no-such-report`"),
        "{}",
        missing.stderr
    );
}

async fn audit_verify_exit_codes(db: TestDb) {
    seed(&db).await;
    let sandbox = Sandbox::bare_dir();
    let intact = run(&sandbox, &db, &["audit", "verify"]);
    assert_eq!(intact.code, 0, "{intact:?}");
    assert!(
        intact.stdout.starts_with("intact: 10 receipt(s) of 1 host(s) verified"),
        "{}",
        intact.stdout
    );

    db.tamper("UPDATE receipts SET action = 'noop' WHERE seq = 4").await;
    let broken = run(&sandbox, &db, &["audit", "verify"]);
    assert_eq!(broken.code, 1, "{broken:?}");
    assert!(broken.stdout.starts_with("broken: receipt "), "{}", broken.stdout);
    assert!(
        broken.stdout.contains("(host mini, seq 4) was edited"),
        "{}",
        broken.stdout
    );
    let json = run(&sandbox, &db, &["audit", "verify", "--output", "json"]).json();
    assert_eq!(json["intact"], false);
    assert_eq!(json["break"]["detail"]["problem"], "edited");
    assert_eq!(json["break"]["detail"]["seq"], 4);
}

on_both_backends!(drift_list_and_show, audit_verify_exit_codes);

#[test]
fn the_default_store_is_sqlite_in_the_state_dir() {
    let sandbox = Sandbox::bare_dir();
    let run = sandbox.run(&["drift", "list"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout, "no drift reports\n");
    assert!(sandbox.root().join("state/truth.db").is_file());
}

#[test]
fn an_unreachable_store_names_it_without_its_password() {
    let sandbox = Sandbox::bare_dir();
    let run = sandbox.run(&[
        "drift",
        "list",
        "--store",
        "postgres://mirror:hunter2@127.0.0.1:1/truth",
    ]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("postgres://mirror:***@127.0.0.1:1/truth"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("hunter2"), "{}", run.stderr);
}

#[test]
fn receipts_cut_off_the_end_are_noticed_from_the_local_chain_head() {
    let db = TestDb::sqlite();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let recorder = db.recorder("mini");
        for i in 0..5 {
            recorder.receipt(draft(i));
        }
        drain(&recorder, Duration::from_secs(30)).await;
        db.tamper("DELETE FROM receipts WHERE seq = 5").await;
    });
    let sandbox = Sandbox::bare_dir();
    let state = db.state_dir("mini");
    let mut command = sandbox.cmd(&[
        "audit",
        "verify",
        "--store",
        &db.raw_url,
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    let out = command.env("MIRROR_HOST", "mini").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("deleted from the end: the chain stops at seq 4, this host recorded up to seq 5"),
        "{stdout}"
    );
}
