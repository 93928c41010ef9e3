//! `mirrorctl memory add|list|search|show|touch|verify|history`: memory items in the truth
//! store, read and written directly (an added item's id is printed at once).

use std::fmt::Write as _;

use clap::Subcommand;

use super::{block_on, exit, open_store, print_json, report_error, GlobalArgs, Output};
use crate::report::{now_ms, rfc3339};
use crate::store::memory::{self, DEFAULT_FIRST_TIER};
use crate::store::{MemoryFilter, MemoryItem, MemoryQuery, MemoryTransition, NewMemory, Store, StoreError};

#[derive(Debug, Subcommand)]
pub enum MemoryCommand {
    /// Add a memory item (a duplicate in the same namespace is merged into the existing item)
    Add {
        /// The namespace it belongs to
        #[arg(long, value_name = "NS")]
        namespace: String,
        /// A tag (repeatable)
        #[arg(long = "tag", value_name = "TAG")]
        tags: Vec<String>,
        /// 0.0 to 1.0 [default: 0.5 for a new item]
        #[arg(long, value_name = "X")]
        confidence: Option<f64>,
        /// The agent it came from
        #[arg(long, value_name = "NAME")]
        agent: Option<String>,
        /// The tier a new item starts in (the lowest of the Controller's memory.tiers)
        #[arg(long, value_name = "TIER", default_value = DEFAULT_FIRST_TIER)]
        tier: String,
        /// What to remember
        #[arg(
            value_name = "CONTENT",
            required_unless_present = "content_flag",
            conflicts_with = "content_flag"
        )]
        content: Option<String>,
        /// What to remember (the same as CONTENT, for scripts that name every argument)
        #[arg(long = "content", id = "content_flag", value_name = "TEXT")]
        content_flag: Option<String>,
    },
    /// Memory items, newest first
    List {
        /// Only this namespace (repeatable; a trailing `*` matches a prefix)
        #[arg(long = "namespace", value_name = "NS")]
        namespaces: Vec<String>,
        /// Only this tier
        #[arg(long)]
        tier: Option<String>,
        /// Only items with this tag
        #[arg(long)]
        tag: Option<String>,
        /// How many to show (at most 1000)
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Items whose content contains TEXT (case-insensitive), most recently used first
    Search {
        /// Only this namespace (repeatable; a trailing `*` matches a prefix) [default: all]
        #[arg(long = "namespace", value_name = "NS")]
        namespaces: Vec<String>,
        /// How many to show (at most 1000)
        #[arg(long, default_value_t = 20)]
        limit: u32,
        text: String,
    },
    /// One memory item
    Show { id: String },
    /// Mark an item used: uses + 1, last used now
    Touch { id: String },
    /// Mark an item verified
    Verify {
        id: String,
        /// Set its confidence too (0.0 to 1.0)
        #[arg(long, value_name = "X")]
        confidence: Option<f64>,
    },
    /// An item's tier transitions, oldest first
    History { id: String },
}

#[derive(Debug, thiserror::Error)]
#[error("no memory item with id `{0}` in the truth store")]
struct ItemNotFound(String);

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Usage(String);

pub fn run(global: &GlobalArgs, command: &MemoryCommand) -> u8 {
    // Checked before the store is opened: a bad value should not wait on a database.
    let bad = match command {
        MemoryCommand::Add {
            namespace, confidence, ..
        } => memory::check_namespace(namespace)
            .err()
            .or_else(|| confidence.and_then(|c| memory::check_confidence(c).err())),
        MemoryCommand::Verify {
            confidence: Some(c), ..
        } => memory::check_confidence(*c).err(),
        MemoryCommand::List { limit, .. } | MemoryCommand::Search { limit, .. } if *limit == 0 => {
            Some("--limit must be at least 1".into())
        }
        _ => None,
    };
    if let Some(message) = bad {
        report_error(global.output, &Usage(message));
        return exit::ERROR;
    }
    block_on(async {
        let Some(store) = open_store(global).await else {
            return exit::ERROR;
        };
        match execute(&*store, global.output, command).await {
            Ok(code) => code,
            Err(error) => {
                report_error(global.output, &*error);
                exit::ERROR
            }
        }
    })
}

type Failure = Box<dyn std::error::Error>;

async fn execute(store: &dyn Store, output: Output, command: &MemoryCommand) -> Result<u8, Failure> {
    let found =
        |item: Option<MemoryItem>, id: &str| item.ok_or_else(|| -> Failure { Box::new(ItemNotFound(id.into())) });
    match command {
        MemoryCommand::Add {
            namespace,
            tags,
            confidence,
            agent,
            tier,
            content,
            content_flag,
        } => {
            let new = NewMemory {
                namespace: namespace.clone(),
                // clap makes exactly one of the two present.
                content: content.clone().or_else(|| content_flag.clone()).unwrap_or_default(),
                tags: tags.clone(),
                confidence: *confidence,
                source_agent: agent.clone(),
                tier: tier.clone(),
                at_ms: now_ms(),
            };
            let added = store.memory_add(&new).await.map_err(invalid_as_usage)?;
            match output {
                Output::Json => print_json(&serde_json::json!({"id": added.id, "merged": added.merged})),
                Output::Text if added.merged => {
                    println!("merged into {} in {namespace} (the same content was there)", added.id)
                }
                Output::Text => println!("added {} to {namespace}", added.id),
            }
        }
        MemoryCommand::List {
            namespaces,
            tier,
            tag,
            limit,
        } => {
            let filter = MemoryFilter {
                namespaces: namespaces.clone(),
                tier: tier.clone(),
                tag: tag.clone(),
                limit: *limit,
            };
            print_items(output, &store.memory_list(&filter).await?);
        }
        MemoryCommand::Search {
            namespaces,
            limit,
            text,
        } => {
            let query = MemoryQuery {
                namespaces: if namespaces.is_empty() {
                    vec!["*".into()]
                } else {
                    namespaces.clone()
                },
                text: text.clone(),
                limit: *limit,
            };
            print_items(output, &store.memory_search(&query).await?);
        }
        MemoryCommand::Show { id } => {
            let item = found(store.memory_get(id).await?, id)?;
            match output {
                Output::Json => print_json(&item.to_json()),
                Output::Text => print!("{}", render_item(&item)),
            }
        }
        MemoryCommand::Touch { id } => {
            let item = found(store.memory_touch(id, now_ms()).await?, id)?;
            match output {
                Output::Json => print_json(&item.to_json()),
                Output::Text => println!(
                    "{}: used {} time(s), last used {}",
                    item.id,
                    item.uses,
                    rfc3339(item.last_used_ms)
                ),
            }
        }
        MemoryCommand::Verify { id, confidence } => {
            let item = found(store.memory_verify(id, *confidence).await?, id)?;
            match output {
                Output::Json => print_json(&item.to_json()),
                Output::Text => println!("{}: verified, confidence {:.2}", item.id, item.confidence),
            }
        }
        MemoryCommand::History { id } => {
            let item = found(store.memory_get(id).await?, id)?;
            let transitions = store.memory_history(id).await?;
            match output {
                Output::Json => print_json(&serde_json::json!({
                    "id": item.id,
                    "tier": item.tier,
                    "created_at": rfc3339(item.created_ms),
                    "transitions": transitions.iter().map(MemoryTransition::to_json).collect::<Vec<_>>(),
                })),
                Output::Text => print!("{}", render_history(&item, &transitions)),
            }
        }
    }
    Ok(exit::OK)
}

/// A refused value is the user's error, said without "query failed".
fn invalid_as_usage(error: StoreError) -> Failure {
    match error {
        StoreError::Invalid(message) => Box::new(Usage(message)),
        other => Box::new(other),
    }
}

fn print_items(output: Output, items: &[MemoryItem]) {
    match output {
        Output::Json => print_json(&serde_json::json!({
            "items": items.iter().map(MemoryItem::to_json).collect::<Vec<_>>()
        })),
        Output::Text => print!("{}", render_list(items)),
    }
}

/// Content on one line, at most `max` characters.
fn one_line(text: &str, max: usize) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() <= max {
        return line;
    }
    let cut: String = line.chars().take(max.saturating_sub(3)).collect();
    format!("{cut}...")
}

pub fn render_list(items: &[MemoryItem]) -> String {
    let mut out = String::new();
    if items.is_empty() {
        out.push_str("no memory items\n");
        return out;
    }
    let ns_width = items.iter().map(|i| i.namespace.len()).max().unwrap_or(0).max(9);
    let tier_width = items.iter().map(|i| i.tier.len()).max().unwrap_or(0).max(4);
    let _ = writeln!(
        out,
        "{:<36}  {:<ns_width$}  {:<tier_width$}  {:>5}  {:>4}  {:<8}  {:<24}  CONTENT",
        "ID", "NAMESPACE", "TIER", "USES", "CONF", "VERIFIED", "LAST USED"
    );
    for item in items {
        let _ = writeln!(
            out,
            "{:<36}  {:<ns_width$}  {:<tier_width$}  {:>5}  {:>4.2}  {:<8}  {:<24}  {}",
            item.id,
            item.namespace,
            item.tier,
            item.uses,
            item.confidence,
            if item.verified { "yes" } else { "no" },
            rfc3339(item.last_used_ms),
            one_line(&item.content, 60)
        );
    }
    out
}

pub fn render_item(item: &MemoryItem) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "id:           {}", item.id);
    let _ = writeln!(out, "namespace:    {}", item.namespace);
    let _ = writeln!(out, "tier:         {}", item.tier);
    let _ = writeln!(
        out,
        "source agent: {}",
        item.source_agent.as_deref().unwrap_or("(none)")
    );
    let _ = writeln!(out, "created:      {}", rfc3339(item.created_ms));
    let _ = writeln!(out, "last used:    {}", rfc3339(item.last_used_ms));
    let _ = writeln!(out, "uses:         {}", item.uses);
    let _ = writeln!(out, "confidence:   {:.2}", item.confidence);
    let _ = writeln!(out, "verified:     {}", if item.verified { "yes" } else { "no" });
    let _ = writeln!(
        out,
        "tags:         {}",
        if item.tags.is_empty() {
            "(none)".to_string()
        } else {
            item.tags.join(", ")
        }
    );
    let _ = writeln!(out, "content hash: sha256:{}", item.content_hash);
    out.push_str("content:\n");
    for line in item.content.lines() {
        let _ = writeln!(out, "  {line}");
    }
    out
}

pub fn render_history(item: &MemoryItem, transitions: &[MemoryTransition]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}  created in {}",
        rfc3339(item.created_ms),
        first_tier(item, transitions)
    );
    for t in transitions {
        let _ = write!(out, "{}  {} -> {}", rfc3339(t.at_ms), t.from_tier, t.to_tier);
        match (&t.rule, &t.run_id) {
            (Some(rule), Some(run)) => {
                let _ = write!(out, "  (rule {rule}, run {run})");
            }
            (Some(rule), None) => {
                let _ = write!(out, "  (rule {rule})");
            }
            (None, Some(run)) => {
                let _ = write!(out, "  (run {run})");
            }
            (None, None) => {}
        }
        out.push('\n');
    }
    let _ = writeln!(out, "now in {}", item.tier);
    out
}

/// The tier an item was created in: where its first move started, or where it still is.
fn first_tier<'a>(item: &'a MemoryItem, transitions: &'a [MemoryTransition]) -> &'a str {
    transitions.first().map_or(&item.tier, |t| &t.from_tier)
}
