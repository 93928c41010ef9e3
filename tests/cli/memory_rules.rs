//! Memory rules over the truth store, on both backends: each condition and action, priority,
//! one move per item per pass, idempotence, transitions, and (PostgreSQL) two hosts at once.

use std::collections::BTreeSet;

use mirrorctl::spec::memory_rule::MemoryAction;
use mirrorctl::store::memory_rules::{ordered, MemoryPass, PassRule, RuleMoves, ADVISORY_LOCK_KEY};
use mirrorctl::store::{new_id, MemoryFilter, NewMemory, Store};
use serde_json::json;

use crate::store_contract::TestDb;

const DAY: i64 = 86_400_000;
const NOW: i64 = 1_000 * DAY;

struct Item {
    name: &'static str,
    namespace: &'static str,
    tier: &'static str,
    tags: &'static [&'static str],
    confidence: f64,
    created_days_ago: i64,
    uses: i64,
    last_used_days_ago: i64,
    verified: bool,
}

/// Six items that each condition splits differently.
const ITEMS: [Item; 6] = [
    Item {
        name: "a",
        namespace: "notes",
        tier: "working",
        tags: &["pinned", "ops"],
        confidence: 0.9,
        created_days_ago: 100,
        uses: 5,
        last_used_days_ago: 1,
        verified: true,
    },
    Item {
        name: "b",
        namespace: "notes",
        tier: "working",
        tags: &["ops"],
        confidence: 0.3,
        created_days_ago: 10,
        uses: 1,
        last_used_days_ago: 10,
        verified: false,
    },
    Item {
        name: "c",
        namespace: "team-a",
        tier: "working",
        tags: &[],
        confidence: 0.6,
        created_days_ago: 40,
        uses: 3,
        last_used_days_ago: 40,
        verified: false,
    },
    Item {
        name: "d",
        namespace: "team-b",
        tier: "working",
        tags: &["draft"],
        confidence: 0.95,
        created_days_ago: 2,
        uses: 20,
        last_used_days_ago: 0,
        verified: true,
    },
    Item {
        name: "e",
        namespace: "teams",
        tier: "working",
        tags: &["pinned"],
        confidence: 0.5,
        created_days_ago: 200,
        uses: 2,
        last_used_days_ago: 95,
        verified: false,
    },
    Item {
        name: "f",
        namespace: "ops.x",
        tier: "long-term",
        tags: &[],
        confidence: 0.5,
        created_days_ago: 5,
        uses: 1,
        last_used_days_ago: 5,
        verified: false,
    },
];

/// Adds the items; their ids by name (a..f).
async fn seed(store: &dyn Store) -> Vec<(&'static str, String)> {
    let mut ids = Vec::new();
    for item in &ITEMS {
        let created = NOW - item.created_days_ago * DAY;
        let added = store
            .memory_add(&NewMemory {
                namespace: item.namespace.into(),
                content: format!("item {}", item.name),
                tags: item.tags.iter().map(|t| t.to_string()).collect(),
                confidence: Some(item.confidence),
                source_agent: None,
                tier: item.tier.into(),
                at_ms: created,
            })
            .await
            .unwrap();
        for _ in 0..item.uses {
            store
                .memory_touch(&added.id, NOW - item.last_used_days_ago * DAY)
                .await
                .unwrap();
        }
        if item.verified {
            store.memory_verify(&added.id, None).await.unwrap();
        }
        ids.push((item.name, added.id));
    }
    ids
}

fn rule(name: &str, priority: i32, action: MemoryAction, to: &str, matches: serde_json::Value) -> PassRule {
    let matches: mirrorctl::spec::memory_rule::MemoryMatch = serde_json::from_value(matches).unwrap();
    PassRule {
        name: name.into(),
        priority,
        action,
        from_tier: matches.tier.clone().unwrap_or_else(|| "working".into()),
        to_tier: to.into(),
        matches,
    }
}

fn id_of(ids: &[(&'static str, String)], name: &str) -> String {
    ids.iter().find(|(n, _)| *n == name).unwrap().1.clone()
}

async fn tier_of(store: &dyn Store, ids: &[(&'static str, String)], name: &str) -> String {
    store.memory_get(&id_of(ids, name)).await.unwrap().unwrap().tier
}

fn names(ids: &[(&'static str, String)], moves: &RuleMoves) -> String {
    let mut found: Vec<&str> = moves
        .first
        .iter()
        .map(|i| ids.iter().find(|(_, id)| *id == i.id).unwrap().0)
        .collect();
    found.sort_unstable();
    found.join(",")
}

async fn each_condition_selects_its_items(db: TestDb) {
    let store = db.open().await;
    let ids = seed(&*store).await;
    let table: [(serde_json::Value, &str); 20] = [
        (json!({"tier": "working"}), "a,b,c,d,e"),
        (json!({"tier": "long-term"}), "f"),
        (json!({"tier": "working", "namespace": "notes"}), "a,b"),
        (json!({"tier": "working", "namespace": "team-*"}), "c,d"),
        (json!({"tier": "working", "namespace": "team?"}), "e"),
        (json!({"tier": "working", "namespace": "t*-?"}), "c,d"),
        (json!({"tier": "working", "minUses": 3}), "a,c,d"),
        (json!({"tier": "working", "maxUses": 2}), "b,e"),
        (json!({"tier": "working", "minConfidence": 0.9}), "a,d"),
        (json!({"tier": "working", "maxConfidence": 0.5}), "b,e"),
        (json!({"tier": "working", "verified": true}), "a,d"),
        (json!({"tier": "working", "verified": false}), "b,c,e"),
        (json!({"tier": "working", "olderThan": "30d"}), "a,c,e"),
        (json!({"tier": "working", "idleFor": "30d"}), "c,e"),
        (json!({"tier": "working", "usedWithin": "2d"}), "a,d"),
        (
            json!({"tier": "working", "tags": {"any": ["pinned", "draft"]}}),
            "a,d,e",
        ),
        (json!({"tier": "working", "tags": {"all": ["pinned", "ops"]}}), "a"),
        (json!({"tier": "working", "tags": {"none": ["ops"]}}), "c,d,e"),
        (
            json!({"tier": "working", "minUses": 3, "verified": true, "usedWithin": "7d"}),
            "a,d",
        ),
        (json!({"tier": "working", "namespace": "nobody", "minUses": 1}), ""),
    ];
    for (matches, expected) in table {
        let r = rule("r", 0, MemoryAction::Promote, "long-term", matches.clone());
        let moves = store.memory_rules_preview(&[r], NOW, 100).await.unwrap();
        assert_eq!(names(&ids, &moves[0]), expected, "{matches}");
        assert_eq!(moves[0].count as usize, moves[0].first.len(), "{matches}");
    }
    let working = store
        .memory_list(&MemoryFilter {
            tier: Some("working".into()),
            limit: 100,
            ..MemoryFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(working.len(), 5, "a preview moves nothing");
}

async fn actions_move_to_their_tiers_with_a_transition_each(db: TestDb) {
    let store = db.open().await;
    let ids = seed(&*store).await;
    let rules = ordered(vec![
        rule(
            "promote-used",
            0,
            MemoryAction::Promote,
            "long-term",
            json!({"tier": "working", "minUses": 5}),
        ),
        rule(
            "archive-idle",
            0,
            MemoryAction::Archive,
            "archived",
            json!({"tier": "working", "idleFor": "90d"}),
        ),
        rule(
            "demote-unverified",
            0,
            MemoryAction::Demote,
            "working",
            json!({"tier": "long-term", "verified": false}),
        ),
    ]);
    let run = new_id();
    let MemoryPass::Moved(moves) = store.memory_rules_apply(&rules, NOW, &run, 3).await.unwrap() else {
        panic!("one host: never skipped")
    };
    let counts: Vec<(&str, u64)> = moves.iter().map(|m| (m.rule.as_str(), m.count)).collect();
    assert_eq!(
        counts,
        [("archive-idle", 1), ("demote-unverified", 1), ("promote-used", 2)]
    );
    assert_eq!(tier_of(&*store, &ids, "a").await, "long-term");
    assert_eq!(tier_of(&*store, &ids, "d").await, "long-term");
    assert_eq!(tier_of(&*store, &ids, "e").await, "archived");
    assert_eq!(tier_of(&*store, &ids, "f").await, "working");
    assert_eq!(tier_of(&*store, &ids, "b").await, "working");
    let history = store.memory_history(&id_of(&ids, "e")).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(
        (history[0].from_tier.as_str(), history[0].to_tier.as_str()),
        ("working", "archived")
    );
    assert_eq!(history[0].rule.as_deref(), Some("archive-idle"));
    assert_eq!(history[0].run_id.as_deref(), Some(run.as_str()));
    assert_eq!(history[0].at_ms, NOW);
    assert_eq!(
        store.counts().await.unwrap()["memory_items"],
        6,
        "archived, never deleted"
    );
}

async fn a_second_pass_moves_nothing(db: TestDb) {
    let store = db.open().await;
    seed(&*store).await;
    let rules = ordered(vec![
        rule(
            "promote",
            1,
            MemoryAction::Promote,
            "long-term",
            json!({"tier": "working", "verified": true}),
        ),
        rule(
            "archive",
            0,
            MemoryAction::Archive,
            "archived",
            json!({"tier": "working", "idleFor": "30d"}),
        ),
    ]);
    let first = store.memory_rules_apply(&rules, NOW, &new_id(), 0).await.unwrap();
    let MemoryPass::Moved(first) = first else { panic!() };
    assert_eq!(first.iter().map(|m| m.count).sum::<u64>(), 4);
    let again = store.memory_rules_apply(&rules, NOW, &new_id(), 0).await.unwrap();
    let MemoryPass::Moved(again) = again else { panic!() };
    assert!(again.iter().all(|m| m.count == 0), "{again:?}");
    let preview = store.memory_rules_preview(&rules, NOW, 3).await.unwrap();
    assert!(preview.iter().all(|m| m.count == 0 && m.first.is_empty()));
    assert_eq!(store.counts().await.unwrap()["memory_transitions"], 4);
}

async fn the_higher_priority_wins_and_an_item_moves_once_per_pass(db: TestDb) {
    let store = db.open().await;
    let ids = seed(&*store).await;
    // a and d match both working rules; the archive rule has the higher priority. The chain
    // to core must wait for the next pass.
    let rules = ordered(vec![
        rule(
            "promote",
            5,
            MemoryAction::Promote,
            "long-term",
            json!({"tier": "working", "verified": true}),
        ),
        rule(
            "archive-pinned",
            9,
            MemoryAction::Archive,
            "archived",
            json!({"tier": "working", "tags": {"any": ["pinned"]}}),
        ),
        rule(
            "to-core",
            1,
            MemoryAction::Promote,
            "core",
            json!({"tier": "long-term"}),
        ),
    ]);
    let preview = store.memory_rules_preview(&rules, NOW, 10).await.unwrap();
    assert_eq!(
        preview
            .iter()
            .map(|m| (m.rule.as_str(), names(&ids, m)))
            .collect::<Vec<_>>(),
        [
            ("archive-pinned", "a,e".to_string()),
            ("promote", "d".to_string()),
            ("to-core", "f".to_string())
        ]
    );
    let MemoryPass::Moved(applied) = store.memory_rules_apply(&rules, NOW, &new_id(), 10).await.unwrap() else {
        panic!()
    };
    assert_eq!(applied, preview, "the apply moves what the dry-run showed");
    assert_eq!(tier_of(&*store, &ids, "a").await, "archived");
    assert_eq!(
        tier_of(&*store, &ids, "d").await,
        "long-term",
        "promoted once, not on to core in the same pass"
    );
    assert_eq!(tier_of(&*store, &ids, "f").await, "core");
    let MemoryPass::Moved(next) = store.memory_rules_apply(&rules, NOW, &new_id(), 10).await.unwrap() else {
        panic!()
    };
    assert_eq!(
        next.iter().map(|m| (m.rule.as_str(), m.count)).collect::<Vec<_>>(),
        [("archive-pinned", 0), ("promote", 0), ("to-core", 1)]
    );
    assert_eq!(tier_of(&*store, &ids, "d").await, "core");
}

on_both_backends!(
    each_condition_selects_its_items,
    actions_move_to_their_tiers_with_a_transition_each,
    a_second_pass_moves_nothing,
    the_higher_priority_wins_and_an_item_moves_once_per_pass,
);

/// Two hosts run a pass against one PostgreSQL at the same moment: each item moves once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(mirror_ci_parts),
    ignore = "needs PostgreSQL: MIRROR_TEST_POSTGRES_URL (scripts/throwaway-postgres start; .ci/run provides it)"
)]
async fn postgres_two_hosts_at_once_move_each_item_once() {
    let db = TestDb::postgres().await;
    let first = db.open().await;
    let second = db.open().await;
    // Enough items that the two passes overlap.
    db.tamper(
        "INSERT INTO memory_items (id, namespace, tier, content, content_hash, source_agent, created_ms, \
         last_used_ms, uses, confidence, verified) \
         SELECT 'item-' || g, 'ns-' || (g % 7), 'working', 'content ' || g, md5(g::text), NULL, 0, 0, g % 10, 0.5, \
         (g % 2 = 0) FROM generate_series(1, 60000) g",
    )
    .await;
    let rules = ordered(vec![
        rule(
            "promote",
            1,
            MemoryAction::Promote,
            "long-term",
            json!({"tier": "working", "minUses": 5}),
        ),
        rule(
            "archive",
            0,
            MemoryAction::Archive,
            "archived",
            json!({"tier": "working", "verified": false}),
        ),
    ]);
    let (a, b) = tokio::join!(
        first.memory_rules_apply(&rules, NOW, "host-a-run", 0),
        second.memory_rules_apply(&rules, NOW, "host-b-run", 0)
    );
    let moved = |pass: &MemoryPass| match pass {
        MemoryPass::Moved(moves) => moves.iter().map(|m| m.count).sum::<u64>(),
        MemoryPass::Skipped(_) => 0,
    };
    let (a, b) = (a.unwrap(), b.unwrap());
    // promote: uses 5..9 (30,000); archive: the odd ones left (uses 1, 3: 12,000).
    assert_eq!(moved(&a) + moved(&b), 42_000, "{a:?} {b:?}");
    let counts = first.counts().await.unwrap();
    assert_eq!(counts["memory_transitions"], 42_000, "one transition per moved item");
    let long_term = first
        .memory_list(&MemoryFilter {
            tier: Some("long-term".into()),
            limit: 1000,
            ..MemoryFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(long_term.len(), 1000);
    let mut seen = BTreeSet::new();
    for item in &long_term {
        let history = first.memory_history(&item.id).await.unwrap();
        assert_eq!(history.len(), 1, "{}: {history:?}", item.id);
        assert!(seen.insert(item.id.clone()));
    }
}

/// A pass that finds the fleet lock held skips, moving nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(mirror_ci_parts),
    ignore = "needs PostgreSQL: MIRROR_TEST_POSTGRES_URL (scripts/throwaway-postgres start; .ci/run provides it)"
)]
async fn postgres_a_held_fleet_lock_skips_the_pass() {
    use sqlx::Connection;
    let db = TestDb::postgres().await;
    let store = db.open().await;
    seed(&*store).await;
    let mut other_host = sqlx::postgres::PgConnection::connect(&db.raw_url).await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(ADVISORY_LOCK_KEY)
        .execute(&mut other_host)
        .await
        .unwrap();
    let rules = vec![rule(
        "all",
        0,
        MemoryAction::Promote,
        "long-term",
        json!({"tier": "working"}),
    )];
    let pass = store.memory_rules_apply(&rules, NOW, &new_id(), 3).await.unwrap();
    assert!(
        matches!(&pass, MemoryPass::Skipped(why) if why.contains("another host")),
        "{pass:?}"
    );
    assert_eq!(store.counts().await.unwrap()["memory_transitions"], 0);
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(ADVISORY_LOCK_KEY)
        .execute(&mut other_host)
        .await
        .unwrap();
    let MemoryPass::Moved(moves) = store.memory_rules_apply(&rules, NOW, &new_id(), 3).await.unwrap() else {
        panic!("the lock is free again")
    };
    assert_eq!(moves[0].count, 5);
}
