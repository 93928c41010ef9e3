//! The tool gate: may an agent use a tool (with these arguments)? Allow, deny or needs-approval by
//! the tool's risk tier and the policy, and the life of an approval request.
//!
//! Every decision carries the tool, its risk, the rule that decided, the arguments and their
//! fingerprint, so the caller can write it as a receipt as is, and match a later approval to the
//! very request it was given for (same agent, tool and arguments).

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{canonical_json, sha256_hex, EffectivePolicy};
use crate::spec::policy::Risk;

/// The gate's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GateOutcome {
    Allow,
    Deny,
    NeedsApproval,
}

/// Which rule of the policy decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GateRule {
    /// The policy does not list the tool: denied (allow-list).
    NotListed,
    /// The tool's risk is above `denyAbove`: denied.
    DenyAbove,
    /// The tool's risk is above `approvalRequiredAbove`: a human decides.
    ApprovalRequiredAbove,
    /// Listed, at or below both thresholds: allowed.
    WithinRisk,
}

/// A gate decision, complete enough to be a receipt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GateDecision {
    pub outcome: GateOutcome,
    pub rule: GateRule,
    /// Names the tool, its risk and the rule, e.g. "tool `shell.exec` is high risk, above
    /// approvalRequiredAbove (medium): needs approval".
    pub reason: String,
    pub tool: String,
    /// `None` for a tool the policy does not list.
    pub risk: Option<Risk>,
    pub args: Value,
    /// `args_fingerprint(args)`.
    pub args_fingerprint: String,
}

fn risk_name(risk: Risk) -> &'static str {
    match risk {
        Risk::Low => "low",
        Risk::Medium => "medium",
        Risk::High => "high",
        Risk::Critical => "critical",
    }
}

/// SHA-256 hex of the arguments' canonical JSON (keys sorted at every level): the same arguments
/// in another key order have the same fingerprint.
pub fn args_fingerprint(args: &Value) -> String {
    sha256_hex(&canonical_json(args))
}

/// Decides whether a tool call may go ahead. Deny wins over approval: a tool above both
/// thresholds is denied, never offered for approval.
pub fn gate(rules: &EffectivePolicy, tool: &str, args: &Value) -> GateDecision {
    let risk = rules.tool_risk(tool);
    let (outcome, rule, reason) = match risk {
        None => (
            GateOutcome::Deny,
            GateRule::NotListed,
            format!("tool `{tool}` is not listed in the policy: denied"),
        ),
        Some(r) if r > rules.deny_above => (
            GateOutcome::Deny,
            GateRule::DenyAbove,
            format!(
                "tool `{tool}` is {} risk, above denyAbove ({}): denied",
                risk_name(r),
                risk_name(rules.deny_above)
            ),
        ),
        Some(r) if r > rules.approval_required_above => (
            GateOutcome::NeedsApproval,
            GateRule::ApprovalRequiredAbove,
            format!(
                "tool `{tool}` is {} risk, above approvalRequiredAbove ({}): needs approval",
                risk_name(r),
                risk_name(rules.approval_required_above)
            ),
        ),
        Some(r) => (
            GateOutcome::Allow,
            GateRule::WithinRisk,
            format!(
                "tool `{tool}` is {} risk, not above approvalRequiredAbove ({}): allowed",
                risk_name(r),
                risk_name(rules.approval_required_above)
            ),
        ),
    };
    GateDecision {
        outcome,
        rule,
        reason,
        tool: tool.to_string(),
        risk,
        args: args.clone(),
        args_fingerprint: args_fingerprint(args),
    }
}

/// How long a request waits for a human when the caller has no better figure. The Policy spec has
/// no field for it; one hour lets an operator notice without a stale request approving a call
/// the agent has long given up on.
pub const DEFAULT_APPROVAL_TTL_MS: i64 = 3_600_000;

/// Where an approval request is in its life. Only `Pending` moves, and only once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case", rename_all_fields = "camelCase")]
pub enum ApprovalState {
    Pending,
    Approved {
        by: String,
        at_ms: i64,
    },
    Denied {
        by: String,
        at_ms: i64,
    },
    /// Nobody decided before `expires_ms`.
    Expired {
        at_ms: i64,
    },
}

impl ApprovalState {
    fn name(&self) -> &'static str {
        match self {
            ApprovalState::Pending => "pending",
            ApprovalState::Approved { .. } => "approved",
            ApprovalState::Denied { .. } => "denied",
            ApprovalState::Expired { .. } => "expired",
        }
    }
}

impl fmt::Display for ApprovalState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApprovalState::Pending => f.write_str("pending"),
            ApprovalState::Approved { by, .. } => write!(f, "approved by {by}"),
            ApprovalState::Denied { by, .. } => write!(f, "denied by {by}"),
            ApprovalState::Expired { .. } => f.write_str("expired"),
        }
    }
}

/// Why an approval request cannot be made or moved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalError {
    #[error("tool `{tool}` does not need approval (the gate's answer was {outcome:?})")]
    NotNeeded { tool: String, outcome: GateOutcome },
    #[error("approval request {id} is already {state}")]
    AlreadyDecided { id: String, state: String },
    #[error("approval request {id} expired at {expires_ms} ms; the agent must ask again")]
    Expired { id: String, expires_ms: i64 },
    #[error("approval request {id} does not expire before {expires_ms} ms")]
    NotYetExpired { id: String, expires_ms: i64 },
}

/// A tool call waiting for a human (`mirrorctl gate pending|approve|deny`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRequest {
    /// Made by the caller (a UUID v7, like every record id).
    pub id: String,
    pub agent: String,
    pub tool: String,
    pub risk: Risk,
    /// Shown to the approver: what exactly would run.
    pub args: Value,
    pub args_fingerprint: String,
    /// The gate's reason.
    pub reason: String,
    pub requested_ms: i64,
    /// A pending request not decided by then can no longer be approved.
    pub expires_ms: i64,
    pub state: ApprovalState,
}

impl ApprovalRequest {
    /// A pending request for a `NeedsApproval` decision, open for `ttl_ms`.
    pub fn new(
        id: impl Into<String>,
        agent: impl Into<String>,
        decision: &GateDecision,
        requested_ms: i64,
        ttl_ms: i64,
    ) -> Result<Self, ApprovalError> {
        let (GateOutcome::NeedsApproval, Some(risk)) = (decision.outcome, decision.risk) else {
            return Err(ApprovalError::NotNeeded {
                tool: decision.tool.clone(),
                outcome: decision.outcome,
            });
        };
        Ok(ApprovalRequest {
            id: id.into(),
            agent: agent.into(),
            tool: decision.tool.clone(),
            risk,
            args: decision.args.clone(),
            args_fingerprint: decision.args_fingerprint.clone(),
            reason: decision.reason.clone(),
            requested_ms,
            expires_ms: requested_ms.saturating_add(ttl_ms),
            state: ApprovalState::Pending,
        })
    }

    pub fn is_pending(&self) -> bool {
        self.state == ApprovalState::Pending
    }

    /// A decision is only possible while pending and before expiry.
    fn decidable(&self, now_ms: i64) -> Result<(), ApprovalError> {
        if !self.is_pending() {
            return Err(ApprovalError::AlreadyDecided {
                id: self.id.clone(),
                state: self.state.name().to_string(),
            });
        }
        if now_ms >= self.expires_ms {
            return Err(ApprovalError::Expired {
                id: self.id.clone(),
                expires_ms: self.expires_ms,
            });
        }
        Ok(())
    }

    /// Pending -> approved by `by`. An expired request is refused (and should be `expire`d).
    pub fn approve(&mut self, by: &str, now_ms: i64) -> Result<(), ApprovalError> {
        self.decidable(now_ms)?;
        self.state = ApprovalState::Approved {
            by: by.to_string(),
            at_ms: now_ms,
        };
        Ok(())
    }

    /// Pending -> denied by `by`. Denying an expired request is refused too: it already is
    /// ineffective, and its record should say it expired, not that someone denied it.
    pub fn deny(&mut self, by: &str, now_ms: i64) -> Result<(), ApprovalError> {
        self.decidable(now_ms)?;
        self.state = ApprovalState::Denied {
            by: by.to_string(),
            at_ms: now_ms,
        };
        Ok(())
    }

    /// Pending -> expired, once `expires_ms` has come.
    pub fn expire(&mut self, now_ms: i64) -> Result<(), ApprovalError> {
        if !self.is_pending() {
            return Err(ApprovalError::AlreadyDecided {
                id: self.id.clone(),
                state: self.state.name().to_string(),
            });
        }
        if now_ms < self.expires_ms {
            return Err(ApprovalError::NotYetExpired {
                id: self.id.clone(),
                expires_ms: self.expires_ms,
            });
        }
        self.state = ApprovalState::Expired { at_ms: now_ms };
        Ok(())
    }

    /// Whether this request is the one for `agent` calling `tool` with arguments of
    /// `args_fingerprint` (so an approval never covers other arguments).
    pub fn matches(&self, agent: &str, tool: &str, args_fingerprint: &str) -> bool {
        self.agent == agent && self.tool == tool && self.args_fingerprint == args_fingerprint
    }

    /// Whether this request, approved, lets that call go ahead. Using an approval once is the
    /// caller's to record (an approval covers the call it was asked for, not a standing grant).
    pub fn authorizes(&self, agent: &str, tool: &str, args_fingerprint: &str) -> bool {
        matches!(self.state, ApprovalState::Approved { .. }) && self.matches(agent, tool, args_fingerprint)
    }
}
