//! `mirrorctl stop|start|restart NAME`: a person's day-to-day overrides of one service or agent
//! (see `reconcile::overrides`). Through the daemon when one runs (it records who asked from
//! the socket's peer credentials), else here under the state dir's lock.

use clap::Args;
use serde_json::json;

use super::{ask_daemon, block_on, emit, exit, json_text, GlobalArgs, Output};
use crate::daemon::control::{Request, Response};
use crate::reconcile::overrides::{run_operation, this_user, Verb};
use crate::reconcile::PassOutcome;

#[derive(Debug, Args)]
pub struct OperateArgs {
    /// The service (or agent) name, as in the desired state
    #[arg(add = clap_complete::ArgValueCandidates::new(super::completions::resource_names))]
    pub name: String,
}

pub fn run(global: &GlobalArgs, args: &OperateArgs, verb: Verb) -> u8 {
    let json = global.output == Output::Json;
    // With a daemon, it names who asked from the socket's peer, never from the request.
    let request = Request::Operate {
        name: args.name.clone(),
        verb,
        by: String::new(),
        json,
    };
    // A person's override acts on what the host runs: the source in force at its commit,
    // never an uncommitted edit nor another source (a daemon applies only its own).
    let state_dir = global.state_dir();
    let in_force = crate::reconcile::in_force::recall_source(&state_dir);
    let refusal = match &in_force {
        _ if global.worktree => Some("uncommitted edits are never applied: drop --worktree".to_string()),
        Some(source) if !super::source::is_in_force(global, source) => Some(format!(
            "{} acts on the source in force on this host ({}, path {}, ref {}); drop --repo/--path/--ref",
            verb.as_str(),
            source.repo.display(),
            source.path.display(),
            source.reference
        )),
        _ => None,
    };
    if let Some(why) = refusal {
        super::report_error(global.output, &OperateError(why));
        return exit::ERROR;
    }
    if let Some(code) = ask_daemon(global, &request) {
        return code;
    }
    let mut context = match global.reconcile_context() {
        Ok(context) => context,
        Err(e) => {
            super::report_error(global.output, &e);
            return exit::ERROR;
        }
    };
    // The commit in force, not a HEAD that moved since (a restart keeps the spec it runs).
    if let Some(commit) = crate::reconcile::in_force::recall(&state_dir).filter(|_| in_force.is_some()) {
        context.source.reference = commit;
    }
    match block_on(run_operation(&context, &args.name, verb, &this_user())) {
        Ok(outcome) => emit(&render(&request, &outcome)),
        Err(message) => {
            super::report_error(global.output, &OperateError(message));
            exit::ERROR
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct OperateError(String);

/// What `stop|start|restart NAME` prints: what was done to the resource, or why nothing was.
pub fn render(request: &Request, outcome: &PassOutcome) -> Response {
    let Request::Operate { name, verb, json, .. } = request else {
        return Response::default();
    };
    let change = outcome
        .plan
        .as_ref()
        .and_then(|plan| plan.changes.iter().find(|c| &c.name == name));
    let applied = outcome.applied.iter().find(|a| &a.name == name);
    let failed = applied.is_some_and(|a| !a.ok) || (applied.is_none() && outcome.error.is_some());
    let text = match (applied, change) {
        (Some(a), _) if a.ok => format!("{}/{}: {}", a.kind, a.name, done(a, *verb)),
        (Some(a), _) => format!("{}/{}: {} failed: {}", a.kind, a.name, a.action.as_str(), a.detail),
        (None, Some(c)) => format!("{}/{}: nothing to do ({})", c.kind, c.name, c.reason),
        (None, None) => format!(
            "{name}: nothing done: {}",
            outcome.error.as_deref().unwrap_or("no change planned")
        ),
    };
    let stdout = if *json {
        json_text(&json!({
            "name": name,
            "verb": verb.as_str(),
            "commit": outcome.commit,
            "action": applied.map(|a| a.action.as_str()),
            "ok": !failed,
            "detail": text,
        }))
    } else {
        format!("{text}\n")
    };
    Response {
        exit_code: if failed { exit::ERROR } else { exit::OK },
        stdout,
        stderr: String::new(),
    }
}

/// The applied action in words, with what ends a stop.
fn done(applied: &crate::reconcile::Applied, verb: Verb) -> String {
    let detail = applied
        .detail
        .trim_end_matches("; suspended")
        .trim_end_matches("; ")
        .trim();
    match verb {
        Verb::Stop => format!(
            "{detail}; it stays stopped until `mirrorctl start {}` or the next commit",
            applied.name
        ),
        _ => detail.to_string(),
    }
}
