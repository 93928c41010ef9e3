//! What reconciling does about models and routes, as `reconcile --dry-run` shows it: pulls of
//! models a provider lacks, and each agent's route decision (a failover or failback due now, a
//! failback waiting for its stable window, a primary failing probes below its threshold, or an
//! agent's first route). Deciding is pure ([`model_actions`], [`route_actions`]); observing the
//! providers ([`observe_models`], [`probe_once`]) is the I/O, done by the caller's choice.

use std::collections::BTreeMap;

use serde::Serialize;

use super::health::{self, ProbeTarget};
use super::route::{self, ChangeKind, ProviderState, RouteState};
use crate::source::DesiredState;
use crate::spec::agent::ModelRef;
use crate::spec::provider::ProviderApi;
use crate::spec::{Kind, Spec};

/// One thing about models or routes a reconcile does, or waits to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ModelAction {
    pub kind: Kind,
    pub name: String,
    pub action: ModelActionKind,
    /// The model pulled, or the route: "ollama/llama3.2:1b -> backup/smollm2".
    pub target: String,
    pub reason: String,
    /// Counts as a pending change (dry-run exits 2); false for what only waits or informs.
    pub pending: bool,
    /// For an applied pull: whether it worked.
    #[serde(skip)]
    pub result: Option<Result<(), String>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelActionKind {
    /// A model the provider lacks, to pull (Ollama).
    Pull,
    /// A model an OpenAI-style provider lacks: it cannot pull, an operator must load it.
    Missing,
    /// The provider's models could not be listed (down, or not started yet).
    Unchecked,
    /// An agent's first route.
    Route,
    Failover,
    Failback,
    /// A failback waiting for the primary's stable window.
    FailbackLater,
    /// The current route's provider failed probes, fewer than its threshold.
    FailoverLater,
    /// Nothing in the agent's chain is healthy.
    Unroutable,
}

impl ModelActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelActionKind::Pull => "pull",
            ModelActionKind::Missing => "missing",
            ModelActionKind::Unchecked => "unchecked",
            ModelActionKind::Route => "route",
            ModelActionKind::Failover => "failover",
            ModelActionKind::Failback => "failback",
            ModelActionKind::FailbackLater => "failback-later",
            ModelActionKind::FailoverLater => "failover-later",
            ModelActionKind::Unroutable => "unroutable",
        }
    }
}

/// What listing a provider's models found: the wanted ones it lacks, or why it could not tell.
pub type ModelsSeen = BTreeMap<String, Result<Vec<String>, String>>;

/// Lists the models of every provider that names some, all at once (each bounded by the
/// provider's probe timeout).
pub async fn observe_models(state: &DesiredState) -> ModelsSeen {
    let listings = providers(state)
        .filter(|(_, spec)| !spec.models.is_empty())
        .map(|(name, spec)| {
            let target = ProbeTarget::from_spec(name, spec);
            let wanted = spec.models.clone();
            async move {
                let missing = super::models::missing_models(&target, &wanted)
                    .await
                    .map_err(|e| e.to_string());
                (target.provider, missing)
            }
        });
    join_all(listings).await.into_iter().collect()
}

/// Probes every provider once, all at once: the health a command without a daemon has. One
/// failed probe counts (there is no history to wait on).
pub async fn probe_once(state: &DesiredState, now_ms: i64) -> BTreeMap<String, ProviderState> {
    let probes = providers(state).map(|(name, spec)| {
        let target = ProbeTarget::from_spec(name, spec);
        async move {
            let verdict = health::probe(&target).await;
            (target.provider, verdict)
        }
    });
    join_all(probes)
        .await
        .into_iter()
        .map(|(name, verdict)| {
            let mut state = ProviderState::new(1);
            state.observe(&verdict, now_ms);
            (name, state)
        })
        .collect()
}

/// Pull (or missing / unchecked) actions for what `seen` found.
pub fn model_actions(state: &DesiredState, seen: &ModelsSeen) -> Vec<ModelAction> {
    let mut actions = Vec::new();
    for (name, spec) in providers(state) {
        let Some(found) = seen.get(name) else { continue };
        let action = |action, target: String, reason: String, pending| ModelAction {
            kind: Kind::ModelProvider,
            name: name.to_string(),
            action,
            target,
            reason,
            pending,
            result: None,
        };
        match found {
            Err(why) => actions.push(action(
                ModelActionKind::Unchecked,
                spec.models.join(", "),
                format!("models not checked: {why}"),
                false,
            )),
            Ok(missing) => {
                for model in missing {
                    actions.push(match spec.api {
                        ProviderApi::Ollama => action(
                            ModelActionKind::Pull,
                            model.clone(),
                            format!("{model} is not on {name}"),
                            true,
                        ),
                        ProviderApi::Openai => action(
                            ModelActionKind::Missing,
                            model.clone(),
                            format!("{name} does not serve {model} and cannot pull it: load it there"),
                            false,
                        ),
                    });
                }
            }
        }
    }
    actions
}

/// Each agent's route decision against `providers`, from `routes` (the daemon's current
/// routes; an agent absent there gets its first route). `routing_live` says whether a daemon
/// routes now: without one, first routes are what a daemon would pick, not pending changes.
pub fn route_actions(
    state: &DesiredState,
    providers: &BTreeMap<String, ProviderState>,
    routes: &BTreeMap<String, RouteState>,
    routing_live: bool,
    now_ms: i64,
) -> Vec<ModelAction> {
    let mut actions = Vec::new();
    for resource in &state.resources {
        let Spec::Agent(spec) = &resource.spec else { continue };
        let Some(model) = &spec.model else { continue };
        let name = &resource.metadata.name;
        let chain: Vec<ModelRef> = model.chain().cloned().collect();
        let failback_ms = model.failback_after().as_std().as_millis() as i64;
        let current = routes.get(name).cloned().unwrap_or_default();
        let decision = route::decide(&chain, &current, providers, failback_ms, now_ms);
        let action = |action, target: String, reason: String, pending| ModelAction {
            kind: Kind::Agent,
            name: name.clone(),
            action,
            target,
            reason,
            pending,
            result: None,
        };
        let describe =
            |m: Option<&ModelRef>| m.map_or_else(|| "nothing".to_string(), |m| format!("{}/{}", m.provider, m.model));
        if let Some(change) = &decision.change {
            let from_to = format!("{} -> {}", describe(change.from.as_ref()), describe(change.to.as_ref()));
            let (kind, target) = match change.kind {
                ChangeKind::Initial => (ModelActionKind::Route, describe(change.to.as_ref())),
                ChangeKind::Failback => (ModelActionKind::Failback, from_to),
                ChangeKind::Lost => (ModelActionKind::Unroutable, describe(change.from.as_ref())),
                ChangeKind::Failover | ChangeKind::Recovered | ChangeKind::Reconfigured => {
                    (ModelActionKind::Failover, from_to)
                }
            };
            let kind = match (kind, &decision.route) {
                (ModelActionKind::Route, None) => ModelActionKind::Unroutable,
                (kind, _) => kind,
            };
            actions.push(action(kind, target, change.reason.clone(), routing_live));
            continue;
        }
        let Some(route_now) = current.route() else {
            if current == RouteState::Lost {
                actions.push(action(
                    ModelActionKind::Unroutable,
                    "nothing".into(),
                    "no model in the chain is healthy".into(),
                    false,
                ));
            }
            continue;
        };
        if let Some(due) = route::failback_due_ms(&chain, &current, providers, failback_ms, now_ms) {
            let to = chain.iter().take_while(|m| *m != route_now).find(|m| {
                providers
                    .get(&m.provider)
                    .is_some_and(|p| p.healthy_since_ms().is_some_and(|s| s + failback_ms == due))
            });
            actions.push(action(
                ModelActionKind::FailbackLater,
                format!("{} -> {}", describe(Some(route_now)), describe(to)),
                format!(
                    "in {}, once {} has been healthy for {}",
                    human_ms(due - now_ms),
                    to.map_or("the primary", |m| m.provider.as_str()),
                    human_ms(failback_ms)
                ),
                false,
            ));
        }
        if let Some(provider) = providers.get(&route_now.provider) {
            let failures = provider.consecutive_failures();
            if provider.routable() && failures > 0 {
                actions.push(action(
                    ModelActionKind::FailoverLater,
                    describe(Some(route_now)),
                    format!(
                        "{} failed {failures} of {} probes in a row{}: a failover at the threshold",
                        route_now.provider,
                        provider.failure_threshold(),
                        provider.last().map(|v| format!(" ({v})")).unwrap_or_default()
                    ),
                    false,
                ));
            }
        }
    }
    actions
}

fn providers(state: &DesiredState) -> impl Iterator<Item = (&str, &crate::spec::provider::ModelProviderSpec)> {
    state.resources.iter().filter_map(|r| match &r.spec {
        Spec::ModelProvider(spec) => Some((r.metadata.name.as_str(), spec)),
        _ => None,
    })
}

/// Runs the futures as tasks at once; their outputs in the order they finish.
async fn join_all<T: Send + 'static>(
    futures: impl Iterator<Item = impl std::future::Future<Output = T> + Send + 'static>,
) -> Vec<T> {
    let mut set = tokio::task::JoinSet::new();
    for future in futures {
        set.spawn(future);
    }
    let mut outputs = Vec::new();
    while let Some(joined) = set.join_next().await {
        if let Ok(output) = joined {
            outputs.push(output);
        }
    }
    outputs
}

/// "12s", "1m 5s", "250ms".
fn human_ms(ms: i64) -> String {
    let ms = ms.max(0) as u64;
    if ms < 1000 {
        return format!("{ms}ms");
    }
    humantime::format_duration(std::time::Duration::from_secs(ms.div_ceil(1000))).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::health::Verdict;

    const STATE: &str = "apiVersion: mirror.os/v1\nkind: ModelProvider\nmetadata: {name: local}\nspec: {api: ollama, url: \"http://127.0.0.1:1\", models: [a, b]}\n---\napiVersion: mirror.os/v1\nkind: ModelProvider\nmetadata: {name: spare}\nspec: {api: openai, url: \"http://127.0.0.1:2/v1\", models: [c]}\n---\napiVersion: mirror.os/v1\nkind: Policy\nmetadata: {name: p}\nspec: {}\n---\napiVersion: mirror.os/v1\nkind: Agent\nmetadata: {name: scribe}\nspec:\n  command: [sleep, \"1\"]\n  policy: p\n  model:\n    primary: {provider: local, model: a}\n    fallbacks: [{provider: spare, model: c}]\n    failbackAfter: 30s\n";

    fn state() -> DesiredState {
        crate::source::load_texts([("all.yaml", STATE.as_bytes())]).expect("valid")
    }

    fn healthy() -> Verdict {
        Verdict::Healthy { detail: "ok".into() }
    }

    fn down() -> Verdict {
        Verdict::Down {
            why: "connection refused".into(),
        }
    }

    fn provider(verdicts: &[(Verdict, i64)]) -> ProviderState {
        let mut state = ProviderState::new(2);
        for (verdict, at) in verdicts {
            state.observe(verdict, *at);
        }
        state
    }

    fn routed(provider: &str, model: &str) -> RouteState {
        RouteState::Routed(ModelRef {
            provider: provider.into(),
            model: model.into(),
        })
    }

    fn actions_of(actions: &[ModelAction]) -> Vec<(ModelActionKind, &str, bool)> {
        actions
            .iter()
            .map(|a| (a.action, a.target.as_str(), a.pending))
            .collect()
    }

    #[test]
    fn missing_models_are_pulls_on_ollama_and_reported_elsewhere() {
        let seen: ModelsSeen = [
            ("local".to_string(), Ok(vec!["b".to_string()])),
            ("spare".to_string(), Ok(vec!["c".to_string()])),
        ]
        .into();
        let actions = model_actions(&state(), &seen);
        assert_eq!(
            actions_of(&actions),
            vec![
                (ModelActionKind::Pull, "b", true),
                (ModelActionKind::Missing, "c", false)
            ]
        );
        let seen: ModelsSeen = [("local".to_string(), Err("connection refused".to_string()))].into();
        let actions = model_actions(&state(), &seen);
        assert_eq!(actions_of(&actions), vec![(ModelActionKind::Unchecked, "a, b", false)]);
        assert!(actions[0].reason.contains("connection refused"), "{:?}", actions[0]);
    }

    #[test]
    fn a_down_primary_is_a_pending_failover_and_a_new_agent_a_first_route() {
        let providers: BTreeMap<String, ProviderState> = [
            ("local".to_string(), provider(&[(down(), 1_000), (down(), 2_000)])),
            ("spare".to_string(), provider(&[(healthy(), 1_000)])),
        ]
        .into();
        let routes = [("scribe".to_string(), routed("local", "a"))].into();
        let actions = route_actions(&state(), &providers, &routes, true, 3_000);
        assert_eq!(
            actions_of(&actions),
            vec![(ModelActionKind::Failover, "local/a -> spare/c", true)]
        );
        // Not routed yet: the first route (pending only where a daemon routes).
        let actions = route_actions(&state(), &providers, &BTreeMap::new(), false, 3_000);
        assert_eq!(actions_of(&actions), vec![(ModelActionKind::Route, "spare/c", false)]);
    }

    #[test]
    fn a_recovering_primary_is_a_failback_later_with_the_time_left() {
        let providers: BTreeMap<String, ProviderState> = [
            (
                "local".to_string(),
                provider(&[(healthy(), 500), (down(), 1_000), (down(), 2_000), (healthy(), 10_000)]),
            ),
            ("spare".to_string(), provider(&[(healthy(), 1_000)])),
        ]
        .into();
        let routes = [("scribe".to_string(), routed("spare", "c"))].into();
        let actions = route_actions(&state(), &providers, &routes, true, 22_000);
        assert_eq!(
            actions_of(&actions),
            vec![(ModelActionKind::FailbackLater, "spare/c -> local/a", false)]
        );
        assert!(actions[0].reason.starts_with("in 18s"), "{:?}", actions[0]);
        // Once the window is over, the failback is due now.
        let actions = route_actions(&state(), &providers, &routes, true, 40_000);
        assert_eq!(
            actions_of(&actions),
            vec![(ModelActionKind::Failback, "spare/c -> local/a", true)]
        );
        // A primary that failed only before its first answer was starting: no window to wait.
        let providers: BTreeMap<String, ProviderState> = [
            (
                "local".to_string(),
                provider(&[(down(), 1_000), (down(), 2_000), (healthy(), 10_000)]),
            ),
            ("spare".to_string(), provider(&[(healthy(), 1_000)])),
        ]
        .into();
        let actions = route_actions(&state(), &providers, &routes, true, 10_001);
        assert_eq!(
            actions_of(&actions),
            vec![(ModelActionKind::Failback, "spare/c -> local/a", true)]
        );
        assert!(
            actions[0].reason.starts_with("local answering since it started"),
            "{:?}",
            actions[0]
        );
    }

    #[test]
    fn a_primary_failing_below_its_threshold_is_a_failover_later() {
        let providers: BTreeMap<String, ProviderState> =
            [("local".to_string(), provider(&[(healthy(), 1_000), (down(), 2_000)]))].into();
        let routes = [("scribe".to_string(), routed("local", "a"))].into();
        let actions = route_actions(&state(), &providers, &routes, true, 3_000);
        assert_eq!(
            actions_of(&actions),
            vec![(ModelActionKind::FailoverLater, "local/a", false)]
        );
        assert!(actions[0].reason.contains("1 of 2"), "{:?}", actions[0]);
    }
}
