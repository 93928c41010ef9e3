//! MirrorGate-lite and TokenShield, the pure part: policies compiled to normalized, content-hashed
//! effective policies; their versions and diffs; the per-agent effective policy (tighter budget
//! wins); the tool gate and approval requests (`gate`); budgets, day keys and what the bus admits
//! (`budget`).
//!
//! Nothing here does I/O or reads the clock: times are parameters (milliseconds since the Unix
//! epoch), so the daemon, the bus and `reconcile --dry-run` all get the same answers, and tests
//! need no waiting. The caller keeps `StoredVersion`s in its inventory, writes `AgentPolicy`
//! documents to agents' policy files, and records `GateDecision`s as receipts.

mod budget;
mod gate;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::spec::agent::AgentSpec;
use crate::spec::common::Budget;
use crate::spec::policy::{CloudEscalation, OverBudget, PolicySpec, Risk, Tool};
use crate::spec::{Kind, ResourceId};

pub use budget::{
    admit, budget_state, budget_state_of, day_of, next_day_start_ms, Admission, BudgetAmount, BudgetDimension,
    BudgetState, DayKey, UsageToday, DAY_MS,
};
pub use gate::{
    args_fingerprint, gate, ApprovalError, ApprovalRequest, ApprovalState, GateDecision, GateOutcome, GateRule,
    DEFAULT_APPROVAL_TTL_MS,
};

/// The schema tag written into compiled documents, so an agent (or a later mirrorctl) can tell
/// which shape it reads.
pub const COMPILED_POLICY_FORMAT: &str = "mirror.os/v1/compiled-policy";
/// The schema tag of the per-agent document (`MIRROR_POLICY_FILE`).
pub const AGENT_POLICY_FORMAT: &str = "mirror.os/v1/agent-policy";

/// Per-day limits with nothing left implicit: `None` means "no limit on this dimension" and is
/// written as `null`, so the compiled document says so instead of omitting the field.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveBudget {
    pub tokens_per_day: Option<u64>,
    pub spend_per_day_usd: Option<f64>,
}

impl EffectiveBudget {
    /// From a spec budget (absent: unlimited). `-0.0` becomes `0.0`, so both hash alike.
    pub fn from_spec(budget: Option<&Budget>) -> Self {
        let budget = budget.cloned().unwrap_or_default();
        EffectiveBudget {
            tokens_per_day: budget.tokens_per_day,
            spend_per_day_usd: budget.spend_per_day_usd.map(|usd| usd + 0.0),
        }
    }

    /// Per dimension, the smaller limit; a limit beats no limit.
    pub fn tighter(&self, other: &EffectiveBudget) -> EffectiveBudget {
        fn min_of<T: PartialOrd + Copy>(a: Option<T>, b: Option<T>) -> Option<T> {
            match (a, b) {
                (Some(a), Some(b)) => Some(if b < a { b } else { a }),
                (a, None) => a,
                (None, b) => b,
            }
        }
        EffectiveBudget {
            tokens_per_day: min_of(self.tokens_per_day, other.tokens_per_day),
            spend_per_day_usd: min_of(self.spend_per_day_usd, other.spend_per_day_usd),
        }
    }

    pub fn is_unlimited(&self) -> bool {
        self.tokens_per_day.is_none() && self.spend_per_day_usd.is_none()
    }
}

/// A policy with every default made explicit: what the gate, the bus and the agent act on.
///
/// Thresholds are plain risks: "nothing is denied" is `denyAbove: critical` (no risk is above
/// critical), so an absent `denyAbove` and `denyAbove: critical` mean the same and hash the same.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EffectivePolicy {
    pub cloud_escalation: CloudEscalation,
    /// Sorted by name, one entry per name.
    pub tools: Vec<Tool>,
    pub approval_required_above: Risk,
    pub deny_above: Risk,
    pub budget: EffectiveBudget,
    pub on_budget_exceeded: OverBudget,
    pub warn_at_percent: u8,
    /// TCP ports beyond the bus, sorted and unique (absent from the document when none, so a
    /// policy without them hashes as it did before they existed).
    #[serde(default, skip_serializing_if = "EffectiveNetwork::is_empty")]
    pub network: EffectiveNetwork,
    /// Paths hidden from the agent besides the default list, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hide_paths: Vec<std::path::PathBuf>,
}

/// The TCP ports an agent may connect to and bind, besides the bus.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EffectiveNetwork {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connect: Vec<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bind: Vec<u16>,
}

impl EffectiveNetwork {
    pub fn is_empty(&self) -> bool {
        self.connect.is_empty() && self.bind.is_empty()
    }

    fn from_spec(spec: &crate::spec::policy::NetworkRules) -> Self {
        // Validation refuses ports outside 1-65535; one that got here anyway is dropped.
        let ports = |list: &[u32]| -> Vec<u16> {
            let set: std::collections::BTreeSet<u16> = list
                .iter()
                .filter_map(|p| u16::try_from(*p).ok())
                .filter(|p| *p > 0)
                .collect();
            set.into_iter().collect()
        };
        EffectiveNetwork {
            connect: ports(&spec.connect),
            bind: ports(&spec.bind),
        }
    }
}

impl EffectivePolicy {
    /// The normalized form of a spec. Duplicate tool names (which validation rejects) cannot
    /// survive: the riskiest entry wins, so a slip never makes a tool less guarded.
    pub fn from_spec(spec: &PolicySpec) -> Self {
        let mut tools = spec.tools.clone();
        // Name ascending, then risk descending, so `dedup_by` keeps the riskiest of a name.
        tools.sort_by(|a, b| a.name.cmp(&b.name).then(b.risk.cmp(&a.risk)));
        tools.dedup_by(|later, kept| later.name == kept.name);
        EffectivePolicy {
            cloud_escalation: spec.cloud_escalation,
            tools,
            approval_required_above: spec.approval_required_above(),
            deny_above: spec.deny_above.unwrap_or(Risk::Critical),
            budget: EffectiveBudget::from_spec(spec.budget.as_ref()),
            on_budget_exceeded: spec.on_budget_exceeded,
            warn_at_percent: spec.warn_at_percent(),
            network: EffectiveNetwork::from_spec(&spec.network()),
            hide_paths: {
                let mut paths = spec.hide_paths.clone();
                paths.sort();
                paths.dedup();
                paths
            },
        }
    }

    pub fn allows_cloud(&self) -> bool {
        self.cloud_escalation == CloudEscalation::Allow
    }

    /// The risk tier of a listed tool; `None` for a tool the policy does not list.
    pub fn tool_risk(&self, tool: &str) -> Option<Risk> {
        self.tools
            .binary_search_by(|t| t.name.as_str().cmp(tool))
            .ok()
            .map(|i| self.tools[i].risk)
    }

    /// Whether the bus may route this agent to a provider: local ones always, non-local ones only
    /// when the policy allows cloud escalation and the budget has not switched it to local-only.
    pub fn may_route_to(&self, provider_is_local: bool, admission: &Admission) -> bool {
        provider_is_local || (self.allows_cloud() && *admission == Admission::Serve)
    }
}

/// A policy compiled from its spec: the effective rules, their content hash, and two renderings
/// of one document (JSON for files and the store, YAML for review diffs).
#[derive(Clone, Debug, PartialEq)]
pub struct CompiledPolicy {
    pub name: String,
    pub rules: EffectivePolicy,
    /// SHA-256 hex of the canonical JSON of `rules` (see `canonical_json`). The name is not
    /// covered: the hash says what the rules are, the name which versions it continues.
    pub hash: String,
    /// `{"format", "policy", "hash", "rules"}`.
    pub document: Value,
    /// `document` rendered as YAML (by `source::yaml::render`), what version diffs compare.
    pub yaml: String,
}

impl AsRef<EffectivePolicy> for CompiledPolicy {
    fn as_ref(&self) -> &EffectivePolicy {
        &self.rules
    }
}

/// Compiles a policy: normalize, hash, render.
pub fn compile(name: &str, spec: &PolicySpec) -> CompiledPolicy {
    let rules = EffectivePolicy::from_spec(spec);
    let rules_json = serde_json::to_value(&rules).expect("effective policies serialize");
    let hash = sha256_hex(&canonical_json(&rules_json));
    let document = serde_json::json!({
        "format": COMPILED_POLICY_FORMAT,
        "policy": name,
        "hash": hash,
        "rules": rules_json,
    });
    let yaml = crate::source::yaml::render(&canonicalize(&document));
    CompiledPolicy {
        name: name.to_string(),
        rules,
        hash,
        document,
        yaml,
    }
}

/// Which version of which policy an agent holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRef {
    pub name: String,
    pub version: u64,
    pub hash: String,
}

/// What one agent is held to: its policy's rules with the budget narrowed by the agent's own
/// (the tighter wins per dimension). Written to the agent's `MIRROR_POLICY_FILE` and read by the
/// bus for routing, the gate and metering.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentPolicy {
    pub agent: String,
    pub policy: PolicyRef,
    /// The policy's rules with `budget` replaced by the tighter of agent and policy budgets.
    pub rules: EffectivePolicy,
    /// SHA-256 hex of the canonical JSON of `document`: when it changes, the agent's file is
    /// rewritten and the agent told (SIGHUP or restart), whether the policy or the agent changed.
    pub hash: String,
    /// `{"format", "agent", "policy": {name, version, hash}, "rules"}`: the file's content.
    pub document: Value,
}

impl AsRef<EffectivePolicy> for AgentPolicy {
    fn as_ref(&self) -> &EffectivePolicy {
        &self.rules
    }
}

impl AgentPolicy {
    /// The file content: canonical (sorted keys), pretty, newline-terminated.
    pub fn file_text(&self) -> String {
        let mut text = serde_json::to_string_pretty(&canonicalize(&self.document)).expect("JSON values serialize");
        text.push('\n');
        text
    }
}

/// The effective policy of one agent bound to `policy` at `version` (the caller's current
/// version number of that policy: `StoredVersion::version`).
pub fn effective_for_agent(policy: &CompiledPolicy, version: u64, agent_name: &str, agent: &AgentSpec) -> AgentPolicy {
    let mut rules = policy.rules.clone();
    rules.budget = rules.budget.tighter(&EffectiveBudget::from_spec(agent.budget.as_ref()));
    let policy_ref = PolicyRef {
        name: policy.name.clone(),
        version,
        hash: policy.hash.clone(),
    };
    let document = serde_json::json!({
        "format": AGENT_POLICY_FORMAT,
        "agent": agent_name,
        "policy": policy_ref,
        "rules": rules,
    });
    let hash = sha256_hex(&canonical_json(&document));
    AgentPolicy {
        agent: agent_name.to_string(),
        policy: policy_ref,
        rules,
        hash,
        document,
    }
}

/// What the caller keeps of the current version of a policy (in its local inventory).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredVersion {
    pub name: String,
    pub version: u64,
    pub hash: String,
    /// `CompiledPolicy::yaml` of that version, the left side of the next diff.
    pub yaml: String,
}

/// A policy version to record: number, hash, YAML and the diff from the version before.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewVersion {
    pub name: String,
    pub version: u64,
    pub previous_version: Option<u64>,
    pub hash: String,
    pub yaml: String,
    /// Unified diff from the previous version's YAML (all lines added for version 1).
    pub diff: String,
}

impl NewVersion {
    /// What to keep in the inventory once this version is recorded.
    pub fn stored(&self) -> StoredVersion {
        StoredVersion {
            name: self.name.clone(),
            version: self.version,
            hash: self.hash.clone(),
            yaml: self.yaml.clone(),
        }
    }
}

/// The next version of a policy, or `None` when its content hash is unchanged. `previous` is the
/// stored current version of the same policy (by name), if any.
pub fn next_version(previous: Option<&StoredVersion>, compiled: &CompiledPolicy) -> Option<NewVersion> {
    if previous.is_some_and(|p| p.hash == compiled.hash) {
        return None;
    }
    let id = ResourceId::new(Kind::Policy, compiled.name.as_str());
    let version = previous.map_or(1, |p| p.version + 1);
    let (old_header, old_text) = match previous {
        Some(p) => (format!("{id} (version {})", p.version), p.yaml.as_str()),
        None => (format!("{id} (no version)"), ""),
    };
    let diff = similar::TextDiff::from_lines(old_text, compiled.yaml.as_str())
        .unified_diff()
        .context_radius(3)
        .header(&old_header, &format!("{id} (version {version})"))
        .to_string();
    Some(NewVersion {
        name: compiled.name.clone(),
        version,
        previous_version: previous.map(|p| p.version),
        hash: compiled.hash.clone(),
        yaml: compiled.yaml.clone(),
        diff,
    })
}

/// A copy of `value` with every object's keys in sorted order, whatever serde_json's map type
/// (a `preserve_order` feature turned on by any crate in the build would keep insertion order).
pub fn canonicalize(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k.clone(), canonicalize(v))).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(canonicalize).collect()),
        other => other.clone(),
    }
}

/// Canonical JSON bytes: keys sorted at every level, no whitespace, numbers as serde_json prints
/// them (shortest round-trip form; `1` and `1.0` differ, as their JSON types do).
pub fn canonical_json(value: &Value) -> Vec<u8> {
    serde_json::to_vec(&canonicalize(value)).expect("JSON values serialize")
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests;
