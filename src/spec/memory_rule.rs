//! `MemoryRule`: moves memory items between tiers when they match.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::Duration;

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
