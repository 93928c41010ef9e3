//! Tests of admission by budget: the over-budget action, the 429 body, cloud routes.

use serde_json::json;

use super::*;

fn exceeded(action: OverBudget) -> BudgetState {
    BudgetState::Exceeded {
        dimension: BudgetDimension::Tokens,
        used: BudgetAmount::Tokens(200_123),
        limit: BudgetAmount::Tokens(200_000),
        action,
    }
}

#[test]
fn admission_follows_the_over_budget_action() {
    let now = at("2026-11-24T08:30:00Z");
    assert_eq!(admit("a", &BudgetState::Ok, now), Admission::Serve);
    let warning = BudgetState::Warning {
        dimension: BudgetDimension::Tokens,
        percent: 85,
        used: BudgetAmount::Tokens(850),
        limit: BudgetAmount::Tokens(1000),
    };
    assert_eq!(admit("a", &warning, now), Admission::Serve);
    assert_eq!(admit("a", &exceeded(OverBudget::Alert), now), Admission::Serve);
    assert_eq!(
        admit("a", &exceeded(OverBudget::LocalOnly), now),
        Admission::ServeLocalOnly
    );
    assert!(matches!(
        admit("a", &exceeded(OverBudget::Suspend), now),
        Admission::Refuse429 { .. }
    ));
}

#[test]
fn the_429_body_names_the_budget_and_when_it_resets() {
    let now = at("2026-11-24T23:59:58.500Z");
    let Admission::Refuse429 { body, retry_after_secs } = admit("archivist", &exceeded(OverBudget::Suspend), now)
    else {
        panic!("expected a refusal");
    };
    assert_eq!(retry_after_secs, 2, "1.5 s rounded up");
    let error = &body["error"];
    assert_eq!(error["type"], "budget_exceeded");
    assert_eq!(error["code"], "budget_exceeded");
    assert_eq!(error["agent"], "archivist");
    assert_eq!(error["budget"], "tokensPerDay");
    assert_eq!(error["used"], 200_123);
    assert_eq!(error["limit"], 200_000);
    assert_eq!(error["day"], "2026-11-24");
    assert_eq!(error["resetsAt"], "2026-11-25T00:00:00Z");
    assert_eq!(
        error["message"],
        "agent `archivist` is over its tokensPerDay budget: 200123 tokens used of 200000 tokens on 2026-11-24 (UTC); \
         it resets at 2026-11-25T00:00:00Z"
    );

    let spend = BudgetState::Exceeded {
        dimension: BudgetDimension::SpendUsd,
        used: BudgetAmount::Usd(1.25),
        limit: BudgetAmount::Usd(1.0),
        action: OverBudget::Suspend,
    };
    let Admission::Refuse429 { body, retry_after_secs } = admit("archivist", &spend, at("2026-11-24T00:00:00Z")) else {
        panic!("expected a refusal");
    };
    assert_eq!(retry_after_secs, 86_400);
    assert_eq!(body["error"]["budget"], "spendPerDayUsd");
    assert_eq!(body["error"]["used"], 1.25);
    assert_eq!(body["error"]["limit"], 1.0);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("$1.25 used of $1.00"));
}

#[test]
fn the_request_after_the_crossing_one_is_refused() {
    // What the bus does: check before forwarding, meter after answering.
    let policy = compile("p", &policy_from_yaml("budget: {tokensPerDay: 1000}"));
    let start = at("2026-11-24T10:00:00Z");
    let mut used = UsageToday::start(start);
    let mut served = 0;
    let mut states = Vec::new();
    for i in 0..10 {
        let now = start + i * 1000;
        let state = budget_state(&policy.rules, &used, now);
        if let Admission::Refuse429 { .. } = admit("a", &state, now) {
            states.push(state);
            break;
        }
        served += 1;
        used.record(now + 500, 300, 0.0);
        states.push(state);
    }
    // 0, 300, 600, 900 (warning) are below or at the limit: served; 1200 is over: refused.
    assert_eq!(served, 4);
    assert!(matches!(states[3], BudgetState::Warning { percent: 90, .. }));
    assert!(matches!(states[4], BudgetState::Exceeded { .. }));
    // The next day it serves again.
    let tomorrow = at("2026-11-25T00:00:00Z");
    assert_eq!(
        admit("a", &budget_state(&policy.rules, &used, tomorrow), tomorrow),
        Admission::Serve
    );
}

#[test]
fn cloud_routes_need_the_policy_and_the_budget() {
    let local_first = compile("p", &policy_from_yaml(CANONICAL)).rules;
    assert!(local_first.may_route_to(true, &Admission::Serve));
    assert!(!local_first.may_route_to(false, &Admission::Serve));
    let cloud = compile("p", &policy_from_yaml("cloudEscalation: allow")).rules;
    assert!(cloud.may_route_to(false, &Admission::Serve));
    assert!(!cloud.may_route_to(false, &Admission::ServeLocalOnly));
    assert!(cloud.may_route_to(true, &Admission::ServeLocalOnly));
}

#[test]
fn budget_states_serialize_for_drift_items() {
    let value = serde_json::to_value(exceeded(OverBudget::LocalOnly)).unwrap();
    assert_eq!(
        value,
        json!({"state": "exceeded", "dimension": "tokensPerDay", "used": 200123, "limit": 200000, "action": "local-only"})
    );
    assert_eq!(serde_json::to_value(BudgetState::Ok).unwrap(), json!({"state": "ok"}));
}
