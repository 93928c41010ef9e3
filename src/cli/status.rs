//! `mirrorctl status`: per resource, sync and health, pid, restarts, uptime. Exit 0.

use std::fmt::Write as _;

use serde_json::json;

use super::{emit, exit, json_text, report_error, GlobalArgs, Output};
use crate::daemon::control::{Request, Response};
use crate::reconcile::{status, StatusReport};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  mirrorctl status\n  mirrorctl status web ollama   # each in detail: \
                        pid, restarts, last actions, probe, route, spec, last log lines\n  \
                        mirrorctl status --fleet --store postgres://mirror@db/mirror   # every host of the store"
)]
pub struct StatusArgs {
    /// Show these resources in detail
    #[arg(add = clap_complete::ArgValueCandidates::new(super::completions::resource_names))]
    pub names: Vec<String>,
    /// Every host sharing the truth store (`--store`, PostgreSQL for a fleet): its last pass, what
    /// it owns, its latest drift
    #[arg(long, conflicts_with = "names")]
    pub fleet: bool,
}

pub fn run(global: &GlobalArgs, args: &StatusArgs) -> u8 {
    if args.fleet {
        return super::status_fleet::run(global);
    }
    let json = global.output == Output::Json || !args.names.is_empty();
    let request = Request::Status {
        json,
        source: global.source_request(),
    };
    let response = match crate::daemon::control::ask(&global.state_dir(), &request) {
        Ok(Some(response)) => response,
        Ok(None) => match global
            .reconcile_context()
            .map_err(|e| e.to_string())
            .and_then(|context| status(&context).map_err(|e| e.to_string()))
        {
            Ok(report) => render(&request, &report, None),
            Err(e) => {
                report_error(global.output, &StatusError(e));
                return exit::ERROR;
            }
        },
        Err(e) => {
            report_error(global.output, &e);
            return exit::ERROR;
        }
    };
    if args.names.is_empty() || response.exit_code != exit::OK {
        return emit(&response);
    }
    match serde_json::from_str::<serde_json::Value>(&response.stdout) {
        Ok(report) => emit(&super::status_detail::render(global, &report, &args.names)),
        Err(e) => {
            report_error(
                global.output,
                &StatusError(format!("the status report is not understood: {e}")),
            );
            exit::ERROR
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct StatusError(String);

/// What `status` prints (also what the daemon answers; it names itself in `daemon`).
pub fn render(request: &Request, report: &StatusReport, daemon: Option<u32>) -> Response {
    let json = matches!(request, Request::Status { json: true, .. });
    let stdout = if json {
        json_text(&json!({
            "commit": report.commit,
            "mechanism": report.mechanism,
            "daemon": daemon,
            "resources": report.resources,
            "source_error": report.source_error,
            "kept_in_force": report.kept_in_force,
            "head": report.head,
            "launch_agents": report.launch_agents,
            "providers": report.providers,
            "routes": report.routes,
            "sandbox": report.sandbox,
            "pass_running": report.pass_running,
        }))
    } else {
        let mut out = String::new();
        write_header(&mut out, report);
        write_resources(&mut out, report);
        write_launch_agents(&mut out, report);
        write_providers(&mut out, report);
        write_routes(&mut out, report);
        write_protections(&mut out, report);
        write_footer(&mut out, report, daemon);
        out
    };
    Response {
        exit_code: exit::OK,
        stdout,
        stderr: String::new(),
    }
}

/// Why what follows may not be HEAD's state, and a pass in progress.
fn write_header(out: &mut String, report: &StatusReport) {
    match (&report.source_error, &report.commit) {
        (Some(problem), Some(commit)) if report.kept_in_force => {
            let commit = &commit[..commit.len().min(12)];
            let head = report
                .head
                .as_deref()
                .map(|h| format!(" (commit {})", &h[..h.len().min(12)]))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "HEAD{head} is not applied ({problem}); commit {commit} stays in force and is what this shows\n"
            );
        }
        (Some(problem), _) => {
            let _ = writeln!(
                out,
                "desired state unavailable ({problem}); showing what this host owns\n"
            );
        }
        (None, _) => {}
    }
    if let Some(pass) = &report.pass_running {
        let _ = writeln!(
            out,
            "a pass is running ({}, for {:.1} s): this shows what it has done so far\n",
            pass.trigger,
            pass.for_ms as f64 / 1000.0
        );
    }
}

/// One line per resource: sync, health, pid, restarts, uptime, detail.
fn write_resources(out: &mut String, report: &StatusReport) {
    let _ = writeln!(
        out,
        "{:<14} {:<24} {:<10} {:<11} {:>8} {:>8} {:>9}  DETAIL",
        "KIND", "NAME", "SYNC", "HEALTH", "PID", "RESTARTS", "UPTIME"
    );
    for r in &report.resources {
        let pid = r.pid.map_or("-".to_string(), |p| p.to_string());
        let uptime = r.uptime_s.map_or("-".to_string(), |s| {
            humantime::format_duration(std::time::Duration::from_secs(s)).to_string()
        });
        let _ = writeln!(
            out,
            "{:<14} {:<24} {:<10} {:<11} {:>8} {:>8} {:>9}  {}",
            r.kind.as_str(),
            r.name,
            r.sync,
            r.health,
            pid,
            r.restarts,
            uptime,
            r.detail
        );
    }
}

/// Launch agents: schedule, pid, last and next run.
fn write_launch_agents(out: &mut String, report: &StatusReport) {
    if !report.launch_agents.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<26} {:<14} {:>8}  {:<30} NEXT RUN",
            "LAUNCH AGENT", "SCHEDULE", "PID", "LAST RUN"
        );
        let now = crate::report::now_ms();
        for agent in &report.launch_agents {
            let schedule = match &agent.schedule {
                Some(crate::spec::common::Schedule::Every(every)) => format!("every {every}"),
                Some(crate::spec::common::Schedule::Cron(cron)) => cron.as_str().to_string(),
                None => "-".to_string(),
            };
            let schedule = if agent.suspended {
                "suspended".to_string()
            } else {
                schedule
            };
            let pid = agent.pids.first().map_or("-".to_string(), |p| p.to_string());
            let last = agent.last_run.as_ref().map_or("-".to_string(), |run| {
                let code = run.exit_code.map_or(String::new(), |c| format!(" ({c})"));
                format!(
                    "{}{code} {} ago",
                    run.outcome.as_str(),
                    crate::report::elapsed(run.started_ms, now)
                )
            });
            let next = agent.next_run_ms.map_or("-".to_string(), |at| {
                let wait = std::time::Duration::from_secs(((at - now).max(0) / 1000) as u64);
                format!("in {}", humantime::format_duration(wait))
            });
            let _ = writeln!(
                out,
                "{:<26} {:<14} {:>8}  {:<30} {next}",
                agent.name, schedule, pid, last
            );
        }
    }
}

/// Model providers: health as probed (never Healthy after a failed probe).
fn write_providers(out: &mut String, report: &StatusReport) {
    if let Some(providers) = report.providers.as_array().filter(|p| !p.is_empty()) {
        let _ = writeln!(out, "\n{:<26} {:<10} DETAIL", "MODEL PROVIDER", "HEALTH");
        for p in providers {
            let verdict = &p["verdict"];
            let detail = verdict["detail"]
                .as_str()
                .or(verdict["why"].as_str())
                .unwrap_or("not probed yet");
            // Never Healthy after a probe that failed (`Failing`: still routed to until its
            // failure threshold).
            let health = p["health"].as_str().unwrap_or("Unknown");
            let _ = writeln!(out, "{:<26} {:<10} {detail}", p["name"].as_str().unwrap_or("?"), health);
        }
    }
}

/// Each agent's route and why.
fn write_routes(out: &mut String, report: &StatusReport) {
    if let Some(routes) = report.routes.as_array().filter(|r| !r.is_empty()) {
        let _ = writeln!(out, "\n{:<26} {:<40} REASON", "AGENT", "ROUTE");
        for r in routes {
            let route = match (r["provider"].as_str(), r["model"].as_str()) {
                (Some(p), Some(m)) => format!(
                    "{p}/{m}{}{}",
                    if r["degraded"] == true { " (fallback)" } else { "" },
                    if r["probed"] == false { " (unprobed)" } else { "" }
                ),
                // Waiting for the first probes is not "none healthy".
                _ if r["degraded"] == false => "-".to_string(),
                _ => "none healthy".to_string(),
            };
            let _ = writeln!(
                out,
                "{:<26} {:<40} {}",
                r["agent"].as_str().unwrap_or("?"),
                route,
                r["reason"].as_str().unwrap_or("")
            );
        }
    }
}

/// What contains each agent: enforced, and advisory with how.
fn write_protections(out: &mut String, report: &StatusReport) {
    for resource in report.resources.iter().filter(|r| r.protections.is_some()) {
        let protections = resource.protections.as_deref().unwrap_or_default();
        let names = |state: &str| -> Vec<&str> {
            protections
                .iter()
                .filter(|p| p.state == state)
                .map(|p| p.name.as_str())
                .collect()
        };
        let _ = write!(
            out,
            "\nagent {} contained: {} enforced",
            resource.name,
            names("enforced").join(", ")
        );
        for advisory in protections.iter().filter(|p| p.state != "enforced") {
            let _ = write!(out, "; {} advisory ({})", advisory.name, advisory.how);
        }
        out.push('\n');
    }
}

/// The commit, liveness mechanism, sandboxes, and who supervises.
fn write_footer(out: &mut String, report: &StatusReport, daemon: Option<u32>) {
    let commit = report.commit.as_deref().map_or("-", |c| &c[..c.len().min(12)]);
    let supervisor = match daemon {
        Some(pid) => format!("daemon pid {pid}"),
        None => "no daemon running".to_string(),
    };
    let _ = writeln!(
        out,
        "\ncommit {commit}; liveness by {}; agent sandboxes {}; {supervisor}",
        report.mechanism, report.sandbox
    );
}
