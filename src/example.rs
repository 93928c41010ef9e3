//! The example desired state of `desired/`, embedded so that `mirrorctl init` works offline.

/// (path inside a new repository, content). A test checks this list against `desired/`.
pub const FILES: &[(&str, &str)] = &[
    ("desired/controller.yaml", include_str!("../desired/controller.yaml")),
    ("desired/services.yaml", include_str!("../desired/services.yaml")),
    ("desired/launch-agents.yaml", include_str!("../desired/launch-agents.yaml")),
    ("desired/providers.yaml", include_str!("../desired/providers.yaml")),
    ("desired/agents.yaml", include_str!("../desired/agents.yaml")),
    ("desired/policies.yaml", include_str!("../desired/policies.yaml")),
    ("desired/memory-rules.yaml", include_str!("../desired/memory-rules.yaml")),
];
