//! Where a training run reports beside its own files (`--report-to`): TensorBoard event
//! files in `RUN/tensorboard/` (`run::tensorboard`), with the training loss (averaged over
//! the logging window), learning rate, gradient norm and tokens/s every `--logging-steps`,
//! every dev metric at every evaluation, the resolved settings as text at the start, and
//! the settings and best dev metrics as an HParams session at the end. `metrics.jsonl` is
//! the run's own record, written by the loop whatever this holds.

use std::cell::Cell;

use anyhow::Result;

use crate::run::dir::RunInfo;
use crate::run::record::EvalRecord;
use crate::run::tensorboard::EventWriter;
use crate::settings::{Tracker, TrainConfig};

pub struct Trackers {
    board: Option<EventWriter>,
    every: usize,
    /// The training loss summed over the logging window, and its steps.
    window: Cell<(f64, usize)>,
}

impl Trackers {
    /// Open the trackers of `cfg`; a new run writes its settings as text. A resumed run
    /// opens a new event file in the same folder, which TensorBoard reads as one run.
    pub fn open(cfg: &TrainConfig, resumed: bool) -> Result<Self> {
        let out = &cfg.output;
        let board = match out.report_to.contains(&Tracker::Tensorboard) {
            true => Some(EventWriter::create(&out.output_dir.join("tensorboard"))?),
            false => None,
        };
        if let (Some(b), false) = (&board, resumed) {
            let settings = serde_json::to_string_pretty(cfg)?;
            b.text(0, "config", &format!("```json\n{settings}\n```"))?;
        }
        Ok(Self {
            board,
            every: out.logging_steps,
            window: Cell::new((0.0, 0)),
        })
    }

    /// After optimizer step `step` (counted from 1) with this loss, rate, gradient norm
    /// (None for a skipped step) and tokens/s so far.
    pub fn step(
        &self,
        step: usize,
        loss: f64,
        lr: f64,
        grad_norm: Option<f64>,
        tokens_per_s: f64,
    ) -> Result<()> {
        let Some(b) = &self.board else {
            return Ok(());
        };
        let (sum, n) = self.window.get();
        let (sum, n) = match grad_norm {
            Some(_) => (sum + loss, n + 1),
            None => (sum, n),
        };
        if self.every == 0 || !step.is_multiple_of(self.every) {
            self.window.set((sum, n));
            return Ok(());
        }
        self.window.set((0.0, 0));
        let mut values = vec![
            ("train/learning_rate".to_string(), lr),
            ("train/tokens_per_s".to_string(), tokens_per_s),
        ];
        if n > 0 {
            values.push(("train/loss".to_string(), sum / n as f64));
        }
        if let Some(g) = grad_norm {
            values.push(("train/grad_norm".to_string(), g));
        }
        b.scalars(step, &values)
    }

    /// Every dev metric of an evaluation, and its epoch.
    pub fn eval(&self, r: &EvalRecord) -> Result<()> {
        let Some(b) = &self.board else {
            return Ok(());
        };
        let mut values = vec![("train/epoch".to_string(), r.epoch)];
        for (split, metrics) in &r.dev {
            for (k, v) in metrics {
                values.push((format!("eval/{split}/{k}"), *v));
            }
        }
        b.scalars(r.step, &values)
    }

    /// The run's settings as hyper-parameters and its best dev metrics (`best/<split>/<metric>`),
    /// for TensorBoard's HParams tab.
    pub fn finish(&self, info: &RunInfo, best: &EvalRecord, step: usize) -> Result<()> {
        let Some(b) = &self.board else {
            return Ok(());
        };
        let mut values = Vec::new();
        for (split, metrics) in &best.dev {
            for (k, v) in metrics {
                values.push((format!("best/{split}/{k}"), *v));
            }
        }
        b.scalars(step, &values)?;
        let train = serde_json::to_value(&info.train)?;
        let mut hparams = vec![(
            "method".to_string(),
            serde_json::json!(info.train.method.name.to_string()),
        )];
        for group in ["model", "data", "optimisation"] {
            if let Some(fields) = train[group].as_object() {
                for (k, v) in fields
                    .iter()
                    .filter(|(_, v)| !v.is_null() && !v.is_object())
                {
                    hparams.push((k.clone(), v.clone()));
                }
            }
        }
        let group = info.train.output.output_dir.to_string_lossy().into_owned();
        b.hparams(step, &group, &hparams)
    }
}
