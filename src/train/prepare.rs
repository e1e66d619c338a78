//! What a run needs before its first step: its inputs (data, the base model, the
//! tokenizer), what trains (the selection, Fisher information first for a ranked method),
//! its directory (a new one written, or a resumed one checked against this run), its step
//! counts, and a resumed run's state. `fit::Run::prepare` puts them together with the
//! optimizer.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use candle_core::{Device, Tensor};

use crate::data::dataset::{Dataset, Sample};
use crate::data::TaskSpec;
use crate::fisher::{estimate, Estimator, FisherOptions};
use crate::methods::{self, Selection};
use crate::model::Ctx;
use crate::model::{fit_head, load, read_checkpoint, ModelConfig};
use crate::optim::MaskedAdamW;
use crate::run::checkpoint::{self, Progress, Resumed};
use crate::run::dir::{self as run_dir, RunInfo};
use crate::run::setup;
use crate::settings::TrainConfig;
use crate::train::session::Trainable;

/// How many runs deep an `--init` chain may go below a new run.
const MAX_DEPTH: usize = 7;

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
    /// With --init: the sha256 of the tensors of the run it starts from.
    pub init_sha256: Option<String>,
    /// The tokenizer's padding id.
    pub pad: u32,
    pub train: Dataset,
    pub devs: Vec<Dataset>,
}

impl Inputs {
    pub fn load(cfg: &TrainConfig) -> Result<Self> {
        let device = crate::device::parse(&cfg.model.device)?;
        let source = setup::source(cfg)?;
        let labels = source.labels()?;
        let spec = cfg.task_spec(labels.as_deref())?;
        let model_dir =
            crate::model::hub::resolve(&cfg.model.model, cfg.model.revision.as_deref())?;
        let (mcfg, mut weights) = read_checkpoint(&model_dir)?;
        let mut init_sha256 = None;
        if let Some(init) = &cfg.model.init {
            let from = crate::run::weights::init_weights(init, Some(&model_dir), None, MAX_DEPTH)?;
            eprintln!("starting from {} (merged)", init.display());
            weights = from.weights;
            init_sha256 = Some(from.sha256);
            // Its head scores its own task's labels: another task starts a new head (the
            // task-transfer experiment's "new linear classifier"), the same task goes on.
            if from.task != cfg.data.task {
                crate::model::drop_head(&mut weights);
                eprintln!(
                    "{} trained on {}: a new head for {}",
                    init.display(),
                    from.task,
                    cfg.data.task
                );
            }
        }
        if fit_head(&mut weights, spec.head()) {
            eprintln!("the checkpoint's head has another number of outputs: starting a new head");
        }
        let weights_file = load::weight_file(&model_dir)?;
        let weights_sha256 = run_dir::sha256_file(&weights_file)?;
        let encoder = setup::encoder(cfg, &model_dir, &mcfg)?;
        // Prompt tuning's TEXT start: the init text's word embeddings, as PEFT takes them.
        let prompt = cfg.method.prompt.as_ref();
        if let Some(s) = prompt.filter(|s| s.tokens + encoder.max_len() > mcfg.max_tokens()) {
            crate::user_bail!(
                "--num-virtual-tokens {} with --max-seq-len {} is more than the model holds: at \
                 most {} positions ({})",
                s.tokens,
                encoder.max_len(),
                mcfg.max_tokens(),
                mcfg.describe_max_tokens()
            );
        }
        if let Some((s, text)) = prompt.and_then(|s| s.init_text.as_ref().map(|t| (s, t))) {
            let word = weights
                .get("embeddings.word_embeddings.weight")
                .ok_or_else(|| {
                    crate::error::user("--prompt-init-text: the model has no word embeddings")
                })?;
            let ids = encoder.encode(text, None)?.ids;
            let start = crate::methods::prompt::text_start(&ids, s.tokens, word)?;
            weights.insert(crate::model::PROMPT.to_string(), start);
        }
        let sample = cfg.data.max_train_examples.map(|n| Sample {
            n,
            seed: cfg.optimisation.seed,
        });
        let train = Dataset::load_sample(spec, &source, "train", &encoder, sample)?;
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
            init_sha256,
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
    let out = &cfg.output.output_dir;
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
                    cfg.output.output_dir.join(run_dir::CONFIG).display()
                ),
                false => String::new(),
            };
            crate::error::user(format!("{from}{what} overflow the step counter"))
        };
        let step_size = cfg
            .optimisation
            .batch_size
            .checked_mul(cfg.optimisation.grad_accum)
            .ok_or_else(|| {
                overflow(format!(
                    "batch_size {} × grad_accum {}",
                    cfg.optimisation.batch_size, cfg.optimisation.grad_accum
                ))
            })?;
        let steps_per_epoch = examples.div_ceil(step_size);
        let total = match cfg.optimisation.max_steps {
            Some(n) => n,
            None => cfg
                .optimisation
                .epochs
                .checked_mul(steps_per_epoch)
                .ok_or_else(|| {
                    overflow(format!(
                        "epochs {} × {steps_per_epoch} steps per epoch",
                        cfg.optimisation.epochs
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
    if saved.init_sha256 != info.init_sha256 {
        crate::user_bail!(
            "{}: the tensors of the --init run changed since this run started",
            cfg.output.output_dir.display()
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
            cfg.output.output_dir.join(run_dir::CONFIG).display(),
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

/// What trains, by the run's method: a ranked method's Fisher information first (from
/// --fisher, the cache or an estimate), then the selection and its masks.
pub fn selection(cfg: &TrainConfig, inputs: &Inputs) -> Result<Selection> {
    let fisher = if cfg.method.name.needs_fisher() {
        // The weights Fisher is estimated at: the base's, or those of the --init run.
        let key = match &inputs.init_sha256 {
            Some(init) => format!("{}+{init}", inputs.weights_sha256),
            None => inputs.weights_sha256.clone(),
        };
        Some(fisher_for(
            cfg,
            &inputs.mcfg,
            (&inputs.weights, &key),
            inputs.spec,
            &inputs.train,
            inputs.pad,
            &inputs.device,
        )?)
    } else {
        None
    };
    methods::select(&cfg.method_spec(), &inputs.weights, fisher.as_ref())
}

/// A resumed run's state restored into the freshly built one, after its checkpoint is
/// checked against the run: parameters, optimizer, the dropout stream; its progress back.
pub fn restore_resumed(
    r: Resumed,
    file: &std::path::Path,
    shape: &checkpoint::RunShape,
    opt: &mut MaskedAdamW,
    ctx: &Ctx,
) -> Result<Progress> {
    // Before anything is restored or rewritten (metrics.jsonl after).
    r.check(file, shape)?;
    restore_params(shape.vars, &r.params)?;
    opt.restore(r.optimizer)?;
    ctx.set_calls(r.progress.dropout_calls);
    Ok(r.progress)
}

/// A resumed run's tensors replace the freshly built ones, name for name.
fn restore_params(
    vars: &BTreeMap<String, candle_core::Var>,
    saved: &HashMap<String, Tensor>,
) -> Result<()> {
    for (name, var) in vars {
        let t = saved
            .get(name)
            .ok_or_else(|| crate::error::user(format!("the checkpoint lacks {name}")))?;
        if t.dims() != var.dims() {
            crate::user_bail!(
                "the checkpoint's {name} has shape {:?}, the model {:?}",
                t.dims(),
                var.dims()
            );
        }
        var.set(&t.to_device(var.device())?)?;
    }
    if saved.len() != vars.len() {
        crate::user_bail!(
            "the checkpoint holds {} tensors, the run trains {}",
            saved.len(),
            vars.len()
        );
    }
    Ok(())
}

/// The Fisher information that ranks parameters: from --fisher, or estimated on the
/// training set at the pre-trained weights (with the same seeded head as training), or
/// that estimate from the cache.
fn fisher_for(
    cfg: &TrainConfig,
    mcfg: &ModelConfig,
    (weights, weights_sha256): (&HashMap<String, Tensor>, &str),
    spec: &TaskSpec,
    train: &Dataset,
    pad: u32,
    device: &Device,
) -> Result<BTreeMap<String, Tensor>> {
    // Resolution gives a ranked method these settings; without, the defaults.
    let settings = match &cfg.method.fisher {
        Some(s) => s.clone(),
        None => crate::methods::fisher_layernorm::Flags::default().resolve(&cfg.method.name)?,
    };
    if let Some(path) = &settings.file {
        return Ok(run_dir::load_tensors(path)?.into_iter().collect());
    }
    let estimator = settings
        .batch_mean
        .map_or(Estimator::PerExample, |b| Estimator::BatchMean { batch: b });
    let opts = FisherOptions {
        samples: settings.samples.and_then(|s| s.limit()),
        estimator,
        seed: cfg.optimisation.seed,
    };
    // Over the tensors the method ranks alone: what else the model holds needs none.
    let methods = cfg.method.name.clone();
    let scope = methods
        .parts()
        .iter()
        .filter(|m| m.needs_fisher())
        .map(|m| m.name())
        .collect::<Vec<_>>()
        .join("+");
    let key = crate::fisher::cache_key(weights_sha256, train, spec.num_labels(), &opts, &scope);
    crate::fisher::cached(&key, || {
        let start = Instant::now();
        let t = Trainable::new(
            weights.clone(),
            mcfg,
            Some(spec.head()),
            Box::new(move |n| methods.ranks(n)),
            None,
            device,
            cfg.optimisation.seed,
        )?;
        let f = estimate(&t.model, &t.store, train, pad, opts, device)?;
        eprintln!(
            "Fisher information estimated in {:.1}s",
            start.elapsed().as_secs_f64()
        );
        Ok(f)
    })
}
