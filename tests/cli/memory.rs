//! `mirrorctl memory add|list|search|show|touch|verify|history` through the real binary, on
//! both backends.

use mirrorctl::store::{new_id, MemoryTransition};

use crate::store_contract::TestDb;
use crate::support::{Run, Sandbox};

fn run(sandbox: &Sandbox, db: &TestDb, args: &[&str]) -> Run {
    let mut all: Vec<&str> = vec!["--store", &db.raw_url];
    all.extend_from_slice(args);
    sandbox.run(&all)
}

/// Adds an item; its id.
fn add(sandbox: &Sandbox, db: &TestDb, args: &[&str]) -> String {
    let mut all = vec!["memory", "add", "--output", "json"];
    all.extend_from_slice(args);
    let added = run(sandbox, db, &all);
    assert_eq!(added.code, 0, "{added:?}");
    added.json()["id"].as_str().unwrap().to_string()
}

async fn add_merges_and_show_lists_it(db: TestDb) {
    let sandbox = Sandbox::bare_dir();
    let text = run(
        &sandbox,
        &db,
        &[
            "memory",
            "add",
            "--namespace",
            "notes",
            "--tag",
            "ops",
            "--confidence",
            "0.7",
            "--agent",
            "scribe",
            "Ollama listens on 11434",
        ],
    );
    assert_eq!(text.code, 0, "{text:?}");
    assert!(
        text.stdout.starts_with("added ") && text.stdout.trim_end().ends_with(" to notes"),
        "{}",
        text.stdout
    );
    let id = text.stdout.split_whitespace().nth(1).unwrap().to_string();

    let again = run(
        &sandbox,
        &db,
        &[
            "memory",
            "add",
            "--namespace",
            "notes",
            "--tag",
            "ports",
            "--output",
            "json",
            "Ollama listens on 11434\n",
        ],
    );
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(again.json(), serde_json::json!({"id": id, "merged": true}));
    let other = add(&sandbox, &db, &["--namespace", "team-a", "Ollama listens on 11434"]);
    assert_ne!(other, id);

    let show = run(&sandbox, &db, &["memory", "show", &id]);
    assert_eq!(show.code, 0, "{show:?}");
    for line in [
        "namespace:    notes",
        "tier:         working",
        "source agent: scribe",
        "uses:         1",
        "confidence:   0.70",
        "verified:     no",
        "tags:         ops, ports",
        "content:\n  Ollama listens on 11434",
    ] {
        assert!(show.stdout.contains(line), "{line} missing:\n{}", show.stdout);
    }
    let json = run(&sandbox, &db, &["memory", "show", &id, "--output", "json"]).json();
    assert_eq!(json["id"], id.as_str());
    assert_eq!(json["uses"], 1);
    assert_eq!(json["tags"], serde_json::json!(["ops", "ports"]));
    assert_eq!(json["content_hash"].as_str().unwrap().len(), 64);
    for key in [
        "created_at",
        "last_used_at",
        "confidence",
        "verified",
        "source_agent",
        "tier",
    ] {
        assert!(json.get(key).is_some(), "{key} missing: {json}");
    }

    let list = run(&sandbox, &db, &["memory", "list"]);
    assert_eq!(list.code, 0, "{list:?}");
    let lines: Vec<&str> = list.stdout.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("NAMESPACE"),
        "{}",
        list.stdout
    );
    assert!(
        lines[1].starts_with(&other) && lines[2].starts_with(&id),
        "newest first:\n{}",
        list.stdout
    );
    let json = run(
        &sandbox,
        &db,
        &["memory", "list", "--namespace", "notes", "--output", "json"],
    )
    .json();
    assert_eq!(json["items"].as_array().unwrap().len(), 1);
    let json = run(
        &sandbox,
        &db,
        &["memory", "list", "--namespace", "team-*", "--output", "json"],
    )
    .json();
    assert_eq!(json["items"][0]["id"], other.as_str());
    let json = run(&sandbox, &db, &["memory", "list", "--tag", "ports", "--output", "json"]).json();
    assert_eq!(json["items"][0]["id"], id.as_str());
    let none = run(&sandbox, &db, &["memory", "list", "--tier", "core"]);
    assert_eq!(none.stdout, "no memory items\n");

    let found = run(
        &sandbox,
        &db,
        &[
            "memory",
            "search",
            "--namespace",
            "team-*",
            "OLLAMA",
            "--output",
            "json",
        ],
    )
    .json();
    assert_eq!(found["items"].as_array().unwrap().len(), 1);
    assert_eq!(found["items"][0]["id"], other.as_str());
}

async fn touch_verify_and_history(db: TestDb) {
    let sandbox = Sandbox::bare_dir();
    let id = add(&sandbox, &db, &["--namespace", "notes", "remember the milk"]);
    let touched = run(&sandbox, &db, &["memory", "touch", &id]);
    assert_eq!(touched.code, 0, "{touched:?}");
    assert!(
        touched.stdout.contains(": used 1 time(s), last used "),
        "{}",
        touched.stdout
    );
    let touched = run(&sandbox, &db, &["memory", "touch", &id, "--output", "json"]).json();
    assert_eq!(touched["uses"], 2);

    let verified = run(&sandbox, &db, &["memory", "verify", &id, "--confidence", "0.95"]);
    assert_eq!(verified.code, 0, "{verified:?}");
    assert_eq!(verified.stdout, format!("{id}: verified, confidence 0.95\n"));
    let json = run(&sandbox, &db, &["memory", "verify", &id, "--output", "json"]).json();
    assert_eq!(json["verified"], true);
    assert_eq!(json["confidence"], 0.95);

    let history = run(&sandbox, &db, &["memory", "history", &id]);
    assert_eq!(history.code, 0, "{history:?}");
    assert!(
        history.stdout.contains("  created in working\nnow in working\n"),
        "{}",
        history.stdout
    );
    // A move as a memory rule will record it.
    let store = db.open().await;
    let moved = MemoryTransition {
        id: new_id(),
        item_id: id.clone(),
        from_tier: "working".into(),
        to_tier: "long-term".into(),
        rule: Some("promote-used".into()),
        run_id: Some("run-7".into()),
        at_ms: mirrorctl::report::now_ms(),
    };
    assert!(store.memory_move(&moved).await.unwrap());
    let history = run(&sandbox, &db, &["memory", "history", &id]);
    assert!(
        history
            .stdout
            .contains("  working -> long-term  (rule promote-used, run run-7)\nnow in long-term\n"),
        "{}",
        history.stdout
    );
    let json = run(&sandbox, &db, &["memory", "history", &id, "--output", "json"]).json();
    assert_eq!(json["tier"], "long-term");
    assert_eq!(json["transitions"][0]["rule"], "promote-used");
    assert_eq!(json["transitions"][0]["to_tier"], "long-term");
}

async fn errors_exit_1_and_say_why(db: TestDb) {
    let sandbox = Sandbox::bare_dir();
    for verb in ["show", "touch", "verify", "history"] {
        let missing = run(&sandbox, &db, &["memory", verb, "no-such-item"]);
        assert_eq!(missing.code, 1, "{verb}: {missing:?}");
        assert!(
            missing
                .stderr
                .contains("no memory item with id `no-such-item` in the truth store"),
            "{verb}: {}",
            missing.stderr
        );
    }
    let json = run(&sandbox, &db, &["memory", "show", "no-such-item", "--output", "json"]);
    assert_eq!(json.code, 1);
    assert!(json.json()["error"].as_str().unwrap().contains("no-such-item"));

    let glob = run(&sandbox, &db, &["memory", "add", "--namespace", "team-*", "x"]);
    assert_eq!(glob.code, 1);
    assert!(glob.stderr.contains("may contain neither `*`"), "{}", glob.stderr);
    let confidence = run(
        &sandbox,
        &db,
        &["memory", "add", "--namespace", "a", "--confidence", "1.5", "x"],
    );
    assert_eq!(confidence.code, 1);
    assert!(
        confidence.stderr.contains("outside 0.0 to 1.0"),
        "{}",
        confidence.stderr
    );
    let empty = run(&sandbox, &db, &["memory", "add", "--namespace", "a", "  "]);
    assert_eq!(empty.code, 1);
    assert!(empty.stderr.contains("memory content is empty"), "{}", empty.stderr);
    assert!(!empty.stderr.contains("query failed"), "{}", empty.stderr);
    let usage = run(&sandbox, &db, &["memory", "add", "x"]);
    assert_eq!(usage.code, 1, "a missing --namespace is a usage error: {usage:?}");
    // DESIGN.md's form names the content (`--content TEXT`); the positional form stays.
    let named = run(
        &sandbox,
        &db,
        &[
            "memory",
            "add",
            "--namespace",
            "a",
            "--content",
            "named content",
            "--output",
            "json",
        ],
    );
    assert_eq!(named.code, 0, "{named:?}");
    let id = named.json()["id"].as_str().unwrap().to_string();
    let shown = run(&sandbox, &db, &["memory", "show", &id, "--output", "json"]);
    assert_eq!(shown.json()["content"], "named content", "{shown:?}");
    let both = run(
        &sandbox,
        &db,
        &["memory", "add", "--namespace", "a", "--content", "x", "y"],
    );
    assert_eq!(both.code, 1, "content given twice: {both:?}");
    let none = run(&sandbox, &db, &["memory", "add", "--namespace", "a"]);
    assert_eq!(none.code, 1, "no content: {none:?}");
}

const RULES: &str = "apiVersion: mirror.os/v1
kind: MemoryRule
metadata: {name: promote-used}
spec:
  priority: 10
  match: {tier: working, namespace: \"*\", minUses: 2, verified: true}
  action: promote
---
apiVersion: mirror.os/v1
kind: MemoryRule
metadata: {name: archive-obsolete}
spec:
  priority: 20
  match: {tier: working, namespace: \"team-*\", tags: {any: [obsolete]}}
  action: archive
";

/// `reconcile --dry-run` counts what each rule would move (exit 2) and changes nothing; the
/// apply moves it with a transition per item and a receipt per rule; then nothing is pending.
async fn reconcile_dry_runs_and_applies_memory_rules(db: TestDb) {
    let sandbox = Sandbox::new();
    sandbox.write("rules.yaml", RULES).commit("memory rules");
    let used = add(&sandbox, &db, &["--namespace", "notes", "Ollama listens on 11434"]);
    for verb in ["touch", "touch", "verify"] {
        assert_eq!(run(&sandbox, &db, &["memory", verb, &used]).code, 0);
    }
    let obsolete = add(
        &sandbox,
        &db,
        &["--namespace", "team-a", "--tag", "obsolete", "the old VPN"],
    );
    let untouched = add(&sandbox, &db, &["--namespace", "notes", "nothing to see"]);

    let dry = run(&sandbox, &db, &["reconcile", "--dry-run"]);
    assert_eq!(dry.code, 2, "memory moves are pending changes: {dry:?}");
    assert!(
        dry.stdout
            .contains("↑ MemoryRule/promote-used: promote 1 item(s) working -> long-term"),
        "{}",
        dry.stdout
    );
    assert!(
        dry.stdout.contains(&format!("{used} notes: Ollama listens on 11434")),
        "{}",
        dry.stdout
    );
    assert!(
        dry.stdout
            .contains("⤓ MemoryRule/archive-obsolete: archive 1 item(s) working -> archived"),
        "{}",
        dry.stdout
    );
    assert!(
        dry.stdout.contains("2 memory item(s) to move (dry-run"),
        "{}",
        dry.stdout
    );
    let json = run(&sandbox, &db, &["reconcile", "--dry-run", "--output", "json"]).json();
    let rules = json["memory"]["rules"].as_array().unwrap();
    assert_eq!(rules[0]["rule"], "archive-obsolete", "highest priority first");
    assert_eq!(rules[0]["count"], 1);
    assert_eq!(rules[0]["first"][0]["id"], obsolete.as_str());
    assert_eq!(rules[1]["rule"], "promote-used");
    assert_eq!(rules[1]["to"], "long-term");
    assert_eq!(json["memory"]["applied"], false);
    let shown = run(&sandbox, &db, &["memory", "show", &used, "--output", "json"]).json();
    assert_eq!(shown["tier"], "working", "a dry-run moves nothing");
    // Pending moves are drift: the observe-only report lists them (exit 2).
    let report = run(&sandbox, &db, &["drift", "report", "--output", "json"]);
    assert_eq!(report.code, 2, "{report:?}");
    let pending: Vec<(String, String)> = report.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["drift"] == "memory_pending")
        .map(|i| {
            (
                i["name"].as_str().unwrap().to_string(),
                i["detail"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        pending,
        [
            (
                "archive-obsolete".to_string(),
                "1 item(s) to archive: working -> archived".to_string()
            ),
            (
                "promote-used".to_string(),
                "1 item(s) to promote: working -> long-term".to_string()
            )
        ]
    );

    let apply = run(&sandbox, &db, &["reconcile"]);
    assert_eq!(apply.code, 0, "{apply:?}");
    assert!(
        apply
            .stdout
            .contains("↑ MemoryRule/promote-used: promoted 1 item(s) working -> long-term"),
        "{}",
        apply.stdout
    );
    for (id, tier) in [(&used, "long-term"), (&obsolete, "archived"), (&untouched, "working")] {
        let shown = run(&sandbox, &db, &["memory", "show", id, "--output", "json"]).json();
        assert_eq!(shown["tier"], tier, "{id}");
    }
    let history = run(&sandbox, &db, &["memory", "history", &obsolete]);
    assert!(
        history
            .stdout
            .contains("working -> archived  (rule archive-obsolete, run "),
        "{}",
        history.stdout
    );
    let store = db.open().await;
    let receipts: Vec<_> = store
        .receipts()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.kind == "MemoryRule")
        .map(|r| (r.name, r.action, r.reason))
        .collect();
    assert_eq!(
        receipts.len(),
        2,
        "one receipt per rule that moved something: {receipts:?}"
    );
    assert!(receipts.contains(&(
        "promote-used".into(),
        "promote".into(),
        "1 item(s) matched: working -> long-term".into()
    )));

    let again = run(&sandbox, &db, &["reconcile", "--dry-run"]);
    assert_eq!(again.code, 0, "nothing pending: {again:?}");
    assert!(
        again.stdout.contains("= nothing to move (2 rule(s))"),
        "{}",
        again.stdout
    );
}

/// A memory pass that cannot reach its store fails the apply (exit 1) and says why.
#[test]
fn an_unreachable_store_fails_the_memory_step() {
    let sandbox = Sandbox::new();
    sandbox.write("rules.yaml", RULES).commit("memory rules");
    let apply = sandbox.run(&["--store", "postgres://nobody@127.0.0.1:1/none", "reconcile"]);
    assert_eq!(apply.code, 1, "{apply:?}");
    assert!(
        apply
            .stdout
            .contains("! memory rules not applied: cannot open the truth store"),
        "{}",
        apply.stdout
    );
}

on_both_backends!(
    add_merges_and_show_lists_it,
    touch_verify_and_history,
    errors_exit_1_and_say_why,
    reconcile_dry_runs_and_applies_memory_rules
);
