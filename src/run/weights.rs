//! A run's weights as `peft eval`, `peft merge`, `peft diff` and `peft predict` rebuild them: the base checkpoint, the
//! trained tensors, and WiSE-FT interpolation between the two (Wortsman et al., 2022).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use clap::ValueEnum;

use super::dir::{self as run_dir, RunInfo};
use crate::error::user;
use crate::methods::is_head;
use crate::model::adapters::Tensors;
use crate::model::family::HEAD_OUTPUTS;
use crate::model::{fit_head, load, read_checkpoint, Model, ModelConfig, ParamStore};
use crate::settings::TrainConfig;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Which {
    /// The tensors of the best evaluation (trainable.safetensors).
    Best,
    /// The tensors at the end of training (last.safetensors).
    Last,
}

impl Which {
    pub fn file_name(self) -> &'static str {
        match self {
            Which::Best => run_dir::BEST,
            Which::Last => run_dir::LAST,
        }
    }
}

pub struct RunWeights {
    pub info: RunInfo,
    pub model_dir: PathBuf,
    pub config: ModelConfig,
    /// The base checkpoint, without a head made for another label count.
    pub base: HashMap<String, Tensor>,
    /// What the run saved: the tensors training could change.
    pub trained: HashMap<String, Tensor>,
    /// The file `trained` came from, for messages.
    pub file: PathBuf,
}

impl RunWeights {
    /// Read a run directory and its base model (`model`, a directory or hub id at
    /// `revision`, overrides the recorded path), refusing a base whose weights changed
    /// since training.
    pub fn load(
        checkpoint: &Path,
        which: Which,
        model: Option<&Path>,
        revision: Option<&str>,
    ) -> Result<Self> {
        Self::load_within(checkpoint, which, model, revision, MAX_INIT_DEPTH)
    }

    /// `load`, for a run that may have started from another (`--init`), at most `depth`
    /// runs deep: a chain longer than that, or one that comes back to itself, is refused.
    fn load_within(
        checkpoint: &Path,
        which: Which,
        model: Option<&Path>,
        revision: Option<&str>,
        depth: usize,
    ) -> Result<Self> {
        let info = RunInfo::load(checkpoint)?;
        let model = model
            .map(|m| crate::model::hub::resolve(m, revision))
            .transpose()?;
        let model_dir = base_dir(&info, model.as_deref())?;
        let weights_file = load::weight_file(&model_dir)?;
        let sha = run_dir::sha256_file(&weights_file)?;
        if sha != info.base.sha256 {
            return Err(user(format!(
                "{} was trained on another base model: {} has sha256 {sha}, the run recorded {}",
                checkpoint.display(),
                weights_file.display(),
                info.base.sha256
            )));
        }
        let (config, mut base) = read_checkpoint(&model_dir)?;
        // A run started from another (`--init`): its base is that run, merged.
        if let Some(init) = &info.train.model.init {
            if depth == 0 {
                return Err(user(format!(
                    "{}: its --init chain is more than {MAX_INIT_DEPTH} runs deep (or comes \
                     back to itself)",
                    checkpoint.display()
                )));
            }
            base = init_weights(
                init,
                Some(&model_dir),
                info.init_sha256.as_deref(),
                depth - 1,
            )?
            .weights;
        }
        // The run saved its own head; the base's may be for another label set.
        fit_head(
            &mut base,
            info.train.task_spec(info.labels.as_deref())?.head(),
        );
        let file = checkpoint.join(which.file_name());
        let trained = run_dir::load_tensors(&file)?;
        // A head with another number of outputs is another task's (copied files, an edited
        // config.json): say so rather than fail later on a shape.
        let head = HEAD_OUTPUTS.iter().find_map(|n| {
            let name = format!("{n}.weight");
            let rows = trained.get(&name).map(|t| t.dims().first().copied());
            rows.map(|r| (name, r))
        });
        if let Some((name, Some(rows))) = head {
            if rows != info.num_labels {
                return Err(user(format!(
                    "{}: the head `{name}` has {rows} outputs but task {} has {}; \
                     these tensors were trained for another task",
                    file.display(),
                    info.train.data.task,
                    info.num_labels
                )));
            }
        }
        for (name, t) in &trained {
            if let Some(b) = base.get(name) {
                if b.dims() != t.dims() {
                    return Err(user(format!(
                        "{}: tensor `{name}` has shape {:?}, the base model {:?}",
                        file.display(),
                        t.dims(),
                        b.dims()
                    )));
                }
            }
        }
        let run = Self {
            info,
            model_dir,
            config,
            base,
            trained,
            file,
        };
        run.check_trained(checkpoint)?;
        Ok(run)
    }

    /// A run's saved tensors are input (an edited, truncated or foreign file): exactly the
    /// tensors config.json lists as trained, each finite, each one the method trains (by
    /// its selection over the base's names), and together a model of the run's adapters
    /// and head that uses every one of them. Otherwise a missing tensor would silently be
    /// the base's, an extra one silently applied, a NaN scored as a class.
    fn check_trained(&self, checkpoint: &Path) -> Result<()> {
        let bad = |why: String| user(format!("{}: {why}", self.file.display()));
        let listed: HashSet<&String> = self.info.trainable_tensors.iter().collect();
        let mut names: Vec<&String> = self.trained.keys().collect();
        names.sort();
        if let Some(name) = names.iter().find(|n| !listed.contains(**n)) {
            return Err(bad(format!(
                "tensor `{name}` is not one the run trains (config.json's trainable_tensors \
                 does not list it)"
            )));
        }
        let info = &self.info;
        if let Some(name) = info
            .trainable_tensors
            .iter()
            .find(|n| !self.trained.contains_key(*n))
        {
            return Err(bad(format!(
                "lacks tensor `{name}`, which config.json lists as trained (trainable_tensors)"
            )));
        }
        for name in &names {
            if !run_dir::all_finite(&self.trained[*name])? {
                return Err(bad(format!("tensor `{name}` holds NaN or infinite values")));
            }
        }
        // The tensor-level selection of each part of the method (masks only narrow it).
        let spec = info.train.method_spec();
        let parts: Vec<_> = info
            .train
            .method
            .name
            .parts()
            .iter()
            .map(|m| m.select(&spec, self.base.keys()))
            .collect::<Result<_>>()?;
        let never = info
            .trainable_tensors
            .iter()
            .find(|n| !parts.iter().any(|p| (p.trainable)(n)));
        if let Some(name) = never {
            return Err(user(format!(
                "{}: `trainable_tensors` lists `{name}`, which method {} never trains",
                checkpoint.join(run_dir::CONFIG).display(),
                info.train.method.name
            )));
        }
        // A model built as `model` builds it (on the CPU, the weights left as they are): a
        // tensor of the wrong shape for its adapter, or one no part of it asks for, is not
        // this run's.
        let store = ParamStore::new(self.weights(1.0)?, Device::Cpu, 0, Box::new(|_| false));
        let head = info.train.task_spec(info.labels.as_deref())?.head();
        Model::load_with_adapters(
            &store,
            &self.config,
            Some(head),
            crate::run::setup::adapter(&info.train).as_ref(),
        )
        .with_context(|| format!("{} is not a run of this model", self.file.display()))?;
        if let Some(name) = store.created().first() {
            return Err(bad(format!(
                "lacks tensor `{name}`, which the run's model has"
            )));
        }
        let used = store.all();
        if let Some(name) = names.iter().find(|n| !used.contains_key(**n)) {
            return Err(bad(format!(
                "tensor `{name}` is part of no layer, adapter or head of the run's model \
                 (method {})",
                info.train.method.name
            )));
        }
        Ok(())
    }

    /// A model trained elsewhere, scored on `train.task` (a GLUE task; `train.model` at
    /// `train.revision` is the model): a sequence-classification checkpoint, such as `peft
    /// merge` writes or the hub holds, its head's outputs put in the task's label order by
    /// their names in config.json; or, with `adapter`, a LoRA adapter that Hugging Face
    /// PEFT saved for that model, with its own head.
    pub fn external(mut train: TrainConfig, adapter: Option<&Path>) -> Result<Self> {
        let spec = train.task_spec(None)?;
        let model_dir =
            crate::model::hub::resolve(&train.model.model, train.model.revision.as_deref())?;
        let (config, mut base) = read_checkpoint(&model_dir)?;
        let weights_file = load::weight_file(&model_dir)?;
        let num_labels = spec.num_labels();
        let (trained, file) = match adapter {
            Some(dir) => {
                let a = crate::run::peft_format::read(dir, config.model_type)?;
                let file = match crate::run::adapterhub::holds(dir) {
                    true => dir.join(crate::run::adapterhub::WEIGHTS),
                    false => dir.join(crate::run::peft_format::WEIGHTS),
                };
                let rows = head_rows(&a.tensors);
                if rows != Some(num_labels) {
                    return Err(user(format!(
                        "{}: the adapter's classifier has {} outputs; task {} has {num_labels}",
                        file.display(),
                        rows.map_or("no".into(), |r| r.to_string()),
                        spec.name
                    )));
                }
                // The adapter's head replaces the base's, whatever its shape.
                base.retain(|k, _| !is_head(k));
                train.method = crate::run::peft_format::method_config(a.config.as_ref())?;
                (a.tensors, file)
            }
            None => {
                let origin = model_dir.join("config.json");
                let Some(rows) = head_rows(&base) else {
                    return Err(user(format!(
                        "{}: the model has no task head (classifier.* or qa_outputs.*); score a \
                         fine-tuned sequence-classification or question-answering checkpoint, \
                         or a run of `peft train` with --checkpoint",
                        model_dir.display()
                    )));
                };
                let order = crate::data::labels::output_order(
                    spec,
                    &id2label(&origin)?,
                    rows,
                    &origin.display().to_string(),
                )?;
                reorder_head(&mut base, &order)?;
                (HashMap::new(), weights_file.clone())
            }
        };
        let sha256 = run_dir::sha256_file(&weights_file)?;
        let info = RunInfo {
            peft_version: env!("CARGO_PKG_VERSION").to_string(),
            train,
            base: run_dir::BaseModel {
                path: model_dir.clone(),
                sha256,
                weights_file,
            },
            num_labels,
            labels: None,
            total_params: base.values().map(|t| t.elem_count()).sum(),
            trainable_params: trained.values().map(|t| t.elem_count()).sum(),
            trainable_tensors: trained.keys().cloned().collect(),
            init_sha256: None,
        };
        Ok(Self {
            info,
            model_dir,
            config,
            base,
            trained,
            file,
        })
    }

    /// The model at `alpha` (1: the run), its head sized for the run's task.
    ///
    /// The checkpoint's untrained tensors are lent to the model's store, which alone then
    /// holds them while it re-lays the linear weights (`ParamStore::frozen`: by columns on
    /// the CPU), and taken back as it left them: a copy kept here would hold every frozen
    /// weight twice, in both orders. Another alpha reuses what was re-laid.
    pub fn model(&mut self, alpha: f64, device: &Device) -> Result<Model> {
        let weights = self.weights(alpha)?;
        let lent: Vec<String> = self
            .base
            .keys()
            .filter(|n| !self.trained.contains_key(*n))
            .cloned()
            .collect();
        lent.iter().for_each(|n| {
            self.base.remove(n);
        });
        let store = ParamStore::frozen(weights, device.clone());
        let adapter = crate::run::setup::adapter(&self.info.train);
        let head = self
            .info
            .train
            .task_spec(self.info.labels.as_deref())
            .map(|s| s.head());
        let model = head.and_then(|head| {
            Model::load_with_adapters(&store, &self.config, Some(head), adapter.as_ref())
        });
        for n in lent {
            if let Some(t) = store.base_tensor(&n) {
                self.base.insert(n, t);
            }
        }
        let model = model?;
        // A tensor made up now would be a random one: the files are not this model's run.
        if let Some(name) = store.created().first() {
            return Err(user(format!(
                "{} holds no tensor `{name}`: is it a run of this model?",
                self.file.display()
            )));
        }
        Ok(model)
    }

    /// The run's model as `peft merge` writes it, by canonical names: base plus trained
    /// tensors at `alpha`, adapters folded in, and no pooler where the task model has none
    /// (RoBERTa's and ELECTRA's classifiers and every question-answering head read none).
    pub fn merged(&self, alpha: f64) -> Result<HashMap<String, Tensor>> {
        let mut weights = self.weights(alpha)?;
        fold_adapters(&mut weights, &self.info)?;
        let spec = self.info.train.task_spec(self.info.labels.as_deref())?;
        if !self.config.model_type.classifier_reads_pooler() || spec.is_qa() {
            weights.retain(|n, _| !n.starts_with("pooler."));
        }
        Ok(weights)
    }

    /// Base plus trained tensors at θ₀ + alpha·(θ − θ₀). The head and anything else the
    /// base lacks stay as trained: there is no θ₀ to move towards, except an adapter's,
    /// which its kind knows (the adapter that changes nothing).
    pub fn weights(&self, alpha: f64) -> Result<HashMap<String, Tensor>> {
        let cfg = crate::run::setup::adapter(&self.info.train);
        if let Some(init) = cfg
            .as_ref()
            .and_then(|c| c.init)
            .filter(|i| i.from_weight())
        {
            if alpha != 1.0 {
                return Err(crate::error::user(format!(
                    "--alpha {alpha}: a run started with --lora-init {} took part of each \
                     wrapped weight into its adapter, so scaling the adapter does not move \
                     between the base and the trained model; WiSE-FT of it is not supported",
                    init.peft_name()
                )));
            }
        }
        let adapter = cfg.map(|a| a.kind.def());
        let run = Tensors {
            trained: &self.trained,
            base: &self.base,
        };
        let mut out = self.base.clone();
        for (name, t) in &self.trained {
            // 1 and 0 are exact: θ₀ + 1·(θ − θ₀) need not round back to θ.
            let w = match self.base.get(name) {
                _ if alpha == 1.0 || is_head(name) => t.clone(),
                Some(b) if alpha == 0.0 => b.clone(),
                Some(b) => (b + ((t - b)? * alpha)?)?,
                None => match adapter {
                    Some(def) => def
                        .interpolate(name, t, alpha, &run)?
                        .unwrap_or_else(|| t.clone()),
                    None => t.clone(),
                },
            };
            out.insert(name.clone(), w);
        }
        Ok(out)
    }
}

/// The output rows of a task head (BERT's `classifier`, RoBERTa's `out_proj`, any
/// question-answering model's `qa_outputs`).
fn head_rows(weights: &HashMap<String, Tensor>) -> Option<usize> {
    HEAD_OUTPUTS
        .iter()
        .find_map(|n| weights.get(&format!("{n}.weight")))
        .and_then(|t| t.dims().first().copied())
}

/// Put the head's output rows in `order` (row i of the result is row order[i]).
fn reorder_head(weights: &mut HashMap<String, Tensor>, order: &[usize]) -> Result<()> {
    if order.iter().enumerate().all(|(i, &o)| i == o) {
        return Ok(());
    }
    let idx = Tensor::new(
        order.iter().map(|&i| i as u32).collect::<Vec<_>>(),
        &Device::Cpu,
    )?;
    for n in HEAD_OUTPUTS {
        for leaf in ["weight", "bias"] {
            let key = format!("{n}.{leaf}");
            if let Some(t) = weights.get(&key) {
                let t = t.index_select(&idx.to_device(t.device())?, 0)?;
                weights.insert(key, t);
            }
        }
    }
    Ok(())
}

/// `id2label` of a config.json (empty when it has none).
fn id2label(path: &Path) -> Result<std::collections::BTreeMap<usize, String>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| user(format!("{}: {e}", path.display())))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| user(format!("{}: {e}", path.display())))?;
    let Some(map) = v.get("id2label").and_then(|m| m.as_object()) else {
        return Ok(Default::default());
    };
    map.iter()
        .map(|(k, name)| {
            let i = k.parse::<usize>().map_err(|_| {
                user(format!(
                    "{}: id2label key `{k}` is not a number",
                    path.display()
                ))
            })?;
            Ok((i, name.as_str().unwrap_or_default().to_string()))
        })
        .collect()
}

/// The base model of a run: `model` (a directory or a hub id at main) if given, else the
/// directory the run recorded, or, when that is gone (a cleared hub cache), the run's
/// hub id resolved again. The caller checks the weights' sha256 either way.
pub fn base_dir(info: &RunInfo, model: Option<&Path>) -> Result<PathBuf> {
    if let Some(m) = model {
        return crate::model::hub::resolve(m, None);
    }
    let recorded = &info.base.path;
    if recorded.exists() || info.train.model.model.exists() {
        return Ok(recorded.clone());
    }
    crate::model::hub::resolve(
        &info.train.model.model,
        info.train.model.revision.as_deref(),
    )
}

/// How many runs deep an `--init` chain may go.
const MAX_INIT_DEPTH: usize = 8;

/// What a run started with `--init RUN` starts from.
pub struct Init {
    /// RUN merged (its best state), head included.
    pub weights: HashMap<String, Tensor>,
    /// The sha256 of RUN's tensors.
    pub sha256: String,
    /// The task RUN trained on: its head answers that task's labels.
    pub task: String,
}

/// The weights a run started with `--init RUN` starts from: RUN merged (its best state),
/// on `model` (the base; None: RUN's own), and the sha256 of RUN's tensors, which must be
/// `expected` when given (the run recorded it).
pub fn init_weights(
    run: &Path,
    model: Option<&Path>,
    expected: Option<&str>,
    depth: usize,
) -> Result<Init> {
    let source = RunWeights::load_within(run, Which::Best, model, None, depth)?;
    let sha = run_dir::sha256_file(&source.file)?;
    if let Some(e) = expected.filter(|e| *e != sha) {
        return Err(user(format!(
            "{} changed since a run started from it: sha256 {sha}, recorded {e}",
            source.file.display()
        )));
    }
    Ok(Init {
        weights: source.merged(1.0)?,
        sha256: sha,
        task: source.info.train.data.task.clone(),
    })
}

/// Fold the run's adapters into the weights they wrap, as its adapter kind does
/// ([`crate::model::adapters::AdapterDef::fold`]); a run without adapters is as it is.
pub fn fold_adapters(weights: &mut HashMap<String, Tensor>, info: &RunInfo) -> Result<()> {
    match crate::run::setup::adapter(&info.train) {
        Some(cfg) => cfg.kind.def().fold(&cfg, weights),
        None => Ok(()),
    }
}
