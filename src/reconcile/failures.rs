//! The last failed action of each resource, kept in the state dir so that `status` (with or
//! without a daemon, from any process) says why a service does not run and since when, instead
//! of "new in the desired state". A pass records each action's outcome: a failure replaces the
//! resource's entry, a success removes it. Written only when something changed.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::spec::ResourceId;

/// An action that failed on a resource, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// What was attempted: `create`, `update`, `restart`, ...
    pub action: String,
    pub reason: String,
    /// When it first failed this way (a retry failing alike keeps it).
    pub at_ms: i64,
    pub commit: Option<String>,
}

/// Failures by `Kind/name`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failures(BTreeMap<String, Failure>);

fn path(state_dir: &Path) -> PathBuf {
    crate::state::Layout::of(state_dir).failures()
}

impl Failures {
    /// The recorded failures; none when the file is missing or damaged (it is advice for
    /// `status`, rebuilt by the next failing action).
    pub fn load(state_dir: &Path) -> Failures {
        fs::read(path(state_dir))
            .ok()
            .and_then(|text| serde_json::from_slice(&text).ok())
            .unwrap_or_default()
    }

    pub fn get(&self, id: &ResourceId) -> Option<&Failure> {
        self.0.get(&id.to_string())
    }

    /// Records an action's outcome; true when that changed what is recorded.
    pub fn record(&mut self, id: &ResourceId, outcome: Result<(), Failure>) -> bool {
        let key = id.to_string();
        match outcome {
            Ok(()) => self.0.remove(&key).is_some(),
            // The same failure again keeps its first time: "since when" is what a person asks.
            Err(failure) => match self.0.get(&key) {
                Some(known) if known.action == failure.action && known.reason == failure.reason => false,
                _ => {
                    self.0.insert(key, failure);
                    true
                }
            },
        }
    }

    /// Forgets resources that are no longer desired; true when any was.
    pub fn retain(&mut self, desired: impl Fn(&str) -> bool) -> bool {
        let before = self.0.len();
        self.0.retain(|key, _| desired(key));
        self.0.len() != before
    }

    /// A reader sees the old or the new list.
    pub fn save(&self, state_dir: &Path) -> Result<(), crate::store::StoreError> {
        let text = serde_json::to_vec_pretty(self).expect("failures serialize");
        crate::store::journal::write_atomically(&path(state_dir), &text)
    }
}

impl Failure {
    /// `create failed 2m 3s ago (commit 1a2b3c4d5e6f): program pyhton3 not found on PATH`.
    pub fn describe(&self, now_ms: i64) -> String {
        let commit = self
            .commit
            .as_deref()
            .map(|c| format!(" (commit {})", &c[..c.len().min(12)]))
            .unwrap_or_default();
        format!(
            "{} failed {} ago{commit}: {}",
            self.action,
            crate::report::elapsed(self.at_ms, now_ms),
            self.reason
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Kind;

    fn failure(reason: &str) -> Failure {
        Failure {
            action: "create".into(),
            reason: reason.into(),
            at_ms: 1_000,
            commit: Some("0123456789abcdef0123".into()),
        }
    }

    #[test]
    fn a_failure_is_kept_until_the_resource_succeeds_or_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let web = ResourceId::new(Kind::Service, "web");
        let mut failures = Failures::load(dir.path());
        assert!(failures.record(&web, Err(failure("program pyhton3 not found on PATH"))));
        let later = Failure {
            at_ms: 9_000,
            ..failure("program pyhton3 not found on PATH")
        };
        assert!(
            !failures.record(&web, Err(later)),
            "the same failure keeps its first time"
        );
        failures.save(dir.path()).unwrap();
        let loaded = Failures::load(dir.path());
        assert_eq!(
            loaded.get(&web).unwrap().describe(63_000),
            "create failed 1m 2s ago (commit 0123456789ab): program pyhton3 not found on PATH"
        );
        let mut loaded = loaded;
        assert!(loaded.record(&web, Ok(())));
        assert_eq!(loaded.get(&web), None);
        loaded.record(&web, Err(failure("again")));
        assert!(loaded.retain(|key| key != "Service/web"));
        assert_eq!(loaded, Failures::default());
    }

    #[test]
    fn a_damaged_file_is_no_failure() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(crate::state::Layout::of(dir.path()).failures(), "{not json").unwrap();
        assert_eq!(Failures::load(dir.path()), Failures::default());
    }
}
