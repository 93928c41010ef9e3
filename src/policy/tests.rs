use serde_json::json;

use super::*;
use crate::source::yaml::{decode, parse_documents, FieldPath};

fn policy_from_yaml(text: &str) -> PolicySpec {
    let (documents, error) = parse_documents(text);
    assert!(error.is_none(), "{error:?}");
    decode(&documents[0].root, &FieldPath::default()).expect("a valid policy spec")
}

fn at(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .expect("a valid time")
        .timestamp_millis()
}

/// DESIGN.md §3's canonical Policy.
const CANONICAL: &str = "
cloudEscalation: deny
tools:
  - {name: fs.read, risk: low}
  - {name: shell.exec, risk: high}
approvalRequiredAbove: medium
budget: {tokensPerDay: 500000, spendPerDayUsd: 0}
onBudgetExceeded: suspend      # suspend | local-only | alert
";

fn tool(name: &str, risk: Risk) -> Tool {
    Tool {
        name: name.into(),
        risk,
    }
}

fn agent_with_budget(budget: Option<Budget>) -> AgentSpec {
    AgentSpec {
        command: vec!["python3".into(), "archivist.py".into()],
        policy: Some("default".into()),
        budget,
        ..AgentSpec::default()
    }
}

// ---------------------------------------------------------------------------------------------
// compile

#[test]
fn compile_makes_every_default_explicit() {
    let compiled = compile("empty", &PolicySpec::default());
    assert_eq!(
        compiled.rules,
        EffectivePolicy {
            cloud_escalation: CloudEscalation::Deny,
            tools: vec![],
            approval_required_above: Risk::Medium,
            deny_above: Risk::Critical,
            budget: EffectiveBudget {
                tokens_per_day: None,
                spend_per_day_usd: None,
            },
            on_budget_exceeded: OverBudget::Suspend,
            warn_at_percent: 80,
            network: Default::default(),
            hide_paths: vec![],
        }
    );
    let rules = &compiled.document["rules"];
    assert_eq!(rules["cloudEscalation"], "deny");
    assert_eq!(rules["approvalRequiredAbove"], "medium");
    assert_eq!(rules["denyAbove"], "critical");
    assert_eq!(rules["onBudgetExceeded"], "suspend");
    assert_eq!(rules["warnAtPercent"], 80);
    assert_eq!(rules["tools"], json!([]));
    // Unlimited is said, not omitted.
    assert_eq!(rules["budget"], json!({"tokensPerDay": null, "spendPerDayUsd": null}));
    for field in [
        "cloudEscalation:",
        "approvalRequiredAbove:",
        "denyAbove:",
        "warnAtPercent:",
        "tokensPerDay:",
    ] {
        assert!(compiled.yaml.contains(field), "{field} missing from\n{}", compiled.yaml);
    }
}

#[test]
fn defaults_written_out_hash_like_defaults_left_out() {
    let implicit = policy_from_yaml("tools: [{name: fs.read, risk: low}]");
    let explicit = policy_from_yaml(
        "
cloudEscalation: deny
tools: [{name: fs.read, risk: low}]
approvalRequiredAbove: medium
denyAbove: critical
onBudgetExceeded: suspend
warnAtPercent: 80
budget: {}
",
    );
    assert_eq!(compile("p", &implicit).hash, compile("p", &explicit).hash);
    assert_eq!(compile("p", &implicit).yaml, compile("p", &explicit).yaml);
}

#[test]
fn hash_ignores_field_order_tool_order_and_yaml_formatting() {
    let block = compile("default", &policy_from_yaml(CANONICAL));
    let reordered = compile(
        "default",
        &policy_from_yaml(
            "
# the same policy, written differently
onBudgetExceeded: suspend
budget:
  spendPerDayUsd: 0.0
  tokensPerDay: 500000
tools:
  - risk: high
    name: shell.exec
  - name: fs.read
    risk: low
approvalRequiredAbove: medium
cloudEscalation: deny
",
        ),
    );
    assert_eq!(block.hash, reordered.hash);
    assert_eq!(block.document, reordered.document);
    assert_eq!(block.yaml, reordered.yaml);
    assert_eq!(block.hash.len(), 64);
    assert!(block
        .hash
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    let names: Vec<&str> = block.rules.tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["fs.read", "shell.exec"]);
}

#[test]
fn hash_is_sha256_of_the_canonical_rules() {
    let compiled = compile("default", &policy_from_yaml(CANONICAL));
    let rules = serde_json::to_value(&compiled.rules).unwrap();
    assert_eq!(compiled.hash, hex::encode(Sha256::digest(canonical_json(&rules))));
    let text = String::from_utf8(canonical_json(&rules)).unwrap();
    assert!(
        text.starts_with(r#"{"approvalRequiredAbove":"medium","budget":{"spendPerDayUsd":0.0,"tokensPerDay":500000},"#),
        "{text}"
    );
    assert_eq!(compiled.document["hash"], compiled.hash.as_str());
    assert_eq!(compiled.document["policy"], "default");
    assert_eq!(compiled.document["format"], COMPILED_POLICY_FORMAT);
}

#[test]
fn any_change_of_content_changes_the_hash_but_the_name_does_not() {
    let base = policy_from_yaml(CANONICAL);
    let hash = compile("default", &base).hash;
    assert_eq!(compile("renamed", &base).hash, hash, "the hash covers the rules only");
    let mut changes = Vec::new();
    let mut s = base.clone();
    s.tools[1].risk = Risk::Critical;
    changes.push(s);
    let mut s = base.clone();
    s.tools.push(tool("net.fetch", Risk::Medium));
    changes.push(s);
    let mut s = base.clone();
    s.cloud_escalation = CloudEscalation::Allow;
    changes.push(s);
    let mut s = base.clone();
    s.approval_required_above = Some(Risk::Low);
    changes.push(s);
    let mut s = base.clone();
    s.deny_above = Some(Risk::High);
    changes.push(s);
    let mut s = base.clone();
    s.on_budget_exceeded = OverBudget::LocalOnly;
    changes.push(s);
    let mut s = base.clone();
    s.warn_at_percent = Some(90);
    changes.push(s);
    let mut s = base.clone();
    s.budget = Some(Budget {
        tokens_per_day: Some(500001),
        spend_per_day_usd: Some(0.0),
    });
    changes.push(s);
    let mut s = base;
    s.budget = None;
    changes.push(s);
    let mut hashes: Vec<String> = changes.iter().map(|s| compile("default", s).hash).collect();
    hashes.push(hash);
    let count = hashes.len();
    hashes.sort();
    hashes.dedup();
    assert_eq!(hashes.len(), count, "every change gives a new hash");
}

#[test]
fn duplicate_tools_collapse_to_the_riskiest() {
    // Validation rejects duplicates; compile must still never make a tool less guarded.
    let spec = PolicySpec {
        tools: vec![
            tool("shell.exec", Risk::Low),
            tool("fs.read", Risk::Low),
            tool("shell.exec", Risk::Critical),
            tool("shell.exec", Risk::Medium),
        ],
        ..PolicySpec::default()
    };
    let compiled = compile("p", &spec);
    assert_eq!(
        compiled.rules.tools,
        vec![tool("fs.read", Risk::Low), tool("shell.exec", Risk::Critical)]
    );
}

#[test]
fn negative_zero_spend_hashes_like_zero() {
    let with = |usd: f64| PolicySpec {
        budget: Some(Budget {
            tokens_per_day: None,
            spend_per_day_usd: Some(usd),
        }),
        ..PolicySpec::default()
    };
    assert_eq!(compile("p", &with(-0.0)).hash, compile("p", &with(0.0)).hash);
}

#[test]
fn canonical_json_sorts_keys_at_every_level() {
    let a = json!({"b": 1, "a": {"z": [ {"y": 1, "x": 2} ], "c": null}});
    assert_eq!(
        String::from_utf8(canonical_json(&a)).unwrap(),
        r#"{"a":{"c":null,"z":[{"x":2,"y":1}]},"b":1}"#
    );
}

// ---------------------------------------------------------------------------------------------
// per agent

#[test]
fn the_tighter_budget_wins_per_dimension() {
    let policy = compile("default", &policy_from_yaml(CANONICAL));
    // Agent tighter on tokens; policy's spend (0) kept because the agent sets none.
    let agent = agent_with_budget(Some(Budget {
        tokens_per_day: Some(200_000),
        spend_per_day_usd: None,
    }));
    let effective = effective_for_agent(&policy, 3, "archivist", &agent);
    assert_eq!(
        effective.rules.budget,
        EffectiveBudget {
            tokens_per_day: Some(200_000),
            spend_per_day_usd: Some(0.0),
        }
    );
    // Policy tighter on tokens, agent tighter on spend.
    let policy = compile(
        "p",
        &policy_from_yaml("budget: {tokensPerDay: 1000, spendPerDayUsd: 5}"),
    );
    let agent = agent_with_budget(Some(Budget {
        tokens_per_day: Some(2000),
        spend_per_day_usd: Some(1.5),
    }));
    let effective = effective_for_agent(&policy, 1, "a", &agent);
    assert_eq!(effective.rules.budget.tokens_per_day, Some(1000));
    assert_eq!(effective.rules.budget.spend_per_day_usd, Some(1.5));
    // No budget on either side: unlimited.
    let policy = compile("p", &PolicySpec::default());
    let effective = effective_for_agent(&policy, 1, "a", &agent_with_budget(None));
    assert!(effective.rules.budget.is_unlimited());
    // Agent-only budget applies.
    let agent = agent_with_budget(Some(Budget {
        tokens_per_day: None,
        spend_per_day_usd: Some(2.0),
    }));
    let effective = effective_for_agent(&policy, 1, "a", &agent);
    assert_eq!(
        effective.rules.budget,
        EffectiveBudget {
            tokens_per_day: None,
            spend_per_day_usd: Some(2.0),
        }
    );
}

#[test]
fn the_agent_document_names_agent_and_policy_version() {
    let policy = compile("default", &policy_from_yaml(CANONICAL));
    let agent = agent_with_budget(Some(Budget {
        tokens_per_day: Some(200_000),
        spend_per_day_usd: None,
    }));
    let effective = effective_for_agent(&policy, 4, "archivist", &agent);
    assert_eq!(effective.policy.version, 4);
    assert_eq!(effective.policy.hash, policy.hash);
    // Everything but the budget is the policy's.
    let mut expected = policy.rules.clone();
    expected.budget.tokens_per_day = Some(200_000);
    assert_eq!(effective.rules, expected);

    let text = effective.file_text();
    assert!(text.ends_with("}\n"));
    let read: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(read["format"], AGENT_POLICY_FORMAT);
    assert_eq!(read["agent"], "archivist");
    assert_eq!(
        read["policy"],
        json!({"name": "default", "version": 4, "hash": policy.hash})
    );
    assert_eq!(read["rules"]["budget"]["tokensPerDay"], 200_000);
    assert_eq!(read["rules"]["tools"][1], json!({"name": "shell.exec", "risk": "high"}));
    // Keys are written sorted: the file's bytes depend only on its content.
    assert!(text.find("\"agent\"").unwrap() < text.find("\"format\"").unwrap());

    // The agent's hash follows the agent's budget, the version and the policy.
    let same = effective_for_agent(&policy, 4, "archivist", &agent);
    assert_eq!(same.hash, effective.hash);
    let other_budget = effective_for_agent(
        &policy,
        4,
        "archivist",
        &agent_with_budget(Some(Budget {
            tokens_per_day: Some(100_000),
            spend_per_day_usd: None,
        })),
    );
    assert_ne!(other_budget.hash, effective.hash);
    assert_ne!(
        effective_for_agent(&policy, 5, "archivist", &agent).hash,
        effective.hash
    );
    // A budget looser than the policy's changes nothing effective.
    let loose = effective_for_agent(
        &policy,
        4,
        "archivist",
        &agent_with_budget(Some(Budget {
            tokens_per_day: Some(900_000),
            spend_per_day_usd: Some(10.0),
        })),
    );
    assert_eq!(loose.rules, policy.rules);
}

// ---------------------------------------------------------------------------------------------
// versions

#[test]
fn the_first_version_is_1_with_every_line_added() {
    let compiled = compile("default", &policy_from_yaml(CANONICAL));
    let first = next_version(None, &compiled).expect("a first version");
    assert_eq!(first.version, 1);
    assert_eq!(first.previous_version, None);
    assert_eq!(first.hash, compiled.hash);
    assert_eq!(first.yaml, compiled.yaml);
    let mut lines = first.diff.lines();
    assert_eq!(lines.next(), Some("--- Policy/default (no version)"));
    assert_eq!(lines.next(), Some("+++ Policy/default (version 1)"));
    assert!(lines.next().unwrap().starts_with("@@ -0,0 +1,"));
    assert!(lines.all(|l| l.starts_with('+')), "{}", first.diff);
    assert!(
        first.diff.contains("+  approvalRequiredAbove: medium\n"),
        "{}",
        first.diff
    );
    let stored = first.stored();
    assert_eq!(
        stored,
        StoredVersion {
            name: "default".into(),
            version: 1,
            hash: compiled.hash.clone(),
            yaml: compiled.yaml.clone(),
        }
    );
}

#[test]
fn an_unchanged_policy_makes_no_version() {
    let compiled = compile("default", &policy_from_yaml(CANONICAL));
    let stored = next_version(None, &compiled).unwrap().stored();
    assert_eq!(next_version(Some(&stored), &compiled), None);
    // Reformatted, reordered: still the same policy.
    let reformatted = compile(
        "default",
        &policy_from_yaml(
            "{onBudgetExceeded: suspend, tools: [{risk: high, name: shell.exec}, {name: fs.read, risk: low}], \
             budget: {tokensPerDay: 500000, spendPerDayUsd: 0}}",
        ),
    );
    assert_eq!(next_version(Some(&stored), &reformatted), None);
}

#[test]
fn a_changed_policy_makes_the_next_version_with_its_diff() {
    let v1 = compile("default", &policy_from_yaml(CANONICAL));
    let stored = StoredVersion {
        name: "default".into(),
        version: 7,
        hash: v1.hash.clone(),
        yaml: v1.yaml.clone(),
    };
    let mut spec = policy_from_yaml(CANONICAL);
    spec.approval_required_above = Some(Risk::Low);
    spec.tools.push(tool("net.fetch", Risk::Medium));
    let v2 = compile("default", &spec);
    let next = next_version(Some(&stored), &v2).expect("a new version");
    assert_eq!(next.version, 8);
    assert_eq!(next.previous_version, Some(7));
    assert_eq!(next.hash, v2.hash);
    let diff = &next.diff;
    assert!(
        diff.starts_with("--- Policy/default (version 7)\n+++ Policy/default (version 8)\n"),
        "{diff}"
    );
    assert!(diff.contains("\n-  approvalRequiredAbove: medium\n"), "{diff}");
    assert!(diff.contains("\n+  approvalRequiredAbove: low\n"), "{diff}");
    assert!(diff.contains("\n+  - name: net.fetch\n+    risk: medium\n"), "{diff}");
    assert!(diff.contains(&format!("\n-hash: {}\n", v1.hash)), "{diff}");
    assert!(diff.contains(&format!("\n+hash: {}\n", v2.hash)), "{diff}");
    // Unchanged lines are context, not changes.
    assert!(diff.contains("\n   - name: fs.read\n"), "{diff}");
    assert!(!diff.contains("-  cloudEscalation"), "{diff}");

    // And the chain continues from what was recorded.
    let stored = next.stored();
    assert_eq!(next_version(Some(&stored), &v2), None);
    let back = next_version(Some(&stored), &v1).unwrap();
    assert_eq!(back.version, 9, "going back to old content is a new version");
    assert!(back
        .diff
        .starts_with("--- Policy/default (version 8)\n+++ Policy/default (version 9)\n"));
}

#[test]
fn versions_serialize_for_the_inventory() {
    let compiled = compile("default", &policy_from_yaml(CANONICAL));
    let stored = next_version(None, &compiled).unwrap().stored();
    let text = serde_json::to_string(&stored).unwrap();
    assert_eq!(serde_json::from_str::<StoredVersion>(&text).unwrap(), stored);
}

// ---------------------------------------------------------------------------------------------
// gate

fn gate_policy() -> EffectivePolicy {
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

// ---------------------------------------------------------------------------------------------
// approvals

const HOUR_MS: i64 = 3_600_000;

fn pending() -> ApprovalRequest {
    let decision = gate(&gate_policy(), "shell.exec", &json!({"argv": ["make"]}));
    ApprovalRequest::new("0193-req", "archivist", &decision, 1_000, HOUR_MS).unwrap()
}

#[test]
fn only_needs_approval_decisions_become_requests() {
    for tool in ["fs.read", "host.reboot", "net.fetch"] {
        let decision = gate(&gate_policy(), tool, &json!({}));
        let error = ApprovalRequest::new("id", "a", &decision, 0, HOUR_MS).unwrap_err();
        assert!(matches!(error, ApprovalError::NotNeeded { .. }), "{tool}: {error}");
    }
    let request = pending();
    assert_eq!(request.state, ApprovalState::Pending);
    assert_eq!(request.risk, Risk::High);
    assert_eq!(request.expires_ms, 1_000 + HOUR_MS);
    assert_eq!(request.args, json!({"argv": ["make"]}));
    assert!(request.reason.contains("needs approval"));
}

#[test]
fn approving_a_pending_request_authorizes_exactly_that_call() {
    let mut request = pending();
    let fingerprint = request.args_fingerprint.clone();
    assert!(
        !request.authorizes("archivist", "shell.exec", &fingerprint),
        "pending authorizes nothing"
    );
    request.approve("alice", 2_000).unwrap();
    assert_eq!(
        request.state,
        ApprovalState::Approved {
            by: "alice".into(),
            at_ms: 2_000
        }
    );
    assert!(request.authorizes("archivist", "shell.exec", &fingerprint));
    assert!(!request.authorizes("other-agent", "shell.exec", &fingerprint));
    assert!(!request.authorizes("archivist", "fs.write", &fingerprint));
    assert!(!request.authorizes("archivist", "shell.exec", &args_fingerprint(&json!({"argv": ["rm"]}))));
}

#[test]
fn a_decided_request_cannot_be_decided_again() {
    let mut approved = pending();
    approved.approve("alice", 2_000).unwrap();
    let error = approved.approve("bob", 3_000).unwrap_err();
    assert_eq!(
        error,
        ApprovalError::AlreadyDecided {
            id: "0193-req".into(),
            state: "approved".into()
        }
    );
    assert_eq!(error.to_string(), "approval request 0193-req is already approved");
    assert!(approved.deny("bob", 3_000).is_err());
    assert!(approved.expire(HOUR_MS * 2).is_err());
    assert!(matches!(approved.state, ApprovalState::Approved { ref by, .. } if by == "alice"));

    let mut denied = pending();
    denied.deny("bob", 2_000).unwrap();
    assert_eq!(
        denied.state,
        ApprovalState::Denied {
            by: "bob".into(),
            at_ms: 2_000
        }
    );
    let error = denied.approve("alice", 2_500).unwrap_err();
    assert_eq!(error.to_string(), "approval request 0193-req is already denied");
    assert!(!denied.authorizes("archivist", "shell.exec", &denied.args_fingerprint.clone()));
}

#[test]
fn requests_expire_at_their_deadline() {
    let mut request = pending();
    let deadline = request.expires_ms;
    assert_eq!(
        request.expire(deadline - 1),
        Err(ApprovalError::NotYetExpired {
            id: "0193-req".into(),
            expires_ms: deadline
        })
    );
    // At the deadline it can no longer be approved or denied, only expired.
    assert_eq!(
        request.clone().approve("alice", deadline),
        Err(ApprovalError::Expired {
            id: "0193-req".into(),
            expires_ms: deadline
        })
    );
    assert!(matches!(
        request.clone().deny("bob", deadline),
        Err(ApprovalError::Expired { .. })
    ));
    assert!(request.clone().approve("alice", deadline - 1).is_ok());
    request.expire(deadline).unwrap();
    assert_eq!(request.state, ApprovalState::Expired { at_ms: deadline });
    assert_eq!(
        request.approve("alice", deadline + 1).unwrap_err().to_string(),
        "approval request 0193-req is already expired"
    );
}

#[test]
fn requests_serialize_for_the_store() {
    let mut request = pending();
    request.approve("alice", 2_000).unwrap();
    let value = serde_json::to_value(&request).unwrap();
    assert_eq!(
        value["state"],
        json!({"state": "approved", "by": "alice", "atMs": 2000})
    );
    assert_eq!(value["argsFingerprint"], request.args_fingerprint.as_str());
    assert_eq!(serde_json::from_value::<ApprovalRequest>(value).unwrap(), request);
}

// ---------------------------------------------------------------------------------------------
// days and usage

#[test]
fn days_are_utc_days() {
    assert_eq!(day_of(0), DayKey(0));
    assert_eq!(day_of(DAY_MS - 1), DayKey(0));
    assert_eq!(day_of(DAY_MS), DayKey(1));
    assert_eq!(day_of(-1), DayKey(-1));
    assert_eq!(DayKey(-1).to_string(), "1969-12-31");
    assert_eq!(DayKey(0).to_string(), "1970-01-01");
    let morning = at("2026-11-24T08:27:00Z");
    assert_eq!(day_of(morning).to_string(), "2026-11-24");
    assert_eq!(day_of(at("2026-11-24T23:59:59.999Z")), day_of(morning));
    assert_eq!(day_of(at("2026-11-25T00:00:00Z")).to_string(), "2026-11-25");
    // Local offsets do not move the boundary: 01:00+02:00 is 23:00 UTC the day before.
    assert_eq!(day_of(at("2026-11-25T01:00:00+02:00")).to_string(), "2026-11-24");
    assert_eq!(next_day_start_ms(morning), at("2026-11-25T00:00:00Z"));
    assert_eq!(
        next_day_start_ms(at("2026-11-25T00:00:00Z")),
        at("2026-11-26T00:00:00Z")
    );
}

#[test]
fn usage_adds_up_within_a_day_and_restarts_the_next() {
    let morning = at("2026-11-24T08:00:00Z");
    let mut usage = UsageToday::start(morning);
    assert!(usage.record(morning + 1, 100, 0.25));
    assert!(usage.record(at("2026-11-24T23:59:59Z"), 50, 0.25));
    assert_eq!((usage.tokens, usage.spend_usd), (150, 0.5));
    // Read the next day, it is zero; the stored value is untouched.
    let tomorrow = at("2026-11-25T00:00:00Z");
    assert_eq!(usage.as_of(tomorrow), UsageToday::start(tomorrow));
    assert_eq!(usage.as_of(morning).tokens, 150);
    // The first answer of the next day starts a new count.
    assert!(usage.record(tomorrow + 5, 7, 0.0));
    assert_eq!(usage.day.to_string(), "2026-11-25");
    assert_eq!((usage.tokens, usage.spend_usd), (7, 0.0));
    // An answer of a day already over is not counted against today.
    assert!(!usage.record(at("2026-11-24T23:59:00Z"), 1_000, 1.0));
    assert_eq!(usage.tokens, 7);
    // Bad charges never refund.
    assert!(usage.record(tomorrow + 6, 0, -5.0));
    assert!(usage.record(tomorrow + 7, 0, f64::NAN));
    assert_eq!(usage.spend_usd, 0.0);
    usage.record(tomorrow + 8, u64::MAX, 0.0);
    assert_eq!(usage.tokens, u64::MAX, "saturates");
}

// ---------------------------------------------------------------------------------------------
// budget states

fn usage(tokens: u64, spend_usd: f64) -> UsageToday {
    UsageToday {
        day: DayKey(0),
        tokens,
        spend_usd,
    }
}

fn limits(tokens: Option<u64>, spend: Option<f64>) -> EffectiveBudget {
    EffectiveBudget {
        tokens_per_day: tokens,
        spend_per_day_usd: spend,
    }
}

fn state(limit: &EffectiveBudget, used: &UsageToday) -> BudgetState {
    budget_state_of(limit, 80, OverBudget::Suspend, used)
}

#[test]
fn no_budget_is_always_ok() {
    assert_eq!(state(&limits(None, None), &usage(u64::MAX, 1e12)), BudgetState::Ok);
}

#[test]
fn token_budget_boundaries_at_80_and_100_percent() {
    let limit = limits(Some(1000), None);
    assert_eq!(state(&limit, &usage(0, 0.0)), BudgetState::Ok);
    assert_eq!(state(&limit, &usage(799, 0.0)), BudgetState::Ok);
    let warning = |percent, used| BudgetState::Warning {
        dimension: BudgetDimension::Tokens,
        percent,
        used: BudgetAmount::Tokens(used),
        limit: BudgetAmount::Tokens(1000),
    };
    assert_eq!(state(&limit, &usage(800, 0.0)), warning(80, 800));
    assert_eq!(state(&limit, &usage(999, 0.0)), warning(99, 999));
    // At the limit is not over it.
    assert_eq!(state(&limit, &usage(1000, 0.0)), warning(100, 1000));
    assert_eq!(
        state(&limit, &usage(1001, 0.0)),
        BudgetState::Exceeded {
            dimension: BudgetDimension::Tokens,
            used: BudgetAmount::Tokens(1001),
            limit: BudgetAmount::Tokens(1000),
            action: OverBudget::Suspend,
        }
    );
    // Spend is not limited here, however large.
    assert_eq!(state(&limit, &usage(0, 1e9)), BudgetState::Ok);
}

#[test]
fn spend_budget_boundaries_are_exact_in_cents() {
    let limit = limits(None, Some(1.0));
    assert_eq!(state(&limit, &usage(0, 0.79)), BudgetState::Ok);
    // 0.1 + 0.7 is 0.7999999999999999 in binary floating point: still 80 %.
    let eighty = 0.1 + 0.7;
    assert_ne!(eighty, 0.8);
    assert!(matches!(
        state(&limit, &usage(0, eighty)),
        BudgetState::Warning {
            dimension: BudgetDimension::SpendUsd,
            percent: 80,
            ..
        }
    ));
    assert!(matches!(
        state(&limit, &usage(0, 1.0)),
        BudgetState::Warning { percent: 100, .. }
    ));
    assert_eq!(
        state(&limit, &usage(0, 1.01)),
        BudgetState::Exceeded {
            dimension: BudgetDimension::SpendUsd,
            used: BudgetAmount::Usd(1.01),
            limit: BudgetAmount::Usd(1.0),
            action: OverBudget::Suspend,
        }
    );
    assert_eq!(state(&limit, &usage(u64::MAX, 0.0)), BudgetState::Ok);
}

#[test]
fn a_zero_spend_budget_allows_only_free_models() {
    let limit = limits(Some(500_000), Some(0.0));
    assert_eq!(state(&limit, &usage(1000, 0.0)), BudgetState::Ok);
    assert!(matches!(
        state(&limit, &usage(1000, 0.000_001)),
        BudgetState::Exceeded {
            dimension: BudgetDimension::SpendUsd,
            ..
        }
    ));
    assert_eq!(state(&limits(Some(0), None), &usage(0, 0.0)), BudgetState::Ok);
    assert!(matches!(
        state(&limits(Some(0), None), &usage(1, 0.0)),
        BudgetState::Exceeded { .. }
    ));
}

#[test]
fn with_both_dimensions_the_worse_one_is_reported() {
    let limit = limits(Some(1000), Some(10.0));
    // Both in warning: the higher percentage.
    assert!(matches!(
        state(&limit, &usage(850, 9.0)),
        BudgetState::Warning {
            dimension: BudgetDimension::SpendUsd,
            percent: 90,
            ..
        }
    ));
    assert!(matches!(
        state(&limit, &usage(950, 9.0)),
        BudgetState::Warning {
            dimension: BudgetDimension::Tokens,
            percent: 95,
            ..
        }
    ));
    // A tie: tokens.
    assert!(matches!(
        state(&limit, &usage(900, 9.0)),
        BudgetState::Warning {
            dimension: BudgetDimension::Tokens,
            percent: 90,
            ..
        }
    ));
    // Over beats warning, whichever dimension.
    assert!(matches!(
        state(&limit, &usage(950, 10.5)),
        BudgetState::Exceeded {
            dimension: BudgetDimension::SpendUsd,
            ..
        }
    ));
    assert!(matches!(
        state(&limit, &usage(1001, 1.0)),
        BudgetState::Exceeded {
            dimension: BudgetDimension::Tokens,
            ..
        }
    ));
    // Both over: tokens.
    assert!(matches!(
        state(&limit, &usage(2000, 20.0)),
        BudgetState::Exceeded {
            dimension: BudgetDimension::Tokens,
            ..
        }
    ));
}

#[test]
fn the_warning_threshold_and_action_come_from_the_policy() {
    let policy = compile(
        "p",
        &policy_from_yaml("budget: {tokensPerDay: 1000}\nwarnAtPercent: 95\nonBudgetExceeded: local-only"),
    );
    let now = at("2026-11-24T12:00:00Z");
    let mut used = UsageToday::start(now);
    used.record(now, 940, 0.0);
    assert_eq!(budget_state(&policy.rules, &used, now), BudgetState::Ok);
    used.record(now, 10, 0.0);
    assert!(matches!(
        budget_state(&policy.rules, &used, now),
        BudgetState::Warning { percent: 95, .. }
    ));
    used.record(now, 51, 0.0);
    assert!(matches!(
        budget_state(&policy.rules, &used, now),
        BudgetState::Exceeded {
            action: OverBudget::LocalOnly,
            ..
        }
    ));
}

#[test]
fn budgets_reset_at_the_day_boundary() {
    let policy = compile("p", &policy_from_yaml("budget: {tokensPerDay: 1000}"));
    let late = at("2026-11-24T23:59:59.999Z");
    let mut used = UsageToday::start(late);
    used.record(late, 5000, 0.0);
    assert!(matches!(
        budget_state(&policy.rules, &used, late),
        BudgetState::Exceeded { .. }
    ));
    assert_eq!(budget_state(&policy.rules, &used, late + 1), BudgetState::Ok);
}

// ---------------------------------------------------------------------------------------------
// admission

fn exceeded(action: OverBudget) -> BudgetState {
    BudgetState::Exceeded {
        dimension: BudgetDimension::Tokens,
        used: BudgetAmount::Tokens(200_123),
        limit: BudgetAmount::Tokens(200_000),
        action,
    }
}

#[test]
fn admission_follows_the_over_budget_action() {
    let now = at("2026-11-24T08:30:00Z");
    assert_eq!(admit("a", &BudgetState::Ok, now), Admission::Serve);
    let warning = BudgetState::Warning {
        dimension: BudgetDimension::Tokens,
        percent: 85,
        used: BudgetAmount::Tokens(850),
        limit: BudgetAmount::Tokens(1000),
    };
    assert_eq!(admit("a", &warning, now), Admission::Serve);
    assert_eq!(admit("a", &exceeded(OverBudget::Alert), now), Admission::Serve);
    assert_eq!(
        admit("a", &exceeded(OverBudget::LocalOnly), now),
        Admission::ServeLocalOnly
    );
    assert!(matches!(
        admit("a", &exceeded(OverBudget::Suspend), now),
        Admission::Refuse429 { .. }
    ));
}

#[test]
fn the_429_body_names_the_budget_and_when_it_resets() {
    let now = at("2026-11-24T23:59:58.500Z");
    let Admission::Refuse429 { body, retry_after_secs } = admit("archivist", &exceeded(OverBudget::Suspend), now)
    else {
        panic!("expected a refusal");
    };
    assert_eq!(retry_after_secs, 2, "1.5 s rounded up");
    let error = &body["error"];
    assert_eq!(error["type"], "budget_exceeded");
    assert_eq!(error["code"], "budget_exceeded");
    assert_eq!(error["agent"], "archivist");
    assert_eq!(error["budget"], "tokensPerDay");
    assert_eq!(error["used"], 200_123);
    assert_eq!(error["limit"], 200_000);
    assert_eq!(error["day"], "2026-11-24");
    assert_eq!(error["resetsAt"], "2026-11-25T00:00:00Z");
    assert_eq!(
        error["message"],
        "agent `archivist` is over its tokensPerDay budget: 200123 tokens used of 200000 tokens on 2026-11-24 (UTC); \
         it resets at 2026-11-25T00:00:00Z"
    );

    let spend = BudgetState::Exceeded {
        dimension: BudgetDimension::SpendUsd,
        used: BudgetAmount::Usd(1.25),
        limit: BudgetAmount::Usd(1.0),
        action: OverBudget::Suspend,
    };
    let Admission::Refuse429 { body, retry_after_secs } = admit("archivist", &spend, at("2026-11-24T00:00:00Z")) else {
        panic!("expected a refusal");
    };
    assert_eq!(retry_after_secs, 86_400);
    assert_eq!(body["error"]["budget"], "spendPerDayUsd");
    assert_eq!(body["error"]["used"], 1.25);
    assert_eq!(body["error"]["limit"], 1.0);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("$1.25 used of $1.00"));
}

#[test]
fn the_request_after_the_crossing_one_is_refused() {
    // What the bus does: check before forwarding, meter after answering.
    let policy = compile("p", &policy_from_yaml("budget: {tokensPerDay: 1000}"));
    let start = at("2026-11-24T10:00:00Z");
    let mut used = UsageToday::start(start);
    let mut served = 0;
    let mut states = Vec::new();
    for i in 0..10 {
        let now = start + i * 1000;
        let state = budget_state(&policy.rules, &used, now);
        if let Admission::Refuse429 { .. } = admit("a", &state, now) {
            states.push(state);
            break;
        }
        served += 1;
        used.record(now + 500, 300, 0.0);
        states.push(state);
    }
    // 0, 300, 600, 900 (warning) are below or at the limit: served; 1200 is over: refused.
    assert_eq!(served, 4);
    assert!(matches!(states[3], BudgetState::Warning { percent: 90, .. }));
    assert!(matches!(states[4], BudgetState::Exceeded { .. }));
    // The next day it serves again.
    let tomorrow = at("2026-11-25T00:00:00Z");
    assert_eq!(
        admit("a", &budget_state(&policy.rules, &used, tomorrow), tomorrow),
        Admission::Serve
    );
}

#[test]
fn cloud_routes_need_the_policy_and_the_budget() {
    let local_first = compile("p", &policy_from_yaml(CANONICAL)).rules;
    assert!(local_first.may_route_to(true, &Admission::Serve));
    assert!(!local_first.may_route_to(false, &Admission::Serve));
    let cloud = compile("p", &policy_from_yaml("cloudEscalation: allow")).rules;
    assert!(cloud.may_route_to(false, &Admission::Serve));
    assert!(!cloud.may_route_to(false, &Admission::ServeLocalOnly));
    assert!(cloud.may_route_to(true, &Admission::ServeLocalOnly));
}

#[test]
fn budget_states_serialize_for_drift_items() {
    let value = serde_json::to_value(exceeded(OverBudget::LocalOnly)).unwrap();
    assert_eq!(
        value,
        json!({"state": "exceeded", "dimension": "tokensPerDay", "used": 200123, "limit": 200000, "action": "local-only"})
    );
    assert_eq!(serde_json::to_value(BudgetState::Ok).unwrap(), json!({"state": "ok"}));
}
