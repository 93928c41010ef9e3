//! Memory items: what agents remember, in namespaces, in ordered tiers (default `working` ->
//! `long-term` -> `core`, plus `archived`). The types the `Store` reads and writes, the content
//! hash that merges duplicates, and namespace scopes (exact names or a trailing `*` glob).
//!
//! Unlike every other write, memory calls go straight to the database, not through the
//! recorder's journal: an agent needs its item's id back (and whether it merged into an existing
//! one), and a search must see what was just added. Nothing here is ever hard-deleted.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::report::rfc3339;

/// The tier new items start in when the Controller names no tiers.
pub const DEFAULT_FIRST_TIER: &str = "working";
/// The largest content accepted, in bytes.
pub const MAX_CONTENT_BYTES: usize = 64 * 1024;
/// The most items one list or search returns.
pub const MAX_LIMIT: u32 = 1000;
/// Confidence of an item added without one.
pub const DEFAULT_CONFIDENCE: f64 = 0.5;

/// An item to add. A duplicate (same namespace, same content hash) merges into the existing
/// item: its id is kept, tags are unioned, uses and last used bumped, the higher confidence kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewMemory {
    pub namespace: String,
    pub content: String,
    pub tags: Vec<String>,
    /// 0.0 to 1.0; default [`DEFAULT_CONFIDENCE`].
    pub confidence: Option<f64>,
    /// The agent that added it (for the bus: the caller), or none (the command line).
    pub source_agent: Option<String>,
    /// The tier a new item starts in: the first of the Controller's `memory.tiers`.
    pub tier: String,
    pub at_ms: i64,
}

impl NewMemory {
    /// The item as stored: content trimmed, tags trimmed, sorted and without duplicates; or why
    /// it cannot be stored.
    pub fn normalized(&self) -> Result<NewMemory, String> {
        check_namespace(&self.namespace)?;
        let content = self.content.trim();
        if content.is_empty() {
            return Err("memory content is empty".into());
        }
        if content.len() > MAX_CONTENT_BYTES {
            return Err(format!(
                "memory content is {} bytes; at most {MAX_CONTENT_BYTES} are accepted",
                content.len()
            ));
        }
        if let Some(c) = self.confidence {
            check_confidence(c)?;
        }
        if self.tier.trim().is_empty() {
            return Err("memory tier is empty".into());
        }
        let mut tags = Vec::with_capacity(self.tags.len());
        for tag in &self.tags {
            let tag = tag.trim();
            if tag.is_empty() {
                return Err("a memory tag is empty".into());
            }
            if tag.len() > 200 {
                return Err("a memory tag is longer than 200 bytes".into());
            }
            tags.push(tag.to_string());
        }
        tags.sort();
        tags.dedup();
        Ok(NewMemory {
            namespace: self.namespace.clone(),
            content: content.to_string(),
            tags,
            confidence: self.confidence,
            source_agent: self.source_agent.clone(),
            tier: self.tier.clone(),
            at_ms: self.at_ms,
        })
    }
}

/// A namespace as items are stored in: not empty, at most 200 bytes, no `*`, no whitespace.
pub fn check_namespace(namespace: &str) -> Result<(), String> {
    if namespace.is_empty() {
        return Err("memory namespace is empty".into());
    }
    if namespace.len() > 200 {
        return Err("memory namespace is longer than 200 bytes".into());
    }
    if namespace.contains('*') || namespace.chars().any(char::is_whitespace) {
        return Err(format!(
            "memory namespace `{namespace}` may contain neither `*` nor whitespace"
        ));
    }
    Ok(())
}

pub fn check_confidence(confidence: f64) -> Result<(), String> {
    if (0.0..=1.0).contains(&confidence) {
        Ok(())
    } else {
        Err(format!("confidence {confidence} is outside 0.0 to 1.0"))
    }
}

/// SHA-256 of the content, as 64 hex digits.
pub fn content_hash(content: &str) -> String {
    hex::encode(Sha256::digest(content.as_bytes()))
}

/// What `memory_add` did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryAdded {
    pub id: String,
    /// True when an item with the same content already existed in the namespace.
    pub merged: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemoryItem {
    pub id: String,
    pub namespace: String,
    pub tier: String,
    pub content: String,
    pub content_hash: String,
    pub source_agent: Option<String>,
    pub created_ms: i64,
    pub last_used_ms: i64,
    pub uses: i64,
    pub confidence: f64,
    pub verified: bool,
    /// Sorted.
    pub tags: Vec<String>,
}

impl MemoryItem {
    /// The item as `--output json` and the bus show it: the stored fields plus RFC 3339 times.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "namespace": self.namespace,
            "tier": self.tier,
            "content": self.content,
            "content_hash": self.content_hash,
            "source_agent": self.source_agent,
            "created_at": rfc3339(self.created_ms),
            "last_used_at": rfc3339(self.last_used_ms),
            "uses": self.uses,
            "confidence": self.confidence,
            "verified": self.verified,
            "tags": self.tags,
        })
    }
}

/// Which items `memory_list` returns, newest first.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryFilter {
    /// Namespace patterns (exact or a trailing `*` glob); empty: every namespace.
    pub namespaces: Vec<String>,
    pub tier: Option<String>,
    pub tag: Option<String>,
    /// At most [`MAX_LIMIT`].
    pub limit: u32,
}

/// A search within a readable scope, most recently used first.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryQuery {
    /// Namespace patterns (exact or a trailing `*` glob): the caller's readable scope. Empty
    /// finds nothing.
    pub namespaces: Vec<String>,
    /// Case-insensitive substring of the content; empty matches every item.
    pub text: String,
    /// At most [`MAX_LIMIT`].
    pub limit: u32,
}

/// One move of an item between tiers (written by memory rules; `memory history` shows them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryTransition {
    pub id: String,
    pub item_id: String,
    pub from_tier: String,
    pub to_tier: String,
    /// The MemoryRule that moved it, if a rule did.
    pub rule: Option<String>,
    pub run_id: Option<String>,
    pub at_ms: i64,
}

impl MemoryTransition {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "item_id": self.item_id,
            "from_tier": self.from_tier,
            "to_tier": self.to_tier,
            "rule": self.rule,
            "run_id": self.run_id,
            "at": rfc3339(self.at_ms),
        })
    }
}

/// Whether `pattern` (an exact namespace, a trailing `*` glob such as `team-*`, or `*`) matches
/// the namespace `namespace`.
pub fn namespace_matches(pattern: &str, namespace: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => namespace.starts_with(prefix),
        None => pattern == namespace,
    }
}

/// Whether a namespace is in a scope (a list of patterns).
pub fn in_scope(scope: &[String], namespace: &str) -> bool {
    scope.iter().any(|p| namespace_matches(p, namespace))
}

/// Whether everything `requested` (a namespace or a glob) names is inside `scope`.
pub fn scope_covers(scope: &[String], requested: &str) -> bool {
    match requested.strip_suffix('*') {
        Some(prefix) => scope.iter().any(|p| {
            p.strip_suffix('*')
                .is_some_and(|scope_prefix| prefix.starts_with(scope_prefix))
        }),
        None => in_scope(scope, requested),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(patterns: &[&str]) -> Vec<String> {
        patterns.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn namespaces_match_exactly_or_by_prefix() {
        assert!(namespace_matches("notes", "notes"));
        assert!(!namespace_matches("notes", "notes-2"));
        assert!(namespace_matches("team-*", "team-a"));
        assert!(namespace_matches("team-*", "team-"));
        assert!(!namespace_matches("team-*", "teams"));
        assert!(namespace_matches("*", "anything"));
        assert!(in_scope(&scope(&["a", "team-*"]), "team-x"));
        assert!(!in_scope(&scope(&[]), "a"));
    }

    #[test]
    fn a_glob_is_covered_only_by_a_wider_glob() {
        let read = scope(&["notes", "team-*"]);
        assert!(scope_covers(&read, "team-a*"));
        assert!(scope_covers(&read, "team-*"));
        assert!(scope_covers(&read, "notes"));
        assert!(!scope_covers(&read, "notes*"));
        assert!(!scope_covers(&read, "*"));
        assert!(scope_covers(&scope(&["*"]), "*"));
    }

    #[test]
    fn new_items_are_normalized_or_refused() {
        let new = NewMemory {
            namespace: "notes".into(),
            content: "  the sky is blue\n".into(),
            tags: vec!["b".into(), " a ".into(), "b".into()],
            confidence: Some(0.9),
            source_agent: None,
            tier: "working".into(),
            at_ms: 1,
        };
        let normal = new.normalized().unwrap();
        assert_eq!(normal.content, "the sky is blue");
        assert_eq!(normal.tags, vec!["a", "b"]);
        let bad = |f: fn(&mut NewMemory)| {
            let mut n = new.clone();
            f(&mut n);
            n.normalized().unwrap_err()
        };
        assert!(bad(|n| n.namespace = "team-*".into()).contains("`*`"));
        assert!(bad(|n| n.namespace = String::new()).contains("empty"));
        assert!(bad(|n| n.content = " \n".into()).contains("content is empty"));
        assert!(bad(|n| n.confidence = Some(1.5)).contains("outside"));
        assert!(bad(|n| n.tags = vec![" ".into()]).contains("tag is empty"));
        assert!(bad(|n| n.content = "x".repeat(MAX_CONTENT_BYTES + 1)).contains("at most"));
    }

    #[test]
    fn the_content_hash_is_sha256() {
        assert_eq!(
            content_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
