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
}

on_both_backends!(
    add_merges_and_show_lists_it,
    touch_verify_and_history,
    errors_exit_1_and_say_why
);
