//! Files from Hugging Face hub repositories, through the cache the Python tools share.
//!
//! The cache folder is `HF_HUB_CACHE`, else `HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`, in the hub layout: `models--org--name/refs/<revision>`
//! holds a commit sha and `snapshots/<sha>/<file>` the files (datasets: `datasets--...`).
//! The cache is always tried first; only what it lacks is downloaded, and with
//! `HF_HUB_OFFLINE=1` nothing is, and a missing file is an error naming it.

use std::path::{Path, PathBuf};

use anyhow::Result;
use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

use crate::error::user;

/// The branch used when none is asked for.
pub const DEFAULT_REVISION: &str = "main";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Model,
    Dataset,
}

/// One revision of one hub repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRepo {
    pub id: String,
    pub kind: Kind,
    pub revision: String,
}

/// The cache folder, by the precedence `huggingface_hub` uses.
pub fn cache_dir() -> Result<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("HF_HUB_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(home) = var("HF_HOME") {
        return Ok(PathBuf::from(home).join("hub"));
    }
    match var("HOME") {
        Some(home) => Ok(PathBuf::from(home).join(".cache/huggingface/hub")),
        None => Err(user(
            "cannot locate the Hugging Face cache: set HF_HUB_CACHE, HF_HOME or HOME",
        )),
    }
}

/// `HF_HUB_OFFLINE` set to a true value, as `huggingface_hub` reads it.
pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// Whether `s` can name a hub repository: `name` or `owner/name` of letters, digits, `-`,
/// `_` and `.`, as the hub allows. Anything else is taken for a path.
pub fn is_repo_id(s: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && p.len() <= 96
            && !p.starts_with(['.', '-'])
            && !p.ends_with(['.', '-'])
            && !p.contains("..")
            && !p.contains("--")
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    let mut parts = s.split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(name), None, None) => part(name),
        (Some(owner), Some(name), None) => part(owner) && part(name),
        _ => false,
    }
}

impl HubRepo {
    pub fn new(id: &str, kind: Kind, revision: Option<&str>) -> Self {
        Self {
            id: id.to_string(),
            kind,
            revision: revision.unwrap_or(DEFAULT_REVISION).to_string(),
        }
    }

    fn repo_type(&self) -> RepoType {
        match self.kind {
            Kind::Model => RepoType::Model,
            Kind::Dataset => RepoType::Dataset,
        }
    }

    fn repo_at(&self, revision: &str) -> Repo {
        Repo::with_revision(self.id.clone(), self.repo_type(), revision.to_string())
    }

    /// `models--org--name` (or `datasets--...`) under `cache`.
    pub fn folder(&self, cache: &Path) -> PathBuf {
        cache.join(self.repo_at(&self.revision).folder_name())
    }

    /// The cached snapshot of this revision, if the cache has one: the commit that
    /// `refs/<revision>` names, or the revision itself when it is a commit sha.
    pub fn cached_snapshot(&self, cache: &Path) -> Option<PathBuf> {
        let folder = self.folder(cache);
        let sha = std::fs::read_to_string(folder.join("refs").join(&self.revision))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| self.revision.clone());
        let dir = folder.join("snapshots").join(sha);
        dir.is_dir().then_some(dir)
    }

    /// `org/name (dataset) at revision main`, for messages.
    pub fn describe(&self) -> String {
        let kind = match self.kind {
            Kind::Model => "",
            Kind::Dataset => " (dataset)",
        };
        format!("{}{kind} at revision {}", self.id, self.revision)
    }

    /// The error for files the cache lacks while downloads are off.
    pub fn offline_error(&self, cache: &Path, missing: &[String]) -> anyhow::Error {
        user(format!(
            "{}: {} not in the Hugging Face cache and HF_HUB_OFFLINE=1 forbids downloading \
             (searched {})",
            self.describe(),
            missing.join(", "),
            self.folder(cache).display()
        ))
    }

    /// Every file of the revision on the hub, and the commit it resolved to.
    pub fn list_remote(&self) -> Result<(String, Vec<String>)> {
        let cache = cache_dir()?;
        let info = api(&cache)?
            .repo(self.repo_at(&self.revision))
            .info()
            .map_err(|e| self.network_error("cannot list the files of", e))?;
        let files = info.siblings.into_iter().map(|s| s.rfilename).collect();
        Ok((info.sha, files))
    }

    /// Download `files` of commit `sha` into the cache (those already there are kept), point
    /// `refs/<revision>` at it, and return the snapshot folder.
    pub fn download(&self, sha: &str, files: &[String]) -> Result<PathBuf> {
        let cache = cache_dir()?;
        // Pinned to the commit, so every file lands in one snapshot even if the branch
        // moves while they download.
        let pinned = api(&cache)?.repo(self.repo_at(sha));
        let snapshot = self.folder(&cache).join("snapshots").join(sha);
        // hf-hub finds cached files through refs/<sha>, which Python's downloads do not
        // write: look in the snapshot itself rather than fetch them again.
        for f in files.iter().filter(|f| !snapshot.join(f).is_file()) {
            pinned
                .get(f)
                .map_err(|e| self.network_error(&format!("cannot download {f} of"), e))?;
        }
        Cache::new(cache.clone())
            .repo(self.repo_at(&self.revision))
            .create_ref(sha)
            .map_err(|e| user(format!("cannot write to {}: {e}", cache.display())))?;
        Ok(snapshot)
    }

    fn network_error(&self, what: &str, e: impl std::fmt::Display) -> anyhow::Error {
        user(format!(
            "{what} {} from the Hugging Face hub: {e} (with no network, fill the cache \
             elsewhere and set HF_HUB_OFFLINE=1)",
            self.describe()
        ))
    }
}

fn api(cache: &Path) -> Result<hf_hub::api::sync::Api> {
    let mut builder = ApiBuilder::from_cache(Cache::new(cache.to_path_buf()));
    if let Some(endpoint) = std::env::var_os("HF_ENDPOINT") {
        builder = builder.with_endpoint(endpoint.to_string_lossy().into_owned());
    }
    // A token saved by `huggingface-cli login` sits beside the cache; HF_TOKEN wins.
    if let Ok(token) = std::env::var("HF_TOKEN") {
        builder = builder.with_token(Some(token));
    }
    builder
        .build()
        .map_err(|e| user(format!("cannot set up the Hugging Face hub client: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_and_paths() {
        for id in [
            "bert-base-uncased",
            "sentence-transformers/all-MiniLM-L6-v2",
            "FacebookAI/roberta-base",
            "nyu-mll/glue",
            "a.b_c/d",
        ] {
            assert!(is_repo_id(id), "{id}");
        }
        for path in [
            "",
            "./model",
            "../model",
            "/abs/model",
            "a/b/c",
            "runs/x/",
            "a b",
            "org/.hidden",
            "org--x/y",
            "model.",
        ] {
            assert!(!is_repo_id(path), "{path}");
        }
    }

    #[test]
    fn snapshots_by_ref_or_by_sha() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path();
        let repo = HubRepo::new("org/name", Kind::Model, None);
        assert_eq!(repo.folder(cache), cache.join("models--org--name"));
        assert_eq!(repo.cached_snapshot(cache), None);
        let snap = cache.join("models--org--name/snapshots/abc123");
        std::fs::create_dir_all(&snap).unwrap();
        assert_eq!(repo.cached_snapshot(cache), None);
        std::fs::create_dir_all(cache.join("models--org--name/refs")).unwrap();
        std::fs::write(cache.join("models--org--name/refs/main"), "abc123\n").unwrap();
        assert_eq!(repo.cached_snapshot(cache), Some(snap.clone()));
        let pinned = HubRepo::new("org/name", Kind::Model, Some("abc123"));
        assert_eq!(pinned.cached_snapshot(cache), Some(snap));
        let data = HubRepo::new("nyu-mll/glue", Kind::Dataset, None);
        assert_eq!(data.folder(cache), cache.join("datasets--nyu-mll--glue"));
    }
}
