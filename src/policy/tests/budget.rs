//! Tests of daily usage and budget states: UTC days, token and spend boundaries, resets.

use super::*;

#[test]
fn days_are_utc_days() {
    assert_eq!(day_of(0), DayKey(0));
    assert_eq!(day_of(DAY_MS - 1), DayKey(0));
    assert_eq!(day_of(DAY_MS), DayKey(1));
    assert_eq!(day_of(-1), DayKey(-1));
    assert_eq!(DayKey(-1).to_string(), "1969-12-31");
    assert_eq!(DayKey(0).to_string(), "1970-01-01");
    let morning = at("2026-11-24T08:27:00Z");
    assert_eq!(day_of(morning).to_string(), "2026-11-24");
    assert_eq!(day_of(at("2026-11-24T23:59:59.999Z")), day_of(morning));
    assert_eq!(day_of(at("2026-11-25T00:00:00Z")).to_string(), "2026-11-25");
    // Local offsets do not move the boundary: 01:00+02:00 is 23:00 UTC the day before.
    assert_eq!(day_of(at("2026-11-25T01:00:00+02:00")).to_string(), "2026-11-24");
    assert_eq!(next_day_start_ms(morning), at("2026-11-25T00:00:00Z"));
    assert_eq!(
        next_day_start_ms(at("2026-11-25T00:00:00Z")),
        at("2026-11-26T00:00:00Z")
    );
}

#[test]
fn usage_adds_up_within_a_day_and_restarts_the_next() {
    let morning = at("2026-11-24T08:00:00Z");
    let mut usage = UsageToday::start(morning);
    assert!(usage.record(morning + 1, 100, 0.25));
    assert!(usage.record(at("2026-11-24T23:59:59Z"), 50, 0.25));
    assert_eq!((usage.tokens, usage.spend_usd), (150, 0.5));
    // Read the next day, it is zero; the stored value is untouched.
    let tomorrow = at("2026-11-25T00:00:00Z");
    assert_eq!(usage.as_of(tomorrow), UsageToday::start(tomorrow));
    assert_eq!(usage.as_of(morning).tokens, 150);
    // The first answer of the next day starts a new count.
    assert!(usage.record(tomorrow + 5, 7, 0.0));
    assert_eq!(usage.day.to_string(), "2026-11-25");
    assert_eq!((usage.tokens, usage.spend_usd), (7, 0.0));
    // An answer of a day already over is not counted against today.
    assert!(!usage.record(at("2026-11-24T23:59:00Z"), 1_000, 1.0));
    assert_eq!(usage.tokens, 7);
    // Bad charges never refund.
    assert!(usage.record(tomorrow + 6, 0, -5.0));
    assert!(usage.record(tomorrow + 7, 0, f64::NAN));
    assert_eq!(usage.spend_usd, 0.0);
    usage.record(tomorrow + 8, u64::MAX, 0.0);
    assert_eq!(usage.tokens, u64::MAX, "saturates");
}

// ---------------------------------------------------------------------------------------------
// budget states

fn usage(tokens: u64, spend_usd: f64) -> UsageToday {
    UsageToday {
        day: DayKey(0),
        tokens,
        spend_usd,
    }
}

fn limits(tokens: Option<u64>, spend: Option<f64>) -> EffectiveBudget {
    EffectiveBudget {
        tokens_per_day: tokens,
        spend_per_day_usd: spend,
    }
}

fn state(limit: &EffectiveBudget, used: &UsageToday) -> BudgetState {
    budget_state_of(limit, 80, OverBudget::Suspend, used)
}

#[test]
fn no_budget_is_always_ok() {
    assert_eq!(state(&limits(None, None), &usage(u64::MAX, 1e12)), BudgetState::Ok);
}

#[test]
fn token_budget_boundaries_at_80_and_100_percent() {
    let limit = limits(Some(1000), None);
    assert_eq!(state(&limit, &usage(0, 0.0)), BudgetState::Ok);
    assert_eq!(state(&limit, &usage(799, 0.0)), BudgetState::Ok);
    let warning = |percent, used| BudgetState::Warning {
        dimension: BudgetDimension::Tokens,
        percent,
        used: BudgetAmount::Tokens(used),
        limit: BudgetAmount::Tokens(1000),
    };
    assert_eq!(state(&limit, &usage(800, 0.0)), warning(80, 800));
    assert_eq!(state(&limit, &usage(999, 0.0)), warning(99, 999));
    // At the limit is not over it.
    assert_eq!(state(&limit, &usage(1000, 0.0)), warning(100, 1000));
    assert_eq!(
        state(&limit, &usage(1001, 0.0)),
        BudgetState::Exceeded {
            dimension: BudgetDimension::Tokens,
            used: BudgetAmount::Tokens(1001),
            limit: BudgetAmount::Tokens(1000),
            action: OverBudget::Suspend,
        }
    );
    // Spend is not limited here, however large.
    assert_eq!(state(&limit, &usage(0, 1e9)), BudgetState::Ok);
}

#[test]
fn spend_budget_boundaries_are_exact_in_cents() {
    let limit = limits(None, Some(1.0));
    assert_eq!(state(&limit, &usage(0, 0.79)), BudgetState::Ok);
    // 0.1 + 0.7 is 0.7999999999999999 in binary floating point: still 80 %.
    let eighty = 0.1 + 0.7;
    assert_ne!(eighty, 0.8);
    assert!(matches!(
        state(&limit, &usage(0, eighty)),
        BudgetState::Warning {
            dimension: BudgetDimension::SpendUsd,
            percent: 80,
            ..
        }
    ));
    assert!(matches!(
        state(&limit, &usage(0, 1.0)),
        BudgetState::Warning { percent: 100, .. }
    ));
    assert_eq!(
        state(&limit, &usage(0, 1.01)),
        BudgetState::Exceeded {
            dimension: BudgetDimension::SpendUsd,
            used: BudgetAmount::Usd(1.01),
            limit: BudgetAmount::Usd(1.0),
            action: OverBudget::Suspend,
        }
    );
    assert_eq!(state(&limit, &usage(u64::MAX, 0.0)), BudgetState::Ok);
}

#[test]
fn a_zero_spend_budget_allows_only_free_models() {
    let limit = limits(Some(500_000), Some(0.0));
    assert_eq!(state(&limit, &usage(1000, 0.0)), BudgetState::Ok);
    assert!(matches!(
        state(&limit, &usage(1000, 0.000_001)),
        BudgetState::Exceeded {
            dimension: BudgetDimension::SpendUsd,
            ..
        }
    ));
    assert_eq!(state(&limits(Some(0), None), &usage(0, 0.0)), BudgetState::Ok);
    assert!(matches!(
        state(&limits(Some(0), None), &usage(1, 0.0)),
        BudgetState::Exceeded { .. }
    ));
}

#[test]
fn with_both_dimensions_the_worse_one_is_reported() {
    let limit = limits(Some(1000), Some(10.0));
    // Both in warning: the higher percentage.
    assert!(matches!(
        state(&limit, &usage(850, 9.0)),
        BudgetState::Warning {
            dimension: BudgetDimension::SpendUsd,
            percent: 90,
            ..
        }
    ));
    assert!(matches!(
        state(&limit, &usage(950, 9.0)),
        BudgetState::Warning {
            dimension: BudgetDimension::Tokens,
            percent: 95,
            ..
        }
    ));
    // A tie: tokens.
    assert!(matches!(
        state(&limit, &usage(900, 9.0)),
        BudgetState::Warning {
            dimension: BudgetDimension::Tokens,
            percent: 90,
            ..
        }
    ));
    // Over beats warning, whichever dimension.
    assert!(matches!(
        state(&limit, &usage(950, 10.5)),
        BudgetState::Exceeded {
            dimension: BudgetDimension::SpendUsd,
            ..
        }
    ));
    assert!(matches!(
        state(&limit, &usage(1001, 1.0)),
        BudgetState::Exceeded {
            dimension: BudgetDimension::Tokens,
            ..
        }
    ));
    // Both over: tokens.
    assert!(matches!(
        state(&limit, &usage(2000, 20.0)),
        BudgetState::Exceeded {
            dimension: BudgetDimension::Tokens,
            ..
        }
    ));
}

#[test]
fn the_warning_threshold_and_action_come_from_the_policy() {
    let policy = compile(
        "p",
        &policy_from_yaml("budget: {tokensPerDay: 1000}\nwarnAtPercent: 95\nonBudgetExceeded: local-only"),
    );
    let now = at("2026-11-24T12:00:00Z");
    let mut used = UsageToday::start(now);
    used.record(now, 940, 0.0);
    assert_eq!(budget_state(&policy.rules, &used, now), BudgetState::Ok);
    used.record(now, 10, 0.0);
    assert!(matches!(
        budget_state(&policy.rules, &used, now),
        BudgetState::Warning { percent: 95, .. }
    ));
    used.record(now, 51, 0.0);
    assert!(matches!(
        budget_state(&policy.rules, &used, now),
        BudgetState::Exceeded {
            action: OverBudget::LocalOnly,
            ..
        }
    ));
}

#[test]
fn budgets_reset_at_the_day_boundary() {
    let policy = compile("p", &policy_from_yaml("budget: {tokensPerDay: 1000}"));
    let late = at("2026-11-24T23:59:59.999Z");
    let mut used = UsageToday::start(late);
    used.record(late, 5000, 0.0);
    assert!(matches!(
        budget_state(&policy.rules, &used, late),
        BudgetState::Exceeded { .. }
    ));
    assert_eq!(budget_state(&policy.rules, &used, late + 1), BudgetState::Ok);
}
