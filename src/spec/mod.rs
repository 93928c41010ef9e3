//! The desired-state format: resource kinds as plain serde + schemars types. No I/O here;
//! defaults are methods on the types so that "what the user wrote" stays visible.

pub mod agent;
pub mod common;
pub mod controller;
pub mod launch_agent;
pub mod memory_rule;
pub mod policy;
pub mod provider;
pub mod schema;
pub mod service;

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use agent::AgentSpec;
pub use controller::ControllerSpec;
pub use launch_agent::LaunchAgentSpec;
pub use memory_rule::MemoryRuleSpec;
pub use policy::PolicySpec;
pub use provider::ModelProviderSpec;
pub use service::ServiceSpec;

pub const API_VERSION: &str = "mirror.os/v1";

/// Annotation that keeps an object from ever being pruned.
pub const PRUNE_ANNOTATION: &str = "mirror.os/prune";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Kind {
    Service,
    LaunchAgent,
    Agent,
    ModelProvider,
    Policy,
    MemoryRule,
    Controller,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Service,
        Kind::LaunchAgent,
        Kind::Agent,
        Kind::ModelProvider,
        Kind::Policy,
        Kind::MemoryRule,
        Kind::Controller,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::LaunchAgent => "LaunchAgent",
            Kind::Agent => "Agent",
            Kind::ModelProvider => "ModelProvider",
            Kind::Policy => "Policy",
            Kind::MemoryRule => "MemoryRule",
            Kind::Controller => "Controller",
        }
    }

    pub fn parse(text: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == text)
    }

    /// File stem of this kind's JSON Schema in `crds/`.
    pub fn schema_file(self) -> String {
        format!("{}.schema.json", self.as_str().to_ascii_lowercase())
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `Kind/name`: what identifies a resource in the desired state.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ResourceId {
    pub kind: Kind,
    pub name: String,
}

impl ResourceId {
    pub fn new(kind: Kind, name: impl Into<String>) -> Self {
        ResourceId {
            kind,
            name: name.into(),
        }
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    /// Lowercase DNS label (RFC 1123), unique per kind.
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// e.g. `mirror.os/prune: disabled`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl ObjectMeta {
    /// False when the object carries `mirror.os/prune: disabled`.
    pub fn prune_allowed(&self) -> bool {
        self.annotations.get(PRUNE_ANNOTATION).map(String::as_str) != Some("disabled")
    }
}

// Variants differ in size, but a desired state holds thousands of specs at most: boxing would
// only add indirection to every match.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Spec {
    Service(ServiceSpec),
    LaunchAgent(LaunchAgentSpec),
    Agent(AgentSpec),
    ModelProvider(ModelProviderSpec),
    Policy(PolicySpec),
    MemoryRule(MemoryRuleSpec),
    Controller(ControllerSpec),
}

impl Spec {
    pub fn kind(&self) -> Kind {
        match self {
            Spec::Service(_) => Kind::Service,
            Spec::LaunchAgent(_) => Kind::LaunchAgent,
            Spec::Agent(_) => Kind::Agent,
            Spec::ModelProvider(_) => Kind::ModelProvider,
            Spec::Policy(_) => Kind::Policy,
            Spec::MemoryRule(_) => Kind::MemoryRule,
            Spec::Controller(_) => Kind::Controller,
        }
    }

    /// The `dependsOn` list of kinds that have one.
    pub fn depends_on(&self) -> &[String] {
        match self {
            Spec::Service(s) => &s.depends_on,
            Spec::LaunchAgent(s) => &s.depends_on,
            Spec::Agent(s) => &s.depends_on,
            _ => &[],
        }
    }
}

/// Where a resource was declared: file (relative to the repository root), line and column of
/// its document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Origin {
    pub file: String,
    pub line: u32,
    pub column: u32,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// One validated resource of the desired state.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Resource {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub kind: Kind,
    pub metadata: ObjectMeta,
    pub spec: Spec,
    #[serde(skip)]
    pub origin: Origin,
}

impl Resource {
    pub fn id(&self) -> ResourceId {
        ResourceId::new(self.kind, self.metadata.name.clone())
    }
    pub fn name(&self) -> &str {
        &self.metadata.name
    }
}

/// Parses a `dependsOn` entry: `name` (a Service), `Service/name` or `Agent/name`.
pub fn parse_dependency(entry: &str) -> Result<ResourceId, String> {
    match entry.split_once('/') {
        None => Ok(ResourceId::new(Kind::Service, entry)),
        Some((kind, name)) => match Kind::parse(kind) {
            Some(kind @ (Kind::Service | Kind::Agent)) => Ok(ResourceId::new(kind, name)),
            _ => Err(format!(
                "expected `name`, `Service/name` or `Agent/name`, found `{entry}` (only services and agents can be depended on)"
            )),
        },
    }
}
