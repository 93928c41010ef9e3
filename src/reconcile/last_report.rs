//! One drift report per change, not per pass: a pass whose report says exactly what the last
//! stored one said (same host, commit and items) is counted on that report (`repeats`,
//! `last_seen_at`) instead of stored again. An idle daemon resyncing every minute used to store
//! 60 identical reports an hour. Scheduled reports are always stored (someone asked for them).
//! The last stored report is remembered in `<state dir>/last-drift-report.json`, with the store
//! it went to (another store, or a recreated one, gets a report of its own); a damaged or
//! missing file only means the next report is stored. Details are compared without their
//! digits: a countdown ("next restart in 12s"), a count of free bytes or a time in a detail
//! does not make a pass different.

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::report::DriftReport;

/// The last report stored, and how many passes saw the same since.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastReport {
    pub id: String,
    pub fingerprint: String,
    pub started_at: String,
    pub repeats: u64,
    /// The store it was written to (as printed: passwords redacted).
    #[serde(default)]
    pub store: String,
}

/// What to do with a pass's report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Something differs from the last stored report (or it is scheduled): store it.
    Store,
    /// The same as the last stored report: count it there (`repeats` is the new count).
    Repeat(LastReport),
}

/// What identifies a report's content: host, commit and items, details without their digits
/// (not its id, run or time).
pub fn fingerprint(report: &DriftReport) -> String {
    let items: Vec<serde_json::Value> = report
        .items
        .iter()
        .map(|i| {
            let detail: String = i.detail.chars().filter(|c| !c.is_ascii_digit()).collect();
            serde_json::json!([i.kind, i.name, i.drift, i.corrective, i.severity, detail])
        })
        .collect();
    let content = serde_json::json!([report.host, report.commit, items]);
    let digest = Sha256::digest(content.to_string().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `report` is stored or counted on the last one (pure but for reading the file).
pub fn decide(state_dir: &Path, report: &DriftReport, store: &str, scheduled: bool) -> Decision {
    if scheduled {
        return Decision::Store;
    }
    match recall(state_dir) {
        Some(last) if last.fingerprint == fingerprint(report) && last.store == store => Decision::Repeat(LastReport {
            repeats: last.repeats + 1,
            ..last
        }),
        _ => Decision::Store,
    }
}

fn recall(state_dir: &Path) -> Option<LastReport> {
    serde_json::from_slice(&fs::read(crate::state::Layout::of(state_dir).last_drift_report()).ok()?).ok()
}

/// Remembers the report just stored, or the new count of the last one.
pub fn remember(state_dir: &Path, last: &LastReport) -> Result<(), crate::store::StoreError> {
    let text = serde_json::to_vec(last).expect("reports serialize");
    crate::store::journal::write_atomically(&crate::state::Layout::of(state_dir).last_drift_report(), &text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Drift, DriftItem, Severity};

    fn report(id: &str, detail: &str) -> DriftReport {
        DriftReport {
            id: id.into(),
            host: "h".into(),
            commit: Some("c".into()),
            run_id: Some(format!("run-{id}")),
            started_at: format!("2026-12-07T00:00:0{}Z", id.len()),
            observe_only: id.len() % 2 == 0,
            items: vec![DriftItem {
                kind: "Service".into(),
                name: "web".into(),
                drift: Drift::Missing,
                corrective: true,
                severity: Severity::Warning,
                detail: detail.into(),
            }],
            repeats: 0,
            last_seen_at: None,
        }
    }

    #[test]
    fn an_identical_report_is_counted_and_a_different_or_scheduled_one_stored() {
        let dir = tempfile::tempdir().unwrap();
        let first = report("a", "exited 1");
        let store = "sqlite:///state/truth.db";
        assert_eq!(decide(dir.path(), &first, store, false), Decision::Store);
        remember(
            dir.path(),
            &LastReport {
                id: first.id.clone(),
                fingerprint: fingerprint(&first),
                started_at: first.started_at.clone(),
                repeats: 0,
                store: store.into(),
            },
        )
        .unwrap();
        let Decision::Repeat(last) = decide(dir.path(), &report("bb", "exited 1"), store, false) else {
            panic!("same items, other id, run and time: a repeat");
        };
        assert_eq!((last.id.as_str(), last.repeats), ("a", 1));
        let countdown = decide(dir.path(), &report("bb", "exited 7"), store, false);
        assert!(matches!(countdown, Decision::Repeat(_)), "only digits differ: the same");
        assert_eq!(
            decide(dir.path(), &report("c", "crashed"), store, false),
            Decision::Store
        );
        assert_eq!(
            decide(dir.path(), &report("d", "exited 1"), store, true),
            Decision::Store
        );
        assert_eq!(
            decide(dir.path(), &report("e", "exited 1"), "postgres://x/y", false),
            Decision::Store,
            "another store gets its own report"
        );
        fs::write(crate::state::Layout::of(dir.path()).last_drift_report(), "{").unwrap();
        assert_eq!(decide(dir.path(), &first, store, false), Decision::Store);
    }
}
