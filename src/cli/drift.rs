//! `mirrorctl drift list|show ID`: drift reports read back from the truth store.

use clap::Subcommand;

use super::{block_on, exit, open_store, print_json, report_error, GlobalArgs, Output};
use crate::report;

#[derive(Debug, Subcommand)]
pub enum DriftCommand {
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
    block_on(async {
        let Some(store) = open_store(global).await else {
            return exit::ERROR;
        };
        match command {
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
