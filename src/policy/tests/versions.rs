//! Tests of policy versions: the first version, unchanged policies, diffs of changed ones.

use super::*;

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
