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
    /// Grouped by concern; a flat one, as earlier versions saved it, reads too.
    #[serde(deserialize_with = "saved_settings")]
    pub train: TrainConfig,
    pub base: BaseModel,
    pub num_labels: usize,
    /// Class names of a custom task, in id order, as found in its training file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    pub total_params: usize,
    pub trainable_params: usize,
    pub trainable_tensors: Vec<String>,
    /// With `--init RUN`: the sha256 of the tensors of RUN the run started from
    /// (`trainable.safetensors`), so that a changed source is refused, not silently used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_sha256: Option<String>,
}

impl RunInfo {
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(CONFIG);
        let text = std::fs::read_to_string(&path)
            .path_context("not a run directory: cannot read", &path)?;
        let info: Self =
            serde_json::from_str(&text).map_err(|e| user(format!("{}: {e}", path.display())))?;
        info.check(&path)?;
        Ok(info)
    }

    /// config.json is input like the flags (an edited file, one copied from elsewhere):
    /// every reader (train --resume, eval, predict, merge, diff, sweeps and grid cells)
    /// gets settings that `peft train` would have accepted, or a refusal naming the file
    /// and the key, rather than a division by zero or a hang later on.
    fn check(&self, path: &Path) -> Result<()> {
        let bad = |why: String| user(format!("{}: {why}", path.display()));
        let spec = self
            .train
            .task_spec(self.labels.as_deref())
            .map_err(|e| bad(format!("{e:#}")))?;
        let custom_classes = self.train.data.task == crate::data::custom::CUSTOM
            && matches!(
                spec.problem,
                crate::data::tasks::Problem::Classification { .. }
            );
        match &self.labels {
            Some(_) if !custom_classes => {
                return Err(bad(format!(
                    "`labels` are recorded for custom classification only; task {} has its own",
                    self.train.data.task
                )))
            }
            // As the training file's distinct values would give them.
            Some(labels) => {
                let mut seen = std::collections::HashSet::new();
                if labels.len() < 2 || labels.iter().any(|l| l.is_empty() || !seen.insert(l)) {
                    return Err(bad(format!(
                        "`labels` {labels:?}: a classification run records two or more \
                         distinct, non-empty class names"
                    )));
                }
            }
            None => {}
        }
        // The head is sized by the task: another count would be another task's head.
        if self.num_labels != spec.num_labels() {
            return Err(bad(format!(
                "`num_labels` is {}, but task {} has {}",
                self.num_labels,
                self.train.data.task,
                spec.num_labels()
            )));
        }
        // What the run trains: every run trains something (the head at least), once each.
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = self.trainable_tensors.iter().find(|n| !seen.insert(*n)) {
            return Err(bad(format!("`trainable_tensors` lists `{dup}` twice")));
        }
        if self.trainable_tensors.is_empty() {
            return Err(bad(
                "`trainable_tensors` is empty: the run trained nothing".into()
            ));
        }
        if self.trainable_params > self.total_params {
            return Err(bad(format!(
                "`trainable_params` {} exceeds `total_params` {}",
                self.trainable_params, self.total_params
            )));
        }
        Ok(())
    }
}

/// config.json is input like the flags (an edited file, one copied from elsewhere, one an
/// earlier version wrote): its settings go through [`TrainConfig::from_saved`].
fn saved_settings<'de, D: serde::Deserializer<'de>>(d: D) -> Result<TrainConfig, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    TrainConfig::from_saved(value).map_err(|e| serde::de::Error::custom(format!("train: {e:#}")))
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
///
/// The temporary file is created exclusively (O_EXCL) under an unpredictable name, so a
/// symlink planted in a shared folder at a guessable name is never written through, and
/// two processes writing one file (grid cells sharing a Fisher cache entry) never share a
/// temporary file; the last rename wins whole. `write` gets the open file and its path:
/// it writes into the file, or replaces the path by a rename of its own (safetensors'
/// `serialize_to_file` does, from its own exclusive temporary file); it never opens the
/// path for writing, which would follow a link swapped in meanwhile.
pub fn replace_file(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File, &Path) -> Result<()>,
) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let prefix = format!(".{name}.");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    // The mode std::fs::write would give (0666 less the umask), not tempfile's 0600: run
    // directories in a shared folder stay readable by the group.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let result = builder
        .tempfile_in(dir)
        .path_context("cannot create a temporary file in", dir)
        .and_then(|mut tmp| {
            let tmp_path = tmp.path().to_path_buf();
            let mode = tmp
                .as_file()
                .metadata()
                .path_context("cannot stat", &tmp_path)?
                .permissions();
            write(tmp.as_file_mut(), &tmp_path)?;
            // If `write` renamed a file of its own onto the path, that is the file to give
            // our mode and to sync: reopened without following a link, so a link planted
            // there meanwhile is refused, never changed.
            let written = open_no_follow(&tmp_path).path_context("cannot reopen", &tmp_path)?;
            written
                .set_permissions(mode)
                .and_then(|()| written.sync_all())
                .path_context("cannot sync", &tmp_path)?;
            // A failed persist drops (and so removes) the temporary file.
            tmp.persist(path)
                .map_err(|e| e.error)
                .path_context("cannot rename into place", path)?;
            Ok(())
        });
    result.with_context(|| format!("{} was left as it was", path.display()))
}

fn open_no_follow(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::File::options();
    options.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NOFOLLOW);
    options.open(path)
}

/// A new, empty file at `path` for a log that is written as it goes: whatever was there
/// is removed and the file created exclusively, so a symlink planted at the name is
/// removed, never written through (one planted in between makes the create fail).
pub fn create_fresh(path: &Path) -> Result<std::fs::File> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).path_context("cannot remove", path),
    }
    std::fs::File::options()
        .write(true)
        .create_new(true)
        .open(path)
        .path_context("cannot create", path)
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    replace_file(path, |file, tmp| {
        use std::io::Write;
        file.write_all(bytes).path_context("cannot write", tmp)
    })
}

pub fn save_tensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let cpu: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.to_device(&Device::Cpu)?)))
        .collect::<Result<_>>()?;
    replace_file(path, |_, tmp| {
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

/// Whether every value of `t` is finite: 0·x is 0 for a finite x and NaN for NaN or an
/// infinity, so the sum is NaN exactly when some value is not finite (on any device, with
/// one tensor's copy at a time).
pub fn all_finite(t: &Tensor) -> Result<bool> {
    let zeros = t.to_dtype(candle_core::DType::F32)?.affine(0.0, 0.0)?;
    Ok(!zeros.sum_all()?.to_scalar::<f32>()?.is_nan())
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
        let err = replace_file(&p, |f, _| {
            std::io::Write::write_all(f, b"half").unwrap();
            Err(user("No space left on device"))
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("left as it was"), "{err:#}");
        assert_eq!(std::fs::read(&p).unwrap(), b"good");
        let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "the temporary file was not removed");
    }

    #[test]
    #[cfg(unix)]
    fn a_symlink_planted_at_the_old_temporary_names_is_not_written_through() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("victim");
        std::fs::write(&target, b"precious").unwrap();
        let p = tmp.path().join("out.tsv");
        // The names earlier versions used (NAME.<pid>.tmp), and the prefix ours start with.
        for planted in [
            format!("out.tsv.{}.tmp", std::process::id()),
            ".out.tsv.tmp".to_string(),
        ] {
            std::os::unix::fs::symlink(&target, tmp.path().join(planted)).unwrap();
        }
        write_atomic(&p, b"ours").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"precious");
        assert_eq!(std::fs::read(&p).unwrap(), b"ours");
        assert!(!std::fs::symlink_metadata(&p)
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn all_finite_finds_nan_and_infinities() {
        let t = |v: &[f32]| Tensor::new(v, &Device::Cpu).unwrap();
        assert!(all_finite(&t(&[0.0, -1.5, f32::MAX, f32::MIN_POSITIVE])).unwrap());
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            assert!(!all_finite(&t(&[1.0, bad, 2.0])).unwrap(), "{bad}");
        }
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
