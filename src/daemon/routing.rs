//! The daemon's side of model routing: one probe task per ModelProvider of the state in force,
//! provider health from their verdicts, and each agent's route, recomputed whenever a provider
//! changes state or a failback comes due. Deciding is pure (`router::route`); this module keeps
//! the state and says what changed.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::report::{Drift, DriftItem, Severity};
use crate::router::health::{self, ProbeTarget, Verdict};
use crate::router::route::{self, ChangeKind, ProviderState, RouteState};
use crate::source::DesiredState;
use crate::spec::agent::ModelRef;
use crate::spec::{Kind, Spec};

/// When something answered on a provider's port (not down) and the provider names a running
/// Service, whether the listener is that Service's: a `Hijacked` verdict naming the holder when
/// it is not.
async fn stranger_on_port(verdict: &Verdict, served_by: Option<&ServedBy>, owners: &Owners) -> Option<Verdict> {
    use crate::supervisor::listener::{self, Ownership};
    if matches!(verdict, Verdict::Down { .. }) {
        return None;
    }
    let ServedBy {
        service,
        ip,
        port,
        state_dir,
    } = served_by?.clone();
    // Before the first pass nothing is known; after it, a Service that does not run owns nothing.
    let expected = owners
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()?
        .get(&service)
        .cloned();
    let running = expected
        .as_ref()
        .map_or("not running".to_string(), |e| format!("pid {}", e.pid));
    let service_name = service.clone();
    let ownership = tokio::task::spawn_blocking(move || {
        let members = crate::supervisor::cgroup::for_service(&state_dir, &service_name).members();
        listener::check(ip, port, expected.as_ref(), &members)
    })
    .await
    .ok()?;
    let Ownership::Stranger(holder) = ownership else {
        return None;
    };
    let who = holder.map_or("another process".to_string(), |h| {
        format!("pid {} ({})", h.pid, h.command)
    });
    Some(Verdict::Hijacked {
        why: format!("port {port} is held by {who}, not by Service/{service} ({running})"),
    })
}

/// Which Service should answer on a provider's address: the one it names, when that Service is
/// ours to run. A suspended one is not, so whoever serves the port then (Ollama started by hand,
/// say) is not judged.
fn served_by_of(
    state: &DesiredState,
    spec: &crate::spec::provider::ModelProviderSpec,
    state_dir: &std::path::Path,
) -> Option<ServedBy> {
    let service = spec.service.as_ref()?;
    let running_it = matches!(
        state.get(Kind::Service, service).map(|r| &r.spec),
        Some(Spec::Service(s)) if !s.suspend
    );
    if !running_it {
        return None;
    }
    let url = url::Url::parse(&spec.url).ok()?;
    let ip = match url.host() {
        Some(url::Host::Ipv4(ip)) => Some(std::net::IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Some(std::net::IpAddr::V6(ip)),
        _ => None,
    };
    Some(ServedBy {
        service: service.clone(),
        ip,
        port: url.port_or_known_default()?,
        state_dir: state_dir.to_path_buf(),
    })
}

/// Which Service should answer on a provider's address.
#[derive(Clone, Debug)]
struct ServedBy {
    service: String,
    ip: Option<std::net::IpAddr>,
    port: u16,
    state_dir: std::path::PathBuf,
}

/// A provider's probe answered.
pub struct Probed {
    pub provider: String,
    pub verdict: Verdict,
}

/// What a route change means for the store, the metrics and the log.
#[derive(Clone, Debug)]
pub struct RouteSwitch {
    pub agent: String,
    pub kind: ChangeKind,
    pub to: Option<ModelRef>,
    pub reason: String,
}

/// One provider as `status` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ProviderHealth {
    pub name: String,
    /// Routable: agents may be sent to it (an unprobed provider, or one whose failures have not
    /// reached its threshold yet, still is).
    pub healthy: bool,
    /// What a person reads: `Unknown` (not probed yet), `Healthy` (its last probe answered),
    /// `Failing` (its last probe failed, still routed until its failure threshold), `Down`,
    /// `Hung` or `Hijacked`. Never `Healthy` after a probe that failed.
    pub health: &'static str,
    pub verdict: Option<Verdict>,
    pub healthy_since_ms: Option<i64>,
}

/// One agent's route as `status` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct AgentRoute {
    pub agent: String,
    pub provider: Option<String>,
    pub model: Option<String>,
    /// True when the route is not the agent's primary.
    pub degraded: bool,
    /// The routed provider has been probed. False while the route rests only on the presumption
    /// that an unprobed provider is healthy (a daemon's first route, decided before any probe).
    pub probed: bool,
    pub reason: String,
}

struct Probing {
    spec_json: String,
    task: AbortHandle,
}

/// The running Services' processes, by name: whose listener a provider's answer must come from.
/// None until the first pass says what runs.
pub type Owners =
    std::sync::Arc<std::sync::RwLock<Option<BTreeMap<String, crate::supervisor::process::ProcessIdentity>>>>;

#[derive(Default)]
pub struct Routing {
    owners: Owners,
    probing: BTreeMap<String, Probing>,
    providers: BTreeMap<String, ProviderState>,
    routes: BTreeMap<String, (RouteState, String)>,
}

impl Routing {
    /// The Services running now (after a pass): a provider naming one is checked against it.
    pub fn set_owners(&self, owners: BTreeMap<String, crate::supervisor::process::ProcessIdentity>) {
        *self.owners.write().unwrap_or_else(|e| e.into_inner()) = Some(owners);
    }

    /// Starts, restarts (spec changed) or stops probe tasks to match the state's providers.
    pub fn sync(&mut self, state: &DesiredState, state_dir: &std::path::Path, probed: &mpsc::UnboundedSender<Probed>) {
        let mut wanted: BTreeMap<String, (ProbeTarget, Duration, u32, String)> = BTreeMap::new();
        let mut served_by: BTreeMap<String, ServedBy> = BTreeMap::new();
        for resource in &state.resources {
            if let Spec::ModelProvider(spec) = &resource.spec {
                let name = resource.metadata.name.clone();
                let health = spec.health();
                let mut json = serde_json::to_string(spec).unwrap_or_default();
                if let Some(served) = served_by_of(state, spec, state_dir) {
                    // Whether answers are judged is part of what the probe task was started with.
                    json.push_str("|judged");
                    served_by.insert(name.clone(), served);
                }
                wanted.insert(
                    name.clone(),
                    (
                        ProbeTarget::from_spec(&name, spec),
                        health.interval().as_std(),
                        health.failure_threshold().max(1),
                        json,
                    ),
                );
            }
        }
        self.probing.retain(|name, probing| {
            let keep = wanted
                .get(name)
                .is_some_and(|(_, _, _, json)| *json == probing.spec_json);
            if !keep {
                probing.task.abort();
            }
            keep
        });
        self.providers.retain(|name, _| wanted.contains_key(name));
        for (name, (target, interval, threshold, json)) in wanted {
            if self.probing.contains_key(&name) {
                continue;
            }
            self.providers
                .entry(name.clone())
                .or_insert_with(|| ProviderState::new(threshold))
                .set_failure_threshold(threshold);
            let probed = probed.clone();
            let (owners, served_by) = (self.owners.clone(), served_by.get(&name).cloned());
            let task = tokio::spawn(async move {
                loop {
                    let mut verdict = health::probe(&target).await;
                    if let Some(hijacked) = stranger_on_port(&verdict, served_by.as_ref(), &owners).await {
                        verdict = hijacked;
                    }
                    if probed
                        .send(Probed {
                            provider: target.provider.clone(),
                            verdict,
                        })
                        .is_err()
                    {
                        return;
                    }
                    tokio::time::sleep(interval).await;
                }
            });
            self.probing.insert(
                name,
                Probing {
                    spec_json: json,
                    task: task.abort_handle(),
                },
            );
        }
    }

    /// The word `status` shows for a provider's health ("Unknown" when it is not probed).
    pub fn health(&self, provider: &str) -> &'static str {
        self.providers.get(provider).map_or("Unknown", health_word)
    }

    /// Feeds a verdict; returns whether the provider changed in a way routes depend on (healthy,
    /// routable, its first verdict, refuted before answering or not).
    pub fn observe(&mut self, probed: &Probed, now_ms: i64) -> bool {
        let standing = |s: &ProviderState| (s.routable(), s.awaiting_first_probe(), s.refuted_before_answering());
        match self.providers.get_mut(&probed.provider) {
            Some(state) => {
                let before = standing(state);
                state.observe(&probed.verdict, now_ms).is_some() || standing(state) != before
            }
            None => false,
        }
    }

    /// Why Service `service` is not healthy although its own probe may answer: a provider it
    /// serves is hijacked (another process holds its port, so that answer came from it).
    pub fn hijack_of(&self, service: &str, state: &DesiredState) -> Option<String> {
        state.resources.iter().find_map(|r| match &r.spec {
            Spec::ModelProvider(spec) if spec.service.as_deref() == Some(service) => {
                match self.providers.get(&r.metadata.name)?.last()? {
                    Verdict::Hijacked { why } => Some(format!("provider {} hijacked: {why}", r.metadata.name)),
                    _ => None,
                }
            }
            _ => None,
        })
    }

    /// Healthy by its failure threshold (a restart of its Service is due when not).
    pub fn is_healthy(&self, provider: &str) -> bool {
        self.providers.get(provider).is_none_or(ProviderState::healthy)
    }

    /// Agents may be routed to it now.
    pub fn is_routable(&self, provider: &str) -> bool {
        self.providers.get(provider).is_none_or(ProviderState::routable)
    }

    /// Recomputes every agent's route; returns the switches and when to look again (a failback
    /// coming due).
    pub fn decide(&mut self, state: &DesiredState, now_ms: i64) -> (Vec<RouteSwitch>, Option<i64>) {
        let mut switches = Vec::new();
        let mut next_check: Option<i64> = None;
        let mut agents = Vec::new();
        for resource in &state.resources {
            let Spec::Agent(spec) = &resource.spec else { continue };
            let Some(model) = &spec.model else { continue };
            let name = resource.metadata.name.clone();
            agents.push(name.clone());
            let chain: Vec<ModelRef> = model.chain().cloned().collect();
            let failback = model.failback_after().as_std().as_millis() as i64;
            let current = self.routes.get(&name).map(|(r, _)| r.clone()).unwrap_or_default();
            let decision = route::decide(&chain, &current, &self.providers, failback, now_ms);
            if let Some(due) = route::failback_due_ms(&chain, &decision.state(), &self.providers, failback, now_ms) {
                next_check = Some(next_check.map_or(due, |t| t.min(due)));
            }
            let reason = match &decision.change {
                Some(change) => change.reason.clone(),
                None if !decision.waiting.is_empty() => {
                    format!("waiting for the first probe of {}", decision.waiting.join(", "))
                }
                None => self.routes.get(&name).map(|(_, r)| r.clone()).unwrap_or_default(),
            };
            let new_state = decision.state();
            if let Some(change) = decision.change {
                switches.push(RouteSwitch {
                    agent: name.clone(),
                    kind: change.kind,
                    to: decision.route.clone(),
                    reason: change.reason,
                });
            }
            self.routes.insert(name, (new_state, reason));
        }
        self.routes.retain(|agent, _| agents.contains(agent));
        (switches, next_check)
    }

    pub fn providers(&self) -> Vec<ProviderHealth> {
        self.providers
            .iter()
            .map(|(name, state)| ProviderHealth {
                name: name.clone(),
                healthy: state.routable(),
                health: health_word(state),
                verdict: state.last().cloned(),
                healthy_since_ms: state.healthy_since_ms(),
            })
            .collect()
    }

    pub fn routes(&self, state: Option<&DesiredState>) -> Vec<AgentRoute> {
        self.routes
            .iter()
            .map(|(agent, (route_state, reason))| {
                let route = route_state.route();
                let primary = state
                    .and_then(|s| s.get(Kind::Agent, agent))
                    .and_then(|r| match &r.spec {
                        Spec::Agent(spec) => spec.model.as_ref().map(|m| m.primary.clone()),
                        _ => None,
                    });
                AgentRoute {
                    agent: agent.clone(),
                    provider: route.map(|r| r.provider.clone()),
                    model: route.map(|r| r.model.clone()),
                    // Waiting for the first probes is not degraded: nothing has failed yet.
                    degraded: match route {
                        None => *route_state != RouteState::Unrouted,
                        Some(route) => primary.as_ref().is_some_and(|p| p != route),
                    },
                    probed: route
                        .and_then(|r| self.providers.get(&r.provider))
                        .is_some_and(|p| p.last().is_some()),
                    reason: reason.clone(),
                }
            })
            .collect()
    }

    /// `degraded` drift items for agents off their primary (or without any healthy route), and
    /// for providers whose port another process holds.
    pub fn drift(&self, state: Option<&DesiredState>) -> Vec<DriftItem> {
        let hijacked = self.providers.iter().filter_map(|(name, p)| match p.last() {
            Some(Verdict::Hijacked { why }) => Some(DriftItem {
                kind: Kind::ModelProvider.to_string(),
                name: name.clone(),
                drift: Drift::Degraded,
                corrective: true,
                severity: Severity::Critical,
                detail: format!("hijacked: {why}"),
            }),
            _ => None,
        });
        let hijacked: Vec<DriftItem> = hijacked.collect();
        self.routes(state)
            .into_iter()
            .filter(|r| r.degraded)
            .map(|r| DriftItem {
                kind: Kind::Agent.to_string(),
                name: r.agent.clone(),
                drift: Drift::Degraded,
                corrective: true,
                severity: if r.provider.is_some() {
                    Severity::Warning
                } else {
                    Severity::Critical
                },
                detail: match (&r.provider, &r.model) {
                    (Some(p), Some(m)) => format!("routed to fallback {p}/{m}: {}", r.reason),
                    _ => format!("no healthy model: {}", r.reason),
                },
            })
            .chain(hijacked)
            .collect()
    }

    /// The bus's candidates per agent: its route first, then the other healthy entries of its
    /// chain in order (for a retry before the first byte).
    pub fn bus_routes(&self, state: &DesiredState) -> Vec<(String, Vec<crate::router::bus::Upstream>)> {
        let upstream = |r: &ModelRef| -> Option<crate::router::bus::Upstream> {
            let Spec::ModelProvider(spec) = &state.get(Kind::ModelProvider, &r.provider)?.spec else {
                return None;
            };
            Some(crate::router::bus::Upstream {
                provider: r.provider.clone(),
                api: spec.api,
                url: spec.url.clone(),
                model: r.model.clone(),
                api_key: spec
                    .api_key_env
                    .as_ref()
                    .and_then(|name| std::env::var(name).ok())
                    .filter(|k| !k.is_empty()),
                local: spec.is_local(),
            })
        };
        let mut out = Vec::new();
        for resource in &state.resources {
            let Spec::Agent(spec) = &resource.spec else { continue };
            let Some(model) = &spec.model else { continue };
            let name = &resource.metadata.name;
            let current = self.routes.get(name).and_then(|(r, _)| r.route().cloned());
            let mut candidates: Vec<crate::router::bus::Upstream> = current.iter().filter_map(upstream).collect();
            for entry in model.chain() {
                if Some(entry) != current.as_ref() && self.is_routable(&entry.provider) {
                    candidates.extend(upstream(entry));
                }
            }
            out.push((name.clone(), candidates));
        }
        out
    }

    /// Provider health and routes as they stand, for a dry-run's route decisions.
    pub fn snapshot(&self) -> crate::reconcile::models::RoutingSnapshot {
        crate::reconcile::models::RoutingSnapshot {
            providers: self.providers.clone(),
            routes: self
                .routes
                .iter()
                .map(|(agent, (state, _))| (agent.clone(), state.clone()))
                .collect(),
        }
    }

    pub fn stop(&mut self) {
        for (_, probing) in std::mem::take(&mut self.probing) {
            probing.task.abort();
        }
    }
}

/// Unknown (no verdict yet), Healthy (the last probe answered), Failing (it failed, below the
/// threshold), Down, Hung or Hijacked (agents are routed away).
fn health_word(state: &ProviderState) -> &'static str {
    match (state.routable(), state.last()) {
        (_, None) => "Unknown",
        (_, Some(verdict)) if verdict.is_healthy() => "Healthy",
        (true, Some(_)) => "Failing",
        (false, Some(Verdict::Hung { .. })) => "Hung",
        (false, Some(Verdict::Hijacked { .. })) => "Hijacked",
        (false, Some(_)) => "Down",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATE: &str = "apiVersion: mirror.os/v1\nkind: ModelProvider\nmetadata: {name: local}\nspec: {api: ollama, url: \"http://127.0.0.1:1\", health: {interval: 1h}}\n---\napiVersion: mirror.os/v1\nkind: ModelProvider\nmetadata: {name: spare}\nspec: {api: ollama, url: \"http://127.0.0.1:2\", health: {interval: 1h}}\n---\napiVersion: mirror.os/v1\nkind: Policy\nmetadata: {name: p}\nspec: {}\n---\napiVersion: mirror.os/v1\nkind: Agent\nmetadata: {name: scribe}\nspec:\n  command: [sleep, \"1\"]\n  policy: p\n  model:\n    primary: {provider: local, model: a}\n    fallbacks: [{provider: spare, model: c}]\n";

    fn observe(routing: &mut Routing, provider: &str, verdict: Verdict, now_ms: i64) {
        routing.observe(
            &Probed {
                provider: provider.into(),
                verdict,
            },
            now_ms,
        );
    }

    #[tokio::test]
    async fn a_route_says_whether_its_provider_has_been_probed() {
        let state = crate::source::load_texts([("all.yaml", STATE.as_bytes())]).expect("valid");
        let (probed_tx, _probed_rx) = mpsc::unbounded_channel();
        let mut routing = Routing::default();
        routing.sync(&state, std::path::Path::new("/nonexistent"), &probed_tx);
        // Before any probe: no route yet, waiting for the primary's first verdict, not degraded.
        routing.decide(&state, 0);
        let route = &routing.routes(Some(&state))[0];
        assert_eq!(
            (route.provider.as_deref(), route.degraded, route.reason.as_str()),
            (None, false, "waiting for the first probe of local")
        );
        assert!(routing.drift(Some(&state)).is_empty());
        // Its first answer: routed there, probed.
        observe(&mut routing, "local", Verdict::Healthy { detail: "ok".into() }, 100);
        routing.decide(&state, 100);
        let route = &routing.routes(Some(&state))[0];
        assert_eq!((route.provider.as_deref(), route.probed), (Some("local"), true));
        // Down at the threshold: the fallback, not probed yet, and degraded.
        for at in [200, 300] {
            observe(&mut routing, "local", Verdict::Down { why: "refused".into() }, at);
        }
        routing.decide(&state, 300);
        let route = &routing.routes(Some(&state))[0];
        assert_eq!(
            (route.provider.as_deref(), route.degraded, route.probed),
            (Some("spare"), true, false)
        );
        routing.stop();
    }
}
