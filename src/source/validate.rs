//! Semantic checks over the decoded resources: names, values, references, cycles, and the
//! rules that span resources (one Controller, local-first policies). Pure: no I/O.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::decode::{Declared, Parsed};
use super::yaml::{FieldPath, Node, PathSegment};
use super::Diagnostic;
use crate::spec::common::{is_env_name, Backoff, Limits, Probe, Stop};
use crate::spec::controller::DEFAULT_TIERS;
use crate::spec::launch_agent::is_reverse_dns_label;
use crate::spec::memory_rule::{MemoryAction, ARCHIVED_TIER};
use crate::spec::{parse_dependency, Kind, Resource, ResourceId, Spec};

/// A semantic error, not yet placed: the document and field path it concerns. Validation needs
/// no YAML tree; `place` finds the position afterwards.
pub struct Finding {
    pub file: String,
    pub document: usize,
    pub resource: String,
    pub path: FieldPath,
    /// About a mapping key itself: point at the key, not its value.
    pub at_key: bool,
    pub message: String,
}

impl Finding {
    /// Places the finding in its document: at the node of the path or, for an absent key, at
    /// the nearest ancestor that exists (where it should be added).
    pub fn place(self, root: &Node) -> Diagnostic {
        let mut target = self.path.0.clone();
        let key = match (self.at_key, target.last()) {
            (true, Some(PathSegment::Key(key))) => {
                let key = key.clone();
                target.pop();
                Some(key)
            }
            _ => None,
        };
        let node = root.locate(&target);
        let mark = key.and_then(|k| node.get_key(&k)).map_or(node.mark, |k| k.mark);
        Diagnostic::new(
            &self.file,
            mark,
            Some(self.resource),
            Some(self.path.to_string()),
            self.message,
        )
    }
}

/// Collects the findings of one resource.
struct Report<'a> {
    parsed: &'a Parsed,
    out: &'a mut Vec<Finding>,
}

impl Report<'_> {
    fn error(&mut self, path: FieldPath, message: impl Into<String>) {
        self.push(path, false, message.into());
    }

    /// An error about a mapping key itself (not its value).
    fn key_error(&mut self, path: FieldPath, message: impl Into<String>) {
        self.push(path, true, message.into());
    }

    fn push(&mut self, path: FieldPath, at_key: bool, message: String) {
        self.out.push(Finding {
            file: self.parsed.file().to_string(),
            document: self.parsed.document,
            resource: self.parsed.resource.id().to_string(),
            path,
            at_key,
            message,
        });
    }
}

fn spec(field: &str) -> FieldPath {
    FieldPath::from("spec").key(field)
}

pub fn validate(parsed: &[Parsed], declared: &[Declared]) -> Vec<Finding> {
    let mut out = Vec::new();
    let index: HashMap<ResourceId, &Parsed> = first_declarations(parsed, &mut out);
    declared_duplicates(&index, declared, &mut out);
    let controller_tiers = tiers(parsed);
    let mut labels: HashMap<&str, &Parsed> = HashMap::new();
    let mut controller: Option<&Parsed> = None;

    for p in parsed {
        let mut report = Report {
            parsed: p,
            out: &mut out,
        };
        let resource = &p.resource;
        match &resource.spec {
            Spec::Service(s) => {
                check_command(&mut report, &s.command);
                check_env(&mut report, &s.env, &s.env_files);
                check_process(
                    &mut report,
                    s.backoff.as_ref(),
                    s.health.as_ref(),
                    s.stop.as_ref(),
                    s.limits.as_ref(),
                );
            }
            Spec::LaunchAgent(s) => {
                if !is_reverse_dns_label(&s.label) {
                    report.error(spec("label"), format!(
                        "expected a reverse-DNS label such as `ai.activemirror.cloudflared` (dot-separated letters, digits and `-`), found `{}`",
                        s.label
                    ));
                } else if let Some(first) = labels.insert(&s.label, p) {
                    let first_id = first.resource.id();
                    report.error(
                        spec("label"),
                        format!(
                            "label `{}` is already used by {first_id} at {}",
                            s.label, first.resource.origin
                        ),
                    );
                    labels.insert(&s.label, first);
                }
                check_command(&mut report, &s.command);
                check_env(&mut report, &s.env, &s.env_files);
                check_process(&mut report, None, None, s.stop.as_ref(), s.limits.as_ref());
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
            Spec::Agent(s) => {
                check_command(&mut report, &s.command);
                check_env(&mut report, &s.env, &s.env_files);
                check_process(
                    &mut report,
                    s.backoff.as_ref(),
                    s.health.as_ref(),
                    s.stop.as_ref(),
                    s.limits.as_ref(),
                );
                check_agent_bindings(&mut report, s, &index);
                check_budget(&mut report, FieldPath::from("spec.budget"), s.budget.as_ref());
            }
            Spec::ModelProvider(s) => {
                check_url(&mut report, spec("url"), &s.url);
                if let Some(service) = &s.service {
                    if !index.contains_key(&ResourceId::new(Kind::Service, service.clone())) {
                        report.error(spec("service"), dangling(Kind::Service, service, &index));
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
                        &mut report,
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
            Spec::Policy(s) => {
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
                check_budget(&mut report, FieldPath::from("spec.budget"), s.budget.as_ref());
            }
            Spec::MemoryRule(s) => check_memory_rule(&mut report, s, &controller_tiers),
            Spec::Controller(s) => {
                if let Some(first) = controller {
                    report.error(
                        FieldPath::from("metadata.name"),
                        format!(
                            "a host has at most one Controller; {} is already declared at {}",
                            first.resource.id(),
                            first.resource.origin
                        ),
                    );
                } else {
                    controller = Some(p);
                }
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
        }
        check_dependencies(&mut report, resource, &index);
    }
    check_cycles(parsed, &index, &mut out);
    // A reference to a document that has errors of its own is not reported again as dangling.
    let unreported: Vec<String> = declared
        .iter()
        .map(|d| format!("{} does not exist in the desired state", d.id))
        .collect();
    out.retain(|f| !unreported.iter().any(|u| f.message.starts_with(u.as_str())));
    // Nor a finding about a field taken out of a spec with errors (reported as decoded).
    out.retain(|f| {
        !parsed.iter().any(|p| {
            p.document == f.document && p.file() == f.file && p.taken_out.iter().any(|t| f.path.0.starts_with(&t.0))
        })
    });
    check_memory_bounces(parsed, &controller_tiers, &mut out);
    out
}

/// Memory rules whose moves form a cycle of tiers (a: working -> long-term, b: long-term ->
/// working) and whose conditions one item can meet together would move that item back and forth
/// on every pass. Each such cycle is reported once, at its rule with the smallest name.
fn check_memory_bounces(parsed: &[Parsed], tiers: &[String], out: &mut Vec<Finding>) {
    use crate::spec::memory_rule::jointly_satisfiable;
    let known = |t: &str| tiers.iter().any(|x| x == t) || t == ARCHIVED_TIER;
    let rules: Vec<(&Parsed, &crate::spec::MemoryRuleSpec, &str, &str)> = parsed
        .iter()
        .filter_map(|p| match &p.resource.spec {
            Spec::MemoryRule(rule) if !rule.suspend => {
                let from = rule.matches.tier.as_deref().filter(|t| known(t))?;
                let to = rule.target_tier(tiers).filter(|t| known(t) && *t != from)?;
                Some((p, rule, from, to))
            }
            _ => None,
        })
        .collect();
    let mut reported: HashSet<Vec<usize>> = HashSet::new();
    // Depth-first from each rule along rules that move on from where the last one moved to.
    fn walk(
        rules: &[(&Parsed, &crate::spec::MemoryRuleSpec, &str, &str)],
        path: &mut Vec<usize>,
        cycles: &mut Vec<Vec<usize>>,
    ) {
        let start = rules[path[0]].2;
        let at = rules[*path.last().expect("a path")].3;
        if at == start {
            cycles.push(path.clone());
            return;
        }
        for (i, rule) in rules.iter().enumerate() {
            let visited_tier = path.iter().any(|&j| rules[j].2 == rule.2);
            if rule.2 == at && !visited_tier && i > path[0] {
                path.push(i);
                walk(rules, path, cycles);
                path.pop();
            }
        }
    }
    let mut cycles = Vec::new();
    for start in 0..rules.len() {
        walk(&rules, &mut vec![start], &mut cycles);
    }
    for cycle in cycles {
        let mut key = cycle.clone();
        key.sort_unstable();
        if !reported.insert(key) {
            continue;
        }
        let matches: Vec<&crate::spec::memory_rule::MemoryMatch> = cycle.iter().map(|&i| &rules[i].1.matches).collect();
        if !jointly_satisfiable(&matches) {
            continue;
        }
        let lead = *cycle
            .iter()
            .min_by_key(|&&i| &rules[i].0.resource.metadata.name)
            .expect("a cycle has rules");
        let moves: Vec<String> = cycle
            .iter()
            .map(|&i| format!("{} ({} -> {})", rules[i].0.resource.id(), rules[i].2, rules[i].3))
            .collect();
        Report {
            parsed: rules[lead].0,
            out,
        }
        .error(
            FieldPath::from("spec.match"),
            format!(
                "these rules would move an item back and forth on every pass: {}; one item can match them all: make their conditions exclusive (e.g. `usedWithin` against `idleFor`, `minUses` against `maxUses`) or suspend one",
                moves.join(", ")
            ),
        );
    }
}

/// Indexes resources by kind and name; a second declaration is an error naming both places.
fn first_declarations<'a>(parsed: &'a [Parsed], out: &mut Vec<Finding>) -> HashMap<ResourceId, &'a Parsed> {
    let mut index: HashMap<ResourceId, &Parsed> = HashMap::new();
    for p in parsed {
        let id = p.resource.id();
        if let Some(first) = index.get(&id) {
            Report { parsed: p, out }.error(
                FieldPath::from("metadata.name"),
                format!("duplicate {id}: also declared at {}", first.resource.origin),
            );
        } else {
            index.insert(id, p);
        }
    }
    index
}

/// A document with errors that declares the same kind and name as another one is a duplicate
/// too (reported at the later of the two).
fn declared_duplicates(index: &HashMap<ResourceId, &Parsed>, declared: &[Declared], out: &mut Vec<Finding>) {
    let mut seen: HashMap<&ResourceId, &crate::spec::Origin> = HashMap::new();
    for d in declared {
        let first = index
            .get(&d.id)
            .map(|p| (&p.resource.origin, Some(*p)))
            .or_else(|| seen.get(&d.id).map(|o| (*o, None)));
        match first {
            None => {
                seen.insert(&d.id, &d.origin);
            }
            Some((origin, parsed)) => {
                let later_is_parsed =
                    parsed.is_some_and(|_| (&origin.file, origin.line) > (&d.origin.file, d.origin.line));
                let (file, document, other) = match parsed.filter(|_| later_is_parsed) {
                    Some(p) => (p.file().to_string(), p.document, &d.origin),
                    None => (d.origin.file.clone(), d.document, origin),
                };
                out.push(Finding {
                    file,
                    document,
                    resource: d.id.to_string(),
                    path: FieldPath::from("metadata.name"),
                    at_key: false,
                    message: format!("duplicate {}: also declared at {other}", d.id),
                });
            }
        }
    }
}

fn tiers(parsed: &[Parsed]) -> Vec<String> {
    parsed
        .iter()
        .find_map(|p| match &p.resource.spec {
            Spec::Controller(c) => Some(c.memory_tiers()),
            _ => None,
        })
        .unwrap_or_else(|| DEFAULT_TIERS.iter().map(|t| t.to_string()).collect())
}

fn dangling(kind: Kind, name: &str, index: &HashMap<ResourceId, &Parsed>) -> String {
    let names: Vec<&str> = index
        .keys()
        .filter(|id| id.kind == kind)
        .map(|id| id.name.as_str())
        .collect();
    let hint = super::yaml::suggest(name, names.iter().copied())
        .map(|s| format!(" (did you mean `{s}`?)"))
        .unwrap_or_default();
    format!("{kind}/{name} does not exist in the desired state{hint}")
}

fn check_command(report: &mut Report<'_>, command: &[String]) {
    match command.first() {
        None => report.error(
            spec("command"),
            "expected the program and its arguments, found an empty list",
        ),
        Some(program) if program.trim().is_empty() => report.error(
            spec("command").index(0),
            "expected a program name or path, found an empty string",
        ),
        Some(_) => {}
    }
}

fn check_env(report: &mut Report<'_>, env: &BTreeMap<String, String>, env_files: &[std::path::PathBuf]) {
    for key in env.keys() {
        if !is_env_name(key) {
            report.key_error(spec("env").key(key.as_str()), format!(
                "expected an environment variable name (letters, digits and `_`, not starting with a digit), found `{key}`"
            ));
        }
    }
    for (i, file) in env_files.iter().enumerate() {
        if file.as_os_str().is_empty() {
            report.error(spec("envFiles").index(i), "expected a file path, found an empty string");
        }
    }
}

fn check_threshold(report: &mut Report<'_>, path: FieldPath, value: Option<u32>) {
    if value == Some(0) {
        report.error(path, "expected a count of at least 1, found 0");
    }
}

fn check_url(report: &mut Report<'_>, path: FieldPath, text: &str) {
    match url::Url::parse(text) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
        Ok(u) => report.error(
            path,
            format!(
                "expected an http:// or https:// URL, found scheme `{}` in `{text}`",
                u.scheme()
            ),
        ),
        Err(e) => report.error(
            path,
            format!("expected an http:// or https:// URL, found `{text}` ({e})"),
        ),
    }
}

fn check_process(
    report: &mut Report<'_>,
    backoff: Option<&Backoff>,
    health: Option<&Probe>,
    stop: Option<&Stop>,
    limits: Option<&Limits>,
) {
    if let Some(b) = backoff {
        if b.initial() > b.max() {
            report.error(
                FieldPath::from("spec.backoff.initial"),
                format!("initial delay {} is longer than the maximum {}", b.initial(), b.max()),
            );
        }
        if let Some(m) = b.multiplier {
            if !(m >= 1.0 && m.is_finite()) {
                report.error(
                    FieldPath::from("spec.backoff.multiplier"),
                    format!("expected a factor of at least 1, found {m}"),
                );
            }
        }
    }
    if let Some(probe) = health {
        let base = FieldPath::from("spec.health");
        match probe.mechanism_count() {
            1 => {}
            0 => report.error(
                base.clone(),
                "expected exactly one of `http`, `tcp` or `exec`, found none",
            ),
            _ => report.error(
                base.clone(),
                "expected exactly one of `http`, `tcp` or `exec`, found several",
            ),
        }
        if let Some(http) = &probe.http {
            check_url(report, base.clone().key("http").key("url"), &http.url);
        }
        if let Some(tcp) = &probe.tcp {
            let valid = tcp
                .address
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
            if !valid {
                report.error(
                    base.clone().key("tcp").key("address"),
                    format!("expected `host:port`, found `{}`", tcp.address),
                );
            }
        }
        if let Some(exec) = &probe.exec {
            if exec.command.first().is_none_or(|c| c.trim().is_empty()) {
                report.error(
                    base.clone().key("exec").key("command"),
                    "expected the program and its arguments, found an empty list",
                );
            }
        }
        check_threshold(report, base.clone().key("failureThreshold"), probe.failure_threshold);
        check_threshold(report, base.clone().key("successThreshold"), probe.success_threshold);
        for (field, value) in [("interval", probe.interval), ("timeout", probe.timeout)] {
            if value.is_some_and(|v| v.is_zero()) {
                report.error(base.clone().key(field), "expected a duration greater than 0");
            }
        }
    }
    if let Some(stop) = stop {
        if stop.signal.is_some() && stop.signal().is_none() {
            report.error(
                FieldPath::from("spec.stop.signal"),
                format!(
                    "expected one of {}, found `{}`",
                    crate::spec::common::STOP_SIGNALS.join(", "),
                    stop.signal.as_deref().unwrap_or_default()
                ),
            );
        }
    }
    if let Some(limits) = limits {
        if let Some(cpu) = limits.cpu {
            if !(cpu.is_finite() && (0.01..=4096.0).contains(&cpu)) {
                report.error(
                    FieldPath::from("spec.limits.cpu"),
                    format!("expected a number of CPU cores from 0.01 to 4096 (e.g. 0.5), found {cpu}"),
                );
            }
        }
        if limits.open_files == Some(0) {
            report.error(
                FieldPath::from("spec.limits.openFiles"),
                "expected at least 1 open file",
            );
        }
        if limits.memory.is_some_and(|m| m.0 < (1 << 20)) {
            report.error(
                FieldPath::from("spec.limits.memory"),
                "expected at least 1Mi: a smaller limit cannot start a process",
            );
        }
    }
}

fn check_budget(report: &mut Report<'_>, path: FieldPath, budget: Option<&crate::spec::common::Budget>) {
    if let Some(spend) = budget.and_then(|b| b.spend_per_day_usd) {
        if !(spend >= 0.0 && spend.is_finite()) {
            report.error(
                path.key("spendPerDayUsd"),
                format!("expected an amount of at least 0, found {spend}"),
            );
        }
    }
}

fn check_agent_bindings(report: &mut Report<'_>, agent: &crate::spec::AgentSpec, index: &HashMap<ResourceId, &Parsed>) {
    let policy = match &agent.policy {
        None => {
            report.error(
                spec("policy"),
                "missing: an agent without a policy binding never starts; expected the name of a Policy",
            );
            None
        }
        Some(name) => match index.get(&ResourceId::new(Kind::Policy, name.clone())) {
            None => {
                report.error(spec("policy"), dangling(Kind::Policy, name, index));
                None
            }
            Some(p) => match &p.resource.spec {
                Spec::Policy(policy) => Some((name, policy)),
                _ => None,
            },
        },
    };
    let Some(route) = &agent.model else { return };
    let refs = std::iter::once((FieldPath::from("spec.model.primary"), &route.primary)).chain(
        route
            .fallbacks
            .iter()
            .enumerate()
            .map(|(i, r)| (FieldPath::from("spec.model.fallbacks").index(i), r)),
    );
    for (path, model_ref) in refs {
        if model_ref.model.trim().is_empty() {
            report.error(
                path.clone().key("model"),
                "expected a model name such as `llama3.2:3b`, found an empty string",
            );
        }
        let provider_id = ResourceId::new(Kind::ModelProvider, model_ref.provider.clone());
        let Some(provider) = index.get(&provider_id) else {
            report.error(
                path.key("provider"),
                dangling(Kind::ModelProvider, &model_ref.provider, index),
            );
            continue;
        };
        let Spec::ModelProvider(provider) = &provider.resource.spec else {
            continue;
        };
        if let Some((policy_name, policy)) = policy {
            if !provider.is_local() && !policy.allows_cloud() {
                report.error(path.key("provider"), format!(
                    "ModelProvider/{} is not local (a cloud escalation) and Policy/{policy_name} denies cloud escalation: remove it from the route or set `cloudEscalation: allow` in the policy",
                    model_ref.provider
                ));
            }
        }
    }
}

fn check_memory_rule(report: &mut Report<'_>, rule: &crate::spec::MemoryRuleSpec, tiers: &[String]) {
    let known = |t: &str| tiers.iter().any(|x| x == t) || t == ARCHIVED_TIER;
    let list = || {
        tiers
            .iter()
            .map(String::as_str)
            .chain([ARCHIVED_TIER])
            .collect::<Vec<_>>()
            .join(", ")
    };
    let unknown = |t: &str| {
        let hint = super::yaml::suggest(t, tiers.iter().map(String::as_str).chain([ARCHIVED_TIER]))
            .map(|s| format!(" (did you mean `{s}`?)"))
            .unwrap_or_default();
        format!("unknown tier `{t}`{hint}: expected one of {}", list())
    };
    let from = match rule.matches.tier.as_deref() {
        None => {
            report.error(
                FieldPath::from("spec.match.tier"),
                format!(
                    "missing: a rule moves items out of one tier; expected one of {}",
                    list()
                ),
            );
            return;
        }
        Some(t) if !known(t) => {
            report.error(FieldPath::from("spec.match.tier"), unknown(t));
            return;
        }
        Some(t) => t,
    };
    for (field, value) in [
        ("minConfidence", rule.matches.min_confidence),
        ("maxConfidence", rule.matches.max_confidence),
    ] {
        if let Some(v) = value {
            if !(0.0..=1.0).contains(&v) {
                report.error(
                    FieldPath::from("spec.match").key(field),
                    format!("expected a confidence from 0 to 1, found {v}"),
                );
            }
        }
    }
    if let Some(ns) = &rule.matches.namespace {
        if ns.is_empty()
            || !ns
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | '*' | '?'))
        {
            report.error(
                FieldPath::from("spec.match.namespace"),
                format!(
                    "expected a namespace or a glob of letters, digits, `-`, `_`, `.`, `/`, `*` and `?`, found `{ns}`"
                ),
            );
        }
    }
    let rank = |t: &str| tiers.iter().position(|x| x == t);
    match (rule.action, rule.target_tier(tiers)) {
        (_, None) => report.error(
            spec("to"),
            format!(
                "there is no tier to {} `{from}` to: give `to` (tiers, lowest first: {})",
                match rule.action {
                    MemoryAction::Promote => "promote",
                    MemoryAction::Demote => "demote",
                    MemoryAction::Archive => "archive",
                },
                list()
            ),
        ),
        (_, Some(to)) if !known(to) => report.error(spec("to"), unknown(to)),
        (MemoryAction::Archive, Some(to)) if to != ARCHIVED_TIER => report.error(
            spec("to"),
            format!("archive moves items to `{ARCHIVED_TIER}`, found `{to}`"),
        ),
        (MemoryAction::Promote, Some(to)) if rank(to).zip(rank(from)).is_none_or(|(t, f)| t <= f) => report.error(
            spec("to"),
            format!("promote must move to a higher tier than `{from}`, found `{to}`"),
        ),
        (MemoryAction::Demote, Some(to)) if rank(to).zip(rank(from)).is_none_or(|(t, f)| t >= f) => report.error(
            spec("to"),
            format!("demote must move to a lower tier than `{from}`, found `{to}`"),
        ),
        _ => {}
    }
}

fn check_dependencies(report: &mut Report<'_>, resource: &Resource, index: &HashMap<ResourceId, &Parsed>) {
    for (i, entry) in resource.spec.depends_on().iter().enumerate() {
        let path = spec("dependsOn").index(i);
        match parse_dependency(entry) {
            Err(message) => report.error(path, message),
            Ok(id) if id == resource.id() => report.error(path, format!("{id} cannot depend on itself")),
            Ok(id) if !index.contains_key(&id) => report.error(path, dangling(id.kind, &id.name, index)),
            Ok(_) => {}
        }
    }
}

/// Finds dependency cycles; each is reported once, at the first resource of the cycle.
fn check_cycles(parsed: &[Parsed], index: &HashMap<ResourceId, &Parsed>, out: &mut Vec<Finding>) {
    let edges: BTreeMap<ResourceId, Vec<(usize, ResourceId)>> = parsed
        .iter()
        .map(|p| {
            let targets = p.resource.spec.depends_on().iter().enumerate();
            let deps = targets
                .filter_map(|(i, e)| parse_dependency(e).ok().map(|id| (i, id)))
                .filter(|(_, id)| index.contains_key(id) && *id != p.resource.id())
                .collect();
            (p.resource.id(), deps)
        })
        .collect();

    #[derive(Clone, Copy, PartialEq)]
    enum State {
        Visiting,
        Done,
    }
    let mut state: HashMap<ResourceId, State> = HashMap::new();
    let mut reported: HashSet<Vec<ResourceId>> = HashSet::new();

    // Iterative DFS, so a long dependency chain cannot overflow the stack.
    for start in edges.keys() {
        if state.contains_key(start) {
            continue;
        }
        let mut stack: Vec<(ResourceId, usize)> = vec![(start.clone(), 0)];
        state.insert(start.clone(), State::Visiting);
        while let Some((node, next)) = stack.last().cloned() {
            let deps = edges.get(&node).map(Vec::as_slice).unwrap_or(&[]);
            if next >= deps.len() {
                state.insert(node, State::Done);
                stack.pop();
                continue;
            }
            stack.last_mut().expect("non-empty").1 += 1;
            let (_, target) = &deps[next];
            match state.get(target) {
                None => {
                    state.insert(target.clone(), State::Visiting);
                    stack.push((target.clone(), 0));
                }
                Some(State::Visiting) => {
                    let from = stack.iter().position(|(id, _)| id == target).expect("on the stack");
                    let cycle: Vec<ResourceId> = stack[from..].iter().map(|(id, _)| id.clone()).collect();
                    report_cycle(cycle, &edges, index, &mut reported, out);
                }
                Some(State::Done) => {}
            }
        }
    }
}

fn report_cycle(
    mut cycle: Vec<ResourceId>,
    edges: &BTreeMap<ResourceId, Vec<(usize, ResourceId)>>,
    index: &HashMap<ResourceId, &Parsed>,
    reported: &mut HashSet<Vec<ResourceId>>,
    out: &mut Vec<Finding>,
) {
    // Rotate so the smallest id leads: the same cycle found from another start reads the same.
    let lead = cycle
        .iter()
        .enumerate()
        .min_by_key(|(_, id)| *id)
        .map(|(i, _)| i)
        .unwrap_or(0);
    cycle.rotate_left(lead);
    if !reported.insert(cycle.clone()) {
        return;
    }
    let first = &cycle[0];
    let next = cycle.get(1).unwrap_or(first);
    let position = edges[first]
        .iter()
        .find(|(_, id)| id == next)
        .map(|(i, _)| *i)
        .unwrap_or(0);
    let names: Vec<String> = cycle
        .iter()
        .chain(std::iter::once(first))
        .map(ToString::to_string)
        .collect();
    let parsed = index[first];
    Report { parsed, out }.error(
        spec("dependsOn").index(position),
        format!("dependency cycle: {}", names.join(" -> ")),
    );
}
