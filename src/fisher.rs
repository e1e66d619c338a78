//! Diagonal empirical Fisher information of every parameter.
//!
//! By definition (the default), F_i = mean over training examples of (∂ log p(y|x) / ∂θ_i)²,
//! one example at a time with dropout off, y the gold label; for regression (STS-B) the
//! log-likelihood is the Gaussian one, −½(f(x) − y)². The Child-Tuning reference code
//! (alibaba/AliceMind, ChildTuning, `calculate_fisher`) uses a cheaper estimate: one
//! shuffled pass with dropout on, in batches of 16, squaring each batch's mean gradient
//! after clipping each tensor's gradient to norm 1, divided by the number of batches;
//! `Estimator::BatchMean` reproduces it.

use std::collections::BTreeMap;

use anyhow::Result;
use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::loss;
use crate::model::{Ctx, Model, ParamStore};
use crate::tokenize::{collate, Encoded};
use crate::train::dataset::Dataset;

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
    let regression = model.num_labels() == Some(1);
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
    let bar = ProgressBar::new(groups.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("fisher [{bar:30}] {pos}/{len} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut acc: BTreeMap<String, Tensor> = BTreeMap::new();
    for idx in &groups {
        let inputs: Vec<&Encoded> = idx.iter().map(|&i| &data.inputs[i]).collect();
        let batch = collate(&inputs, pad, device)?;
        let labels = data.label_tensor(idx, device)?;
        let logits = model.logits(&batch, &ctx)?;
        let l = if regression {
            (loss::mse(&logits, &labels)? * 0.5)?
        } else {
            loss::cross_entropy(&logits, &labels)?
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
