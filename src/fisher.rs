//! Diagonal empirical Fisher information of every parameter.
//!
//! By definition (the default), F_i = mean over training examples of (∂ log p(y|x) / ∂θ_i)²,
//! each example's own gradient with dropout off (formed in batches: [`probed`]), y the gold
//! label; for regression (STS-B) the log-likelihood is the Gaussian one, −½(f(x) − y)².
//! The Child-Tuning reference code
//! (alibaba/AliceMind, ChildTuning, `calculate_fisher`) uses a cheaper estimate: one
//! shuffled pass with dropout on, in batches of 16, squaring each batch's mean gradient
//! after clipping each tensor's gradient to norm 1, divided by the number of batches;
//! `Estimator::BatchMean` reproduces it.
//!
//! An estimate made before training is cached (see [`cached`]): a sweep over learning
//! rates, fractions or resumed runs estimates it once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device, Tensor, TensorId, D};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::data::dataset::Dataset;
use crate::data::Label;
use crate::kernels::per_example;
use crate::loss;
use crate::model::nn::ProbeKind;
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

/// Examples per batch of the per-example estimate's batched pass: each example's
/// gradients are still its own (see [`probed`]); the batch only shares the matrix products.
pub const PROBE_BATCH: usize = 32;

/// Fisher of every trainable parameter in `store` (build it with what is to be ranked
/// trainable). The per-example estimate takes the parameters whose per-example gradients
/// probes give (LayerNorms, linear layers and embedding tables on a token stream:
/// [`Ctx::probing`]) from batched passes, and the others one example at a time.
pub fn estimate(
    model: &Model,
    store: &ParamStore,
    data: &Dataset,
    pad: u32,
    opts: FisherOptions,
    device: &Device,
) -> Result<BTreeMap<String, Tensor>> {
    let head = model
        .head_kind()
        .ok_or_else(|| anyhow::anyhow!("Fisher information needs a model with a task head"))?;
    let mut order: Vec<usize> = (0..data.len()).collect();
    order.shuffle(&mut StdRng::seed_from_u64(opts.seed));
    order.truncate(opts.samples.unwrap_or(usize::MAX).min(data.len()));
    // Callers refuse a sample of 0; an empty split would still average nothing.
    if order.is_empty() {
        crate::user_bail!("no training examples to estimate the Fisher information from");
    }
    eprintln!(
        "Fisher information: {} of {} training examples, {}",
        order.len(),
        data.len(),
        match opts.estimator {
            Estimator::PerExample => "per-example gradients, dropout off".to_string(),
            Estimator::BatchMean { batch } =>
                format!("squared batch-mean gradients of {batch} examples, dropout on"),
        }
    );
    let all: BTreeMap<String, candle_core::Var> = store.vars().into_iter().collect();
    let pass = Pass {
        model,
        head,
        data,
        pad,
        device,
    };
    let (groups, ctx): (Vec<Vec<usize>>, Ctx) = match opts.estimator {
        Estimator::BatchMean { batch } => (
            order.chunks(batch.max(1)).map(|c| c.to_vec()).collect(),
            Ctx::train(opts.seed),
        ),
        Estimator::PerExample => {
            let (mut acc, rest) = probed(&pass, store, &order)?;
            if rest.is_empty() {
                return Ok(acc);
            }
            let rest: BTreeMap<String, candle_core::Var> = all
                .iter()
                .filter(|(k, _)| rest.contains(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let groups: Vec<Vec<usize>> = order.iter().map(|&i| vec![i]).collect();
            acc.extend(looped(&pass, &rest, &groups, &Ctx::eval(), opts.estimator)?);
            return Ok(acc);
        }
    };
    looped(&pass, &all, &groups, &ctx, opts.estimator)
}

/// The batched per-example estimate alone (see [`estimate`]): over examples `order` of
/// `data`, the estimates of the tensors of `store` that probes reach, and the names of
/// those they do not.
pub fn batched(
    model: &Model,
    store: &ParamStore,
    data: &Dataset,
    pad: u32,
    device: &Device,
    order: &[usize],
) -> Result<(BTreeMap<String, Tensor>, Vec<String>)> {
    let head = model
        .head_kind()
        .ok_or_else(|| anyhow::anyhow!("Fisher information needs a model with a task head"))?;
    let pass = Pass {
        model,
        head,
        data,
        pad,
        device,
    };
    probed(&pass, store, order)
}

/// What every pass over the examples reads.
struct Pass<'a> {
    model: &'a Model,
    head: HeadKind,
    data: &'a Dataset,
    pad: u32,
    device: &'a Device,
}

impl Pass<'_> {
    /// The loss of examples `idx` as one batch, summed over them (each example's own
    /// negative log-likelihood), and the batch.
    fn loss(&self, idx: &[usize], ctx: &Ctx) -> Result<Tensor> {
        let inputs: Vec<&Encoded> = idx.iter().map(|&i| &self.data.inputs[i]).collect();
        let batch = collate(&inputs, self.pad, self.device)?;
        let labels = self.data.label_tensor(idx, self.device)?;
        let logits = self.model.logits(&batch, ctx)?;
        let mean = match self.head {
            // A Gaussian's log-likelihood: half the squared error.
            HeadKind::Classes(1) => (loss::mse(&logits, &labels)? * 0.5)?,
            _ => loss::for_head(self.head, &logits, &labels, &batch.attention_mask)?,
        };
        Ok((mean * idx.len() as f64)?)
    }
}

/// The per-example estimate of the parameters probes reach, in batches of [`PROBE_BATCH`]:
/// from the gradient dy of a layer's output (the probe) and the layer's input x, as the
/// batch's own backward forms them before summing over the batch, example b's gradient of
/// a LayerNorm gain is Σ_t dy_bt ⊙ x̂_bt over its own tokens, of a bias Σ_t dy_bt, of a
/// weight matrix Σ_t dy_bt x_btᵀ, of an embedding row the sum of dy_bt over the tokens
/// that read it. Returns those parameters' estimates and the names of the others in `vars`.
fn probed(
    pass: &Pass,
    store: &ParamStore,
    order: &[usize],
) -> Result<(BTreeMap<String, Tensor>, Vec<String>)> {
    let vars = store.vars();
    // The same model over the same values with nothing trainable: the probes' gradients
    // are all this pass needs, not the batch's own weight gradients (a third of the
    // backward) nor the embeddings' (a scatter into the whole vocabulary per batch).
    let all = store.all();
    let values = all.iter().map(|(k, t)| (k.clone(), t.detach())).collect();
    let frozen = ParamStore::new(values, pass.device.clone(), 0, Box::new(|_| false));
    let model = Model::load_with_adapters(&frozen, pass.model.config(), Some(pass.head), None)?;
    let held = frozen.all();
    if held.len() != all.len() {
        anyhow::bail!(
            "the batched Fisher pass rebuilt a model of {} tensors from one of {} \
             (a model with adapters?)",
            held.len(),
            all.len()
        );
    }
    let pass = &Pass {
        model: &model,
        ..*pass
    };
    let names: HashMap<TensorId, &String> = vars
        .keys()
        .filter_map(|k| held.get(k).map(|t| (t.id(), k)))
        .collect();
    let mut acc = Acc::default();
    let mut reached: Option<BTreeSet<String>> = None;
    let bar = progress(order.len().div_ceil(PROBE_BATCH));
    // Examples of similar length together: each one's gradients are its own whatever its
    // batch, and a batch pads to its longest.
    let mut order = order.to_vec();
    order.sort_by_key(|&i| (pass.data.inputs[i].len(), i));
    for idx in order.chunks(PROBE_BATCH) {
        let ctx = Ctx::probing(names.keys().copied().collect());
        let l = pass.loss(idx, &ctx)?;
        let probes = ctx.take_probes();
        let grads = l.backward()?;
        let b = idx.len();
        let mut here = BTreeSet::new();
        // A tensor two probes see (used twice in one forward) has per-example gradients
        // that are sums over both: out of a probe's reach.
        let mut seen: HashMap<TensorId, usize> = HashMap::new();
        for p in probes.list {
            // A probe tells examples apart only on a per-example input.
            let dims = p.input.dims();
            if dims.first() != Some(&b) || !(2..=3).contains(&dims.len()) {
                continue;
            }
            let width = p.out.as_tensor().dim(D::Minus1)?;
            let dy = match grads.get(p.out.as_tensor()) {
                Some(g) => g.detach().reshape((b, (), width))?,
                None => p.out.as_tensor().zeros_like()?.reshape((b, (), width))?,
            };
            let mut touch = |id: TensorId| -> Option<String> {
                *seen.entry(id).or_default() += 1;
                let name = names.get(&id)?;
                here.insert((*name).clone());
                Some((*name).clone())
            };
            match p.kind {
                ProbeKind::LayerNorm { weight, bias, eps } => {
                    let (w, bn) = (touch(weight), touch(bias));
                    if w.is_none() && bn.is_none() {
                        continue;
                    }
                    // Detached: the estimate must not hold this batch's graph.
                    let x = p.input.detach().reshape((b, (), width))?;
                    let mean = x.mean_keepdim(D::Minus1)?;
                    let c = x.broadcast_sub(&mean)?;
                    let var = c.sqr()?.mean_keepdim(D::Minus1)?;
                    let xhat = c.broadcast_div(&(var + eps)?.sqrt()?)?;
                    if let Some(w) = w {
                        acc.add_squares(&w, &(dy.clone() * xhat)?.sum(1)?)?;
                    }
                    if let Some(bn) = bn {
                        acc.add_squares(&bn, &dy.sum(1)?)?;
                    }
                }
                ProbeKind::Linear { weight, bias } => {
                    if let Some(bn) = bias.and_then(&mut touch) {
                        acc.add_squares(&bn, &dy.sum(1)?)?;
                    }
                    if let Some(w) = touch(weight) {
                        let x = p.input.detach();
                        let x = x.reshape((b, (), x.dim(D::Minus1)?))?;
                        acc.add_weight_squares(&w, &dy, &x)?;
                    }
                }
                ProbeKind::Lookup { tables } => {
                    for (id, rows) in tables {
                        if let Some(name) = touch(id) {
                            let shape = held[&name].dims2()?;
                            acc.add_lookup_squares(&name, shape, &dy, &rows)?;
                        }
                    }
                }
            }
        }
        for id in probes
            .shared
            .iter()
            .chain(seen.iter().filter(|(_, &n)| n > 1).map(|(id, _)| id))
        {
            if let Some(n) = names.get(id) {
                here.remove(*n);
            }
        }
        // What the first batch reached decides; later batches (shorter, or another shape)
        // change nothing in the model's structure.
        reached.get_or_insert(here);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let reached = reached.unwrap_or_default();
    let n = order.len() as f64;
    let acc = acc
        .finish(pass.device)?
        .into_iter()
        .filter(|(k, _)| reached.contains(k))
        .map(|(k, v)| Ok((k, (v / n)?)))
        .collect::<Result<BTreeMap<_, _>>>()?;
    let rest = vars
        .keys()
        .filter(|k| !acc.contains_key(*k))
        .cloned()
        .collect();
    Ok((acc, rest))
}

/// Sums of squared per-example gradients, per parameter: tensors, and on the host the
/// lookup tables' (a few rows of a large table per example) and, on the CPU, the weight
/// matrices' (summed in place, `kernels::per_example`).
#[derive(Default)]
struct Acc {
    tensors: BTreeMap<String, Tensor>,
    host: BTreeMap<String, (Vec<f32>, (usize, usize))>,
}

impl Acc {
    /// Add the squares of `per_example` (batch, ...) summed over the batch.
    fn add_squares(&mut self, name: &str, per_example: &Tensor) -> Result<()> {
        let sq = per_example.sqr()?.sum(0)?;
        let sum = match self.tensors.remove(name) {
            Some(a) => (a + sq)?,
            None => sq,
        };
        self.tensors.insert(name.to_string(), sum);
        Ok(())
    }

    /// Example b's weight gradient is dy_bᵀ x_b, (out, in), from dy (batch, seq, out) and x
    /// (batch, seq, in).
    fn add_weight_squares(&mut self, name: &str, dy: &Tensor, x: &Tensor) -> Result<()> {
        if !dy.device().is_cpu() {
            let sq = per_example::squared_products(dy, x)?;
            let sum = match self.tensors.remove(name) {
                Some(a) => (a + sq)?,
                None => sq,
            };
            self.tensors.insert(name.to_string(), sum);
            return Ok(());
        }
        let shape = (dy.dim(2)?, x.dim(2)?);
        let (acc, _) = self
            .host
            .entry(name.to_string())
            .or_insert_with(|| (vec![0.0; shape.0 * shape.1], shape));
        Ok(per_example::add_squared_products(acc, dy, x)?)
    }

    /// Example b's gradient of row r of a (rows, width) table is the sum of dy_bt over
    /// its tokens t that read r (`rows`, (batch, seq)).
    fn add_lookup_squares(
        &mut self,
        name: &str,
        shape: (usize, usize),
        dy: &Tensor,
        rows: &Tensor,
    ) -> Result<()> {
        let (b, t, e) = dy.dims3()?;
        let dy: Vec<f32> = dy.flatten_all()?.to_vec1()?;
        let rows: Vec<u32> = rows.flatten_all()?.to_dtype(DType::U32)?.to_vec1()?;
        if let Some(r) = rows.iter().find(|&&r| r as usize >= shape.0) {
            anyhow::bail!("{name}: row {r} read, of {} rows", shape.0);
        }
        let (acc, _) = self
            .host
            .entry(name.to_string())
            .or_insert_with(|| (vec![0.0; shape.0 * shape.1], shape));
        lookup_squares(&dy, &rows, (b, t, e), acc);
        Ok(())
    }

    fn finish(self, device: &Device) -> Result<BTreeMap<String, Tensor>> {
        let mut out = self.tensors;
        for (name, (v, shape)) in self.host {
            out.insert(name, Tensor::from_vec(v, shape, device)?);
        }
        Ok(out)
    }
}

/// For each example, the rows its tokens read, each with the sum of those tokens' dy,
/// squared into `acc` (rows × e, row-major).
fn lookup_squares(dy: &[f32], rows: &[u32], (b, t, e): (usize, usize, usize), acc: &mut [f32]) {
    let mut tokens: Vec<usize> = Vec::with_capacity(t);
    let mut sum = vec![0f32; e];
    for ex in 0..b {
        tokens.clear();
        tokens.extend(0..t);
        tokens.sort_by_key(|&k| rows[ex * t + k]);
        let mut k = 0;
        while k < t {
            let r = rows[ex * t + tokens[k]] as usize;
            sum.fill(0.0);
            while k < t && rows[ex * t + tokens[k]] as usize == r {
                let d = &dy[(ex * t + tokens[k]) * e..][..e];
                sum.iter_mut().zip(d).for_each(|(s, d)| *s += d);
                k += 1;
            }
            let a = &mut acc[r * e..][..e];
            a.iter_mut().zip(&sum).for_each(|(a, s)| *a += s * s);
        }
    }
}

fn progress(len: usize) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("fisher [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// One backward per group of examples: squared per-example gradients with groups of one,
/// Child-Tuning's squared batch-mean gradients with groups of its batch.
fn looped(
    pass: &Pass,
    vars: &BTreeMap<String, candle_core::Var>,
    groups: &[Vec<usize>],
    ctx: &Ctx,
    estimator: Estimator,
) -> Result<BTreeMap<String, Tensor>> {
    let bar = progress(groups.len());
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
        // The batch's mean loss: an example's own with groups of one.
        let l = (pass.loss(idx, ctx)? / idx.len() as f64)?;
        let grads = l.backward()?;
        for (name, var) in vars {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let g = match estimator {
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
/// order), the label count (the head's shape), the estimator with its sample size and
/// seed (which also seeds a head the checkpoint lacks), and `scope`, the methods whose
/// ranked tensors it covers.
pub fn cache_key(
    weights_sha256: &str,
    data: &Dataset,
    num_labels: usize,
    opts: &FisherOptions,
    scope: &str,
) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"peft fisher v2\0");
    h.update(weights_sha256.as_bytes());
    h.update(format!(
        "{num_labels}|{:?}|{:?}|{}|{scope}|",
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
    fn a_lookup_row_read_twice_by_one_example_squares_the_sum() {
        // Two examples of three tokens, width 1: the first reads row 1 twice and row 0
        // once, the second rows 1 and 2 (and 2 again).
        let dy = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let rows = [1, 0, 1, 1, 2, 2];
        let mut acc = vec![0.0; 3];
        lookup_squares(&dy, &rows, (2, 3, 1), &mut acc);
        // Row 0: 2²; row 1: (1 + 3)² + 4²; row 2: (5 + 6)².
        assert_eq!(acc, [4.0, 32.0, 121.0]);
    }

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
