//! `--model` as a directory or as a Hugging Face hub id (`bert-base-uncased`,
//! `sentence-transformers/all-MiniLM-L6-v2`), resolved to a local snapshot folder that
//! the loader reads like any model directory.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::error::user;
use crate::hub::{self, HubRepo, Kind};

/// What a model directory must hold, each as alternatives in the loader's order of
/// preference: config, weights, tokenizer.
const REQUIRED: &[&[&[&str]]] = &[
    &[&["config.json"]],
    &[&["model.safetensors"], &["pytorch_model.bin"]],
    &[
        &["tokenizer.json"],
        &["vocab.txt"],
        &["vocab.json", "merges.txt"],
        &["spm.model"],
    ],
];

/// Read when present: `do_lower_case` for a vocab.txt or spm.model tokenizer, special
/// tokens.
const OPTIONAL: &[&str] = &["tokenizer_config.json", "special_tokens_map.json"];

/// The directory `--model` names: an existing path as given, otherwise the snapshot of
/// the hub repository, from the cache or downloaded into it.
pub fn resolve(model: &Path, revision: Option<&str>) -> Result<PathBuf> {
    if model.exists() {
        if let Some(rev) = revision {
            crate::user_bail!(
                "--revision {rev} applies to models from the Hugging Face hub; {} is a local path",
                model.display()
            );
        }
        return Ok(model.to_path_buf());
    }
    let id = model
        .to_str()
        .filter(|s| hub::is_repo_id(s))
        .ok_or_else(|| {
            user(format!(
                "--model {}: no such directory, nor a Hugging Face model id (org/name)",
                model.display()
            ))
        })?;
    let repo = HubRepo::new(id, Kind::Model, revision);
    // `--model` may be a mistyped directory that happens to look like a hub id.
    let not_local = |e: anyhow::Error| {
        user(format!(
            "{e} (no directory {} exists either)",
            model.display()
        ))
    };
    let cache = hub::cache_dir()?;
    let cached = repo.cached_snapshot(&cache);
    if let Some(dir) = &cached {
        if missing(|f| dir.join(f).is_file()).is_empty() {
            return Ok(dir.clone());
        }
    }
    if hub::offline() {
        let lacking = match &cached {
            Some(dir) => missing(|f| dir.join(f).is_file()),
            None => missing(|_| false),
        };
        return Err(not_local(repo.offline_error(&cache, &lacking)));
    }
    eprintln!("fetching {} from the Hugging Face hub", repo.describe());
    let (sha, files) = repo.list_remote().map_err(not_local)?;
    let on_hub = |f: &str| files.iter().any(|g| g == f);
    let absent = missing(on_hub);
    if !absent.is_empty() {
        crate::user_bail!(
            "{}: the repository has no {}; is it a BERT, RoBERTa, ELECTRA or DeBERTa model?",
            repo.describe(),
            absent.join(", ")
        );
    }
    let mut wanted: Vec<String> = REQUIRED
        .iter()
        .filter_map(|alts| alts.iter().find(|alt| alt.iter().all(|f| on_hub(f))))
        .flat_map(|alt| alt.iter().map(|f| f.to_string()))
        .collect();
    wanted.extend(OPTIONAL.iter().filter(|f| on_hub(f)).map(|f| f.to_string()));
    repo.download(&sha, &wanted)
}

/// The required files `has` lacks, each written with its alternatives.
fn missing(has: impl Fn(&str) -> bool) -> Vec<String> {
    REQUIRED
        .iter()
        .filter(|alts| !alts.iter().any(|alt| alt.iter().all(|f| has(f))))
        .map(|alts| {
            let names: Vec<String> = alts.iter().map(|alt| alt.join(" with ")).collect();
            match names.split_first() {
                Some((first, [])) => first.clone(),
                Some((first, rest)) => format!("{first} (or {})", rest.join(", or ")),
                None => String::new(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_name_their_alternatives() {
        assert_eq!(
            missing(|_| false),
            [
                "config.json",
                "model.safetensors (or pytorch_model.bin)",
                "tokenizer.json (or vocab.txt, or vocab.json with merges.txt, or spm.model)"
            ]
        );
        let roberta = [
            "config.json",
            "pytorch_model.bin",
            "vocab.json",
            "merges.txt",
        ];
        assert!(missing(|f| roberta.contains(&f)).is_empty());
        let half = ["config.json", "model.safetensors", "vocab.json"];
        assert_eq!(missing(|f| half.contains(&f)).len(), 1);
        // deberta-v3's files.
        let v3 = ["config.json", "pytorch_model.bin", "spm.model"];
        assert!(missing(|f| v3.contains(&f)).is_empty());
    }

    #[test]
    fn a_local_directory_stays_as_it_is() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(resolve(tmp.path(), None).unwrap(), tmp.path());
        let err = resolve(tmp.path(), Some("v1")).unwrap_err().to_string();
        assert!(err.contains("--revision v1"), "{err}");
        let err = resolve(Path::new("no/such/dir"), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no/such/dir: no such directory"), "{err}");
    }
}
