//! Running memory rules against the store: a dry-run that counts what each rule would move, and
//! an apply that records a transition per item and moves them, in one transaction (on
//! PostgreSQL under the fleet-wide advisory lock). The SQL itself is built by `memory_rules`.

use sqlx::{Any, Row, Transaction};

use super::{query_error, SqlStore};
use crate::store::memory_rules::{
    by_rule, decided, one_line, Arg, MemoryPass, MovedItem, PassRule, RuleMoves, Statement, ADVISORY_LOCK_KEY,
};
use crate::store::{Backend, StoreError};

/// The statement's text with its parameters bound in order.
fn bind_statement<'q>(statement: &'q Statement, sql: &'q str) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments> {
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for arg in &statement.args {
        query = match arg {
            Arg::Text(text) => query.bind(text.as_str()),
            Arg::Int(int) => query.bind(*int),
            Arg::Float(float) => query.bind(*float),
            Arg::Bool(bool) => query.bind(*bool),
        };
    }
    query
}

/// PostgreSQL: settings for the statements of one pass or dry-run, for its transaction only. A
/// pass is one long statement over every item: JIT-compiling its `CASE` takes longer than it
/// saves (~0.9 s of a 1,000,000-item dry-run), and its sort of the matches should stay in memory.
async fn tune_postgres(tx: &mut Transaction<'static, Any>) -> Result<(), StoreError> {
    sqlx::raw_sql("SET LOCAL jit = off; SET LOCAL work_mem = '64MB'")
        .execute(&mut **tx)
        .await
        .map_err(query_error("set memory pass options"))?;
    Ok(())
}

/// How many items each rule would move now, with the first `sample` of each (by id).
pub(super) async fn preview(
    store: &SqlStore,
    rules: &[PassRule],
    now_ms: i64,
    sample: u32,
) -> Result<Vec<RuleMoves>, StoreError> {
    if rules.is_empty() {
        return Ok(Vec::new());
    }
    let mut statement = Statement::default();
    let decided = decided(&mut statement, rules, now_ms, store.backend);
    let sample_arg = statement.arg(Arg::Int(i64::from(sample)));
    // One scan: counts per rule and the first ids of each, by a window over the matches.
    let sql = format!(
        "SELECT s.r AS r, s.n AS n, s.id AS id FROM (\
           SELECT d.r AS r, d.id AS id, COUNT(*) OVER (PARTITION BY d.r) AS n, \
                  ROW_NUMBER() OVER (PARTITION BY d.r ORDER BY d.id) AS k \
           FROM ({decided}) d WHERE d.r IS NOT NULL) s \
         WHERE s.k <= CAST({sample_arg} AS INTEGER) OR s.k = 1 ORDER BY s.r, s.id"
    );
    // One read transaction: the counts and the samples see the same items.
    let mut tx = store.pool.begin().await.map_err(query_error("begin memory dry-run"))?;
    if store.backend == Backend::Postgres {
        tune_postgres(&mut tx).await?;
    }
    let rows = bind_statement(&statement, &sql)
        .fetch_all(&mut *tx)
        .await
        .map_err(query_error("count memory moves"))?;
    let mut found = Vec::with_capacity(rows.len());
    for row in &rows {
        let r: i64 = row.try_get("r").map_err(query_error("decode memory moves"))?;
        let n: i64 = row.try_get("n").map_err(query_error("decode memory moves"))?;
        let id: String = row.try_get("id").map_err(query_error("decode memory moves"))?;
        found.push((r as usize, n as u64, id));
    }
    let mut moves = empty_moves(rules);
    for (r, n, _) in &found {
        moves[*r].count = *n;
    }
    let ids: Vec<(usize, String)> = found
        .into_iter()
        .filter(|_| sample > 0)
        .map(|(r, _, id)| (r, id))
        .collect();
    fill_samples(&mut moves, &ids, &mut *tx).await?;
    tx.rollback().await.map_err(query_error("end memory dry-run"))?;
    Ok(moves)
}

/// Applies the rules in one transaction: a transition per item, then the moves.
pub(super) async fn apply(
    store: &SqlStore,
    rules: &[PassRule],
    now_ms: i64,
    run_id: &str,
    sample: u32,
) -> Result<MemoryPass, StoreError> {
    if rules.is_empty() {
        return Ok(MemoryPass::Moved(Vec::new()));
    }
    // SQLite: take the write lock at once (a deferred transaction that reads first could not
    // upgrade while the recorder writes, and would fail instead of waiting).
    let mut tx = match store.backend {
        Backend::Sqlite => store.pool.begin_with("BEGIN IMMEDIATE").await,
        Backend::Postgres => store.pool.begin().await,
    }
    .map_err(query_error("begin memory pass"))?;
    if store.backend == Backend::Postgres {
        let locked: bool = sqlx::query("SELECT pg_try_advisory_xact_lock($1) AS locked")
            .bind(ADVISORY_LOCK_KEY)
            .fetch_one(&mut *tx)
            .await
            .and_then(|row| row.try_get("locked"))
            .map_err(query_error("lock memory pass"))?;
        if !locked {
            tx.rollback().await.map_err(query_error("rollback"))?;
            return Ok(MemoryPass::Skipped(
                "another host's memory pass holds the fleet lock; it moves these items now".into(),
            ));
        }
        tune_postgres(&mut tx).await?;
    }
    let mut statement = Statement::default();
    let run = statement.arg(Arg::Text(run_id.to_string()));
    let at = statement.arg(Arg::Int(now_ms));
    let to_tier = by_rule(&mut statement, rules, |r| r.to_tier.clone());
    let rule_name = by_rule(&mut statement, rules, |r| r.name.clone());
    let decided = decided(&mut statement, rules, now_ms, store.backend);
    let sql = format!(
        "INSERT INTO memory_transitions (id, item_id, from_tier, to_tier, rule, run_id, at_ms) \
         SELECT {run} || ':' || d.id, d.id, d.tier, {to_tier}, {rule_name}, {run}, {at} \
         FROM ({decided}) d WHERE d.r IS NOT NULL"
    );
    bind_statement(&statement, &sql)
        .execute(&mut *tx)
        .await
        .map_err(query_error("record memory transitions"))?;
    let moved = sqlx::query(
        "UPDATE memory_items SET tier = t.to_tier FROM memory_transitions t \
         WHERE t.run_id = $1 AND t.item_id = memory_items.id",
    )
    .bind(run_id)
    .execute(&mut *tx)
    .await
    .map_err(query_error("move memory items"))?;
    let moves = pass_moves(rules, run_id, sample, &mut tx).await?;
    let recorded: u64 = moves.iter().map(|m| m.count).sum();
    if recorded != moved.rows_affected() {
        tx.rollback().await.map_err(query_error("rollback"))?;
        return Err(StoreError::Invalid(format!(
            "memory pass {run_id}: {recorded} transitions but {} items moved; rolled back",
            moved.rows_affected()
        )));
    }
    tx.commit().await.map_err(query_error("commit memory pass"))?;
    Ok(MemoryPass::Moved(moves))
}

/// What a pass's transitions say it moved, per rule, with samples.
async fn pass_moves(
    rules: &[PassRule],
    run_id: &str,
    sample: u32,
    tx: &mut Transaction<'static, Any>,
) -> Result<Vec<RuleMoves>, StoreError> {
    let rows = sqlx::query(
        "SELECT s.rule AS rule, s.n AS n, s.item_id AS item_id FROM (\
           SELECT rule, item_id, COUNT(*) OVER (PARTITION BY rule) AS n, \
                  ROW_NUMBER() OVER (PARTITION BY rule ORDER BY item_id) AS k \
           FROM memory_transitions WHERE run_id = $1) s \
         WHERE s.k <= CAST($2 AS INTEGER) OR s.k = 1 ORDER BY s.rule, s.item_id",
    )
    .bind(run_id)
    .bind(i64::from(sample))
    .fetch_all(&mut **tx)
    .await
    .map_err(query_error("count memory moves"))?;
    let mut moves = empty_moves(rules);
    let mut ids = Vec::new();
    for row in &rows {
        let rule: String = row.try_get("rule").map_err(query_error("decode memory moves"))?;
        let n: i64 = row.try_get("n").map_err(query_error("decode memory moves"))?;
        let id: String = row.try_get("item_id").map_err(query_error("decode memory moves"))?;
        if let Some(r) = rules.iter().position(|x| x.name == rule) {
            moves[r].count = n as u64;
            if sample > 0 {
                ids.push((r, id));
            }
        }
    }
    fill_samples(&mut moves, &ids, &mut **tx).await?;
    Ok(moves)
}

/// Reads the sampled items (namespace and the start of the content).
async fn fill_samples<'e, E>(moves: &mut [RuleMoves], ids: &[(usize, String)], executor: E) -> Result<(), StoreError>
where
    E: sqlx::Executor<'e, Database = Any>,
{
    if ids.is_empty() {
        return Ok(());
    }
    let placeholders: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "SELECT id, namespace, content FROM memory_items WHERE id IN ({})",
        placeholders.join(", ")
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for (_, id) in ids {
        query = query.bind(id.as_str());
    }
    let rows = query
        .fetch_all(executor)
        .await
        .map_err(query_error("read memory samples"))?;
    let mut found = std::collections::HashMap::new();
    for row in &rows {
        let id: String = row.try_get("id").map_err(query_error("decode memory samples"))?;
        let namespace: String = row.try_get("namespace").map_err(query_error("decode memory samples"))?;
        let content: String = row.try_get("content").map_err(query_error("decode memory samples"))?;
        found.insert(id, (namespace, content));
    }
    for (r, id) in ids {
        if let Some((namespace, content)) = found.get(id) {
            moves[*r].first.push(MovedItem {
                id: id.clone(),
                namespace: namespace.clone(),
                content: one_line(content),
            });
        }
    }
    Ok(())
}

fn empty_moves(rules: &[PassRule]) -> Vec<RuleMoves> {
    rules
        .iter()
        .map(|r| RuleMoves {
            rule: r.name.clone(),
            action: r.action,
            from_tier: r.from_tier.clone(),
            to_tier: r.to_tier.clone(),
            count: 0,
            first: Vec::new(),
        })
        .collect()
}
