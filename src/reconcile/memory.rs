//! The memory step: the state's MemoryRules run over the truth store. A dry-run counts what each
//! rule would move (with its first items); an apply moves them (see `store::memory_rules`),
//! then writes one receipt per rule that moved something. Runs after the resource pass of a
//! one-shot `reconcile`, and on the Controller's `memory.schedule` in the daemon.

use serde_json::json;

use crate::report::{now_ms, Drift, DriftItem, Severity};
use crate::source::DesiredState;
use crate::spec::memory_rule::MemoryAction;
use crate::spec::{Kind, Spec};
use crate::store::memory_rules::{self, MemoryPass, PassRule, RuleMoves};
use crate::store::{ReceiptDraft, Recorder, StoreUrl};

/// Items shown per rule.
pub const SAMPLE: u32 = 3;

/// What the memory step did (or would do).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemoryOutcome {
    /// Every active rule in the order a pass tries them, with its count.
    pub moves: Vec<RuleMoves>,
    /// True when the moves were applied (false: a dry-run's counts).
    pub applied: bool,
    /// Why nothing was applied although asked (another host's pass runs).
    pub skipped: Option<String>,
    /// Why the step failed (the store cannot be opened or a query failed); nothing moved.
    pub error: Option<String>,
}

impl MemoryOutcome {
    /// Items that would move (dry-run) or moved.
    pub fn total(&self) -> u64 {
        self.moves.iter().map(|m| m.count).sum()
    }
}

/// A `memory_pending` drift item per rule with items to move (dry-runs and observe-only reports).
pub fn pending_drift(outcome: &MemoryOutcome) -> Vec<DriftItem> {
    if outcome.applied {
        return Vec::new();
    }
    outcome
        .moves
        .iter()
        .filter(|m| m.count > 0)
        .map(|m| DriftItem {
            kind: Kind::MemoryRule.to_string(),
            name: m.rule.clone(),
            drift: Drift::MemoryPending,
            corrective: false,
            severity: Severity::Info,
            detail: format!(
                "{} item(s) to {}: {} -> {}",
                m.count,
                action_word(m.action),
                m.from_tier,
                m.to_tier
            ),
        })
        .collect()
}

/// The state's active rules, in pass order; empty when it has none.
pub fn rules_of(state: &DesiredState) -> Vec<PassRule> {
    let tiers = state.controller().memory_tiers();
    let rules = state
        .resources
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::MemoryRule(spec) => PassRule::of(&r.metadata.name, spec, &tiers),
            _ => None,
        })
        .collect();
    memory_rules::ordered(rules)
}

/// Whether the state has a MemoryRule at all (suspended ones included): the step is skipped
/// otherwise, and the store is not opened for it.
pub fn has_rules(state: &DesiredState) -> bool {
    state.resources.iter().any(|r| r.kind == Kind::MemoryRule)
}

/// Counts what each rule would move now.
pub async fn preview(state: &DesiredState, store: &StoreUrl) -> MemoryOutcome {
    let rules = rules_of(state);
    if rules.is_empty() {
        return MemoryOutcome::default();
    }
    let result = async {
        let store = crate::store::open(store).await?;
        store.memory_rules_preview(&rules, now_ms(), SAMPLE).await
    }
    .await;
    match result {
        Ok(moves) => MemoryOutcome {
            moves,
            ..MemoryOutcome::default()
        },
        Err(e) => MemoryOutcome {
            error: Some(format!("memory rules not checked: {e}")),
            ..MemoryOutcome::default()
        },
    }
}

/// One pass at a time in this process (the daemon's schedule and a reconcile asked through it).
static APPLYING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Applies the rules; a receipt per rule that moved items (`run_id`: the transitions' run).
pub async fn apply(state: &DesiredState, store: &StoreUrl, recorder: &Recorder, run_id: &str) -> MemoryOutcome {
    let rules = rules_of(state);
    if rules.is_empty() {
        return MemoryOutcome::default();
    }
    let _one_at_a_time = APPLYING.lock().await;
    let result = async {
        let store = crate::store::open(store).await?;
        store.memory_rules_apply(&rules, now_ms(), run_id, SAMPLE).await
    }
    .await;
    match result {
        Ok(MemoryPass::Moved(moves)) => {
            for m in moves.iter().filter(|m| m.count > 0) {
                recorder.receipt(receipt(m, run_id, &state.commit));
            }
            MemoryOutcome {
                moves,
                applied: true,
                ..MemoryOutcome::default()
            }
        }
        Ok(MemoryPass::Skipped(why)) => MemoryOutcome {
            skipped: Some(why),
            ..MemoryOutcome::default()
        },
        Err(e) => MemoryOutcome {
            error: Some(format!("memory rules not applied: {e}")),
            ..MemoryOutcome::default()
        },
    }
}

pub fn action_word(action: MemoryAction) -> &'static str {
    match action {
        MemoryAction::Promote => "promote",
        MemoryAction::Demote => "demote",
        MemoryAction::Archive => "archive",
    }
}

fn receipt(moves: &RuleMoves, run_id: &str, commit: &Option<String>) -> ReceiptDraft {
    ReceiptDraft {
        run_id: Some(run_id.to_string()),
        commit: commit.clone(),
        kind: Kind::MemoryRule.to_string(),
        name: moves.rule.clone(),
        action: action_word(moves.action).to_string(),
        reason: format!(
            "{} item(s) matched: {} -> {}",
            moves.count, moves.from_tier, moves.to_tier
        ),
        detail: json!({
            "moved": moves.count,
            "from": moves.from_tier,
            "to": moves.to_tier,
            "first": moves.first.iter().map(|i| &i.id).collect::<Vec<_>>(),
        })
        .to_string(),
    }
}
