//! Diagonal empirical Fisher information of every parameter.
//!
//! By definition (the default), F_i = mean over training examples of (∂ log p(y|x) / ∂θ_i)²,
//! one example at a time with dropout off, y the gold label; for regression (STS-B) the
//! log-likelihood is the Gaussian one, −½(f(x) − y)². The Child-Tuning reference code
//! (alibaba/AliceMind, ChildTuning, `calculate_fisher`) uses a cheaper estimate: one
//! shuffled pass with dropout on, in batches of 16, squaring each batch's mean gradient
//! after clipping each tensor's gradient to norm 1, divided by the number of batches;
//! `Estimator::BatchMean` reproduces it.
//!
//! An estimate made before training is cached (see [`cached`]): a sweep over learning
//! rates, fractions or resumed runs estimates it once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::data::dataset::Dataset;
use crate::data::Label;
use crate::loss;
use crate::model::{Ctx, HeadKind, Model, ParamStore};
use crate::tokenize::{collate, Encoded};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Estimator {
    /// The definition: squared per-example gradients, dropout off.
    PerExample,
    /// Child-Tuning's reference: squared batch-mean gradients, dropout on, per-tensor clipping.
    BatchMean { batch: usize },
}

#[derive(Debug, Clone, Copy)]
pub struct FisherOptions {
    /// Examples to use (a seeded random subset); None for the whole split.
    pub samples: Option<usize>,
    pub estimator: Estimator,
    pub seed: u64,
}

/// Fisher of every trainable parameter in `store` (build it with everything trainable).
pub fn estimate(
    model: &Model,
    store: &ParamStore,
    data: &Dataset,
    pad: u32,
    opts: FisherOptions,
    device: &Device,
) -> Result<BTreeMap<String, Tensor>> {
    let vars = store.vars();
    let head = model
        .head_kind()
        .ok_or_else(|| anyhow::anyhow!("Fisher information needs a model with a task head"))?;
    let mut order: Vec<usize> = (0..data.len()).collect();
    order.shuffle(&mut StdRng::seed_from_u64(opts.seed));
    order.truncate(opts.samples.unwrap_or(usize::MAX).min(data.len()));
    let (groups, ctx): (Vec<Vec<usize>>, Ctx) = match opts.estimator {
        Estimator::PerExample => (order.iter().map(|&i| vec![i]).collect(), Ctx::eval()),
        Estimator::BatchMean { batch } => (
            order.chunks(batch.max(1)).map(|c| c.to_vec()).collect(),
            Ctx::train(opts.seed),
        ),
    };
    let examples: usize = groups.iter().map(Vec::len).sum();
    // Callers refuse a sample of 0; an empty split would still average nothing.
    if examples == 0 {
        crate::user_bail!("no training examples to estimate the Fisher information from");
    }
    eprintln!(
        "Fisher information: {examples} of {} training examples, {}",
        data.len(),
        match opts.estimator {
            Estimator::PerExample => "per-example gradients, dropout off".to_string(),
            Estimator::BatchMean { batch } =>
                format!("squared batch-mean gradients of {batch} examples, dropout on"),
        }
    );
    let bar = ProgressBar::new(groups.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("fisher [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let start = Instant::now();
    let mut acc: BTreeMap<String, Tensor> = BTreeMap::new();
    for (done, idx) in groups.iter().enumerate() {
        // The first group pays for warm-up; the next few give a fair rate.
        if done == groups.len().min(4) && done > 1 {
            let each = start.elapsed().as_secs_f64() / done as f64;
            // Worth saying only when it is worth waiting for.
            if each * groups.len() as f64 > 5.0 {
                bar.suspend(|| {
                    eprintln!(
                        "Fisher information: about {:.0}s in all ({:.2}s per {})",
                        each * groups.len() as f64,
                        each,
                        if groups[0].len() == 1 {
                            "example"
                        } else {
                            "batch"
                        }
                    )
                });
            }
        }
        let inputs: Vec<&Encoded> = idx.iter().map(|&i| &data.inputs[i]).collect();
        let batch = collate(&inputs, pad, device)?;
        let labels = data.label_tensor(idx, device)?;
        let logits = model.logits(&batch, &ctx)?;
        let l = match head {
            // A Gaussian's log-likelihood: half the squared error.
            HeadKind::Classes(1) => (loss::mse(&logits, &labels)? * 0.5)?,
            _ => loss::for_head(head, &logits, &labels, &batch.attention_mask)?,
        };
        let grads = l.backward()?;
        for (name, var) in &vars {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let g = match opts.estimator {
                Estimator::PerExample => g.clone(),
                Estimator::BatchMean { .. } => {
                    let norm = g.sqr()?.sum_all()?.to_scalar::<f32>()?.sqrt() as f64;
                    if norm > 1.0 {
                        (g / norm)?
                    } else {
                        g.clone()
                    }
                }
            };
            let sq = g.sqr()?;
            let sum = match acc.remove(name) {
                Some(a) => (a + sq)?,
                None => sq,
            };
            acc.insert(name.clone(), sum);
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let n = groups.len().max(1) as f64;
    acc.into_iter().map(|(k, v)| Ok((k, (v / n)?))).collect()
}

/// Where estimates are kept between runs: `$PEFT_CACHE_DIR`, else `$XDG_CACHE_HOME/peft`,
/// else `~/.cache/peft`; None when none of them can be named.
pub fn cache_dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("PEFT_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("peft")))
        .or_else(|| var("HOME").map(|d| d.join(".cache").join("peft")))
}

/// A name for everything an estimate depends on: the model weights (their sha256), the
/// training examples as the model sees them (token ids, segment ids and labels, in
/// order), the label count (the head's shape), and the estimator with its sample size and
/// seed (which also seeds a head the checkpoint lacks).
pub fn cache_key(
    weights_sha256: &str,
    data: &Dataset,
    num_labels: usize,
    opts: &FisherOptions,
) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"peft fisher v1\0");
    h.update(weights_sha256.as_bytes());
    h.update(format!(
        "{num_labels}|{:?}|{:?}|{}|",
        opts.estimator, opts.samples, opts.seed
    ));
    h.update((data.inputs.len() as u64).to_le_bytes());
    for (x, label) in data.inputs.iter().zip(&data.labels) {
        h.update((x.ids.len() as u32).to_le_bytes());
        x.ids.iter().for_each(|i| h.update(i.to_le_bytes()));
        x.type_ids.iter().for_each(|i| h.update(i.to_le_bytes()));
        match label {
            Label::Class(c) => {
                h.update([1u8]);
                h.update(c.to_le_bytes());
            }
            Label::Score(v) => {
                h.update([2u8]);
                h.update(v.to_le_bytes());
            }
            Label::Span { start, end } => {
                h.update([3u8]);
                h.update(start.to_le_bytes());
                h.update(end.to_le_bytes());
            }
            Label::None => h.update([0u8]),
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The estimate cached under `key`, or `make`'s, which is then cached. A cache that cannot
/// be written costs a warning, not the run.
pub fn cached(
    key: &str,
    make: impl FnOnce() -> Result<BTreeMap<String, Tensor>>,
) -> Result<BTreeMap<String, Tensor>> {
    let Some(dir) = cache_dir() else {
        return make();
    };
    let path = dir.join("fisher").join(format!("{key}.safetensors"));
    if path.exists() {
        match crate::run::dir::load_tensors(&path) {
            Ok(t) => {
                eprintln!(
                    "Fisher information: reusing {} (same weights, data and estimator)",
                    path.display()
                );
                return Ok(t.into_iter().collect());
            }
            Err(e) => eprintln!("ignoring an unreadable cached Fisher estimate: {e:#}"),
        }
    }
    let f = make()?;
    let saved = std::fs::create_dir_all(path.parent().unwrap_or(&dir))
        .map_err(anyhow::Error::from)
        .and_then(|()| {
            let tensors = f.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            crate::run::dir::save_tensors(&path, &tensors)
        });
    match saved {
        Ok(()) => eprintln!("Fisher information: cached in {}", path.display()),
        Err(e) => eprintln!("warning: could not cache the Fisher estimate: {e:#}"),
    }
    Ok(f)
}

/// One ranking from several tasks: each task's Fisher is divided by its total over all
/// parameters (tasks differ in loss scale), then the tasks are averaged. The head is
/// task-specific (and always trained), so it is left out.
pub fn global(tasks: &[BTreeMap<String, Tensor>]) -> Result<BTreeMap<String, Tensor>> {
    let mut out: BTreeMap<String, Tensor> = BTreeMap::new();
    for f in tasks {
        let f: BTreeMap<&String, &Tensor> = f
            .iter()
            .filter(|(k, _)| !crate::methods::is_head(k))
            .collect();
        let mut total = 0f64;
        for t in f.values() {
            total += t
                .sum_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
        }
        let scale = 1.0 / (total.max(f64::MIN_POSITIVE) * tasks.len() as f64);
        for (name, t) in f {
            let v = (t * scale)?;
            let sum = match out.remove(name) {
                Some(a) => (a + v)?,
                None => v,
            };
            out.insert((*name).clone(), sum);
        }
    }
    Ok(out)
}

/// Per-parameter (sum, count) of a Fisher map, for [`crate::components::aggregate`].
pub fn totals(f: &BTreeMap<String, Tensor>) -> Result<BTreeMap<String, (f64, usize)>> {
    f.iter()
        .map(|(k, t)| {
            let s = t
                .sum_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
            Ok((k.clone(), (s, t.elem_count())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_is_the_mean_of_normalised_task_fishers() {
        let t = |v: &[f32]| Tensor::new(v, &Device::Cpu).unwrap();
        let a: BTreeMap<String, Tensor> = [("x".to_string(), t(&[1.0, 3.0]))].into_iter().collect();
        let b: BTreeMap<String, Tensor> =
            [("x".to_string(), t(&[30.0, 10.0]))].into_iter().collect();
        let g = global(&[a, b]).unwrap()["x"].to_vec1::<f32>().unwrap();
        // a normalised: [0.25, 0.75]; b: [0.75, 0.25]; mean [0.5, 0.5].
        assert!(
            (g[0] - 0.5).abs() < 1e-6 && (g[1] - 0.5).abs() < 1e-6,
            "{g:?}"
        );
    }
}
