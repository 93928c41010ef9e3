//! The models step of a pass: a dry-run lists the pulls and route decisions a reconcile makes;
//! an apply pulls what each Ollama provider lacks, with progress as it comes and a receipt per
//! model. The daemon pulls through [`pull_missing`] too.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::report::now_ms;
use crate::router::health::ProbeTarget;
use crate::router::models::{self, PullProgress};
use crate::router::preview::{self, ModelAction, ModelActionKind};
use crate::router::route::{ProviderState, RouteState};
use crate::source::DesiredState;
use crate::spec::{Kind, Spec};
use crate::store::{ReceiptDraft, Recorder};

/// A pull that makes no progress for this long is given up (sizes are gigabytes; time is not
/// the measure, progress is).
pub const PULL_STALL: Duration = Duration::from_secs(120);

/// Provider health and agents' routes as a running daemon holds them.
#[derive(Clone, Debug, Default)]
pub struct RoutingSnapshot {
    pub providers: BTreeMap<String, ProviderState>,
    pub routes: BTreeMap<String, RouteState>,
}

/// What a reconcile of `state` would do about models and routes. Without a daemon's
/// `routing`, providers are probed once now and routes are what a daemon would pick first.
pub async fn preview(state: &DesiredState, routing: Option<&RoutingSnapshot>) -> Vec<ModelAction> {
    let seen = preview::observe_models(state).await;
    let mut actions = preview::model_actions(state, &seen);
    let now = now_ms();
    actions.extend(match routing {
        Some(routing) => preview::route_actions(state, &routing.providers, &routing.routes, true, now),
        None => {
            let providers = preview::probe_once(state, now).await;
            preview::route_actions(state, &providers, &BTreeMap::new(), false, now)
        }
    });
    actions
}

/// Pulls the models every Ollama provider of `state` lacks, one provider after another; what
/// was pulled, failed, or could not be checked. `progress` gets a line per progress report.
pub async fn ensure_all(
    state: &DesiredState,
    recorder: &Recorder,
    progress: &mut (dyn FnMut(String) + Send),
) -> Vec<ModelAction> {
    let mut actions = Vec::new();
    for resource in &state.resources {
        let Spec::ModelProvider(spec) = &resource.spec else {
            continue;
        };
        if spec.models.is_empty() {
            continue;
        }
        let target = ProbeTarget::from_spec(&resource.metadata.name, spec);
        if super::interrupted() {
            break;
        }
        let mut report =
            |p: PullProgress| progress(format!("{}: {}: {}", target.provider, p.model, models::describe(&p)));
        // Ctrl-C stops a pull (which can take many minutes); Ollama resumes it at the next pass.
        let outcome = tokio::select! {
            outcome = pull_missing(&target, &spec.models, recorder, &state.commit, &mut report) => outcome,
            () = until_interrupted() => Err("interrupted (SIGINT) while pulling: the next pass resumes the pull".to_string()),
        };
        match outcome {
            Ok(pulled) => actions.extend(pulled),
            Err(why) => actions.push(ModelAction {
                kind: Kind::ModelProvider,
                name: target.provider.clone(),
                action: ModelActionKind::Unchecked,
                target: spec.models.join(", "),
                reason: format!("models not checked: {why}"),
                pending: false,
                result: None,
            }),
        }
    }
    actions
}

/// Returns when a one-shot pass has been asked to stop (Ctrl-C).
async fn until_interrupted() {
    while !super::interrupted() {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Pulls the models of `wanted` that `target` lacks, in order, with a receipt for each (pulled
/// or failed). Err: the models could not be listed (nothing was pulled).
pub async fn pull_missing(
    target: &ProbeTarget,
    wanted: &[String],
    recorder: &Recorder,
    commit: &Option<String>,
    progress: &mut (dyn FnMut(PullProgress) + Send),
) -> Result<Vec<ModelAction>, String> {
    let results = models::ensure_models(target, wanted, PULL_STALL, progress)
        .await
        .map_err(|e| e.to_string())?;
    let provider = &target.provider;
    Ok(results
        .into_iter()
        .map(|(model, result)| {
            let (action, detail) = match &result {
                Ok(()) => ("pull", "pulled".to_string()),
                Err(why) => ("pull-failed", why.clone()),
            };
            tracing::info!(%provider, %model, action, %detail, "model");
            let reason = format!("{model} is not on {provider}");
            recorder.receipt(ReceiptDraft {
                run_id: None,
                commit: commit.clone(),
                kind: Kind::ModelProvider.to_string(),
                name: provider.clone(),
                action: action.to_string(),
                reason: reason.clone(),
                detail: serde_json::json!({"ok": result.is_ok(), "model": model, "detail": detail}).to_string(),
            });
            ModelAction {
                kind: Kind::ModelProvider,
                name: provider.clone(),
                action: ModelActionKind::Pull,
                target: model,
                reason,
                pending: false,
                result: Some(result),
            }
        })
        .collect())
}
