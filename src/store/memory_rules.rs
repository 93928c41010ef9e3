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

use super::Backend;
use crate::spec::memory_rule::{MemoryAction, MemoryMatch, MemoryRuleSpec};
use serde::{Deserialize, Serialize};

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
    pub(crate) fn arg(&mut self, arg: Arg) -> String {
        self.args.push(arg);
        format!("${}", self.args.len())
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

/// `CASE d.r WHEN 0 THEN $a ...`: a per-rule value by the rule index.
pub(crate) fn by_rule(statement: &mut Statement, rules: &[PassRule], value: impl Fn(&PassRule) -> String) -> String {
    let mut case = String::from("CASE d.r");
    for (i, rule) in rules.iter().enumerate() {
        case.push_str(&format!(" WHEN {i} THEN {}", statement.arg(Arg::Text(value(rule)))));
    }
    case.push_str(" END");
    case
}

pub(crate) fn one_line(content: &str) -> String {
    let flat: String = content.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(SAMPLE_CONTENT_CHARS) {
        Some((cut, _)) => format!("{}…", &flat[..cut]),
        None => flat,
    }
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
