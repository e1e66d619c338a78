//! The run directory: self-describing, and enough to re-score the run.
//!
//! - `config.json`: the resolved training config, the base model (path, weight file,
//!   sha256) and trainable-parameter counts;
//! - `metrics.jsonl`: one line per evaluation;
//! - `trainable.safetensors`: the trained tensors at the best evaluation (only those
//!   training could change, head included), and `last.safetensors` at the end.
//!
//! Files are written to a temporary name and renamed, so a crash never leaves a
//! half-written file where a good one stood.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{user, PathContext};
use crate::train::config::TrainConfig;

pub const CONFIG: &str = "config.json";
pub const METRICS: &str = "metrics.jsonl";
pub const BEST: &str = "trainable.safetensors";
pub const LAST: &str = "last.safetensors";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BaseModel {
    pub path: PathBuf,
    pub weights_file: PathBuf,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunInfo {
    pub peft_version: String,
    pub train: TrainConfig,
    pub base: BaseModel,
    pub num_labels: usize,
    pub total_params: usize,
    pub trainable_params: usize,
    pub trainable_tensors: Vec<String>,
}

impl RunInfo {
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(CONFIG);
        let text = std::fs::read_to_string(&path)
            .path_context("not a run directory: cannot read", &path)?;
        serde_json::from_str(&text).map_err(|e| user(format!("{}: {e}", path.display())))
    }
}

/// Make `dir` ready for a new run; refuse to clobber an earlier one.
pub fn prepare(dir: &Path, overwrite: bool) -> Result<()> {
    if dir.join(CONFIG).exists() && !overwrite {
        return Err(user(format!(
            "{} already holds a run; pass --overwrite to replace it",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).path_context("cannot create run directory", dir)?;
    for f in [METRICS, BEST, LAST] {
        let p = dir.join(f);
        if p.exists() {
            std::fs::remove_file(&p).path_context("cannot remove", &p)?;
        }
    }
    Ok(())
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp).path_context("cannot create", &tmp)?;
        f.write_all(bytes).path_context("cannot write", &tmp)?;
        f.sync_all().path_context("cannot sync", &tmp)?;
    }
    std::fs::rename(&tmp, path).path_context("cannot rename into place", path)
}

pub fn save_tensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let cpu: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.to_device(&Device::Cpu)?)))
        .collect::<Result<_>>()?;
    let tmp = path.with_extension("tmp");
    candle_core::safetensors::save(&cpu, &tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).path_context("cannot rename into place", path)
}

pub fn load_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| user(format!("cannot read {}: {e}", path.display())))
}

pub fn append_metrics(dir: &Path, line: &serde_json::Value) -> Result<()> {
    let path = dir.join(METRICS);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .path_context("cannot open", &path)?;
    writeln!(f, "{line}").path_context("cannot write", &path)
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).path_context("cannot open", path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).path_context("cannot read", path)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("x");
        write_atomic(&p, b"abc").unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn refuses_to_clobber_a_run() {
        let tmp = tempfile::tempdir().unwrap();
        prepare(tmp.path(), false).unwrap();
        std::fs::write(tmp.path().join(CONFIG), "{}").unwrap();
        let err = prepare(tmp.path(), false).unwrap_err().to_string();
        assert!(err.contains("--overwrite"), "{err}");
        prepare(tmp.path(), true).unwrap();
    }
}
