//! Reading for `drift list` and `drift show`, `audit` (receipts), `status` (inventory, a
//! resource's receipts) and job runs.

use std::collections::BTreeMap;

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{bind_args, get_bool, query_error, Arg, SqlStore};
use crate::report::{rfc3339, Drift, Severity};
use crate::store::{
    DriftItem, DriftReport, FleetHost, InventoryEntry, JobRun, Receipt, ReportFilter, ReportSummary, StoreError,
};

const SELECT_RECEIPTS: &str =
    "SELECT id, host, seq, run_id, commit_id, kind, name, action, reason, detail, at_ms, prev_hash, hash \
     FROM receipts ORDER BY host, seq";

/// A receipt from a row of `SELECT_RECEIPTS`' columns, in its order.
fn receipt_from_row(row: &AnyRow) -> Result<Receipt, sqlx::Error> {
    Ok(Receipt {
        id: row.try_get(0)?,
        host: row.try_get(1)?,
        seq: row.try_get(2)?,
        run_id: row.try_get(3)?,
        commit: row.try_get(4)?,
        kind: row.try_get(5)?,
        name: row.try_get(6)?,
        action: row.try_get(7)?,
        reason: row.try_get(8)?,
        detail: row.try_get(9)?,
        at_ms: row.try_get(10)?,
        prev_hash: row.try_get(11)?,
        hash: row.try_get(12)?,
    })
}

/// `drift list`'s query: the filter's conditions as placeholders, never as text.
fn report_list_query(filter: &ReportFilter) -> (String, Vec<Arg>) {
    let mut sql = String::from(
        "SELECT id, host, commit_id, started_ms, CAST(observe_only AS INTEGER) AS observe_only, item_count, repeats, last_seen_ms \
         FROM drift_reports r WHERE 1 = 1",
    );
    let mut binds = Vec::new();
    let placeholder = |binds: &mut Vec<Arg>, bind: Arg| {
        binds.push(bind);
        format!("${}", binds.len())
    };
    if let Some(since) = filter.since_ms {
        let p = placeholder(&mut binds, Arg::Int(since));
        sql.push_str(&format!(" AND COALESCE(last_seen_ms, started_ms) >= {p}"));
    }
    let mut item_conditions = Vec::new();
    if let Some(min) = filter.min_severity {
        let severities: Vec<String> = [Severity::Info, Severity::Warning, Severity::Error, Severity::Critical]
            .into_iter()
            .filter(|s| *s >= min)
            .map(|s| placeholder(&mut binds, Arg::Text(s.as_str().to_string())))
            .collect();
        item_conditions.push(format!("i.severity IN ({})", severities.join(", ")));
    }
    if let Some(kind) = &filter.kind {
        item_conditions.push(format!("i.kind = {}", placeholder(&mut binds, Arg::Text(kind.clone()))));
    }
    if let Some(name) = &filter.resource {
        item_conditions.push(format!("i.name = {}", placeholder(&mut binds, Arg::Text(name.clone()))));
    }
    if !item_conditions.is_empty() {
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM drift_items i WHERE i.report_id = r.id AND {})",
            item_conditions.join(" AND ")
        ));
    }
    let p = placeholder(&mut binds, Arg::Int(i64::from(filter.limit)));
    sql.push_str(&format!(" ORDER BY started_ms DESC, id DESC LIMIT {p}"));
    (sql, binds)
}

/// Newest first, those the filter keeps.
pub(super) async fn drift_reports(store: &SqlStore, filter: &ReportFilter) -> Result<Vec<ReportSummary>, StoreError> {
    let (sql, binds) = report_list_query(filter);
    // Built from fixed text and numbered placeholders only (`report_list_query`).
    let rows = bind_args(sqlx::query(sqlx::AssertSqlSafe(sql)), binds)
        .fetch_all(&store.pool)
        .await
        .map_err(query_error("list drift reports"))?;
    rows.iter()
        .map(|row| {
            Ok(ReportSummary {
                id: row.try_get("id")?,
                host: row.try_get("host")?,
                commit: row.try_get("commit_id")?,
                started_at: rfc3339(row.try_get("started_ms")?),
                observe_only: get_bool(row, "observe_only")?,
                items: row.try_get::<i64, _>("item_count")? as u64,
                repeats: row.try_get::<i64, _>("repeats")? as u64,
                last_seen_at: row.try_get::<Option<i64>, _>("last_seen_ms")?.map(rfc3339),
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(query_error("read drift reports"))
}

/// Ids of drift reports starting with `prefix` (at most `limit`).
pub(super) async fn drift_report_ids(store: &SqlStore, prefix: &str, limit: u32) -> Result<Vec<String>, StoreError> {
    // Ids are UUIDs: a prefix with anything else matches nothing (and no LIKE wildcard
    // reaches the query).
    if prefix.is_empty() || !prefix.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Ok(Vec::new());
    }
    let rows = sqlx::query("SELECT id FROM drift_reports WHERE id LIKE $1 ORDER BY id LIMIT $2")
        .bind(format!("{}%", prefix.to_ascii_lowercase()))
        .bind(i64::from(limit))
        .fetch_all(&store.pool)
        .await
        .map_err(query_error("find drift reports by id prefix"))?;
    rows.iter()
        .map(|row| row.try_get("id"))
        .collect::<Result<_, sqlx::Error>>()
        .map_err(query_error("read drift report ids"))
}

/// One drift report with its items, in order.
pub(super) async fn drift_report(store: &SqlStore, id: &str) -> Result<Option<DriftReport>, StoreError> {
    let Some(row) = sqlx::query(
        "SELECT id, host, commit_id, run_id, started_ms, CAST(observe_only AS INTEGER) AS observe_only, repeats, last_seen_ms \
         FROM drift_reports WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&store.pool)
    .await
    .map_err(query_error("read drift report"))?
    else {
        return Ok(None);
    };
    let items = sqlx::query(
        "SELECT kind, name, drift, CAST(corrective AS INTEGER) AS corrective, severity, detail FROM drift_items WHERE report_id = $1 ORDER BY position",
    )
    .bind(id)
    .fetch_all(&store.pool)
    .await
    .map_err(query_error("read drift items"))?;
    let read = || -> Result<DriftReport, sqlx::Error> {
        let items = items
            .iter()
            .map(|item| {
                let drift: String = item.try_get("drift")?;
                let severity: String = item.try_get("severity")?;
                Ok(DriftItem {
                    kind: item.try_get("kind")?,
                    name: item.try_get("name")?,
                    drift: Drift::parse(&drift)
                        .ok_or_else(|| sqlx::Error::Decode(format!("unknown drift `{drift}`").into()))?,
                    corrective: get_bool(item, "corrective")?,
                    severity: Severity::parse(&severity)
                        .ok_or_else(|| sqlx::Error::Decode(format!("unknown severity `{severity}`").into()))?,
                    detail: item.try_get("detail")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?;
        Ok(DriftReport {
            id: row.try_get("id")?,
            host: row.try_get("host")?,
            commit: row.try_get("commit_id")?,
            run_id: row.try_get("run_id")?,
            started_at: rfc3339(row.try_get("started_ms")?),
            observe_only: get_bool(&row, "observe_only")?,
            items,
            repeats: row.try_get::<i64, _>("repeats")? as u64,
            last_seen_at: row.try_get::<Option<i64>, _>("last_seen_ms")?.map(rfc3339),
        })
    };
    read().map(Some).map_err(query_error("decode drift report"))
}

/// Every receipt, by host then sequence.
pub(super) async fn receipts(store: &SqlStore) -> Result<Vec<Receipt>, StoreError> {
    if let Some(reader) = &store.sqlite_reader {
        return crate::store::sqlite_receipts::read_all(reader)
            .await
            .map_err(|e| StoreError::query("read receipts", e));
    }
    let rows = sqlx::query(SELECT_RECEIPTS)
        .fetch_all(&store.pool)
        .await
        .map_err(query_error("read receipts"))?;
    rows.iter()
        .map(receipt_from_row)
        .collect::<Result<_, _>>()
        .map_err(query_error("decode receipts"))
}

/// The newest `limit` receipts of one resource on one host, newest first.
pub(super) async fn resource_receipts(
    store: &SqlStore,
    host: &str,
    kind: &str,
    name: &str,
    limit: u32,
) -> Result<Vec<Receipt>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, host, seq, run_id, commit_id, kind, name, action, reason, detail, at_ms, prev_hash, hash \
         FROM receipts WHERE host = $1 AND kind = $2 AND name = $3 ORDER BY seq DESC LIMIT $4",
    )
    .bind(host)
    .bind(kind)
    .bind(name)
    .bind(i64::from(limit))
    .fetch_all(&store.pool)
    .await
    .map_err(query_error("read a resource's receipts"))?;
    rows.iter()
        .map(receipt_from_row)
        .collect::<Result<_, _>>()
        .map_err(query_error("decode receipts"))
}

/// The owned objects of one host, by kind and name.
pub(super) async fn inventory(store: &SqlStore, host: &str) -> Result<Vec<InventoryEntry>, StoreError> {
    let rows = sqlx::query(
        "SELECT host, kind, name, spec_hash, last_applied, process, updated_ms FROM inventory WHERE host = $1 ORDER BY kind, name",
    )
    .bind(host)
    .fetch_all(&store.pool)
    .await
    .map_err(query_error("read inventory"))?;
    rows.iter()
        .map(inventory_entry)
        .collect::<Result<_, sqlx::Error>>()
        .map_err(query_error("decode inventory"))
}

/// Every host in the store: its last pass (commit, outcome, when), what it owns, its latest
/// drift report. Three reads, whatever the number of hosts, plus one per host's report.
pub(super) async fn fleet(store: &SqlStore) -> Result<Vec<FleetHost>, StoreError> {
    let mut hosts: BTreeMap<String, FleetHost> = BTreeMap::new();
    let host = |hosts: &mut BTreeMap<String, FleetHost>, name: &str| {
        hosts.entry(name.to_string()).or_insert_with(|| FleetHost {
            host: name.to_string(),
            commit: None,
            last_pass_ms: None,
            outcome: None,
            resources: Vec::new(),
            drift: None,
        });
    };
    let last_runs = sqlx::query(
        "SELECT r.host, r.commit_id, r.started_ms, r.outcome FROM runs r \
         JOIN (SELECT host, MAX(started_ms) AS latest FROM runs GROUP BY host) l \
         ON r.host = l.host AND r.started_ms = l.latest ORDER BY r.host",
    )
    .fetch_all(&store.pool)
    .await
    .map_err(query_error("read the fleet's last passes"))?;
    for row in &last_runs {
        let name: String = row.try_get("host").map_err(query_error("decode a pass"))?;
        host(&mut hosts, &name);
        let entry = hosts.get_mut(&name).expect("just added");
        entry.commit = row.try_get("commit_id").map_err(query_error("decode a pass"))?;
        entry.last_pass_ms = Some(row.try_get("started_ms").map_err(query_error("decode a pass"))?);
        entry.outcome = row.try_get("outcome").map_err(query_error("decode a pass"))?;
    }
    let owned = sqlx::query(
        "SELECT host, kind, name, spec_hash, last_applied, process, updated_ms FROM inventory ORDER BY host, kind, name",
    )
    .fetch_all(&store.pool)
    .await
    .map_err(query_error("read the fleet's inventory"))?;
    for row in &owned {
        let entry = inventory_entry(row).map_err(query_error("decode inventory"))?;
        host(&mut hosts, &entry.host);
        hosts.get_mut(&entry.host).expect("just added").resources.push(entry);
    }
    let latest_reports = sqlx::query(
        "SELECT d.host, d.id FROM drift_reports d \
         JOIN (SELECT host, MAX(started_ms) AS latest FROM drift_reports GROUP BY host) l \
         ON d.host = l.host AND d.started_ms = l.latest",
    )
    .fetch_all(&store.pool)
    .await
    .map_err(query_error("read the fleet's drift reports"))?;
    for row in &latest_reports {
        let name: String = row.try_get("host").map_err(query_error("decode a report"))?;
        let id: String = row.try_get("id").map_err(query_error("decode a report"))?;
        host(&mut hosts, &name);
        hosts.get_mut(&name).expect("just added").drift = drift_report(store, &id).await?;
    }
    Ok(hosts.into_values().collect())
}

fn inventory_entry(row: &sqlx::any::AnyRow) -> Result<InventoryEntry, sqlx::Error> {
    Ok(InventoryEntry {
        host: row.try_get("host")?,
        kind: row.try_get("kind")?,
        name: row.try_get("name")?,
        spec_hash: row.try_get("spec_hash")?,
        last_applied: row.try_get("last_applied")?,
        process: row.try_get("process")?,
        updated_ms: row.try_get("updated_ms")?,
    })
}

/// Runs of one LaunchAgent on one host, newest first.
pub(super) async fn job_runs(store: &SqlStore, host: &str, name: &str, limit: u32) -> Result<Vec<JobRun>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, host, name, label, commit_id, trigger, started_ms, ended_ms, exit_code, signal, outcome, detail, \
         output_tail FROM job_runs WHERE host = $1 AND name = $2 ORDER BY started_ms DESC, id DESC LIMIT $3",
    )
    .bind(host)
    .bind(name)
    .bind(i64::from(limit))
    .fetch_all(&store.pool)
    .await
    .map_err(query_error("read job runs"))?;
    // Exit codes and signals are stored as BIGINT; anything out of i32 range was not written by us.
    let small = |value: Option<i64>| value.and_then(|v| i32::try_from(v).ok());
    rows.iter()
        .map(|row| {
            Ok(JobRun {
                id: row.try_get("id")?,
                host: row.try_get("host")?,
                name: row.try_get("name")?,
                label: row.try_get("label")?,
                commit: row.try_get("commit_id")?,
                trigger: row.try_get("trigger")?,
                started_ms: row.try_get("started_ms")?,
                ended_ms: row.try_get("ended_ms")?,
                exit_code: small(row.try_get("exit_code")?),
                signal: small(row.try_get("signal")?),
                outcome: row.try_get("outcome")?,
                detail: row.try_get("detail")?,
                output_tail: row.try_get("output_tail")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(query_error("decode job runs"))
}
