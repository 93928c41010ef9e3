//! The SQL both backends share. Statements are written once, in the dialect SQLite and
//! PostgreSQL have in common (`$N` parameters, `ON CONFLICT`), and run through sqlx's `Any`
//! driver; `sqlite.rs` and `postgres.rs` open the pool and migrate it.
//!
//! This file is the `Store` implementation: each operation is in the module of its part.
//! `write` (the records the recorder writes), `read` (drift reports, receipts, inventory and job
//! runs for list, show and status), `memory` (memory items), `memory_pass` (memory rules run as
//! one statement) and `schema` (migrations, schema version, row counts).

mod memory;
mod memory_pass;
mod read;
mod schema;
mod write;

use std::collections::BTreeMap;

use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};

use super::memory_rules::{MemoryPass, PassRule, RuleMoves};
use super::{
    Backend, BoxFuture, DriftReport, FleetHost, InventoryEntry, JobRun, MemoryAdded, MemoryFilter, MemoryItem,
    MemoryQuery, MemoryTransition, NewMemory, Receipt, Record, ReportFilter, ReportSummary, Store, StoreError,
    StoreUrl,
};

pub use schema::migrate;

pub struct SqlStore {
    pub(in crate::store) pool: AnyPool,
    pub(in crate::store) url: StoreUrl,
    pub(in crate::store) backend: Backend,
    /// SQLite only: a native read pool for bulk reads (the Any driver copies every value once
    /// more and hands rows over one by one: 100,000 receipts take ~0.7 s through it, ~0.2 s here).
    pub(in crate::store) sqlite_reader: Option<sqlx::SqlitePool>,
}

/// A value bound to a statement built at run time.
enum Arg {
    Text(String),
    Int(i64),
}

/// Binds `args` in order to a statement built at run time.
fn bind_args<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    args: Vec<Arg>,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    for arg in args {
        query = match arg {
            Arg::Text(text) => query.bind(text),
            Arg::Int(int) => query.bind(int),
        };
    }
    query
}

/// Reads a boolean column: PostgreSQL has booleans, SQLite stores 0 and 1.
fn get_bool(row: &AnyRow, column: &str) -> Result<bool, sqlx::Error> {
    row.try_get::<bool, _>(column)
        .or_else(|_| row.try_get::<i64, _>(column).map(|v| v != 0))
}

fn query_error(operation: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |e| StoreError::query(operation, e)
}

impl Store for SqlStore {
    fn backend(&self) -> Backend {
        self.backend
    }

    fn url(&self) -> &StoreUrl {
        &self.url
    }

    fn write<'a>(&'a self, records: &'a [Record]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(write::write_records(self, records))
    }

    fn drift_reports<'a>(&'a self, filter: &'a ReportFilter) -> BoxFuture<'a, Result<Vec<ReportSummary>, StoreError>> {
        Box::pin(read::drift_reports(self, filter))
    }

    fn drift_report<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<DriftReport>, StoreError>> {
        Box::pin(read::drift_report(self, id))
    }

    fn drift_report_ids<'a>(&'a self, prefix: &'a str, limit: u32) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        Box::pin(read::drift_report_ids(self, prefix, limit))
    }

    fn delete_drift_reports_before(&self, before_ms: i64) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(write::delete_drift_reports_before(self, before_ms))
    }

    fn receipts(&self) -> BoxFuture<'_, Result<Vec<Receipt>, StoreError>> {
        Box::pin(read::receipts(self))
    }

    fn resource_receipts<'a>(
        &'a self,
        host: &'a str,
        kind: &'a str,
        name: &'a str,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<Receipt>, StoreError>> {
        Box::pin(read::resource_receipts(self, host, kind, name, limit))
    }

    fn inventory<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<InventoryEntry>, StoreError>> {
        Box::pin(read::inventory(self, host))
    }

    fn fleet(&self) -> BoxFuture<'_, Result<Vec<FleetHost>, StoreError>> {
        Box::pin(read::fleet(self))
    }

    fn job_runs<'a>(
        &'a self,
        host: &'a str,
        name: &'a str,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<JobRun>, StoreError>> {
        Box::pin(read::job_runs(self, host, name, limit))
    }

    fn counts(&self) -> BoxFuture<'_, Result<BTreeMap<String, i64>, StoreError>> {
        Box::pin(schema::counts(self))
    }

    fn schema_version(&self) -> BoxFuture<'_, Result<i64, StoreError>> {
        Box::pin(schema::schema_version(self))
    }

    fn memory_add<'a>(&'a self, item: &'a NewMemory) -> BoxFuture<'a, Result<MemoryAdded, StoreError>> {
        Box::pin(memory::add(self, item))
    }

    fn memory_get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<MemoryItem>, StoreError>> {
        Box::pin(memory::get(self, id))
    }

    fn memory_list<'a>(&'a self, filter: &'a MemoryFilter) -> BoxFuture<'a, Result<Vec<MemoryItem>, StoreError>> {
        Box::pin(memory::list(self, filter))
    }

    fn memory_search<'a>(&'a self, query: &'a MemoryQuery) -> BoxFuture<'a, Result<Vec<MemoryItem>, StoreError>> {
        Box::pin(memory::search(self, query))
    }

    fn memory_touch<'a>(&'a self, id: &'a str, at_ms: i64) -> BoxFuture<'a, Result<Option<MemoryItem>, StoreError>> {
        Box::pin(memory::touch(self, id, at_ms))
    }

    fn memory_verify<'a>(
        &'a self,
        id: &'a str,
        confidence: Option<f64>,
    ) -> BoxFuture<'a, Result<Option<MemoryItem>, StoreError>> {
        Box::pin(memory::verify(self, id, confidence))
    }

    fn memory_move<'a>(&'a self, transition: &'a MemoryTransition) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(memory::move_tier(self, transition))
    }

    fn memory_history<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Vec<MemoryTransition>, StoreError>> {
        Box::pin(memory::history(self, id))
    }

    fn memory_rules_preview<'a>(
        &'a self,
        rules: &'a [PassRule],
        now_ms: i64,
        sample: u32,
    ) -> BoxFuture<'a, Result<Vec<RuleMoves>, StoreError>> {
        Box::pin(memory_pass::preview(self, rules, now_ms, sample))
    }

    fn memory_rules_apply<'a>(
        &'a self,
        rules: &'a [PassRule],
        now_ms: i64,
        run_id: &'a str,
        sample: u32,
    ) -> BoxFuture<'a, Result<MemoryPass, StoreError>> {
        Box::pin(memory_pass::apply(self, rules, now_ms, run_id, sample))
    }
}
