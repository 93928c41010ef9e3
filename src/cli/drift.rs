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
    /// Stored drift reports, newest first (an identical later pass is counted on its report)
    #[command(after_help = "Examples:\n  mirrorctl drift list --since 1h\n  \
                            mirrorctl drift list --severity error --kind Service\n  \
                            mirrorctl drift list --resource web --limit 5")]
    List {
        /// How many to show
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Only reports seen within this long (`30m`, `1h`, `2d`)
        #[arg(long, value_name = "DURATION", value_parser = super::parse_duration_arg)]
        since: Option<std::time::Duration>,
        /// Only reports with an item at least this severe
        #[arg(long, value_enum)]
        severity: Option<SeverityArg>,
        /// Only reports with an item of this kind (Service, Agent, ModelProvider, Source, ...)
        #[arg(long)]
        kind: Option<String>,
        /// Only reports with an item about this resource name
        #[arg(long, value_name = "NAME")]
        resource: Option<String>,
    },
    /// One drift report and its items
    #[command(after_help = "Example:\n  mirrorctl drift show 0193a4f2   # a unique prefix of the id, like git")]
    Show {
        /// The report's id (as `drift list` shows it), or a unique prefix of it
        id: String,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum SeverityArg {
    Info,
    Warning,
    Error,
    Critical,
}

impl SeverityArg {
    fn severity(self) -> crate::report::Severity {
        use crate::report::Severity;
        match self {
            SeverityArg::Info => Severity::Info,
            SeverityArg::Warning => Severity::Warning,
            SeverityArg::Error => Severity::Error,
            SeverityArg::Critical => Severity::Critical,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("no drift report with id `{0}` in the truth store")]
struct ReportNotFound(String);

#[derive(Debug, thiserror::Error)]
#[error("`{prefix}` is ambiguous: {} drift reports start with it ({}): give more of the id", ids.len(), ids.join(", "))]
struct AmbiguousId {
    prefix: String,
    ids: Vec<String>,
}

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
            DriftCommand::List {
                limit,
                since,
                severity,
                kind,
                resource,
            } => {
                let filter = crate::report::ReportFilter {
                    limit: *limit,
                    since_ms: since.map(|d| {
                        crate::report::now_ms().saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                    }),
                    min_severity: severity.map(SeverityArg::severity),
                    kind: kind.clone(),
                    resource: resource.clone(),
                };
                list(global, store.as_ref(), &filter).await
            }
            DriftCommand::Show { id } => show(global, store.as_ref(), id).await,
        }
    })
}

async fn list(global: &GlobalArgs, store: &dyn crate::store::Store, filter: &crate::report::ReportFilter) -> u8 {
    match store.drift_reports(filter).await {
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
    }
}

/// `drift show ID`: the report with that id, or the one whose id starts with it.
async fn show(global: &GlobalArgs, store: &dyn crate::store::Store, id: &str) -> u8 {
    let found = match store.drift_report(id).await {
        Ok(Some(report)) => Ok(Some(report)),
        Ok(None) => match store.drift_report_ids(id, 10).await {
            Ok(ids) if ids.len() == 1 => store.drift_report(&ids[0]).await,
            Ok(ids) if ids.len() > 1 => {
                report_error(
                    global.output,
                    &AmbiguousId {
                        prefix: id.to_string(),
                        ids,
                    },
                );
                return exit::ERROR;
            }
            Ok(_) => Ok(None),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    match found {
        Ok(Some(report)) => {
            match global.output {
                Output::Text => print!("{}", report::render_text(&report)),
                Output::Json => print_json(&serde_json::to_value(&report).expect("serializable")),
            }
            exit::OK
        }
        Ok(None) => {
            report_error(global.output, &ReportNotFound(id.to_string()));
            exit::ERROR
        }
        Err(e) => {
            report_error(global.output, &e);
            exit::ERROR
        }
    }
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
