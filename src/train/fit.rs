//! The training loop. It knows nothing of methods: it trains whatever variables the
//! parameter store hands out, under whatever masks the selection carries.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Serialize;

use super::batches;
use super::config::TrainConfig;
use super::dataset::{predict, Dataset};
use crate::data::tasks::{task, TaskSpec};
use crate::fisher::{estimate, Estimator, FisherOptions};
use crate::loss;
use crate::methods::{self, MethodSpec};
use crate::metrics::evaluate;
use crate::model::ModelConfig;
use crate::model::{drop_mismatched_head, load, read_checkpoint, Ctx, Model, ParamStore};
use crate::optim::{AdamWConfig, MaskedAdamW};
use crate::run_dir::{self, BaseModel, RunInfo};
use crate::tokenize::{collate, Encoded, TextEncoder};

/// One evaluation: dev metrics per split, and where training stood.
#[derive(Debug, Clone, Serialize)]
pub struct EvalRecord {
    pub step: usize,
    pub epoch: f64,
    pub train_loss: f64,
    pub lr: f64,
    pub dev: BTreeMap<String, BTreeMap<String, f64>>,
    pub elapsed_s: f64,
    pub train_tokens_per_s: f64,
    pub train_examples_per_s: f64,
    pub best: bool,
}

pub struct Summary {
    pub info: RunInfo,
    pub best: EvalRecord,
    pub last: EvalRecord,
}

/// Streams so that a same-seed run repeats exactly: data order, dropout and per-step
/// masks each draw from their own generator.
fn seeds(seed: u64) -> (u64, u64, u64) {
    (seed, seed.wrapping_add(1), seed.wrapping_add(2))
}

pub fn fit(cfg: &TrainConfig, overwrite: bool) -> Result<Summary> {
    let device = crate::device::parse(&cfg.device)?;
    let spec = task(&cfg.task)?;
    let (mcfg, mut weights) = read_checkpoint(&cfg.model)?;
    if drop_mismatched_head(&mut weights, spec.num_labels()) {
        eprintln!("the checkpoint's classifier has another number of labels: starting a new head");
    }
    let weights_file = load::weight_file(&cfg.model)?;
    let encoder = TextEncoder::load(&cfg.model, &mcfg, cfg.max_seq_len)?;
    let train = Dataset::load(spec, &cfg.data_dir, "train", &encoder)?;
    if train.is_empty() {
        crate::user_bail!("{}: the train split is empty", cfg.data_dir.display());
    }
    let devs = spec
        .dev_splits
        .iter()
        .map(|s| Dataset::load(spec, &cfg.data_dir, s, &encoder))
        .collect::<Result<Vec<_>>>()?;

    let fisher = if cfg.method.needs_fisher() {
        Some(fisher_for(
            cfg,
            &mcfg,
            &weights,
            spec,
            &train,
            encoder.pad_id(),
            &device,
        )?)
    } else {
        None
    };
    let method = MethodSpec {
        method: cfg.method,
        fraction: cfg.fraction.unwrap_or(1.0),
        reserve: cfg.reserve.unwrap_or(1.0),
        seed: cfg.seed,
    };
    let selection = methods::select(&method, &weights, fisher.as_ref())?;
    drop(fisher);
    let store = ParamStore::new(weights, device.clone(), cfg.seed, selection.trainable);
    let model = Model::load_with_adapters(
        &store,
        &mcfg,
        Some(spec.num_labels()),
        cfg.adapter().as_ref(),
    )?;
    let vars = store.vars();
    let total_params: usize = store.all().values().map(|t| t.elem_count()).sum();
    let trainable_params = trainable_count(&vars, &selection.masks)?;
    eprintln!(
        "trainable parameters: {} of {} ({:.3}%) in {} tensors",
        thousands(trainable_params),
        thousands(total_params),
        100.0 * trainable_params as f64 / total_params as f64,
        vars.len()
    );
    for name in store.created() {
        eprintln!("initialised {name} (not in the checkpoint)");
    }

    let info = RunInfo {
        peft_version: env!("CARGO_PKG_VERSION").to_string(),
        train: cfg.clone(),
        base: BaseModel {
            path: cfg.model.clone(),
            sha256: run_dir::sha256_file(&weights_file)?,
            weights_file,
        },
        num_labels: spec.num_labels(),
        total_params,
        trainable_params,
        trainable_tensors: vars.keys().cloned().collect(),
    };
    let out = &cfg.output_dir;
    run_dir::prepare(out, overwrite)?;
    run_dir::write_atomic(
        &out.join(run_dir::CONFIG),
        serde_json::to_string_pretty(&info)?.as_bytes(),
    )?;

    let (order_seed, dropout_seed, mask_seed) = seeds(cfg.seed);
    let adam = AdamWConfig {
        weight_decay: cfg.weight_decay,
        max_grad_norm: (cfg.max_grad_norm > 0.0).then_some(cfg.max_grad_norm),
        ..Default::default()
    };
    let mut opt = MaskedAdamW::new(
        vars.clone(),
        selection.masks,
        methods::decays,
        adam,
        mask_seed,
    )?;
    let batches_per_epoch = train.len().div_ceil(cfg.batch_size);
    let steps_per_epoch = batches_per_epoch.div_ceil(cfg.grad_accum);
    let total = cfg.max_steps.unwrap_or(cfg.epochs * steps_per_epoch);
    let schedule = crate::optim::LinearSchedule::new(cfg.lr, cfg.warmup_ratio, total);
    let ctx = Ctx::train(dropout_seed);
    let mut order_rng = StdRng::seed_from_u64(order_seed);
    let lengths = train.lengths();
    let regression = spec.num_labels() == 1;
    let pad = encoder.pad_id();

    let start = Instant::now();
    let mut train_time = 0.0f64;
    let (mut tokens, mut examples) = (0usize, 0usize);
    let (mut loss_sum, mut loss_n) = (0.0f64, 0usize);
    let mut step = 0usize;
    let mut best: Option<EvalRecord> = None;
    let mut last: Option<EvalRecord> = None;
    let epochs = total.div_ceil(steps_per_epoch);
    'epochs: for epoch in 0..epochs {
        let order = batches::bucketed(&lengths, cfg.batch_size, &mut order_rng);
        let bar = progress(epoch + 1, epochs, steps_per_epoch.min(total - step) as u64);
        for group in order.chunks(cfg.grad_accum) {
            let t0 = Instant::now();
            let mut acc: BTreeMap<String, Tensor> = BTreeMap::new();
            for idx in group {
                let inputs: Vec<&Encoded> = idx.iter().map(|&i| &train.inputs[i]).collect();
                let batch = collate(&inputs, pad, &device)?;
                let labels = train.label_tensor(idx, &device)?;
                let logits = model.logits(&batch, &ctx)?;
                let loss = if regression {
                    loss::mse(&logits, &labels)?
                } else {
                    loss::cross_entropy(&logits, &labels)?
                };
                let l = loss.to_scalar::<f32>()? as f64;
                if !l.is_finite() {
                    bail!(
                        "step {}: the loss is {l}; lower --lr or check the data",
                        step + 1
                    );
                }
                let grads = (loss / group.len() as f64)?.backward()?;
                for (name, var) in &vars {
                    if let Some(g) = grads.get(var.as_tensor()) {
                        let sum = match acc.remove(name) {
                            Some(a) => (a + g)?,
                            None => g.clone(),
                        };
                        acc.insert(name.clone(), sum);
                    }
                }
                loss_sum += l;
                loss_n += 1;
                tokens += inputs.iter().map(|e| e.len()).sum::<usize>();
                examples += inputs.len();
            }
            let lr = schedule.lr(step);
            opt.step(&acc, lr)?;
            step += 1;
            train_time += t0.elapsed().as_secs_f64();
            bar.set_message(format!(
                "loss {:.4} lr {lr:.2e} {:.0} ex/s",
                loss_sum / loss_n.max(1) as f64,
                examples as f64 / train_time
            ));
            bar.inc(1);
            let end_of_epoch = step.is_multiple_of(steps_per_epoch) || step == total;
            let periodic = cfg.eval_steps.is_some_and(|n| step.is_multiple_of(n));
            if end_of_epoch || periodic {
                bar.suspend(|| -> Result<()> {
                    let dev = score(&model, &devs, spec, pad, cfg.eval_batch_size, &device)?;
                    let main = main_score(spec, &dev);
                    let improved = best
                        .as_ref()
                        .is_none_or(|b| main > main_score(spec, &b.dev));
                    let record = EvalRecord {
                        step,
                        epoch: step as f64 / steps_per_epoch as f64,
                        train_loss: loss_sum / loss_n.max(1) as f64,
                        lr,
                        dev,
                        elapsed_s: start.elapsed().as_secs_f64(),
                        train_tokens_per_s: tokens as f64 / train_time,
                        train_examples_per_s: examples as f64 / train_time,
                        best: improved,
                    };
                    (loss_sum, loss_n) = (0.0, 0);
                    run_dir::append_metrics(out, &serde_json::to_value(&record)?)?;
                    eprintln!("{}", describe(spec, &record));
                    if improved {
                        run_dir::save_tensors(&out.join(run_dir::BEST), &values(&vars))?;
                        best = Some(record.clone());
                    }
                    last = Some(record);
                    Ok(())
                })?;
            }
            if step >= total {
                bar.finish_and_clear();
                break 'epochs;
            }
        }
        bar.finish_and_clear();
    }
    run_dir::save_tensors(&out.join(run_dir::LAST), &values(&vars))?;
    // PEFT's format carries one state: the best, which `peft eval` scores by default.
    let best_tensors = run_dir::load_tensors(&out.join(run_dir::BEST))?;
    crate::peft_format::write(out, &info, mcfg.model_type, &best_tensors)?;
    match (best, last) {
        (Some(best), Some(last)) => Ok(Summary { info, best, last }),
        _ => bail!("training ended without an evaluation"),
    }
}

/// The Fisher information that ranks parameters: from --fisher, or estimated on the
/// training set at the pre-trained weights (with the same seeded head as training).
fn fisher_for(
    cfg: &TrainConfig,
    mcfg: &ModelConfig,
    weights: &HashMap<String, Tensor>,
    spec: &TaskSpec,
    train: &Dataset,
    pad: u32,
    device: &Device,
) -> Result<BTreeMap<String, Tensor>> {
    if let Some(path) = &cfg.fisher {
        return Ok(run_dir::load_tensors(path)?.into_iter().collect());
    }
    let start = Instant::now();
    let store = ParamStore::new(
        weights.clone(),
        device.clone(),
        cfg.seed,
        Box::new(|_| true),
    );
    let model = Model::load(&store, mcfg, Some(spec.num_labels()))?;
    let estimator = cfg
        .fisher_batch_mean
        .map_or(Estimator::PerExample, |b| Estimator::BatchMean { batch: b });
    let opts = FisherOptions {
        samples: cfg.fisher_samples,
        estimator,
        seed: cfg.seed,
    };
    let f = estimate(&model, &store, train, pad, opts, device)?;
    eprintln!(
        "Fisher information estimated in {:.1}s",
        start.elapsed().as_secs_f64()
    );
    Ok(f)
}

/// Dev metrics of every dev split (MNLI has two).
pub fn score(
    model: &Model,
    devs: &[Dataset],
    spec: &TaskSpec,
    pad: u32,
    batch_size: usize,
    device: &Device,
) -> Result<BTreeMap<String, BTreeMap<String, f64>>> {
    let mut out = BTreeMap::new();
    for d in devs {
        let preds = predict(model, d, pad, batch_size, device)?;
        out.insert(d.split.clone(), evaluate(spec, &preds, &d.labels)?);
    }
    Ok(out)
}

/// The number that picks the best evaluation: the task's main metric on its first dev split.
pub fn main_score(spec: &TaskSpec, dev: &BTreeMap<String, BTreeMap<String, f64>>) -> f64 {
    dev.get(spec.dev_splits[0])
        .and_then(|m| m.get(spec.main_metric.key()))
        .copied()
        .unwrap_or(f64::NEG_INFINITY)
}

/// `epoch 1.00 step 78 | loss 0.6912 | dev accuracy 52.71 | 2150 tok/s | 42s`
pub fn describe(spec: &TaskSpec, r: &EvalRecord) -> String {
    let mut dev = String::new();
    for (split, metrics) in &r.dev {
        let shown: Vec<String> = spec
            .metrics
            .iter()
            .map(|m| format!("{} {:.2}", m.key(), 100.0 * metrics[m.key()]))
            .collect();
        let label = if r.dev.len() > 1 {
            format!("{split} ")
        } else {
            "dev ".into()
        };
        dev.push_str(&format!("{label}{} ", shown.join(" ")));
    }
    format!(
        "epoch {:.2} step {} | loss {:.4} | {}| {:.0} tok/s | {:.0}s{}",
        r.epoch,
        r.step,
        r.train_loss,
        dev,
        r.train_tokens_per_s,
        r.elapsed_s,
        if r.best { " *" } else { "" }
    )
}

fn values(vars: &BTreeMap<String, candle_core::Var>) -> HashMap<String, Tensor> {
    vars.iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect()
}

/// Elements that can change: all of a dense tensor, the ones of a fixed mask.
fn trainable_count(
    vars: &BTreeMap<String, candle_core::Var>,
    masks: &BTreeMap<String, crate::optim::Mask>,
) -> Result<usize> {
    let mut n = 0;
    for (name, var) in vars {
        n += match masks.get(name) {
            Some(crate::optim::Mask::Fixed(m)) => m.sum_all()?.to_scalar::<f32>()? as usize,
            _ => var.elem_count(),
        };
    }
    Ok(n)
}

fn progress(epoch: usize, epochs: usize, steps: u64) -> ProgressBar {
    let bar = ProgressBar::new(steps);
    let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(format!("epoch {epoch}/{epochs}"));
    bar
}

pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
