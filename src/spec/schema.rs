//! JSON Schemas of the kinds, generated from the types (what `mirrorctl crds` writes).

use schemars::{generate::SchemaSettings, JsonSchema};
use serde_json::{json, Map, Value};

use super::{
    AgentSpec, ControllerSpec, Kind, LaunchAgentSpec, MemoryRuleSpec, ModelProviderSpec, ObjectMeta, PolicySpec,
    ServiceSpec, API_VERSION,
};

/// File name of the schema that accepts a document of any kind (for multi-kind files).
pub const ALL_KINDS_SCHEMA_FILE: &str = "mirror.os.schema.json";

fn spec_schema<T: JsonSchema>() -> (Value, Map<String, Value>) {
    let generator = SchemaSettings::draft2020_12().into_generator();
    let mut schema = generator.into_root_schema_for::<T>().to_value();
    let object = schema.as_object_mut().expect("a schema is an object");
    let defs = match object.remove("$defs") {
        Some(Value::Object(defs)) => defs,
        _ => Map::new(),
    };
    object.remove("$schema");
    (schema, defs)
}

fn kind_spec(kind: Kind) -> (Value, Map<String, Value>) {
    match kind {
        Kind::Service => spec_schema::<ServiceSpec>(),
        Kind::LaunchAgent => spec_schema::<LaunchAgentSpec>(),
        Kind::Agent => spec_schema::<AgentSpec>(),
        Kind::ModelProvider => spec_schema::<ModelProviderSpec>(),
        Kind::Policy => spec_schema::<PolicySpec>(),
        Kind::MemoryRule => spec_schema::<MemoryRuleSpec>(),
        Kind::Controller => spec_schema::<ControllerSpec>(),
    }
}

/// The envelope (apiVersion, kind, metadata, spec) for one kind, spec inlined, shared
/// definitions under `$defs`.
fn envelope(kind: Kind, defs: &mut Map<String, Value>) -> Value {
    let (spec, spec_defs) = kind_spec(kind);
    let (metadata, meta_defs) = spec_schema::<ObjectMeta>();
    defs.extend(spec_defs);
    defs.extend(meta_defs);
    let mut metadata = metadata;
    metadata["properties"]["name"]["pattern"] = json!("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$");
    json!({
        "title": kind.as_str(),
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": false,
        "properties": {
            "apiVersion": {"const": API_VERSION},
            "kind": {"const": kind.as_str()},
            "metadata": metadata,
            "spec": spec,
        }
    })
}

fn document(id: &str, title: &str, mut body: Value, defs: Map<String, Value>) -> Value {
    let object = body.as_object_mut().expect("object");
    let mut out = Map::new();
    out.insert("$schema".into(), json!("https://json-schema.org/draft/2020-12/schema"));
    out.insert("$id".into(), json!(id));
    out.insert("title".into(), json!(title));
    for (k, v) in std::mem::take(object) {
        out.entry(k).or_insert(v);
    }
    if !defs.is_empty() {
        out.insert("$defs".into(), Value::Object(defs));
    }
    Value::Object(out)
}

/// The schema of one kind.
pub fn kind_schema(kind: Kind) -> Value {
    let mut defs = Map::new();
    let body = envelope(kind, &mut defs);
    document(
        &format!("https://mirror.os/schemas/v1/{}", kind.schema_file()),
        &format!("{API_VERSION} {kind}"),
        body,
        defs,
    )
}

/// A schema accepting a document of any kind, chosen by its `kind` field.
pub fn all_kinds_schema() -> Value {
    let mut defs = Map::new();
    let branches: Vec<Value> = Kind::ALL
        .into_iter()
        .map(|kind| {
            let body = envelope(kind, &mut defs);
            json!({"if": {"properties": {"kind": {"const": kind.as_str()}}, "required": ["kind"]}, "then": body})
        })
        .collect();
    let kinds: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
    let body = json!({
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"apiVersion": {"const": API_VERSION}, "kind": {"enum": kinds}},
        "allOf": branches,
    });
    document(
        &format!("https://mirror.os/schemas/v1/{ALL_KINDS_SCHEMA_FILE}"),
        &format!("{API_VERSION} (any kind)"),
        body,
        defs,
    )
}

/// Every schema file of `crds/`: (file name, pretty JSON with a final newline).
pub fn all_schema_files() -> Vec<(String, String)> {
    let render = |v: &Value| serde_json::to_string_pretty(v).expect("serializable") + "\n";
    let mut files: Vec<(String, String)> = Kind::ALL
        .into_iter()
        .map(|k| (k.schema_file(), render(&kind_schema(k))))
        .collect();
    files.push((ALL_KINDS_SCHEMA_FILE.to_string(), render(&all_kinds_schema())));
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An agent runs as a Service: every field the two kinds share must mean the same (the same
    /// schema, docs included), so a change to one that is not made to the other fails here.
    #[test]
    fn the_fields_agents_share_with_services_stay_in_step() {
        let properties = |kind| {
            let (schema, _) = kind_spec(kind);
            schema["properties"].as_object().cloned().expect("an object schema")
        };
        let (service, agent) = (properties(Kind::Service), properties(Kind::Agent));
        let shared: Vec<&String> = service.keys().filter(|k| agent.contains_key(*k)).collect();
        assert!(
            shared.len() >= 10,
            "an agent shares most of a Service's fields: {shared:?}"
        );
        let differing: Vec<&String> = shared
            .into_iter()
            // `command` is required of a Service, optional for an agent (a default program).
            .filter(|field| *field != "command" && service[*field] != agent[*field])
            .collect();
        assert_eq!(
            differing,
            Vec::<&String>::new(),
            "fields that differ between Service and Agent"
        );
        // What a Service has that an agent does not is on purpose: an agent works in its
        // sandbox directory. Say so here when it changes.
        let only_service: Vec<&str> = service
            .keys()
            .filter(|k| !agent.contains_key(*k))
            .map(String::as_str)
            .collect();
        assert_eq!(only_service, ["workingDir"], "fields only a Service has");
    }
}
