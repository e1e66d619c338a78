//! The resolved training configuration: built-in defaults, overridden by a TOML file
//! (`--config`), overridden by command-line flags. The result is printed and saved as
//! the run's `config.json`.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::data::{CustomProblem, CUSTOM};
use crate::error::{user, PathContext};
use crate::methods::Method;
use crate::model::adapter::TARGETS;
use crate::model::{AdapterConfig, AdapterKind, InaActivation};

/// Training examples for a Fisher estimate made before training, unless told otherwise.
/// On all-MiniLM-L6-v2 and RTE, 1024 examples rank LayerNorm elements and components as
/// the whole training set does (README, Fisher-ranked methods); beyond a few thousand the
/// estimate costs minutes to hours and changes little.
pub const FISHER_SAMPLES: usize = 1024;

/// Child-Tuning D's reference estimates Fisher from batch-mean gradients of its training
/// batch size (16).
pub const CHILD_TUNING_FISHER_BATCH: usize = 16;

/// A number of examples, or all of them (`all` on the command line and in TOML).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Samples {
    All,
    Count(usize),
}

impl Samples {
    /// None for all.
    pub fn limit(self) -> Option<usize> {
        match self {
            Samples::All => None,
            Samples::Count(n) => Some(n),
        }
    }
}

impl std::fmt::Display for Samples {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Samples::All => f.write_str("all"),
            Samples::Count(n) => write!(f, "{n}"),
        }
    }
}

impl std::str::FromStr for Samples {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s.eq_ignore_ascii_case("all") {
            return Ok(Samples::All);
        }
        s.parse()
            .map(Samples::Count)
            .map_err(|_| format!("`{s}` is neither a number of examples nor `all`"))
    }
}

impl Serialize for Samples {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Samples::All => s.serialize_str("all"),
            Samples::Count(n) => s.serialize_u64(*n as u64),
        }
    }
}

impl<'de> Deserialize<'de> for Samples {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(usize),
            Word(String),
        }
        match Raw::deserialize(d)? {
            Raw::Count(n) => Ok(Samples::Count(n)),
            Raw::Word(w) => w.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Every setting a run uses. A TOML config holds any subset of these keys.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Base model: a directory (Hugging Face layout) or a hub id.
    pub model: PathBuf,
    /// Branch, tag or commit of a hub model (None: main).
    #[serde(default)]
    pub revision: Option<String>,
    /// Folder in the official glue_data/<TASK>/ layout (None: GLUE from the hub).
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Canonical task name (rte, stsb, ...), or `custom`.
    pub task: String,
    /// custom: the training and dev files, their text columns and label column.
    #[serde(default, rename = "train", skip_serializing_if = "Option::is_none")]
    pub train_file: Option<PathBuf>,
    #[serde(default, rename = "dev", skip_serializing_if = "Option::is_none")]
    pub dev_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_columns: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_column: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<CustomProblem>,
    pub method: Method,
    /// Share of eligible elements (fisher-layernorm, random-layernorm, random).
    pub fraction: Option<f64>,
    /// Child-Tuning's reserve_p (child-f, child-d).
    pub reserve: Option<f64>,
    /// A Fisher file (`peft fisher`) to rank by, instead of estimating it at the start.
    pub fisher: Option<PathBuf>,
    /// Training examples for the Fisher estimated at the start (None, in runs written
    /// before the default was bounded: all).
    pub fisher_samples: Option<Samples>,
    /// Estimate that Fisher from batch-mean gradients of this batch size (Child-Tuning's way).
    pub fisher_batch_mean: Option<usize>,
    /// The adapter of lora and ina runs (rank, alpha, dropout, targets, inhibition).
    pub lora_r: Option<usize>,
    pub lora_alpha: Option<f64>,
    pub lora_dropout: Option<f64>,
    pub lora_targets: Option<Vec<String>>,
    pub ina_r: Option<usize>,
    pub ina_alpha: Option<f64>,
    pub ina_dropout: Option<f64>,
    pub ina_targets: Option<Vec<String>>,
    pub ina_inhibition: Option<f64>,
    pub ina_activation: Option<InaActivation>,
    pub epochs: usize,
    /// Stop after this many optimizer steps (the schedule still spans them).
    pub max_steps: Option<usize>,
    pub lr: f64,
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    pub max_seq_len: usize,
    pub warmup_ratio: f64,
    pub weight_decay: f64,
    /// Clip gradients to this global L2 norm; 0 disables clipping.
    pub max_grad_norm: f64,
    pub seed: u64,
    /// Also evaluate every N optimizer steps.
    pub eval_steps: Option<usize>,
    pub eval_batch_size: usize,
    pub device: String,
    pub output_dir: PathBuf,
    /// Also save a resumable checkpoint every N optimizer steps (always at each epoch's end).
    #[serde(default)]
    pub save_steps: Option<usize>,
    /// Steps with a NaN or infinite loss or gradient that may be skipped before stopping.
    #[serde(default)]
    pub skip_nonfinite: usize,
}

/// What a TOML file or the command line may set: the same keys, all optional.
/// On the command line the keys are flags (`batch_size` → `--batch-size`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    /// Base model: a directory in Hugging Face layout (config.json, model.safetensors,
    /// tokenizer.json), or a hub id such as bert-base-uncased, fetched into the Hugging
    /// Face cache (HF_HUB_OFFLINE=1: the cache only).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Branch, tag or commit of a hub --model [default: main].
    #[arg(long)]
    pub revision: Option<String>,
    /// GLUE data in the official glue_data/<TASK>/ layout [default: $PEFT_GLUE_DIR, else
    /// nyu-mll/glue from the Hugging Face hub].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// GLUE task: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli (any case, dashes
    /// allowed); or custom, with --train, --dev, --text-columns and --label-column.
    #[arg(long)]
    pub task: Option<String>,
    /// custom: training file, .csv, .tsv (no quoting, as GLUE) or .jsonl.
    #[arg(long = "train", value_name = "FILE")]
    #[serde(rename = "train")]
    pub train_file: Option<PathBuf>,
    /// custom: dev file, scored after each epoch; its labels must occur in --train.
    #[arg(long = "dev", value_name = "FILE")]
    #[serde(rename = "dev")]
    pub dev_file: Option<PathBuf>,
    /// custom: the text column, or two comma-separated for sentence pairs.
    #[arg(long, value_delimiter = ',')]
    pub text_columns: Option<Vec<String>>,
    /// custom: the label column.
    #[arg(long)]
    pub label_column: Option<String>,
    /// custom: classification (labels are the training file's distinct values) or
    /// regression (numbers) [default: classification].
    #[arg(long, value_enum)]
    pub problem: Option<CustomProblem>,
    /// Which parameters train [default: full].
    #[arg(long, value_enum)]
    pub method: Option<Method>,
    /// fisher-layernorm, random-layernorm, random: share of eligible elements that train.
    #[arg(long)]
    pub fraction: Option<f64>,
    /// child-f, child-d: Child-Tuning's reserve_p [default: 0.3].
    #[arg(long)]
    pub reserve: Option<f64>,
    /// fisher-layernorm, child-d: rank by this fisher.safetensors (from `peft fisher`,
    /// e.g. a --global one) instead of estimating Fisher on the training set first.
    #[arg(long)]
    pub fisher: Option<PathBuf>,
    /// fisher-layernorm, child-d: training examples (a seeded random sample) for the
    /// Fisher estimate, or `all` [default: 1024].
    #[arg(long)]
    pub fisher_samples: Option<Samples>,
    /// fisher-layernorm, child-d: estimate Fisher from batch-mean gradients of this batch
    /// size, as the Child-Tuning reference does [default: 16 for child-d, as its
    /// reference; per-example gradients for fisher-layernorm].
    #[arg(long)]
    pub fisher_batch_mean: Option<usize>,
    /// lora: adapter rank [default: 8].
    #[arg(long)]
    pub lora_r: Option<usize>,
    /// lora: scaling numerator; updates are scaled by alpha/r [default: 16].
    #[arg(long)]
    pub lora_alpha: Option<f64>,
    /// lora: dropout on the adapter's input [default: 0.1].
    #[arg(long)]
    pub lora_dropout: Option<f64>,
    /// lora: modules to wrap, from query, key, value, attention.output.dense,
    /// intermediate.dense, output.dense [default: query,value].
    #[arg(long, value_delimiter = ',')]
    pub lora_targets: Option<Vec<String>>,
    /// ina: adapter rank [default: 4].
    #[arg(long)]
    pub ina_r: Option<usize>,
    /// ina: scaling numerator, alpha/r [default: 16].
    #[arg(long)]
    pub ina_alpha: Option<f64>,
    /// ina: dropout on the adapter's input [default: 0.1].
    #[arg(long)]
    pub ina_dropout: Option<f64>,
    /// ina: modules to wrap [default: query,key,value, as the authors' code].
    #[arg(long, value_delimiter = ',')]
    pub ina_targets: Option<Vec<String>>,
    /// ina: Inh_p, the share of each token's max activation subtracted; 0 is plain LoRA [default: 0.1].
    #[arg(long)]
    pub ina_inhibition: Option<f64>,
    /// ina: activation after the inhibition [default: leaky-relu, as the authors' code; the paper's text: gelu].
    #[arg(long, value_enum)]
    pub ina_activation: Option<InaActivation>,
    /// Passes over the training set [default: 3].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Stop after this many optimizer steps; the schedule spans exactly these (smoke tests).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Peak learning rate [default: 2e-5 for full, 1e-3 for bitfit and layernorm].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Examples per micro-batch [default: 32].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimizer step [default: 1].
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Truncate inputs (longest sentence first) to this many tokens [default: 128].
    #[arg(long)]
    pub max_seq_len: Option<usize>,
    /// Share of the steps spent warming the learning rate up from 0 [default: 0.06].
    #[arg(long)]
    pub warmup_ratio: Option<f64>,
    /// Decoupled weight decay; never applied to biases and LayerNorm [default: 0.01].
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Clip gradients to this global L2 norm; 0 disables [default: 1.0].
    #[arg(long)]
    pub max_grad_norm: Option<f64>,
    /// Seeds data order, head initialisation and dropout [default: 42].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Also evaluate on dev every N optimizer steps [default: only after each epoch].
    #[arg(long)]
    pub eval_steps: Option<usize>,
    /// Examples per batch when scoring [default: 64].
    #[arg(long)]
    pub eval_batch_size: Option<usize>,
    /// cpu, cuda or cuda:N [default: cpu].
    #[arg(long)]
    pub device: Option<String>,
    /// Run directory [default: runs/<task>-<method>-<seed>].
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    /// Save a resumable checkpoint every N optimizer steps, besides each epoch's end
    /// and Ctrl-C [default: only those].
    #[arg(long)]
    pub save_steps: Option<usize>,
    /// Skip up to N optimizer steps whose loss or gradient is NaN or infinite instead
    /// of stopping at the first [default: 0].
    #[arg(long)]
    pub skip_nonfinite: Option<usize>,
}

/// The papers' recipes in `configs/`, compiled in: `--config NAME` finds them without the
/// repository (`--config configs/NAME.toml` reads the file itself).
pub const RECIPES: &[(&str, &str)] = &[
    (
        "child-tuning-d",
        include_str!("../../configs/child-tuning-d.toml"),
    ),
    (
        "child-tuning-f",
        include_str!("../../configs/child-tuning-f.toml"),
    ),
    ("ina", include_str!("../../configs/ina.toml")),
    ("ina-paper", include_str!("../../configs/ina-paper.toml")),
    (
        "lora-roberta-base",
        include_str!("../../configs/lora-roberta-base.toml"),
    ),
    ("layernorm", include_str!("../../configs/layernorm.toml")),
    ("bitfit", include_str!("../../configs/bitfit.toml")),
    ("full", include_str!("../../configs/full.toml")),
];

/// `peft train --help` for --config, listing [`RECIPES`] (a test keeps the two in step).
pub const CONFIG_HELP: &str = "TOML file with any of the settings above (snake_case keys); \
flags override it. The papers' recipes, each citing its source, are in configs/ and built in \
(--config NAME finds them without the repository):
  child-tuning-d     Child-Tuning D as its reference code (Xu et al., 2021)
  child-tuning-f     Child-Tuning F as its reference code (Xu et al., 2021)
  ina                InA as the authors' code (Kang et al., 2024)
  ina-paper          InA in the paper's GELU form, on query and key
  lora-roberta-base  LoRA's GLUE settings for RoBERTa-base (Hu et al., 2022)
  layernorm          LayerNorm only (ValizadehAslani & Liang, 2024)
  bitfit             BitFit (Ben Zaken et al., 2022)
  full               full fine-tuning as BERT's paper (Devlin et al., 2019)";

impl Overrides {
    /// A TOML file, or the name of a built-in recipe (`child-tuning-d`, `ina`, ...) when no
    /// such file exists.
    pub fn from_config(arg: &Path) -> Result<Self> {
        if !arg.exists() {
            let name = arg.to_string_lossy();
            let name = name.strip_suffix(".toml").unwrap_or(&name);
            let name = name.strip_prefix("configs/").unwrap_or(name);
            if let Some((_, text)) = RECIPES.iter().find(|(n, _)| *n == name) {
                return Self::from_toml_text(text, Path::new(&format!("configs/{name}.toml")));
            }
        }
        Self::from_toml_file(arg)
    }

    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).path_context("cannot read config", path)?;
        Self::from_toml_text(&text, path)
    }

    fn from_toml_text(text: &str, path: &Path) -> Result<Self> {
        toml::from_str(text).map_err(|e| {
            let (msg, key) = explain_toml(e.message());
            // serde reports an unknown key at its table: find the key's own line.
            let at = key
                .and_then(|k| {
                    text.lines().position(|l| {
                        l.trim_start()
                            .strip_prefix(k.as_str())
                            .is_some_and(|r| r.trim_start().starts_with('='))
                    })
                })
                .or_else(|| {
                    e.span()
                        .map(|s| text[..s.start.min(text.len())].lines().count().max(1) - 1)
                });
            let line = at.map(|l| format!(":{}", l + 1)).unwrap_or_default();
            user(format!("{}{line}: {msg}", path.display()))
        })
    }

    /// True when nothing is set: `--resume` takes the run's own settings and no others.
    pub fn is_empty(&self) -> bool {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_object().map(|o| o.values().all(|x| x.is_null())))
            .unwrap_or(false)
    }

    /// Keys set here win over `base`.
    pub fn over(self, base: Overrides) -> Overrides {
        macro_rules! pick {
            ($($f:ident),*) => { Overrides { $($f: self.$f.or(base.$f)),* } };
        }
        pick!(
            model,
            revision,
            data_dir,
            task,
            train_file,
            dev_file,
            text_columns,
            label_column,
            problem,
            method,
            fraction,
            reserve,
            fisher,
            fisher_samples,
            fisher_batch_mean,
            lora_r,
            lora_alpha,
            lora_dropout,
            lora_targets,
            ina_r,
            ina_alpha,
            ina_dropout,
            ina_targets,
            ina_inhibition,
            ina_activation,
            epochs,
            max_steps,
            lr,
            batch_size,
            grad_accum,
            max_seq_len,
            warmup_ratio,
            weight_decay,
            max_grad_norm,
            seed,
            eval_steps,
            eval_batch_size,
            device,
            output_dir,
            save_steps,
            skip_nonfinite
        )
    }

    /// Fill what is unset with defaults and check every value.
    pub fn resolve(self) -> Result<TrainConfig> {
        let task_name = self
            .task
            .clone()
            .ok_or_else(|| user("no task: pass --task (e.g. --task rte)"))?;
        let custom = custom_data(&self, &task_name)?;
        let model = self.model.ok_or_else(|| {
            user("no model: pass --model DIR (or a hub id) or set `model` in the config")
        })?;
        let task_name = match custom {
            true => CUSTOM,
            false => crate::data::tasks::task(&task_name)?.name,
        };
        // GLUE without a folder comes from the hub; custom data names its own files.
        let data_dir = match custom {
            true => None,
            false => self
                .data_dir
                .or_else(|| std::env::var_os("PEFT_GLUE_DIR").map(PathBuf::from)),
        };
        let method = self.method.unwrap_or(Method::Full);
        let given = |set: bool, flag: &str, ok: bool| -> Result<()> {
            if set && !ok {
                return Err(user(format!(
                    "--{flag} does not apply to --method {method}"
                )));
            }
            Ok(())
        };
        given(self.fraction.is_some(), "fraction", method.takes_fraction())?;
        given(self.reserve.is_some(), "reserve", method.takes_reserve())?;
        let ranked = method.needs_fisher();
        given(self.fisher.is_some(), "fisher", ranked)?;
        given(self.fisher_samples.is_some(), "fisher-samples", ranked)?;
        given(
            self.fisher_batch_mean.is_some(),
            "fisher-batch-mean",
            ranked,
        )?;
        let lora = method == Method::Lora;
        let ina = method == Method::Ina;
        given(self.lora_r.is_some(), "lora-r", lora)?;
        given(self.lora_alpha.is_some(), "lora-alpha", lora)?;
        given(self.lora_dropout.is_some(), "lora-dropout", lora)?;
        given(self.lora_targets.is_some(), "lora-targets", lora)?;
        given(self.ina_r.is_some(), "ina-r", ina)?;
        given(self.ina_alpha.is_some(), "ina-alpha", ina)?;
        given(self.ina_dropout.is_some(), "ina-dropout", ina)?;
        given(self.ina_targets.is_some(), "ina-targets", ina)?;
        given(self.ina_inhibition.is_some(), "ina-inhibition", ina)?;
        given(self.ina_activation.is_some(), "ina-activation", ina)?;
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        if method.takes_fraction() && self.fraction.is_none() {
            return Err(user(format!(
                "--method {method} needs --fraction (e.g. --fraction 0.1)"
            )));
        }
        let seed = self.seed.unwrap_or(42);
        let output_dir = self
            .output_dir
            .unwrap_or_else(|| PathBuf::from("runs").join(format!("{task_name}-{method}-{seed}")));
        let cfg = TrainConfig {
            model,
            revision: self.revision,
            data_dir,
            task: task_name.to_string(),
            train_file: self.train_file,
            dev_file: self.dev_file,
            text_columns: self.text_columns,
            label_column: self.label_column,
            problem: custom.then(|| self.problem.unwrap_or(CustomProblem::Classification)),
            method,
            fraction: self.fraction,
            reserve: if method.takes_reserve() {
                Some(self.reserve.unwrap_or(0.3))
            } else {
                None
            },
            fisher_samples: (ranked && self.fisher.is_none()).then(|| {
                self.fisher_samples
                    .unwrap_or(Samples::Count(FISHER_SAMPLES))
            }),
            fisher_batch_mean: match method {
                Method::ChildD if self.fisher.is_none() => {
                    Some(self.fisher_batch_mean.unwrap_or(CHILD_TUNING_FISHER_BATCH))
                }
                _ => self.fisher_batch_mean,
            },
            fisher: self.fisher,
            lora_r: lora.then(|| self.lora_r.unwrap_or(8)),
            lora_alpha: lora.then(|| self.lora_alpha.unwrap_or(16.0)),
            lora_dropout: lora.then(|| self.lora_dropout.unwrap_or(0.1)),
            lora_targets: lora.then(|| {
                self.lora_targets
                    .clone()
                    .unwrap_or_else(|| strings(&["query", "value"]))
            }),
            ina_r: ina.then(|| self.ina_r.unwrap_or(4)),
            ina_alpha: ina.then(|| self.ina_alpha.unwrap_or(16.0)),
            ina_dropout: ina.then(|| self.ina_dropout.unwrap_or(0.1)),
            ina_targets: ina.then(|| {
                self.ina_targets
                    .clone()
                    .unwrap_or_else(|| strings(&["query", "key", "value"]))
            }),
            ina_inhibition: ina.then(|| self.ina_inhibition.unwrap_or(0.1)),
            ina_activation: ina.then(|| self.ina_activation.unwrap_or(InaActivation::LeakyRelu)),
            epochs: self.epochs.unwrap_or(3),
            max_steps: self.max_steps,
            lr: self.lr.unwrap_or_else(|| method.default_lr()),
            batch_size: self.batch_size.unwrap_or(32),
            grad_accum: self.grad_accum.unwrap_or(1),
            max_seq_len: self.max_seq_len.unwrap_or(128),
            warmup_ratio: self.warmup_ratio.unwrap_or(0.06),
            weight_decay: self.weight_decay.unwrap_or(0.01),
            max_grad_norm: self.max_grad_norm.unwrap_or(1.0),
            seed,
            eval_steps: self.eval_steps,
            eval_batch_size: self.eval_batch_size.unwrap_or(64),
            device: self.device.unwrap_or_else(|| "cpu".into()),
            output_dir,
            save_steps: self.save_steps,
            skip_nonfinite: self.skip_nonfinite.unwrap_or(0),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Whether `task` is custom data, after checking that the custom flags are given exactly
/// when it is.
fn custom_data(o: &Overrides, task: &str) -> Result<bool> {
    let custom = task.eq_ignore_ascii_case(CUSTOM);
    let flags = [
        ("--train", o.train_file.is_some()),
        ("--dev", o.dev_file.is_some()),
        ("--text-columns", o.text_columns.is_some()),
        ("--label-column", o.label_column.is_some()),
        ("--problem", o.problem.is_some()),
    ];
    if !custom {
        if let Some((flag, _)) = flags.iter().find(|(_, set)| *set) {
            return Err(user(format!(
                "{flag} applies to --task custom; GLUE tasks read --data-dir"
            )));
        }
        return Ok(false);
    }
    if o.data_dir.is_some() {
        return Err(user(
            "--data-dir applies to GLUE tasks; --task custom reads --train and --dev",
        ));
    }
    if let Some((flag, _)) = flags[..4].iter().find(|(_, set)| !*set) {
        return Err(user(format!(
            "--task custom needs {flag}: it reads --train FILE --dev FILE --text-columns a[,b] \
             --label-column y"
        )));
    }
    for path in [&o.train_file, &o.dev_file].into_iter().flatten() {
        crate::data::custom::check_extension(path)?;
    }
    let n = o.text_columns.as_ref().map_or(0, Vec::len);
    if !(1..=2).contains(&n) {
        return Err(user(format!(
            "--text-columns: name one column, or two for sentence pairs (got {n})"
        )));
    }
    Ok(true)
}

/// serde names an unknown key and lists the valid ones; say which one was meant.
/// Returns the message and, for an unknown key, the key.
fn explain_toml(msg: &str) -> (String, Option<String>) {
    let Some((key, expected)) = msg
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'))
    else {
        return (msg.to_string(), None);
    };
    let valid: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    // The names transformers' TrainingArguments use for the same settings.
    let alias = match key {
        "learning_rate" => Some("lr"),
        "num_train_epochs" | "num_epochs" => Some("epochs"),
        "per_device_train_batch_size" | "train_batch_size" => Some("batch_size"),
        "per_device_eval_batch_size" => Some("eval_batch_size"),
        "gradient_accumulation_steps" => Some("grad_accum"),
        "max_length" | "max_seq_length" => Some("max_seq_len"),
        "model_name_or_path" => Some("model"),
        _ => None,
    };
    if let Some(a) = alias {
        return (
            format!("unknown key `{key}`; did you mean `{a}`?"),
            Some(key.to_string()),
        );
    }
    let closest = valid
        .iter()
        .map(|v| (strsim::jaro_winkler(key, v), *v))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let msg = match closest {
        Some((score, v)) if score > 0.8 => format!("unknown key `{key}`; did you mean `{v}`?"),
        _ => format!("unknown key `{key}`; valid keys: {}", valid.join(", ")),
    };
    (msg, Some(key.to_string()))
}

impl TrainConfig {
    /// The adapter a lora or ina run adds.
    pub fn adapter(&self) -> Option<AdapterConfig> {
        match self.method {
            Method::Lora => Some(AdapterConfig {
                kind: AdapterKind::Lora,
                r: self.lora_r?,
                alpha: self.lora_alpha?,
                dropout: self.lora_dropout?,
                targets: self.lora_targets.clone()?,
            }),
            Method::Ina => Some(AdapterConfig {
                kind: AdapterKind::Ina {
                    inhibition: self.ina_inhibition?,
                    activation: self.ina_activation?,
                },
                r: self.ina_r?,
                alpha: self.ina_alpha?,
                dropout: self.ina_dropout?,
                targets: self.ina_targets.clone()?,
            }),
            _ => None,
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |key: &str, why: String| Err(user(format!("{key}: {why}")));
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("lr", format!("{} must be positive", self.lr));
        }
        for (key, v) in [
            ("epochs", self.epochs),
            ("batch_size", self.batch_size),
            ("grad_accum", self.grad_accum),
            ("eval_batch_size", self.eval_batch_size),
        ] {
            if v == 0 {
                return bad(key, "must be at least 1".into());
            }
        }
        for (key, v) in [
            ("max_steps", self.max_steps),
            ("eval_steps", self.eval_steps),
            ("save_steps", self.save_steps),
        ] {
            if v == Some(0) {
                return bad(key, "must be at least 1".into());
            }
        }
        for (key, v) in [("fraction", self.fraction), ("reserve", self.reserve)] {
            if let Some(v) = v {
                if !(v > 0.0 && v <= 1.0) {
                    return bad(key, format!("{v} is outside (0, 1]"));
                }
            }
        }
        if let Some(a) = self.adapter() {
            if a.r == 0 {
                return bad("lora_r/ina_r", "the rank must be at least 1".into());
            }
            if !(0.0..1.0).contains(&a.dropout) {
                return bad(
                    "lora_dropout/ina_dropout",
                    format!("{} is outside [0, 1)", a.dropout),
                );
            }
            if a.targets.is_empty() {
                return bad(
                    "lora_targets/ina_targets",
                    "name at least one module".into(),
                );
            }
            for t in &a.targets {
                if !TARGETS.contains(&t.as_str()) {
                    return bad(
                        "lora_targets/ina_targets",
                        format!(
                            "unknown module `{t}` (expected one of {})",
                            TARGETS.join(", ")
                        ),
                    );
                }
            }
        }
        if self.fisher_samples == Some(Samples::Count(0)) || self.fisher_batch_mean == Some(0) {
            return bad(
                "fisher_samples/fisher_batch_mean",
                "must be at least 1".into(),
            );
        }
        if self.max_seq_len < 4 {
            return bad("max_seq_len", format!("{} is too short", self.max_seq_len));
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return bad(
                "warmup_ratio",
                format!("{} is outside [0, 1)", self.warmup_ratio),
            );
        }
        if self.weight_decay.is_nan()
            || self.weight_decay < 0.0
            || self.max_grad_norm.is_nan()
            || self.max_grad_norm < 0.0
        {
            return bad("weight_decay/max_grad_norm", "must not be negative".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Overrides {
        Overrides {
            model: Some("m".into()),
            task: Some("RTE".into()),
            data_dir: Some("d".into()),
            ..Default::default()
        }
    }

    #[test]
    fn flags_override_file_override_defaults() {
        let file: Overrides =
            toml::from_str("lr = 0.5\nepochs = 7\nmethod = \"layernorm\"").unwrap();
        let flags = Overrides {
            epochs: Some(2),
            ..base()
        };
        let cfg = flags.over(file).resolve().unwrap();
        assert_eq!(
            (cfg.lr, cfg.epochs, cfg.method),
            (0.5, 2, Method::Layernorm)
        );
        assert_eq!(cfg.task, "rte");
        assert_eq!(cfg.output_dir, PathBuf::from("runs/rte-layernorm-42"));
        assert_eq!(base().resolve().unwrap().lr, Method::Full.default_lr());
    }

    /// Every file in configs/ is a built-in recipe listed in --help, and each resolves.
    #[test]
    fn every_recipe_is_built_in_listed_and_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter_map(|f| f.strip_suffix(".toml").map(str::to_string))
            .collect();
        files.sort();
        let mut built_in: Vec<String> = RECIPES.iter().map(|(n, _)| n.to_string()).collect();
        built_in.sort();
        assert_eq!(files, built_in);
        for (name, text) in RECIPES {
            assert_eq!(
                *text,
                std::fs::read_to_string(dir.join(format!("{name}.toml"))).unwrap()
            );
            assert!(
                CONFIG_HELP.contains(&format!("\n  {name} ")),
                "{name} is not in --help"
            );
            let file = Overrides::from_config(Path::new(name)).unwrap();
            let cfg = base().over(file).resolve().unwrap();
            assert!(text.contains(&format!("method = \"{}\"", cfg.method)));
        }
        let d = base()
            .over(Overrides::from_config(Path::new("child-tuning-d")).unwrap())
            .resolve()
            .unwrap();
        assert_eq!(
            (d.lr, d.batch_size, d.epochs, d.warmup_ratio, d.reserve),
            (4e-5, 16, 3, 0.0, Some(0.3))
        );
        assert_eq!(
            (d.fisher_batch_mean, d.fisher_samples),
            (Some(16), Some(Samples::All))
        );
        let err = Overrides::from_config(Path::new("no-such-recipe"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no-such-recipe"), "{err}");
    }

    #[test]
    fn fisher_samples_default_is_bounded_and_takes_all() {
        let ranked = |extra: Overrides| {
            Overrides {
                method: Some(Method::FisherLayernorm),
                fraction: Some(0.2),
                ..base()
            }
            .over(extra)
            .resolve()
            .unwrap()
        };
        let cfg = ranked(Overrides::default());
        assert_eq!(cfg.fisher_samples, Some(Samples::Count(FISHER_SAMPLES)));
        assert_eq!(cfg.fisher_batch_mean, None);
        let all: Overrides = toml::from_str("fisher_samples = \"all\"").unwrap();
        assert_eq!(ranked(all).fisher_samples, Some(Samples::All));
        let n: Overrides = toml::from_str("fisher_samples = 200").unwrap();
        assert_eq!(ranked(n).fisher_samples, Some(Samples::Count(200)));
        assert!(toml::from_str::<Overrides>("fisher_samples = \"some\"").is_err());
        assert_eq!("ALL".parse::<Samples>(), Ok(Samples::All));
        // The saved config round-trips.
        let cfg = ranked(toml::from_str("fisher_samples = \"all\"").unwrap());
        let back: TrainConfig =
            serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
        let d = Overrides {
            method: Some(Method::ChildD),
            ..base()
        }
        .resolve()
        .unwrap();
        assert_eq!(d.fisher_batch_mean, Some(CHILD_TUNING_FISHER_BATCH));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let err = toml::from_str::<Overrides>("lrr = 0.1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("lrr"), "{err}");
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("c.toml");
        std::fs::write(&path, "epochs = 3\nwarmup_ration = 0.1\n").unwrap();
        let err = Overrides::from_toml_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("c.toml:2: unknown key `warmup_ration`; did you mean `warmup_ratio`?"),
            "{err}"
        );
        let err = Overrides {
            lr: Some(-1.0),
            ..base()
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(err.contains("lr"), "{err}");
        let err = Overrides {
            warmup_ratio: Some(1.5),
            ..base()
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(err.contains("warmup_ratio"), "{err}");
    }
}
