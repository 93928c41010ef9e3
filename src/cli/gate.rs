//! `mirrorctl gate pending | approve ID | deny ID`: the tool requests of agents that wait for a
//! person. They live in the daemon (the bus asks it), so these commands need a running one.

use std::fmt::Write as _;

use clap::Subcommand;
use serde_json::json;

use super::{ask_daemon, exit, json_text, GlobalArgs, Output};
use crate::daemon::control::{Request, Response};
use crate::policy::{ApprovalRequest, ApprovalState};

#[derive(Debug, Subcommand)]
pub enum GateCommand {
    /// List tool requests waiting for approval
    Pending,
    /// Approve a waiting request: the agent's next identical call is allowed, once. The
    /// receipt names who decided as the daemon sees the caller (user name and uid), and an
    /// agent's process is refused
    Approve { id: String },
    /// Deny a waiting request
    Deny { id: String },
}

pub fn run(global: &GlobalArgs, command: &GateCommand) -> u8 {
    let json = global.output == Output::Json;
    // The daemon records the decider from the socket's peer credentials, never from the request.
    let by = String::new;
    let request = match command {
        GateCommand::Pending => Request::GatePending { json },
        GateCommand::Approve { id } => Request::GateDecide {
            id: id.clone(),
            approve: true,
            by: by(),
            json,
        },
        GateCommand::Deny { id } => Request::GateDecide {
            id: id.clone(),
            approve: false,
            by: by(),
            json,
        },
    };
    match ask_daemon(global, &request) {
        Some(code) => code,
        None => {
            let message = "no daemon runs on this state dir: tool approvals live in `mirrorctl run`";
            match global.output {
                Output::Text => eprintln!("mirrorctl: error: {message}"),
                Output::Json => print!("{}", json_text(&json!({"error": message}))),
            }
            exit::ERROR
        }
    }
}

fn state_word(state: &ApprovalState) -> &'static str {
    match state {
        ApprovalState::Pending => "pending",
        ApprovalState::Approved { .. } => "approved",
        ApprovalState::Denied { .. } => "denied",
        ApprovalState::Expired { .. } => "expired",
    }
}

/// What `gate pending` prints (rendered by the daemon).
pub fn render_pending(pending: &[ApprovalRequest], json: bool) -> Response {
    let stdout = if json {
        json_text(&json!({ "pending": pending }))
    } else if pending.is_empty() {
        "no tool requests wait for approval\n".to_string()
    } else {
        let mut out = String::new();
        let _ = writeln!(out, "{:<38} {:<16} {:<20} {:<9} REASON", "ID", "AGENT", "TOOL", "RISK");
        for r in pending {
            let risk = serde_json::to_value(r.risk)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "{:<38} {:<16} {:<20} {:<9} {}",
                r.id, r.agent, r.tool, risk, r.reason
            );
            let _ = writeln!(out, "{:<38} args {}", "", r.args);
        }
        out
    };
    Response {
        exit_code: exit::OK,
        stdout,
        stderr: String::new(),
    }
}

/// What `gate approve|deny` prints (rendered by the daemon).
pub fn render_decided(decided: &Result<ApprovalRequest, String>, json: bool) -> Response {
    match decided {
        Ok(request) => Response {
            exit_code: exit::OK,
            stdout: if json {
                json_text(&json!({ "request": request }))
            } else {
                let by = match &request.state {
                    ApprovalState::Approved { by, .. } | ApprovalState::Denied { by, .. } => format!(" by {by}"),
                    _ => String::new(),
                };
                format!(
                    "{} {}: {} for agent {}{by}\n",
                    state_word(&request.state),
                    request.id,
                    request.tool,
                    request.agent
                )
            },
            stderr: String::new(),
        },
        Err(why) => Response {
            exit_code: exit::ERROR,
            stdout: if json {
                json_text(&json!({ "error": why }))
            } else {
                String::new()
            },
            stderr: if json {
                String::new()
            } else {
                format!("mirrorctl: error: {why}\n")
            },
        },
    }
}
