//! `Controller`: settings of mirrorctl itself on this host (at most one).

use std::net::SocketAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{CronExpr, Duration, Schedule};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DriftReports {
    /// When the daemon writes an observe-only drift report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<CronExpr>,
    /// Reports older than this are deleted. Default 30d.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Duration>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PruneGuard {
    /// A pass that would prune more than this fraction of owned resources is refused. Default 0.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_fraction: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Bus {
    /// Where the model bus listens. Default `127.0.0.1:11500`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<SocketAddr>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MemorySettings {
    /// Ordered tiers, lowest first. Default `[working, long-term, core]`; `archived` is implied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<String>,
    /// When memory rules run in the daemon. Default every 1h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControllerSpec {
    /// Full resync interval of the daemon. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resync: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift_reports: Option<DriftReports>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune_guard: Option<PruneGuard>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<Bus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemorySettings>,
}

pub const DEFAULT_TIERS: [&str; 3] = ["working", "long-term", "core"];

impl ControllerSpec {
    pub fn resync(&self) -> Duration {
        self.resync.unwrap_or(Duration::from_secs(30))
    }
    pub fn drift_report_cron(&self) -> Option<&CronExpr> {
        self.drift_reports.as_ref().and_then(|d| d.cron.as_ref())
    }
    pub fn report_retention(&self) -> Duration {
        self.drift_reports
            .as_ref()
            .and_then(|d| d.retention)
            .unwrap_or(Duration::from_secs(30 * 24 * 3600))
    }
    pub fn prune_max_fraction(&self) -> f64 {
        self.prune_guard.as_ref().and_then(|p| p.max_fraction).unwrap_or(0.5)
    }
    pub fn bus_address(&self) -> SocketAddr {
        self.bus
            .as_ref()
            .and_then(|b| b.address)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 11500)))
    }
    /// When the daemon runs memory rules. Default every 1h.
    pub fn memory_schedule(&self) -> Schedule {
        self.memory
            .as_ref()
            .and_then(|m| m.schedule.clone())
            .unwrap_or(Schedule::Every(Duration::from_secs(3600)))
    }
    /// Ordered tiers, lowest first (without `archived`).
    pub fn memory_tiers(&self) -> Vec<String> {
        match self.memory.as_ref().map(|m| &m.tiers) {
            Some(tiers) if !tiers.is_empty() => tiers.clone(),
            _ => DEFAULT_TIERS.iter().map(|t| t.to_string()).collect(),
        }
    }
}
