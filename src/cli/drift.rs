//! `mirrorctl drift report|list|show ID`: an observe-only drift report now (exit 0 none, 2
//! drift, 1 error); drift reports read back from the truth store.

use clap::Subcommand;

use super::{
    block_on, exit, json_text, open_store, pass_via_daemon_or_here, print_json, report_error, GlobalArgs, Output,
};
use crate::daemon::control::{Request, Response};
use crate::reconcile::{PassOptions, PassOutcome};
use crate::report;

#[derive(Debug, Subcommand)]
pub enum DriftCommand {
    /// Observe the host against the desired state now, change nothing, store the report
    Report,
    /// Stored drift reports, newest first
    List {
        /// How many to show
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// One drift report and its items
    Show {
        /// The report's id (as `drift list` shows it)
        id: String,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("no drift report with id `{0}` in the truth store")]
struct ReportNotFound(String);

pub fn run(global: &GlobalArgs, command: &DriftCommand) -> u8 {
    if let DriftCommand::Report = command {
        return report_now(global);
    }
    block_on(async {
        let Some(store) = open_store(global).await else {
            return exit::ERROR;
        };
        match command {
            DriftCommand::Report => unreachable!("handled above"),
            DriftCommand::List { limit } => match store.drift_reports(*limit).await {
                Ok(reports) => {
                    match global.output {
                        Output::Text => print!("{}", report::render_list(&reports)),
                        Output::Json => print_json(&serde_json::json!({"reports": reports})),
                    }
                    exit::OK
                }
                Err(e) => {
                    report_error(global.output, &e);
                    exit::ERROR
                }
            },
            DriftCommand::Show { id } => match store.drift_report(id).await {
                Ok(Some(report)) => {
                    match global.output {
                        Output::Text => print!("{}", report::render_text(&report)),
                        Output::Json => print_json(&serde_json::to_value(&report).expect("serializable")),
                    }
                    exit::OK
                }
                Ok(None) => {
                    report_error(global.output, &ReportNotFound(id.clone()));
                    exit::ERROR
                }
                Err(e) => {
                    report_error(global.output, &e);
                    exit::ERROR
                }
            },
        }
    })
}

/// `drift report`: the daemon's observe-only pass if one runs, else one of our own.
fn report_now(global: &GlobalArgs) -> u8 {
    let request = Request::DriftReport {
        json: global.output == Output::Json,
        source: global.source_request(),
    };
    let options = PassOptions {
        models: false,
        memory: true,
        dry_run: true,
        allow_mass_prune: false,
        trigger: "drift-report".into(),
    };
    pass_via_daemon_or_here(global, &request, options, render)
}

/// What `drift report` prints: the report; exit 0 without drift, 2 with drift, 1 when the
/// source could not be used.
pub fn render(request: &Request, outcome: &PassOutcome) -> Response {
    let json = matches!(request, Request::DriftReport { json: true, .. });
    let stdout = if json {
        json_text(&serde_json::to_value(&outcome.report).expect("serializable"))
    } else {
        report::render_text(&outcome.report)
    };
    let mut stderr = String::new();
    for d in &outcome.diagnostics {
        stderr.push_str(&format!("{d}\n"));
    }
    let exit_code = if outcome.plan.is_none() {
        exit::ERROR
    } else if outcome.report.items.is_empty() {
        exit::OK
    } else {
        exit::CHANGES
    };
    Response {
        exit_code,
        stdout,
        stderr,
    }
}
