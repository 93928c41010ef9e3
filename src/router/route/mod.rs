//! Routing rules, pure: provider health from probe verdicts, and each agent's route from its chain.
//!
//! No I/O and no clock: times are milliseconds passed in by the caller, so every rule is tested
//! with explicit times.
//!
//! - A provider is *healthy* (routable) until `failure_threshold` consecutive probes fail, and
//!   healthy again at the first successful probe. Its *stable window* counts from the first of an
//!   unbroken run of successful probes: any failed probe, even one below the threshold, restarts it.
//! - A provider nobody probes (absent from the map: a one-shot preview) counts as healthy. One
//!   whose probe is on its way (a fresh [`ProviderState::new`]) counts as healthy too, but an
//!   agent without a route waits for the verdicts of its chain's entries up to the one it would
//!   take, so a fresh daemon's first route is one the probes agree with, not a guess that the
//!   first probe refutes. Neither is ever *stable*, so no agent fails back to a provider before
//!   it has been probed. A caller that knows better (the provider's Service is not running) uses
//!   [`ProviderState::presumed_unhealthy`].
//! - A provider that has never answered and whose latest probe failed keeps an agent that is
//!   already on it (or takes its first route: it may be starting with the host) by the credit of
//!   its failure threshold, but no agent *moves* to it (failover, recovery, reroute): a switch to
//!   what a probe has just refuted is one more switch, down a chain nobody serves.
//! - An agent's route is the earliest entry of its chain (primary, then fallbacks) that is healthy
//!   and either is the current route, comes after it, or has been stable for `failback_after`.
//!   So moving later in the chain (failover) happens at once, moving earlier (failback, also to a
//!   fallback earlier than the current one) only after the stable window, and a flapping primary
//!   never bounces agents. The window guards against a provider that failed *after* answering: a
//!   provider whose every failure came before its first successful probe was starting (a daemon
//!   started with the host, Ollama still binding its port), not flapping, and is stable from that
//!   first answer, so agents do not wait out the window on a fallback after every boot.
//! - When nothing qualifies but some entry is healthy (only entries earlier than a failed current
//!   route, none stable yet), the earliest of those is taken: better than nothing.

use std::collections::BTreeMap;

use serde::Serialize;

use super::health::Verdict;
use crate::spec::agent::ModelRef;

/// One provider's health as seen through its probes.
#[derive(Clone, Debug)]
pub struct ProviderState {
    failure_threshold: u32,
    consecutive_failures: u32,
    healthy: bool,
    healthy_since_ms: Option<i64>,
    last: Option<Verdict>,
    /// A probe has failed after one had succeeded: from then on failbacks wait the window.
    failed_after_answering: bool,
    /// Some probe has succeeded.
    answered: bool,
}

/// A change of [`ProviderState::healthy`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transition {
    /// A successful probe of an unhealthy provider.
    BecameHealthy,
    /// The `failure_threshold`-th consecutive failed probe: the moment to restart its Service.
    BecameUnhealthy { consecutive_failures: u32 },
}

impl ProviderState {
    /// Never probed, counted healthy until `failure_threshold` probes fail (0 counts as 1).
    pub fn new(failure_threshold: u32) -> Self {
        ProviderState {
            failure_threshold: failure_threshold.max(1),
            consecutive_failures: 0,
            healthy: true,
            healthy_since_ms: None,
            last: None,
            failed_after_answering: false,
            answered: false,
        }
    }

    /// Never probed, counted unhealthy until a probe succeeds.
    pub fn presumed_unhealthy(failure_threshold: u32) -> Self {
        ProviderState {
            healthy: false,
            ..ProviderState::new(failure_threshold)
        }
    }

    /// Takes in one probe's verdict; the transition, if healthiness changed.
    pub fn observe(&mut self, verdict: &Verdict, now_ms: i64) -> Option<Transition> {
        self.last = Some(verdict.clone());
        if verdict.is_healthy() {
            self.answered = true;
            self.consecutive_failures = 0;
            self.healthy_since_ms.get_or_insert(now_ms);
            if !self.healthy {
                self.healthy = true;
                return Some(Transition::BecameHealthy);
            }
            return None;
        }
        // A run of successes ends here (the first failure after one resets `healthy_since_ms`).
        self.failed_after_answering |= self.healthy_since_ms.is_some();
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        // Restarts the stable window: failback wants an unbroken run of successes.
        self.healthy_since_ms = None;
        if self.healthy && self.consecutive_failures >= self.failure_threshold {
            self.healthy = false;
            return Some(Transition::BecameUnhealthy {
                consecutive_failures: self.consecutive_failures,
            });
        }
        None
    }

    /// Routable: fewer than `failure_threshold` consecutive failures since the last success (or
    /// never probed, unless presumed unhealthy).
    pub fn healthy(&self) -> bool {
        self.healthy
    }

    /// The first of the current unbroken run of successful probes; None after a failed probe or
    /// before the first probe.
    pub fn healthy_since_ms(&self) -> Option<i64> {
        self.healthy_since_ms
    }

    /// Whether agents may be routed here: healthy, and the latest probe did not find generation
    /// hung (nor the port held by a stranger, which is routed away from at once too). One hung
    /// verdict moves agents at once (a hang holds every request it gets, and a failover costs
    /// only the failback window); restarting the Service still waits for `failure_threshold`
    /// verdicts, so a provider busy with a long generation is not killed.
    pub fn routable(&self) -> bool {
        self.healthy && !matches!(self.last, Some(Verdict::Hung { .. } | Verdict::Hijacked { .. }))
    }

    /// Never answered, and its latest probe failed: still routable by its threshold's credit
    /// (a provider starting with the host), but not worth moving an agent to.
    pub fn refuted_before_answering(&self) -> bool {
        !self.answered && self.last.as_ref().is_some_and(|v| !v.is_healthy())
    }

    /// Its probe is on its way: no verdict yet.
    pub fn awaiting_first_probe(&self) -> bool {
        self.last.is_none()
    }

    /// Answering since its first successful probe with no failure after it: it was starting,
    /// not flapping, and needs no stable window.
    pub fn in_first_run(&self) -> bool {
        !self.failed_after_answering && self.healthy_since_ms.is_some()
    }

    /// The latest verdict.
    pub fn last(&self) -> Option<&Verdict> {
        self.last.as_ref()
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    pub fn failure_threshold(&self) -> u32 {
        self.failure_threshold
    }

    /// A committed change of `failureThreshold` takes effect at the next probe (0 counts as 1).
    pub fn set_failure_threshold(&mut self, failure_threshold: u32) {
        self.failure_threshold = failure_threshold.max(1);
    }
}

/// An agent's routing state, kept by the caller between decisions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "route", rename_all = "lowercase")]
pub enum RouteState {
    /// No decision made yet.
    #[default]
    Unrouted,
    Routed(ModelRef),
    /// Nothing in the chain was healthy at the last decision.
    Lost,
}

impl RouteState {
    pub fn route(&self) -> Option<&ModelRef> {
        match self {
            RouteState::Routed(route) => Some(route),
            RouteState::Unrouted | RouteState::Lost => None,
        }
    }
}

/// An agent's route now, and the switch that led there if it is one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// None: nothing in the chain is healthy, or (with `waiting`) no route yet.
    pub route: Option<ModelRef>,
    /// None: the route stays as it was.
    pub change: Option<Change>,
    /// The agent has no route yet and waits for these providers' first verdicts.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub waiting: Vec<String>,
}

impl Decision {
    /// The state to pass to the next [`decide`].
    pub fn state(&self) -> RouteState {
        match &self.route {
            Some(route) => RouteState::Routed(route.clone()),
            None if !self.waiting.is_empty() => RouteState::Unrouted,
            None => RouteState::Lost,
        }
    }
}

/// A switch of an agent's route, to be recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    pub kind: ChangeKind,
    pub from: Option<ModelRef>,
    pub to: Option<ModelRef>,
    pub reason: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// The first route of an agent.
    Initial,
    /// To a later entry of the chain (or, when nothing else is healthy, to an earlier one not yet
    /// stable), because the current route is unhealthy.
    Failover,
    /// To an earlier entry of the chain that has been healthy for the stable window.
    Failback,
    /// Nothing in the chain is healthy.
    Lost,
    /// A route again after `Lost`.
    Recovered,
    /// The current route is no longer in the chain (the desired state changed).
    Reconfigured,
}

/// How one chain entry stands.
struct Entry<'a> {
    model: &'a ModelRef,
    state: Option<&'a ProviderState>,
}

impl Entry<'_> {
    fn healthy(&self) -> bool {
        self.state.is_none_or(ProviderState::routable)
    }

    /// Healthy, and not refuted before it ever answered: what an agent may move to.
    fn target(&self) -> bool {
        self.healthy() && !self.state.is_some_and(ProviderState::refuted_before_answering)
    }

    /// Healthy for at least the window, by probes (an unprobed provider never is), or answering
    /// for the first time after failing only while it started.
    fn stable(&self, failback_after_ms: i64, now_ms: i64) -> bool {
        self.healthy_for_ms(now_ms)
            .is_some_and(|healthy_for| healthy_for >= failback_after_ms || self.in_first_run())
    }

    fn in_first_run(&self) -> bool {
        self.state.is_some_and(ProviderState::in_first_run)
    }

    fn healthy_for_ms(&self, now_ms: i64) -> Option<i64> {
        let state = self.state.filter(|s| s.routable())?;
        state.healthy_since_ms().map(|since| now_ms - since)
    }

    /// "ollama unhealthy (hung: generation timed out after 5s)".
    fn unhealthy_reason(&self) -> String {
        let provider = &self.model.provider;
        if self.healthy() && !self.target() {
            if let Some(verdict) = self.state.and_then(ProviderState::last) {
                return format!("{provider} has not answered yet ({verdict})");
            }
        }
        match self.state.and_then(ProviderState::last) {
            Some(verdict) => format!("{provider} unhealthy ({verdict})"),
            None => format!("{provider} unhealthy (not probed yet)"),
        }
    }

    /// "ollama healthy for 5s", "backup not probed yet", "ollama answering since it started".
    fn healthy_reason(&self, now_ms: i64) -> String {
        let provider = &self.model.provider;
        match self.healthy_for_ms(now_ms) {
            Some(_) if self.in_first_run() => format!("{provider} answering since it started"),
            Some(healthy_for) => format!("{provider} healthy for {}", human(healthy_for)),
            None if self.state.and_then(ProviderState::last).is_none() => format!("{provider} not probed yet"),
            // Routable, but its last probe failed (below the threshold).
            None => format!("{provider} healthy, last probe failed"),
        }
    }
}

/// An agent's route now.
///
/// `chain` is the agent's primary followed by its fallbacks ([`ModelRoute::chain`]);
/// `providers` holds the state of each probed provider (absent: never probed, counted healthy).
///
/// [`ModelRoute::chain`]: crate::spec::agent::ModelRoute::chain
pub fn decide(
    chain: &[ModelRef],
    current: &RouteState,
    providers: &BTreeMap<String, ProviderState>,
    failback_after_ms: i64,
    now_ms: i64,
) -> Decision {
    let entries = entries(chain, providers);
    if let Some(waiting) = waiting_for_first_verdicts(&entries, current) {
        return waiting;
    }
    let current_index = current.route().and_then(|route| chain.iter().position(|m| m == route));
    match (current.route(), current_index) {
        (Some(route), Some(current_index)) => {
            from_current_route(&entries, route, current_index, failback_after_ms, now_ms)
        }
        _ => without_current_route(&entries, current),
    }
}

/// The first route waits for the verdicts up to the entry it would take: an unprobed provider
/// counts as healthy, and a guess a probe refutes a moment later is a needless switch (several,
/// down a chain nobody serves).
fn waiting_for_first_verdicts(entries: &[Entry], current: &RouteState) -> Option<Decision> {
    if *current != RouteState::Unrouted {
        return None;
    }
    let earliest_healthy = entries.iter().position(Entry::healthy);
    let upto = earliest_healthy.map_or(entries.len(), |index| index + 1);
    let waiting: Vec<String> = entries[..upto]
        .iter()
        .filter(|entry| entry.healthy() && entry.state.is_some_and(ProviderState::awaiting_first_probe))
        .map(|entry| entry.model.provider.clone())
        .collect();
    (!waiting.is_empty()).then_some(Decision {
        route: None,
        change: None,
        waiting,
    })
}

/// No current route in the chain (none yet, lost, or one the desired state took out): nothing
/// to be stable against, take the best healthy entry (a first route may go to one still
/// starting, a move may not).
fn without_current_route(entries: &[Entry], current: &RouteState) -> Decision {
    let pick = match current {
        RouteState::Unrouted => entries.iter().position(Entry::healthy),
        RouteState::Lost | RouteState::Routed(_) => entries.iter().position(Entry::target),
    };
    let Some(pick) = pick else {
        return lost(current, entries);
    };
    let to = entries[pick].model;
    let skipped: Vec<String> = entries[..pick].iter().map(Entry::unhealthy_reason).collect();
    let (kind, head) = match current {
        RouteState::Unrouted => (ChangeKind::Initial, format!("first route: {}", describe_route(to))),
        RouteState::Lost => (
            ChangeKind::Recovered,
            format!("{} healthy again: recovered on {}", to.provider, describe_route(to)),
        ),
        RouteState::Routed(gone) => (
            ChangeKind::Reconfigured,
            format!(
                "{} is no longer in the chain: rerouted to {}",
                describe_route(gone),
                describe_route(to)
            ),
        ),
    };
    let mut reason = skipped;
    reason.push(head);
    Decision {
        route: Some(to.clone()),
        change: Some(Change {
            kind,
            from: current.route().cloned(),
            to: Some(to.clone()),
            reason: reason.join("; "),
        }),
        waiting: Vec::new(),
    }
}

/// On a route of the chain: stay, fail over (to a later entry at once), or fail back (to an
/// earlier one stable for the window).
fn from_current_route(
    entries: &[Entry],
    route: &ModelRef,
    current_index: usize,
    failback_after_ms: i64,
    now_ms: i64,
) -> Decision {
    let qualifies = |(index, entry): &(usize, &Entry)| match index.cmp(&current_index) {
        std::cmp::Ordering::Equal => entry.healthy(),
        std::cmp::Ordering::Greater => entry.target(),
        std::cmp::Ordering::Less => entry.healthy() && entry.stable(failback_after_ms, now_ms),
    };
    let chosen = entries.iter().enumerate().find(qualifies).map(|(index, _)| index);
    let current_entry = &entries[current_index];
    let current_failed = current_entry.unhealthy_reason();

    let (index, kind, reason) = match chosen {
        Some(index) if index == current_index => {
            return Decision {
                route: Some(route.clone()),
                change: None,
                waiting: Vec::new(),
            }
        }
        Some(index) if index < current_index => {
            let to = &entries[index];
            let mut reason = format!(
                "{}: failback to {}",
                to.healthy_reason(now_ms),
                describe_route(to.model)
            );
            if !current_entry.healthy() {
                reason = format!("{current_failed}; {reason}");
            }
            (index, ChangeKind::Failback, reason)
        }
        Some(index) => {
            // Every entry from the current one up to the chosen one is unhealthy: name them all.
            let failed: Vec<String> = entries[current_index..index]
                .iter()
                .map(Entry::unhealthy_reason)
                .collect();
            let reason = format!(
                "{}: failover to {}",
                failed.join("; "),
                describe_route(entries[index].model)
            );
            (index, ChangeKind::Failover, reason)
        }
        None => {
            // Only entries before the failed current one may be taken, none stable yet.
            let Some(earliest_target) = entries.iter().position(Entry::target) else {
                return lost(&RouteState::Routed(route.clone()), entries);
            };
            let to = &entries[earliest_target];
            let reason = format!(
                "{current_failed}: failover to {} ({}, nothing else is healthy)",
                describe_route(to.model),
                to.healthy_reason(now_ms)
            );
            (earliest_target, ChangeKind::Failover, reason)
        }
    };
    let to = entries[index].model.clone();
    Decision {
        route: Some(to.clone()),
        change: Some(Change {
            kind,
            from: Some(route.clone()),
            to: Some(to),
            reason,
        }),
        waiting: Vec::new(),
    }
}

/// Nothing in the chain can be routed to: `Lost`, said once.
fn lost(current: &RouteState, entries: &[Entry]) -> Decision {
    let change = match current {
        RouteState::Lost => None,
        RouteState::Unrouted | RouteState::Routed(_) => Some(Change {
            kind: ChangeKind::Lost,
            from: current.route().cloned(),
            to: None,
            reason: format!(
                "nothing healthy: {}",
                entries
                    .iter()
                    .map(Entry::unhealthy_reason)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    };
    Decision {
        route: None,
        change,
        waiting: Vec::new(),
    }
}

/// When the next failback could happen: the earliest moment an entry before the current route,
/// healthy but not yet for `failback_after`, completes its window. None when the agent is on its
/// primary, has no route (any healthy entry is taken at once), or no earlier entry is healthy.
/// The caller re-decides then (a failed probe in between just makes that decision a no-op).
pub fn failback_due_ms(
    chain: &[ModelRef],
    current: &RouteState,
    providers: &BTreeMap<String, ProviderState>,
    failback_after_ms: i64,
    now_ms: i64,
) -> Option<i64> {
    let route = current.route()?;
    let current_index = chain.iter().position(|m| m == route)?;
    entries(chain, providers)[..current_index]
        .iter()
        .filter(|entry| entry.healthy() && !entry.in_first_run())
        .filter_map(|entry| entry.state?.healthy_since_ms())
        .map(|since| since + failback_after_ms)
        .filter(|&due| due > now_ms)
        .min()
}

fn entries<'a>(chain: &'a [ModelRef], providers: &'a BTreeMap<String, ProviderState>) -> Vec<Entry<'a>> {
    chain
        .iter()
        .map(|model| Entry {
            model,
            state: providers.get(&model.provider),
        })
        .collect()
}

fn describe_route(model: &ModelRef) -> String {
    format!("{}/{}", model.provider, model.model)
}

/// Milliseconds for people: whole seconds from 1 s on ("30s", "1m 5s"), else "250ms".
fn human(ms: i64) -> String {
    let ms = ms.max(0) as u64;
    let duration = if ms >= 1000 {
        std::time::Duration::from_secs(ms / 1000)
    } else {
        std::time::Duration::from_millis(ms)
    };
    humantime::format_duration(duration).to_string()
}

#[cfg(test)]
mod tests;
