//! The training loop. It knows nothing of methods: it trains whatever variables the
//! parameter store hands out, under whatever masks the selection carries.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::data::batches;
use crate::data::dataset::Dataset;
use crate::data::TaskSpec;
use crate::eval::score;
use crate::loss;
use crate::methods::{self, Regime};
use crate::model::{Ctx, Model};
use crate::optim::{accumulate, AdamWConfig, LinearSchedule, MaskedAdamW, NonFiniteGradient};
use crate::run::checkpoint::{self, Progress, RESUME};
use crate::run::dir::{self as run_dir, BaseModel, RunInfo};
use crate::run::record::{describe, main_score, EvalRecord};
use crate::run::setup;
use crate::settings::TrainConfig;
use crate::stats::thousands;
use crate::tokenize::{collate, Encoded};
use crate::train::prepare::{open_dir, restore_resumed, selection, Counts, Inputs};
use crate::train::session::{Session, Trainable};
use crate::train::trackers::Trackers;

pub struct Summary {
    pub info: RunInfo,
    pub best: EvalRecord,
    pub last: EvalRecord,
}

/// Set by the Ctrl-C handler: finish the step, save a resumable checkpoint, stop.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Training stopped on request after saving a checkpoint; `main` exits with 130.
#[derive(Debug)]
pub struct Interrupted {
    pub step: usize,
    pub dir: std::path::PathBuf,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "interrupted after step {}: saved {}; continue with `peft train --resume {}`",
            self.step,
            self.dir.join(RESUME).display(),
            self.dir.display()
        )
    }
}

impl std::error::Error for Interrupted {}

/// Streams so that a same-seed run repeats exactly: data order, dropout and per-step
/// masks each draw from their own generator.
fn seeds(seed: u64) -> (u64, u64, u64) {
    (seed, seed.wrapping_add(1), seed.wrapping_add(2))
}

/// Train `cfg` into its output directory: a new run, or with `resume` the run already
/// there, continued from its `resume.safetensors`.
pub fn fit(cfg: &TrainConfig, overwrite: bool, resume: bool) -> Result<Summary> {
    if resume {
        // Said before the lock would create a directory for a run that is not there.
        RunInfo::load(&cfg.output.output_dir)?;
    }
    // Before anything is checked or written: a second writer is refused while this one
    // lives, naming it, and cannot mix its files with ours.
    let created = !cfg.output.output_dir.exists();
    let lock = crate::run::lock::acquire(&cfg.output.output_dir)?;
    let done = fit_locked(cfg, overwrite, resume);
    if done.is_err() && created {
        // A run refused before it wrote anything leaves no directory behind.
        lock.remove_if_empty();
    }
    done
}

fn fit_locked(cfg: &TrainConfig, overwrite: bool, resume: bool) -> Result<Summary> {
    // Default adapter targets as the model's family takes them, recorded so.
    let cfg = &crate::run::setup::fit_to_model(cfg)?;
    let (mut run, mut p) = Run::prepare(cfg, overwrite, resume)?;
    let epochs = run.total.div_ceil(run.steps_per_epoch);
    'epochs: for epoch in p.epoch..epochs {
        // Batches of the step's size, each cut into micro-batches: a step sees the same
        // examples whatever --grad-accum splits it into.
        let order = batches::bucketed(&run.lengths, run.step_size(), &mut run.order_rng);
        if epoch != p.epoch {
            p.epoch = epoch;
            p.steps_in_epoch = 0;
        }
        let in_epoch = run
            .steps_per_epoch
            .min(run.total - (p.step - p.steps_in_epoch));
        let bar = progress(epoch + 1, epochs, in_epoch as u64);
        bar.set_position(p.steps_in_epoch as u64);
        for step_batch in order.iter().skip(p.steps_in_epoch) {
            let group: Vec<Vec<usize>> = step_batch
                .chunks(cfg.optimisation.batch_size)
                .map(<[usize]>::to_vec)
                .collect();
            let lr = run.step(&group, &mut p, &bar)?;
            bar.inc(1);
            let step = p.step;
            let end_of_epoch = step.is_multiple_of(run.steps_per_epoch) || step == run.total;
            if end_of_epoch
                || cfg
                    .output
                    .eval_steps
                    .is_some_and(|n| step.is_multiple_of(n))
            {
                bar.suspend(|| run.evaluate(&mut p, lr))?;
            }
            if step >= run.total {
                bar.finish_and_clear();
                break 'epochs;
            }
            let interrupted = INTERRUPTED.load(Ordering::SeqCst);
            if interrupted
                || end_of_epoch
                || cfg
                    .output
                    .save_steps
                    .is_some_and(|n| step.is_multiple_of(n))
            {
                run.checkpoint(&mut p)?;
            }
            if interrupted {
                bar.abandon();
                return Err(Interrupted {
                    step,
                    dir: cfg.output.output_dir.clone(),
                }
                .into());
            }
        }
        bar.finish_and_clear();
    }
    run.finish(p)
}

/// A run ready to train: its data, model, optimizer and schedule, and where it writes.
struct Run<'a> {
    cfg: &'a TrainConfig,
    info: RunInfo,
    spec: &'static TaskSpec,
    model_type: crate::model::Arch,
    device: Device,
    train: Dataset,
    lengths: Vec<usize>,
    devs: Vec<Dataset>,
    pad: u32,
    model: Model,
    vars: BTreeMap<String, Var>,
    opt: MaskedAdamW,
    /// The method's penalty and after-step work (AdaLoRA's rank budget), if it has any.
    regime: Option<Box<dyn Regime>>,
    /// Where the run reports beside metrics.jsonl (`--report-to`).
    trackers: Trackers,
    ctx: Ctx,
    order_rng: StdRng,
    schedule: LinearSchedule,
    steps_per_epoch: usize,
    total: usize,
    start: Instant,
}

impl<'a> Run<'a> {
    /// Load the data and the model, select and build what trains, write the run's
    /// config.json (or, resuming, check the run against it and restore its state).
    fn prepare(cfg: &'a TrainConfig, overwrite: bool, resume: bool) -> Result<(Self, Progress)> {
        let out = &cfg.output.output_dir;
        // Before the slow loading: a run that cannot start should say so at once.
        let resumed = if resume {
            Some((RunInfo::load(out)?, checkpoint::load(&out.join(RESUME))?))
        } else {
            run_dir::check_free(out, overwrite)?;
            None
        };
        let inputs = Inputs::load(cfg)?;
        let selection = selection(cfg, &inputs)?;
        let Inputs {
            device,
            labels,
            spec,
            model_dir,
            mcfg,
            weights,
            weights_file,
            weights_sha256,
            init_sha256,
            pad,
            train,
            devs,
        } = inputs;

        let (order_seed, dropout_seed, mask_seed) = seeds(cfg.optimisation.seed);
        let adam = AdamWConfig {
            weight_decay: cfg.optimisation.weight_decay,
            max_grad_norm: (cfg.optimisation.max_grad_norm > 0.0)
                .then_some(cfg.optimisation.max_grad_norm),
            ..Default::default()
        };
        let Session {
            trainable: Trainable { store, model, vars },
            mut opt,
            trainable_params,
        } = Session::new(
            weights,
            (&mcfg, spec.head()),
            selection,
            setup::adapter(cfg).as_ref(),
            &device,
            (cfg.optimisation.seed, mask_seed),
            adam,
        )?;
        let total_params: usize = store.all().values().map(|t| t.elem_count()).sum();
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
                path: model_dir,
                sha256: weights_sha256,
                weights_file,
            },
            num_labels: spec.num_labels(),
            labels,
            total_params,
            trainable_params,
            trainable_tensors: vars.keys().cloned().collect(),
            init_sha256,
        };
        let Counts {
            step_size,
            steps_per_epoch,
            total,
        } = Counts::of(cfg, train.len(), resume)?;
        let mut regime = methods::regime::of(&cfg.method_spec(), total)?;
        let resumed = open_dir(cfg, overwrite, resumed, &info)?;

        let ctx = Ctx::train(dropout_seed).with_precision(cfg.model.precision);
        let mut order_rng = StdRng::seed_from_u64(order_seed);
        let lengths = train.lengths();
        let mut p = Progress::start();
        if let Some(mut r) = resumed {
            let state = std::mem::take(&mut r.regime);
            if let Some(g) = regime.as_mut() {
                g.restore(&state)?;
            }
            let shape = checkpoint::RunShape {
                vars: &vars,
                steps_per_epoch,
                total,
                micro_batches: cfg.optimisation.grad_accum,
                spec,
            };
            p = restore_resumed(r, &out.join(RESUME), &shape, &mut opt, &ctx)?;
            run_dir::truncate_metrics(out, p.step)?;
            // Each epoch's order draws from one stream: replay the finished epochs' draws.
            for _ in 0..p.epoch {
                batches::bucketed(&lengths, step_size, &mut order_rng);
            }
            eprintln!("resuming at step {} of {total}", p.step);
        }
        let start = Instant::now() - std::time::Duration::from_secs_f64(p.elapsed_s);
        let trackers = Trackers::open(cfg, resume)?;
        let run = Run {
            cfg,
            info,
            spec,
            model_type: mcfg.model_type,
            device,
            train,
            lengths,
            devs,
            pad,
            model,
            vars,
            opt,
            regime,
            trackers,
            ctx,
            order_rng,
            schedule: LinearSchedule::new(
                cfg.optimisation.lr,
                cfg.optimisation.warmup_ratio,
                total,
            ),
            steps_per_epoch,
            total,
            start,
        };
        Ok((run, p))
    }

    /// Examples per optimizer step.
    fn step_size(&self) -> usize {
        self.cfg.optimisation.batch_size * self.cfg.optimisation.grad_accum
    }

    /// One optimizer step over a group of micro-batches (the gradient of the mean loss
    /// over all their examples, as one batch of them all would give), or a
    /// skipped one if the loss or gradient was not finite and --skip-nonfinite allows it.
    /// Returns the step's learning rate.
    fn step(&mut self, group: &[Vec<usize>], p: &mut Progress, bar: &ProgressBar) -> Result<f64> {
        let t0 = Instant::now();
        let mut acc: BTreeMap<String, Tensor> = BTreeMap::new();
        let (mut group_loss, mut group_tokens, mut group_examples) = (0.0f64, 0usize, 0usize);
        let in_step: usize = group.iter().map(Vec::len).sum();
        for idx in group {
            let inputs: Vec<&Encoded> = idx.iter().map(|&i| &self.train.inputs[i]).collect();
            let batch = collate(&inputs, self.pad, &self.device)?;
            let labels = self.train.label_tensor(idx, &self.device)?;
            // Each micro-batch's mean, weighted by its share of the step's examples.
            let share = idx.len() as f64 / in_step as f64;
            let head = self.spec.head();
            let penalty = match &self.regime {
                Some(g) => g.penalty(&self.vars)?,
                None => None,
            };
            let loss_of = |logits: &Tensor| -> Result<Tensor> {
                let mut loss = loss::for_head(head, logits, &labels, &batch.attention_mask)?;
                if let Some(p) = &penalty {
                    loss = (loss + p)?;
                }
                Ok((loss * share)?)
            };
            let vars = &self.vars;
            let mut collect = |grads: &GradStore| accumulate(&mut acc, vars, grads);
            let loss = if self.cfg.optimisation.recompute {
                self.model
                    .backward_by_layer(&batch, &self.ctx, loss_of, &mut collect)?
            } else {
                let loss = loss_of(&self.model.logits(&batch, &self.ctx)?)?;
                collect(&loss.backward()?)?;
                loss
            };
            group_loss += loss.to_scalar::<f32>()? as f64;
            group_tokens += inputs.iter().map(|e| e.len()).sum::<usize>();
            group_examples += inputs.len();
        }
        let lr = self.schedule.lr(p.step);
        let stepped = if group_loss.is_finite() {
            self.opt.step(&acc, lr)
        } else {
            Err(largest_gradient(&acc)?.into())
        };
        if let (Ok(stats), Some(g)) = (&stepped, self.regime.as_mut()) {
            // The gradients as the step applied them: clipped, as torch's `.grad` is after
            // clip_grad_norm_.
            let clipped: BTreeMap<String, Tensor> = acc
                .iter()
                .map(|(n, t)| Ok((n.clone(), (t * stats.clip)?)))
                .collect::<Result<_>>()?;
            g.after_step(p.step, &self.vars, &clipped)?;
        }
        let grad_norm = stepped.as_ref().ok().map(|s| s.grad_norm);
        let stepped = stepped.map(|_| ());
        p.step += 1;
        // A finite gradient times a huge rate can still overflow a parameter; nothing
        // undoes that update, so the run stops before any checkpoint keeps it.
        if stepped.is_ok() {
            if let Some(name) = first_nonfinite(&self.vars)? {
                bar.abandon();
                bail!(
                    "step {}: the update made `{name}` not finite (its gradient was finite: \
                     learning rate {lr:e} is too large for it). Training stopped; the \
                     checkpoints already in {} are from before this step (lower --lr)",
                    p.step,
                    self.cfg.output.output_dir.display()
                );
            }
        }
        p.steps_in_epoch += 1;
        match stepped {
            Ok(()) => {
                p.loss_sum += group_loss;
                p.loss_n += 1;
            }
            Err(e) => {
                let Some(nf) = e.downcast_ref::<NonFiniteGradient>() else {
                    return Err(e);
                };
                let what = format!(
                    "step {}: loss {:.6}, gradient not finite (largest: {}, norm {})",
                    p.step, group_loss, nf.param, nf.norm
                );
                if p.skipped >= self.cfg.optimisation.skip_nonfinite {
                    bar.abandon();
                    bail!(
                        "{what}. Training stopped before this step changed anything; the \
                         checkpoints already in {} are untouched (lower --lr, or pass \
                         --skip-nonfinite N to skip up to N such steps)",
                        self.cfg.output.output_dir.display()
                    );
                }
                p.skipped += 1;
                bar.suspend(|| {
                    eprintln!(
                        "{what}: step skipped ({} of at most {})",
                        p.skipped, self.cfg.optimisation.skip_nonfinite
                    )
                });
            }
        }
        p.tokens += group_tokens;
        p.examples += group_examples;
        p.train_time += t0.elapsed().as_secs_f64();
        let tokens_per_s = p.tokens as f64 / p.train_time;
        self.trackers
            .step(p.step, group_loss, lr, grad_norm, tokens_per_s)?;
        bar.set_message(format!(
            "loss {:.4} lr {lr:.2e} {:.0} ex/s",
            p.loss_sum / p.loss_n.max(1) as f64,
            p.examples as f64 / p.train_time
        ));
        Ok(lr)
    }

    /// Score the dev splits, record the evaluation, keep the tensors if it is the best.
    fn evaluate(&self, p: &mut Progress, lr: f64) -> Result<()> {
        let (spec, out) = (self.spec, &self.cfg.output.output_dir);
        let dev = score(
            &self.model,
            &self.devs,
            (spec, self.cfg.span_options()),
            self.pad,
            self.cfg.output.eval_batch_size,
            &self.device,
        )?;
        let main = main_score(spec, &dev);
        let improved = p
            .best
            .as_ref()
            .is_none_or(|b| main > main_score(spec, &b.dev));
        let record = EvalRecord {
            step: p.step,
            epoch: p.step as f64 / self.steps_per_epoch as f64,
            train_loss: p.loss_sum / p.loss_n.max(1) as f64,
            lr,
            dev,
            elapsed_s: self.start.elapsed().as_secs_f64(),
            train_tokens_per_s: p.tokens as f64 / p.train_time,
            train_examples_per_s: p.examples as f64 / p.train_time,
            best: improved,
        };
        (p.loss_sum, p.loss_n) = (0.0, 0);
        run_dir::append_metrics(out, &serde_json::to_value(&record)?)?;
        self.trackers.eval(&record)?;
        eprintln!("{}", describe(spec, &record));
        if improved {
            run_dir::save_tensors(&out.join(run_dir::BEST), &values(&self.vars))?;
            p.best = Some(record.clone());
        }
        p.last = Some(record);
        Ok(())
    }

    /// Save what `--resume` needs to continue from here.
    fn checkpoint(&self, p: &mut Progress) -> Result<()> {
        p.dropout_calls = self.ctx.calls();
        p.elapsed_s = self.start.elapsed().as_secs_f64();
        checkpoint::save(
            &self.cfg.output.output_dir.join(RESUME),
            &self.vars,
            &self.opt.state()?,
            p,
            &match &self.regime {
                Some(g) => g.state()?,
                None => Default::default(),
            },
        )
    }

    /// The final tensors, PEFT's format of the best state, and no resume state left.
    fn finish(mut self, p: Progress) -> Result<Summary> {
        let out = &self.cfg.output.output_dir;
        run_dir::save_tensors(&out.join(run_dir::LAST), &values(&self.vars))?;
        // PEFT's format carries one state: the best, which `peft eval` scores by default.
        let best_tensors = run_dir::load_tensors(&out.join(run_dir::BEST))?;
        let mut peft_fields = serde_json::json!({});
        if let Some(g) = &self.regime {
            let report = g.report()?;
            if let Some((file, value)) = report.file {
                let text = serde_json::to_string_pretty(&value)? + "\n";
                run_dir::write_atomic(&out.join(file), text.as_bytes())?;
            }
            peft_fields = report.peft_fields;
        }
        crate::run::peft_format::write(
            out,
            &self.info,
            self.model_type,
            &best_tensors,
            &peft_fields,
        )?;
        // The run is complete: the resume state (moments included) is no longer needed.
        let resume_file = out.join(RESUME);
        if resume_file.exists() {
            std::fs::remove_file(&resume_file)
                .with_context(|| format!("removing {}", resume_file.display()))?;
        }
        if let Some(best) = &p.best {
            let peft_format = out.join(crate::run::peft_format::CONFIG).exists();
            let kind = crate::run::card::Kind::Run { peft_format };
            crate::run::card::write(out, &self.info, self.spec, Some(best), kind)?;
            // Last, so the trackers' copy of the run directory has the card and the export.
            self.trackers.finish(&self.info, best, p.step)?;
        }
        match (p.best, p.last) {
            (Some(best), Some(last)) => Ok(Summary {
                info: self.info,
                best,
                last,
            }),
            _ => bail!("training ended without an evaluation"),
        }
    }
}

/// For a step whose loss was not finite: the tensor with the largest gradient norm.
fn largest_gradient(grads: &BTreeMap<String, Tensor>) -> Result<NonFiniteGradient> {
    let mut worst: Option<NonFiniteGradient> = None;
    for (name, g) in grads {
        let norm = crate::optim::squared_norm(g)?.sqrt();
        if worst.as_ref().is_none_or(|w| worse(norm, w.norm)) {
            worst = Some(NonFiniteGradient {
                param: name.clone(),
                norm,
            });
        }
    }
    Ok(worst.unwrap_or(NonFiniteGradient {
        param: "(no tensor has a gradient)".into(),
        norm: f64::NAN,
    }))
}

/// The first trainable tensor holding a NaN or an infinity, if any.
fn first_nonfinite(vars: &BTreeMap<String, Var>) -> Result<Option<String>> {
    let all: Vec<Option<Tensor>> = vars.values().map(|v| Some(v.as_tensor().clone())).collect();
    let norms = crate::optim::squared_norms(&all)?;
    Ok(vars
        .keys()
        .zip(norms)
        .find(|(_, n)| !n.is_some_and(f64::is_finite))
        .map(|(name, _)| name.clone()))
}

/// NaN is the worst; the first NaN stays the culprit.
fn worse(a: f64, than: f64) -> bool {
    !than.is_nan() && (a.is_nan() || a > than)
}

fn values(vars: &BTreeMap<String, candle_core::Var>) -> HashMap<String, Tensor> {
    vars.iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect()
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
