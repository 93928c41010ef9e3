//! The event loop's own steps: queueing work (a crashed service first, one full pass for
//! every trigger), starting the next piece on a blocking thread, and taking a finished pass back.

use super::*;

impl Daemon {
    pub(super) fn enqueue(&mut self, work: Work) {
        if self.shutting_down.is_some() {
            if let Work::Asked((_, reply)) = work {
                let _ = reply.send(Response {
                    exit_code: 1,
                    stdout: String::new(),
                    stderr: "mirrorctl: error: the daemon is shutting down\n".into(),
                });
            }
            return;
        }
        match &work {
            // A crashed service goes first; once queued, once.
            Work::One { id, .. } => {
                if !self
                    .queue
                    .iter()
                    .any(|w| matches!(w, Work::One { id: queued, .. } if queued == id))
                {
                    let at = self.queue.iter().take_while(|w| matches!(w, Work::One { .. })).count();
                    self.queue.insert(at, work);
                }
            }
            Work::Full { reload, .. } => {
                // One waiting full pass covers every trigger (a re-read covers a re-use).
                let reload = *reload;
                if let Some(Work::Full { reload: queued, .. }) =
                    self.queue.iter_mut().find(|w| matches!(w, Work::Full { .. }))
                {
                    *queued |= reload;
                } else {
                    self.queue.push_back(work);
                }
            }
            Work::ScheduledReport => {
                if !self.queue.iter().any(|w| matches!(w, Work::ScheduledReport)) {
                    self.queue.push_back(work);
                }
            }
            Work::Asked(_) => self.queue.push_back(work),
        }
    }

    /// Starts the next piece of work if the reconciler is free.
    pub(super) fn next(&mut self) {
        if self.reconciler.is_none() || self.shutting_down.is_some() {
            return;
        }
        let Some(work) = self.queue.pop_front() else { return };
        self.busy = Some((trigger_of(&work), Instant::now()));
        let mut reconciler = self.reconciler.take().expect("checked");
        let current = self.current.clone();
        let probes = Probes::Known(self.verdicts.clone());
        let trust = self.trust.clone();
        let events = self.events.clone();
        let mut route_drift = self.routing.drift(self.current.as_deref());
        route_drift.extend(self.bus.governance().budget_drift(now_ms()));
        let routing = self.routing.snapshot();
        tokio::task::spawn_blocking(move || {
            let begun = Instant::now();
            let (result, applied) = perform(
                &mut reconciler,
                &work,
                current,
                probes,
                trust.as_ref(),
                route_drift,
                &routing,
            );
            let _ = events.send(Event::PassDone(Box::new(Finished {
                reconciler,
                work,
                result,
                applied,
                took: begun.elapsed(),
            })));
        });
    }

    pub(super) fn finished(&mut self, finished: Finished) {
        let Finished {
            mut reconciler,
            work,
            result,
            applied,
            took,
        } = finished;
        for (id, identity, exit) in self.pending_exits.drain(..) {
            reconciler.note_exit(&id, identity, exit);
        }
        // Before the probe tasks start: whose listener each provider's answer must come from.
        self.routing.set_owners(
            reconciler
                .owned_processes()
                .into_iter()
                .filter(|(id, _)| id.kind == Kind::Service)
                .map(|(id, identity)| (id.name, identity))
                .collect(),
        );
        if let Some(state) = applied {
            self.sync_jobs(&reconciler, &state);
            self.routing.sync(&state, &self.config.context.state_dir, &self.probed);
            self.current = Some(state.clone());
            self.decide_routes();
            self.sync_bus(&reconciler, &state);
            self.ensure_models(&state);
        }
        self.busy = None;
        let trigger = trigger_of(&work);
        if let Answer::Pass(outcome) = &result {
            self.metrics.observe_pass(trigger, took, outcome.error.is_some());
            for a in &outcome.applied {
                if a.ok && a.action == crate::plan::Action::Restart {
                    self.metrics.restart(&a.name);
                }
            }
            let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
            for item in &outcome.report.items {
                *counts
                    .entry((item.drift.as_str().to_string(), item.severity.as_str().to_string()))
                    .or_default() += 1;
            }
            let counts: Vec<(String, String, u64)> = counts.into_iter().map(|((d, s), n)| (d, s, n)).collect();
            self.metrics.set_drift_items(&counts);
            if let Some(plan) = &outcome.plan {
                self.arm_backoff(plan.retry_at);
            }
            // Each failed action at WARN with its resource and reason (the pass line below only
            // counts them): a typo'd program name shows where people look.
            for failed in outcome.applied.iter().filter(|a| !a.ok) {
                tracing::warn!(
                    resource = %format!("{}/{}", failed.kind, failed.name),
                    action = failed.action.as_str(),
                    reason = %failed.detail,
                    "action failed"
                );
            }
            let level_error = outcome.error.as_deref();
            tracing::info!(
                trigger,
                took_ms = took.as_millis() as u64,
                commit = outcome.commit.as_deref().unwrap_or("-"),
                applied = outcome.applied.len(),
                drift = outcome.report.items.len(),
                error = level_error.unwrap_or(""),
                "pass"
            );
        }
        if let Work::ScheduledReport = &work {
            if let Answer::Pass(outcome) = &result {
                let dir = crate::state::Layout::of(&self.config.context.state_dir).reports();
                match crate::report::markdown::write(&dir, &outcome.report, REPORTS_KEPT) {
                    Ok(path) => tracing::info!(path = %path.display(), "drift report written"),
                    Err(e) => tracing::warn!(error = %e, "writing the drift report failed"),
                }
            }
        }
        self.sync_watchers(&reconciler);
        // A pass may have enrolled or revoked an agent: the bus learns its token at once.
        if applied_anything(&result) {
            if let Some(state) = self.current.clone() {
                self.sync_bus(&reconciler, &state);
            }
        }
        self.sync_schedules();
        if let Work::Asked((request, reply)) = work {
            match result {
                Answer::Status(report) => self.reply_status(request, *report, reply),
                other => {
                    let _ = reply.send((self.render)(&request, other));
                }
            }
        }
        self.reconciler = Some(reconciler);
    }

    /// A control request: gate approvals are answered at once (they touch no pass); the rest
    /// waits for the reconciler.
    pub(super) fn control(&mut self, asked: Asked) {
        let (request, reply) = asked;
        match request {
            Request::GatePending { json } => {
                let pending = self.bus.governance().pending(now_ms());
                let _ = reply.send(crate::cli::gate::render_pending(&pending, json));
            }
            Request::GateDecide { id, approve, by, json } => {
                let decided = self.bus.governance().decide(&id, approve, &by, now_ms());
                let _ = reply.send(crate::cli::gate::render_decided(&decided, json));
            }
            request @ Request::Status { .. } if self.reconciler.is_none() && self.shutting_down.is_none() => {
                self.status_while_busy(request, reply)
            }
            request => self.enqueue(Work::Asked((request, reply))),
        }
    }
}

/// Whether a pass changed anything on the host.
pub(super) fn applied_anything(result: &Answer) -> bool {
    matches!(result, Answer::Pass(outcome) if !outcome.applied.is_empty())
}

/// What set a piece of work going (logs, metrics, `status` while it runs).
pub(super) fn trigger_of(work: &Work) -> &'static str {
    match work {
        Work::Full { trigger, .. } | Work::One { trigger, .. } => trigger,
        Work::Asked(_) => "control",
        Work::ScheduledReport => "schedule",
    }
}
/// Receives events until the loop is told to end (a shutdown once no pass runs).
pub(super) async fn run_loop(daemon: &mut Daemon, inbox: &mut mpsc::UnboundedReceiver<Event>) {
    // Two timers, and otherwise the loop sleeps: the resync (the interval of the state in force,
    // counted from the last resync) and the heartbeat that tells /healthz the loop is alive.
    let mut resync_every = daemon.resync_interval();
    let mut next_resync = tokio::time::Instant::now() + resync_every;
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Logs are bounded between passes too (see `log_watch`).
    let mut log_watch = log_watch::LogWatch::default();
    let mut next_log_check = tokio::time::Instant::now() + log_watch::HOT_CHECK;

    loop {
        // A new state in force may set another interval: counted from the last resync.
        if daemon.resync_interval() != resync_every {
            let last = next_resync - resync_every;
            resync_every = daemon.resync_interval();
            next_resync = last + resync_every;
        }
        let event = tokio::select! {
            event = inbox.recv() => match event {
                Some(event) => event,
                None => break,
            },
            _ = tokio::time::sleep_until(next_resync) => {
                resync_every = daemon.resync_interval();
                next_resync = tokio::time::Instant::now() + resync_every;
                Event::Resync
            }
            _ = heartbeat.tick() => {
                daemon.metrics.heartbeat();
                continue;
            }
            _ = tokio::time::sleep_until(next_log_check) => {
                let wait = match &daemon.current {
                    Some(state) => log_watch.check(state, &daemon.config.context.state_dir),
                    None => log_watch::COLD_CHECK,
                };
                next_log_check = tokio::time::Instant::now() + wait;
                continue;
            }
        };
        daemon.metrics.heartbeat();
        if let Event::PassDone(_) = &event {
            // A pass may have started services: their logs are looked at soon, not at the
            // next check at rest (a flood from the first line writes ~1.4 GB a second).
            next_log_check = next_log_check.min(tokio::time::Instant::now() + log_watch::HOT_CHECK);
        }
        daemon.handle(event);
        if daemon.shutting_down.is_some() && daemon.reconciler.is_some() {
            break;
        }
        daemon.next();
    }
}

impl Daemon {
    /// Reacts to one event (most queue work; `next` starts it).
    fn handle(&mut self, event: Event) {
        match event {
            Event::Resync => self.enqueue(Work::Full {
                trigger: "resync",
                reload: true,
            }),
            Event::SourceChanged => self.enqueue(Work::Full {
                trigger: "commit",
                reload: true,
            }),
            Event::ChildExited { id, identity, ended } => self.child_exited(id, identity, ended),
            Event::RestartDue => self.enqueue(Work::Full {
                trigger: "backoff",
                reload: false,
            }),
            Event::Probed { id, identity, result } => self.probed(id, identity, result),
            Event::DriftReportDue => {
                self.report_timer = None;
                self.enqueue(Work::ScheduledReport);
            }
            Event::MemoryRulesDue => self.memory_rules_due(),
            Event::Control(asked) => self.control(asked),
            Event::ProviderProbed(probed) => self.provider_probed(probed),
            Event::RouteCheck => {
                self.route_timer = None;
                self.decide_routes();
            }
            Event::StatusRead(read) => {
                let (request, answer, reply) = *read;
                match answer {
                    Ok(report) => self.reply_status(request, report, reply),
                    Err(e) => {
                        let _ = reply.send((self.render)(&request, Answer::Error(e)));
                    }
                }
            }
            Event::PassDone(finished) => self.finished(*finished),
            Event::Shutdown(signal) => {
                tracing::info!(signal, "shutting down");
                self.shutting_down = Some(signal);
                for work in std::mem::take(&mut self.queue) {
                    if let Work::Asked((_, reply)) = work {
                        let _ = reply.send(Response {
                            exit_code: 1,
                            stdout: String::new(),
                            stderr: "mirrorctl: error: the daemon is shutting down\n".into(),
                        });
                    }
                }
            }
        }
    }
}
