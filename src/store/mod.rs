//! The truth store: runs, receipts, drift reports, inventory, status, routes, enrollments,
//! policy versions, memory and usage. SQLite by default, PostgreSQL for a fleet. This is the
//! only module that uses sqlx.
//!
//! Writes go through the `Recorder` (a journal in the state dir, then the database), so nothing
//! waits on the database and nothing is lost while it is away. Reads go to the `Store` directly.
//! One exception: memory items (`memory`) are written directly, because an agent adding one
//! needs its id back (and whether it merged into an existing item) in the same request.

pub mod chain;
pub mod inventory;
pub mod journal;
pub mod memory;
pub mod memory_rules;
mod migrations;
mod postgres;
pub mod recorder;
mod sql;
mod sqlite;
mod sqlite_receipts;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use serde::{Deserialize, Serialize};

pub use crate::report::{DriftItem, DriftReport, ReportFilter, ReportSummary};
pub use chain::{verify_chain, ChainBreak, Receipt, ReceiptDraft};
pub use memory::{MemoryAdded, MemoryFilter, MemoryItem, MemoryQuery, MemoryTransition, NewMemory};
pub use recorder::Recorder;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Where the truth store is: `sqlite://FILE` or `postgres://...`. Displays with the password
/// redacted, so it can be printed anywhere.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrl {
    raw: String,
    backend: Backend,
}

impl StoreUrl {
    pub fn parse(raw: &str) -> Result<StoreUrl, StoreError> {
        let backend = if raw.starts_with("sqlite:") {
            Backend::Sqlite
        } else if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(StoreError::BadUrl {
                url: redact(raw),
                expected: "sqlite://FILE or postgres://...",
            });
        };
        Ok(StoreUrl {
            raw: raw.to_string(),
            backend,
        })
    }

    /// The default: `sqlite://<state dir>/truth.db`.
    pub fn default_in(state_dir: &Path) -> StoreUrl {
        StoreUrl {
            raw: format!("sqlite://{}", crate::state::Layout::of(state_dir).truth_db().display()),
            backend: Backend::Sqlite,
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The URL with its password; only for connecting, never for printing.
    pub(crate) fn secret(&self) -> &str {
        &self.raw
    }

    /// For SQLite: the database file.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        let rest = self
            .raw
            .strip_prefix("sqlite://")
            .or_else(|| self.raw.strip_prefix("sqlite:"))?;
        let path = rest.split('?').next().unwrap_or(rest);
        Some(PathBuf::from(path))
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.raw))
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreUrl({})", redact(&self.raw))
    }
}

/// Replaces the password of a URL (`user:password@`) and any `password=` parameter by `***`.
pub fn redact(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme_end) = out.find("://") {
        let authority_start = scheme_end + 3;
        let authority_end = out[authority_start..]
            .find(['/', '?'])
            .map_or(out.len(), |i| authority_start + i);
        if let Some(at) = out[authority_start..authority_end].rfind('@') {
            let userinfo = &out[authority_start..authority_start + at];
            if let Some(colon) = userinfo.find(':') {
                out.replace_range(authority_start + colon + 1..authority_start + at, "***");
            }
        }
    }
    if let Some(start) = out.find("password=") {
        let value_start = start + "password=".len();
        let value_end = out[value_start..].find('&').map_or(out.len(), |i| value_start + i);
        out.replace_range(value_start..value_end, "***");
    }
    out
}

/// Why the store failed. Messages never carry a password.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store URL `{url}` is not supported: expected {expected}")]
    BadUrl { url: String, expected: &'static str },
    #[error("cannot open the truth store {url}: {message}")]
    Connect { url: String, message: String },
    #[error("the truth store {url} was written by a newer mirrorctl (schema version {found}; this mirrorctl knows up to {known}): upgrade mirrorctl; the database was not changed")]
    NewerSchema { url: String, found: i64, known: i64 },
    #[error("cannot migrate the truth store {url}: {message}")]
    Migrate { url: String, message: String },
    #[error("truth store query failed ({operation}): {message}")]
    Query { operation: &'static str, message: String },
    #[error("{path}: {message}")]
    Local { path: PathBuf, message: String },
    /// The caller asked for something the store does not accept (an empty namespace, ...).
    #[error("{0}")]
    Invalid(String),
}

impl StoreError {
    pub(crate) fn query(operation: &'static str, error: impl fmt::Display) -> Self {
        StoreError::Query {
            operation,
            message: redact(&error.to_string()),
        }
    }

    pub(crate) fn local(path: &Path, error: impl fmt::Display) -> Self {
        StoreError::Local {
            path: path.to_path_buf(),
            message: error.to_string(),
        }
    }
}

/// One reconcile (or report) pass.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunStarted {
    pub id: String,
    pub host: String,
    pub commit: Option<String>,
    /// What triggered it: `cli`, `commit`, `resync`, `schedule`, `child-exit`, ...
    pub trigger: String,
    pub started_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunFinished {
    pub id: String,
    pub ended_ms: i64,
    /// `converged`, `changes-pending`, `failed`, ...
    pub outcome: String,
    pub summary: String,
}

/// One host of a fleet sharing the truth store, as the store last heard of it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FleetHost {
    pub host: String,
    /// The commit of its last pass.
    pub commit: Option<String>,
    pub last_pass_ms: Option<i64>,
    /// converged, changes-pending, failed, invalid-source, ...
    pub outcome: Option<String>,
    /// What it owns.
    pub resources: Vec<InventoryEntry>,
    /// Its latest drift report.
    pub drift: Option<DriftReport>,
}

/// An owned object: what this controller started, and how to find it again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InventoryEntry {
    pub host: String,
    pub kind: String,
    pub name: String,
    pub spec_hash: String,
    /// The last applied spec as JSON, secrets redacted.
    pub last_applied: String,
    /// Process identity (pid, start time, boot id) as JSON, if it runs a process.
    pub process: Option<String>,
    pub updated_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusChange {
    pub id: String,
    pub host: String,
    pub kind: String,
    pub name: String,
    pub sync: String,
    pub health: String,
    pub detail: String,
    pub at_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouteChange {
    pub id: String,
    pub host: String,
    pub agent: String,
    pub provider: String,
    pub model: String,
    pub at_ms: i64,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Enrollment {
    pub host: String,
    pub agent: String,
    pub token_hash: String,
    pub policy: String,
    pub policy_hash: String,
    pub sandbox: String,
    pub enrolled_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyVersion {
    pub name: String,
    pub hash: String,
    pub version: i64,
    pub compiled: String,
    pub diff: String,
    pub created_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub id: String,
    pub host: String,
    pub agent: String,
    pub provider: String,
    pub model: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_usd: f64,
    pub at_ms: i64,
}

/// One run of a LaunchAgent (also a run that was due but skipped, or could not start).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRun {
    pub id: String,
    pub host: String,
    /// The LaunchAgent's `metadata.name`.
    pub name: String,
    /// Its launchd label (`spec.label`).
    pub label: String,
    /// The commit whose spec the run used.
    pub commit: Option<String>,
    /// Why it ran: `schedule`, `at-load` or `catch-up`.
    pub trigger: String,
    pub started_ms: i64,
    /// Equal to `started_ms` for runs that never started (skipped, start-failed).
    pub ended_ms: i64,
    pub exit_code: Option<i32>,
    /// The signal that ended the process, if one did.
    pub signal: Option<i32>,
    /// `ok`, `failed`, `timeout`, `skipped`, `start-failed`, `stopped` (replaced, pruned,
    /// suspended or shut down) or `unknown` (adopted from an earlier daemon: no exit status).
    pub outcome: String,
    /// Why, in words: the start error, what the skip waited on, what stopped it.
    pub detail: String,
    /// The last lines (at most 20, at most 4 KiB) the run wrote to its log.
    pub output_tail: String,
}

/// Everything the controller writes, as one closed set: what the journal holds and replays.
/// Each record is idempotent (a client-made id, or an upsert), so a replay writes it once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    RunStarted(RunStarted),
    RunFinished(RunFinished),
    Receipt(Receipt),
    DriftReport(DriftReport),
    /// A pass found what report `id` says: counted there (`repeats` is the new count, so a
    /// replay writes the same), not stored again.
    DriftRepeated {
        id: String,
        repeats: u64,
        seen_ms: i64,
    },
    Inventory(InventoryEntry),
    InventoryRemoved {
        host: String,
        kind: String,
        name: String,
    },
    Status(StatusChange),
    Route(RouteChange),
    Enrollment(Enrollment),
    EnrollmentRevoked {
        host: String,
        agent: String,
        revoked_ms: i64,
    },
    PolicyVersion(PolicyVersion),
    Usage(Usage),
    JobRun(JobRun),
}

/// The store's read and write operations; SQLite and PostgreSQL implement it.
pub trait Store: Send + Sync {
    fn backend(&self) -> Backend;
    fn url(&self) -> &StoreUrl;
    /// Writes records in order, in one transaction; already-written records are skipped.
    fn write<'a>(&'a self, records: &'a [Record]) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Newest first, those the filter keeps.
    fn drift_reports<'a>(&'a self, filter: &'a ReportFilter) -> BoxFuture<'a, Result<Vec<ReportSummary>, StoreError>>;
    fn drift_report<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<DriftReport>, StoreError>>;
    /// Ids of drift reports starting with `prefix` (at most `limit`), for `drift show PREFIX`.
    fn drift_report_ids<'a>(&'a self, prefix: &'a str, limit: u32) -> BoxFuture<'a, Result<Vec<String>, StoreError>>;
    /// Deletes drift reports last seen before `before_ms`; receipts are kept. Returns how many.
    fn delete_drift_reports_before(&self, before_ms: i64) -> BoxFuture<'_, Result<u64, StoreError>>;
    /// Every receipt, by host then sequence.
    fn receipts(&self) -> BoxFuture<'_, Result<Vec<Receipt>, StoreError>>;
    /// The newest `limit` receipts of one resource on one host, newest first.
    fn resource_receipts<'a>(
        &'a self,
        host: &'a str,
        kind: &'a str,
        name: &'a str,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<Receipt>, StoreError>>;
    fn inventory<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<InventoryEntry>, StoreError>>;
    /// Every host that has written to this store: its last pass, what it owns, its latest drift
    /// report (`status --fleet`).
    fn fleet(&self) -> BoxFuture<'_, Result<Vec<FleetHost>, StoreError>>;
    /// Runs of one LaunchAgent on one host, newest first.
    fn job_runs<'a>(
        &'a self,
        host: &'a str,
        name: &'a str,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<JobRun>, StoreError>>;
    /// Rows per table (for status and for tests that count).
    fn counts(&self) -> BoxFuture<'_, Result<BTreeMap<String, i64>, StoreError>>;
    /// Schema version (the newest migration applied).
    fn schema_version(&self) -> BoxFuture<'_, Result<i64, StoreError>>;

    // Memory items: written directly, not through the recorder (see `memory`), because an
    // agent needs its item's id back. Nothing is hard-deleted.

    /// Adds an item (content trimmed, hashed with SHA-256), or merges it into the item with the
    /// same content in the same namespace: that item's id, tags unioned, uses + 1, last used
    /// now, the higher confidence.
    fn memory_add<'a>(&'a self, item: &'a NewMemory) -> BoxFuture<'a, Result<MemoryAdded, StoreError>>;
    /// One item with its tags.
    fn memory_get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<MemoryItem>, StoreError>>;
    /// Items by namespace patterns, tier and tag, newest first.
    fn memory_list<'a>(&'a self, filter: &'a MemoryFilter) -> BoxFuture<'a, Result<Vec<MemoryItem>, StoreError>>;
    /// Items in the given namespace patterns whose content contains the text (case-insensitive),
    /// most recently used first.
    fn memory_search<'a>(&'a self, query: &'a MemoryQuery) -> BoxFuture<'a, Result<Vec<MemoryItem>, StoreError>>;
    /// Marks an item used: uses + 1, last used `at_ms`. The item after it, or None if unknown.
    fn memory_touch<'a>(&'a self, id: &'a str, at_ms: i64) -> BoxFuture<'a, Result<Option<MemoryItem>, StoreError>>;
    /// Marks an item verified, optionally setting its confidence. The item after it, or None.
    fn memory_verify<'a>(
        &'a self,
        id: &'a str,
        confidence: Option<f64>,
    ) -> BoxFuture<'a, Result<Option<MemoryItem>, StoreError>>;
    /// Moves an item to `transition.to_tier` if it is in `transition.from_tier`, and records the
    /// transition; idempotent by the transition's id. Returns whether it moved.
    fn memory_move<'a>(&'a self, transition: &'a MemoryTransition) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// The tier transitions of an item, oldest first.
    fn memory_history<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Vec<MemoryTransition>, StoreError>>;
    /// How many items each rule (in [`memory_rules::ordered`] order) would move at `now_ms`,
    /// with the first `sample` items of each; changes nothing.
    fn memory_rules_preview<'a>(
        &'a self,
        rules: &'a [memory_rules::PassRule],
        now_ms: i64,
        sample: u32,
    ) -> BoxFuture<'a, Result<Vec<memory_rules::RuleMoves>, StoreError>>;
    /// Applies the rules (in [`memory_rules::ordered`] order) in one transaction: each item moves
    /// at most once, with a transition record (`run_id`); on PostgreSQL under a fleet-wide lock.
    fn memory_rules_apply<'a>(
        &'a self,
        rules: &'a [memory_rules::PassRule],
        now_ms: i64,
        run_id: &'a str,
        sample: u32,
    ) -> BoxFuture<'a, Result<memory_rules::MemoryPass, StoreError>>;
}

/// Opens the store, creating and migrating it as needed; refuses a newer schema.
pub async fn open(url: &StoreUrl) -> Result<Box<dyn Store>, StoreError> {
    let store = match url.backend() {
        Backend::Sqlite => sqlite::open(url).await?,
        Backend::Postgres => postgres::open(url).await?,
    };
    Ok(Box::new(store))
}

/// The newest schema version this binary knows, per backend.
pub fn known_schema_version(backend: Backend) -> i64 {
    match backend {
        Backend::Sqlite => sqlite::MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0),
        Backend::Postgres => postgres::MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0),
    }
}

/// A new time-ordered id (UUID v7).
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://mirror:s3cret@db.lan:5432/truth"),
            "postgres://mirror:***@db.lan:5432/truth"
        );
        assert_eq!(
            redact("postgres://mirror@db.lan/truth"),
            "postgres://mirror@db.lan/truth"
        );
        assert_eq!(
            redact("postgres://db.lan/truth?user=m&password=s3cret&sslmode=require"),
            "postgres://db.lan/truth?user=m&password=***&sslmode=require"
        );
        let url = StoreUrl::parse("postgresql://a:b@h/d").unwrap();
        assert_eq!(url.to_string(), "postgresql://a:***@h/d");
        assert!(!format!("{url:?}").contains(":b@"));
        let error = StoreUrl::parse("mysql://root:hunter2@h/d").unwrap_err().to_string();
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[test]
    fn sqlite_urls_name_their_file() {
        let url = StoreUrl::parse("sqlite:///var/lib/m/truth.db?mode=rwc").unwrap();
        assert_eq!(url.sqlite_path().unwrap(), PathBuf::from("/var/lib/m/truth.db"));
        assert_eq!(
            StoreUrl::default_in(Path::new("/s")).to_string(),
            "sqlite:///s/truth.db"
        );
    }
}
