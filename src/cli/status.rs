//! `mirrorctl status`: per resource, sync and health, pid, restarts, uptime. Exit 0.

use serde_json::json;

use super::{exit, print_json, report_error, GlobalArgs, Output};
use crate::reconcile::status;

pub fn run(global: &GlobalArgs) -> u8 {
    let context = match global.reconcile_context() {
        Ok(context) => context,
        Err(e) => {
            report_error(global.output, &e);
            return exit::ERROR;
        }
    };
    let report = match status(&context) {
        Ok(report) => report,
        Err(e) => {
            report_error(global.output, &e);
            return exit::ERROR;
        }
    };
    match global.output {
        Output::Json => print_json(&json!({
            "commit": report.commit,
            "mechanism": report.mechanism,
            "resources": report.resources,
            "source_error": report.source_error,
        })),
        Output::Text => {
            if let Some(problem) = &report.source_error {
                println!("desired state unavailable ({problem}); showing what this host owns\n");
            }
            println!(
                "{:<14} {:<24} {:<10} {:<11} {:>8} {:>8} {:>9}  DETAIL",
                "KIND", "NAME", "SYNC", "HEALTH", "PID", "RESTARTS", "UPTIME"
            );
            for r in &report.resources {
                let pid = r.pid.map_or("-".to_string(), |p| p.to_string());
                let uptime = r.uptime_s.map_or("-".to_string(), |s| {
                    humantime::format_duration(std::time::Duration::from_secs(s)).to_string()
                });
                println!(
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
            let commit = report.commit.as_deref().map_or("-", |c| &c[..c.len().min(12)]);
            println!("\ncommit {commit}; liveness by {}", report.mechanism);
        }
    }
    exit::OK
}
