//! The schema: migrating a database (refusing one a newer mirrorctl wrote), its version, and
//! the rows per table.

use std::collections::BTreeMap;

use sqlx::{AnyPool, Row};

use super::{query_error, SqlStore};
use crate::store::{StoreError, StoreUrl};

/// Tables counted by `counts`.
pub const TABLES: [&str; 15] = [
    "runs",
    "receipts",
    "drift_reports",
    "drift_items",
    "inventory",
    "status_history",
    "routes",
    "route_history",
    "enrollments",
    "policy_versions",
    "memory_items",
    "memory_transitions",
    "usage",
    "memory_item_tags",
    "job_runs",
];

/// Refuses a database that has migrations this binary does not know (a newer mirrorctl wrote
/// it), before anything is written to it.
pub async fn check_not_newer(
    pool: &AnyPool,
    url: &StoreUrl,
    migrator: &sqlx::migrate::Migrator,
) -> Result<(), StoreError> {
    let known = migrator.iter().map(|m| m.version).max().unwrap_or(0);
    let applied = sqlx::query("SELECT version FROM _sqlx_migrations")
        .fetch_all(pool)
        .await;
    let Ok(rows) = applied else {
        return Ok(()); // no migrations table yet: a new database
    };
    let newest = rows
        .iter()
        .filter_map(|r| r.try_get::<i64, _>("version").ok())
        .max()
        .unwrap_or(0);
    let unknown = rows
        .iter()
        .filter_map(|r| r.try_get::<i64, _>("version").ok())
        .any(|v| !migrator.iter().any(|m| m.version == v));
    if unknown || newest > known {
        return Err(StoreError::NewerSchema {
            url: url.to_string(),
            found: newest,
            known,
        });
    }
    Ok(())
}

/// Runs the migrations of `migrator`, after checking the database is not newer.
pub async fn migrate(pool: &AnyPool, url: &StoreUrl, migrator: &sqlx::migrate::Migrator) -> Result<(), StoreError> {
    check_not_newer(pool, url, migrator).await?;
    migrator.run(pool).await.map_err(|e| StoreError::Migrate {
        url: url.to_string(),
        message: crate::store::redact(&e.to_string()),
    })
}

/// Rows per table (for status and for tests that count).
pub(super) async fn counts(store: &SqlStore) -> Result<BTreeMap<String, i64>, StoreError> {
    let mut counts = BTreeMap::new();
    for table in TABLES {
        // `table` comes from the constant list above, never from input.
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) AS n FROM {table}")))
            .fetch_one(&store.pool)
            .await
            .map_err(query_error("count rows"))?;
        counts.insert(
            table.to_string(),
            row.try_get::<i64, _>("n").map_err(query_error("count rows"))?,
        );
    }
    Ok(counts)
}

/// Schema version (the newest migration applied).
pub(super) async fn schema_version(store: &SqlStore) -> Result<i64, StoreError> {
    let row = sqlx::query("SELECT MAX(version) AS v FROM _sqlx_migrations WHERE success = TRUE")
        .fetch_one(&store.pool)
        .await
        .map_err(query_error("read schema version"))?;
    Ok(row
        .try_get::<Option<i64>, _>("v")
        .map_err(query_error("read schema version"))?
        .unwrap_or(0))
}
