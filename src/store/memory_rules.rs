//! Memory rules as SQL: a pass decides every item's move in one statement over the store, never
//! by loading items into memory.
//!
//! Each rule becomes a condition; the conditions, highest priority first (then by name), become
//! one `CASE` that gives an item the first rule it matches, so an item moves at most once per
//! pass and a higher-priority rule wins. Every rule is judged on the items as they were when the
//! pass began: an item promoted by one rule is not seen by the next tier's rules until the next
//! pass. The dry-run counts with the same `CASE`; an apply writes one transition per item (id
//! `RUN:ITEM`) and moves the items in one transaction. On PostgreSQL the transaction first takes
//! a fleet-wide advisory lock; a host that finds it held skips its pass (another host is moving
//! the same items right now), so two hosts never move an item twice for one schedule.

use serde::{Deserialize, Serialize};
use sqlx::{Any, Row, Transaction};

use super::sql::SqlStore;
use super::{Backend, StoreError};
use crate::spec::memory_rule::{MemoryAction, MemoryMatch, MemoryRuleSpec};

/// The advisory lock key of memory passes on PostgreSQL (`mirrorctl memory` in ASCII).
pub const ADVISORY_LOCK_KEY: i64 = 0x6d69_7272_6d65_6d6f;
/// Characters of an item's content a sample shows.
const SAMPLE_CONTENT_CHARS: usize = 80;

/// A MemoryRule as a pass runs it: its source and target tiers resolved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PassRule {
    pub name: String,
    pub priority: i32,
    pub action: MemoryAction,
    pub from_tier: String,
    pub to_tier: String,
    pub matches: MemoryMatch,
}

impl PassRule {
    /// The rule as a pass runs it, given the ordered tiers; None when it is suspended or has no
    /// source or target tier (validation refuses the latter).
    pub fn of(name: &str, spec: &MemoryRuleSpec, tiers: &[String]) -> Option<PassRule> {
        if spec.suspend {
            return None;
        }
        Some(PassRule {
            name: name.to_string(),
            priority: spec.priority,
            action: spec.action,
            from_tier: spec.matches.tier.clone()?,
            to_tier: spec.target_tier(tiers)?.to_string(),
            matches: spec.matches.clone(),
        })
    }
}

/// Rules in the order a pass tries them: highest priority first, then by name.
pub fn ordered(mut rules: Vec<PassRule>) -> Vec<PassRule> {
    rules.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.name.cmp(&b.name)));
    rules
}

/// What one rule moves (or would move) in a pass.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuleMoves {
    pub rule: String,
    pub action: MemoryAction,
    pub from_tier: String,
    pub to_tier: String,
    pub count: u64,
    /// The first items by id (at most the sample size asked for).
    pub first: Vec<MovedItem>,
}

/// An item in a sample: enough to recognize it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovedItem {
    pub id: String,
    pub namespace: String,
    /// The first characters of the content, on one line.
    pub content: String,
}

/// What an applying pass did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MemoryPass {
    /// Every rule, in the order tried, with what it moved.
    Moved(Vec<RuleMoves>),
    /// Nothing was moved: another host's pass holds the fleet lock.
    Skipped(String),
}

/// A parameter of a generated statement.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Arg {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

/// SQL text with its `$N` parameters in order.
#[derive(Debug, Default)]
pub(crate) struct Statement {
    pub(crate) args: Vec<Arg>,
}

impl Statement {
    fn arg(&mut self, arg: Arg) -> String {
        self.args.push(arg);
        format!("${}", self.args.len())
    }

    fn run<'q>(&'q self, sql: &'q str) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments> {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for arg in &self.args {
            query = match arg {
                Arg::Text(text) => query.bind(text.as_str()),
                Arg::Int(int) => query.bind(*int),
                Arg::Float(float) => query.bind(*float),
                Arg::Bool(bool) => query.bind(*bool),
            };
        }
        query
    }
}

/// The condition of one rule over `memory_items m` (pure).
fn condition(statement: &mut Statement, rule: &PassRule, now_ms: i64, backend: Backend) -> String {
    let m = &rule.matches;
    let mut all = vec![format!("m.tier = {}", statement.arg(Arg::Text(rule.from_tier.clone())))];
    let pattern = m.namespace();
    if pattern != "*" {
        let wildcards = pattern.matches(['*', '?']).count();
        if wildcards == 0 {
            all.push(format!("m.namespace = {}", statement.arg(Arg::Text(pattern.into()))));
        } else if wildcards == 1 && pattern.ends_with('*') {
            // A prefix: `substr` is exact on both engines (SQLite's LIKE ignores case).
            let prefix = &pattern[..pattern.len() - 1];
            let length = statement.arg(Arg::Int(prefix.chars().count() as i64));
            let prefix = statement.arg(Arg::Text(prefix.into()));
            all.push(format!("substr(m.namespace, 1, CAST({length} AS INTEGER)) = {prefix}"));
        } else {
            all.push(match backend {
                // Validation allows no `[` in a namespace glob: GLOB's `*` and `?` are the rule's.
                Backend::Sqlite => format!("m.namespace GLOB {}", statement.arg(Arg::Text(pattern.into()))),
                Backend::Postgres => {
                    let like: String = pattern
                        .chars()
                        .flat_map(|c| match c {
                            '*' => vec!['%'],
                            '?' => vec!['_'],
                            '%' | '_' | '\\' => vec!['\\', c],
                            c => vec![c],
                        })
                        .collect();
                    format!("m.namespace LIKE {} ESCAPE '\\'", statement.arg(Arg::Text(like)))
                }
            });
        }
    }
    let int = |v: u64| Arg::Int(i64::try_from(v).unwrap_or(i64::MAX));
    if let Some(v) = m.min_uses {
        all.push(format!("m.uses >= {}", statement.arg(int(v))));
    }
    if let Some(v) = m.max_uses {
        all.push(format!("m.uses <= {}", statement.arg(int(v))));
    }
    if let Some(v) = m.min_confidence {
        all.push(format!("m.confidence >= {}", statement.arg(Arg::Float(v))));
    }
    if let Some(v) = m.max_confidence {
        all.push(format!("m.confidence <= {}", statement.arg(Arg::Float(v))));
    }
    if let Some(v) = m.verified {
        all.push(format!("m.verified = {}", statement.arg(Arg::Bool(v))));
    }
    let cutoff = |d: &crate::spec::common::Duration| {
        let millis = i64::try_from(d.as_std().as_millis()).unwrap_or(i64::MAX);
        Arg::Int(now_ms.saturating_sub(millis))
    };
    if let Some(d) = &m.older_than {
        all.push(format!("m.created_ms <= {}", statement.arg(cutoff(d))));
    }
    if let Some(d) = &m.idle_for {
        all.push(format!("m.last_used_ms <= {}", statement.arg(cutoff(d))));
    }
    if let Some(d) = &m.used_within {
        all.push(format!("m.last_used_ms >= {}", statement.arg(cutoff(d))));
    }
    if let Some(tags) = &m.tags {
        let has = |statement: &mut Statement, tags: &[String]| {
            let list: Vec<String> = tags.iter().map(|t| statement.arg(Arg::Text(t.clone()))).collect();
            format!(
                "EXISTS (SELECT 1 FROM memory_item_tags t WHERE t.item_id = m.id AND t.tag IN ({}))",
                list.join(", ")
            )
        };
        if !tags.any.is_empty() {
            all.push(has(statement, &tags.any));
        }
        for tag in &tags.all {
            all.push(has(statement, std::slice::from_ref(tag)));
        }
        if !tags.none.is_empty() {
            all.push(format!("NOT {}", has(statement, &tags.none)));
        }
    }
    all.join(" AND ")
}

/// `SELECT id, tier, r FROM ...`: every item in a source tier with the index of the first rule
/// (in `rules`' order) it matches, or NULL (pure).
pub(crate) fn decided(statement: &mut Statement, rules: &[PassRule], now_ms: i64, backend: Backend) -> String {
    let mut case = String::from("CASE");
    for (i, rule) in rules.iter().enumerate() {
        let condition = condition(statement, rule, now_ms, backend);
        case.push_str(&format!(" WHEN {condition} THEN {i}"));
    }
    case.push_str(" END");
    let mut tiers: Vec<&str> = rules.iter().map(|r| r.from_tier.as_str()).collect();
    tiers.sort_unstable();
    tiers.dedup();
    let tiers: Vec<String> = tiers
        .into_iter()
        .map(|t| statement.arg(Arg::Text(t.to_string())))
        .collect();
    format!(
        "SELECT m.id AS id, m.tier AS tier, {case} AS r FROM memory_items m WHERE m.tier IN ({})",
        tiers.join(", ")
    )
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

/// `CASE d.r WHEN 0 THEN $a ...`: a per-rule value by the rule index.
fn by_rule(statement: &mut Statement, rules: &[PassRule], value: impl Fn(&PassRule) -> String) -> String {
    let mut case = String::from("CASE d.r");
    for (i, rule) in rules.iter().enumerate() {
        case.push_str(&format!(" WHEN {i} THEN {}", statement.arg(Arg::Text(value(rule)))));
    }
    case.push_str(" END");
    case
}

fn query_error(operation: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |e| StoreError::query(operation, e)
}

fn one_line(content: &str) -> String {
    let flat: String = content.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(SAMPLE_CONTENT_CHARS) {
        Some((cut, _)) => format!("{}…", &flat[..cut]),
        None => flat,
    }
}

impl SqlStore {
    /// How many items each rule would move now, with the first `sample` of each (by id).
    pub(crate) async fn memory_rules_preview(
        &self,
        rules: &[PassRule],
        now_ms: i64,
        sample: u32,
    ) -> Result<Vec<RuleMoves>, StoreError> {
        if rules.is_empty() {
            return Ok(Vec::new());
        }
        let mut statement = Statement::default();
        let decided = decided(&mut statement, rules, now_ms, self.backend);
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
        let mut tx = self.pool.begin().await.map_err(query_error("begin memory dry-run"))?;
        if self.backend == Backend::Postgres {
            tune_postgres(&mut tx).await?;
        }
        let rows = statement
            .run(&sql)
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
        self.fill_samples(&mut moves, &ids, &mut *tx).await?;
        tx.rollback().await.map_err(query_error("end memory dry-run"))?;
        Ok(moves)
    }

    /// Applies the rules in one transaction: a transition per item, then the moves.
    pub(crate) async fn memory_rules_apply(
        &self,
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
        let mut tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
        .map_err(query_error("begin memory pass"))?;
        if self.backend == Backend::Postgres {
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
        let decided = decided(&mut statement, rules, now_ms, self.backend);
        let sql = format!(
            "INSERT INTO memory_transitions (id, item_id, from_tier, to_tier, rule, run_id, at_ms) \
             SELECT {run} || ':' || d.id, d.id, d.tier, {to_tier}, {rule_name}, {run}, {at} \
             FROM ({decided}) d WHERE d.r IS NOT NULL"
        );
        statement
            .run(&sql)
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
        let moves = self.pass_moves(rules, run_id, sample, &mut tx).await?;
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
        &self,
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
        self.fill_samples(&mut moves, &ids, &mut **tx).await?;
        Ok(moves)
    }

    /// Reads the sampled items (namespace and the start of the content).
    async fn fill_samples<'e, E>(
        &self,
        moves: &mut [RuleMoves],
        ids: &[(usize, String)],
        executor: E,
    ) -> Result<(), StoreError>
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, priority: i32, matches: serde_json::Value) -> PassRule {
        PassRule {
            name: name.into(),
            priority,
            action: MemoryAction::Promote,
            from_tier: "working".into(),
            to_tier: "long-term".into(),
            matches: serde_json::from_value(matches).unwrap(),
        }
    }

    #[test]
    fn higher_priority_first_then_by_name() {
        let rules = ordered(vec![
            rule("b", 1, serde_json::json!({})),
            rule("z", 5, serde_json::json!({})),
            rule("a", 1, serde_json::json!({})),
        ]);
        let names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["z", "a", "b"]);
    }

    #[test]
    fn conditions_become_parameters_never_sql_text() {
        let r = rule(
            "x",
            0,
            serde_json::json!({
                "tier": "working", "namespace": "team_?-*", "minUses": 3, "maxConfidence": 0.5,
                "verified": true, "idleFor": "1s", "tags": {"any": ["a'b"], "all": ["c", "d"], "none": ["e"]}
            }),
        );
        let mut statement = Statement::default();
        let sql = condition(&mut statement, &r, 10_000, Backend::Postgres);
        assert!(!sql.contains("a'b") && !sql.contains("team"), "{sql}");
        assert!(sql.contains("LIKE $2 ESCAPE"), "{sql}");
        assert_eq!(statement.args[1], Arg::Text("team\\__-%".into()));
        assert!(
            statement.args.contains(&Arg::Int(9_000)),
            "idleFor 1s is a cutoff of now - 1000 ms"
        );
        assert_eq!(sql.matches("EXISTS").count(), 4, "any, two of all, none: {sql}");
        let mut statement = Statement::default();
        let sql = condition(&mut statement, &r, 10_000, Backend::Sqlite);
        assert!(sql.contains("m.namespace GLOB $2"), "{sql}");
        assert_eq!(statement.args[1], Arg::Text("team_?-*".into()));
    }

    #[test]
    fn samples_are_one_short_line() {
        assert_eq!(one_line("a\n  b\tc"), "a b c");
        let long = "x".repeat(200);
        assert_eq!(one_line(&long).chars().count(), SAMPLE_CONTENT_CHARS + 1);
    }
}
