//! `mirrorctl reconcile [--dry-run]`: one pass. Dry-run exits 0 in sync, 2 changes pending,
//! 1 error; apply exits 0 converged, 1 error (nothing applied when the source is invalid).

use std::fmt::Write as _;
use std::io::IsTerminal;

/// `writeln!` into a String (cannot fail).
macro_rules! w {
    ($out:expr, $($arg:tt)*) => {
        let _ = writeln!($out, $($arg)*);
    };
}

use clap::Args;
use serde_json::json;

use super::{exit, json_text, pass_via_daemon_or_here, GlobalArgs, Output};
use crate::daemon::control::{Request, Response};
use crate::plan::{Action, Plan};
use crate::reconcile::memory::{action_word, MemoryOutcome};
use crate::reconcile::{PassOptions, PassOutcome};
use crate::router::preview::{ModelAction, ModelActionKind};
use crate::spec::memory_rule::MemoryAction;

#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// Show what would change and why; change nothing (a drift report is still stored)
    #[arg(long)]
    pub dry_run: bool,
    /// Allow a pass that prunes everything owned, or more than the prune guard's fraction
    #[arg(long)]
    pub allow_mass_prune: bool,
    /// Also list resources that are in sync
    #[arg(short, long)]
    pub verbose: bool,
}

pub fn run(global: &GlobalArgs, args: &ReconcileArgs) -> u8 {
    if global.worktree && !args.dry_run {
        eprintln!(
            "mirrorctl: error: --worktree is a preview: use it with --dry-run (uncommitted edits are never applied)"
        );
        return exit::ERROR;
    }
    let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let request = Request::Reconcile {
        dry_run: args.dry_run,
        allow_mass_prune: args.allow_mass_prune,
        verbose: args.verbose,
        json: global.output == Output::Json,
        color,
        source: global.source_request(),
    };
    let options = PassOptions {
        models: true,
        memory: true,
        dry_run: args.dry_run,
        allow_mass_prune: args.allow_mass_prune,
        trigger: "cli".into(),
    };
    pass_via_daemon_or_here(global, &request, options, render)
}

/// What the command prints for a pass, and its exit code (also what the daemon answers).
pub fn render(request: &Request, outcome: &PassOutcome) -> Response {
    let Request::Reconcile {
        dry_run,
        verbose,
        json,
        color,
        ..
    } = request
    else {
        unreachable!("rendered only for reconcile requests")
    };
    let stdout = if *json {
        json_text(&to_json(outcome, *dry_run))
    } else {
        render_text(outcome, *dry_run, *verbose, *color)
    };
    let mut stderr = String::new();
    if let Some(problem) = &outcome.store.store_error {
        stderr = format!(
            "mirrorctl: note: the truth store was not written ({problem}); {} record(s) wait in the journal\n",
            outcome.store.pending
        );
    }
    let pulls_failed = outcome.models.iter().any(|m| matches!(m.result, Some(Err(_))));
    let memory_failed = outcome.memory.error.is_some();
    let pending = outcome.plan.as_ref().map_or(0, |p| p.pending().count())
        + outcome.models.iter().filter(|m| m.pending).count()
        + outcome.policies.len()
        + usize::try_from(outcome.memory.total()).unwrap_or(usize::MAX);
    let exit_code = match (&outcome.error, dry_run, pending) {
        (Some(_), _, _) => exit::ERROR,
        (None, false, _) if pulls_failed || memory_failed => exit::ERROR,
        (None, true, pending) if pending > 0 => exit::CHANGES,
        _ => exit::OK,
    };
    Response {
        exit_code,
        stdout,
        stderr,
    }
}

fn to_json(outcome: &PassOutcome, dry_run: bool) -> serde_json::Value {
    let changes: Vec<_> = outcome
        .plan
        .iter()
        .flat_map(|p| p.changes.iter())
        .map(|c| json!({"kind": c.kind, "name": c.name, "action": c.action, "reason": c.reason, "diff": c.diff}))
        .collect();
    let models: Vec<_> = outcome
        .models
        .iter()
        .map(|m| {
            json!({
                "kind": m.kind,
                "name": m.name,
                "action": m.action,
                "target": m.target,
                "reason": m.reason,
                "pending": m.pending,
                "result": m.result.as_ref().map(|r| match r {
                    Ok(()) => "ok".to_string(),
                    Err(why) => format!("failed: {why}"),
                }),
            })
        })
        .collect();
    let policies: Vec<_> = outcome
        .policies
        .iter()
        .map(|p| json!({"name": p.name, "version": p.version, "previous_version": p.previous_version, "hash": p.hash, "diff": p.diff}))
        .collect();
    json!({
        "commit": outcome.commit,
        "dry_run": dry_run,
        "changes": changes,
        "policies": policies,
        "models": models,
        "memory": memory_json(&outcome.memory),
        "notes": outcome.notes,
        "summary": outcome.plan.as_ref().map(Plan::summary),
        "applied": outcome.applied,
        "report_id": outcome.report.id,
        "error": outcome.error,
        "errors": outcome.diagnostics,
    })
}

const GROUPS: [(Action, &str, &str); 6] = [
    (Action::Create, "create", "+"),
    (Action::Update, "update", "~"),
    (Action::Restart, "restart", "↻"),
    (Action::Suspend, "suspend", "‖"),
    (Action::Prune, "prune", "-"),
    (Action::Noop, "unchanged", "="),
];

fn colored(line: &str, color: bool) -> String {
    if !color {
        return line.to_string();
    }
    match line.chars().next() {
        Some('+') if !line.starts_with("+++") => format!("\x1b[32m{line}\x1b[0m"),
        Some('-') if !line.starts_with("---") => format!("\x1b[31m{line}\x1b[0m"),
        Some('@') => format!("\x1b[36m{line}\x1b[0m"),
        _ => line.to_string(),
    }
}

/// The memory step: per rule, what moved or would move, and the first items.
fn render_memory(out: &mut String, memory: &MemoryOutcome, dry_run: bool) {
    if memory.moves.is_empty() && memory.error.is_none() && memory.skipped.is_none() {
        return;
    }
    w!(out, "\nmemory rules:");
    if let Some(error) = &memory.error {
        w!(out, "  ! {error}");
    }
    if let Some(why) = &memory.skipped {
        w!(out, "  … skipped: {why}");
    }
    for m in memory.moves.iter().filter(|m| m.count > 0) {
        let (mark, verb) = match (m.action, dry_run) {
            (MemoryAction::Promote, true) => ("↑", "promote"),
            (MemoryAction::Promote, false) => ("↑", "promoted"),
            (MemoryAction::Demote, true) => ("↓", "demote"),
            (MemoryAction::Demote, false) => ("↓", "demoted"),
            (MemoryAction::Archive, true) => ("⤓", "archive"),
            (MemoryAction::Archive, false) => ("⤓", "archived"),
        };
        w!(
            out,
            "  {mark} MemoryRule/{}: {verb} {} item(s) {} -> {}",
            m.rule,
            m.count,
            m.from_tier,
            m.to_tier
        );
        for item in &m.first {
            w!(out, "      {} {}: {}", item.id, item.namespace, item.content);
        }
        if m.count > m.first.len() as u64 {
            w!(out, "      … and {} more", m.count - m.first.len() as u64);
        }
    }
    if memory.error.is_none() && memory.skipped.is_none() && memory.total() == 0 {
        w!(out, "  = nothing to move ({} rule(s))", memory.moves.len());
    }
}

fn memory_json(memory: &MemoryOutcome) -> serde_json::Value {
    let rules: Vec<_> = memory
        .moves
        .iter()
        .map(|m| {
            json!({
                "rule": m.rule,
                "action": action_word(m.action),
                "from": m.from_tier,
                "to": m.to_tier,
                "count": m.count,
                "first": m.first.iter().map(|i| json!({"id": i.id, "namespace": i.namespace, "content": i.content})).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "applied": memory.applied,
        "skipped": memory.skipped,
        "error": memory.error,
        "rules": rules,
    })
}

/// The models step: pulls (planned or done) and route decisions.
fn render_models(out: &mut String, models: &[ModelAction], dry_run: bool) {
    if models.is_empty() {
        return;
    }
    w!(out, "\nmodels and routes:");
    for m in models {
        let (mark, what) = match (m.action, &m.result) {
            (ModelActionKind::Pull, Some(Ok(()))) => ("↓", format!("pulled {}", m.target)),
            (ModelActionKind::Pull, Some(Err(why))) => ("!", format!("pull of {} failed: {why}", m.target)),
            (ModelActionKind::Pull, None) if dry_run => ("↓", format!("pull {}: {}", m.target, m.reason)),
            // Applied through a daemon: it pulls after the pass, progress in its log.
            (ModelActionKind::Pull, None) => ("↓", format!("pulling {} in the daemon (progress in its log)", m.target)),
            (ModelActionKind::Missing, _) => ("!", format!("missing {}: {}", m.target, m.reason)),
            (ModelActionKind::Unchecked, _) => ("?", m.reason.clone()),
            (ModelActionKind::Route, _) => ("→", format!("route to {}: {}", m.target, m.reason)),
            (ModelActionKind::Failover, _) => ("⇄", format!("failover {}: {}", m.target, m.reason)),
            (ModelActionKind::Failback, _) => ("⇄", format!("failback {}: {}", m.target, m.reason)),
            (ModelActionKind::FailbackLater, _) => ("…", format!("failback {} {}", m.target, m.reason)),
            (ModelActionKind::FailoverLater, _) => ("…", format!("on {}: {}", m.target, m.reason)),
            (ModelActionKind::Unroutable, _) => ("!", format!("no healthy model: {}", m.reason)),
        };
        w!(out, "  {mark} {}/{}: {what}", m.kind, m.name);
    }
    // Without a daemon, first routes are what one would pick (nothing routes yet).
    let previewed = models.iter().any(|m| m.action == ModelActionKind::Route && !m.pending);
    if dry_run && previewed {
        w!(
            out,
            "  (routes are kept by `mirrorctl run`: shown as its probes find the providers now)"
        );
    }
}

fn render_text(outcome: &PassOutcome, dry_run: bool, verbose: bool, color: bool) -> String {
    let mut out = String::new();
    let Some(plan) = &outcome.plan else {
        for d in &outcome.diagnostics {
            w!(out, "{d}");
        }
        w!(
            out,
            "invalid: the desired state has {} error(s): nothing was applied",
            outcome.diagnostics.len()
        );
        return out;
    };
    let commit = plan
        .commit
        .as_deref()
        .map_or("(working tree)", |c| &c[..c.len().min(12)]);
    w!(out, "{} at commit {commit}", if dry_run { "plan" } else { "reconcile" });
    for (action, title, mark) in GROUPS {
        if action == Action::Noop && !verbose {
            continue;
        }
        let changes: Vec<_> = plan.changes.iter().filter(|c| c.action == action).collect();
        if changes.is_empty() {
            continue;
        }
        w!(out, "\n{title}:");
        for change in changes {
            w!(out, "  {mark} {}/{}: {}", change.kind, change.name, change.reason);
            for line in change.diff.lines() {
                w!(out, "      {}", colored(line, color));
            }
            // What was done (failures are listed below).
            let done = outcome
                .applied
                .iter()
                .find(|a| a.ok && a.kind == change.kind && a.name == change.name && !a.detail.is_empty());
            if let Some(done) = done {
                w!(out, "    done: {}", done.detail);
            }
        }
    }
    if !outcome.policies.is_empty() {
        w!(out, "\npolicies:");
        for p in &outcome.policies {
            let what = match p.previous_version {
                Some(previous) => format!("version {previous} -> {}", p.version),
                None => format!("version {}", p.version),
            };
            w!(
                out,
                "  ~ Policy/{}: {what} ({})",
                p.name,
                &p.hash[..p.hash.len().min(12)]
            );
            for line in p.diff.lines() {
                w!(out, "      {}", colored(line, color));
            }
        }
    }
    render_models(&mut out, &outcome.models, dry_run);
    render_memory(&mut out, &outcome.memory, dry_run);
    if let Some(refused) = &plan.refused {
        w!(out, "\nrefused: {refused}");
    }
    for applied in outcome.applied.iter().filter(|a| !a.ok) {
        w!(
            out,
            "\nfailed: {}/{} ({}): {}",
            applied.kind,
            applied.name,
            applied.action.as_str(),
            applied.detail
        );
    }
    let pulls = outcome
        .models
        .iter()
        .filter(|m| m.pending && m.action == ModelActionKind::Pull)
        .count();
    let switches = outcome
        .models
        .iter()
        .filter(|m| m.pending && m.action != ModelActionKind::Pull)
        .count();
    let mut summary = plan.summary();
    if pulls > 0 {
        summary.push_str(&format!(", {pulls} model(s) to pull"));
    }
    if switches > 0 {
        summary.push_str(&format!(", {switches} route change(s)"));
    }
    if !outcome.policies.is_empty() {
        summary.push_str(&format!(", {} policy version(s)", outcome.policies.len()));
    }
    let memories = outcome.memory.total();
    if memories > 0 {
        let verb = if outcome.memory.applied { "moved" } else { "to move" };
        summary.push_str(&format!(", {memories} memory item(s) {verb}"));
    }
    w!(
        out,
        "\n{summary}{}",
        if dry_run { " (dry-run: nothing changed)" } else { "" }
    );
    w!(out, "drift report {} stored", outcome.report.id);
    for note in &outcome.notes {
        w!(out, "note: {note}");
    }
    out
}
