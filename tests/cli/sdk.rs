//! The official client SDKs (`openai`, `ollama` from PyPI), unmodified, inside an enrolled and
//! contained agent: they reach the bus from the agent's environment alone (no base URL, host
//! or key in the code). Needs a Python with those SDKs (`tests/sdk-requirements.txt`), named by
//! `MIRROR_TEST_SDK_PYTHON`; `.ci/run` makes one and runs these.

use std::time::Duration;

use crate::daemon::Daemon;
use crate::support::*;

fn sdk_python() -> String {
    std::env::var("MIRROR_TEST_SDK_PYTHON")
        .expect("MIRROR_TEST_SDK_PYTHON names a python with the packages of tests/sdk-requirements.txt")
}

#[test]
#[cfg_attr(
    not(mirror_ci_parts),
    ignore = "needs the official SDKs: MIRROR_TEST_SDK_PYTHON=<python with tests/sdk-requirements.txt>"
)]
fn unmodified_openai_and_ollama_clients_reach_the_bus_from_the_agents_environment() {
    let python = sdk_python();
    let sandbox = Sandbox::new();
    let _cleanup = Cleanup(sandbox.root().to_path_buf());
    let fake = project_path("scripts/fake-llm").display().to_string();
    let agent = project_path("tests/fixtures/sdk_agent.py").display().to_string();
    let (llm, bus) = (free_port(), free_port());
    sandbox.write(
        "host.yaml",
        format!(
            "apiVersion: mirror.os/v1\nkind: Service\nmetadata: {{name: llm}}\nspec:\n  command: [python3, {fake:?}, --port, \"{llm}\", --name, solo]\n---\napiVersion: mirror.os/v1\nkind: ModelProvider\nmetadata: {{name: solo}}\nspec:\n  api: ollama\n  url: http://127.0.0.1:{llm}\n  service: llm\n---\napiVersion: mirror.os/v1\nkind: Policy\nmetadata: {{name: p}}\nspec: {{}}\n---\napiVersion: mirror.os/v1\nkind: Agent\nmetadata: {{name: sdk}}\nspec:\n  command: [{python:?}, {agent:?}]\n  policy: p\n  model: {{primary: {{provider: solo, model: \"llama3.2:1b\"}}}}\n  dependsOn: [llm]\n---\napiVersion: mirror.os/v1\nkind: Controller\nmetadata: {{name: main}}\nspec:\n  bus: {{address: \"127.0.0.1:{bus}\"}}\n"
        ),
    );
    sandbox.commit("an agent on the official SDKs");
    let _daemon = Daemon::start(&sandbox, &[]).ready(&sandbox);
    let results = sandbox.root().join("state/sandboxes/sdk/sdk.json");
    wait_for("the SDK agent's results", Duration::from_secs(60), || results.exists());
    let results: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&results).unwrap()).unwrap();
    assert_eq!(results.len(), 4, "{results:?}");
    for (call, outcome) in &results {
        let outcome = outcome.as_str().unwrap();
        assert!(
            outcome.starts_with("ok: ") && outcome.contains("[solo] mirror says hello"),
            "{call}: {outcome}"
        );
    }
}
