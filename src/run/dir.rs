//! The run directory: self-describing, and enough to re-score the run.
//!
//! - `config.json`: the resolved training config, the base model (local path, weight
//!   file, sha256), a custom task's class labels and trainable-parameter counts;
//! - `metrics.jsonl`: one line per evaluation;
//! - `trainable.safetensors`: the trained tensors at the best evaluation (only those
//!   training could change, head included), and `last.safetensors` at the end.
//!
//! Files are written to a temporary name and renamed, so a crash never leaves a
//! half-written file where a good one stood.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{user, PathContext};
use crate::settings::TrainConfig;

pub const CONFIG: &str = "config.json";
pub const METRICS: &str = "metrics.jsonl";
pub const BEST: &str = "trainable.safetensors";
pub const LAST: &str = "last.safetensors";
pub const RESUME: &str = "resume.safetensors";

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
    /// Class names of a custom task, in id order, as found in its training file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
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

/// Refuse to clobber an earlier run unless asked to.
pub fn check_free(dir: &Path, overwrite: bool) -> Result<()> {
    if dir.join(CONFIG).exists() && !overwrite {
        return Err(user(format!(
            "{} already holds a run; pass --overwrite to replace it{}",
            dir.display(),
            if dir.join(RESUME).exists() {
                ", or --resume to continue it"
            } else {
                ""
            }
        )));
    }
    Ok(())
}

/// Make `dir` ready for a new run; refuse to clobber an earlier one.
pub fn prepare(dir: &Path, overwrite: bool) -> Result<()> {
    check_free(dir, overwrite)?;
    std::fs::create_dir_all(dir).path_context("cannot create run directory", dir)?;
    for f in [METRICS, BEST, LAST, RESUME] {
        let p = dir.join(f);
        if p.exists() {
            std::fs::remove_file(&p).path_context("cannot remove", &p)?;
        }
    }
    Ok(())
}

/// Write `path` through `write` into a temporary file beside it, fsync, and rename it into
/// place: a crash or a full disk leaves the previous file as it was, never a truncated one.
pub fn replace_file(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    // The process id keeps two processes writing one file (grid cells sharing a Fisher
    // cache entry) off each other's temporary file; the last rename wins whole.
    name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(name);
    let result = write(&tmp).and_then(|()| {
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .path_context("cannot sync", &tmp)?;
        std::fs::rename(&tmp, path).path_context("cannot rename into place", path)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("{} was left as it was", path.display()))
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    replace_file(path, |tmp| {
        std::fs::write(tmp, bytes).path_context("cannot write", tmp)
    })
}

pub fn save_tensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let cpu: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.to_device(&Device::Cpu)?)))
        .collect::<Result<_>>()?;
    replace_file(path, |tmp| {
        candle_core::safetensors::save(&cpu, tmp)
            .map_err(|e| user(format!("cannot write {}: {e}", tmp.display())))
    })
}

/// The tensors of a run file (`trainable.safetensors`, `last.safetensors`, a Fisher file),
/// as f32: a file holding a tensor that is not a float is refused, naming the file and the
/// tensor, and half-precision ones are widened.
pub fn load_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| user(format!("cannot read {}: {e}", path.display())))?;
    tensors
        .into_iter()
        .map(|(name, t)| {
            if !t.dtype().is_float() {
                return Err(user(format!(
                    "{}: tensor `{name}` has dtype {:?}; a run's tensors are floats",
                    path.display(),
                    t.dtype()
                )));
            }
            let t = crate::model::load::as_f32(path, &name, t)?;
            Ok((name, t))
        })
        .collect()
}

/// Add one evaluation to `metrics.jsonl`. The file is rewritten whole (it is small), so
/// that it too is replaced atomically.
pub fn append_metrics(dir: &Path, line: &serde_json::Value) -> Result<()> {
    let path = dir.join(METRICS);
    let mut text = read_if_exists(&path)?;
    text.push_str(&format!("{line}\n"));
    write_atomic(&path, text.as_bytes())
}

/// Keep only the evaluations up to `step`: a resumed run writes the later ones again.
pub fn truncate_metrics(dir: &Path, step: usize) -> Result<()> {
    let path = dir.join(METRICS);
    let text = read_if_exists(&path)?;
    let mut kept = String::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| user(format!("{}: {e}", path.display())))?;
        if v["step"].as_u64().is_some_and(|s| s as usize <= step) {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    write_atomic(&path, kept.as_bytes())
}

fn read_if_exists(path: &Path) -> Result<String> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(user(format!("cannot read {}: {e}", path.display()))),
    }
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

    #[test]
    fn a_failed_write_leaves_the_previous_file() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("trainable.safetensors");
        write_atomic(&p, b"good").unwrap();
        let err = replace_file(&p, |t| {
            std::fs::write(t, b"half").unwrap();
            Err(user("No space left on device"))
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("left as it was"), "{err:#}");
        assert_eq!(std::fs::read(&p).unwrap(), b"good");
        let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "the temporary file was not removed");
    }

    #[test]
    fn metrics_truncate_to_a_step() {
        let tmp = tempfile::tempdir().unwrap();
        for step in [10, 20, 30] {
            append_metrics(tmp.path(), &serde_json::json!({ "step": step })).unwrap();
        }
        truncate_metrics(tmp.path(), 20).unwrap();
        let text = std::fs::read_to_string(tmp.path().join(METRICS)).unwrap();
        assert_eq!(text, "{\"step\":10}\n{\"step\":20}\n");
    }
}
