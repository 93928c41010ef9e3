//! A person's day-to-day overrides (`mirrorctl stop|start|restart NAME`), like `systemctl stop`
//! on a unit that stays enabled: `stop` keeps a resource stopped until `start` or the next
//! commit, recorded with who and when (`<state dir>/overrides.json`), shown in `status` and as
//! intentional drift. A pass treats a stopped resource as suspended; the commit it was stopped
//! at is kept with it, so a new commit ends the override (the new desired state is applied
//! whole, as a commit promises).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::source::DesiredState;
use crate::spec::{Kind, ResourceId, Spec};

/// What a person asked of one resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verb {
    Stop,
    Start,
    Restart,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Stop => "stop",
            Verb::Start => "start",
            Verb::Restart => "restart",
        }
    }
}

/// One operator action for a pass: which resource, what, and who asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    pub id: ResourceId,
    pub verb: Verb,
    pub by: String,
}

impl Operation {
    /// The reason its receipt and plan carry.
    pub fn reason(&self) -> String {
        format!(
            "{} asked by {} (mirrorctl {})",
            self.verb.as_str(),
            self.by,
            self.verb.as_str()
        )
    }
}

/// A resource kept stopped by a person.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stopped {
    pub by: String,
    pub at_ms: i64,
    /// The commit in force when it was stopped: another one ends the override.
    pub commit: Option<String>,
}

impl Stopped {
    /// `stopped by alice (uid 1000) 3m ago (mirrorctl stop); `mirrorctl start web` or the next
    /// commit starts it again`.
    pub fn describe(&self, name: &str, now_ms: i64) -> String {
        format!(
            "stopped by {} {} ago (mirrorctl stop); `mirrorctl start {name}` or the next commit starts it again",
            self.by,
            crate::report::elapsed(self.at_ms, now_ms)
        )
    }
}

/// Stopped resources by `Kind/name`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overrides(BTreeMap<String, Stopped>);

fn path(state_dir: &Path) -> PathBuf {
    crate::state::Layout::of(state_dir).overrides()
}

#[derive(Debug, thiserror::Error)]
pub enum OverrideError {
    #[error("no service or agent `{name}` in the desired state in force{}", commit_note(.commit))]
    Unknown { name: String, commit: Option<String> },
    #[error("recording the override: {0}")]
    Save(#[source] crate::store::StoreError),
}

fn commit_note(commit: &Option<String>) -> String {
    commit
        .as_deref()
        .map(|c| format!(" (commit {})", &c[..c.len().min(12)]))
        .unwrap_or_default()
}

impl Overrides {
    /// The overrides recorded; none when the file is missing. A damaged file counts as none
    /// (the resources then run as committed, which is what a commit asks).
    pub fn load(state_dir: &Path) -> Overrides {
        fs::read(path(state_dir))
            .ok()
            .and_then(|text| serde_json::from_slice(&text).ok())
            .unwrap_or_default()
    }

    /// The override in force for `id` at `commit` (one made at another commit has ended).
    pub fn active(&self, id: &ResourceId, commit: &Option<String>) -> Option<&Stopped> {
        self.0.get(&id.to_string()).filter(|s| &s.commit == commit)
    }

    fn save(&self, state_dir: &Path) -> Result<(), OverrideError> {
        let text = serde_json::to_vec_pretty(self).expect("overrides serialize");
        crate::store::journal::write_atomically(&path(state_dir), &text).map_err(OverrideError::Save)
    }

    /// Forgets overrides made at another commit than `commit`; saves when any was.
    pub fn end_stale(state_dir: &Path, commit: &Option<String>) -> Result<(), OverrideError> {
        let mut overrides = Overrides::load(state_dir);
        let before = overrides.0.len();
        overrides.0.retain(|_, s| &s.commit == commit);
        if overrides.0.len() == before {
            return Ok(());
        }
        overrides.save(state_dir)
    }
}

/// The resource `name` names in `state` (a Service first, then an Agent, as `logs` does).
pub fn resolve(state: &DesiredState, name: &str) -> Result<ResourceId, OverrideError> {
    [Kind::Service, Kind::Agent]
        .into_iter()
        .find(|kind| {
            state.resources.iter().any(|r| {
                r.metadata.name == name && r.id().kind == *kind && matches!(r.spec, Spec::Service(_) | Spec::Agent(_))
            })
        })
        .map(|kind| ResourceId::new(kind, name))
        .ok_or_else(|| OverrideError::Unknown {
            name: name.to_string(),
            commit: state.commit.clone(),
        })
}

/// Records what `verb` changes in the overrides (stop: add; start and restart: remove)
/// and returns the operation for the pass that carries it out.
pub fn prepare(
    state_dir: &Path,
    state: &DesiredState,
    name: &str,
    verb: Verb,
    by: &str,
    now_ms: i64,
) -> Result<Operation, OverrideError> {
    let id = resolve(state, name)?;
    let mut overrides = Overrides::load(state_dir);
    let key = id.to_string();
    let changed = match verb {
        Verb::Stop => {
            let stopped = Stopped {
                by: by.to_string(),
                at_ms: now_ms,
                commit: state.commit.clone(),
            };
            // Stopping again keeps who stopped it first, and when.
            match overrides.0.get(&key) {
                Some(known) if known.commit == stopped.commit => false,
                _ => {
                    overrides.0.insert(key, stopped);
                    true
                }
            }
        }
        // A restart of a stopped resource starts it, as `systemctl restart` does.
        Verb::Start | Verb::Restart => overrides.0.remove(&key).is_some(),
    };
    if changed {
        overrides.save(state_dir)?;
    }
    Ok(Operation {
        id,
        verb,
        by: by.to_string(),
    })
}

/// `stop|start|restart NAME` without a daemon: takes the state dir's writer lock, records the
/// override, and runs a pass over that resource alone.
pub async fn run_operation(
    context: &super::Context,
    name: &str,
    verb: Verb,
    by: &str,
) -> Result<super::PassOutcome, String> {
    let _lock = crate::state::lock_state_dir(&context.state_dir)
        .map_err(|e| format!("{}: {e}", context.state_dir.display()))?;
    let mut reconciler = super::Reconciler::open(context.clone()).map_err(|e| e.to_string())?;
    let state = match reconciler.load().map_err(|e| e.to_string())? {
        Ok(state) => std::sync::Arc::new(state),
        Err(e) => return Err(format!("the desired state cannot be used: {}", e.summary())),
    };
    let operation =
        prepare(&context.state_dir, &state, name, verb, by, crate::report::now_ms()).map_err(|e| e.to_string())?;
    let input = super::PassInput {
        desired: Ok(state),
        extra_drift: Vec::new(),
        only: Some(operation.id.clone()),
        operation: Some(operation),
        probes: super::Probes::RunNow,
    };
    let options = super::PassOptions {
        dry_run: false,
        allow_mass_prune: false,
        trigger: verb.as_str().to_string(),
        models: false,
        memory: false,
    };
    let mut outcome = reconciler.pass(input, &options);
    outcome.store = reconciler.flush().await;
    Ok(outcome)
}

/// The person running this process, as an override records them (`name (uid N)`).
pub fn this_user() -> String {
    crate::daemon::peer::Peer {
        pid: None,
        uid: rustix::process::getuid().as_raw(),
    }
    .describe()
}

/// What people asked, written into a plan (pure): a stopped resource's change and drift item
/// say who stopped it and when (intentional drift); the operation's change carries who asked,
/// and a `restart` of a resource that runs as desired becomes a restart.
pub fn apply_to_plan(
    plan: &mut crate::plan::Plan,
    stopped: &[(ResourceId, Stopped)],
    suspended: &[ResourceId],
    operation: Option<&Operation>,
    now_ms: i64,
) {
    use crate::plan::Action;
    use crate::report::{Drift, DriftItem, Severity};
    for (id, stop) in stopped {
        let detail = stop.describe(&id.name, now_ms);
        for change in plan
            .changes
            .iter_mut()
            .filter(|c| c.kind == id.kind && c.name == id.name)
        {
            change.reason = detail.clone();
        }
        // The drift item names the time, not "3m ago": the same stop reads the same in every
        // pass (identical reports are counted, not stored again).
        let detail = format!(
            "stopped by {} at {} (mirrorctl stop); `mirrorctl start {}` or the next commit starts it again",
            stop.by,
            crate::report::rfc3339(stop.at_ms),
            id.name
        );
        plan.drift
            .retain(|d| !(d.kind == id.kind.as_str() && d.name == id.name));
        plan.drift.push(DriftItem {
            kind: id.kind.to_string(),
            name: id.name.clone(),
            drift: Drift::Changed,
            corrective: false,
            severity: Severity::Info,
            detail,
        });
    }
    let Some(operation) = operation else { return };
    let id = &operation.id;
    for change in plan
        .changes
        .iter_mut()
        .filter(|c| c.kind == id.kind && c.name == id.name)
    {
        // Never a restart of what the commit suspends (`suspend: true`) or a person stopped.
        let held = suspended.contains(id) || stopped.iter().any(|(s, _)| s == id);
        if operation.verb == Verb::Restart && change.action == Action::Noop && !held {
            change.action = Action::Restart;
        }
        if change.action != Action::Noop {
            change.reason = operation.reason();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(commit: &str) -> DesiredState {
        let mut state = crate::source::load_texts([(
            "a.yaml",
            "apiVersion: mirror.os/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  command: [sleep, \"1\"]\n"
                .as_bytes(),
        )])
        .unwrap();
        state.commit = Some(commit.to_string());
        state
    }

    #[test]
    fn stop_holds_until_start_or_another_commit() {
        let dir = tempfile::tempdir().unwrap();
        let at_a = state("aaaa");
        let op = prepare(dir.path(), &at_a, "web", Verb::Stop, "alice (uid 1000)", 1_000).unwrap();
        assert_eq!(op.id, ResourceId::new(Kind::Service, "web"));
        let overrides = Overrides::load(dir.path());
        let stopped = overrides.active(&op.id, &at_a.commit).unwrap();
        assert_eq!(stopped.by, "alice (uid 1000)");
        assert!(stopped
            .describe("web", 61_000)
            .starts_with("stopped by alice (uid 1000) 1m ago"));
        // Stopped again by someone else: the first stop is what is kept.
        prepare(dir.path(), &at_a, "web", Verb::Stop, "bob", 5_000).unwrap();
        assert_eq!(
            Overrides::load(dir.path()).active(&op.id, &at_a.commit).unwrap().at_ms,
            1_000
        );
        // Another commit ends it, and a pass on it forgets it.
        let at_b = state("bbbb");
        assert!(Overrides::load(dir.path()).active(&op.id, &at_b.commit).is_none());
        Overrides::end_stale(dir.path(), &at_b.commit).unwrap();
        assert_eq!(Overrides::load(dir.path()), Overrides::default());
        // Start ends it at once.
        prepare(dir.path(), &at_b, "web", Verb::Stop, "alice", 1).unwrap();
        prepare(dir.path(), &at_b, "web", Verb::Start, "alice", 2).unwrap();
        assert!(Overrides::load(dir.path()).active(&op.id, &at_b.commit).is_none());
    }

    #[test]
    fn an_unknown_name_is_an_error_naming_the_commit() {
        let dir = tempfile::tempdir().unwrap();
        let error = prepare(dir.path(), &state("0123456789abcdef99"), "nope", Verb::Stop, "a", 1).unwrap_err();
        assert_eq!(
            error.to_string(),
            "no service or agent `nope` in the desired state in force (commit 0123456789ab)"
        );
        assert!(
            !crate::state::Layout::of(dir.path()).overrides().exists(),
            "nothing recorded"
        );
    }
}
