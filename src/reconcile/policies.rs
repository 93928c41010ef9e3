//! Policy versions in a pass: each Policy is compiled; a new content hash is a new version,
//! shown by the dry-run as a diff from the version before (the review step) and recorded on
//! apply (the store, a receipt, and `<state dir>/policies/<name>.json` for the next diff).
//! Agents get their effective policy (`agents/<name>/view/policy.json`); a running agent is told by
//! SIGHUP, or restarted when its spec says `onPolicyChange: restart`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::policy::{self, AgentPolicy, CompiledPolicy, NewVersion, StoredVersion};
use crate::report::now_ms;
use crate::source::DesiredState;
use crate::spec::agent::AgentSpec;
use crate::spec::{Kind, Spec};
use crate::store::{ReceiptDraft, Record, Recorder};

/// Every policy of a state compiled, at the version it is (or becomes) in this pass.
#[derive(Clone, Debug, Default)]
pub struct PolicyPlan {
    compiled: BTreeMap<String, (CompiledPolicy, u64)>,
    /// Versions this pass creates, in name order.
    pub new_versions: Vec<NewVersion>,
}

impl PolicyPlan {
    /// Compiles the state's policies against the versions kept in `state_dir`.
    pub fn of(state: &DesiredState, state_dir: &Path) -> PolicyPlan {
        let mut plan = PolicyPlan::default();
        for resource in &state.resources {
            let Spec::Policy(spec) = &resource.spec else { continue };
            let name = &resource.metadata.name;
            let compiled = policy::compile(name, spec);
            let stored = load(state_dir, name);
            let version = match policy::next_version(stored.as_ref(), &compiled) {
                Some(new) => {
                    let version = new.version;
                    plan.new_versions.push(new);
                    version
                }
                None => stored.map_or(1, |s| s.version),
            };
            plan.compiled.insert(name.clone(), (compiled, version));
        }
        plan
    }

    /// The effective policy of an agent (None: its policy is not in the state, which validation
    /// refuses).
    pub fn for_agent(&self, name: &str, agent: &AgentSpec) -> Option<AgentPolicy> {
        let (compiled, version) = self.compiled.get(agent.policy.as_deref()?)?;
        Some(policy::effective_for_agent(compiled, *version, name, agent))
    }

    /// Records the new versions: the local copy (the next diff's left side), the store and a
    /// receipt each.
    pub fn record(&self, state_dir: &Path, recorder: &Recorder, commit: &Option<String>) -> Result<(), String> {
        for new in &self.new_versions {
            let Some((compiled, _)) = self.compiled.get(&new.name) else {
                continue;
            };
            save(state_dir, &new.stored()).map_err(|e| format!("{}: {e}", path(state_dir, &new.name).display()))?;
            recorder.record(Record::PolicyVersion(crate::store::PolicyVersion {
                name: new.name.clone(),
                hash: new.hash.clone(),
                version: new.version as i64,
                compiled: compiled.document.to_string(),
                diff: new.diff.clone(),
                created_ms: now_ms(),
            }));
            recorder.receipt(ReceiptDraft {
                run_id: None,
                commit: commit.clone(),
                kind: Kind::Policy.to_string(),
                name: new.name.clone(),
                action: "version".into(),
                reason: match new.previous_version {
                    Some(previous) => format!("the policy changed: version {previous} -> {}", new.version),
                    None => "first version".into(),
                },
                detail: json!({"ok": true, "version": new.version, "hash": new.hash}).to_string(),
            });
        }
        Ok(())
    }
}

fn path(state_dir: &Path, name: &str) -> PathBuf {
    crate::state::Layout::of(state_dir).policy(name)
}

fn load(state_dir: &Path, name: &str) -> Option<StoredVersion> {
    serde_json::from_slice(&std::fs::read(path(state_dir, name)).ok()?).ok()
}

fn save(state_dir: &Path, version: &StoredVersion) -> std::io::Result<()> {
    let target = path(state_dir, &version.name);
    std::fs::create_dir_all(target.parent().expect("a policies dir"))?;
    let temporary = target.with_extension("json.tmp");
    std::fs::write(
        &temporary,
        serde_json::to_vec_pretty(version).expect("versions serialize"),
    )?;
    std::fs::rename(&temporary, &target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(tools: &str) -> DesiredState {
        let text =
            format!("apiVersion: mirror.os/v1\nkind: Policy\nmetadata: {{name: default}}\nspec:\n  tools: {tools}\n");
        crate::source::load_texts([("p.yaml", text.as_bytes())]).expect("valid")
    }

    #[test]
    fn a_changed_policy_is_a_new_version_with_a_diff_and_an_unchanged_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let first = PolicyPlan::of(&state("[{name: fs.read, risk: low}]"), dir.path());
        assert_eq!(first.new_versions.len(), 1);
        assert_eq!(first.new_versions[0].version, 1);
        save(dir.path(), &first.new_versions[0].stored()).unwrap();

        let same = PolicyPlan::of(&state("[{risk: low, name: fs.read}]"), dir.path());
        assert!(same.new_versions.is_empty(), "field order is no change");

        let changed = PolicyPlan::of(
            &state("[{name: fs.read, risk: low}, {name: shell.exec, risk: high}]"),
            dir.path(),
        );
        let new = &changed.new_versions[0];
        assert_eq!((new.version, new.previous_version), (2, Some(1)));
        assert!(new.diff.contains("Policy/default (version 1)"), "{}", new.diff);
        assert!(
            new.diff.contains("+") && new.diff.contains("shell.exec"),
            "{}",
            new.diff
        );
    }
}
