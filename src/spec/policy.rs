//! `Policy`: MirrorGate rules bound to agents: cloud escalation, tool risk tiers, budgets.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::Budget;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CloudEscalation {
    /// Local-first: agents are never routed to a non-local provider.
    #[default]
    Deny,
    Allow,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Risk {
    Low,
    Medium,
    High,
    Critical,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OverBudget {
    /// Stop serving the agent (the bus answers 429) until the next day.
    #[default]
    Suspend,
    /// Keep serving, but only from local providers.
    LocalOnly,
    /// Keep serving and report.
    Alert,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tool {
    /// Tool name, e.g. `fs.read`.
    pub name: String,
    pub risk: Risk,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySpec {
    /// Default `deny`.
    #[serde(default)]
    pub cloud_escalation: CloudEscalation,
    /// Tools agents may ask for; a tool not listed is denied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<Tool>,
    /// Tools above this risk need a human's approval. Default `medium`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_required_above: Option<Risk>,
    /// Tools above this risk are denied outright. Default: none are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny_above: Option<Risk>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// Default `suspend`.
    #[serde(default)]
    pub on_budget_exceeded: OverBudget,
    /// Percentage of a budget at which a warning is reported. Default 80.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warn_at_percent: Option<u8>,
    /// TCP ports agents bound to this policy may connect to and listen on. The bus is always
    /// reachable; everything else is refused (Landlock ABI 4 and later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkRules>,
    /// Paths hidden from agents bound to this policy, besides the default list (the state
    /// dir, other agents' sandboxes, the user's credential stores). `~/` is the daemon's home.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hide_paths: Vec<std::path::PathBuf>,
}

/// TCP ports an agent may use besides the bus. Landlock filters by port, not by address.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkRules {
    /// Ports it may connect to (1-65535).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connect: Vec<u32>,
    /// Ports it may bind and listen on (1-65535).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bind: Vec<u32>,
}

impl PolicySpec {
    pub fn allows_cloud(&self) -> bool {
        self.cloud_escalation == CloudEscalation::Allow
    }
    pub fn approval_required_above(&self) -> Risk {
        self.approval_required_above.unwrap_or(Risk::Medium)
    }
    pub fn warn_at_percent(&self) -> u8 {
        self.warn_at_percent.unwrap_or(80)
    }
    pub fn network(&self) -> NetworkRules {
        self.network.clone().unwrap_or_default()
    }
}
