//! Tests of approval requests: which decisions become requests, approving, expiry.

use serde_json::json;

use super::gate::gate_policy;
use super::*;

const HOUR_MS: i64 = 3_600_000;

fn pending() -> ApprovalRequest {
    let decision = gate(&gate_policy(), "shell.exec", &json!({"argv": ["make"]}));
    ApprovalRequest::new("0193-req", "archivist", &decision, 1_000, HOUR_MS).unwrap()
}

#[test]
fn only_needs_approval_decisions_become_requests() {
    for tool in ["fs.read", "host.reboot", "net.fetch"] {
        let decision = gate(&gate_policy(), tool, &json!({}));
        let error = ApprovalRequest::new("id", "a", &decision, 0, HOUR_MS).unwrap_err();
        assert!(matches!(error, ApprovalError::NotNeeded { .. }), "{tool}: {error}");
    }
    let request = pending();
    assert_eq!(request.state, ApprovalState::Pending);
    assert_eq!(request.risk, Risk::High);
    assert_eq!(request.expires_ms, 1_000 + HOUR_MS);
    assert_eq!(request.args, json!({"argv": ["make"]}));
    assert!(request.reason.contains("needs approval"));
}

#[test]
fn approving_a_pending_request_authorizes_exactly_that_call() {
    let mut request = pending();
    let fingerprint = request.args_fingerprint.clone();
    assert!(
        !request.authorizes("archivist", "shell.exec", &fingerprint),
        "pending authorizes nothing"
    );
    request.approve("alice", 2_000).unwrap();
    assert_eq!(
        request.state,
        ApprovalState::Approved {
            by: "alice".into(),
            at_ms: 2_000
        }
    );
    assert!(request.authorizes("archivist", "shell.exec", &fingerprint));
    assert!(!request.authorizes("other-agent", "shell.exec", &fingerprint));
    assert!(!request.authorizes("archivist", "fs.write", &fingerprint));
    assert!(!request.authorizes("archivist", "shell.exec", &args_fingerprint(&json!({"argv": ["rm"]}))));
}

#[test]
fn a_decided_request_cannot_be_decided_again() {
    let mut approved = pending();
    approved.approve("alice", 2_000).unwrap();
    let error = approved.approve("bob", 3_000).unwrap_err();
    assert_eq!(
        error,
        ApprovalError::AlreadyDecided {
            id: "0193-req".into(),
            state: "approved".into()
        }
    );
    assert_eq!(error.to_string(), "approval request 0193-req is already approved");
    assert!(approved.deny("bob", 3_000).is_err());
    assert!(approved.expire(HOUR_MS * 2).is_err());
    assert!(matches!(approved.state, ApprovalState::Approved { ref by, .. } if by == "alice"));

    let mut denied = pending();
    denied.deny("bob", 2_000).unwrap();
    assert_eq!(
        denied.state,
        ApprovalState::Denied {
            by: "bob".into(),
            at_ms: 2_000
        }
    );
    let error = denied.approve("alice", 2_500).unwrap_err();
    assert_eq!(error.to_string(), "approval request 0193-req is already denied");
    assert!(!denied.authorizes("archivist", "shell.exec", &denied.args_fingerprint.clone()));
}

#[test]
fn requests_expire_at_their_deadline() {
    let mut request = pending();
    let deadline = request.expires_ms;
    assert_eq!(
        request.expire(deadline - 1),
        Err(ApprovalError::NotYetExpired {
            id: "0193-req".into(),
            expires_ms: deadline
        })
    );
    // At the deadline it can no longer be approved or denied, only expired.
    assert_eq!(
        request.clone().approve("alice", deadline),
        Err(ApprovalError::Expired {
            id: "0193-req".into(),
            expires_ms: deadline
        })
    );
    assert!(matches!(
        request.clone().deny("bob", deadline),
        Err(ApprovalError::Expired { .. })
    ));
    assert!(request.clone().approve("alice", deadline - 1).is_ok());
    request.expire(deadline).unwrap();
    assert_eq!(request.state, ApprovalState::Expired { at_ms: deadline });
    assert_eq!(
        request.approve("alice", deadline + 1).unwrap_err().to_string(),
        "approval request 0193-req is already expired"
    );
}

#[test]
fn requests_serialize_for_the_store() {
    let mut request = pending();
    request.approve("alice", 2_000).unwrap();
    let value = serde_json::to_value(&request).unwrap();
    assert_eq!(
        value["state"],
        json!({"state": "approved", "by": "alice", "atMs": 2000})
    );
    assert_eq!(value["argsFingerprint"], request.args_fingerprint.as_str());
    assert_eq!(serde_json::from_value::<ApprovalRequest>(value).unwrap(), request);
}
