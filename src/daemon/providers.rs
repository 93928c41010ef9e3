//! Model providers and the bus, next to [`super::routing`]: a provider's probe verdicts move
//! agents and restart its Service, the bus gets each agent's routes, tokens and policy, and the
//! models a provider lacks are pulled.

use super::*;

impl Daemon {
    /// A provider's probe answered: a change of health may restart its Service (down or hung)
    /// and move agents.
    pub(super) fn provider_probed(&mut self, probed: routing::Probed) {
        let now = now_ms();
        // A provider that answers may now be listed: models not ensured yet (it was still
        // starting, or a pull failed) are tried again at once, not at the next resync.
        if probed.verdict.is_healthy() {
            if let Some(state) = self.current.clone() {
                self.ensure_models(&state);
            }
        }
        if let crate::router::health::Verdict::Hijacked { why } = &probed.verdict {
            self.mark_hijacked(&probed.provider, why);
        }
        let before = self.routing.health(&probed.provider);
        if !self.routing.observe(&probed, now) {
            return;
        }
        let healthy = self.routing.is_healthy(&probed.provider);
        // One line per change of what status shows (Down at the first refusal and Down at the
        // threshold are one state to a person).
        let health = self.routing.health(&probed.provider);
        if health != before {
            // Failing before any answer is a provider starting (news); failing after answering,
            // or down, is what a person must know.
            let news = health == "Healthy" || (health == "Failing" && before == "Unknown");
            if news {
                tracing::info!(provider = %probed.provider, from = before, to = health, verdict = ?probed.verdict, "provider health changed");
            } else {
                tracing::warn!(provider = %probed.provider, from = before, to = health, verdict = ?probed.verdict, "provider health changed");
            }
        }
        if !healthy {
            self.restart_provider_service(&probed);
        }
        self.decide_routes();
    }

    /// Another process holds a provider's port: its Service (if it runs) is not healthy, with
    /// who holds the port as the reason; an error in the log when that is news.
    pub(super) fn mark_hijacked(&mut self, provider: &str, why: &str) {
        let Some(state) = self.current.clone() else { return };
        let Some(Spec::ModelProvider(spec)) = state.get(Kind::ModelProvider, provider).map(|r| &r.spec) else {
            return;
        };
        let Some(service) = spec.service.clone() else { return };
        let service = ResourceId::new(Kind::Service, service);
        let reason = format!("provider {provider} hijacked: {why}");
        // Not running: its own restarts show; the provider's change of health is logged.
        let Some((identity, _)) = self.watchers.get(&service).cloned() else {
            return;
        };
        let known = self
            .verdicts
            .get(&service)
            .is_some_and(|(_, v)| v.as_ref().err() == Some(&reason));
        if !known {
            tracing::error!(service = %service, %provider, %why, "provider port hijacked");
        }
        self.verdicts.insert(service, (identity, Err(reason)));
    }

    /// A provider that is down or hung and names its Service gets that Service restarted (a hung
    /// process is stopped first: the restart stops it).
    pub(super) fn restart_provider_service(&mut self, probed: &routing::Probed) {
        let Some(state) = self.current.clone() else { return };
        let Some(Spec::ModelProvider(spec)) = state.get(Kind::ModelProvider, &probed.provider).map(|r| &r.spec) else {
            return;
        };
        let Some(service) = spec.service.clone() else { return };
        let service = ResourceId::new(Kind::Service, service);
        let Some((identity, _)) = self.watchers.get(&service).cloned() else {
            return; // not running: the service's own restart policy is at work
        };
        // A server still binding its port reads as down, a model still loading as a hung
        // generation: within the Service's health.startPeriod (failures there do not count, as
        // for the Service's own probe) a failed provider moves agents but its Service is not
        // restarted.
        let starting = self
            .probing
            .get(&service)
            .filter(|p| p.identity == identity)
            .is_some_and(|p| now_ms() - p.started_ms < p.start_period_ms);
        if starting {
            let guess = match &probed.verdict {
                crate::router::health::Verdict::Hung { .. } => {
                    "generation not answering within the service's start period: not restarted (still loading?)"
                }
                _ => "provider not answering within the service's start period: not restarted (still starting?)",
            };
            tracing::info!(service = %service, provider = %probed.provider, "{guess}");
            return;
        }
        let why = match &probed.verdict {
            // Restarting the Service would not free its port (`mark_hijacked` showed it).
            crate::router::health::Verdict::Hijacked { .. } => return,
            crate::router::health::Verdict::Hung { why } => format!("provider {} is hung: {why}", probed.provider),
            crate::router::health::Verdict::Down { why } => format!("provider {} is down: {why}", probed.provider),
            crate::router::health::Verdict::Healthy { .. } => return,
        };
        tracing::warn!(service = %service, %why, "restarting the provider's service");
        self.verdicts.insert(service.clone(), (identity, Err(why)));
        self.enqueue(Work::One {
            id: service,
            trigger: "provider",
        });
    }

    /// Recomputes routes; records each switch (route history, receipt, metrics) and arms the
    /// timer for the next failback that may come due.
    pub(super) fn decide_routes(&mut self) {
        let Some(state) = self.current.clone() else { return };
        let now = now_ms();
        let (switches, next_check) = self.routing.decide(&state, now);
        for switch in switches {
            let (provider, model) = switch.to.as_ref().map_or((String::new(), String::new()), |r| {
                (r.provider.clone(), r.model.clone())
            });
            // A loss of service is a warning; a first route or a return to health is news.
            use crate::router::route::ChangeKind;
            match switch.kind {
                ChangeKind::Failover | ChangeKind::Lost => {
                    tracing::warn!(agent = %switch.agent, change = ?switch.kind, %provider, %model, reason = %switch.reason, "route")
                }
                _ => {
                    tracing::info!(agent = %switch.agent, change = ?switch.kind, %provider, %model, reason = %switch.reason, "route")
                }
            }
            self.metrics.route_change(&switch.agent);
            self.recorder
                .record(crate::store::Record::Route(crate::store::RouteChange {
                    id: crate::store::new_id(),
                    host: self.config.context.host.clone(),
                    agent: switch.agent.clone(),
                    provider: provider.clone(),
                    model: model.clone(),
                    at_ms: now,
                    reason: switch.reason.clone(),
                }));
            self.recorder.receipt(crate::store::ReceiptDraft {
                run_id: None,
                commit: state.commit.clone(),
                kind: Kind::Agent.to_string(),
                name: switch.agent.clone(),
                action: format!("{:?}", switch.kind).to_lowercase(),
                reason: switch.reason.clone(),
                detail: serde_json::json!({"ok": true, "provider": provider, "model": model}).to_string(),
            });
        }
        self.update_bus_routes(&state);
        if let Some((_, timer)) = self.route_timer.take() {
            timer.abort();
        }
        if let Some(at) = next_check {
            let wait = Duration::from_millis((at - now).max(0) as u64 + 1);
            let events = self.events.clone();
            let task = tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                let _ = events.send(Event::RouteCheck);
            });
            self.route_timer = Some((at, task.abort_handle()));
        }
    }

    /// The bus follows the state in force: each enrolled agent's token (revoked ones are gone),
    /// the server on the Controller's bus address (only while there are agents), prices for
    /// metering.
    pub(super) fn sync_bus(&mut self, reconciler: &Reconciler, state: &DesiredState) {
        let agents: BTreeSet<String> = state
            .resources
            .iter()
            .filter(|r| matches!(r.spec, Spec::Agent(_)))
            .map(|r| r.metadata.name.clone())
            .collect();
        for gone in self.bus_agents.difference(&agents) {
            self.bus.remove_agent(gone);
            self.bus.governance().remove_agent(gone);
        }
        // Each agent's effective rules: budgets and the tool gate.
        let policies = crate::reconcile::policies::PolicyPlan::of(state, &self.config.context.state_dir);
        for resource in &state.resources {
            if let Spec::Agent(spec) = &resource.spec {
                self.bus.set_memory_scope(&resource.metadata.name, spec.memory());
                match policies.for_agent(&resource.metadata.name, spec) {
                    Some(policy) => self.bus.governance().set_policy(&resource.metadata.name, policy.rules),
                    None => self.bus.governance().remove_agent(&resource.metadata.name),
                }
            }
        }
        // Only enrolled agents have a token (enrollment happens when an agent first starts).
        let tokens = reconciler.agent_tokens();
        for agent in &agents {
            match tokens.get(agent) {
                Some(token) => self.bus.set_token(agent, token),
                None => self.bus.remove_agent(agent),
            }
        }
        self.bus_agents = agents;
        if let Ok(mut pricing) = self.pricing.write() {
            pricing.clear();
            for r in &state.resources {
                if let Spec::ModelProvider(spec) = &r.spec {
                    if let Some(price) = &spec.pricing {
                        pricing.insert(r.metadata.name.clone(), price.clone());
                    }
                }
            }
        }
        let wanted = (!self.bus_agents.is_empty()).then(|| state.controller().bus_address());
        if self.bus_server.as_ref().map(|(addr, _)| *addr) != wanted {
            if let Some((_, stop)) = self.bus_server.take() {
                let _ = stop.send(());
            }
            if let Some(addr) = wanted {
                let (stop_tx, stop_rx) = oneshot::channel::<()>();
                let (bus, meter) = (self.bus.clone(), self.meter());
                let store_url = self.config.context.store.clone();
                let first_tier = state
                    .controller()
                    .memory_tiers()
                    .into_iter()
                    .next()
                    .unwrap_or_else(|| "working".into());
                tokio::spawn(async move {
                    // The memory API answers from the store itself (an agent needs its item's id).
                    let memory = match crate::store::open(&store_url).await {
                        Ok(store) => {
                            let callers = bus.clone();
                            Some(crate::router::memory_api::router(
                                Arc::from(store),
                                Arc::new(move |headers: &axum::http::HeaderMap| callers.memory_caller(headers)),
                                first_tier,
                            ))
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "the memory API is off: the truth store cannot be opened");
                            None
                        }
                    };
                    match crate::router::bus::serve(addr, bus, meter, memory, async {
                        let _ = stop_rx.await;
                    })
                    .await
                    {
                        Ok((bound, _)) => tracing::info!(%bound, "model bus listening"),
                        Err(e) => tracing::error!(%addr, error = %e, "the model bus cannot listen"),
                    }
                });
                self.bus_server = Some((addr, stop_tx));
            }
        }
        self.update_bus_routes(state);
    }

    /// Pulls the models each Ollama provider lacks, with progress in the log, a receipt per model
    /// pulled (or failed); OpenAI-style providers are only checked.
    pub(super) fn ensure_models(&self, state: &DesiredState) {
        for resource in &state.resources {
            let Spec::ModelProvider(spec) = &resource.spec else {
                continue;
            };
            if spec.models.is_empty() {
                continue;
            }
            let key = format!("{}|{}|{}", resource.metadata.name, spec.url, spec.models.join(","));
            {
                let Ok(mut ensured) = self.models_ensured.lock() else {
                    continue;
                };
                if !ensured.insert(key.clone()) {
                    continue;
                }
            }
            let target = crate::router::health::ProbeTarget::from_spec(&resource.metadata.name, spec);
            let wanted = spec.models.clone();
            let (recorder, ensured, commit) =
                (self.recorder.clone(), self.models_ensured.clone(), state.commit.clone());
            let failing = self.models_failing.clone();
            let provider = resource.metadata.name.clone();
            tokio::spawn(async move {
                let mut last_logged = std::time::Instant::now() - Duration::from_secs(10);
                let mut progress = |p: crate::router::models::PullProgress| {
                    // Progress lines come many per second: one log line a second is plenty.
                    if last_logged.elapsed() >= Duration::from_secs(1) || p.status == "success" {
                        last_logged = std::time::Instant::now();
                        tracing::info!(provider = %target.provider, model = %p.model, "{}", crate::router::models::describe(&p));
                    }
                };
                let outcome = models::pull_missing(&target, &wanted, &recorder, &commit, &mut progress).await;
                let pulled = match outcome {
                    Ok(pulled) => {
                        if failing.lock().is_ok_and(|mut f| f.remove(&key).is_some()) {
                            tracing::info!(%provider, "checking the provider's models works again");
                        }
                        pulled
                    }
                    Err(e) => {
                        // One WARN per change of error, not one per resync.
                        let error = e.to_string();
                        let new = failing
                            .lock()
                            .is_ok_and(|mut f| f.insert(key.clone(), error.clone()).as_ref() != Some(&error));
                        if new {
                            tracing::warn!(%provider, %error, "checking the provider's models failed; trying again at each resync (said again only if the error changes)");
                        } else {
                            tracing::debug!(%provider, %error, "checking the provider's models failed again");
                        }
                        if let Ok(mut ensured) = ensured.lock() {
                            ensured.remove(&key);
                        }
                        return;
                    }
                };
                let failed = pulled.iter().any(|p| matches!(p.result, Some(Err(_))));
                if failed {
                    if let Ok(mut ensured) = ensured.lock() {
                        ensured.remove(&key);
                    }
                }
            });
        }
    }

    pub(super) fn update_bus_routes(&self, state: &DesiredState) {
        for (agent, candidates) in self.routing.bus_routes(state) {
            self.bus.set_routes(&agent, candidates);
        }
    }

    /// Usage records (tokens, and cost from the provider's pricing) for every answered request.
    pub(super) fn meter(&self) -> crate::router::bus::Meter {
        let (recorder, host, pricing, governance) = (
            self.recorder.clone(),
            self.config.context.host.clone(),
            self.pricing.clone(),
            self.bus.governance().clone(),
        );
        Arc::new(move |m: crate::router::bus::Metered| {
            let cost = pricing
                .read()
                .ok()
                .and_then(|p| p.get(&m.provider).cloned())
                .map_or(0.0, |p| {
                    (m.prompt_tokens as f64 * p.input_per_million_tokens_usd
                        + m.completion_tokens as f64 * p.output_per_million_tokens_usd)
                        / 1e6
                });
            let now = now_ms();
            governance.record_usage(&m.agent, m.prompt_tokens + m.completion_tokens, cost, now);
            recorder.record(crate::store::Record::Usage(crate::store::Usage {
                id: crate::store::new_id(),
                host: host.clone(),
                agent: m.agent,
                provider: m.provider,
                model: m.model,
                prompt_tokens: m.prompt_tokens as i64,
                completion_tokens: m.completion_tokens as i64,
                cost_usd: cost,
                at_ms: now,
            }));
        })
    }
}
