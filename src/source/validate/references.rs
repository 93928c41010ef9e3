//! References between resources: each kind and name declared once, names that must exist
//! (dependencies, an agent's policy and models), and dependency cycles.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::{spec, Finding, Report};
use crate::source::decode::{Declared, Parsed};
use crate::source::yaml::FieldPath;
use crate::spec::{parse_dependency, Kind, Resource, ResourceId, Spec};

/// Indexes resources by kind and name; a second declaration is an error naming both places.
pub(super) fn first_declarations<'a>(parsed: &'a [Parsed], out: &mut Vec<Finding>) -> HashMap<ResourceId, &'a Parsed> {
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
pub(super) fn declared_duplicates(index: &HashMap<ResourceId, &Parsed>, declared: &[Declared], out: &mut Vec<Finding>) {
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

pub(super) fn dangling(kind: Kind, name: &str, index: &HashMap<ResourceId, &Parsed>) -> String {
    let names: Vec<&str> = index
        .keys()
        .filter(|id| id.kind == kind)
        .map(|id| id.name.as_str())
        .collect();
    let hint = crate::source::yaml::suggest(name, names.iter().copied())
        .map(|s| format!(" (did you mean `{s}`?)"))
        .unwrap_or_default();
    format!("{kind}/{name} does not exist in the desired state{hint}")
}

pub(super) fn check_agent_bindings(
    report: &mut Report<'_>,
    agent: &crate::spec::AgentSpec,
    index: &HashMap<ResourceId, &Parsed>,
) {
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

pub(super) fn check_dependencies(report: &mut Report<'_>, resource: &Resource, index: &HashMap<ResourceId, &Parsed>) {
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
pub(super) fn check_cycles(parsed: &[Parsed], index: &HashMap<ResourceId, &Parsed>, out: &mut Vec<Finding>) {
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
