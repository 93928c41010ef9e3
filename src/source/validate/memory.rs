//! Memory tiers and rules: the tiers the Controller declares, each MemoryRule's moves between
//! them, and rules that together would move an item back and forth.

use std::collections::HashSet;

use super::{spec, Finding, Report};
use crate::source::decode::Parsed;
use crate::source::yaml::FieldPath;
use crate::spec::controller::DEFAULT_TIERS;
use crate::spec::memory_rule::{MemoryAction, ARCHIVED_TIER};
use crate::spec::Spec;

/// The memory tiers of the (first) Controller, or the default ones.
pub(super) fn tiers(parsed: &[Parsed]) -> Vec<String> {
    parsed
        .iter()
        .find_map(|p| match &p.resource.spec {
            Spec::Controller(c) => Some(c.memory_tiers()),
            _ => None,
        })
        .unwrap_or_else(|| DEFAULT_TIERS.iter().map(|t| t.to_string()).collect())
}

pub(super) fn check_memory_rule(report: &mut Report<'_>, rule: &crate::spec::MemoryRuleSpec, tiers: &[String]) {
    let known = |t: &str| tiers.iter().any(|x| x == t) || t == ARCHIVED_TIER;
    let list = || {
        tiers
            .iter()
            .map(String::as_str)
            .chain([ARCHIVED_TIER])
            .collect::<Vec<_>>()
            .join(", ")
    };
    let unknown = |t: &str| {
        let hint = crate::source::yaml::suggest(t, tiers.iter().map(String::as_str).chain([ARCHIVED_TIER]))
            .map(|s| format!(" (did you mean `{s}`?)"))
            .unwrap_or_default();
        format!("unknown tier `{t}`{hint}: expected one of {}", list())
    };
    let from = match rule.matches.tier.as_deref() {
        None => {
            report.error(
                FieldPath::from("spec.match.tier"),
                format!(
                    "missing: a rule moves items out of one tier; expected one of {}",
                    list()
                ),
            );
            return;
        }
        Some(t) if !known(t) => {
            report.error(FieldPath::from("spec.match.tier"), unknown(t));
            return;
        }
        Some(t) => t,
    };
    for (field, value) in [
        ("minConfidence", rule.matches.min_confidence),
        ("maxConfidence", rule.matches.max_confidence),
    ] {
        if let Some(v) = value {
            if !(0.0..=1.0).contains(&v) {
                report.error(
                    FieldPath::from("spec.match").key(field),
                    format!("expected a confidence from 0 to 1, found {v}"),
                );
            }
        }
    }
    if let Some(ns) = &rule.matches.namespace {
        if ns.is_empty()
            || !ns
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | '*' | '?'))
        {
            report.error(
                FieldPath::from("spec.match.namespace"),
                format!(
                    "expected a namespace or a glob of letters, digits, `-`, `_`, `.`, `/`, `*` and `?`, found `{ns}`"
                ),
            );
        }
    }
    let rank = |t: &str| tiers.iter().position(|x| x == t);
    match (rule.action, rule.target_tier(tiers)) {
        (_, None) => report.error(
            spec("to"),
            format!(
                "there is no tier to {} `{from}` to: give `to` (tiers, lowest first: {})",
                match rule.action {
                    MemoryAction::Promote => "promote",
                    MemoryAction::Demote => "demote",
                    MemoryAction::Archive => "archive",
                },
                list()
            ),
        ),
        (_, Some(to)) if !known(to) => report.error(spec("to"), unknown(to)),
        (MemoryAction::Archive, Some(to)) if to != ARCHIVED_TIER => report.error(
            spec("to"),
            format!("archive moves items to `{ARCHIVED_TIER}`, found `{to}`"),
        ),
        (MemoryAction::Promote, Some(to)) if rank(to).zip(rank(from)).is_none_or(|(t, f)| t <= f) => report.error(
            spec("to"),
            format!("promote must move to a higher tier than `{from}`, found `{to}`"),
        ),
        (MemoryAction::Demote, Some(to)) if rank(to).zip(rank(from)).is_none_or(|(t, f)| t >= f) => report.error(
            spec("to"),
            format!("demote must move to a lower tier than `{from}`, found `{to}`"),
        ),
        _ => {}
    }
}

/// Memory rules whose moves form a cycle of tiers (a: working -> long-term, b: long-term ->
/// working) and whose conditions one item can meet together would move that item back and forth
/// on every pass. Each such cycle is reported once, at its rule with the smallest name.
pub(super) fn check_memory_bounces(parsed: &[Parsed], tiers: &[String], out: &mut Vec<Finding>) {
    use crate::spec::memory_rule::jointly_satisfiable;
    let known = |t: &str| tiers.iter().any(|x| x == t) || t == ARCHIVED_TIER;
    let rules: Vec<(&Parsed, &crate::spec::MemoryRuleSpec, &str, &str)> = parsed
        .iter()
        .filter_map(|p| match &p.resource.spec {
            Spec::MemoryRule(rule) if !rule.suspend => {
                let from = rule.matches.tier.as_deref().filter(|t| known(t))?;
                let to = rule.target_tier(tiers).filter(|t| known(t) && *t != from)?;
                Some((p, rule, from, to))
            }
            _ => None,
        })
        .collect();
    let mut reported: HashSet<Vec<usize>> = HashSet::new();
    // Depth-first from each rule along rules that move on from where the last one moved to.
    fn walk(
        rules: &[(&Parsed, &crate::spec::MemoryRuleSpec, &str, &str)],
        path: &mut Vec<usize>,
        cycles: &mut Vec<Vec<usize>>,
    ) {
        let start = rules[path[0]].2;
        let at = rules[*path.last().expect("a path")].3;
        if at == start {
            cycles.push(path.clone());
            return;
        }
        for (i, rule) in rules.iter().enumerate() {
            let visited_tier = path.iter().any(|&j| rules[j].2 == rule.2);
            if rule.2 == at && !visited_tier && i > path[0] {
                path.push(i);
                walk(rules, path, cycles);
                path.pop();
            }
        }
    }
    let mut cycles = Vec::new();
    for start in 0..rules.len() {
        walk(&rules, &mut vec![start], &mut cycles);
    }
    for cycle in cycles {
        let mut key = cycle.clone();
        key.sort_unstable();
        if !reported.insert(key) {
            continue;
        }
        let matches: Vec<&crate::spec::memory_rule::MemoryMatch> = cycle.iter().map(|&i| &rules[i].1.matches).collect();
        if !jointly_satisfiable(&matches) {
            continue;
        }
        let lead = *cycle
            .iter()
            .min_by_key(|&&i| &rules[i].0.resource.metadata.name)
            .expect("a cycle has rules");
        let moves: Vec<String> = cycle
            .iter()
            .map(|&i| format!("{} ({} -> {})", rules[i].0.resource.id(), rules[i].2, rules[i].3))
            .collect();
        Report {
            parsed: rules[lead].0,
            out,
        }
        .error(
            FieldPath::from("spec.match"),
            format!(
                "these rules would move an item back and forth on every pass: {}; one item can match them all: make their conditions exclusive (e.g. `usedWithin` against `idleFor`, `minUses` against `maxUses`) or suspend one",
                moves.join(", ")
            ),
        );
    }
}
