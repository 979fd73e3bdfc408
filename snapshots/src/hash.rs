//! Content hashes: the sha256 checksums of the manifest and the short hash that identifies a
//! configuration (so a resume can check it continues the same experiment).

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The first 16 hex characters of the sha256 of the compact JSON of `config`.
///
/// Object keys are sorted first (recursively), so the hash does not depend on insertion order
/// even if some crate in the build turns on serde_json's `preserve_order`.
pub fn config_hash(config: &Value) -> String {
    let compact = canonical(config).to_string();
    let mut hex = sha256_hex(compact.as_bytes());
    hex.truncate(16);
    hex
}

/// The config hash that ties every file of a run to its `config.json`: [`config_hash`] of the
/// config without its top-level `steps`, which a resume may change (`train --resume --steps N`)
/// without changing any snapshot already written, and without `kernel`, a record of which
/// matrix kernel trained the run that `train` adds when it creates the run directory.
pub fn run_config_hash(config: &Value) -> String {
    match config {
        Value::Object(map) if NOT_HASHED.iter().any(|k| map.contains_key(*k)) => {
            let mut map = map.clone();
            for key in NOT_HASHED {
                map.remove(key);
            }
            config_hash(&Value::Object(map))
        }
        other => config_hash(other),
    }
}

/// The config keys excluded from [`run_config_hash`].
const NOT_HASHED: [&str; 2] = ["steps", "kernel"];

/// `value` with the keys of every object in sorted order.
fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let sorted: Map<String, Value> = keys
                .into_iter()
                .map(|k| (k.clone(), canonical(&map[k])))
                .collect();
            Value::Object(sorted)
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sha256_of_empty_input_is_the_known_value() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn config_hash_is_short_stable_and_sensitive() {
        let a = json!({"lr": 0.001, "model": {"d_model": 2, "n_heads": 2}, "seed": 1});
        let b = json!({"seed": 1, "model": {"n_heads": 2, "d_model": 2}, "lr": 0.001});
        let c = json!({"lr": 0.001, "model": {"d_model": 2, "n_heads": 2}, "seed": 2});
        assert_eq!(config_hash(&a).len(), 16);
        assert_eq!(config_hash(&a), config_hash(&b));
        assert_ne!(config_hash(&a), config_hash(&c));
        let expected = sha256_hex(br#"{"lr":0.001,"model":{"d_model":2,"n_heads":2},"seed":1}"#);
        assert_eq!(config_hash(&a), expected[..16]);
    }

    #[test]
    fn run_config_hash_ignores_only_the_step_count() {
        let a = json!({"lr": 0.001, "steps": 100, "seed": 1});
        let b = json!({"lr": 0.001, "steps": 900, "seed": 1});
        let c = json!({"lr": 0.001, "steps": 100, "seed": 2});
        assert_eq!(run_config_hash(&a), run_config_hash(&b));
        assert_ne!(run_config_hash(&a), run_config_hash(&c));
        assert_eq!(
            run_config_hash(&a),
            config_hash(&json!({"lr": 0.001, "seed": 1}))
        );
    }
}
