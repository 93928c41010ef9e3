//! Tests of compiling a Policy: explicit defaults, the canonical hash, per-agent budgets.

use serde_json::json;

use super::*;

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
