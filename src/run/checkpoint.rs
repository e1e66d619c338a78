//! Resumable checkpoints: one `resume.safetensors` in the run directory with everything
//! the next step depends on, so that `peft train --resume RUN` continues to the metrics an
//! uninterrupted run reaches, bit for bit on CPU.
//!
//! The file holds the trainable tensors (`param/<name>`), Adam's moments
//! (`adam_m/<name>`, `adam_v/<name>`) and, as safetensors metadata, a JSON [`Progress`]:
//! step, position in the epoch, the random streams' positions and the running
//! accumulators. One file, replaced atomically, so tensors and progress always agree.
//! Data order needs no saved state: each epoch's order is redrawn from the seed.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::Result;
use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::dir::replace_file;
use super::record::EvalRecord;
use crate::error::user;
use crate::optim::OptimizerState;

pub use super::dir::RESUME;
const FORMAT: &str = "peft-resume-1";

/// Where training stands after an optimizer step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Progress {
    /// Optimizer steps taken (skipped non-finite steps included).
    pub step: usize,
    /// The epoch in progress and the optimizer steps already taken in it.
    pub epoch: usize,
    pub steps_in_epoch: usize,
    /// Dropout draws so far (see `Ctx::calls`).
    pub dropout_calls: u64,
    /// Steps skipped under `--skip-nonfinite`.
    pub skipped: usize,
    pub loss_sum: f64,
    pub loss_n: usize,
    pub tokens: usize,
    pub examples: usize,
    pub train_time: f64,
    pub elapsed_s: f64,
    pub best: Option<EvalRecord>,
    pub last: Option<EvalRecord>,
}

pub struct Resumed {
    pub params: HashMap<String, Tensor>,
    pub optimizer: OptimizerState,
    pub progress: Progress,
}

pub fn save(
    path: &Path,
    vars: &BTreeMap<String, Var>,
    optimizer: &OptimizerState,
    progress: &Progress,
) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for (name, var) in vars {
        tensors.push((format!("param/{name}"), cpu(var.as_tensor())?));
    }
    for (name, (m, v)) in &optimizer.moments {
        tensors.push((format!("adam_m/{name}"), cpu(m)?));
        tensors.push((format!("adam_v/{name}"), cpu(v)?));
    }
    let meta: HashMap<String, String> = [
        ("format".to_string(), FORMAT.to_string()),
        ("progress".to_string(), serde_json::to_string(progress)?),
        // u128 does not fit a JSON number every reader accepts.
        ("optimizer_step".to_string(), optimizer.step.to_string()),
        ("mask_rng_seed".to_string(), optimizer.rng_seed.to_string()),
        (
            "mask_rng_word_pos".to_string(),
            optimizer.rng_word_pos.to_string(),
        ),
    ]
    .into_iter()
    .collect();
    replace_file(path, |tmp| {
        safetensors::serialize_to_file(tensors, Some(meta), tmp)
            .map_err(|e| user(format!("cannot write {}: {e}", tmp.display())))
    })
}

pub fn load(path: &Path) -> Result<Resumed> {
    let bytes = std::fs::read(path).map_err(|e| {
        user(format!(
            "cannot read {}: {e} (a run resumes from the checkpoint it saved when interrupted \
             or every --save-steps)",
            path.display()
        ))
    })?;
    let bad = |why: String| user(format!("{}: {why}", path.display()));
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| bad(format!("not a checkpoint: {e}")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(bad(format!("not a {FORMAT} checkpoint")));
    }
    let field = |key: &str| {
        meta.get(key)
            .cloned()
            .ok_or_else(|| bad(format!("the metadata lacks {key}")))
    };
    let progress: Progress = serde_json::from_str(&field("progress")?)
        .map_err(|e| bad(format!("bad progress record: {e}")))?;
    let opt_step: usize = field("optimizer_step")?
        .parse()
        .map_err(|e| bad(format!("optimizer_step: {e}")))?;
    let seed: u64 = field("mask_rng_seed")?
        .parse()
        .map_err(|e| bad(format!("mask_rng_seed: {e}")))?;
    let word_pos: u128 = field("mask_rng_word_pos")?
        .parse()
        .map_err(|e| bad(format!("mask_rng_word_pos: {e}")))?;
    let all = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| bad(format!("cannot read its tensors: {e}")))?;
    let mut params = HashMap::new();
    let mut m = HashMap::new();
    let mut v = HashMap::new();
    for (key, t) in all {
        let (kind, name) = key
            .split_once('/')
            .ok_or_else(|| bad(format!("odd tensor {key}")))?;
        let slot = match kind {
            "param" => &mut params,
            "adam_m" => &mut m,
            "adam_v" => &mut v,
            _ => return Err(bad(format!("odd tensor {key}"))),
        };
        slot.insert(name.to_string(), t);
    }
    let mut moments = BTreeMap::new();
    for (name, mt) in m {
        let vt = v
            .remove(&name)
            .ok_or_else(|| bad(format!("no second moment for {name}")))?;
        moments.insert(name, (mt, vt));
    }
    Ok(Resumed {
        params,
        optimizer: OptimizerState {
            step: opt_step,
            rng_seed: seed,
            rng_word_pos: word_pos,
            moments,
        },
        progress,
    })
}

fn cpu(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_device(&Device::Cpu)?)
}
