//! One drift report per change, not per pass: a pass whose report says exactly what the last
//! stored one said (same host, commit and items) is counted on that report (`repeats`,
//! `last_seen_at`) instead of stored again. An idle daemon resyncing every minute used to store
//! 60 identical reports an hour. Scheduled reports are always stored (someone asked for them).
//! The last stored report is remembered in `<state dir>/last-drift-report.json`; a damaged or
//! missing file only means the next report is stored.

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::report::DriftReport;

const FILE: &str = "last-drift-report.json";

/// The last report stored, and how many passes saw the same since.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastReport {
    pub id: String,
    pub fingerprint: String,
    pub started_at: String,
    pub repeats: u64,
}

/// What to do with a pass's report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Something differs from the last stored report (or it is scheduled): store it.
    Store,
    /// The same as the last stored report: count it there (`repeats` is the new count).
    Repeat(LastReport),
}

/// What identifies a report's content: host, commit and items (not its id, run or time).
pub fn fingerprint(report: &DriftReport) -> String {
    let content = serde_json::json!([report.host, report.commit, report.items]);
    let digest = Sha256::digest(content.to_string().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `report` is stored or counted on the last one (pure but for reading the file).
pub fn decide(state_dir: &Path, report: &DriftReport, scheduled: bool) -> Decision {
    if scheduled {
        return Decision::Store;
    }
    match recall(state_dir) {
        Some(last) if last.fingerprint == fingerprint(report) => Decision::Repeat(LastReport {
            repeats: last.repeats + 1,
            ..last
        }),
        _ => Decision::Store,
    }
}

fn recall(state_dir: &Path) -> Option<LastReport> {
    serde_json::from_slice(&fs::read(state_dir.join(FILE)).ok()?).ok()
}

/// Remembers the report just stored, or the new count of the last one (write then rename).
pub fn remember(state_dir: &Path, last: &LastReport) -> std::io::Result<()> {
    let partial = state_dir.join(format!("{FILE}.partial"));
    fs::write(&partial, serde_json::to_vec(last).map_err(std::io::Error::other)?)?;
    fs::rename(partial, state_dir.join(FILE))
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
        assert_eq!(decide(dir.path(), &first, false), Decision::Store);
        remember(
            dir.path(),
            &LastReport {
                id: first.id.clone(),
                fingerprint: fingerprint(&first),
                started_at: first.started_at.clone(),
                repeats: 0,
            },
        )
        .unwrap();
        let Decision::Repeat(last) = decide(dir.path(), &report("bb", "exited 1"), false) else {
            panic!("same items, other id, run and time: a repeat");
        };
        assert_eq!((last.id.as_str(), last.repeats), ("a", 1));
        assert_eq!(decide(dir.path(), &report("c", "exited 2"), false), Decision::Store);
        assert_eq!(decide(dir.path(), &report("d", "exited 1"), true), Decision::Store);
        fs::write(dir.path().join(FILE), "{").unwrap();
        assert_eq!(decide(dir.path(), &first, false), Decision::Store);
    }
}
