//! `LaunchAgent`: a scheduled or on-demand job, in the launchd sense.

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Duration, Limits, Logs, Placement, Schedule, Stop};

/// What to do when a run is due while the previous one is still going (Kubernetes CronJob).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Concurrency {
    /// Skip the new run.
    #[default]
    Forbid,
    /// Start the new run beside the old one.
    Allow,
    /// Stop the old run, then start the new one.
    Replace,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LaunchAgentSpec {
    /// Reverse-DNS label, as launchd names jobs, e.g. `ai.activemirror.cloudflared`.
    pub label: String,
    /// The program and its arguments (argv; no shell).
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_files: Vec<PathBuf>,
    /// `{every: 5m}` or `{cron: "*/5 * * * *"}`. Without one the job runs only at load or on demand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    /// Run once when loaded (launchd `RunAtLoad`). Default false.
    #[serde(default)]
    pub run_at_load: bool,
    /// A run longer than this is killed (its whole process group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Default `forbid`.
    #[serde(default)]
    pub concurrency: Concurrency,
    /// Run once at start when a scheduled run was missed while the daemon was down. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<Logs>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    #[serde(default)]
    pub suspend: bool,
}

impl LaunchAgentSpec {
    pub fn catch_up(&self) -> bool {
        self.catch_up.unwrap_or(true)
    }
    pub fn stop(&self) -> Stop {
        self.stop.clone().unwrap_or_default()
    }
}

/// Whether a launchd label is reverse-DNS: two or more dot-separated parts of letters, digits, `-`.
pub fn is_reverse_dns_label(label: &str) -> bool {
    let parts: Vec<&str> = label.split('.').collect();
    parts.len() >= 2
        && label.len() <= 255
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
}
