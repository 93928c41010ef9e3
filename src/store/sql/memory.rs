//! Memory items: adding (or merging into the same content), reading by id, namespace, tier,
//! tag or text, marking used or verified, moving between tiers, and their history.

use std::collections::BTreeMap;

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{bind_args, get_bool, query_error, Arg, SqlStore};
use crate::store::memory::{self, MAX_LIMIT};
use crate::store::{
    new_id, MemoryAdded, MemoryFilter, MemoryItem, MemoryQuery, MemoryTransition, NewMemory, StoreError,
};

/// A WHERE clause built at run time, with its `$N` parameters in order.
#[derive(Default)]
struct Conditions {
    clauses: Vec<String>,
    args: Vec<Arg>,
}

impl Conditions {
    /// Adds a parameter; its placeholder.
    fn arg(&mut self, arg: Arg) -> String {
        self.args.push(arg);
        format!("${}", self.args.len())
    }

    /// `namespace` in one of the patterns: exact, or a prefix for a trailing `*`. A prefix is
    /// compared with `substr`, not `LIKE` (case-insensitive in SQLite, sensitive in PostgreSQL).
    fn namespaces(&mut self, patterns: &[String]) {
        let mut any = Vec::new();
        for pattern in patterns {
            match pattern.strip_suffix('*') {
                Some("") => any.push("1 = 1".to_string()),
                Some(prefix) => {
                    let length = self.arg(Arg::Int(prefix.chars().count() as i64));
                    let prefix = self.arg(Arg::Text(prefix.to_string()));
                    any.push(format!("substr(namespace, 1, CAST({length} AS INTEGER)) = {prefix}"));
                }
                None => {
                    let exact = self.arg(Arg::Text(pattern.clone()));
                    any.push(format!("namespace = {exact}"));
                }
            }
        }
        if any.is_empty() {
            any.push("1 = 0".into());
        }
        self.clauses.push(format!("({})", any.join(" OR ")));
    }

    fn sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.clauses.join(" AND "))
        }
    }
}

const MEMORY_COLUMNS: &str =
    "id, namespace, tier, content, content_hash, source_agent, created_ms, last_used_ms, uses, \
     confidence, CAST(verified AS INTEGER) AS verified";

/// `%`, `_` and `\` taken literally in a `LIKE ... ESCAPE '\'` pattern.
fn like_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn memory_from_row(row: &AnyRow) -> Result<MemoryItem, sqlx::Error> {
    Ok(MemoryItem {
        id: row.try_get("id")?,
        namespace: row.try_get("namespace")?,
        tier: row.try_get("tier")?,
        content: row.try_get("content")?,
        content_hash: row.try_get("content_hash")?,
        source_agent: row.try_get("source_agent")?,
        created_ms: row.try_get("created_ms")?,
        last_used_ms: row.try_get("last_used_ms")?,
        uses: row.try_get("uses")?,
        confidence: row.try_get("confidence")?,
        verified: get_bool(row, "verified")?,
        tags: Vec::new(),
    })
}

/// Items matching `conditions`, in `order`, at most `limit`, with their tags.
async fn select(
    store: &SqlStore,
    mut conditions: Conditions,
    order: &str,
    limit: u32,
) -> Result<Vec<MemoryItem>, StoreError> {
    let limit = conditions.arg(Arg::Int(i64::from(limit.clamp(1, MAX_LIMIT))));
    let sql = format!(
        "SELECT {MEMORY_COLUMNS} FROM memory_items{} ORDER BY {order} LIMIT {limit}",
        conditions.sql()
    );
    let rows = bind_args(sqlx::query(sqlx::AssertSqlSafe(sql)), conditions.args)
        .fetch_all(&store.pool)
        .await
        .map_err(query_error("read memory items"))?;
    let mut items = rows
        .iter()
        .map(memory_from_row)
        .collect::<Result<Vec<_>, _>>()
        .map_err(query_error("decode memory items"))?;
    fill_tags(store, &mut items).await?;
    Ok(items)
}

/// Fills in the tags of `items`.
async fn fill_tags(store: &SqlStore, items: &mut [MemoryItem]) -> Result<(), StoreError> {
    if items.is_empty() {
        return Ok(());
    }
    let placeholders: Vec<String> = (1..=items.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "SELECT item_id, tag FROM memory_item_tags WHERE item_id IN ({}) ORDER BY item_id, tag",
        placeholders.join(", ")
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for item in items.iter() {
        query = query.bind(item.id.clone());
    }
    let rows = query
        .fetch_all(&store.pool)
        .await
        .map_err(query_error("read memory tags"))?;
    let mut tags: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for row in &rows {
        let id: String = row.try_get("item_id").map_err(query_error("decode memory tags"))?;
        let tag: String = row.try_get("tag").map_err(query_error("decode memory tags"))?;
        tags.entry(id).or_default().push(tag);
    }
    for item in items.iter_mut() {
        item.tags = tags.remove(&item.id).unwrap_or_default();
    }
    Ok(())
}

pub(super) async fn get(store: &SqlStore, id: &str) -> Result<Option<MemoryItem>, StoreError> {
    let mut conditions = Conditions::default();
    let placeholder = conditions.arg(Arg::Text(id.to_string()));
    conditions.clauses.push(format!("id = {placeholder}"));
    Ok(select(store, conditions, "id", 1).await?.pop())
}

pub(super) async fn add(store: &SqlStore, new: &NewMemory) -> Result<MemoryAdded, StoreError> {
    let new = new.normalized().map_err(StoreError::Invalid)?;
    let hash = memory::content_hash(&new.content);
    let mut tx = store.pool.begin().await.map_err(query_error("begin"))?;
    let id = new_id();
    let inserted = sqlx::query(
        "INSERT INTO memory_items (id, namespace, tier, content, content_hash, source_agent, created_ms, last_used_ms, \
         uses, confidence, verified) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, $9, $10) \
         ON CONFLICT (namespace, content_hash) DO NOTHING",
    )
    .bind(&id)
    .bind(&new.namespace)
    .bind(&new.tier)
    .bind(&new.content)
    .bind(&hash)
    .bind(&new.source_agent)
    .bind(new.at_ms)
    .bind(new.at_ms)
    .bind(new.confidence.unwrap_or(memory::DEFAULT_CONFIDENCE))
    .bind(false)
    .execute(&mut *tx)
    .await
    .map_err(query_error("add memory item"))?;
    let added = if inserted.rows_affected() == 1 {
        MemoryAdded { id, merged: false }
    } else {
        // A duplicate: merge into the first item. (Below 0: "keep the stored confidence".)
        sqlx::query(
            "UPDATE memory_items SET uses = uses + 1, \
             last_used_ms = CASE WHEN last_used_ms < $1 THEN $2 ELSE last_used_ms END, \
             confidence = CASE WHEN confidence < $3 THEN $4 ELSE confidence END \
             WHERE namespace = $5 AND content_hash = $6",
        )
        .bind(new.at_ms)
        .bind(new.at_ms)
        .bind(new.confidence.unwrap_or(-1.0))
        .bind(new.confidence.unwrap_or(-1.0))
        .bind(&new.namespace)
        .bind(&hash)
        .execute(&mut *tx)
        .await
        .map_err(query_error("merge memory item"))?;
        let row = sqlx::query("SELECT id FROM memory_items WHERE namespace = $1 AND content_hash = $2")
            .bind(&new.namespace)
            .bind(&hash)
            .fetch_one(&mut *tx)
            .await
            .map_err(query_error("merge memory item"))?;
        MemoryAdded {
            id: row.try_get("id").map_err(query_error("merge memory item"))?,
            merged: true,
        }
    };
    for tag in &new.tags {
        sqlx::query(
            "INSERT INTO memory_item_tags (item_id, tag) VALUES ($1, $2) ON CONFLICT (item_id, tag) DO NOTHING",
        )
        .bind(&added.id)
        .bind(tag)
        .execute(&mut *tx)
        .await
        .map_err(query_error("tag memory item"))?;
    }
    tx.commit().await.map_err(query_error("commit"))?;
    Ok(added)
}

pub(super) async fn list(store: &SqlStore, filter: &MemoryFilter) -> Result<Vec<MemoryItem>, StoreError> {
    let mut conditions = Conditions::default();
    if !filter.namespaces.is_empty() {
        conditions.namespaces(&filter.namespaces);
    }
    if let Some(tier) = &filter.tier {
        let tier = conditions.arg(Arg::Text(tier.clone()));
        conditions.clauses.push(format!("tier = {tier}"));
    }
    if let Some(tag) = &filter.tag {
        let tag = conditions.arg(Arg::Text(tag.clone()));
        conditions.clauses.push(format!(
            "id IN (SELECT item_id FROM memory_item_tags WHERE tag = {tag})"
        ));
    }
    select(store, conditions, "created_ms DESC, id DESC", filter.limit).await
}

pub(super) async fn search(store: &SqlStore, query: &MemoryQuery) -> Result<Vec<MemoryItem>, StoreError> {
    let mut conditions = Conditions::default();
    conditions.namespaces(&query.namespaces);
    let text = query.text.trim();
    if !text.is_empty() {
        let pattern = conditions.arg(Arg::Text(format!("%{}%", like_escape(&text.to_lowercase()))));
        conditions
            .clauses
            .push(format!("LOWER(content) LIKE {pattern} ESCAPE '\\'"));
    }
    select(store, conditions, "last_used_ms DESC, id DESC", query.limit).await
}

pub(super) async fn touch(store: &SqlStore, id: &str, at_ms: i64) -> Result<Option<MemoryItem>, StoreError> {
    let updated = sqlx::query(
        "UPDATE memory_items SET uses = uses + 1, \
         last_used_ms = CASE WHEN last_used_ms < $1 THEN $2 ELSE last_used_ms END WHERE id = $3",
    )
    .bind(at_ms)
    .bind(at_ms)
    .bind(id)
    .execute(&store.pool)
    .await
    .map_err(query_error("touch memory item"))?;
    if updated.rows_affected() == 0 {
        return Ok(None);
    }
    get(store, id).await
}

pub(super) async fn verify(
    store: &SqlStore,
    id: &str,
    confidence: Option<f64>,
) -> Result<Option<MemoryItem>, StoreError> {
    if let Some(c) = confidence {
        memory::check_confidence(c).map_err(StoreError::Invalid)?;
    }
    let updated = match confidence {
        Some(c) => {
            sqlx::query("UPDATE memory_items SET verified = $1, confidence = $2 WHERE id = $3")
                .bind(true)
                .bind(c)
                .bind(id)
                .execute(&store.pool)
                .await
        }
        None => {
            sqlx::query("UPDATE memory_items SET verified = $1 WHERE id = $2")
                .bind(true)
                .bind(id)
                .execute(&store.pool)
                .await
        }
    }
    .map_err(query_error("verify memory item"))?;
    if updated.rows_affected() == 0 {
        return Ok(None);
    }
    get(store, id).await
}

pub(super) async fn move_tier(store: &SqlStore, t: &MemoryTransition) -> Result<bool, StoreError> {
    let mut tx = store.pool.begin().await.map_err(query_error("begin"))?;
    let recorded = sqlx::query(
        "INSERT INTO memory_transitions (id, item_id, from_tier, to_tier, rule, run_id, at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
    )
    .bind(&t.id)
    .bind(&t.item_id)
    .bind(&t.from_tier)
    .bind(&t.to_tier)
    .bind(&t.rule)
    .bind(&t.run_id)
    .bind(t.at_ms)
    .execute(&mut *tx)
    .await
    .map_err(query_error("record memory transition"))?;
    if recorded.rows_affected() == 0 {
        return Ok(false); // replayed: it moved the first time
    }
    let moved = sqlx::query("UPDATE memory_items SET tier = $1 WHERE id = $2 AND tier = $3")
        .bind(&t.to_tier)
        .bind(&t.item_id)
        .bind(&t.from_tier)
        .execute(&mut *tx)
        .await
        .map_err(query_error("move memory item"))?;
    if moved.rows_affected() == 0 {
        // Not in `from_tier` (or unknown): no move, and no record of one.
        tx.rollback().await.map_err(query_error("rollback"))?;
        return Ok(false);
    }
    tx.commit().await.map_err(query_error("commit"))?;
    Ok(true)
}

pub(super) async fn history(store: &SqlStore, id: &str) -> Result<Vec<MemoryTransition>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, item_id, from_tier, to_tier, rule, run_id, at_ms FROM memory_transitions WHERE item_id = $1 \
         ORDER BY at_ms, id",
    )
    .bind(id)
    .fetch_all(&store.pool)
    .await
    .map_err(query_error("read memory history"))?;
    rows.iter()
        .map(|row| {
            Ok(MemoryTransition {
                id: row.try_get("id")?,
                item_id: row.try_get("item_id")?,
                from_tier: row.try_get("from_tier")?,
                to_tier: row.try_get("to_tier")?,
                rule: row.try_get("rule")?,
                run_id: row.try_get("run_id")?,
                at_ms: row.try_get("at_ms")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(query_error("decode memory history"))
}
