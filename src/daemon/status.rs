//! Answering `status` through the daemon: completed with what only the daemon knows (routes,
//! probes, the pass in progress), also while a pass runs.

use super::work::{source_options, status_source, with_kept};
use super::*;

impl Daemon {
    /// Completes a status report with what only the daemon knows (provider health, routes,
    /// launch agents) and answers.
    pub(super) fn reply_status(&self, request: Request, mut report: StatusReport, reply: Reply) {
        report.providers = serde_json::to_value(self.routing.providers()).unwrap_or_default();
        let routes = self.routing.routes(self.current.as_deref());
        for resource in report.resources.iter_mut().filter(|r| r.kind == Kind::Agent) {
            resource.route = routes
                .iter()
                .find(|r| r.agent == resource.name && r.provider.is_some())
                .map(|r| {
                    serde_json::json!({
                        "provider": r.provider,
                        "model": r.model,
                        "degraded": r.degraded,
                        "probed": r.probed,
                        "reason": r.reason,
                    })
                })
                .or(Some(serde_json::Value::Null));
        }
        report.routes = serde_json::to_value(routes).unwrap_or_default();
        // A Service whose provider's port another process holds is not healthy, whichever of
        // its (crash-looping) processes runs this instant.
        if let Some(state) = self.current.as_deref() {
            for resource in report.resources.iter_mut().filter(|r| r.kind == Kind::Service) {
                if let Some(why) = self.routing.hijack_of(&resource.name, state) {
                    if resource.health == "Healthy" || resource.health == "Progressing" {
                        resource.health = "Degraded";
                    }
                    resource.detail = why;
                }
            }
        }
        // Launch agents come from the runner (waiting for a sync in progress).
        let (jobs, render) = (self.jobs.clone(), self.render.clone());
        tokio::spawn(async move {
            if let Some(runner) = jobs.lock().await.as_ref() {
                report.launch_agents = runner.status();
            }
            let _ = reply.send(render(&request, Answer::Status(Box::new(report))));
        });
    }

    /// `status` while a pass has the reconciler: read from the inventory on disk (the pass
    /// appends to it as it goes) with the probe verdicts the daemon holds, so the answer does not
    /// wait for a pass that may be verifying a slow start; it says a pass is running.
    pub(super) fn status_while_busy(&self, request: Request, reply: Reply) {
        let Request::Status { source, .. } = &request else {
            return;
        };
        let own = self.config.context.source.clone();
        let asked = source_options(source, &own);
        let context = self.config.context.clone();
        let current = self.current.clone();
        let trust = self.trust.clone();
        let probes = Probes::Known(self.verdicts.clone());
        let pass_running = self.busy.map(|(trigger, since)| crate::reconcile::PassRunning {
            trigger: trigger.to_string(),
            for_ms: since.elapsed().as_millis() as u64,
        });
        let events = self.events.clone();
        tokio::spawn(async move {
            let read = tokio::task::spawn_blocking(move || {
                let (desired, kept) = status_source(&asked, &own, current, trust.as_ref());
                crate::reconcile::status_from_disk(&context, desired, &probes).map(|report| with_kept(report, kept))
            })
            .await;
            let answer = match read {
                Ok(Ok(mut report)) => {
                    report.pass_running = pass_running;
                    Ok(report)
                }
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(format!("reading the status failed: {e}")),
            };
            // The event loop completes it (routes, providers, launch agents) and answers.
            let _ = events.send(Event::StatusRead(Box::new((request, answer, reply))));
        });
    }
}
