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
    let earliest_healthy = entries.iter().position(Entry::healthy);
    let earliest_target = entries.iter().position(Entry::target);
    let current_route = current.route();
    let current_index = current_route.and_then(|route| chain.iter().position(|m| m == route));

    // The first route waits for the verdicts up to the entry it would take: an unprobed
    // provider counts as healthy, and a guess a probe refutes a moment later is a needless
    // switch (several, down a chain nobody serves).
    if *current == RouteState::Unrouted {
        let upto = earliest_healthy.map_or(entries.len(), |index| index + 1);
        let waiting: Vec<String> = entries[..upto]
            .iter()
            .filter(|entry| entry.healthy() && entry.state.is_some_and(ProviderState::awaiting_first_probe))
            .map(|entry| entry.model.provider.clone())
            .collect();
        if !waiting.is_empty() {
            return Decision {
                route: None,
                change: None,
                waiting,
            };
        }
    }

    let (Some(route), Some(current_index)) = (current_route, current_index) else {
        // No current route in the chain: nothing to be stable against, take the best healthy
        // entry (a first route may go to one still starting, a move may not).
        let pick = match current {
            RouteState::Unrouted => earliest_healthy,
            RouteState::Lost | RouteState::Routed(_) => earliest_target,
        };
        let Some(pick) = pick else {
            return lost(current, &entries);
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
        return Decision {
            route: Some(to.clone()),
            change: Some(Change {
                kind,
                from: current_route.cloned(),
                to: Some(to.clone()),
                reason: reason.join("; "),
            }),
            waiting: Vec::new(),
        };
    };

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
            let Some(earliest_target) = earliest_target else {
                return lost(current, &entries);
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
mod tests {
    use super::*;

    const WINDOW: i64 = 30_000;

    fn model(provider: &str) -> ModelRef {
        ModelRef {
            provider: provider.into(),
            model: match provider {
                "ollama" => "llama3.2:3b",
                "backup" => "qwen2.5:0.5b",
                _ => "gpt-4o-mini",
            }
            .into(),
        }
    }

    fn chain(providers: &[&str]) -> Vec<ModelRef> {
        providers.iter().map(|p| model(p)).collect()
    }

    const OK: u8 = 0;
    const DOWN: u8 = 1;
    const HUNG: u8 = 2;

    fn verdict(kind: u8) -> Verdict {
        match kind {
            OK => Verdict::Healthy { detail: "ok".into() },
            DOWN => Verdict::Down {
                why: "GET /api/version: connection refused".into(),
            },
            _ => Verdict::Hung {
                why: "generation timed out after 5s".into(),
            },
        }
    }

    /// Runs probes `(time, provider, verdict)` in order with a decision before the first and after
    /// each; the switches as `(time, kind, to provider or "-")`.
    struct Run {
        chain: Vec<ModelRef>,
        providers: BTreeMap<String, ProviderState>,
        state: RouteState,
        changes: Vec<(i64, ChangeKind, String)>,
        reasons: Vec<String>,
    }

    impl Run {
        fn new(chain_of: &[&str]) -> Run {
            Run {
                chain: chain(chain_of),
                providers: BTreeMap::new(),
                state: RouteState::Unrouted,
                changes: Vec::new(),
                reasons: Vec::new(),
            }
        }

        /// Every provider's probe on its way from the start, as in a daemon.
        fn probing(chain_of: &[&str]) -> Run {
            let mut run = Run::new(chain_of);
            for provider in chain_of {
                run.providers.insert(provider.to_string(), ProviderState::new(2));
            }
            run
        }

        fn decide(&mut self, now: i64) {
            let decision = decide(&self.chain, &self.state, &self.providers, WINDOW, now);
            if let Some(change) = &decision.change {
                assert_eq!(change.to, decision.route);
                assert_eq!(change.from.as_ref(), self.state.route());
                let to = change.to.as_ref().map_or("-".to_string(), |m| m.provider.clone());
                self.changes.push((now, change.kind, to));
                self.reasons.push(change.reason.clone());
            }
            self.state = decision.state();
        }

        fn probes(mut self, probes: &[(i64, &str, u8)]) -> Run {
            self.decide(0);
            for &(now, provider, kind) in probes {
                self.providers
                    .entry(provider.to_string())
                    .or_insert_with(|| ProviderState::new(2))
                    .observe(&verdict(kind), now);
                self.decide(now);
            }
            self
        }
    }

    fn expect(changes: &[(i64, ChangeKind, &str)]) -> Vec<(i64, ChangeKind, String)> {
        changes.iter().map(|&(t, k, to)| (t, k, to.to_string())).collect()
    }

    use ChangeKind::*;

    #[test]
    fn scenarios() {
        struct Case {
            name: &'static str,
            chain: &'static [&'static str],
            probes: Vec<(i64, &'static str, u8)>,
            changes: Vec<(i64, ChangeKind, &'static str)>,
        }
        let cases = [
            Case {
                name: "primary down: failover at the threshold-th failure (2), not before",
                chain: &["ollama", "backup"],
                probes: vec![(0, "backup", OK), (5_000, "ollama", OK), (10_000, "ollama", DOWN), (15_000, "ollama", DOWN)],
                changes: vec![(0, Initial, "ollama"), (15_000, Failover, "backup")],
            },
            Case {
                name: "primary hung: failover at the first hung verdict (a hang holds every request)",
                chain: &["ollama", "backup"],
                probes: vec![(0, "backup", OK), (5_000, "ollama", OK), (10_000, "ollama", HUNG), (15_000, "ollama", HUNG)],
                changes: vec![(0, Initial, "ollama"), (10_000, Failover, "backup")],
            },
            Case {
                name: "a failure below the threshold does not move the agent",
                chain: &["ollama", "backup"],
                probes: vec![(5_000, "ollama", OK), (10_000, "ollama", DOWN), (15_000, "ollama", OK), (20_000, "ollama", DOWN)],
                changes: vec![(0, Initial, "ollama")],
            },
            Case {
                name: "failback exactly when the primary has been healthy for the window",
                chain: &["ollama", "backup"],
                probes: vec![
                    (0, "backup", OK),
                    (1_000, "ollama", OK),
                    (5_000, "ollama", DOWN),
                    (10_000, "ollama", DOWN),
                    (20_000, "ollama", OK),
                    (45_000, "ollama", OK),
                    (49_999, "ollama", OK),
                    (50_000, "ollama", OK),
                ],
                changes: vec![(0, Initial, "ollama"), (10_000, Failover, "backup"), (50_000, Failback, "ollama")],
            },
            Case {
                name: "a flapping primary never bounces the agent within the window",
                chain: &["ollama", "backup"],
                probes: vec![
                    (0, "backup", OK),
                    (1_000, "ollama", OK),
                    (5_000, "ollama", DOWN),
                    (10_000, "ollama", DOWN),
                    (15_000, "ollama", OK),
                    (40_000, "ollama", OK),
                    (44_000, "ollama", HUNG),
                    (45_000, "ollama", OK),
                    (70_000, "ollama", OK),
                    (74_000, "ollama", DOWN),
                    (75_000, "ollama", OK),
                    (104_999, "ollama", OK),
                    (105_000, "ollama", OK),
                ],
                changes: vec![(0, Initial, "ollama"), (10_000, Failover, "backup"), (105_000, Failback, "ollama")],
            },
            Case {
                name: "two fallbacks, the first also down: failover skips it",
                chain: &["ollama", "backup", "cloud"],
                probes: vec![
                    (1_000, "backup", DOWN),
                    (2_000, "backup", DOWN),
                    (3_000, "cloud", OK),
                    (5_000, "ollama", HUNG),
                    (10_000, "ollama", HUNG),
                ],
                changes: vec![(0, Initial, "ollama"), (5_000, Failover, "cloud")],
            },
            Case {
                name: "on the last fallback, an earlier fallback stable for the window wins over an unstable primary",
                chain: &["ollama", "backup", "cloud"],
                probes: vec![
                    (500, "ollama", OK),
                    (600, "backup", OK),
                    (1_000, "backup", DOWN),
                    (2_000, "backup", DOWN),
                    (3_000, "cloud", OK),
                    (5_000, "ollama", DOWN),
                    (10_000, "ollama", DOWN),
                    (20_000, "backup", OK),
                    (40_000, "ollama", OK),
                    (50_000, "backup", OK),
                    (70_000, "ollama", OK),
                ],
                changes: vec![
                    (0, Initial, "ollama"),
                    (10_000, Failover, "cloud"),
                    (50_000, Failback, "backup"),
                    (70_000, Failback, "ollama"),
                ],
            },
            Case {
                name: "nothing healthy: Lost, then Recovered on the first healthy entry at once",
                chain: &["ollama", "backup"],
                probes: vec![
                    (500, "ollama", OK),
                    (600, "backup", OK),
                    (1_000, "backup", DOWN),
                    (2_000, "backup", DOWN),
                    (5_000, "ollama", DOWN),
                    (10_000, "ollama", DOWN),
                    (15_000, "ollama", DOWN),
                    (20_000, "backup", OK),
                    (25_000, "ollama", OK),
                    (55_000, "ollama", OK),
                ],
                changes: vec![
                    (0, Initial, "ollama"),
                    (10_000, Lost, "-"),
                    (20_000, Recovered, "backup"),
                    (55_000, Failback, "ollama"),
                ],
            },
            Case {
                name: "the current route fails and only an earlier, not yet stable entry is healthy: take it",
                chain: &["ollama", "backup"],
                probes: vec![
                    (0, "backup", OK),
                    (1_000, "ollama", OK),
                    (5_000, "ollama", DOWN),
                    (10_000, "ollama", DOWN),
                    (20_000, "ollama", OK),
                    (21_000, "backup", DOWN),
                    (22_000, "backup", DOWN),
                ],
                changes: vec![(0, Initial, "ollama"), (10_000, Failover, "backup"), (22_000, Failover, "ollama")],
            },
            Case {
                name: "unprobed providers count as healthy: the initial route is the primary, failover to an unprobed fallback",
                chain: &["ollama", "backup"],
                probes: vec![(5_000, "ollama", DOWN), (10_000, "ollama", DOWN)],
                changes: vec![(0, Initial, "ollama"), (10_000, Failover, "backup")],
            },
            Case {
                name: "a primary still starting when the daemon starts gets its agents at its first answer; \
                       once it has answered, a failure means the window again",
                chain: &["ollama", "backup"],
                probes: vec![
                    (0, "backup", OK),
                    (200, "ollama", DOWN),
                    (400, "ollama", DOWN),
                    (600, "ollama", DOWN),
                    (3_000, "ollama", OK),
                    (4_000, "ollama", DOWN),
                    (4_200, "ollama", DOWN),
                    (5_000, "ollama", OK),
                    (34_999, "ollama", OK),
                    (35_000, "ollama", OK),
                ],
                changes: vec![
                    (0, Initial, "ollama"),
                    (400, Failover, "backup"),
                    (3_000, Failback, "ollama"),
                    (4_200, Failover, "backup"),
                    (35_000, Failback, "ollama"),
                ],
            },
        ];
        for case in cases {
            let run = Run::new(case.chain).probes(&case.probes);
            assert_eq!(run.changes, expect(&case.changes), "{}: {:#?}", case.name, run.reasons);
        }
    }

    /// A daemon probes every provider from the start: an agent's first route waits for the
    /// verdicts it depends on, and no agent moves to a provider that has been refuted before it
    /// ever answered, so a chain nobody serves costs a first route and a loss, not a hop per entry.
    #[test]
    fn first_routes_wait_for_verdicts_and_moves_skip_the_refuted() {
        type Case = (
            &'static str,
            &'static [&'static str],
            Vec<(i64, &'static str, u8)>,
            Vec<(i64, ChangeKind, &'static str)>,
        );
        let cases: [Case; 6] = [
            (
                "nobody serves the chain: the primary by its threshold's credit, then lost, no failover",
                &["ollama", "backup"],
                vec![
                    (10, "ollama", DOWN),
                    (20, "backup", DOWN),
                    (200, "ollama", DOWN),
                    (220, "backup", DOWN),
                ],
                vec![(10, Initial, "ollama"), (200, Lost, "-")],
            ),
            (
                "the primary answers: routed at its verdict, the fallback's does not matter",
                &["ollama", "backup"],
                vec![(10, "ollama", OK), (20, "backup", DOWN)],
                vec![(10, Initial, "ollama")],
            ),
            (
                "a primary refused once keeps its first route by the threshold's credit (it may be starting)",
                &["ollama", "backup"],
                vec![(10, "ollama", DOWN), (30, "backup", OK), (100, "ollama", OK)],
                vec![(10, Initial, "ollama")],
            ),
            (
                "a hung primary's verdict comes late: the fallback's answer does not route before it",
                &["ollama", "backup"],
                vec![(10, "backup", OK), (5_000, "ollama", HUNG)],
                vec![(5_000, Initial, "backup")],
            ),
            (
                "lost, then recovered on the first that answers",
                &["ollama", "backup"],
                vec![
                    (10, "ollama", DOWN),
                    (20, "backup", DOWN),
                    (200, "ollama", DOWN),
                    (300, "backup", OK),
                ],
                vec![(10, Initial, "ollama"), (200, Lost, "-"), (300, Recovered, "backup")],
            ),
            (
                "failover skips a fallback refused before it ever answered",
                &["ollama", "backup"],
                vec![
                    (0, "ollama", OK),
                    (10, "backup", DOWN),
                    (100, "ollama", DOWN),
                    (200, "ollama", DOWN),
                    (300, "backup", OK),
                ],
                vec![(0, Initial, "ollama"), (200, Lost, "-"), (300, Recovered, "backup")],
            ),
        ];
        for (name, chain_of, probes, changes) in cases {
            let run = Run::probing(chain_of).probes(&probes);
            assert_eq!(run.changes, expect(&changes), "{name}: {:#?}", run.reasons);
        }
        let run = Run::probing(&["ollama", "backup"]).probes(&[
            (10, "ollama", DOWN),
            (20, "backup", DOWN),
            (200, "ollama", DOWN),
        ]);
        assert_eq!(
            run.reasons.last().unwrap(),
            "nothing healthy: ollama unhealthy (down: GET /api/version: connection refused), \
             backup has not answered yet (down: GET /api/version: connection refused)"
        );
    }

    #[test]
    fn reasons_read_well() {
        let run = Run::new(&["ollama", "backup", "cloud"]).probes(&[
            (500, "ollama", OK),
            (600, "backup", OK),
            (1_000, "backup", DOWN),
            (2_000, "backup", DOWN),
            (5_000, "ollama", HUNG),
            (10_000, "ollama", HUNG),
            (20_000, "ollama", OK),
            (50_000, "ollama", OK),
        ]);
        assert_eq!(
            run.reasons,
            [
                "first route: ollama/llama3.2:3b",
                "ollama unhealthy (hung: generation timed out after 5s); backup unhealthy (down: GET /api/version: connection refused): failover to cloud/gpt-4o-mini",
                "ollama healthy for 30s: failback to ollama/llama3.2:3b",
            ]
        );

        let run = Run::new(&["ollama", "backup"]).probes(&[
            (500, "ollama", OK),
            (600, "backup", OK),
            (1_000, "backup", DOWN),
            (2_000, "backup", DOWN),
            (5_000, "ollama", DOWN),
            (10_000, "ollama", DOWN),
            (20_000, "backup", OK),
            (21_000, "ollama", OK),
            (22_000, "backup", HUNG),
            (23_000, "backup", HUNG),
        ]);
        assert_eq!(
            run.reasons,
            [
                "first route: ollama/llama3.2:3b",
                "nothing healthy: ollama unhealthy (down: GET /api/version: connection refused), backup unhealthy (down: GET /api/version: connection refused)",
                "ollama unhealthy (down: GET /api/version: connection refused); backup healthy again: recovered on backup/qwen2.5:0.5b",
                "backup unhealthy (hung: generation timed out after 5s): failover to ollama/llama3.2:3b (ollama healthy for 1s, nothing else is healthy)",
            ]
        );
    }

    #[test]
    fn a_fresh_daemon_routes_to_the_primary_before_any_probe() {
        let chain = chain(&["ollama", "backup"]);
        let decision = decide(&chain, &RouteState::Unrouted, &BTreeMap::new(), WINDOW, 0);
        assert_eq!(decision.route, Some(model("ollama")));
        assert_eq!(decision.change.unwrap().kind, Initial);
    }

    #[test]
    fn no_failback_to_an_unprobed_provider() {
        // The daemon restarted with the agent on its fallback: the primary must first prove itself.
        let chain = chain(&["ollama", "backup"]);
        let current = RouteState::Routed(model("backup"));
        let decision = decide(&chain, &current, &BTreeMap::new(), WINDOW, 1_000_000);
        assert_eq!(
            decision,
            Decision {
                route: Some(model("backup")),
                change: None,
                waiting: Vec::new(),
            }
        );
        assert_eq!(
            failback_due_ms(&chain, &current, &BTreeMap::new(), WINDOW, 1_000_000),
            None
        );
    }

    #[test]
    fn presumed_unhealthy_providers_are_skipped_until_a_probe_succeeds() {
        let chain = chain(&["ollama", "backup"]);
        let mut providers = BTreeMap::from([
            ("ollama".to_string(), ProviderState::presumed_unhealthy(2)),
            ("backup".to_string(), ProviderState::presumed_unhealthy(2)),
        ]);
        let decision = decide(&chain, &RouteState::Unrouted, &providers, WINDOW, 0);
        let change = decision.change.clone().unwrap();
        assert_eq!((decision.route.clone(), change.kind), (None, Lost));
        assert_eq!(
            change.reason,
            "nothing healthy: ollama unhealthy (not probed yet), backup unhealthy (not probed yet)"
        );
        // Lost stays lost without another record.
        assert_eq!(
            decide(&chain, &decision.state(), &providers, WINDOW, 1_000).change,
            None
        );

        let transition = providers.get_mut("backup").unwrap().observe(&verdict(OK), 2_000);
        assert_eq!(transition, Some(Transition::BecameHealthy));
        let decision = decide(&chain, &RouteState::Lost, &providers, WINDOW, 2_000);
        assert_eq!(
            (decision.route, decision.change.unwrap().kind),
            (Some(model("backup")), Recovered)
        );

        // An initial route that skips an unhealthy primary says why.
        let decision = decide(&chain, &RouteState::Unrouted, &providers, WINDOW, 2_000);
        assert_eq!(
            decision.change.unwrap().reason,
            "ollama unhealthy (not probed yet); first route: backup/qwen2.5:0.5b"
        );
    }

    #[test]
    fn a_route_no_longer_in_the_chain_is_replaced_at_once() {
        let chain = chain(&["ollama", "backup"]);
        let gone = ModelRef {
            provider: "ollama".into(),
            model: "llama3.1:8b".into(),
        };
        let decision = decide(&chain, &RouteState::Routed(gone.clone()), &BTreeMap::new(), WINDOW, 0);
        let change = decision.change.unwrap();
        assert_eq!(
            (change.kind, change.from, change.to),
            (Reconfigured, Some(gone), Some(model("ollama")))
        );
        assert_eq!(
            change.reason,
            "ollama/llama3.1:8b is no longer in the chain: rerouted to ollama/llama3.2:3b"
        );
    }

    #[test]
    fn provider_state_counts_consecutive_failures_and_the_stable_window() {
        let mut state = ProviderState::new(3);
        assert!(state.healthy() && state.last().is_none() && state.healthy_since_ms().is_none());
        assert_eq!(state.observe(&verdict(OK), 100), None);
        assert_eq!(state.healthy_since_ms(), Some(100));
        assert_eq!(state.observe(&verdict(OK), 200), None);
        assert_eq!(state.healthy_since_ms(), Some(100));
        assert_eq!(state.observe(&verdict(DOWN), 300), None);
        assert_eq!(state.observe(&verdict(HUNG), 400), None);
        assert!(state.healthy());
        assert_eq!(state.healthy_since_ms(), None, "a failure restarts the window");
        assert_eq!(
            state.observe(&verdict(DOWN), 500),
            Some(Transition::BecameUnhealthy {
                consecutive_failures: 3
            })
        );
        assert!(!state.healthy());
        assert_eq!(state.observe(&verdict(DOWN), 600), None, "reported once");
        assert_eq!(state.consecutive_failures(), 4);
        assert_eq!(state.observe(&verdict(OK), 700), Some(Transition::BecameHealthy));
        assert_eq!((state.healthy_since_ms(), state.consecutive_failures()), (Some(700), 0));
        assert_eq!(state.last(), Some(&verdict(OK)));
        // A threshold of 0 means the first failure.
        let mut state = ProviderState::new(0);
        assert_eq!(
            state.observe(&verdict(DOWN), 0),
            Some(Transition::BecameUnhealthy {
                consecutive_failures: 1
            })
        );
    }

    #[test]
    fn failback_is_due_when_the_earliest_better_entry_completes_its_window() {
        let chain = chain(&["ollama", "backup", "cloud"]);
        let mut providers: BTreeMap<String, ProviderState> = ["ollama", "backup", "cloud"]
            .iter()
            .map(|p| (p.to_string(), ProviderState::new(1)))
            .collect();
        let on_cloud = RouteState::Routed(model("cloud"));
        // Both answered once, then failed: their failbacks wait the window.
        for provider in ["ollama", "backup"] {
            let state = providers.get_mut(provider).unwrap();
            state.observe(&verdict(OK), 0);
            state.observe(&verdict(DOWN), 0);
        }
        assert_eq!(failback_due_ms(&chain, &on_cloud, &providers, WINDOW, 1_000), None);
        providers.get_mut("backup").unwrap().observe(&verdict(OK), 10_000);
        providers.get_mut("ollama").unwrap().observe(&verdict(OK), 5_000);
        assert_eq!(
            failback_due_ms(&chain, &on_cloud, &providers, WINDOW, 12_000),
            Some(35_000)
        );
        assert_eq!(decide(&chain, &on_cloud, &providers, WINDOW, 34_999).change, None);
        let decision = decide(&chain, &on_cloud, &providers, WINDOW, 35_000);
        assert_eq!(
            (decision.route.clone(), decision.change.as_ref().unwrap().kind),
            (Some(model("ollama")), Failback)
        );
        // On the primary, or without a route, nothing is due.
        assert_eq!(
            failback_due_ms(&chain, &decision.state(), &providers, WINDOW, 35_000),
            None
        );
        assert_eq!(
            failback_due_ms(&chain, &RouteState::Lost, &providers, WINDOW, 35_000),
            None
        );
    }

    #[test]
    fn changes_serialize_for_the_record() {
        let change = Change {
            kind: Failover,
            from: Some(model("ollama")),
            to: Some(model("backup")),
            reason: "ollama unhealthy (down: x): failover to backup/qwen2.5:0.5b".into(),
        };
        assert_eq!(
            serde_json::to_value(&change).unwrap(),
            serde_json::json!({
                "kind": "failover",
                "from": {"provider": "ollama", "model": "llama3.2:3b"},
                "to": {"provider": "backup", "model": "qwen2.5:0.5b"},
                "reason": "ollama unhealthy (down: x): failover to backup/qwen2.5:0.5b",
            })
        );
    }

    #[test]
    fn a_changed_failure_threshold_applies_at_the_next_probe() {
        let mut state = ProviderState::new(5);
        state.observe(&verdict(OK), 0);
        state.set_failure_threshold(1);
        assert_eq!(
            state.observe(&verdict(DOWN), 100),
            Some(Transition::BecameUnhealthy {
                consecutive_failures: 1
            })
        );
    }
}
