//! The example desired state of `desired/`, embedded so that `mirrorctl init` works offline.

/// (path inside a new repository, content). A test checks this list against `desired/`.
pub const FILES: &[(&str, &str)] = &[
    ("desired/controller.yaml", include_str!("../desired/controller.yaml")),
    ("desired/services.yaml", include_str!("../desired/services.yaml")),
    (
        "desired/launch-agents.yaml",
        include_str!("../desired/launch-agents.yaml"),
    ),
    ("desired/providers.yaml", include_str!("../desired/providers.yaml")),
    ("desired/agents.yaml", include_str!("../desired/agents.yaml")),
    ("desired/policies.yaml", include_str!("../desired/policies.yaml")),
    (
        "desired/memory-rules.yaml",
        include_str!("../desired/memory-rules.yaml"),
    ),
];

#[cfg(test)]
mod tests {
    use super::FILES;
    use crate::source::{load_texts, LoadError};

    #[test]
    fn embedded_files_are_exactly_the_desired_directory() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("desired");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| format!("desired/{}", e.unwrap().file_name().to_string_lossy()))
            .collect();
        let mut embedded: Vec<String> = FILES.iter().map(|(p, _)| p.to_string()).collect();
        on_disk.sort();
        embedded.sort();
        assert_eq!(embedded, on_disk, "add new desired/ files to src/example.rs");
    }

    #[test]
    fn the_example_validates_in_memory() {
        let state = load_texts(FILES.iter().map(|(p, c)| (*p, c.as_bytes()))).unwrap();
        assert_eq!(state.resources.len(), 13);
        assert_eq!(state.controller().bus_address().to_string(), "127.0.0.1:11500");
    }

    /// Deterministic xorshift, so a failure reproduces.
    fn next(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    /// No input may panic: every prefix of every example, and thousands of byte mutations, load
    /// to either a state or diagnostics.
    #[test]
    fn mangled_input_never_panics() {
        let mut cases = 0;
        for (path, content) in FILES {
            let bytes = content.as_bytes();
            for end in (0..bytes.len()).step_by(3) {
                let _ = load_texts([(*path, &bytes[..end])]);
                cases += 1;
            }
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let alphabet = b"{}[]:-,&*!|>'\"#%@` \n\t\x00\xff0123456789abc.~?";
        for _ in 0..4000 {
            let (path, content) = FILES[(next(&mut seed) % FILES.len() as u64) as usize];
            let mut bytes = content.as_bytes().to_vec();
            for _ in 0..1 + next(&mut seed) % 4 {
                let at = (next(&mut seed) % bytes.len() as u64) as usize;
                let replacement = alphabet[(next(&mut seed) % alphabet.len() as u64) as usize];
                match next(&mut seed) % 3 {
                    0 => bytes[at] = replacement,
                    1 => bytes.insert(at, replacement),
                    _ => {
                        bytes.remove(at);
                    }
                }
            }
            match load_texts([(path, bytes.as_slice())]) {
                Ok(_) => {}
                Err(LoadError::Invalid { diagnostics, .. }) => {
                    assert!(!diagnostics.is_empty());
                    for d in diagnostics {
                        assert!(d.line >= 1 && d.column >= 1, "{d}");
                    }
                }
                Err(e) => panic!("unexpected error kind: {e}"),
            }
            cases += 1;
        }
        assert!(cases > 5000);
    }
}
