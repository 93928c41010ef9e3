//! Writing the recorder's records: one function per record kind, each statement idempotent (a
//! client-made id or an upsert), all of a batch in one transaction. Also the retention delete
//! of old drift reports.

use sqlx::{Any, Transaction};

use super::{query_error, SqlStore};
use crate::report::parse_rfc3339;
use crate::store::{
    Backend, DriftReport, Enrollment, InventoryEntry, JobRun, PolicyVersion, Receipt, Record, RouteChange, RunFinished,
    RunStarted, StatusChange, StoreError, Usage,
};

/// Rows per multi-row INSERT: well under PostgreSQL's 65,535 bind parameters and SQLite's 32,766.
const ROWS_PER_INSERT: usize = 1000;

type Tx = Transaction<'static, Any>;

/// A column value of a record, borrowed for binding.
enum Column<'a> {
    Text(&'a str),
    MaybeText(Option<&'a str>),
    Int(i64),
    MaybeInt(Option<i64>),
    Float(f64),
    Bool(bool),
}

use Column::{Bool, Float, Int, MaybeInt, MaybeText, Text};

/// Runs one statement with `columns` bound to `$1`, `$2`, ... in order; the rows it changed.
async fn execute(
    tx: &mut Tx,
    sql: &'static str,
    columns: &[Column<'_>],
    operation: &'static str,
) -> Result<u64, StoreError> {
    let mut query = sqlx::query(sql);
    for column in columns {
        query = match *column {
            Text(value) => query.bind(value),
            MaybeText(value) => query.bind(value),
            Int(value) => query.bind(value),
            MaybeInt(value) => query.bind(value),
            Float(value) => query.bind(value),
            Bool(value) => query.bind(value),
        };
    }
    let done = query.execute(&mut **tx).await.map_err(query_error(operation))?;
    Ok(done.rows_affected())
}

/// Writes records in order, in one transaction.
pub(super) async fn write_records(store: &SqlStore, records: &[Record]) -> Result<(), StoreError> {
    let mut tx = store.pool.begin().await.map_err(query_error("begin"))?;
    for record in records {
        write_record(&mut tx, record, store.backend).await?;
    }
    tx.commit().await.map_err(query_error("commit"))
}

async fn write_record(tx: &mut Tx, record: &Record, backend: Backend) -> Result<(), StoreError> {
    match record {
        Record::RunStarted(run) => write_run_started(tx, run).await,
        Record::RunFinished(run) => write_run_finished(tx, run).await,
        Record::Receipt(receipt) => write_receipt(tx, receipt).await,
        Record::DriftReport(report) => write_drift_report(tx, report, backend).await,
        Record::DriftRepeated { id, repeats, seen_ms } => write_drift_repeated(tx, id, *repeats, *seen_ms).await,
        Record::Inventory(entry) => write_inventory(tx, entry).await,
        Record::InventoryRemoved { host, kind, name } => remove_inventory(tx, host, kind, name).await,
        Record::Status(status) => write_status(tx, status).await,
        Record::Route(route) => write_route(tx, route).await,
        Record::Enrollment(enrollment) => write_enrollment(tx, enrollment).await,
        Record::EnrollmentRevoked {
            host,
            agent,
            revoked_ms,
        } => revoke_enrollment(tx, host, agent, *revoked_ms).await,
        Record::PolicyVersion(version) => write_policy_version(tx, version).await,
        Record::Usage(usage) => write_usage(tx, usage).await,
        Record::JobRun(run) => write_job_run(tx, run).await,
    }
}

/// The operation named in errors of every record's write but a drift report's and a route's
/// history.
const WRITE_RECORD: &str = "write record";

async fn write_run_started(tx: &mut Tx, r: &RunStarted) -> Result<(), StoreError> {
    let sql = "INSERT INTO runs (id, host, commit_id, trigger, started_ms) VALUES ($1, $2, $3, $4, $5) \
               ON CONFLICT (id) DO NOTHING";
    let columns = [
        Text(&r.id),
        Text(&r.host),
        MaybeText(r.commit.as_deref()),
        Text(&r.trigger),
        Int(r.started_ms),
    ];
    execute(tx, sql, &columns, WRITE_RECORD).await.map(drop)
}

async fn write_run_finished(tx: &mut Tx, r: &RunFinished) -> Result<(), StoreError> {
    let sql = "UPDATE runs SET ended_ms = $1, outcome = $2, summary = $3 WHERE id = $4";
    let columns = [Int(r.ended_ms), Text(&r.outcome), Text(&r.summary), Text(&r.id)];
    execute(tx, sql, &columns, WRITE_RECORD).await.map(drop)
}

async fn write_receipt(tx: &mut Tx, r: &Receipt) -> Result<(), StoreError> {
    let sql = "INSERT INTO receipts (id, host, seq, run_id, commit_id, kind, name, action, reason, detail, at_ms, \
               prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) ON CONFLICT (id) DO NOTHING";
    let columns = [
        Text(&r.id),
        Text(&r.host),
        Int(r.seq),
        MaybeText(r.run_id.as_deref()),
        MaybeText(r.commit.as_deref()),
        Text(&r.kind),
        Text(&r.name),
        Text(&r.action),
        Text(&r.reason),
        Text(&r.detail),
        Int(r.at_ms),
        Text(&r.prev_hash),
        Text(&r.hash),
    ];
    execute(tx, sql, &columns, WRITE_RECORD).await.map(drop)
}

async fn write_drift_repeated(tx: &mut Tx, id: &str, repeats: u64, seen_ms: i64) -> Result<(), StoreError> {
    let sql = "UPDATE drift_reports SET repeats = CASE WHEN repeats < $2 THEN $2 ELSE repeats END, \
               last_seen_ms = CASE WHEN last_seen_ms IS NULL OR last_seen_ms < $3 THEN $3 ELSE last_seen_ms END WHERE id = $1";
    let columns = [Text(id), Int(repeats as i64), Int(seen_ms)];
    execute(tx, sql, &columns, WRITE_RECORD).await.map(drop)
}

async fn write_inventory(tx: &mut Tx, e: &InventoryEntry) -> Result<(), StoreError> {
    let sql = "INSERT INTO inventory (host, kind, name, spec_hash, last_applied, process, updated_ms) \
               VALUES ($1, $2, $3, $4, $5, $6, $7) \
               ON CONFLICT (host, kind, name) DO UPDATE SET spec_hash = excluded.spec_hash, \
               last_applied = excluded.last_applied, process = excluded.process, updated_ms = excluded.updated_ms";
    let columns = [
        Text(&e.host),
        Text(&e.kind),
        Text(&e.name),
        Text(&e.spec_hash),
        Text(&e.last_applied),
        MaybeText(e.process.as_deref()),
        Int(e.updated_ms),
    ];
    execute(tx, sql, &columns, WRITE_RECORD).await.map(drop)
}

async fn remove_inventory(tx: &mut Tx, host: &str, kind: &str, name: &str) -> Result<(), StoreError> {
    let sql = "DELETE FROM inventory WHERE host = $1 AND kind = $2 AND name = $3";
    execute(tx, sql, &[Text(host), Text(kind), Text(name)], WRITE_RECORD)
        .await
        .map(drop)
}

async fn write_status(tx: &mut Tx, s: &StatusChange) -> Result<(), StoreError> {
    let sql = "INSERT INTO status_history (id, host, kind, name, sync, health, detail, at_ms) \
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING";
    let columns = [
        Text(&s.id),
        Text(&s.host),
        Text(&s.kind),
        Text(&s.name),
        Text(&s.sync),
        Text(&s.health),
        Text(&s.detail),
        Int(s.at_ms),
    ];
    execute(tx, sql, &columns, WRITE_RECORD).await.map(drop)
}

/// A route change goes to the history; the current route changes only when the history had
/// not seen it (a replay leaves a newer route in place).
async fn write_route(tx: &mut Tx, r: &RouteChange) -> Result<(), StoreError> {
    let history = "INSERT INTO route_history (id, host, agent, provider, model, at_ms, reason) \
                   VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING";
    let columns = [
        Text(&r.id),
        Text(&r.host),
        Text(&r.agent),
        Text(&r.provider),
        Text(&r.model),
        Int(r.at_ms),
        Text(&r.reason),
    ];
    if execute(tx, history, &columns, "write route history").await? == 0 {
        return Ok(());
    }
    let current =
        "INSERT INTO routes (host, agent, provider, model, since_ms, reason) VALUES ($1, $2, $3, $4, $5, $6) \
                   ON CONFLICT (host, agent) DO UPDATE SET provider = excluded.provider, model = excluded.model, \
                   since_ms = excluded.since_ms, reason = excluded.reason";
    let columns = [
        Text(&r.host),
        Text(&r.agent),
        Text(&r.provider),
        Text(&r.model),
        Int(r.at_ms),
        Text(&r.reason),
    ];
    execute(tx, current, &columns, WRITE_RECORD).await.map(drop)
}

async fn write_enrollment(tx: &mut Tx, e: &Enrollment) -> Result<(), StoreError> {
    let sql =
        "INSERT INTO enrollments (host, agent, token_hash, policy, policy_hash, sandbox, enrolled_ms, revoked_ms) \
               VALUES ($1, $2, $3, $4, $5, $6, $7, NULL) ON CONFLICT (host, agent) DO UPDATE SET \
               token_hash = excluded.token_hash, policy = excluded.policy, policy_hash = excluded.policy_hash, \
               sandbox = excluded.sandbox, enrolled_ms = excluded.enrolled_ms, revoked_ms = NULL";
    let columns = [
        Text(&e.host),
        Text(&e.agent),
        Text(&e.token_hash),
        Text(&e.policy),
        Text(&e.policy_hash),
        Text(&e.sandbox),
        Int(e.enrolled_ms),
    ];
    execute(tx, sql, &columns, WRITE_RECORD).await.map(drop)
}

async fn revoke_enrollment(tx: &mut Tx, host: &str, agent: &str, revoked_ms: i64) -> Result<(), StoreError> {
    let sql = "UPDATE enrollments SET revoked_ms = $1 WHERE host = $2 AND agent = $3";
    execute(tx, sql, &[Int(revoked_ms), Text(host), Text(agent)], WRITE_RECORD)
        .await
        .map(drop)
}

async fn write_policy_version(tx: &mut Tx, p: &PolicyVersion) -> Result<(), StoreError> {
    let sql = "INSERT INTO policy_versions (name, hash, version, compiled, diff, created_ms) \
               VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name, hash) DO NOTHING";
    let columns = [
        Text(&p.name),
        Text(&p.hash),
        Int(p.version),
        Text(&p.compiled),
        Text(&p.diff),
        Int(p.created_ms),
    ];
    execute(tx, sql, &columns, WRITE_RECORD).await.map(drop)
}

async fn write_usage(tx: &mut Tx, u: &Usage) -> Result<(), StoreError> {
    let sql =
        "INSERT INTO usage (id, host, agent, provider, model, prompt_tokens, completion_tokens, cost_usd, at_ms) \
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING";
    let columns = [
        Text(&u.id),
        Text(&u.host),
        Text(&u.agent),
        Text(&u.provider),
        Text(&u.model),
        Int(u.prompt_tokens),
        Int(u.completion_tokens),
        Float(u.cost_usd),
        Int(u.at_ms),
    ];
    execute(tx, sql, &columns, WRITE_RECORD).await.map(drop)
}

async fn write_job_run(tx: &mut Tx, r: &JobRun) -> Result<(), StoreError> {
    let sql =
        "INSERT INTO job_runs (id, host, name, label, commit_id, trigger, started_ms, ended_ms, exit_code, signal, \
               outcome, detail, output_tail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
               ON CONFLICT (id) DO NOTHING";
    let columns = [
        Text(&r.id),
        Text(&r.host),
        Text(&r.name),
        Text(&r.label),
        MaybeText(r.commit.as_deref()),
        Text(&r.trigger),
        Int(r.started_ms),
        Int(r.ended_ms),
        MaybeInt(r.exit_code.map(i64::from)),
        MaybeInt(r.signal.map(i64::from)),
        Text(&r.outcome),
        Text(&r.detail),
        Text(&r.output_tail),
    ];
    execute(tx, sql, &columns, WRITE_RECORD).await.map(drop)
}

/// A drift report and its items (in multi-row INSERTs); a replay finds the report and stops.
async fn write_drift_report(tx: &mut Tx, report: &DriftReport, backend: Backend) -> Result<(), StoreError> {
    let sql = "INSERT INTO drift_reports (id, host, commit_id, run_id, started_ms, observe_only, item_count) \
               VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING";
    let columns = [
        Text(&report.id),
        Text(&report.host),
        MaybeText(report.commit.as_deref()),
        MaybeText(report.run_id.as_deref()),
        Int(parse_rfc3339(&report.started_at).unwrap_or_default()),
        Bool(report.observe_only),
        Int(report.items.len() as i64),
    ];
    if execute(tx, sql, &columns, "write drift report").await? == 0 {
        return Ok(()); // replayed: the items were written with it
    }
    for (chunk_index, chunk) in report.items.chunks(ROWS_PER_INSERT).enumerate() {
        let sql = multi_row_insert(
            "INSERT INTO drift_items (report_id, position, kind, name, drift, corrective, severity, detail)",
            8,
            chunk.len(),
            backend,
        );
        let mut insert = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (i, item) in chunk.iter().enumerate() {
            insert = insert
                .bind(&report.id)
                .bind((chunk_index * ROWS_PER_INSERT + i) as i64)
                .bind(&item.kind)
                .bind(&item.name)
                .bind(item.drift.as_str())
                .bind(item.corrective)
                .bind(item.severity.as_str())
                .bind(&item.detail);
        }
        insert
            .execute(&mut **tx)
            .await
            .map_err(query_error("write drift items"))?;
    }
    Ok(())
}

/// `INSERT ... VALUES (...), (...), ...` for `rows` rows of `columns` values. PostgreSQL needs
/// `$N` (sqlx's `QueryBuilder` writes `?` for the Any driver, which it rejects); SQLite gets
/// plain `?`, bound in order, because it looks `$N` names up one by one: quadratic in the
/// parameters of a statement (8,000 here), 20x slower for a 10,000-item report.
fn multi_row_insert(head: &str, columns: usize, rows: usize, backend: Backend) -> String {
    let mut sql = String::with_capacity(head.len() + rows * columns * 6);
    sql.push_str(head);
    sql.push_str(" VALUES ");
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..columns {
            if column > 0 {
                sql.push_str(", ");
            }
            match backend {
                Backend::Postgres => {
                    sql.push('$');
                    sql.push_str(&(row * columns + column + 1).to_string());
                }
                Backend::Sqlite => sql.push('?'),
            }
        }
        sql.push(')');
    }
    sql
}

/// Deletes drift reports last seen before `before_ms` (and their items); receipts are kept.
pub(super) async fn delete_drift_reports_before(store: &SqlStore, before_ms: i64) -> Result<u64, StoreError> {
    let mut tx = store.pool.begin().await.map_err(query_error("begin"))?;
    // Items first: SQLite enforces ON DELETE CASCADE only with foreign keys on.
    let items = "DELETE FROM drift_items WHERE report_id IN \
                 (SELECT id FROM drift_reports WHERE COALESCE(last_seen_ms, started_ms) < $1)";
    execute(&mut tx, items, &[Int(before_ms)], "delete drift items").await?;
    let reports = "DELETE FROM drift_reports WHERE COALESCE(last_seen_ms, started_ms) < $1";
    let deleted = execute(&mut tx, reports, &[Int(before_ms)], "delete drift reports").await?;
    tx.commit().await.map_err(query_error("commit"))?;
    Ok(deleted)
}
