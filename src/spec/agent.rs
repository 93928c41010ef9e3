//! `Agent`: an AI agent process, supervised like a Service, plus governance: a policy binding,
//! a model route, a scoped memory view, a sandbox and a budget.

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Backoff, Budget, Duration, Limits, Logs, Placement, Probe, RestartPolicy, Stop};

/// A provider and a model on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelRef {
    /// Name of a ModelProvider.
    pub provider: String,
    pub model: String,
}

/// The agent's route: the primary unless it is unhealthy, else the first healthy fallback.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelRoute {
    pub primary: ModelRef,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<ModelRef>,
    /// How long the primary must be healthy before the agent fails back to it. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failback_after: Option<Duration>,
}

impl ModelRoute {
    pub fn failback_after(&self) -> Duration {
        self.failback_after.unwrap_or(Duration::from_secs(30))
    }
    /// Primary first, then the fallbacks in order.
    pub fn chain(&self) -> impl Iterator<Item = &ModelRef> {
        std::iter::once(&self.primary).chain(self.fallbacks.iter())
    }
}

/// The agent's scoped view of memory: namespaces it may read and write.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MemoryScope {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub write: Vec<String>,
}

/// The agent's own directory and the other paths it may touch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sandbox {
    /// Default: `sandboxes/<name>` in the state dir. Never the state dir itself or above it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// Paths it may read even where they are hidden (a credential store, say). They must exist
    /// and lie outside the state dir (relative ones are taken in it, so: absolute paths).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_paths: Vec<PathBuf>,
    /// Paths it may write besides its sandbox; outside the state dir (absolute paths).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub write_paths: Vec<PathBuf>,
}

/// How a running agent learns that its policy changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PolicyReload {
    /// Rewrite the policy file and send SIGHUP.
    #[default]
    Signal,
    /// Restart the agent.
    Restart,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentSpec {
    /// The program and its arguments (argv; no shell). It runs in its sandbox.
    pub command: Vec<String>,
    /// Name of the Policy bound to this agent. Required: an agent without one never starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelRoute>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryScope>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<Sandbox>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// Default `signal`.
    #[serde(default)]
    pub on_policy_change: PolicyReload,
    /// Environment variables. Values of keys that look secret are redacted in all output.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Files of `KEY=value` lines read at start; their values are never stored or printed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_files: Vec<PathBuf>,
    /// Default `always`.
    #[serde(default)]
    pub restart: RestartPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
    /// Services (`name` or `Service/name`) or agents (`Agent/name`) that must be healthy first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<Logs>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// Suspended: left as it is (not started, not stopped, not restarted).
    #[serde(default)]
    pub suspend: bool,
}

impl AgentSpec {
    pub fn memory(&self) -> MemoryScope {
        self.memory.clone().unwrap_or_default()
    }
    pub fn sandbox(&self) -> Sandbox {
        self.sandbox.clone().unwrap_or_default()
    }
    pub fn backoff(&self) -> Backoff {
        self.backoff.clone().unwrap_or_default()
    }
    pub fn stop(&self) -> Stop {
        self.stop.clone().unwrap_or_default()
    }
}
