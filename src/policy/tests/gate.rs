//! Tests of the tool gate: allowed, needs-approval and denied calls by risk.

use serde_json::json;

use super::*;

pub(super) fn gate_policy() -> EffectivePolicy {
    compile(
        "gate",
        &policy_from_yaml(
            "
tools:
  - {name: fs.read, risk: low}
  - {name: fs.write, risk: medium}
  - {name: shell.exec, risk: high}
  - {name: host.reboot, risk: critical}
approvalRequiredAbove: medium
denyAbove: high
",
        ),
    )
    .rules
}

#[test]
fn an_unlisted_tool_is_denied() {
    let decision = gate(&gate_policy(), "net.fetch", &json!({"url": "https://example.com"}));
    assert_eq!(decision.outcome, GateOutcome::Deny);
    assert_eq!(decision.rule, GateRule::NotListed);
    assert_eq!(decision.risk, None);
    assert_eq!(decision.reason, "tool `net.fetch` is not listed in the policy: denied");
    // Names match exactly.
    assert_eq!(gate(&gate_policy(), "FS.READ", &json!({})).rule, GateRule::NotListed);
    assert_eq!(gate(&gate_policy(), "fs.rea", &json!({})).rule, GateRule::NotListed);
    // An empty policy denies everything.
    let empty = compile("empty", &PolicySpec::default()).rules;
    assert_eq!(gate(&empty, "fs.read", &json!({})).outcome, GateOutcome::Deny);
}

#[test]
fn risk_up_to_the_approval_threshold_is_allowed() {
    let policy = gate_policy();
    let low = gate(&policy, "fs.read", &json!({"path": "notes.md"}));
    assert_eq!(
        (low.outcome, low.rule, low.risk),
        (GateOutcome::Allow, GateRule::WithinRisk, Some(Risk::Low))
    );
    assert_eq!(
        low.reason,
        "tool `fs.read` is low risk, not above approvalRequiredAbove (medium): allowed"
    );
    // Exactly at the threshold: "above" is strict.
    let medium = gate(&policy, "fs.write", &json!({}));
    assert_eq!(medium.outcome, GateOutcome::Allow);
    assert!(medium.reason.contains("medium risk"), "{}", medium.reason);
}

#[test]
fn risk_above_the_approval_threshold_needs_approval() {
    let decision = gate(&gate_policy(), "shell.exec", &json!({"argv": ["ls"]}));
    assert_eq!(decision.outcome, GateOutcome::NeedsApproval);
    assert_eq!(decision.rule, GateRule::ApprovalRequiredAbove);
    assert_eq!(decision.risk, Some(Risk::High));
    assert_eq!(
        decision.reason,
        "tool `shell.exec` is high risk, above approvalRequiredAbove (medium): needs approval"
    );
}

#[test]
fn risk_above_deny_is_denied_and_deny_wins_over_approval() {
    let decision = gate(&gate_policy(), "host.reboot", &json!({}));
    assert_eq!(decision.outcome, GateOutcome::Deny);
    assert_eq!(decision.rule, GateRule::DenyAbove);
    assert_eq!(
        decision.reason,
        "tool `host.reboot` is critical risk, above denyAbove (high): denied"
    );
    // denyAbove below approvalRequiredAbove: everything above denyAbove is denied.
    let mut policy = gate_policy();
    policy.deny_above = Risk::Low;
    policy.approval_required_above = Risk::High;
    assert_eq!(gate(&policy, "fs.read", &json!({})).outcome, GateOutcome::Allow);
    assert_eq!(gate(&policy, "fs.write", &json!({})).rule, GateRule::DenyAbove);
}

#[test]
fn by_default_nothing_is_denied_by_risk() {
    let policy = compile("p", &policy_from_yaml("tools: [{name: host.reboot, risk: critical}]")).rules;
    assert_eq!(
        gate(&policy, "host.reboot", &json!({})).outcome,
        GateOutcome::NeedsApproval
    );
    let permissive = compile(
        "p",
        &policy_from_yaml("tools: [{name: host.reboot, risk: critical}]\napprovalRequiredAbove: critical"),
    )
    .rules;
    assert_eq!(gate(&permissive, "host.reboot", &json!({})).outcome, GateOutcome::Allow);
}

#[test]
fn decisions_keep_the_arguments_and_fingerprint_them_canonically() {
    let args = json!({"argv": ["rm", "-rf", "tmp"], "cwd": "/sandbox", "env": {"B": "2", "A": "1"}});
    let decision = gate(&gate_policy(), "shell.exec", &args);
    assert_eq!(decision.args, args);
    assert_eq!(decision.args_fingerprint, args_fingerprint(&args));
    assert_eq!(decision.args_fingerprint.len(), 64);
    let reordered: Value =
        serde_json::from_str(r#"{"env": {"A": "1", "B": "2"}, "cwd": "/sandbox", "argv": ["rm", "-rf", "tmp"]}"#)
            .unwrap();
    assert_eq!(args_fingerprint(&reordered), decision.args_fingerprint);
    let other = json!({"argv": ["rm", "-rf", "/"], "cwd": "/sandbox", "env": {"B": "2", "A": "1"}});
    assert_ne!(args_fingerprint(&other), decision.args_fingerprint);
    // A receipt-ready record.
    let receipt = serde_json::to_value(&decision).unwrap();
    assert_eq!(receipt["outcome"], "needs-approval");
    assert_eq!(receipt["rule"], "approval-required-above");
    assert_eq!(receipt["risk"], "high");
    assert_eq!(receipt["tool"], "shell.exec");
    assert_eq!(receipt["argsFingerprint"], decision.args_fingerprint.as_str());
}

#[test]
fn the_gate_reads_agent_policies_too() {
    let policy = compile("default", &policy_from_yaml(CANONICAL));
    let agent = effective_for_agent(&policy, 1, "archivist", &agent_with_budget(None));
    let via_agent = gate(agent.as_ref(), "shell.exec", &json!({}));
    let via_policy = gate(policy.as_ref(), "shell.exec", &json!({}));
    assert_eq!(via_agent, via_policy);
    assert_eq!(via_agent.outcome, GateOutcome::NeedsApproval);
}
