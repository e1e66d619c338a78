//! What a run needs before its first step, apart from what trains: its inputs (data, the
//! base model, the tokenizer), its directory (a new one written, or a resumed one checked
//! against this run) and its step counts. `fit::Run::prepare` puts them together with the
//! selection and the optimizer.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Result;
use candle_core::{Device, Tensor};

use crate::data::dataset::Dataset;
use crate::data::TaskSpec;
use crate::model::{fit_head, load, read_checkpoint, ModelConfig};
use crate::run::checkpoint::Resumed;
use crate::run::dir::{self as run_dir, RunInfo};
use crate::run::setup;
use crate::settings::TrainConfig;

/// A run's data, base model and tokenizer, loaded; nothing written.
pub struct Inputs {
    pub device: Device,
    /// A custom task's class labels, as its training file has them.
    pub labels: Option<Vec<String>>,
    pub spec: &'static TaskSpec,
    pub model_dir: PathBuf,
    pub mcfg: ModelConfig,
    /// The checkpoint's tensors, its head fitted to the task's.
    pub weights: HashMap<String, Tensor>,
    pub weights_file: PathBuf,
    pub weights_sha256: String,
    /// The tokenizer's padding id.
    pub pad: u32,
    pub train: Dataset,
    pub devs: Vec<Dataset>,
}

impl Inputs {
    pub fn load(cfg: &TrainConfig) -> Result<Self> {
        let device = crate::device::parse(&cfg.device)?;
        let source = setup::source(cfg)?;
        let labels = source.labels()?;
        let spec = cfg.task_spec(labels.as_deref())?;
        let model_dir = crate::model::hub::resolve(&cfg.model, cfg.revision.as_deref())?;
        let (mcfg, mut weights) = read_checkpoint(&model_dir)?;
        if fit_head(&mut weights, spec.head()) {
            eprintln!("the checkpoint's head has another number of outputs: starting a new head");
        }
        let weights_file = load::weight_file(&model_dir)?;
        let weights_sha256 = run_dir::sha256_file(&weights_file)?;
        let encoder = setup::encoder(cfg, &model_dir, &mcfg)?;
        let train = Dataset::load(spec, &source, "train", &encoder)?;
        if train.is_empty() {
            crate::user_bail!("{}: the train split is empty", source.describe());
        }
        let devs = spec
            .dev_splits
            .iter()
            .map(|s| Dataset::load(spec, &source, s, &encoder))
            .collect::<Result<Vec<_>>>()?;
        Ok(Inputs {
            device,
            labels,
            spec,
            model_dir,
            mcfg,
            weights,
            weights_file,
            weights_sha256,
            pad: encoder.pad_id(),
            train,
            devs,
        })
    }
}

/// A new run's directory made and its config.json written; or, resuming, the run there
/// checked against this one (same base weights, labels and trained tensors), its
/// checkpoint handed on.
pub fn open_dir(
    cfg: &TrainConfig,
    overwrite: bool,
    resumed: Option<(RunInfo, Resumed)>,
    info: &RunInfo,
) -> Result<Option<Resumed>> {
    let out = &cfg.output_dir;
    match resumed {
        Some((saved, state)) => {
            same_base_and_labels(cfg, &saved, info)?;
            Ok(Some(state))
        }
        None => {
            run_dir::prepare(out, overwrite)?;
            run_dir::write_atomic(
                &out.join(run_dir::CONFIG),
                serde_json::to_string_pretty(info)?.as_bytes(),
            )?;
            Ok(None)
        }
    }
}

/// How long a run is, in optimizer steps.
pub struct Counts {
    /// Examples per optimizer step (batch size times accumulation).
    pub step_size: usize,
    pub steps_per_epoch: usize,
    pub total: usize,
}

impl Counts {
    /// For `examples` training examples. Settings that multiply past a counter are
    /// refused, naming where they came from (the run's config.json when resuming).
    pub fn of(cfg: &TrainConfig, examples: usize, resume: bool) -> Result<Self> {
        let overflow = |what: String| {
            let from = match resume {
                true => format!(
                    "{}: train: ",
                    cfg.output_dir.join(run_dir::CONFIG).display()
                ),
                false => String::new(),
            };
            crate::error::user(format!("{from}{what} overflow the step counter"))
        };
        let step_size = cfg.batch_size.checked_mul(cfg.grad_accum).ok_or_else(|| {
            overflow(format!(
                "batch_size {} × grad_accum {}",
                cfg.batch_size, cfg.grad_accum
            ))
        })?;
        let steps_per_epoch = examples.div_ceil(step_size);
        let total = match cfg.max_steps {
            Some(n) => n,
            None => cfg.epochs.checked_mul(steps_per_epoch).ok_or_else(|| {
                overflow(format!(
                    "epochs {} × {steps_per_epoch} steps per epoch",
                    cfg.epochs
                ))
            })?,
        };
        Ok(Counts {
            step_size,
            steps_per_epoch,
            total,
        })
    }
}

/// A resumed run must train on the base weights and labels it started with.
fn same_base_and_labels(cfg: &TrainConfig, saved: &RunInfo, info: &RunInfo) -> Result<()> {
    if saved.base.sha256 != info.base.sha256 {
        crate::user_bail!(
            "{}: the base model's weights changed since the run started (sha256 {} then, {} now)",
            info.base.weights_file.display(),
            saved.base.sha256,
            info.base.sha256
        );
    }
    // The checkpoint's tensors are checked against what trains now; config.json must say
    // the same, as eval reads the run's tensors by it.
    let listed = |i: &RunInfo| -> std::collections::BTreeSet<String> {
        i.trainable_tensors.iter().cloned().collect()
    };
    let (said, trains) = (listed(saved), listed(info));
    if let Some(name) = said.symmetric_difference(&trains).next() {
        crate::user_bail!(
            "{}: `trainable_tensors` {} `{name}`, but the run {} it: the file was edited or \
             is another run's",
            cfg.output_dir.join(run_dir::CONFIG).display(),
            if said.contains(name) {
                "lists"
            } else {
                "lacks"
            },
            if trains.contains(name) {
                "trains"
            } else {
                "never trains"
            },
        );
    }
    // Custom labels come from the training file: if it changed, head rows would
    // silently mean other classes.
    if saved.labels != info.labels {
        crate::user_bail!(
            "{}: the labels of the training data changed since the run started ({:?} then, {:?} now)",
            setup::source(cfg)?.describe(),
            saved.labels.clone().unwrap_or_default(),
            info.labels.clone().unwrap_or_default()
        );
    }
    Ok(())
}
