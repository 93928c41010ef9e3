//! `MemoryRule`: moves memory items between tiers when they match.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{glob_matches, Duration};

/// The tier every archived item lands in; never hard-deleted.
pub const ARCHIVED_TIER: &str = "archived";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MemoryAction {
    /// Move to a higher tier (default: the next one up).
    Promote,
    /// Move to a lower tier (default: the next one down).
    Demote,
    /// Move to the `archived` tier.
    Archive,
}

/// Tag conditions: `any` needs one of them, `all` needs every one, `none` excludes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TagMatch {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub any: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub all: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub none: Vec<String>,
}

/// Conditions an item must meet; all that are given must hold.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MemoryMatch {
    /// The tier the item is in. Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Namespace glob (`*`, `agents-*`). Default `*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_uses: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_uses: Option<u64>,
    /// Between 0 and 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_confidence: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_confidence: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<bool>,
    /// Created at least this long ago.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub older_than: Option<Duration>,
    /// Not used for at least this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_for: Option<Duration>,
    /// Used within this long (the opposite of `idleFor`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_within: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<TagMatch>,
}

impl MemoryMatch {
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or("*")
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MemoryRuleSpec {
    /// Higher wins when several rules match one item. Default 0.
    #[serde(default)]
    pub priority: i32,
    #[serde(rename = "match")]
    pub matches: MemoryMatch,
    pub action: MemoryAction,
    /// Target tier. Default: the next tier up (promote) or down (demote), `archived` (archive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(default)]
    pub suspend: bool,
}

impl MemoryRuleSpec {
    /// The tier items move to, given the ordered tiers (lowest first); None when there is none
    /// (promoting from the top tier).
    pub fn target_tier<'a>(&'a self, tiers: &'a [String]) -> Option<&'a str> {
        if let Some(to) = &self.to {
            return Some(to);
        }
        let from = self.matches.tier.as_deref()?;
        let position = tiers.iter().position(|t| t == from)?;
        match self.action {
            MemoryAction::Archive => Some(ARCHIVED_TIER),
            MemoryAction::Promote => tiers.get(position + 1).map(String::as_str),
            MemoryAction::Demote => position.checked_sub(1).map(|p| tiers[p].as_str()),
        }
    }
}

/// Whether one item can match every one of `matches` at once, tiers aside: what makes rules
/// that move items around a cycle of tiers move some item back and forth forever. Conservative
/// where exactness is costly (two namespace globs are taken to overlap).
pub fn jointly_satisfiable(matches: &[&MemoryMatch]) -> bool {
    let max_of =
        |f: &dyn Fn(&MemoryMatch) -> Option<f64>| matches.iter().filter_map(|m| f(m)).fold(f64::NEG_INFINITY, f64::max);
    let min_of =
        |f: &dyn Fn(&MemoryMatch) -> Option<f64>| matches.iter().filter_map(|m| f(m)).fold(f64::INFINITY, f64::min);
    // Uses and confidence: the ranges must meet.
    if max_of(&|m| m.min_uses.map(|v| v as f64)) > min_of(&|m| m.max_uses.map(|v| v as f64)) {
        return false;
    }
    if max_of(&|m| m.min_confidence) > min_of(&|m| m.max_confidence) {
        return false;
    }
    // Verified: one value for all that say.
    let verified: Vec<bool> = matches.iter().filter_map(|m| m.verified).collect();
    if verified.windows(2).any(|w| w[0] != w[1]) {
        return false;
    }
    // Last use: idle for at least d (last used <= now - d) and used within w (>= now - w).
    let seconds = |d: &Option<Duration>| d.map(|d| d.as_std().as_secs_f64());
    if max_of(&|m| seconds(&m.idle_for)) > min_of(&|m| seconds(&m.used_within)) {
        return false;
    }
    // Namespaces: literal names must agree with each other and with every glob.
    let patterns: Vec<&str> = matches.iter().map(|m| m.namespace()).collect();
    let literals: Vec<&str> = patterns.iter().copied().filter(|p| !p.contains(['*', '?'])).collect();
    if let Some(first) = literals.first() {
        if !patterns.iter().all(|p| glob_matches(p, first)) {
            return false;
        }
    }
    // Tags: a tag required by one rule must not be excluded by another, and every `any` must
    // leave one tag that is not excluded.
    let none: Vec<&String> = matches
        .iter()
        .filter_map(|m| m.tags.as_ref())
        .flat_map(|t| &t.none)
        .collect();
    let tags = matches.iter().filter_map(|m| m.tags.as_ref());
    for t in tags {
        if t.all.iter().any(|tag| none.contains(&tag)) {
            return false;
        }
        if !t.any.is_empty() && t.any.iter().all(|tag| none.contains(&tag)) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod bounce_tests {
    use super::*;

    fn m(yaml: serde_json::Value) -> MemoryMatch {
        serde_json::from_value(yaml).unwrap()
    }

    #[test]
    fn contradictory_conditions_cannot_hold_together() {
        let promote = m(serde_json::json!({"tier": "working", "minUses": 3, "usedWithin": "7d"}));
        let demote_idle = m(serde_json::json!({"tier": "long-term", "idleFor": "30d"}));
        let demote_rare = m(serde_json::json!({"tier": "long-term", "maxUses": 2}));
        let demote_any = m(serde_json::json!({"tier": "long-term"}));
        assert!(
            !jointly_satisfiable(&[&promote, &demote_idle]),
            "idle 30d vs used within 7d"
        );
        assert!(!jointly_satisfiable(&[&promote, &demote_rare]), "uses >= 3 vs <= 2");
        assert!(jointly_satisfiable(&[&promote, &demote_any]));
        let verified = m(serde_json::json!({"verified": true}));
        let unverified = m(serde_json::json!({"verified": false}));
        assert!(!jointly_satisfiable(&[&verified, &unverified]));
        // A hostile commit: a pattern that takes a backtracking matcher exponential time.
        let hostile = m(serde_json::json!({"namespace": "*a*a*a*a*a*a*a*a*a*a*a*a*b"}));
        let long = m(serde_json::json!({"namespace": "a".repeat(60)}));
        assert!(!jointly_satisfiable(&[&hostile, &long]));
        let team = m(serde_json::json!({"namespace": "team-*"}));
        let ops = m(serde_json::json!({"namespace": "ops"}));
        let team_a = m(serde_json::json!({"namespace": "team-a"}));
        assert!(!jointly_satisfiable(&[&team, &ops]));
        assert!(jointly_satisfiable(&[&team, &team_a]));
        let pinned = m(serde_json::json!({"tags": {"all": ["pinned"]}}));
        let not_pinned = m(serde_json::json!({"tags": {"none": ["pinned"]}}));
        assert!(!jointly_satisfiable(&[&pinned, &not_pinned]));
    }
}
