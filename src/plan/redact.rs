//! Secrets in specs: values of env keys that look secret, and the contents of env files, are
//! replaced by `(redacted <fingerprint>)`. The fingerprint is a keyed hash (HMAC-SHA256 with a
//! key kept in the state dir), so a changed secret shows as a changed line in diffs without the
//! value, or a guessable plain hash of it, ever being printed or stored. Pure: the key and the
//! env files' contents are inputs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::spec::common::is_secret_env_name;

/// A keyed fingerprint of a secret: 12 hex digits.
pub fn fingerprint(key: &[u8], secret: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(secret);
    hex::encode(&mac.finalize().into_bytes()[..6])
}

pub fn redacted(key: &[u8], secret: &[u8]) -> String {
    format!("(redacted {})", fingerprint(key, secret))
}

/// The spec as it may be shown and stored: secret env values and env file contents replaced by
/// fingerprints. `env_files` maps each env file to its content (None when unreadable).
pub fn render_spec(spec: Value, key: &[u8], env_files: &BTreeMap<PathBuf, Option<Vec<u8>>>) -> Value {
    let mut spec = spec;
    if let Some(Value::Object(env)) = spec.get_mut("env") {
        for (name, value) in env.iter_mut() {
            if is_secret_env_name(name) {
                let text = value.as_str().unwrap_or_default().as_bytes().to_vec();
                *value = Value::String(redacted(key, &text));
            }
        }
    }
    if let Some(Value::Array(files)) = spec.get("envFiles").cloned() {
        let shown: serde_json::Map<String, Value> = files
            .iter()
            .filter_map(Value::as_str)
            .map(|path| {
                let content = env_files.get(&PathBuf::from(path)).cloned().flatten();
                let shown = match content {
                    Some(bytes) => redacted(key, &bytes),
                    None => "(unreadable)".to_string(),
                };
                (path.to_string(), Value::String(shown))
            })
            .collect();
        spec["envFiles"] = Value::Object(shown);
    }
    spec
}

/// SHA-256 of the rendered spec's canonical JSON (keys sorted): what "the spec changed" means.
pub fn spec_hash(rendered: &Value) -> String {
    hex::encode(Sha256::digest(
        serde_json::to_vec(rendered).expect("JSON values serialize"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_are_replaced_and_changes_still_show() {
        let key = b"local key";
        let files = BTreeMap::from([(PathBuf::from("/etc/web.env"), Some(b"DB_PASSWORD=hunter2\n".to_vec()))]);
        let spec =
            json!({"command": ["web"], "env": {"PORT": "80", "API_TOKEN": "s3cret"}, "envFiles": ["/etc/web.env"]});
        let shown = render_spec(spec.clone(), key, &files);
        let text = shown.to_string();
        assert!(!text.contains("s3cret") && !text.contains("hunter2"), "{text}");
        assert_eq!(shown["env"]["PORT"], "80");
        assert!(shown["env"]["API_TOKEN"].as_str().unwrap().starts_with("(redacted "));
        assert!(shown["envFiles"]["/etc/web.env"]
            .as_str()
            .unwrap()
            .starts_with("(redacted "));

        let mut changed = spec.clone();
        changed["env"]["API_TOKEN"] = json!("rotated");
        let shown_changed = render_spec(changed, key, &files);
        assert_ne!(shown["env"]["API_TOKEN"], shown_changed["env"]["API_TOKEN"]);
        assert_ne!(spec_hash(&shown), spec_hash(&shown_changed));
        // Another host's key gives other fingerprints: they cannot be compared across hosts.
        assert_ne!(
            render_spec(spec, b"other key", &files)["env"]["API_TOKEN"],
            shown["env"]["API_TOKEN"]
        );
    }
}
