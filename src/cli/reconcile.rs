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
use crate::reconcile::{PassOptions, PassOutcome};

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
    let exit_code = match (
        &outcome.error,
        dry_run,
        outcome.plan.as_ref().map_or(0, |p| p.pending().count()),
    ) {
        (Some(_), _, _) => exit::ERROR,
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
    json!({
        "commit": outcome.commit,
        "dry_run": dry_run,
        "changes": changes,
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
        }
    }
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
    w!(
        out,
        "\n{}{}",
        plan.summary(),
        if dry_run { " (dry-run: nothing changed)" } else { "" }
    );
    w!(out, "drift report {} stored", outcome.report.id);
    out
}
