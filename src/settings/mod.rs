//! The resolved training configuration: built-in defaults, overridden by a TOML file
//! (`--config`), overridden by command-line flags. The result is printed and saved as
//! the run's `config.json`.

use std::path::PathBuf;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::data::squad::{SpanOptions, MAX_ANSWER_LENGTH, N_BEST};
use crate::data::{CustomProblem, TaskSpec, CUSTOM};
use crate::error::user;
use crate::methods::{self, Method, MethodSpec, Methods};
use crate::model::adapter::IA3_TARGETS;
use crate::model::{InaActivation, Precision};
use crate::tokenize::DOC_STRIDE;

/// Training examples for a Fisher estimate made before training, unless told otherwise.
/// On all-MiniLM-L6-v2 and RTE, 1024 examples pick 99% of the LayerNorm elements (and
/// 98.5% of Child-Tuning D's encoder elements) that all 2,490 pick, with the components in
/// the same order, in 30% of the time (docs/results.md, "How many examples a Fisher
/// estimate needs"); beyond a few thousand the estimate costs hours and changes little.
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

/// The training settings, each written once: its help, its flag, its TOML key and saved
/// name, its type and its default. From this table come [`TrainConfig`] (the resolved
/// settings a run saves), [`Overrides`] (what a TOML file or the command line may set, all
/// optional, with `--help` built from the same defaults) and the merge of the two.
///
/// A field's rule is one of:
/// - `default(E)`: always set; E when not given.
/// - `when(C, E)`: only for runs where C holds (e.g. the method is LoRA), then E when not
///   given; given when C does not hold, it is refused as a flag of another method.
/// - `optional(C)`: may be left unset; refused when given while C does not hold.
/// - `computed(E)`, `computed_opt(E)`: E works it out (from `o`, the overrides, and `c`,
///   the run's [`Context`]), a value or an Option; `#[shown(D)]` gives `--help` its default.
macro_rules! settings {
    (
        context($o:ident, $c:ident);
        $(
            $(#[doc = $doc:literal])*
            $(#[shown($shown:expr)])?
            #[arg($($arg:tt)*)]
            $(#[serde($($serde:tt)*)])*
            $name:ident : $ty:ty = $rule:ident ( $($val:tt)* );
        )*
    ) => {
        /// Every setting a run uses, resolved: printed at the start, saved as the run's
        /// `config.json`, read back by `--resume` and `peft eval`.
        #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
        #[serde(deny_unknown_fields)]
        pub struct TrainConfig {
            $(
                $(#[doc = $doc])*
                $(#[serde($($serde)*)])*
                pub $name: settings!(@type $rule $ty),
            )*
        }

        /// What a TOML file or the command line may set: the same keys, all optional.
        /// On the command line the keys are flags (`batch_size` → `--batch-size`).
        #[derive(Debug, Clone, Default, Serialize, Deserialize, clap::Args)]
        #[serde(deny_unknown_fields)]
        pub struct Overrides {
            $(
                #[arg($($arg)*, help = help(
                    &[$($doc),*],
                    settings!(@either
                        ($(Some(Shown::shown(&$shown)))?)
                        (settings!(@shown $rule $ty, ($($val)*))))
                ))]
                $(#[serde($($serde)*)])*
                pub $name: Option<$ty>,
            )*
        }

        impl Overrides {
            /// Keys set here win over `base`.
            pub fn over(self, base: Overrides) -> Overrides {
                Overrides { $($name: self.$name.or(base.$name)),* }
            }

            /// Every field by its rule, once the run's context is known.
            fn fill(self, $c: &Context) -> Result<TrainConfig> {
                let $o = self;
                $( settings!(@check $o $c $name $rule ($($val)*)); )*
                Ok(TrainConfig {
                    $( $name: settings!(@value $o $c $name $rule ($($val)*)), )*
                })
            }
        }
    };
    (@either ($e:expr) ($f:expr)) => { $e };
    (@either () ($f:expr)) => { $f };
    (@type default $ty:ty) => { $ty };
    (@type computed $ty:ty) => { $ty };
    (@type computed_opt $ty:ty) => { Option<$ty> };
    (@type when $ty:ty) => { Option<$ty> };
    (@type optional $ty:ty) => { Option<$ty> };
    (@shown default $ty:ty, ($e:expr)) => { Some(<$ty as Shown>::shown(&$e)) };
    (@shown when $ty:ty, ($cond:expr, $e:expr)) => { Some(<$ty as Shown>::shown(&$e)) };
    (@shown $rule:ident $ty:ty, ($($t:tt)*)) => { None };
    (@check $o:ident $c:ident $name:ident when ($cond:expr, $e:expr)) => {
        applies($o.$name.is_some(), stringify!($name), $cond, $c)?
    };
    (@check $o:ident $c:ident $name:ident optional ($cond:expr)) => {
        applies($o.$name.is_some(), stringify!($name), $cond, $c)?
    };
    (@check $o:ident $c:ident $name:ident $rule:ident ($($t:tt)*)) => {};
    (@value $o:ident $c:ident $name:ident default ($e:expr)) => {
        $o.$name.clone().unwrap_or_else(|| $e)
    };
    (@value $o:ident $c:ident $name:ident when ($cond:expr, $e:expr)) => {
        if $cond { Some($o.$name.clone().unwrap_or_else(|| $e)) } else { None }
    };
    (@value $o:ident $c:ident $name:ident optional ($cond:expr)) => { $o.$name.clone() };
    (@value $o:ident $c:ident $name:ident computed ($e:expr)) => { $e };
    (@value $o:ident $c:ident $name:ident computed_opt ($e:expr)) => { $e };
}

settings! {
    context(o, c);

    /// Base model: a directory in Hugging Face layout (config.json, model.safetensors,
    /// tokenizer.json), or a hub id such as bert-base-uncased, fetched into the Hugging
    /// Face cache (HF_HUB_OFFLINE=1: the cache only).
    #[arg(long)]
    model: PathBuf = computed(o.model.clone().ok_or_else(|| {
        user("no model: pass --model DIR (or a hub id) or set `model` in the config")
    })?);
    /// Branch, tag or commit of a hub --model [default: main].
    #[arg(long)]
    #[serde(default)]
    revision: String = optional(true);
    /// GLUE data in the official glue_data/<TASK>/ layout [default: $PEFT_GLUE_DIR, else
    /// nyu-mll/glue from the Hugging Face hub]; SQuAD: a folder with the official
    /// train-v1.1.json and dev-v1.1.json (or -v2.0) [default: rajpurkar/squad(_v2) from
    /// the hub].
    #[arg(long)]
    #[serde(default)]
    data_dir: PathBuf = computed_opt(match (c.custom, c.qa) {
        (true, _) => None,
        (false, true) => o.data_dir.clone(),
        (false, false) => o.data_dir.clone().or_else(|| std::env::var_os("PEFT_GLUE_DIR").map(PathBuf::from)),
    });
    /// Task: the GLUE tasks cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli; squad
    /// (v1.1) or squad_v2 (any case, dashes allowed); or custom, with --train, --dev,
    /// --text-columns and --label-column.
    #[arg(long)]
    task: String = computed(c.task.to_string());
    /// custom: training file, .csv, .tsv (no quoting, as GLUE) or .jsonl; squad: a
    /// training file in the official JSON format.
    #[arg(long = "train", value_name = "FILE")]
    #[serde(default, rename = "train", skip_serializing_if = "Option::is_none")]
    train_file: PathBuf = optional(c.custom || c.qa);
    /// custom: dev file, scored after each epoch; its labels must occur in --train.
    /// squad: a dev file in the official JSON format.
    #[arg(long = "dev", value_name = "FILE")]
    #[serde(default, rename = "dev", skip_serializing_if = "Option::is_none")]
    dev_file: PathBuf = optional(c.custom || c.qa);
    /// custom: the text column, or two comma-separated for sentence pairs.
    #[arg(long, value_delimiter = ',')]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text_columns: Vec<String> = optional(c.custom);
    /// custom: the label column.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    label_column: String = optional(c.custom);
    /// custom: classification (labels are the training file's distinct values) or
    /// regression (numbers).
    #[arg(long, value_enum)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    problem: CustomProblem = when(c.custom, CustomProblem::Classification);
    /// Which parameters train: {methods}; or a union of them joined by `+`
    /// (lora+layernorm: the adapters, every LayerNorm and the head).
    #[arg(long)]
    method: Methods = default(Methods::one(DEFAULT_METHOD));
    /// fisher-layernorm, random-layernorm, random: share of eligible elements that train
    /// (required).
    #[arg(long)]
    fraction: f64 = optional(c.method.takes_fraction());
    /// child-f, child-d: Child-Tuning's reserve_p.
    #[arg(long)]
    reserve: f64 = when(c.method.takes_reserve(), 0.3);
    /// top-layers: how many of the top encoder layers train (required).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    layers: usize = optional(c.method.has(methods::top_layers::METHOD));
    /// fisher-layernorm, child-d: rank by this fisher.safetensors (from `peft fisher`,
    /// e.g. a --global one) instead of estimating Fisher on the training set first.
    #[arg(long)]
    fisher: PathBuf = optional(c.method.needs_fisher());
    /// fisher-layernorm, child-d: training examples (a seeded random sample) for the
    /// Fisher estimate, or `all`.
    #[shown(FISHER_SAMPLES)]
    #[arg(long)]
    fisher_samples: Samples = computed_opt({
        applies(o.fisher_samples.is_some(), "fisher_samples", c.method.needs_fisher(), c)?;
        c.estimates_fisher(&o)
            .then(|| o.fisher_samples.unwrap_or(Samples::Count(FISHER_SAMPLES)))
    });
    /// fisher-layernorm, child-d: estimate Fisher from batch-mean gradients of this batch
    /// size, as the Child-Tuning reference does.
    #[shown(format!(
        "{CHILD_TUNING_FISHER_BATCH} for child-d, as its reference; per-example gradients \
         for fisher-layernorm"
    ))]
    #[arg(long)]
    fisher_batch_mean: usize = computed_opt({
        applies(o.fisher_batch_mean.is_some(), "fisher_batch_mean", c.method.needs_fisher(), c)?;
        if c.method.has(methods::child_d::METHOD) && c.estimates_fisher(&o) {
            Some(o.fisher_batch_mean.unwrap_or(CHILD_TUNING_FISHER_BATCH))
        } else {
            o.fisher_batch_mean
        }
    });
    /// lora, dora: adapter rank.
    #[arg(long)]
    lora_r: usize = when(c.method.lora(), 8);
    /// lora, dora: scaling numerator; updates are scaled by alpha/r.
    #[arg(long)]
    lora_alpha: f64 = when(c.method.lora(), 16.0);
    /// lora, dora: dropout on the adapter's input.
    #[arg(long)]
    lora_dropout: f64 = when(c.method.lora(), 0.1);
    /// lora, dora: rsLoRA, scaling updates by alpha/√r rather than alpha/r (PEFT's use_rslora).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lora_rslora: bool = when(c.method.lora(), false);
    /// lora, dora: modules to wrap, from query, key, value, attention.output.dense,
    /// intermediate.dense, output.dense (PEFT's defaults for BERT).
    #[arg(long, value_delimiter = ',')]
    lora_targets: Vec<String> = when(c.method.lora(), strings(&["query", "value"]));
    /// ina: adapter rank.
    #[arg(long)]
    ina_r: usize = when(c.method.has(methods::ina::METHOD), 4);
    /// ina: scaling numerator, alpha/r.
    #[arg(long)]
    ina_alpha: f64 = when(c.method.has(methods::ina::METHOD), 16.0);
    /// ina: dropout on the adapter's input.
    #[arg(long)]
    ina_dropout: f64 = when(c.method.has(methods::ina::METHOD), 0.1);
    /// ina: modules to wrap (the authors' code: query, key and value).
    #[arg(long, value_delimiter = ',')]
    ina_targets: Vec<String> = when(c.method.has(methods::ina::METHOD), strings(&["query", "key", "value"]));
    /// ina: Inh_p, the share of each token's max activation subtracted; 0 is plain LoRA.
    #[arg(long)]
    ina_inhibition: f64 = when(c.method.has(methods::ina::METHOD), 0.1);
    /// ina: activation after the inhibition (the authors' code: leaky-relu; the paper's
    /// text: gelu).
    #[arg(long, value_enum)]
    ina_activation: InaActivation = when(c.method.has(methods::ina::METHOD), InaActivation::LeakyRelu);
    /// ia3: modules to scale, matched by suffix as PEFT matches them (`output.dense` is
    /// both dense output layers, which scale their input; the rest scale their output).
    #[arg(long, value_delimiter = ',')]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ia3_targets: Vec<String> = when(c.method.has(methods::ia3::METHOD), strings(IA3_TARGETS));
    /// loreft: rank of the rotation R (pyreft's low_rank_dimension; its GLUE runs use 1).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    loreft_r: usize = when(c.method.has(methods::loreft::METHOD), 1);
    /// loreft: layers whose output is edited, `all` or 0-based indices.
    #[arg(long, value_delimiter = ',')]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    loreft_layers: Vec<String> = when(c.method.has(methods::loreft::METHOD), strings(&["all"]));
    /// loreft: tokens edited, as pyreft writes them: fN (the first N), lN (the last N real
    /// tokens, the final separator included) or fN+lM, each group with its own
    /// intervention; at most half of a sequence each (pyreft's GLUE runs: f1).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    loreft_positions: String = when(c.method.has(methods::loreft::METHOD), "f1".to_string());
    /// loreft: dropout on the edited states (pyreft's GLUE runs: 0.05).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    loreft_dropout: f64 = when(c.method.has(methods::loreft::METHOD), 0.05);
    /// Passes over the training set.
    #[arg(long)]
    epochs: usize = default(3);
    /// Stop after this many optimizer steps; the schedule spans exactly these (smoke tests).
    #[arg(long)]
    max_steps: usize = optional(true);
    /// Peak learning rate.
    #[shown(Method::default_lrs())]
    #[arg(long)]
    lr: f64 = computed(o.lr.unwrap_or_else(|| c.method.default_lr()));
    /// squad: tokens shared by neighbouring windows of a long context.
    #[shown(format!("{DOC_STRIDE}, at most half of --max-seq-len"))]
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    doc_stride: usize = computed_opt({
        for_tasks(o.doc_stride.is_some(), "doc_stride", c.qa, SQUAD, c)?;
        let len = o.max_seq_len.unwrap_or(QA_MAX_SEQ_LEN);
        c.qa.then(|| o.doc_stride.unwrap_or(DOC_STRIDE.min(len / 2)))
    });
    /// squad: the largest start and end logits of each window combined into candidate
    /// answers.
    #[shown(N_BEST)]
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    n_best: usize = computed_opt({
        for_tasks(o.n_best.is_some(), "n_best", c.qa, SQUAD, c)?;
        c.qa.then(|| o.n_best.unwrap_or(N_BEST))
    });
    /// squad: the longest answer, in tokens.
    #[shown(MAX_ANSWER_LENGTH)]
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_answer_length: usize = computed_opt({
        for_tasks(o.max_answer_length.is_some(), "max_answer_length", c.qa, SQUAD, c)?;
        c.qa.then(|| o.max_answer_length.unwrap_or(MAX_ANSWER_LENGTH))
    });
    /// squad_v2: answer nothing when the null score beats the best answer's by more than
    /// this (dev metrics report the best one as best_f1_thresh).
    #[shown(0.0)]
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    null_threshold: f64 = computed_opt({
        let v2 = c.task == "squad_v2";
        for_tasks(o.null_threshold.is_some(), "null_threshold", v2, "squad_v2", c)?;
        v2.then(|| o.null_threshold.unwrap_or(0.0))
    });
    /// Examples per micro-batch.
    #[arg(long)]
    batch_size: usize = default(32);
    /// Micro-batches per optimizer step.
    #[arg(long)]
    grad_accum: usize = default(1);
    /// Recompute each layer's activations in the backward pass instead of keeping them:
    /// memory for one more forward's time, the same gradients.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(default)]
    recompute: bool = default(false);
    /// What the linear layers' and attention's products compute in: f32, or bf16 as
    /// autocast (f32 accumulation, weights, gradients and optimizer state; LayerNorm,
    /// softmax and the loss in f32). For GPUs; scoring stays f32.
    #[arg(long, value_enum)]
    #[serde(default)]
    precision: Precision = default(Precision::F32);
    /// Truncate inputs (longest sentence first) to this many tokens; SQuAD's windows are
    /// this long.
    #[shown(format!("{MAX_SEQ_LEN}; {QA_MAX_SEQ_LEN} for squad, as run_qa.py"))]
    #[arg(long)]
    max_seq_len: usize = computed(o.max_seq_len.unwrap_or(if c.qa { QA_MAX_SEQ_LEN } else { MAX_SEQ_LEN }));
    /// Share of the steps spent warming the learning rate up from 0.
    #[arg(long)]
    warmup_ratio: f64 = default(0.06);
    /// Decoupled weight decay; never applied to biases and LayerNorm.
    #[arg(long)]
    weight_decay: f64 = default(0.01);
    /// Clip gradients to this global L2 norm; 0 disables.
    #[arg(long)]
    max_grad_norm: f64 = default(1.0);
    /// Seeds data order, head initialisation and dropout.
    #[arg(long)]
    seed: u64 = default(DEFAULT_SEED);
    /// Also evaluate on dev every N optimizer steps [default: only after each epoch].
    #[arg(long)]
    eval_steps: usize = optional(true);
    /// Examples per batch when scoring.
    #[arg(long)]
    eval_batch_size: usize = default(64);
    /// cpu, cuda or cuda:N.
    #[arg(long)]
    device: String = default("cpu".to_string());
    /// Run directory [default: runs/<task>-<method>-<seed>].
    #[arg(long)]
    output_dir: PathBuf = computed(o.output_dir.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(format!(
            "{}-{}-{}",
            c.task,
            c.method,
            o.seed.unwrap_or(DEFAULT_SEED)
        ))
    }));
    /// Save a resumable checkpoint every N optimizer steps, besides each epoch's end
    /// and Ctrl-C [default: only those].
    #[arg(long)]
    #[serde(default)]
    save_steps: usize = optional(true);
    /// Skip up to N optimizer steps whose loss or gradient is NaN or infinite instead
    /// of stopping at the first.
    #[arg(long)]
    #[serde(default)]
    skip_nonfinite: usize = default(0);
}

/// What the rules of [`settings!`] may read besides the overrides.
struct Context {
    method: Methods,
    custom: bool,
    /// A question-answering task (SQuAD).
    qa: bool,
    /// The canonical task name (or `custom`).
    task: &'static str,
}

impl Context {
    /// Whether the run estimates Fisher information itself (a ranked method without a
    /// --fisher file).
    fn estimates_fisher(&self, o: &Overrides) -> bool {
        self.method.needs_fisher() && o.fisher.is_none()
    }
}

/// A flag given for a method it does not apply to is refused, naming both. (The custom
/// data flags are checked before, with their own message.)
fn applies(given: bool, key: &str, ok: bool, c: &Context) -> Result<()> {
    if given && !ok {
        let flag = key.replace('_', "-");
        return Err(user(format!(
            "--{flag} does not apply to --method {}",
            c.method
        )));
    }
    Ok(())
}

/// A task's flag given for another task is refused, naming both.
fn for_tasks(given: bool, key: &str, ok: bool, tasks: &str, c: &Context) -> Result<()> {
    if given && !ok {
        let flag = key.replace('_', "-");
        return Err(user(format!(
            "--{flag} applies to --task {tasks}, not --task {}",
            c.task
        )));
    }
    Ok(())
}

const SQUAD: &str = "squad or squad_v2";

/// Tokens per input, and per SQuAD window (run_qa.py's `--max_seq_length`).
const MAX_SEQ_LEN: usize = 128;
const QA_MAX_SEQ_LEN: usize = 384;

/// The method and seed when none is given; the table below and the context read them.
const DEFAULT_METHOD: Method = methods::full::METHOD;
const DEFAULT_SEED: u64 = 42;

/// A field's help: its doc comment, with its default when it has a fixed one.
fn help(doc: &[&str], default: Option<String>) -> String {
    let text = doc.iter().map(|l| l.trim()).collect::<Vec<_>>().join(" ");
    // The method list comes from the registry, so a new method shows without an edit here.
    let text = text.replace("{methods}", &Method::names());
    match default {
        Some(d) => format!("{} [default: {d}]", text.trim_end_matches('.')),
        None => text,
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// How a default shows in `--help`.
trait Shown {
    fn shown(&self) -> String;
}

macro_rules! shown_by_display {
    ($($t:ty),*) => { $(impl Shown for $t { fn shown(&self) -> String { self.to_string() } })* };
}
shown_by_display!(usize, u64, f64, bool, String, Method, Methods, Samples);

impl Shown for Vec<String> {
    fn shown(&self) -> String {
        self.join(",")
    }
}

macro_rules! shown_by_value_enum {
    ($($t:ty),*) => { $(impl Shown for $t {
        fn shown(&self) -> String {
            clap::ValueEnum::to_possible_value(self)
                .map(|v| v.get_name().to_string())
                .unwrap_or_default()
        }
    })* };
}
shown_by_value_enum!(CustomProblem, InaActivation, Precision);

mod load;
mod validate;

pub use load::{CONFIG_HELP, RECIPES};

impl TrainConfig {
    /// The settings a run of `method` gets when it sets none of its own flags: the
    /// defaults of the table (None for no model is needed; "rte" stands for the task).
    pub fn defaults_for(method: impl Into<Methods>) -> Option<TrainConfig> {
        let method = method.into();
        let o = Overrides {
            method: Some(method.clone()),
            model: Some(PathBuf::new()),
            ..Default::default()
        };
        let c = Context {
            method,
            custom: false,
            qa: false,
            task: "rte",
        };
        o.fill(&c).ok()
    }

    /// The task of a run: a GLUE task from the registry, or custom data with the class
    /// labels the run found in its training file (`RunInfo::labels`).
    pub fn task_spec(&self, labels: Option<&[String]>) -> Result<&'static TaskSpec> {
        if self.task == CUSTOM {
            crate::data::custom::spec(
                self.problem.unwrap_or(CustomProblem::Classification),
                labels,
                self.text_columns.as_deref().unwrap_or_default(),
            )
        } else {
            crate::data::task(&self.task)
        }
    }

    /// How a SQuAD run picks its answers (for other tasks, the defaults: unused).
    pub fn span_options(&self) -> SpanOptions {
        SpanOptions {
            n_best: self.n_best.unwrap_or(N_BEST),
            max_answer_length: self.max_answer_length.unwrap_or(MAX_ANSWER_LENGTH),
            null_threshold: self.null_threshold.unwrap_or(0.0),
            v2: self.task == "squad_v2",
        }
    }

    /// The method with the settings its selection reads.
    pub fn method_spec(&self) -> MethodSpec {
        MethodSpec {
            method: self.method.clone(),
            fraction: self.fraction.unwrap_or(1.0),
            reserve: self.reserve.unwrap_or(1.0),
            layers: self.layers,
            seed: self.seed,
        }
    }

    /// `doc_stride`, with its default.
    pub fn doc_stride(&self) -> usize {
        self.doc_stride.unwrap_or(DOC_STRIDE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

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
            (0.5, 2, methods::layernorm::METHOD.into())
        );
        assert_eq!(cfg.task, "rte");
        assert_eq!(cfg.output_dir, PathBuf::from("runs/rte-layernorm-42"));
        assert_eq!(
            base().resolve().unwrap().lr,
            methods::full::METHOD.default_lr()
        );
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
                method: Some(methods::fisher_layernorm::METHOD.into()),
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
            method: Some(methods::child_d::METHOD.into()),
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
