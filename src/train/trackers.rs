//! Where a training run reports beside its own files (`--report-to`): TensorBoard event
//! files in `RUN/tensorboard/` (`run::tensorboard`), with the training loss (averaged over
//! the logging window), learning rate, gradient norm and tokens/s every `--logging-steps`,
//! every dev metric at every evaluation, the resolved settings as text at the start, and
//! the settings and best dev metrics as an HParams session at the end; and an MLflow
//! server (`run::mlflow`) with the same scalars, the settings as params and the method,
//! task and model as tags. `metrics.jsonl` is the run's own record, written by the loop
//! whatever this holds.

use std::cell::Cell;

use anyhow::Result;

use crate::run::dir::RunInfo;
use crate::run::mlflow::Mlflow;
use crate::run::record::EvalRecord;
use crate::run::tensorboard::EventWriter;
use crate::settings::{Tracker, TrainConfig};

pub struct Trackers {
    board: Option<EventWriter>,
    mlflow: Option<Mlflow>,
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
        let mlflow = match out.report_to.contains(&Tracker::Mlflow) {
            true => Some(mlflow_for(cfg)?),
            false => None,
        };
        Ok(Self {
            board,
            mlflow,
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
        if self.board.is_none() && self.mlflow.is_none() {
            return Ok(());
        }
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
        self.scalars(step, &values)
    }

    fn scalars(&self, step: usize, values: &[(String, f64)]) -> Result<()> {
        if let Some(m) = &self.mlflow {
            m.metrics(step, values);
        }
        match &self.board {
            Some(b) => b.scalars(step, values),
            None => Ok(()),
        }
    }

    /// Every dev metric of an evaluation, and its epoch.
    pub fn eval(&self, r: &EvalRecord) -> Result<()> {
        let mut values = vec![("train/epoch".to_string(), r.epoch)];
        for (split, metrics) in &r.dev {
            for (k, v) in metrics {
                values.push((format!("eval/{split}/{k}"), *v));
            }
        }
        self.scalars(r.step, &values)
    }

    /// The best dev metrics (`best/<split>/<metric>`); to TensorBoard, the run's settings
    /// as hyper-parameters for its HParams tab; to MLflow, the run marked finished.
    pub fn finish(&mut self, info: &RunInfo, best: &EvalRecord, step: usize) -> Result<()> {
        let mut values = Vec::new();
        for (split, metrics) in &best.dev {
            for (k, v) in metrics {
                values.push((format!("best/{split}/{k}"), *v));
            }
        }
        self.scalars(step, &values)?;
        if let Some(m) = self.mlflow.take() {
            m.finish();
        }
        let Some(b) = &self.board else {
            return Ok(());
        };
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

/// The MLflow reporter of a run of `cfg` (training, or `peft report --to mlflow` sending a
/// finished one): the server from $MLFLOW_TRACKING_URI, the experiment from
/// --mlflow-experiment or the task, the run named after its directory, the settings as
/// params (`group.key`, values cut to MLflow's 500 characters), the method, task and model
/// as tags.
pub fn mlflow_for(cfg: &TrainConfig) -> Result<Mlflow> {
    let uri = std::env::var("MLFLOW_TRACKING_URI").map_err(|_| {
        crate::error::user("--report-to mlflow: set MLFLOW_TRACKING_URI to the tracking server")
    })?;
    let out = &cfg.output;
    let experiment = out
        .mlflow_experiment
        .clone()
        .unwrap_or_else(|| cfg.data.task.clone());
    let name = out
        .output_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "run".into());
    let settings = serde_json::to_value(cfg)?;
    let mut params = Vec::new();
    for (group, fields) in settings.as_object().into_iter().flatten() {
        for (k, v) in fields.as_object().into_iter().flatten() {
            if !v.is_null() {
                let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                params.push((format!("{group}.{k}"), v.chars().take(500).collect()));
            }
        }
    }
    let tags = vec![
        ("method".to_string(), cfg.method.name.to_string()),
        ("task".to_string(), cfg.data.task.clone()),
        (
            "model".to_string(),
            cfg.model.model.to_string_lossy().into_owned(),
        ),
        ("mlflow.runName".to_string(), name.clone()),
    ];
    Ok(Mlflow::start(
        uri,
        experiment,
        name,
        params,
        tags,
        out.output_dir.clone(),
    ))
}
