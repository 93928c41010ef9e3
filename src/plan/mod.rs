//! Planning: the desired state and what was observed on the host in, the changes to make and
//! the drift found out. Pure: no I/O, so a dry-run and an apply see the very same plan.

pub mod redact;

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

use crate::report::{Drift, DriftItem, Severity};
use crate::spec::common::{Backoff, RestartPolicy};
use crate::spec::{Kind, ResourceId};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Start something the host does not run yet.
    Create,
    /// Restart with a changed spec.
    Update,
    /// Start again what stopped (same spec).
    Restart,
    /// Stop what is owned but no longer desired, and forget it.
    Prune,
    /// Stop a suspended resource and keep it stopped.
    Suspend,
    /// Nothing to do.
    Noop,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Restart => "restart",
            Action::Prune => "prune",
            Action::Suspend => "suspend",
            Action::Noop => "noop",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Change {
    pub kind: Kind,
    pub name: String,
    pub action: Action,
    pub reason: String,
    /// Unified diff of the last-applied spec and the desired one (secrets redacted); empty when
    /// there is nothing to compare.
    pub diff: String,
    /// True when the change repairs drift; false when it rolls out a new desired state.
    #[serde(skip)]
    pub corrective: bool,
}

/// A desired resource, rendered (secrets redacted) and hashed by the caller.
#[derive(Clone, Debug)]
pub struct DesiredItem {
    pub id: ResourceId,
    pub rendered: Value,
    pub hash: String,
    pub suspend: bool,
    pub prune_allowed: bool,
    pub depends_on: Vec<ResourceId>,
    pub restart: RestartPolicy,
    pub backoff: Backoff,
}

/// Something this controller owns, as the inventory and the process table say.
#[derive(Clone, Debug)]
pub struct OwnedItem {
    pub id: ResourceId,
    pub hash: String,
    pub last_applied: Value,
    /// Whether its process runs (and is the one that was started).
    pub running: bool,
    /// This pass's probe verdict, for a running service with a probe: `Ok(answer)`, or
    /// `Err(why)` after `failureThreshold` failures in a row.
    pub probe: Option<Result<String, String>>,
    pub prune_allowed: bool,
    /// Restarts since the last stable run, and when the current process was started.
    pub restarts: u32,
    pub started_ms: i64,
    /// The exit code, when it is known (only for processes this controller reaped).
    pub exit_code: Option<i32>,
}

pub struct PlanInput {
    pub commit: Option<String>,
    pub desired: Vec<DesiredItem>,
    pub owned: Vec<OwnedItem>,
    pub max_prune_fraction: f64,
    pub allow_mass_prune: bool,
    /// The time of the pass (planning reads no clock).
    pub now_ms: i64,
}

/// When a failed process may be restarted: the first restart at once, then `initial`,
/// doubling (by `multiplier`) up to `max`; a run of at least `resetAfter` starts over.
/// Returns (restarts counted so far, earliest restart time).
pub fn next_restart(backoff: &Backoff, restarts: u32, started_ms: i64, now_ms: i64) -> (u32, i64) {
    let stable = now_ms - started_ms >= backoff.reset_after().as_std().as_millis() as i64;
    let restarts = if stable { 0 } else { restarts };
    if restarts == 0 {
        return (0, now_ms);
    }
    let initial = backoff.initial().as_std().as_millis() as f64;
    let max = backoff.max().as_std().as_millis() as f64;
    let delay = (initial * backoff.multiplier().powi(restarts as i32 - 1)).min(max);
    (restarts, started_ms + delay as i64)
}

#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub commit: Option<String>,
    /// In apply order: dependencies before dependents, prunes last (dependents first).
    pub changes: Vec<Change>,
    #[serde(skip)]
    pub drift: Vec<DriftItem>,
    /// Why the pass is refused (the prune guard), if it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// The earliest time (ms) a restart held back by its backoff becomes due: when the daemon
    /// should look again.
    #[serde(skip)]
    pub retry_at: Option<i64>,
}

impl Plan {
    /// Changes that are not no-ops.
    pub fn pending(&self) -> impl Iterator<Item = &Change> {
        self.changes.iter().filter(|c| c.action != Action::Noop)
    }

    /// `3 to create, 1 to update, 0 to restart, 2 to prune, 1 to suspend, 4 unchanged`.
    pub fn summary(&self) -> String {
        let count = |a: Action| self.changes.iter().filter(|c| c.action == a).count();
        format!(
            "{} to create, {} to update, {} to restart, {} to prune, {} to suspend, {} unchanged",
            count(Action::Create),
            count(Action::Update),
            count(Action::Restart),
            count(Action::Prune),
            count(Action::Suspend),
            count(Action::Noop)
        )
    }
}

fn yaml_of(value: &Value) -> String {
    crate::source::yaml::render(value)
}

/// A unified diff between two rendered specs.
pub fn diff(id: &ResourceId, old: Option<&Value>, new: Option<&Value>, commit: Option<&str>) -> String {
    let old_text = old.map(yaml_of).unwrap_or_default();
    let new_text = new.map(yaml_of).unwrap_or_default();
    if old_text == new_text {
        return String::new();
    }
    let short = commit.map_or("working tree".to_string(), |c| c[..c.len().min(12)].to_string());
    similar::TextDiff::from_lines(&old_text, &new_text)
        .unified_diff()
        .context_radius(3)
        .header(&format!("{id} (last applied)"), &format!("{id} (commit {short})"))
        .to_string()
}

/// Orders ids so that each comes after the ids it depends on (ties by id); ids in a cycle (which
/// validation rejects) keep their sorted order at the end.
fn dependency_order(ids: &[ResourceId], depends_on: &BTreeMap<ResourceId, Vec<ResourceId>>) -> Vec<ResourceId> {
    let present: BTreeSet<&ResourceId> = ids.iter().collect();
    let mut done: BTreeSet<ResourceId> = BTreeSet::new();
    let mut order = Vec::with_capacity(ids.len());
    let mut remaining: Vec<&ResourceId> = ids.iter().collect();
    remaining.sort();
    while !remaining.is_empty() {
        let before = remaining.len();
        remaining.retain(|id| {
            let ready = depends_on
                .get(*id)
                .is_none_or(|deps| deps.iter().all(|d| !present.contains(d) || done.contains(d)));
            if ready {
                done.insert((*id).clone());
                order.push((*id).clone());
            }
            !ready
        });
        if remaining.len() == before {
            order.extend(remaining.drain(..).cloned());
        }
    }
    order
}

fn depends_on_of(value: &Value) -> Vec<ResourceId> {
    value
        .get("dependsOn")
        .and_then(Value::as_array)
        .map(|deps| {
            deps.iter()
                .filter_map(Value::as_str)
                .filter_map(|d| crate::spec::parse_dependency(d).ok())
                .collect()
        })
        .unwrap_or_default()
}

fn drift_item(id: &ResourceId, drift: Drift, corrective: bool, severity: Severity, detail: String) -> DriftItem {
    DriftItem {
        kind: id.kind.to_string(),
        name: id.name.clone(),
        drift,
        corrective,
        severity,
        detail,
    }
}

/// Decides what to do with every desired and every owned resource.
pub fn plan(input: PlanInput) -> Plan {
    let commit = input.commit.as_deref();
    let owned: BTreeMap<&ResourceId, &OwnedItem> = input.owned.iter().map(|o| (&o.id, o)).collect();
    let mut by_id: BTreeMap<ResourceId, Change> = BTreeMap::new();
    let mut drift = Vec::new();
    let mut retry_at = None;

    for item in &input.desired {
        let decision = decide_desired(item, owned.get(&item.id).copied(), commit, input.now_ms);
        by_id.insert(item.id.clone(), decision.change);
        drift.extend(decision.drift);
        if let Some(earliest) = decision.retry_at {
            retry_at = Some(retry_at.map_or(earliest, |t: i64| t.min(earliest)));
        }
    }

    // Owned but no longer desired: prune (unless opted out), dependents before dependencies.
    let desired_ids: BTreeSet<&ResourceId> = input.desired.iter().map(|d| &d.id).collect();
    let stale: Vec<&OwnedItem> = input.owned.iter().filter(|o| !desired_ids.contains(&o.id)).collect();
    let mut prunes = Vec::new();
    for o in &stale {
        prunes.push((o.id.clone(), stale_change(o, commit)));
        drift.push(drift_item(
            &o.id,
            Drift::Stale,
            false,
            Severity::Warning,
            "owned but no longer desired".into(),
        ));
    }

    let prune_count = prunes.iter().filter(|(_, c)| c.action == Action::Prune).count();
    let refused = prune_guard(&input, prune_count);
    let changes = in_apply_order(&input.desired, by_id, &stale, prunes);

    Plan {
        commit: input.commit,
        changes,
        drift,
        refused,
        retry_at,
    }
}

/// What `plan` decides for one desired resource: its change, the drift it found (if any), and
/// when a restart held back by its backoff becomes due (if one is).
struct Decision {
    change: Change,
    drift: Option<DriftItem>,
    retry_at: Option<i64>,
}

impl Decision {
    fn new(id: &ResourceId, action: Action, reason: String, diff: String, corrective: bool) -> Decision {
        Decision {
            change: Change {
                kind: id.kind,
                name: id.name.clone(),
                action,
                reason,
                diff,
                corrective,
            },
            drift: None,
            retry_at: None,
        }
    }

    fn with_drift(mut self, drift: DriftItem) -> Decision {
        self.drift = Some(drift);
        self
    }
}

/// The change for a desired resource, given what is owned under its id (if anything).
fn decide_desired(item: &DesiredItem, owned: Option<&OwnedItem>, commit: Option<&str>, now_ms: i64) -> Decision {
    let id = &item.id;
    let change = |action: Action, reason: String, diff: String, corrective: bool| {
        Decision::new(id, action, reason, diff, corrective)
    };
    match owned {
        None if item.suspend => change(Action::Noop, "suspended: not started".into(), String::new(), false),
        None => change(
            Action::Create,
            "new in the desired state".into(),
            diff(id, None, Some(&item.rendered), commit),
            false,
        )
        .with_drift(drift_item(
            id,
            Drift::Missing,
            false,
            Severity::Info,
            "not running yet: new in the desired state".into(),
        )),
        Some(o) if item.suspend && o.running => change(
            Action::Suspend,
            "suspend: true: stop it and keep it stopped".into(),
            String::new(),
            false,
        )
        .with_drift(drift_item(
            id,
            Drift::Changed,
            false,
            Severity::Info,
            "suspended in the desired state".into(),
        )),
        Some(_) if item.suspend => change(Action::Noop, "suspended".into(), String::new(), false),
        Some(o) if o.hash != item.hash => {
            let reason = if o.running {
                "spec changed: restart with the new spec"
            } else {
                "spec changed (and not running): start with the new spec"
            };
            change(
                Action::Update,
                reason.into(),
                diff(id, Some(&o.last_applied), Some(&item.rendered), commit),
                false,
            )
            .with_drift(drift_item(
                id,
                Drift::Changed,
                false,
                Severity::Info,
                "spec changed in the desired state".into(),
            ))
        }
        Some(o) if !o.running => decide_not_running(item, o, now_ms),
        Some(OwnedItem {
            probe: Some(Err(why)), ..
        }) if item.restart != RestartPolicy::Never => change(
            Action::Restart,
            format!("{why}: restart it"),
            String::new(),
            true,
        )
        .with_drift(drift_item(id, Drift::Degraded, true, Severity::Error, why.clone())),
        Some(OwnedItem {
            probe: Some(Err(why)), ..
        }) => change(Action::Noop, format!("{why}; restart: never"), String::new(), false).with_drift(drift_item(
            id,
            Drift::Degraded,
            false,
            Severity::Error,
            why.clone(),
        )),
        Some(_) => change(Action::Noop, "in sync".into(), String::new(), false),
    }
}

/// An owned resource with the desired spec whose process is not running: left stopped by its
/// restart policy, held back by its backoff (CrashLoopBackOff), or restarted.
fn decide_not_running(item: &DesiredItem, o: &OwnedItem, now_ms: i64) -> Decision {
    let id = &item.id;
    let exited = match o.exit_code {
        Some(code) => format!("exited with status {code}"),
        None => "not running".to_string(),
    };
    let clean = o.exit_code == Some(0);
    let (restarts, earliest) = next_restart(&item.backoff, o.restarts, o.started_ms, now_ms);
    if item.restart == RestartPolicy::Never || (item.restart == RestartPolicy::OnFailure && clean) {
        let policy = if item.restart == RestartPolicy::Never {
            "never"
        } else {
            "on-failure"
        };
        let severity = if clean { Severity::Info } else { Severity::Error };
        let detail = format!("{exited}; not restarted (restart: {policy})");
        Decision::new(
            id,
            Action::Noop,
            format!("{exited}; restart: {policy}"),
            String::new(),
            false,
        )
        .with_drift(drift_item(id, Drift::Failed, false, severity, detail))
    } else if earliest > now_ms {
        let wait = (earliest - now_ms + 999) / 1000;
        let reason = format!("CrashLoopBackOff: {exited} after {restarts} restart(s); next restart in {wait}s");
        let mut decision = Decision::new(id, Action::Noop, reason.clone(), String::new(), true).with_drift(drift_item(
            id,
            Drift::Failed,
            true,
            Severity::Critical,
            reason,
        ));
        decision.retry_at = Some(earliest);
        decision
    } else {
        let reason = format!(
            "{exited}: start it again (restart {} since the last stable run)",
            restarts + 1
        );
        Decision::new(id, Action::Restart, reason, String::new(), true).with_drift(drift_item(
            id,
            Drift::Failed,
            true,
            Severity::Error,
            format!("owned but {exited}"),
        ))
    }
}

/// The change for an owned resource that is no longer desired: prune it, unless it opted out.
fn stale_change(o: &OwnedItem, commit: Option<&str>) -> Change {
    let (action, reason) = if o.prune_allowed {
        (
            Action::Prune,
            "no longer in the desired state: stop it and forget it".to_string(),
        )
    } else {
        (
            Action::Noop,
            "no longer in the desired state, but `mirror.os/prune: disabled`: left running".to_string(),
        )
    };
    Change {
        kind: o.id.kind,
        name: o.id.name.clone(),
        action,
        reason,
        diff: diff(&o.id, Some(&o.last_applied), None, commit),
        corrective: false,
    }
}

/// The prune guard: why the pass is refused when it would prune all owned resources, or more
/// than the allowed fraction of them; None when it may go ahead.
fn prune_guard(input: &PlanInput, prune_count: usize) -> Option<String> {
    let owned_count = input.owned.len();
    if input.allow_mass_prune || prune_count == 0 {
        None
    } else if prune_count == owned_count {
        Some(format!(
            "refusing to prune all {owned_count} owned resource(s): the desired state would remove everything; pass --allow-mass-prune if this is intended"
        ))
    } else if prune_count as f64 > input.max_prune_fraction * owned_count as f64 {
        Some(format!(
            "refusing to prune {prune_count} of {owned_count} owned resources (more than the prune guard's {:.0}%); pass --allow-mass-prune if this is intended",
            input.max_prune_fraction * 100.0
        ))
    } else {
        None
    }
}

/// The changes in apply order: desired resources with dependencies first, then the prunes of
/// stale ones, dependents before their dependencies.
fn in_apply_order(
    desired: &[DesiredItem],
    mut by_id: BTreeMap<ResourceId, Change>,
    stale: &[&OwnedItem],
    prunes: Vec<(ResourceId, Change)>,
) -> Vec<Change> {
    let desired_deps: BTreeMap<ResourceId, Vec<ResourceId>> =
        desired.iter().map(|d| (d.id.clone(), d.depends_on.clone())).collect();
    let order = dependency_order(&desired.iter().map(|d| d.id.clone()).collect::<Vec<_>>(), &desired_deps);
    let mut changes: Vec<Change> = order.into_iter().filter_map(|id| by_id.remove(&id)).collect();

    let stale_deps: BTreeMap<ResourceId, Vec<ResourceId>> = stale
        .iter()
        .map(|o| (o.id.clone(), depends_on_of(&o.last_applied)))
        .collect();
    let prune_order = dependency_order(
        &prunes.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(),
        &stale_deps,
    );
    let mut prunes: BTreeMap<ResourceId, Change> = prunes.into_iter().collect();
    changes.extend(prune_order.iter().rev().filter_map(|id| prunes.remove(id)));
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn desired(name: &str, spec: Value, deps: &[&str]) -> DesiredItem {
        DesiredItem {
            id: ResourceId::new(Kind::Service, name),
            hash: redact::spec_hash(&spec),
            rendered: spec,
            suspend: false,
            prune_allowed: true,
            depends_on: deps.iter().map(|d| ResourceId::new(Kind::Service, *d)).collect(),
            restart: RestartPolicy::Always,
            backoff: Backoff::default(),
        }
    }

    fn owned(name: &str, spec: Value, running: bool) -> OwnedItem {
        OwnedItem {
            id: ResourceId::new(Kind::Service, name),
            hash: redact::spec_hash(&spec),
            last_applied: spec,
            running,
            probe: None,
            prune_allowed: true,
            restarts: 0,
            started_ms: 0,
            exit_code: None,
        }
    }

    fn input(desired: Vec<DesiredItem>, owned: Vec<OwnedItem>) -> PlanInput {
        PlanInput {
            commit: Some("c0ffee".into()),
            desired,
            owned,
            max_prune_fraction: 0.5,
            allow_mass_prune: false,
            now_ms: 1_000_000,
        }
    }

    fn actions(plan: &Plan) -> Vec<(String, Action)> {
        plan.changes.iter().map(|c| (c.name.clone(), c.action)).collect()
    }

    #[test]
    fn new_changed_dead_and_in_sync_services() {
        let plan = plan(input(
            vec![
                desired("new", json!({"command": ["a"]}), &[]),
                desired("changed", json!({"command": ["b2"]}), &[]),
                desired("dead", json!({"command": ["c"]}), &[]),
                desired("fine", json!({"command": ["d"]}), &[]),
            ],
            vec![
                owned("changed", json!({"command": ["b1"]}), true),
                owned("dead", json!({"command": ["c"]}), false),
                owned("fine", json!({"command": ["d"]}), true),
            ],
        ));
        assert_eq!(
            actions(&plan),
            vec![
                ("changed".into(), Action::Update),
                ("dead".into(), Action::Restart),
                ("fine".into(), Action::Noop),
                ("new".into(), Action::Create),
            ]
        );
        let update = &plan.changes[0];
        assert!(
            update.diff.contains("\n-- b1\n") && update.diff.contains("\n+- b2\n"),
            "{}",
            update.diff
        );
        assert!(plan.changes[1].corrective, "a dead service is drift repaired");
        assert!(!plan.changes[0].corrective, "a changed spec is a new desired state");
        assert_eq!(
            plan.summary(),
            "1 to create, 1 to update, 1 to restart, 0 to prune, 0 to suspend, 1 unchanged"
        );
        assert!(plan.refused.is_none());
    }

    #[test]
    fn dependencies_start_first_and_prunes_go_last_in_reverse() {
        let plan = plan(PlanInput {
            allow_mass_prune: true,
            ..input(
                vec![
                    desired("app", json!({"command": ["app"]}), &["db"]),
                    desired("db", json!({"command": ["db"]}), &[]),
                ],
                vec![
                    owned("old-db", json!({"command": ["x"]}), true),
                    owned("old-app", json!({"command": ["y"], "dependsOn": ["old-db"]}), true),
                ],
            )
        });
        assert_eq!(
            actions(&plan),
            vec![
                ("db".into(), Action::Create),
                ("app".into(), Action::Create),
                ("old-app".into(), Action::Prune),
                ("old-db".into(), Action::Prune),
            ]
        );
    }

    #[test]
    fn the_prune_guard_refuses_emptying_the_host() {
        let everything = plan(input(
            vec![],
            vec![owned("a", json!({}), true), owned("b", json!({}), true)],
        ));
        assert!(everything.refused.unwrap().contains("refusing to prune all 2"));
        let most = plan(input(
            vec![desired("a", json!({}), &[])],
            vec![
                owned("a", json!({}), true),
                owned("b", json!({}), true),
                owned("c", json!({}), true),
            ],
        ));
        assert!(most.refused.unwrap().contains("refusing to prune 2 of 3"));
        let some = plan(input(
            vec![desired("a", json!({}), &[]), desired("b", json!({}), &[])],
            vec![
                owned("a", json!({}), true),
                owned("b", json!({}), true),
                owned("c", json!({}), true),
            ],
        ));
        assert!(some.refused.is_none());
    }

    #[test]
    fn prune_opt_out_and_suspend() {
        let mut keep = owned("keep", json!({}), true);
        keep.prune_allowed = false;
        let mut paused = desired("paused", json!({}), &[]);
        paused.suspend = true;
        let plan = plan(PlanInput {
            allow_mass_prune: true,
            ..input(vec![paused], vec![keep, owned("paused", json!({}), true)])
        });
        assert_eq!(
            actions(&plan),
            vec![("paused".into(), Action::Suspend), ("keep".into(), Action::Noop)]
        );
        assert!(plan.changes[1].reason.contains("mirror.os/prune: disabled"));
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum_and_resets_after_a_stable_run() {
        let backoff = Backoff::default(); // 1s initial, 1m max, x2, reset after 1m
        let start = 1_000_000;
        assert_eq!(
            next_restart(&backoff, 0, start, start + 10),
            (0, start + 10),
            "the first restart is at once"
        );
        assert_eq!(next_restart(&backoff, 1, start, start + 10), (1, start + 1_000));
        assert_eq!(next_restart(&backoff, 2, start, start + 10), (2, start + 2_000));
        assert_eq!(next_restart(&backoff, 4, start, start + 10), (4, start + 8_000));
        assert_eq!(
            next_restart(&backoff, 30, start, start + 10),
            (30, start + 60_000),
            "capped at max"
        );
        assert_eq!(
            next_restart(&backoff, 30, start, start + 61_000),
            (0, start + 61_000),
            "reset after a stable run"
        );
    }

    #[test]
    fn a_crash_loop_waits_and_restart_policies_hold() {
        let spec = json!({"command": ["a"]});
        let mut dead = owned("a", spec.clone(), false);
        dead.restarts = 3;
        dead.started_ms = 999_000;
        let waiting = plan(input(vec![desired("a", spec.clone(), &[])], vec![dead.clone()]));
        assert_eq!(waiting.changes[0].action, Action::Noop);
        assert!(waiting.changes[0]
            .reason
            .starts_with("CrashLoopBackOff: not running after 3 restart(s); next restart in 3s"));
        assert_eq!(waiting.drift[0].severity, Severity::Critical);

        dead.started_ms = 990_000;
        let due = plan(input(vec![desired("a", spec.clone(), &[])], vec![dead.clone()]));
        assert_eq!(due.changes[0].action, Action::Restart);

        let mut never = desired("a", spec.clone(), &[]);
        never.restart = RestartPolicy::Never;
        assert_eq!(
            plan(input(vec![never], vec![dead.clone()])).changes[0].action,
            Action::Noop
        );
        let mut on_failure = desired("a", spec.clone(), &[]);
        on_failure.restart = RestartPolicy::OnFailure;
        dead.exit_code = Some(0);
        assert_eq!(
            plan(input(vec![on_failure.clone()], vec![dead.clone()])).changes[0].action,
            Action::Noop
        );
        dead.exit_code = Some(3);
        assert_eq!(
            plan(input(vec![on_failure], vec![dead])).changes[0].action,
            Action::Restart
        );
    }

    #[test]
    fn a_second_plan_after_apply_is_all_noops() {
        let spec = json!({"command": ["a"]});
        let plan = plan(input(
            vec![desired("a", spec.clone(), &[])],
            vec![owned("a", spec, true)],
        ));
        assert_eq!(plan.pending().count(), 0);
    }
}
