//! `mirrorctl audit verify`: checks the hash chain of every host's receipts. Exit 0 intact,
//! 1 broken (naming the first receipt edited, deleted or reordered) or unreadable.

use clap::Subcommand;
use serde_json::json;

use super::{block_on, exit, open_store, print_json, report_error, GlobalArgs, Output};
use crate::store::chain::{verify_chain, ChainBreak};
use crate::store::recorder::local_chain_end;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify the receipts' hash chains
    Verify,
}

pub fn run(global: &GlobalArgs, command: &AuditCommand) -> u8 {
    let AuditCommand::Verify = command;
    block_on(async {
        let Some(store) = open_store(global).await else {
            return exit::ERROR;
        };
        let receipts = match store.receipts().await {
            Ok(receipts) => receipts,
            Err(e) => {
                report_error(global.output, &e);
                return exit::ERROR;
            }
        };
        let hosts = receipts
            .iter()
            .map(|r| r.host.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        let mut result = verify_chain(&receipts).map(|_| ());
        // This host also remembers where its chain ends: receipts cut off the end show there.
        if result.is_ok() {
            let host = crate::state::host_name();
            if let Some(expected) = local_chain_end(&global.state_dir(), &host) {
                let last = receipts
                    .iter()
                    .filter(|r| r.host == host)
                    .map(|r| r.seq)
                    .max()
                    .unwrap_or(0);
                if last < expected {
                    result = Err(ChainBreak::Truncated {
                        host,
                        last_seq: last,
                        expected_seq: expected,
                    });
                }
            }
        }
        match (&result, global.output) {
            (Ok(()), Output::Text) => {
                println!(
                    "intact: {} receipt(s) of {hosts} host(s) verified in {}",
                    receipts.len(),
                    store.url()
                )
            }
            (Err(problem), Output::Text) => println!("broken: {problem}"),
            (_, Output::Json) => print_json(&json!({
                "intact": result.is_ok(),
                "receipts": receipts.len(),
                "hosts": hosts,
                "break": result.as_ref().err().map(|b| json!({"detail": b, "message": b.to_string()})),
            })),
        }
        if result.is_ok() {
            exit::OK
        } else {
            exit::ERROR
        }
    })
}
