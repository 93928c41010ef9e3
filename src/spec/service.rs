//! `Service`: a long-running process, supervised (systemd service, supervisord program).

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Backoff, Limits, Logs, Placement, Probe, RestartPolicy, Stop};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    /// The program and its arguments (argv; no shell).
    pub command: Vec<String>,
    /// Working directory; relative paths are relative to the state dir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<PathBuf>,
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

impl ServiceSpec {
    pub fn backoff(&self) -> Backoff {
        self.backoff.clone().unwrap_or_default()
    }
    pub fn stop(&self) -> Stop {
        self.stop.clone().unwrap_or_default()
    }
    pub fn logs(&self) -> Logs {
        self.logs.clone().unwrap_or_default()
    }
}
