//! Memory rule passes over the truth store, on both backends in one run: SQLite (a file in a temp
//! dir) and PostgreSQL (a throwaway server from `scripts/throwaway-postgres`, destroyed at the end
//! even on panic).
//!
//! Seeds 1,000,000 memory items with set-based SQL straight on the database (SQLite: a recursive
//! CTE; PostgreSQL: `generate_series`) over 50 namespaces and three tiers, a fifth of them tagged,
//! runs `ANALYZE`, then with 5 rules (the 4 of `desired/memory-rules.yaml` and one with a tag
//! condition and a namespace glob) measures:
//!
//! 1. the dry-run count, `Store::memory_rules_preview` with a sample of 3 (median of a few
//!    rounds; target: at most 2 s);
//! 2. the first applying pass, `Store::memory_rules_apply` (target: at most 5 s);
//! 3. the passes right after it until one moves nothing (target: each at most 5 s). A pass judges
//!    items as they were when it began, so the second pass moves the items the first one made
//!    eligible for another rule (demoted then stale, promoted twice); the third moves none.
//!
//! Checks: each pass moves per rule exactly what a dry-run just before it counted, the last pass
//! moves nothing, and `memory_transitions` holds one row per moved item.
//!
//! Run: `cargo bench --bench memory` (release build). `-- --sqlite-only` skips PostgreSQL;
//! `-- --items N` (or `MIRROR_BENCH_MEMORY_ITEMS=N`) seeds N items instead of 1,000,000;
//! `-- --no-analyze` skips `ANALYZE` after seeding (to see what it changes); `-- --keep` leaves
//! the SQLite file and the PostgreSQL server behind for profiling (and says where). Without
//! PostgreSQL server binaries the PostgreSQL column is skipped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mirrorctl::spec::memory_rule::{MemoryRuleSpec, ARCHIVED_TIER};
use mirrorctl::store::memory_rules::{ordered, MemoryPass, PassRule, RuleMoves};
use mirrorctl::store::{self, new_id, Backend, StoreUrl};
use sqlx::Connection;
use tokio::runtime::Runtime;

#[path = "common/results.rs"]
mod results;
use results::Measure;

const DEFAULT_ITEMS: u64 = 1_000_000;
const DAY_MS: i64 = 86_400_000;
/// The benchmark's "now" (2026-11-24T00:00:00Z): fixed, so every run seeds the same items.
const NOW_MS: i64 = 1_795_478_400_000;
const NAMESPACES: u64 = 50;
const TIERS: [&str; 3] = ["working", "long-term", "core"];
const SAMPLE: u32 = 3;
const PREVIEW_ROUNDS: usize = 5;
/// Passes after the first, at most, before giving up on reaching a pass that moves nothing.
const MAX_FOLLOW_UP_PASSES: usize = 3;
const PREVIEW_TARGET: Duration = Duration::from_secs(2);
const PASS_TARGET: Duration = Duration::from_secs(5);

/// A throwaway PostgreSQL server; destroyed when dropped (also while unwinding from a panic).
struct Postgres {
    url: String,
    dir: PathBuf,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/throwaway-postgres")
}

impl Postgres {
    fn start() -> Result<Postgres, String> {
        let out = Command::new(script())
            .arg("start")
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script().display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut lines = stdout.lines();
        let (url, dir) = (lines.next().unwrap_or_default(), lines.next().unwrap_or_default());
        if !out.status.success() || url.is_empty() || dir.is_empty() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(format!(
                "`scripts/throwaway-postgres start` failed ({}): {}",
                out.status,
                stderr.trim()
            ));
        }
        Ok(Postgres {
            url: url.to_string(),
            dir: PathBuf::from(dir),
        })
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let status = Command::new(script()).arg("destroy").arg(&self.dir).status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!(
                "warning: could not destroy the throwaway PostgreSQL in {} ({status:?})",
                self.dir.display()
            );
        }
    }
}

struct Settings {
    items: u64,
    analyze: bool,
}

/// One applying pass.
struct Pass {
    time: Duration,
    moved: u64,
    /// What a dry-run just before it counted, per rule, if different from what it moved.
    mismatch: Option<String>,
}

/// What one backend measured.
struct Results {
    seed: Duration,
    analyze: Option<Duration>,
    tagged: i64,
    preview: Duration,
    preview_total: u64,
    per_rule: Vec<(String, u64)>,
    passes: Vec<Pass>,
    transitions: i64,
    problems: Vec<String>,
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// A pseudo-random integer in `0..1_000_003` from the item number `g` (pure SQL, the same value
/// on both engines): `k` picks an independent-looking sequence.
fn rand(k: usize) -> String {
    const MULTIPLIERS: [u64; 8] = [
        2_654_435_761,
        40_503,
        2_246_822_519,
        3_266_489_917,
        668_265_263,
        374_761_393,
        1_103_515_245,
        2_147_483_647,
    ];
    format!("((g * {} + {}) % 1000003)", MULTIPLIERS[k], 7919 * (k + 1))
}

/// `expr` as `width` lowercase hex digits.
fn hex(backend: Backend, expr: &str, width: usize) -> String {
    match backend {
        Backend::Sqlite => format!("printf('%0{width}x', {expr})"),
        Backend::Postgres => format!("lpad(to_hex(({expr})::bigint), {width}, '0')"),
    }
}

/// The rows of items 1..=N, numbered `g`, with their derived attributes (one SELECT over the
/// engine's series). Columns: g, id, namespace, tier, created_ms, last_used_ms, uses, confidence,
/// verified, tagged (0, 1 or 2 tags).
fn items_sql(backend: Backend, items: u64) -> String {
    let series = match backend {
        Backend::Sqlite => {
            format!("WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < {items}) SELECT g FROM s")
        }
        Backend::Postgres => format!("SELECT g::bigint AS g FROM generate_series(1, {items}) g"),
    };
    // Tiers: 88% working, 10% long-term, 2% core. Created uniformly over the last 200 days; last
    // used between then and now, skewed towards now (r^2 of the age ago). Uses skewed low
    // (r^3 * 40), confidence 0.30..1.00, a fifth verified, a fifth tagged (8% with two tags).
    let (r_tier, r_age, r_idle, r_uses, r_verified, r_conf, r_tags) =
        (rand(0), rand(1), rand(2), rand(3), rand(4), rand(5), rand(6));
    // Integer arithmetic only: both engines truncate integer division alike (casting a float
    // to an integer truncates on SQLite but rounds on PostgreSQL).
    let age = format!("({r_age} * {} / 1000003)", 200 * DAY_MS);
    // A UUID v7-like id: the creation time first, then the item number (unique).
    let id = format!(
        "{} || '-' || {} || '-7' || {} || '-8' || {} || '-' || {}",
        hex(backend, "c.created_ms / 65536", 8),
        hex(backend, "c.created_ms % 65536", 4),
        hex(backend, "c.g % 4096", 3),
        hex(backend, "(c.g / 4096) % 4096", 3),
        hex(backend, "c.g * 1103", 12),
    );
    format!(
        "SELECT c.g AS g, {id} AS id, c.namespace AS namespace, c.tier AS tier, c.created_ms AS created_ms, \
                c.last_used_ms AS last_used_ms, c.uses AS uses, c.confidence AS confidence, c.verified AS verified, \
                c.tagged AS tagged \
         FROM (SELECT g, \
                 CASE WHEN g % {NAMESPACES} < 20 THEN 'agent-' WHEN g % {NAMESPACES} < 35 THEN 'team-' \
                      WHEN g % {NAMESPACES} < 45 THEN 'project-' ELSE 'user-' END || CAST(g % {NAMESPACES} AS TEXT) \
                   AS namespace, \
                 CASE WHEN {r_tier} < 880000 THEN 'working' WHEN {r_tier} < 980000 THEN 'long-term' ELSE 'core' END \
                   AS tier, \
                 {NOW_MS} - ({age}) AS created_ms, \
                 {NOW_MS} - {age} * {r_idle} / 1000003 * {r_idle} / 1000003 AS last_used_ms, \
                 {r_uses} * {r_uses} / 1000003 * {r_uses} / 1000003 * 40 / 1000003 AS uses, \
                 CAST(30 + {r_conf} % 71 AS DOUBLE PRECISION) / 100.0 AS confidence, \
                 ({r_verified} < 200000) AS verified, \
                 CASE WHEN {r_tags} < 80000 THEN 2 WHEN {r_tags} < 200000 THEN 1 ELSE 0 END AS tagged \
               FROM ({series}) s) c"
    )
}

const LOREM: &str = "remembered while helping with the deploy: the staging host restarts its model \
    server after config changes, prefers the local provider for drafts and the cloud one only for \
    long contexts, and the backup window is at night";

/// Seeds the items and their tags in one transaction; returns how many items have tags.
async fn seed(raw_url: &str, backend: Backend, settings: &Settings) -> i64 {
    let mut conn = sqlx::AnyConnection::connect(raw_url).await.expect("connect to seed");
    let items = items_sql(backend, settings.items);
    // Content of 100..200 bytes; its hash is unique per item (so per namespace).
    let content = format!(
        "'memory ' || CAST(i.g AS TEXT) || ' of ' || i.namespace || ': ' || substr('{LOREM}', 1, \
         CAST(70 + (i.g * 7) % 100 AS INTEGER))"
    );
    let hash = format!(
        "{} || {} || {} || {}",
        hex(backend, "i.g", 16),
        hex(backend, "(i.g * 2654435761) % 4294967296", 16),
        hex(backend, "(i.g * 40503) % 4294967291", 16),
        hex(backend, "i.created_ms", 16),
    );
    let tags = "'pinned', 'decision', 'ops', 'draft', 'scratch', 'preference', 'todo', 'fact'";
    let tag = |offset: u64| match backend {
        Backend::Sqlite => format!(
            "(SELECT value FROM json_each('[{}]') WHERE key = (i.g + {offset}) % 8)",
            tags.replace('\'', "\"")
        ),
        Backend::Postgres => format!("(ARRAY[{tags}])[((i.g + {offset}) % 8) + 1]"),
    };
    let (tag1, tag2) = (tag(0), tag(3));
    let statements = [
        format!(
            "INSERT INTO memory_items (id, namespace, tier, content, content_hash, source_agent, created_ms, \
             last_used_ms, uses, confidence, verified) \
             SELECT i.id, i.namespace, i.tier, {content}, {hash}, \
                    CASE WHEN i.g % 3 = 0 THEN NULL ELSE 'agent-' || CAST(i.g % 12 AS TEXT) END, \
                    i.created_ms, i.last_used_ms, i.uses, i.confidence, i.verified \
             FROM ({items}) i ORDER BY i.id"
        ),
        format!(
            "INSERT INTO memory_item_tags (item_id, tag) \
             SELECT i.id, {tag1} FROM ({items}) i WHERE i.tagged >= 1 \
             UNION ALL SELECT i.id, {tag2} FROM ({items}) i WHERE i.tagged = 2"
        ),
    ];
    let mut tx = conn.begin().await.expect("begin seeding");
    for sql in statements {
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .execute(&mut *tx)
            .await
            .unwrap_or_else(|e| panic!("seed: {e}\n{sql}"));
    }
    tx.commit().await.expect("commit seeding");
    scalar(&mut conn, "SELECT COUNT(DISTINCT item_id) FROM memory_item_tags").await
}

async fn scalar(conn: &mut sqlx::AnyConnection, sql: &str) -> i64 {
    use sqlx::Row;
    sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(conn)
        .await
        .and_then(|row| row.try_get::<i64, _>(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// `ANALYZE`; on PostgreSQL `VACUUM ANALYZE`, as autovacuum leaves a table in steady state (else
/// it vacuums the freshly loaded million rows in the background while the passes are measured).
async fn analyze(raw_url: &str, backend: Backend) {
    let mut conn = sqlx::AnyConnection::connect(raw_url).await.expect("connect to analyze");
    let sql = match backend {
        Backend::Sqlite => "ANALYZE",
        Backend::Postgres => "VACUUM ANALYZE",
    };
    sqlx::query(sql).execute(&mut conn).await.expect(sql);
}

/// The 4 rules of `desired/memory-rules.yaml` and one with a tag condition and a namespace glob.
fn rules() -> Vec<PassRule> {
    let tiers: Vec<String> = TIERS.iter().map(|t| t.to_string()).collect();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("desired/memory-rules.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut rules = Vec::new();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let value = <serde_yaml::Value as serde::Deserialize>::deserialize(document).expect("a YAML document");
        let name = value["metadata"]["name"].as_str().expect("metadata.name").to_string();
        let spec: MemoryRuleSpec = serde_yaml::from_value(value["spec"].clone()).expect("a MemoryRule spec");
        rules.push(PassRule::of(&name, &spec, &tiers).expect("an active rule with tiers"));
    }
    assert_eq!(rules.len(), 4, "desired/memory-rules.yaml has 4 rules");
    // Team decisions and pins in use lately go to long-term memory. `usedWithin` keeps them out
    // of demote-idle's reach (idle 30 days), so the rules do not cycle.
    let pinned: MemoryRuleSpec = serde_json::from_value(serde_json::json!({
        "priority": 15,
        "match": {"tier": "working", "namespace": "team-*", "minUses": 1, "usedWithin": "14d",
                  "tags": {"any": ["pinned", "decision"]}},
        "action": "promote",
    }))
    .expect("the pinned rule");
    rules.push(PassRule::of("promote-team-pinned", &pinned, &tiers).expect("an active rule"));
    ordered(rules)
}

fn total(moves: &[RuleMoves]) -> u64 {
    moves.iter().map(|m| m.count).sum()
}

fn counts(moves: &[RuleMoves]) -> Vec<(String, u64)> {
    moves.iter().map(|m| (m.rule.clone(), m.count)).collect()
}

fn bench_backend(runtime: &Runtime, raw_url: &str, settings: &Settings) -> Results {
    let url = StoreUrl::parse(raw_url).expect("a store URL");
    let backend = url.backend();
    let rules = rules();
    runtime.block_on(async {
        // Migrations first, then the items straight into the tables.
        let store = store::open(&url).await.expect("open the store");
        let start = Instant::now();
        let tagged = seed(raw_url, backend, settings).await;
        let seed_time = start.elapsed();
        eprintln!(
            "memory bench: {backend:?}: seeded {} items in {seed_time:?}",
            settings.items
        );
        let analyze_time = if settings.analyze {
            let start = Instant::now();
            analyze(raw_url, backend).await;
            Some(start.elapsed())
        } else {
            None
        };
        let mut problems = Vec::new();

        let mut samples = Vec::with_capacity(PREVIEW_ROUNDS);
        let mut preview = Vec::new();
        for _ in 0..PREVIEW_ROUNDS {
            let start = Instant::now();
            preview = store
                .memory_rules_preview(&rules, NOW_MS, SAMPLE)
                .await
                .expect("dry-run");
            samples.push(start.elapsed());
        }
        eprintln!("memory bench: {backend:?}: dry-runs {samples:?}");
        let preview_time = median(samples);
        let per_rule = counts(&preview);
        for m in &preview {
            if m.first.len() != m.count.min(u64::from(SAMPLE)) as usize {
                problems.push(format!("rule {} samples {} of {}", m.rule, m.first.len(), m.count));
            }
        }

        let mut passes: Vec<Pass> = Vec::new();
        let mut expected = preview;
        loop {
            let start = Instant::now();
            let pass = store
                .memory_rules_apply(&rules, NOW_MS, &new_id(), SAMPLE)
                .await
                .expect("apply");
            let time = start.elapsed();
            let MemoryPass::Moved(moves) = pass else {
                panic!("pass {} skipped: {pass:?}", passes.len() + 1);
            };
            let moved = total(&moves);
            eprintln!(
                "memory bench: {backend:?}: pass {} moved {moved} in {time:?}",
                passes.len() + 1
            );
            let mismatch = (counts(&moves) != counts(&expected))
                .then(|| format!("dry-run {:?}, pass {:?}", counts(&expected), counts(&moves)));
            passes.push(Pass { time, moved, mismatch });
            if moved == 0 || passes.len() > MAX_FOLLOW_UP_PASSES {
                break;
            }
            // What the next pass should move: counted untimed.
            expected = store
                .memory_rules_preview(&rules, NOW_MS, SAMPLE)
                .await
                .expect("dry-run");
        }
        for (i, pass) in passes.iter().enumerate() {
            if let Some(m) = &pass.mismatch {
                problems.push(format!("pass {} moved other than its dry-run counted: {m}", i + 1));
            }
        }
        if passes.last().is_some_and(|p| p.moved != 0) {
            problems.push(format!("still moving items after {} passes", passes.len()));
        }
        let preview_total: u64 = per_rule.iter().map(|(_, n)| n).sum();
        if passes[0].moved != preview_total {
            problems.push(format!(
                "the first pass moved {}, the dry-run counted {preview_total}",
                passes[0].moved
            ));
        }
        let mut conn = sqlx::AnyConnection::connect(raw_url).await.expect("connect to check");
        let transitions = scalar(&mut conn, "SELECT COUNT(*) FROM memory_transitions").await;
        let moved: u64 = passes.iter().map(|p| p.moved).sum();
        if transitions != moved as i64 {
            problems.push(format!("{transitions} transitions for {moved} moves"));
        }
        let archived = scalar(
            &mut conn,
            &format!("SELECT COUNT(*) FROM memory_items WHERE tier = '{ARCHIVED_TIER}'"),
        )
        .await;
        let items = scalar(&mut conn, "SELECT COUNT(*) FROM memory_items").await;
        if items != settings.items as i64 {
            problems.push(format!("{items} items after the passes, {} seeded", settings.items));
        }
        eprintln!("memory bench: {backend:?}: {archived} items archived");
        Results {
            seed: seed_time,
            analyze: analyze_time,
            tagged,
            preview: preview_time,
            preview_total,
            per_rule,
            passes,
            transitions,
            problems,
        }
    })
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

/// The measures for `scripts/bench-all` (no peer: no other tool runs declarative memory tiers).
fn record(items: u64, backends: &[(&str, &Results)]) {
    let count = if items == DEFAULT_ITEMS {
        "1M items".to_string()
    } else {
        format!("{items} items")
    };
    let millis = |d: Duration| d.as_secs_f64() * 1e3;
    for (name, r) in backends {
        Measure::new(
            "memory",
            &format!("{name}: dry-run count, {count}, 5 rules"),
            millis(r.preview),
            "ms",
        )
        .target("<= 2000 ms", r.preview <= PREVIEW_TARGET)
        .record();
        if let Some(first) = r.passes.first() {
            Measure::new(
                "memory",
                &format!("{name}: first pass ({} moved)", first.moved),
                millis(first.time),
                "ms",
            )
            .target("<= 5000 ms", first.time <= PASS_TARGET)
            .record();
        }
        if let Some(slowest) = r.passes.iter().skip(1).map(|p| p.time).max() {
            Measure::new("memory", &format!("{name}: slowest later pass"), millis(slowest), "ms")
                .target("<= 5000 ms", slowest <= PASS_TARGET)
                .record();
        }
    }
}

fn percent(n: u64, of: u64) -> String {
    format!("{:.1}%", n as f64 * 100.0 / of.max(1) as f64)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let sqlite_only = args.iter().any(|a| a == "--sqlite-only");
    let items = args
        .iter()
        .position(|a| a == "--items")
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| std::env::var("MIRROR_BENCH_MEMORY_ITEMS").ok())
        .map(|n| n.replace(['_', ','], "").parse::<u64>().expect("--items N: a number"))
        .unwrap_or(DEFAULT_ITEMS);
    let settings = Settings {
        items,
        analyze: !args.iter().any(|a| a == "--no-analyze"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    let sqlite_dir = tempfile::tempdir().unwrap();
    let sqlite_url = format!("sqlite://{}", sqlite_dir.path().join("truth.db").display());
    eprintln!("memory bench: SQLite at {sqlite_url}");
    let sqlite = bench_backend(&runtime, &sqlite_url, &settings);
    let sqlite_size = std::fs::metadata(sqlite_dir.path().join("truth.db")).map_or(0, |m| m.len());
    let keep = args.iter().any(|a| a == "--keep");
    if keep {
        eprintln!("memory bench: --keep: SQLite file left at {sqlite_url}");
        std::mem::forget(sqlite_dir);
    } else {
        drop(sqlite_dir);
    }

    let (postgres, skipped) = match if sqlite_only {
        Err("`--sqlite-only` was given".to_string())
    } else {
        Postgres::start()
    } {
        Ok(server) => {
            eprintln!(
                "memory bench: PostgreSQL at {} (dir {})",
                server.url,
                server.dir.display()
            );
            let results = bench_backend(&runtime, &server.url, &settings);
            if keep {
                eprintln!(
                    "memory bench: --keep: PostgreSQL left running at {}; remove it with \
                     `scripts/throwaway-postgres destroy {}`",
                    server.url,
                    server.dir.display()
                );
                std::mem::forget(server);
            } else {
                drop(server);
            }
            (Some(results), None)
        }
        Err(why) => (None, Some(why)),
    };

    let rules = rules();
    println!(
        "memory: {items} items in {NAMESPACES} namespaces, {} rules ({}), dry-run with a sample of {SAMPLE} \
         (median of {PREVIEW_ROUNDS}), ANALYZE after seeding: {}; SQLite file {:.0} MiB",
        rules.len(),
        rules.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", "),
        if settings.analyze { "yes" } else { "no" },
        sqlite_size as f64 / (1 << 20) as f64,
    );
    if let Some(why) = &skipped {
        println!("PostgreSQL column skipped: {why}");
    }
    let row = |measurement: &str, cell: &dyn Fn(&Results) -> String, target: &str| {
        let pg = postgres.as_ref().map_or_else(|| "skipped".to_string(), cell);
        println!("| {measurement} | {} | {pg} | {target} |", cell(&sqlite));
    };
    println!("| measurement | SQLite | PostgreSQL | target |");
    println!("|---|---|---|---|");
    row(
        "seed (items + tags, one transaction)",
        &|r| format!("{} ({} tagged)", ms(r.seed), r.tagged),
        "",
    );
    row(
        "ANALYZE (PostgreSQL: VACUUM ANALYZE)",
        &|r| r.analyze.map_or_else(|| "skipped".into(), ms),
        "",
    );
    row(
        "dry-run count (`memory_rules_preview`, sample 3)",
        &|r| format!("{} ({} would move)", ms(r.preview), r.preview_total),
        "<= 2000 ms",
    );
    for (i, (rule, _)) in sqlite.per_rule.iter().enumerate() {
        row(
            &format!("  of which `{rule}`"),
            &|r| r.per_rule.get(i).map_or_else(String::new, |(_, n)| n.to_string()),
            "",
        );
    }
    let passes = sqlite.passes.len().max(postgres.as_ref().map_or(0, |r| r.passes.len()));
    for i in 0..passes {
        let what = match i {
            0 => "first pass (`memory_rules_apply`)".to_string(),
            _ => format!("pass {} right after", i + 1),
        };
        row(
            &what,
            &|r| {
                r.passes.get(i).map_or_else(
                    || "-".into(),
                    |p| format!("{} ({} moved, {})", ms(p.time), p.moved, percent(p.moved, items)),
                )
            },
            "<= 5000 ms",
        );
    }
    row(
        "`memory_transitions` rows = items moved",
        &|r| format!("{} = {}", r.transitions, r.passes.iter().map(|p| p.moved).sum::<u64>()),
        "equal",
    );
    row(
        "checks (each pass = its dry-run; the last moves 0)",
        &|r| {
            if r.problems.is_empty() {
                "ok".into()
            } else {
                format!("FAILED: {}", r.problems.join("; "))
            }
        },
        "ok",
    );

    let backends: Vec<(&str, &Results)> = std::iter::once(("SQLite", &sqlite))
        .chain(postgres.as_ref().map(|r| ("PostgreSQL", r)))
        .collect();
    let mut missed = Vec::new();
    for (name, r) in &backends {
        if r.preview > PREVIEW_TARGET {
            missed.push(format!("{name} dry-run {}", ms(r.preview)));
        }
        for (i, pass) in r.passes.iter().enumerate() {
            if pass.time > PASS_TARGET {
                missed.push(format!("{name} pass {} {}", i + 1, ms(pass.time)));
            }
        }
        for problem in &r.problems {
            missed.push(format!("{name}: {problem}"));
        }
    }
    record(items, &backends);
    if let Some(why) = &skipped {
        results::note("memory", &format!("PostgreSQL skipped: {why}"));
    }
    match (missed.is_empty(), &skipped) {
        (true, None) => println!("targets: met"),
        (true, Some(_)) => println!("targets: met (SQLite only; PostgreSQL skipped)"),
        // Exit 0 like the other benchmarks: the verdicts are in the recorded measures.
        (false, _) => println!("targets: MISSED: {}", missed.join("; ")),
    }
}
