//! tokenizer_config.json as the builders without tokenizer.json read it: flags, and
//! special tokens given as a string or as an AddedToken's fields.

use std::path::Path;

/// `{dir}/tokenizer_config.json`, or an empty object where there is none (each field then
/// takes its class's default).
pub fn read(dir: &Path) -> serde_json::Value {
    std::fs::read_to_string(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .unwrap_or_default()
}

pub fn flag(cfg: &serde_json::Value, key: &str, default: bool) -> bool {
    cfg[key].as_bool().unwrap_or(default)
}

/// A token: a string, or an AddedToken's fields with its `content`.
pub fn token(cfg: &serde_json::Value, key: &str, default: &str) -> String {
    let v = &cfg[key];
    v.as_str()
        .or_else(|| v["content"].as_str())
        .unwrap_or(default)
        .to_string()
}
