//! The checks of each kind's spec, and the rules that hold across resources of one kind: a
//! LaunchAgent label used once, at most one Controller.

use std::collections::{HashMap, HashSet};

use super::fields::{check_budget, check_command, check_env, check_process, check_threshold, check_url};
use super::memory::check_memory_rule;
use super::references::{check_agent_bindings, dangling};
use super::{spec, Report};
use crate::source::decode::Parsed;
use crate::source::yaml::FieldPath;
use crate::spec::common::is_env_name;
use crate::spec::launch_agent::is_reverse_dns_label;
use crate::spec::memory_rule::ARCHIVED_TIER;
use crate::spec::{
    AgentSpec, ControllerSpec, Kind, LaunchAgentSpec, ModelProviderSpec, PolicySpec, ResourceId, ServiceSpec, Spec,
};

/// What one resource may claim for itself on a host: LaunchAgent labels, and the Controller.
#[derive(Default)]
pub(super) struct Singletons<'a> {
    labels: HashMap<&'a str, &'a Parsed>,
    controller: Option<&'a Parsed>,
}

impl<'a> Singletons<'a> {
    /// A LaunchAgent label is reverse-DNS and used by one LaunchAgent only.
    fn check_label(&mut self, report: &mut Report<'_>, p: &'a Parsed, label: &'a str) {
        if !is_reverse_dns_label(label) {
            report.error(spec("label"), format!(
                "expected a reverse-DNS label such as `ai.activemirror.cloudflared` (dot-separated letters, digits and `-`), found `{label}`"
            ));
        } else if let Some(first) = self.labels.insert(label, p) {
            let first_id = first.resource.id();
            report.error(
                spec("label"),
                format!(
                    "label `{label}` is already used by {first_id} at {}",
                    first.resource.origin
                ),
            );
            self.labels.insert(label, first);
        }
    }

    /// A host has at most one Controller: the first one declared.
    fn check_controller(&mut self, report: &mut Report<'_>, p: &'a Parsed) {
        if let Some(first) = self.controller {
            report.error(
                FieldPath::from("metadata.name"),
                format!(
                    "a host has at most one Controller; {} is already declared at {}",
                    first.resource.id(),
                    first.resource.origin
                ),
            );
        } else {
            self.controller = Some(p);
        }
    }
}

/// The checks of `p`'s spec, by its kind.
pub(super) fn check_spec<'a>(
    report: &mut Report<'_>,
    p: &'a Parsed,
    index: &HashMap<ResourceId, &Parsed>,
    tiers: &[String],
    singletons: &mut Singletons<'a>,
) {
    match &p.resource.spec {
        Spec::Service(s) => check_service(report, s),
        Spec::LaunchAgent(s) => {
            singletons.check_label(report, p, &s.label);
            check_launch_agent(report, s);
        }
        Spec::Agent(s) => check_agent(report, s, index),
        Spec::ModelProvider(s) => check_model_provider(report, s, index),
        Spec::Policy(s) => check_policy(report, s),
        Spec::MemoryRule(s) => check_memory_rule(report, s, tiers),
        Spec::Controller(s) => {
            singletons.check_controller(report, p);
            check_controller(report, s);
        }
    }
}

fn check_service(report: &mut Report<'_>, s: &ServiceSpec) {
    check_command(report, &s.command);
    check_env(report, &s.env, &s.env_files);
    check_process(
        report,
        s.backoff.as_ref(),
        s.health.as_ref(),
        s.stop.as_ref(),
        s.limits.as_ref(),
    );
}

/// Everything but the label (see `Singletons::check_label`).
fn check_launch_agent(report: &mut Report<'_>, s: &LaunchAgentSpec) {
    check_command(report, &s.command);
    check_env(report, &s.env, &s.env_files);
    check_process(report, None, None, s.stop.as_ref(), s.limits.as_ref());
    if let Some(crate::spec::common::Schedule::Every(every)) = &s.schedule {
        if every.is_zero() {
            report.error(
                FieldPath::from("spec.schedule.every"),
                "expected an interval greater than 0",
            );
        }
    }
    if s.timeout.is_some_and(|t| t.is_zero()) {
        report.error(spec("timeout"), "expected a timeout greater than 0 (omit it for none)");
    }
}

fn check_agent(report: &mut Report<'_>, s: &AgentSpec, index: &HashMap<ResourceId, &Parsed>) {
    check_command(report, &s.command);
    check_env(report, &s.env, &s.env_files);
    check_process(
        report,
        s.backoff.as_ref(),
        s.health.as_ref(),
        s.stop.as_ref(),
        s.limits.as_ref(),
    );
    check_agent_bindings(report, s, index);
    check_budget(report, FieldPath::from("spec.budget"), s.budget.as_ref());
}

fn check_model_provider(report: &mut Report<'_>, s: &ModelProviderSpec, index: &HashMap<ResourceId, &Parsed>) {
    check_url(report, spec("url"), &s.url);
    if let Some(service) = &s.service {
        if !index.contains_key(&ResourceId::new(Kind::Service, service.clone())) {
            report.error(spec("service"), dangling(Kind::Service, service, index));
        }
    }
    for (i, model) in s.models.iter().enumerate() {
        if model.trim().is_empty() {
            report.error(
                spec("models").index(i),
                "expected a model name such as `llama3.2:3b`, found an empty string",
            );
        }
    }
    if let Some(health) = &s.health {
        check_threshold(
            report,
            FieldPath::from("spec.health.failureThreshold"),
            health.failure_threshold,
        );
        for (field, value) in [("interval", health.interval), ("timeout", health.timeout)] {
            if value.is_some_and(|v| v.is_zero()) {
                report.error(
                    FieldPath::from("spec.health").key(field),
                    "expected a duration greater than 0",
                );
            }
        }
    }
    if let Some(env) = &s.api_key_env {
        if !is_env_name(env) {
            report.error(
                spec("apiKeyEnv"),
                format!("expected an environment variable name, found `{env}`"),
            );
        }
    }
}

fn check_policy(report: &mut Report<'_>, s: &PolicySpec) {
    let mut seen = HashSet::new();
    for (i, tool) in s.tools.iter().enumerate() {
        if tool.name.trim().is_empty() {
            report.error(
                spec("tools").index(i).key("name"),
                "expected a tool name such as `fs.read`",
            );
        } else if !seen.insert(tool.name.as_str()) {
            report.error(
                spec("tools").index(i).key("name"),
                format!("tool `{}` is listed twice", tool.name),
            );
        }
    }
    for (field, ports) in [("connect", &s.network().connect), ("bind", &s.network().bind)] {
        for (i, port) in ports.iter().enumerate() {
            if !(1..=65535).contains(port) {
                report.error(
                    spec("network").key(field).index(i),
                    format!("expected a TCP port from 1 to 65535, found {port}"),
                );
            }
        }
    }
    for (i, path) in s.hide_paths.iter().enumerate() {
        let text = path.to_string_lossy();
        if !(path.is_absolute() || text.starts_with("~/")) {
            report.error(
                spec("hidePaths").index(i),
                format!("expected an absolute path or one starting with `~/`, found `{text}`"),
            );
        }
    }
    if let Some(pct) = s.warn_at_percent {
        if pct == 0 || pct > 100 {
            report.error(
                spec("warnAtPercent"),
                format!("expected a percentage from 1 to 100, found {pct}"),
            );
        }
    }
    check_budget(report, FieldPath::from("spec.budget"), s.budget.as_ref());
}

/// Everything but the one-Controller rule (see `Singletons::check_controller`).
fn check_controller(report: &mut Report<'_>, s: &ControllerSpec) {
    if s.resync.is_some_and(|r| r.is_zero()) {
        report.error(spec("resync"), "expected a duration greater than 0");
    }
    if let Some(fraction) = s.prune_guard.as_ref().and_then(|g| g.max_fraction) {
        if !(fraction > 0.0 && fraction <= 1.0) {
            report.error(
                FieldPath::from("spec.pruneGuard.maxFraction"),
                format!("expected a fraction greater than 0 and at most 1, found {fraction}"),
            );
        }
    }
    if let Some(memory) = &s.memory {
        let mut seen = HashSet::new();
        for (i, tier) in memory.tiers.iter().enumerate() {
            let path = FieldPath::from("spec.memory.tiers").index(i);
            if tier == ARCHIVED_TIER {
                report.error(path, "`archived` is implied after the ordered tiers; do not list it");
            } else if !crate::spec::common::is_dns_label(tier) {
                report.error(
                    path,
                    format!("expected a tier name (lowercase letters, digits and `-`), found `{tier}`"),
                );
            } else if !seen.insert(tier) {
                report.error(path, format!("tier `{tier}` is listed twice"));
            }
        }
    }
}
