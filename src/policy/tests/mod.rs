//! Unit tests of policies, one file per part: compiling, versions, the gate, approvals,
//! budgets and admission; the helpers they share are here.

mod admission;
mod approvals;
mod budget;
mod compile;
mod gate;
mod versions;

use super::*;
use crate::source::yaml::{decode, parse_documents, FieldPath};

fn policy_from_yaml(text: &str) -> PolicySpec {
    let (documents, error) = parse_documents(text);
    assert!(error.is_none(), "{error:?}");
    decode(&documents[0].root, &FieldPath::default()).expect("a valid policy spec")
}

fn at(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .expect("a valid time")
        .timestamp_millis()
}

/// DESIGN.md §3's canonical Policy.
const CANONICAL: &str = "
cloudEscalation: deny
tools:
  - {name: fs.read, risk: low}
  - {name: shell.exec, risk: high}
approvalRequiredAbove: medium
budget: {tokensPerDay: 500000, spendPerDayUsd: 0}
onBudgetExceeded: suspend      # suspend | local-only | alert
";

fn tool(name: &str, risk: Risk) -> Tool {
    Tool {
        name: name.into(),
        risk,
    }
}

fn agent_with_budget(budget: Option<Budget>) -> AgentSpec {
    AgentSpec {
        command: vec!["python3".into(), "archivist.py".into()],
        policy: Some("default".into()),
        budget,
        ..AgentSpec::default()
    }
}
