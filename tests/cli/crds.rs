use crate::support::*;

#[test]
fn committed_schemas_are_current() {
    let sandbox = Sandbox::bare_dir();
    let dir = project_path("crds");
    let run = sandbox.run(&["crds", "--check", "--dir", dir.to_str().unwrap()]);
    assert_eq!(run.code, 0, "crds/ is stale; run `cargo run -- crds`:\n{}", run.stdout);
}

#[test]
fn crds_writes_one_schema_per_kind_and_check_notices_staleness() {
    let sandbox = Sandbox::bare_dir();
    let dir = sandbox.root().join("crds");
    let run = sandbox.run(&["crds", "--dir", dir.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{run:?}");
    for kind in [
        "service",
        "launchagent",
        "agent",
        "modelprovider",
        "policy",
        "memoryrule",
        "controller",
    ] {
        let text = std::fs::read_to_string(dir.join(format!("{kind}.schema.json"))).unwrap();
        let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(schema["properties"]["apiVersion"]["const"], "mirror.os/v1");
        assert_eq!(
            schema["properties"]["spec"]["additionalProperties"], false,
            "{kind}: unknown fields must be rejected"
        );
    }
    std::fs::write(dir.join("service.schema.json"), "{}").unwrap();
    let run = sandbox.run(&["crds", "--check", "--dir", dir.to_str().unwrap()]);
    assert_eq!(run.code, 1);
    assert!(
        run.stdout.contains("stale:") && run.stdout.contains("service.schema.json"),
        "{}",
        run.stdout
    );
}

/// Editors check files against these schemas: every example document must pass its kind's
/// schema and the all-kinds schema, and a misspelled field must fail both.
#[test]
fn example_documents_pass_their_schemas_and_typos_fail_them() {
    let load = |name: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(project_path(&format!("crds/{name}"))).unwrap()).unwrap()
    };
    let all_kinds = jsonschema::validator_for(&load("mirror.os.schema.json")).unwrap();
    let mut checked = 0;
    for entry in std::fs::read_dir(project_path("desired")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value: serde_json::Value = serde::Deserialize::deserialize(document).unwrap();
            let kind = value["kind"].as_str().unwrap().to_ascii_lowercase();
            let schema = jsonschema::validator_for(&load(&format!("{kind}.schema.json"))).unwrap();
            let errors: Vec<String> = schema.iter_errors(&value).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{kind}: {errors:?}");
            assert!(all_kinds.is_valid(&value), "{kind} fails the all-kinds schema");
            let mut typo = value.clone();
            typo["spec"]["comand"] = serde_json::json!(["x"]);
            assert!(!schema.is_valid(&typo), "{kind}: a misspelled field passes the schema");
            assert!(
                !all_kinds.is_valid(&typo),
                "{kind}: a misspelled field passes the all-kinds schema"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 13);
}
