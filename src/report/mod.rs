//! Drift reports: what differs between the desired state and the host, item by item, and
//! whether acting on it repairs drift (corrective) or rolls out a new commit (intentional).
//! The JSON shape is the contract of DESIGN.md §4.

pub mod markdown;

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Drift {
    Missing,
    Failed,
    Changed,
    Stale,
    Degraded,
    OverBudget,
    MemoryPending,
    UntrustedSource,
    InvalidSource,
}

impl Drift {
    pub fn as_str(self) -> &'static str {
        match self {
            Drift::Missing => "missing",
            Drift::Failed => "failed",
            Drift::Changed => "changed",
            Drift::Stale => "stale",
            Drift::Degraded => "degraded",
            Drift::OverBudget => "over_budget",
            Drift::MemoryPending => "memory_pending",
            Drift::UntrustedSource => "untrusted_source",
            Drift::InvalidSource => "invalid_source",
        }
    }

    pub fn parse(text: &str) -> Option<Drift> {
        serde_json::from_value(serde_json::Value::String(text.to_string())).ok()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Error,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(text: &str) -> Option<Severity> {
        serde_json::from_value(serde_json::Value::String(text.to_string())).ok()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DriftItem {
    pub kind: String,
    pub name: String,
    pub drift: Drift,
    /// True when acting repairs drift on the host; false when it rolls out a new desired state.
    pub corrective: bool,
    pub severity: Severity,
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DriftReport {
    pub id: String,
    pub host: String,
    pub commit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// RFC 3339, UTC.
    pub started_at: String,
    /// True for reports that only observed (dry-run, scheduled reports).
    #[serde(default)]
    pub observe_only: bool,
    pub items: Vec<DriftItem>,
    /// Later passes that found exactly these items and were counted here instead of stored.
    #[serde(default)]
    pub repeats: u64,
    /// When the last of them ran (RFC 3339); null when none did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_at: Option<String>,
}

/// One line of `drift list`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReportSummary {
    pub id: String,
    pub host: String,
    pub commit: Option<String>,
    pub started_at: String,
    pub observe_only: bool,
    pub items: u64,
    /// Identical passes counted on it since (see [`DriftReport::repeats`]).
    #[serde(default)]
    pub repeats: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_at: Option<String>,
}

/// Which stored reports `drift list` shows.
#[derive(Clone, Debug, Default)]
pub struct ReportFilter {
    pub limit: u32,
    /// Reports seen (started, or repeated) at or after this time.
    pub since_ms: Option<i64>,
    /// Reports with an item at least this severe.
    pub min_severity: Option<Severity>,
    /// Reports with an item of this kind (`Service`, `Agent`, `Source`, ...).
    pub kind: Option<String>,
    /// Reports with an item about this resource name.
    pub resource: Option<String>,
}

/// Milliseconds since the Unix epoch as RFC 3339 (UTC, milliseconds).
pub fn rfc3339(ms: i64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(time).to_string()
}

/// RFC 3339 back to milliseconds since the Unix epoch.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let time = humantime::parse_rfc3339_weak(text).ok()?;
    Some(time.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as i64)
}

/// How long from `then_ms` to `now_ms` for people, in whole seconds ("2m 3s"; "0s" for a time
/// in the future).
pub fn elapsed(then_ms: i64, now_ms: i64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(
        ((now_ms - then_ms).max(0) / 1000) as u64,
    ))
    .to_string()
}

/// The current time in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn short(commit: Option<&str>) -> &str {
    commit.map_or("-", |c| &c[..c.len().min(12)])
}

/// `drift show` as text: a header, then one line per item.
pub fn render_text(report: &DriftReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "drift report {} on {} at commit {}, {}{}",
        report.id,
        report.host,
        short(report.commit.as_deref()),
        report.started_at,
        if report.observe_only { " (observe-only)" } else { "" }
    );
    if report.repeats > 0 {
        let _ = writeln!(
            out,
            "seen the same by {} later pass(es), the last at {} (counted here, not stored again)",
            report.repeats,
            report.last_seen_at.as_deref().unwrap_or("-")
        );
    }
    if report.items.is_empty() {
        let _ = writeln!(out, "no drift");
    }
    for item in &report.items {
        let _ = writeln!(
            out,
            "  {:<8} {:<16} {}/{}: {} [{}]",
            item.severity.as_str(),
            item.drift.as_str(),
            item.kind,
            item.name,
            item.detail,
            if item.corrective { "corrective" } else { "intentional" }
        );
    }
    out
}

/// `drift list` as text.
pub fn render_list(reports: &[ReportSummary]) -> String {
    let mut out = String::new();
    if reports.is_empty() {
        out.push_str("no drift reports\n");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<36}  {:<24}  {:<16}  {:<12}  {:>5}  {:>7}  LAST SEEN",
        "ID", "STARTED", "HOST", "COMMIT", "ITEMS", "REPEATS"
    );
    for r in reports {
        let _ = writeln!(
            out,
            "{:<36}  {:<24}  {:<16}  {:<12}  {:>5}  {:>7}  {}{}",
            r.id,
            r.started_at,
            r.host,
            short(r.commit.as_deref()),
            r.items,
            r.repeats,
            r.last_seen_at.as_deref().unwrap_or("-"),
            if r.observe_only { "  observe-only" } else { "" }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_values_serialize_as_the_contract_says() {
        assert_eq!(serde_json::to_value(Drift::OverBudget).unwrap(), "over_budget");
        assert_eq!(Drift::parse("untrusted_source"), Some(Drift::UntrustedSource));
        assert_eq!(Drift::parse("nope"), None);
        assert_eq!(Severity::parse("warning"), Some(Severity::Warning));
    }

    #[test]
    fn timestamps_round_trip() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(parse_rfc3339(&rfc3339(1_700_000_000_123)), Some(1_700_000_000_123));
    }
}
