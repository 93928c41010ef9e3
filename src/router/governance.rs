//! What the bus enforces for each agent beyond routing: its budget (usage per UTC day against
//! the tighter of its own and its policy's budget: a warning at `warnAtPercent`, then the
//! policy's action: 429, local routes only, or an alert) and the tool gate (allow, deny or
//! needs-approval by the tool's risk; approvals decided by a person through `mirrorctl gate`).
//! Every gate decision and approval is a receipt, handed to the daemon's callback.
//!
//! Usage counts and approval requests are kept in memory and saved to files in the state dir
//! (debounced), so a restarted daemon neither hands out a fresh budget in the middle of a day
//! nor forgets a request a person is about to approve (or an approval an agent is about to use).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::policy::{
    self, Admission, ApprovalRequest, ApprovalState, BudgetState, EffectivePolicy, GateDecision, GateOutcome,
    UsageToday,
};
use crate::report::{Drift, DriftItem, Severity};
use crate::spec::Kind;
use crate::store::ReceiptDraft;

/// Receives a receipt for every gate decision and approval.
pub type Receipts = Arc<dyn Fn(ReceiptDraft) + Send + Sync>;

/// Shared, cheap to clone.
#[derive(Clone)]
pub struct Governance {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    policies: HashMap<String, EffectivePolicy>,
    usage: BTreeMap<String, UsageToday>,
    approvals: BTreeMap<String, ApprovalRequest>,
    receipts: Option<Receipts>,
    /// Where usage is saved, and whether it changed since.
    usage_file: Option<PathBuf>,
    dirty: bool,
    /// Where approval requests are saved (0600: they carry tool arguments), and whether they
    /// changed since.
    approvals_file: Option<PathBuf>,
    approvals_dirty: bool,
}

impl Default for Governance {
    fn default() -> Self {
        Governance {
            inner: Arc::new(Mutex::new(Inner::default())),
        }
    }
}

/// The gate's answer to an agent.
#[derive(Clone, Debug, PartialEq)]
pub enum GateAnswer {
    Decided(GateDecision),
    /// Waiting for a person (or already decided, when the agent asks again).
    Approval(ApprovalRequest),
}

impl Governance {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_receipts(&self, receipts: Receipts) {
        self.lock().receipts = Some(receipts);
    }

    /// Loads saved usage (today's only matters) and approval requests, and keeps saving them
    /// to `usage` and `approvals`.
    pub fn persist(&self, usage: PathBuf, approvals: PathBuf) {
        fn read<T: serde::de::DeserializeOwned + Default>(path: &std::path::Path) -> T {
            std::fs::read(path)
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                .unwrap_or_default()
        }
        let saved_usage: BTreeMap<String, UsageToday> = read(&usage);
        let saved_approvals: BTreeMap<String, ApprovalRequest> = read(&approvals);
        let mut inner = self.lock();
        for (agent, today) in saved_usage {
            inner.usage.entry(agent).or_insert(today);
        }
        for (id, request) in saved_approvals {
            inner.approvals.entry(id).or_insert(request);
        }
        inner.usage_file = Some(usage);
        inner.approvals_file = Some(approvals);
    }

    /// Writes the files whose content changed since the last save (the daemon calls this on a
    /// timer: metering and the gate never wait on a disk write).
    pub fn save(&self) {
        let (usage, approvals) = {
            let mut inner = self.lock();
            let usage = inner
                .usage_file
                .clone()
                .filter(|_| inner.dirty)
                .map(|path| (path, serde_json::to_vec(&inner.usage).unwrap_or_default()));
            let approvals = inner
                .approvals_file
                .clone()
                .filter(|_| inner.approvals_dirty)
                .map(|path| (path, serde_json::to_vec(&inner.approvals).unwrap_or_default()));
            inner.dirty = false;
            inner.approvals_dirty = false;
            (usage, approvals)
        };
        if let Some((path, snapshot)) = usage {
            if let Err(e) = crate::state::write_private_file(&path, &snapshot) {
                tracing::warn!(error = %e, "saving today's usage failed");
                self.lock().dirty = true;
            }
        }
        if let Some((path, snapshot)) = approvals {
            if let Err(e) = crate::state::write_private_file(&path, &snapshot) {
                tracing::warn!(error = %e, "saving approval requests failed");
                self.lock().approvals_dirty = true;
            }
        }
    }

    /// The agent's effective rules (its policy, the budget narrowed by its own).
    pub fn set_policy(&self, agent: &str, rules: EffectivePolicy) {
        self.lock().policies.insert(agent.to_string(), rules);
    }

    pub fn remove_agent(&self, agent: &str) {
        self.lock().policies.remove(agent);
    }

    /// Counts an answered request against the agent's budget of the day.
    pub fn record_usage(&self, agent: &str, tokens: u64, spend_usd: f64, now_ms: i64) {
        let mut inner = self.lock();
        inner
            .usage
            .entry(agent.to_string())
            .or_insert_with(|| UsageToday::start(now_ms))
            .record(now_ms, tokens, spend_usd);
        inner.dirty = true;
    }

    fn budget_of(inner: &Inner, agent: &str, now_ms: i64) -> BudgetState {
        let Some(rules) = inner.policies.get(agent) else {
            return BudgetState::Ok;
        };
        let usage = inner
            .usage
            .get(agent)
            .cloned()
            .unwrap_or_else(|| UsageToday::start(now_ms));
        policy::budget_state(rules, &usage, now_ms)
    }

    /// Whether the bus serves the agent's next request (checked before forwarding, with the
    /// usage of every answer so far: the request after the one that crossed is refused).
    pub fn admission(&self, agent: &str, now_ms: i64) -> Admission {
        let inner = self.lock();
        policy::admit(agent, &Self::budget_of(&inner, agent, now_ms), now_ms)
    }

    /// `over_budget` drift items: a warning from `warnAtPercent`, an error once over.
    pub fn budget_drift(&self, now_ms: i64) -> Vec<DriftItem> {
        let inner = self.lock();
        let mut items = Vec::new();
        for agent in inner.policies.keys() {
            let (severity, detail) = match Self::budget_of(&inner, agent, now_ms) {
                BudgetState::Ok => continue,
                BudgetState::Warning {
                    dimension,
                    percent,
                    used,
                    limit,
                } => (
                    Severity::Warning,
                    format!("{percent}% of its {dimension} budget used today ({used} of {limit})"),
                ),
                BudgetState::Exceeded {
                    dimension,
                    used,
                    limit,
                    action,
                } => (
                    Severity::Error,
                    format!(
                        "over its {dimension} budget today ({used} of {limit}): {}",
                        serde_json::to_value(action)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default()
                    ),
                ),
            };
            items.push(DriftItem {
                kind: Kind::Agent.to_string(),
                name: agent.clone(),
                drift: Drift::OverBudget,
                corrective: false,
                severity,
                detail,
            });
        }
        items.sort_by(|a, b| a.name.cmp(&b.name));
        items
    }

    /// The gate: may `agent` use `tool` with `args`? A tool that needs approval is allowed once
    /// a person approved that very call (same tool, same arguments), then the approval is used up.
    pub fn gate(&self, agent: &str, tool: &str, args: &Value, now_ms: i64) -> GateAnswer {
        let mut inner = self.lock();
        let Some(rules) = inner.policies.get(agent).cloned() else {
            let decision = GateDecision {
                outcome: GateOutcome::Deny,
                rule: policy::GateRule::NotListed,
                reason: format!("agent `{agent}` has no policy in force: every tool is denied"),
                tool: tool.to_string(),
                risk: None,
                args: args.clone(),
                args_fingerprint: policy::args_fingerprint(args),
            };
            receipt(&inner, agent, "gate-deny", &decision.reason, json!(decision));
            return GateAnswer::Decided(decision);
        };
        let decision = policy::gate(&rules, tool, args);
        if decision.outcome != GateOutcome::NeedsApproval {
            let action = match decision.outcome {
                GateOutcome::Allow => "gate-allow",
                _ => "gate-deny",
            };
            receipt(&inner, agent, action, &decision.reason, json!(decision));
            return GateAnswer::Decided(decision);
        }
        // Expired requests are closed first, so an old approval never authorizes; closed ones
        // are forgotten a TTL after they closed (their receipts stay), so the table stays small.
        let before = inner.approvals.len();
        let mut expired = false;
        for request in inner.approvals.values_mut() {
            if request.is_pending() && now_ms >= request.expires_ms {
                expired |= request.expire(now_ms).is_ok();
            }
        }
        inner.approvals.retain(|_, r| {
            r.is_pending() || closed_at(r).is_none_or(|at| now_ms - at < policy::DEFAULT_APPROVAL_TTL_MS)
        });
        // An agent varying its arguments cannot grow it without bound either: the oldest go.
        while inner.approvals.len() >= MAX_APPROVALS {
            let oldest = inner
                .approvals
                .iter()
                .min_by_key(|(_, r)| r.requested_ms)
                .map(|(id, _)| id.clone());
            match oldest {
                Some(id) => {
                    inner.approvals.remove(&id);
                }
                None => break,
            }
        }
        inner.approvals_dirty |= expired || inner.approvals.len() != before;
        let fingerprint = decision.args_fingerprint.clone();
        let approved = inner
            .approvals
            .iter()
            .find(|(_, r)| r.authorizes(agent, tool, &fingerprint))
            .map(|(id, _)| id.clone());
        if let Some(id) = approved {
            let request = inner.approvals.remove(&id).expect("found above");
            inner.approvals_dirty = true;
            let reason = format!("{}; approved as request {id}", decision.reason);
            receipt(
                &inner,
                agent,
                "gate-allow",
                &reason,
                json!({"decision": decision, "approval": request}),
            );
            return GateAnswer::Decided(GateDecision {
                outcome: GateOutcome::Allow,
                reason,
                ..decision
            });
        }
        let open = inner
            .approvals
            .values()
            .find(|r| r.matches(agent, tool, &fingerprint) && !matches!(r.state, ApprovalState::Expired { .. }))
            .cloned();
        if let Some(request) = open {
            return GateAnswer::Approval(request); // asked again: the same request, no new receipt
        }
        let id = crate::store::new_id();
        let request = ApprovalRequest::new(id.clone(), agent, &decision, now_ms, policy::DEFAULT_APPROVAL_TTL_MS)
            .expect("a needs-approval decision");
        receipt(&inner, agent, "gate-needs-approval", &decision.reason, json!(request));
        inner.approvals.insert(id, request.clone());
        inner.approvals_dirty = true;
        GateAnswer::Approval(request)
    }

    /// A request by id (the agent polls it).
    pub fn approval(&self, agent: &str, id: &str) -> Option<ApprovalRequest> {
        self.lock().approvals.get(id).filter(|r| r.agent == agent).cloned()
    }

    /// Requests waiting for a decision, oldest first.
    pub fn pending(&self, now_ms: i64) -> Vec<ApprovalRequest> {
        let mut pending: Vec<ApprovalRequest> = self
            .lock()
            .approvals
            .values()
            .filter(|r| r.is_pending() && now_ms < r.expires_ms)
            .cloned()
            .collect();
        pending.sort_by_key(|r| r.requested_ms);
        pending
    }

    /// A person's decision on a pending request; a receipt either way.
    pub fn decide(&self, id: &str, approve: bool, by: &str, now_ms: i64) -> Result<ApprovalRequest, String> {
        let mut inner = self.lock();
        let Some(request) = inner.approvals.get_mut(id) else {
            return Err(format!(
                "no approval request {id} (expired ones are kept only until the agent asks again)"
            ));
        };
        let decided = if approve {
            request.approve(by, now_ms)
        } else {
            request.deny(by, now_ms)
        };
        decided.map_err(|e| e.to_string())?;
        let request = request.clone();
        inner.approvals_dirty = true;
        let action = if approve { "approve" } else { "deny" };
        let reason = format!("{action}d by {by}: {} for {}", request.tool, request.agent);
        receipt(&inner, &request.agent, action, &reason, json!(request));
        Ok(request)
    }
}

/// Approval requests kept at most (pending and recently closed).
const MAX_APPROVALS: usize = 10_000;

/// When a request was decided or expired.
fn closed_at(request: &ApprovalRequest) -> Option<i64> {
    match request.state {
        ApprovalState::Pending => None,
        ApprovalState::Approved { at_ms, .. }
        | ApprovalState::Denied { at_ms, .. }
        | ApprovalState::Expired { at_ms } => Some(at_ms),
    }
}

fn receipt(inner: &Inner, agent: &str, action: &str, reason: &str, detail: Value) {
    if let Some(receipts) = &inner.receipts {
        receipts(ReceiptDraft {
            run_id: None,
            commit: None,
            kind: Kind::Agent.to_string(),
            name: agent.to_string(),
            action: action.to_string(),
            reason: reason.to_string(),
            detail: detail.to_string(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::policy::PolicySpec;

    fn rules(yaml_tools: &str, budget_tokens: Option<u64>) -> EffectivePolicy {
        let mut spec: PolicySpec =
            serde_json::from_value(serde_json::json!({"tools": serde_json::from_str::<Value>(yaml_tools).unwrap()}))
                .unwrap();
        spec.budget = budget_tokens.map(|t| crate::spec::common::Budget {
            tokens_per_day: Some(t),
            spend_per_day_usd: None,
        });
        EffectivePolicy::from_spec(&spec)
    }

    fn with_receipts() -> (Governance, Arc<Mutex<Vec<ReceiptDraft>>>) {
        let governance = Governance::default();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        governance.set_receipts(Arc::new(move |r| sink.lock().unwrap().push(r)));
        (governance, seen)
    }

    #[test]
    fn a_high_risk_tool_waits_for_an_approval_that_is_a_receipt_and_is_used_once() {
        let (governance, receipts) = with_receipts();
        governance.set_policy(
            "scribe",
            rules(
                r#"[{"name": "fs.read", "risk": "low"}, {"name": "shell.exec", "risk": "high"}]"#,
                None,
            ),
        );
        let args = json!({"cmd": "ls"});
        assert!(
            matches!(governance.gate("scribe", "fs.read", &args, 0), GateAnswer::Decided(d) if d.outcome == GateOutcome::Allow)
        );
        assert!(
            matches!(governance.gate("scribe", "net.fetch", &args, 0), GateAnswer::Decided(d) if d.outcome == GateOutcome::Deny)
        );
        let GateAnswer::Approval(request) = governance.gate("scribe", "shell.exec", &args, 1_000) else {
            panic!("needs approval")
        };
        assert_eq!(governance.pending(2_000), vec![request.clone()]);
        // Asking again is the same request.
        assert!(
            matches!(governance.gate("scribe", "shell.exec", &args, 2_000), GateAnswer::Approval(r) if r.id == request.id)
        );
        governance.decide(&request.id, true, "alice", 3_000).unwrap();
        assert!(governance.pending(3_000).is_empty());
        assert!(
            matches!(governance.gate("scribe", "shell.exec", &args, 4_000), GateAnswer::Decided(d) if d.outcome == GateOutcome::Allow)
        );
        // Used up: the next call needs a new approval; other arguments never rode on it.
        assert!(
            matches!(governance.gate("scribe", "shell.exec", &args, 5_000), GateAnswer::Approval(r) if r.id != request.id)
        );
        let actions: Vec<String> = receipts.lock().unwrap().iter().map(|r| r.action.clone()).collect();
        assert_eq!(
            actions,
            [
                "gate-allow",
                "gate-deny",
                "gate-needs-approval",
                "approve",
                "gate-allow",
                "gate-needs-approval"
            ]
        );
    }

    #[test]
    fn crossing_the_budget_refuses_the_next_request_and_is_drift() {
        let governance = Governance::default();
        governance.set_policy("scribe", rules("[]", Some(1_000)));
        assert_eq!(governance.admission("scribe", 0), Admission::Serve);
        governance.record_usage("scribe", 850, 0.0, 10);
        assert_eq!(governance.admission("scribe", 20), Admission::Serve);
        let drift = governance.budget_drift(20);
        assert_eq!((drift.len(), drift[0].severity), (1, Severity::Warning), "{drift:?}");
        governance.record_usage("scribe", 200, 0.0, 30);
        let Admission::Refuse429 { body, .. } = governance.admission("scribe", 40) else {
            panic!("over budget: refused")
        };
        assert!(body.to_string().contains("budget"), "{body}");
        assert_eq!(governance.budget_drift(40)[0].severity, Severity::Error);
        // A new UTC day: served again.
        assert_eq!(governance.admission("scribe", policy::DAY_MS + 1), Admission::Serve);
    }

    #[test]
    fn usage_survives_a_restart_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let (usage, approvals) = (dir.path().join("usage.json"), dir.path().join("approvals.json"));
        let first = Governance::default();
        first.persist(usage.clone(), approvals.clone());
        first.record_usage("scribe", 500, 0.5, 1_000);
        first.save();
        let second = Governance::default();
        second.persist(usage, approvals);
        second.set_policy("scribe", rules("[]", Some(400)));
        assert!(matches!(second.admission("scribe", 2_000), Admission::Refuse429 { .. }));
    }

    #[test]
    fn approvals_survive_a_restart_through_their_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (usage, approvals) = (dir.path().join("usage.json"), dir.path().join("approvals.json"));
        let tools = r#"[{"name": "shell.exec", "risk": "high"}]"#;
        let args = json!({"cmd": "rm -rf /tmp/x"});
        // Asked before the restart, approved after it: the call is allowed once.
        let first = Governance::default();
        first.persist(usage.clone(), approvals.clone());
        first.set_policy("scribe", rules(tools, None));
        let GateAnswer::Approval(asked) = first.gate("scribe", "shell.exec", &args, 10) else {
            panic!("a high-risk tool waits for a person")
        };
        first.save();
        assert_eq!(
            std::fs::metadata(&approvals).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let second = Governance::default();
        second.persist(usage.clone(), approvals.clone());
        second.set_policy("scribe", rules(tools, None));
        assert_eq!(second.pending(20).len(), 1, "the pending request is still there");
        second.decide(&asked.id, true, "ops", 30).unwrap();
        second.save();
        // Approved before another restart: the approval is still usable, once.
        let third = Governance::default();
        third.persist(usage, approvals);
        third.set_policy("scribe", rules(tools, None));
        let GateAnswer::Decided(allowed) = third.gate("scribe", "shell.exec", &args, 40) else {
            panic!("the approved call is allowed")
        };
        assert_eq!(allowed.outcome, GateOutcome::Allow);
        assert!(
            matches!(third.gate("scribe", "shell.exec", &args, 50), GateAnswer::Approval(_)),
            "used up"
        );
    }
}
