//! `mirrorctl status --fleet`: every host that writes to the truth store, as the store last
//! heard of it (its last pass, what it owns, its latest drift report). Exit 0, 1 on an error.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::{block_on, exit, json_text, open_store, report_error, GlobalArgs, Output};
use crate::report::{now_ms, rfc3339};
use crate::store::FleetHost;

pub fn run(global: &GlobalArgs) -> u8 {
    let hosts = block_on(async {
        let store = open_store(global).await?;
        store.fleet().await.map_err(|e| report_error(global.output, &e)).ok()
    });
    let Some(hosts) = hosts else {
        return exit::ERROR;
    };
    match global.output {
        Output::Json => println!(
            "{}",
            json_text(&json!({ "hosts": hosts.iter().map(host_json).collect::<Vec<_>>() }))
        ),
        Output::Text => print!("{}", render_text(&hosts, now_ms())),
    }
    exit::OK
}

fn host_json(host: &FleetHost) -> Value {
    let resources: Vec<Value> = host
        .resources
        .iter()
        .map(|entry| {
            let record = crate::reconcile::process_record(entry);
            json!({
                "kind": entry.kind,
                "name": entry.name,
                "pid": record.as_ref().map(|r| r.identity.pid),
                "restarts": record.as_ref().map_or(0, |r| r.restarts_shown()),
                "spec_hash": entry.spec_hash,
                "updated_at": rfc3339(entry.updated_ms),
            })
        })
        .collect();
    json!({
        "host": host.host,
        "commit": host.commit,
        "last_pass_at": host.last_pass_ms.map(rfc3339),
        "outcome": host.outcome,
        "resources": resources,
        "drift": host.drift,
    })
}

/// One line per host, then each host's drift items.
fn render_text(hosts: &[FleetHost], now_ms: i64) -> String {
    let mut out = String::new();
    if hosts.is_empty() {
        out.push_str("no host has written to this truth store yet\n");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<24} {:<12} {:<14} {:<16} {:>9}  DRIFT",
        "HOST", "COMMIT", "LAST PASS", "OUTCOME", "RESOURCES"
    );
    for host in hosts {
        let commit = host.commit.as_deref().map_or("-", |c| &c[..c.len().min(12)]);
        let last = host.last_pass_ms.map_or("-".to_string(), |at| {
            format!("{} ago", crate::report::elapsed(at, now_ms))
        });
        let drift = match &host.drift {
            None => "-".to_string(),
            Some(report) if report.items.is_empty() => "none".to_string(),
            Some(report) => format!("{} item(s)", report.items.len()),
        };
        let _ = writeln!(
            out,
            "{:<24} {:<12} {:<14} {:<16} {:>9}  {drift}",
            host.host,
            commit,
            last,
            host.outcome.as_deref().unwrap_or("-"),
            host.resources.len()
        );
    }
    for host in hosts {
        let Some(report) = host.drift.as_ref().filter(|r| !r.items.is_empty()) else {
            continue;
        };
        let _ = writeln!(out, "\n{}:", host.host);
        for item in &report.items {
            let _ = writeln!(
                out,
                "  {} {}/{}: {}: {}",
                item.severity.as_str(),
                item.kind,
                item.name,
                item.drift.as_str(),
                item.detail
            );
        }
    }
    out
}
