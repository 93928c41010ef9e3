//! `mirrorctl validate`: parse + schema + semantic checks. Exit 0 valid, 1 invalid.

use std::collections::BTreeMap;

use serde_json::json;

use super::{exit, print_json, report_error, GlobalArgs, Output};
use crate::source::{self, DesiredState, LoadError};

pub fn run(global: &GlobalArgs) -> u8 {
    match source::load(&global.source_options()) {
        Ok(state) => {
            print_valid(global.output, &state);
            exit::OK
        }
        Err(LoadError::Invalid {
            commit,
            files,
            diagnostics,
        }) => {
            match global.output {
                Output::Text => {
                    for d in &diagnostics {
                        println!("{d}");
                    }
                    let files_with_errors = diagnostics
                        .iter()
                        .map(|d| &d.file)
                        .collect::<std::collections::BTreeSet<_>>()
                        .len();
                    println!(
                        "invalid: {} error(s) in {} of {} file(s) at {}",
                        diagnostics.len(),
                        files_with_errors,
                        files,
                        source::source_label(commit.as_deref(), global.worktree)
                    );
                }
                Output::Json => print_json(&json!({
                    "valid": false,
                    "commit": commit,
                    "worktree": global.worktree,
                    "files": files,
                    "errors": diagnostics,
                })),
            }
            exit::ERROR
        }
        Err(LoadError::Read(e)) => {
            report_error(global.output, &e);
            exit::ERROR
        }
    }
}

fn print_valid(output: Output, state: &DesiredState) {
    match output {
        Output::Text => {
            let mut per_kind: BTreeMap<&str, usize> = BTreeMap::new();
            for r in &state.resources {
                *per_kind.entry(r.kind.as_str()).or_default() += 1;
            }
            let counts: Vec<String> = per_kind.iter().map(|(k, n)| format!("{n} {k}")).collect();
            println!(
                "valid: {} resource(s) in {} file(s) at {}{}",
                state.resources.len(),
                state.files,
                state.source_label(),
                if counts.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", counts.join(", "))
                }
            );
        }
        Output::Json => {
            let resources: Vec<_> = state
                .resources
                .iter()
                .map(|r| json!({"kind": r.kind, "name": r.name(), "file": r.origin.file, "line": r.origin.line, "column": r.origin.column}))
                .collect();
            print_json(&json!({
                "valid": true,
                "commit": state.commit,
                "worktree": state.worktree,
                "files": state.files,
                "resources": resources,
                "errors": [],
            }));
        }
    }
}
