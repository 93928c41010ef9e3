//! TokenShield, the pure part: usage per agent per day, where it stands against the effective
//! budget, and what the bus does about it.
//!
//! Days are UTC days. DESIGN.md only says budgets "reset at the day boundary"; a UTC day is the
//! same on every host of a fleet sharing one truth store, has no DST gaps or repeats, and needs
//! no time-zone database. `day_of` is the one place that decides it.
//!
//! "Enforced within one request of crossing": the bus meters each answer into `UsageToday`
//! (`record`) and, before forwarding the next request, asks `budget_state` with that usage and
//! then `admit`. A request is refused only once usage is strictly over the limit, so the request
//! that crosses is served and the next one is refused. Strictly over, not "at": a spend limit of
//! 0 (the canonical example: local models only, which cost nothing) must not suspend an agent
//! that has spent nothing.

use std::fmt;

use chrono::{DateTime, SecondsFormat};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{EffectiveBudget, EffectivePolicy};
use crate::spec::policy::OverBudget;

/// Milliseconds in a (UTC) day.
pub const DAY_MS: i64 = 86_400_000;

/// A UTC day: days since 1970-01-01. Displays as `YYYY-MM-DD`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DayKey(pub i64);

impl DayKey {
    /// The first millisecond of the day.
    pub fn start_ms(self) -> i64 {
        self.0 * DAY_MS
    }
    /// The first millisecond of the next day: when usage resets.
    pub fn end_ms(self) -> i64 {
        (self.0 + 1) * DAY_MS
    }
}

impl fmt::Display for DayKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match DateTime::from_timestamp_millis(self.start_ms()) {
            Some(at) => write!(f, "{}", at.format("%Y-%m-%d")),
            None => write!(f, "day {}", self.0),
        }
    }
}

/// The UTC day an instant falls in (instants before 1970 included).
pub fn day_of(at_ms: i64) -> DayKey {
    DayKey(at_ms.div_euclid(DAY_MS))
}

/// When the day containing `now_ms` ends and usage starts again from zero.
pub fn next_day_start_ms(now_ms: i64) -> i64 {
    day_of(now_ms).end_ms()
}

/// RFC 3339 in UTC, whole seconds: `2026-11-25T00:00:00Z`.
fn rfc3339(at_ms: i64) -> String {
    DateTime::from_timestamp_millis(at_ms)
        .map(|at| at.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_else(|| format!("{at_ms} ms since the epoch"))
}

/// One agent's metered usage on one day. The bus keeps one per agent and feeds it every answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageToday {
    pub day: DayKey,
    pub tokens: u64,
    pub spend_usd: f64,
}

impl UsageToday {
    /// Nothing used yet on the day of `at_ms`.
    pub fn start(at_ms: i64) -> Self {
        UsageToday {
            day: day_of(at_ms),
            tokens: 0,
            spend_usd: 0.0,
        }
    }

    /// The usage that counts at `now_ms`: this one on the same day, zero once the day is over.
    pub fn as_of(&self, now_ms: i64) -> UsageToday {
        if day_of(now_ms) > self.day {
            UsageToday::start(now_ms)
        } else {
            self.clone()
        }
    }

    /// Adds one metered answer finished at `at_ms`. A later day starts the count afresh; usage
    /// of a day already over (an answer metered late, across midnight) no longer counts against
    /// any budget and is not added. Returns whether it was counted.
    pub fn record(&mut self, at_ms: i64, tokens: u64, spend_usd: f64) -> bool {
        let day = day_of(at_ms);
        if day < self.day {
            return false;
        }
        if day > self.day {
            *self = UsageToday::start(at_ms);
        }
        self.tokens = self.tokens.saturating_add(tokens);
        // A negative or NaN charge is a metering bug; it must never buy budget back.
        if spend_usd > 0.0 {
            self.spend_usd += spend_usd;
        }
        true
    }
}

/// Which budget: named as the spec field, so messages and error bodies point at the YAML.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum BudgetDimension {
    #[serde(rename = "tokensPerDay")]
    Tokens,
    #[serde(rename = "spendPerDayUsd")]
    SpendUsd,
}

impl fmt::Display for BudgetDimension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BudgetDimension::Tokens => "tokensPerDay",
            BudgetDimension::SpendUsd => "spendPerDayUsd",
        })
    }
}

/// An amount of one dimension: whole tokens, or US dollars. Serializes as the bare number.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BudgetAmount {
    Tokens(u64),
    Usd(f64),
}

impl fmt::Display for BudgetAmount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BudgetAmount::Tokens(n) => write!(f, "{n} tokens"),
            BudgetAmount::Usd(usd) => write!(f, "${usd:.2}"),
        }
    }
}

/// Where an agent's usage stands against its effective budget.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum BudgetState {
    /// Below the warning threshold on every dimension (or no budget at all).
    Ok,
    /// At or above `warnAtPercent` of a limit, not over it: a warning drift item. With both
    /// dimensions in warning, the one with the higher percentage (tokens on a tie).
    Warning {
        dimension: BudgetDimension,
        /// Whole percent used, rounded down (100 means exactly at the limit).
        percent: u32,
        used: BudgetAmount,
        limit: BudgetAmount,
    },
    /// Strictly over a limit: the policy's action applies. Tokens are reported when both are over.
    Exceeded {
        dimension: BudgetDimension,
        used: BudgetAmount,
        limit: BudgetAmount,
        action: OverBudget,
    },
}

/// Micro-dollars, so that thresholds compare exactly (0.8 of $1 is 80 %, not 80.000000001 %).
/// Negative and NaN amounts count as 0, infinite ones as the most.
fn micro_usd(usd: f64) -> u128 {
    (usd * 1e6).round() as u128
}

/// One dimension's standing: `(exceeded, percent for a warning)`.
fn standing(used: u128, limit: u128, warn_at_percent: u8) -> (bool, Option<u32>) {
    if used > limit {
        return (true, None);
    }
    let warn = used > 0 && used * 100 >= limit * u128::from(warn_at_percent);
    // `used <= limit` here, and `used > 0` implies `limit > 0`.
    let percent = warn.then(|| (used * 100 / limit) as u32);
    (false, percent)
}

/// Where `usage` stands at `now_ms` against `rules.budget` (usage of an earlier day counts as
/// zero: budgets reset at the day boundary).
pub fn budget_state(rules: &EffectivePolicy, usage: &UsageToday, now_ms: i64) -> BudgetState {
    budget_state_of(
        &rules.budget,
        rules.warn_at_percent,
        rules.on_budget_exceeded,
        &usage.as_of(now_ms),
    )
}

/// `budget_state` with its parts given separately.
pub fn budget_state_of(
    limit: &EffectiveBudget,
    warn_at_percent: u8,
    action: OverBudget,
    usage: &UsageToday,
) -> BudgetState {
    let mut dims = Vec::with_capacity(2);
    if let Some(max) = limit.tokens_per_day {
        let used = usage.tokens;
        let (over, percent) = standing(u128::from(used), u128::from(max), warn_at_percent);
        dims.push((
            BudgetDimension::Tokens,
            over,
            percent,
            BudgetAmount::Tokens(used),
            BudgetAmount::Tokens(max),
        ));
    }
    if let Some(max) = limit.spend_per_day_usd {
        let used = usage.spend_usd;
        let (over, percent) = standing(micro_usd(used), micro_usd(max), warn_at_percent);
        dims.push((
            BudgetDimension::SpendUsd,
            over,
            percent,
            BudgetAmount::Usd(used),
            BudgetAmount::Usd(max),
        ));
    }
    if let Some((dimension, _, _, used, limit)) = dims.iter().find(|d| d.1) {
        return BudgetState::Exceeded {
            dimension: *dimension,
            used: *used,
            limit: *limit,
            action,
        };
    }
    let mut warning: Option<BudgetState> = None;
    for (dimension, _, percent, used, limit) in &dims {
        let Some(percent) = *percent else { continue };
        let higher = match &warning {
            Some(BudgetState::Warning { percent: shown, .. }) => percent > *shown,
            _ => true,
        };
        if higher {
            warning = Some(BudgetState::Warning {
                dimension: *dimension,
                percent,
                used: *used,
                limit: *limit,
            });
        }
    }
    warning.unwrap_or(BudgetState::Ok)
}

/// What the bus does with an agent's next request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "admission", rename_all = "kebab-case")]
pub enum Admission {
    /// Forward as routed (within budget, in warning, or over budget with `alert`).
    Serve,
    /// Over budget with `local-only`: forward only to local providers; cloud routes are removed.
    ServeLocalOnly,
    /// Over budget with `suspend`: answer 429 with this JSON body and a `Retry-After` header.
    Refuse429 { body: Value, retry_after_secs: u64 },
}

/// What the bus does for `agent`, in `state`, at `now_ms`. A warning or an `alert` still serves:
/// the drift item comes from the `BudgetState`, not from the admission.
pub fn admit(agent: &str, state: &BudgetState, now_ms: i64) -> Admission {
    let BudgetState::Exceeded {
        dimension,
        used,
        limit,
        action,
    } = state
    else {
        return Admission::Serve;
    };
    match action {
        OverBudget::Alert => Admission::Serve,
        OverBudget::LocalOnly => Admission::ServeLocalOnly,
        OverBudget::Suspend => {
            let resets_ms = next_day_start_ms(now_ms);
            let resets_at = rfc3339(resets_ms);
            let day = day_of(now_ms);
            // The OpenAI error shape (`error.message`, `error.type`, `error.code`), which both
            // OpenAI and Ollama client libraries surface; the other fields are for scripts.
            let body = json!({
                "error": {
                    "message": format!(
                        "agent `{agent}` is over its {dimension} budget: {used} used of {limit} on {day} (UTC); \
                         it resets at {resets_at}"
                    ),
                    "type": "budget_exceeded",
                    "code": "budget_exceeded",
                    "agent": agent,
                    "budget": dimension,
                    "used": used,
                    "limit": limit,
                    "day": day.to_string(),
                    "resetsAt": resets_at,
                }
            });
            // Whole seconds, rounded up, so a client waiting that long is past the boundary.
            let retry_after_secs = u64::try_from((resets_ms - now_ms + 999) / 1000).unwrap_or(0);
            Admission::Refuse429 { body, retry_after_secs }
        }
    }
}
