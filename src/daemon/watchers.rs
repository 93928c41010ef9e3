//! Watching what a pass started: an exit watcher per process (pidfd on Linux) and a probe task
//! per service with a health probe; their answers come back as events.

use super::*;

impl Daemon {
    pub(super) fn child_exited(&mut self, id: ResourceId, identity: ProcessIdentity, ended: Ended) {
        let current = self.watchers.get(&id).map(|(watched, _)| watched.clone());
        self.ended.insert(identity.clone());
        if current.as_ref() != Some(&identity) {
            return; // stopped on purpose by a pass (update, prune): not a crash
        }
        self.watchers.remove(&id);
        tracing::warn!(resource = %id, pid = identity.pid, exit = ?ended.exit, mechanism = ended.mechanism.as_str(), "process ended");
        if let (Some(reconciler), Some(exit)) = (self.reconciler.as_mut(), ended.exit) {
            reconciler.note_exit(&id, identity.clone(), exit);
        } else if let Some(exit) = ended.exit {
            self.pending_exits.push((id.clone(), identity.clone(), exit));
        }
        self.enqueue(Work::One {
            id,
            trigger: "child-exit",
        });
    }

    pub(super) fn probed(&mut self, id: ResourceId, identity: ProcessIdentity, result: Result<String, String>) {
        let Some(probing) = self.probing.get_mut(&id) else {
            return;
        };
        if probing.identity != identity {
            return;
        }
        let hijack = (id.kind == Kind::Service)
            .then(|| self.current.as_ref().and_then(|s| self.routing.hijack_of(&id.name, s)))
            .flatten();
        match result {
            // The answer may have come from whoever holds the port: not healthy while it does.
            Ok(_) if hijack.is_some() => {
                self.verdicts.insert(id, (identity, Err(hijack.unwrap_or_default())));
            }
            Ok(answer) => {
                // One line per change of state: back to healthy after being called unhealthy.
                if probing.failures >= probing.threshold {
                    tracing::info!(resource = %id, %answer, "healthy again");
                }
                probing.failures = 0;
                self.verdicts.insert(id, (identity, Ok(answer)));
            }
            Err(why) => {
                probing.failures += 1;
                if probing.failures >= probing.threshold {
                    let verdict = format!("probe failed {} time(s) in a row: {why}", probing.failures);
                    // Said once when it becomes unhealthy; later failures only at debug.
                    if probing.failures == probing.threshold {
                        tracing::warn!(resource = %id, %verdict, "unhealthy");
                    } else {
                        tracing::debug!(resource = %id, %verdict, "still unhealthy");
                    }
                    self.verdicts.insert(id.clone(), (identity, Err(verdict)));
                    self.enqueue(Work::One { id, trigger: "probe" });
                }
            }
        }
    }

    /// Watches (for its end) and probes every owned running process; forgets the rest.
    pub(super) fn sync_watchers(&mut self, reconciler: &Reconciler) {
        let owned: BTreeMap<ResourceId, ProcessIdentity> = reconciler.owned_processes().into_iter().collect();
        self.watchers.retain(|name, (identity, task)| {
            let keep = owned.get(name) == Some(identity);
            if !keep {
                task.abort();
            }
            keep
        });
        self.probing.retain(|name, probing| {
            let keep = owned.get(name) == Some(&probing.identity);
            if !keep {
                probing.task.abort();
            }
            keep
        });
        self.verdicts
            .retain(|name, (identity, _)| owned.get(name) == Some(identity));
        self.ended.retain(|identity| owned.values().any(|o| o == identity));
        let mut running = 0;
        for (name, identity) in &owned {
            if self.ended.contains(identity) {
                continue;
            }
            // The gauge is about services (agents run as processes too, but are not desired
            // services: counting them showed 2 running of 1 desired).
            if name.kind == Kind::Service {
                running += 1;
            }
            if !self.watchers.contains_key(name) {
                let events = self.events.clone();
                let (name_c, identity_c) = (name.clone(), identity.clone());
                let task = tokio::spawn(async move {
                    let ended = watch::ended(identity_c.clone()).await;
                    let _ = events.send(Event::ChildExited {
                        id: name_c,
                        identity: identity_c,
                        ended,
                    });
                });
                self.watchers
                    .insert(name.clone(), (identity.clone(), task.abort_handle()));
            }
            if !self.probing.contains_key(name) {
                if let Some((probe, started_ms)) = self.probe_of(name, reconciler) {
                    let task = tokio::spawn(probe_loop(
                        self.events.clone(),
                        name.clone(),
                        identity.clone(),
                        probe.clone(),
                        started_ms,
                    ));
                    self.probing.insert(
                        name.clone(),
                        Probing {
                            identity: identity.clone(),
                            task: task.abort_handle(),
                            failures: 0,
                            threshold: probe.failure_threshold().max(1),
                            started_ms,
                            start_period_ms: probe.start_period().as_std().as_millis() as i64,
                        },
                    );
                }
            }
        }
        let host = &self.config.context.host;
        // Desired running: not suspended, placed here, not stopped by a person (`mirrorctl stop`).
        let stopped = crate::reconcile::overrides::Overrides::load(&self.config.context.state_dir);
        let desired = self.current.as_ref().map_or(0, |s| {
            s.resources
                .iter()
                .filter(|r| match &r.spec {
                    Spec::Service(spec) => {
                        !spec.suspend
                            && spec.placement.as_ref().is_none_or(|p| p.selects(host))
                            && stopped.active(&r.id(), &s.commit).is_none()
                    }
                    _ => false,
                })
                .count()
        });
        self.metrics.set_services(running as u64, desired as u64);
    }

    pub(super) fn probe_of(&self, id: &ResourceId, reconciler: &Reconciler) -> Option<(Probe, i64)> {
        let state = self.current.as_ref()?;
        let resource = state.get(id.kind, &id.name)?;
        let probe = match &resource.spec {
            Spec::Service(spec) => spec.health.clone()?,
            Spec::Agent(spec) => spec.health.clone()?,
            _ => return None,
        };
        Some((probe, reconciler.started_ms(id).unwrap_or_else(now_ms)))
    }
}

/// Probes one process every `interval`; every answer is an event, except failures within its
/// start period (they do not count; a success does, so `status` shows a service that answers
/// as Healthy at once rather than Progressing for its whole start period).
pub(super) async fn probe_loop(
    events: mpsc::UnboundedSender<Event>,
    id: ResourceId,
    identity: ProcessIdentity,
    probe: Probe,
    started_ms: i64,
) {
    let grace_until = started_ms + probe.start_period().as_std().as_millis() as i64;
    let interval = probe.interval().as_std().max(Duration::from_millis(100));
    loop {
        let check = probe.clone();
        let result = tokio::task::spawn_blocking(move || crate::supervisor::probe::check(&check))
            .await
            .unwrap_or_else(|e| Err(format!("the probe panicked: {e}")));
        if result.is_err() && now_ms() < grace_until {
            tokio::time::sleep(interval).await;
            continue;
        }
        if events
            .send(Event::Probed {
                id: id.clone(),
                identity: identity.clone(),
                result,
            })
            .is_err()
        {
            return;
        }
        tokio::time::sleep(interval).await;
    }
}
