//! Receipts and their hash chain. Each receipt's hash covers its content, its run's commit and
//! the previous receipt's hash (per host), so an edited, deleted or reordered receipt breaks the
//! chain where it happened. Pure: hashing and verification do no I/O.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `prev_hash` of the first receipt of a host.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An action to record, before it is placed in the chain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReceiptDraft {
    pub run_id: Option<String>,
    pub commit: Option<String>,
    pub kind: String,
    pub name: String,
    pub action: String,
    pub reason: String,
    /// JSON text (secrets already redacted by the caller).
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub id: String,
    pub host: String,
    /// Position in the host's chain, from 1. Not hashed: it is the order the chain is read in, and
    /// a changed order shows as a broken link.
    pub seq: i64,
    pub run_id: Option<String>,
    pub commit: Option<String>,
    pub kind: String,
    pub name: String,
    pub action: String,
    pub reason: String,
    pub detail: String,
    pub at_ms: i64,
    pub prev_hash: String,
    pub hash: String,
}

/// The end of a host's chain: what the next receipt links to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    pub seq: i64,
    pub hash: String,
}

impl Default for ChainHead {
    fn default() -> Self {
        ChainHead {
            seq: 0,
            hash: GENESIS.to_string(),
        }
    }
}

impl Receipt {
    /// Places a draft after `head` and hashes it.
    pub fn seal(draft: ReceiptDraft, id: String, host: &str, at_ms: i64, head: &ChainHead) -> Receipt {
        let mut receipt = Receipt {
            id,
            host: host.to_string(),
            seq: head.seq + 1,
            run_id: draft.run_id,
            commit: draft.commit,
            kind: draft.kind,
            name: draft.name,
            action: draft.action,
            reason: draft.reason,
            detail: draft.detail,
            at_ms,
            prev_hash: head.hash.clone(),
            hash: String::new(),
        };
        receipt.hash = receipt.compute_hash();
        receipt
    }

    /// SHA-256 over every field but `seq` and `hash`, each length-prefixed so that no two
    /// different receipts hash the same bytes.
    pub fn compute_hash(&self) -> String {
        let mut hasher = Sha256::new();
        let mut field = |bytes: &[u8]| {
            hasher.update((bytes.len() as u64).to_be_bytes());
            hasher.update(bytes);
        };
        field(self.id.as_bytes());
        field(self.host.as_bytes());
        field(self.run_id.as_deref().unwrap_or("").as_bytes());
        field(self.commit.as_deref().unwrap_or("").as_bytes());
        field(self.kind.as_bytes());
        field(self.name.as_bytes());
        field(self.action.as_bytes());
        field(self.reason.as_bytes());
        field(self.detail.as_bytes());
        field(&self.at_ms.to_be_bytes());
        field(self.prev_hash.as_bytes());
        hex::encode(hasher.finalize())
    }

    pub fn head(&self) -> ChainHead {
        ChainHead {
            seq: self.seq,
            hash: self.hash.clone(),
        }
    }
}

/// Where a chain is broken: the first receipt that is not what the chain says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum ChainBreak {
    /// Its content no longer matches its hash.
    Edited { host: String, seq: i64, id: String },
    /// Receipts are missing before this one (a gap in the sequence, or a missing first receipt).
    Deleted {
        host: String,
        missing_from: i64,
        missing_to: i64,
        before_id: String,
    },
    /// It links to a receipt that sits elsewhere in the chain.
    Reordered { host: String, seq: i64, id: String },
    /// It does not link to the receipt before it, whose content and hash were both rewritten
    /// (or that was deleted and the sequence renumbered).
    Relinked {
        host: String,
        seq: i64,
        id: String,
        previous_id: String,
    },
    /// The chain ends before the head this host recorded locally: receipts were cut off the end.
    Truncated {
        host: String,
        last_seq: i64,
        expected_seq: i64,
    },
}

impl std::fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChainBreak::Edited { host, seq, id } => {
                write!(f, "receipt {id} (host {host}, seq {seq}) was edited: its content does not match its hash")
            }
            ChainBreak::Deleted { host, missing_from, missing_to, before_id } => write!(
                f,
                "receipts of host {host} were deleted: seq {missing_from}{} missing before receipt {before_id}",
                if missing_to > missing_from { format!(" to {missing_to}") } else { String::new() }
            ),
            ChainBreak::Reordered { host, seq, id } => {
                write!(f, "receipt {id} (host {host}, seq {seq}) was reordered: it does not follow the receipt it links to")
            }
            ChainBreak::Relinked { host, seq, id, previous_id } => write!(
                f,
                "receipt {id} (host {host}, seq {seq}) does not link to receipt {previous_id} before it: that one was rewritten, or one between them deleted"
            ),
            ChainBreak::Truncated { host, last_seq, expected_seq } => write!(
                f,
                "receipts of host {host} were deleted from the end: the chain stops at seq {last_seq}, this host recorded up to seq {expected_seq}"
            ),
        }
    }
}

/// Checks receipts sorted by host, then seq. Returns the first break, or the number checked.
pub fn verify_chain(receipts: &[Receipt]) -> Result<usize, ChainBreak> {
    let mut start = 0;
    while start < receipts.len() {
        let host = &receipts[start].host;
        let end = receipts[start..]
            .iter()
            .position(|r| &r.host != host)
            .map_or(receipts.len(), |i| start + i);
        verify_host(&receipts[start..end])?;
        start = end;
    }
    Ok(receipts.len())
}

fn verify_host(chain: &[Receipt]) -> Result<(), ChainBreak> {
    let hashes: HashSet<&str> = chain.iter().map(|r| r.hash.as_str()).collect();
    for (i, receipt) in chain.iter().enumerate() {
        let host = receipt.host.clone();
        if receipt.compute_hash() != receipt.hash {
            return Err(ChainBreak::Edited {
                host,
                seq: receipt.seq,
                id: receipt.id.clone(),
            });
        }
        let (expected_prev, expected_seq) = match i {
            0 => (GENESIS, 1),
            _ => (chain[i - 1].hash.as_str(), chain[i - 1].seq + 1),
        };
        if receipt.seq > expected_seq {
            return Err(ChainBreak::Deleted {
                host,
                missing_from: expected_seq,
                missing_to: receipt.seq - 1,
                before_id: receipt.id.clone(),
            });
        }
        if receipt.prev_hash != expected_prev {
            if hashes.contains(receipt.prev_hash.as_str()) {
                return Err(ChainBreak::Reordered {
                    host,
                    seq: receipt.seq,
                    id: receipt.id.clone(),
                });
            }
            if i == 0 {
                return Err(ChainBreak::Deleted {
                    host,
                    missing_from: 1,
                    missing_to: 1,
                    before_id: receipt.id.clone(),
                });
            }
            return Err(ChainBreak::Relinked {
                host,
                seq: receipt.seq,
                id: receipt.id.clone(),
                previous_id: chain[i - 1].id.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: usize) -> Vec<Receipt> {
        let mut head = ChainHead::default();
        (0..n)
            .map(|i| {
                let draft = ReceiptDraft {
                    run_id: Some("run-1".into()),
                    commit: Some("abc".into()),
                    kind: "Service".into(),
                    name: format!("svc-{i}"),
                    action: "create".into(),
                    reason: "missing".into(),
                    detail: "{}".into(),
                };
                let receipt = Receipt::seal(draft, format!("id-{i}"), "mini", 1000 + i as i64, &head);
                head = receipt.head();
                receipt
            })
            .collect()
    }

    #[test]
    fn an_intact_chain_verifies() {
        assert_eq!(verify_chain(&chain(50)), Ok(50));
        assert_eq!(verify_chain(&[]), Ok(0));
    }

    #[test]
    fn an_edited_receipt_is_named() {
        let mut receipts = chain(10);
        receipts[4].reason = "nothing to see".into();
        assert_eq!(
            verify_chain(&receipts),
            Err(ChainBreak::Edited {
                host: "mini".into(),
                seq: 5,
                id: "id-4".into()
            })
        );
    }

    #[test]
    fn an_edited_and_rehashed_receipt_breaks_the_next_link() {
        let mut receipts = chain(10);
        receipts[4].reason = "nothing to see".into();
        receipts[4].hash = receipts[4].compute_hash();
        assert!(matches!(
            verify_chain(&receipts),
            Err(ChainBreak::Relinked { seq: 6, .. })
        ));
    }

    #[test]
    fn a_deleted_receipt_is_named() {
        let mut receipts = chain(10);
        receipts.remove(3);
        let error = verify_chain(&receipts).unwrap_err();
        assert_eq!(
            error,
            ChainBreak::Deleted {
                host: "mini".into(),
                missing_from: 4,
                missing_to: 4,
                before_id: "id-4".into()
            }
        );
        let mut receipts = chain(3);
        receipts.remove(0);
        assert!(matches!(
            verify_chain(&receipts),
            Err(ChainBreak::Deleted { missing_from: 1, .. })
        ));
    }

    #[test]
    fn a_reordered_receipt_is_named() {
        let mut receipts = chain(10);
        // Swap the positions of receipts 6 and 7 (their seq values), then read in seq order.
        receipts[5].seq = 7;
        receipts[6].seq = 6;
        receipts.sort_by_key(|r| r.seq);
        assert_eq!(
            verify_chain(&receipts),
            Err(ChainBreak::Reordered {
                host: "mini".into(),
                seq: 6,
                id: "id-6".into()
            })
        );
    }

    #[test]
    fn chains_of_several_hosts_are_checked_separately() {
        let mut receipts = chain(3);
        let mut other = chain(3);
        for r in &mut other {
            r.host = "other".into();
            r.hash = r.compute_hash();
        }
        // Re-link the other host's chain after changing its host.
        let mut head = ChainHead::default();
        for r in &mut other {
            r.prev_hash = head.hash.clone();
            r.hash = r.compute_hash();
            head = r.head();
        }
        receipts.extend(other);
        receipts.sort_by(|a, b| (&a.host, a.seq).cmp(&(&b.host, b.seq)));
        assert_eq!(verify_chain(&receipts), Ok(6));
    }
}
