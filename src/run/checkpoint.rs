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
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
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

impl Progress {
    /// Where a new run starts: nothing done.
    pub fn start() -> Self {
        Progress {
            step: 0,
            epoch: 0,
            steps_in_epoch: 0,
            dropout_calls: 0,
            skipped: 0,
            loss_sum: 0.0,
            loss_n: 0,
            tokens: 0,
            examples: 0,
            train_time: 0.0,
            elapsed_s: 0.0,
            best: None,
            last: None,
        }
    }
}

pub struct Resumed {
    pub params: HashMap<String, Tensor>,
    pub optimizer: OptimizerState,
    pub progress: Progress,
    /// The method's regime's state (AdaLoRA's importance and rank pattern), if it has one.
    pub regime: HashMap<String, Tensor>,
}

pub fn save(
    path: &Path,
    vars: &BTreeMap<String, Var>,
    optimizer: &OptimizerState,
    progress: &Progress,
    regime: &HashMap<String, Tensor>,
) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for (name, t) in regime {
        tensors.push((format!("regime/{name}"), cpu(t)?));
    }
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
    replace_file(path, |_, tmp| {
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
    let progress = parse_progress(&field("progress")?).map_err(bad)?;
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
    let mut regime = HashMap::new();
    for (key, t) in all {
        let (kind, name) = key
            .split_once('/')
            .ok_or_else(|| bad(format!("odd tensor {key}")))?;
        let slot = match kind {
            "param" => &mut params,
            "adam_m" => &mut m,
            "adam_v" => &mut v,
            "regime" => &mut regime,
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
    if let Some(name) = v.keys().next() {
        return Err(bad(format!(
            "`adam_v/{name}` has no first moment `adam_m/{name}`"
        )));
    }
    check_progress(&progress, opt_step).map_err(bad)?;
    Ok(Resumed {
        params,
        optimizer: OptimizerState {
            step: opt_step,
            rng_seed: seed,
            rng_word_pos: word_pos,
            moments,
        },
        progress,
        regime,
    })
}

/// The progress record, naming the field that is not one (serde's message gives only the
/// position): each field is tried alone in a default record.
fn parse_progress(text: &str) -> std::result::Result<Progress, String> {
    let err = match serde_json::from_str(text) {
        Ok(p) => return Ok(p),
        Err(e) => e,
    };
    let fields: Option<serde_json::Map<String, serde_json::Value>> =
        serde_json::from_str(text).ok();
    let culprit = fields.into_iter().flatten().find_map(|(key, v)| {
        let mut probe = serde_json::to_value(Progress::default()).ok()?;
        probe[key.as_str()] = v;
        serde_json::from_value::<Progress>(probe)
            .is_err()
            .then_some(key)
    });
    Err(match culprit {
        Some(key) => format!("bad progress record: field {key}: {err}"),
        None => format!("bad progress record: {err}"),
    })
}

/// What a checkpoint says of itself must hold whatever run it belongs to: counts that only
/// grow with the steps taken, finite sums and times (the start instant is recovered by
/// subtracting `elapsed_s` from now, which a forged value would overflow).
fn check_progress(p: &Progress, opt_step: usize) -> std::result::Result<(), String> {
    for (field, n) in [
        ("skipped", p.skipped),
        ("loss_n", p.loss_n),
        ("optimizer_step", opt_step),
    ] {
        if n > p.step {
            return Err(format!(
                "{field} {n} exceeds the steps taken (step {})",
                p.step
            ));
        }
    }
    for (field, x) in [
        ("loss_sum", p.loss_sum),
        ("train_time", p.train_time),
        ("elapsed_s", p.elapsed_s),
    ] {
        if !x.is_finite() || (field != "loss_sum" && x < 0.0) {
            return Err(format!("progress field {field} is {x}"));
        }
    }
    let start = std::time::Duration::try_from_secs_f64(p.elapsed_s)
        .ok()
        .and_then(|d| std::time::Instant::now().checked_sub(d));
    if start.is_none() {
        return Err(format!(
            "progress field elapsed_s {} is out of range",
            p.elapsed_s
        ));
    }
    for (field, r) in [("best", &p.best), ("last", &p.last)] {
        if let Some(r) = r.as_ref().filter(|r| r.step > p.step) {
            return Err(format!(
                "progress field {field} is an evaluation at step {}, after the steps taken \
                 (step {})",
                r.step, p.step
            ));
        }
    }
    Ok(())
}

/// The run a checkpoint resumes, as built from its config.json: what the progress and
/// the tensors must fit.
pub struct RunShape<'a> {
    pub vars: &'a BTreeMap<String, Var>,
    pub steps_per_epoch: usize,
    /// Optimizer steps of the whole run.
    pub total: usize,
    /// Micro-batches per optimizer step (--grad-accum).
    pub micro_batches: usize,
    pub spec: &'a crate::data::TaskSpec,
}

impl Resumed {
    /// A checkpoint is input (a copied, edited or foreign file): it must belong to this
    /// run, or it is refused naming the file and the field or tensor, before anything is
    /// restored or rewritten. Progress past the run's last step would mark it finished
    /// with nothing trained; an epoch past its last would replay data orders for ever.
    pub fn check(&self, path: &Path, run: &RunShape) -> Result<()> {
        let bad = |why: String| user(format!("{}: {why}", path.display()));
        let p = &self.progress;
        // A run saves no resume state at its last step: it finishes instead.
        if p.step >= run.total {
            return Err(bad(format!(
                "progress step {} is not before the run's last step ({})",
                p.step, run.total
            )));
        }
        // The step is the epochs done plus the steps into this one (an epoch's end is
        // saved with all its steps taken, before the next one starts).
        let at = p
            .epoch
            .checked_mul(run.steps_per_epoch)
            .and_then(|s| s.checked_add(p.steps_in_epoch));
        if p.steps_in_epoch > run.steps_per_epoch || at != Some(p.step) {
            return Err(bad(format!(
                "progress epoch {} and steps_in_epoch {} do not make step {} at {} steps \
                 per epoch: not a checkpoint of this run and data",
                p.epoch, p.steps_in_epoch, p.step, run.steps_per_epoch
            )));
        }
        // Each micro-batch draws a few dropout masks per layer, far fewer than 2^16; the
        // bound keeps a forged count from overflowing the counter as training goes on.
        let calls = (p.step as u64)
            .saturating_mul(run.micro_batches as u64)
            .saturating_mul(1 << 16);
        if p.dropout_calls > calls {
            return Err(bad(format!(
                "progress dropout_calls {} is more than {} steps can draw",
                p.dropout_calls, p.step
            )));
        }
        // The recorded evaluations are shown by each of the task's metrics on every split
        // they hold (`record::describe`).
        for (field, r) in [("best", &p.best), ("last", &p.last)] {
            let Some(r) = r else { continue };
            for (split, metrics) in &r.dev {
                if let Some(m) = run
                    .spec
                    .metrics
                    .iter()
                    .find(|m| !metrics.contains_key(m.key()))
                {
                    return Err(bad(format!(
                        "progress field {field} lacks {} on dev split {split}",
                        m.key()
                    )));
                }
            }
        }
        self.check_tensors(run.vars).map_err(bad)
    }

    /// The run's trainable tensors and both of Adam's moments for each, nothing else, of
    /// the variables' shapes, f32 and finite (a second moment is a mean of squares).
    fn check_tensors(&self, vars: &BTreeMap<String, Var>) -> std::result::Result<(), String> {
        let msg = |e: candle_core::Error| e.to_string();
        for (kind, names) in [
            ("param", self.params.keys().collect::<Vec<_>>()),
            ("adam_m", self.optimizer.moments.keys().collect()),
        ] {
            if let Some(name) = names.into_iter().find(|n| !vars.contains_key(*n)) {
                return Err(format!("`{kind}/{name}` is not a tensor this run trains"));
            }
        }
        for (name, var) in vars {
            let param = self.params.get(name);
            let moments = self.optimizer.moments.get(name);
            let tensors = [
                ("param", param),
                ("adam_m", moments.map(|(m, _)| m)),
                ("adam_v", moments.map(|(_, v)| v)),
            ];
            for (kind, t) in tensors {
                let Some(t) = t else {
                    return Err(format!("lacks `{kind}/{name}`, which the run trains"));
                };
                if t.dims() != var.dims() {
                    return Err(format!(
                        "`{kind}/{name}` has shape {:?}, the run's tensor {:?}",
                        t.dims(),
                        var.dims()
                    ));
                }
                if t.dtype() != candle_core::DType::F32 {
                    return Err(format!(
                        "`{kind}/{name}` has dtype {:?}; a checkpoint holds f32",
                        t.dtype()
                    ));
                }
                if !super::dir::all_finite(t).map_err(|e| e.to_string())? {
                    return Err(format!("`{kind}/{name}` holds NaN or infinite values"));
                }
                if kind == "adam_v"
                    && t.min_all()
                        .and_then(|m| m.to_scalar::<f32>())
                        .map_err(msg)?
                        < 0.0
                {
                    return Err(format!("`adam_v/{name}` is negative somewhere"));
                }
            }
        }
        Ok(())
    }
}

fn cpu(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_device(&Device::Cpu)?)
}
