//! The resolved training configuration: built-in defaults, overridden by a TOML file
//! (`--config`), overridden by command-line flags. The result is printed and saved as
//! the run's `config.json`.

use std::path::PathBuf;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::data::squad::{SpanOptions, MAX_ANSWER_LENGTH, N_BEST};
use crate::data::{CustomProblem, TaskSpec, CUSTOM};
use crate::error::user;
use crate::methods::settings::{help, Shown};
use crate::methods::{self, Method, MethodConfig, MethodFlags, MethodSpec, Methods};
use crate::model::Precision;
use crate::tokenize::DOC_STRIDE;

/// The training settings, each written once, grouped by concern (model, data, method,
/// optimisation, output): its help, its flag, its TOML key, its type and its default. From
/// this table come [`TrainConfig`] (the resolved settings a run saves, one struct per
/// concern), [`Overrides`] (what a TOML file or the command line may set, flat and all
/// optional, with `--help` built from the same defaults) and the merge of the two. A
/// method's own settings are not here: each method's file declares them
/// ([`crate::method_settings!`]), and the method section holds them.
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
            $(#[doc = $sdoc:literal])*
            concern $sa:ident : $Sa:ident {
                $(
                    $(#[doc = $adoc:literal])*
                    $(#[shown($ashown:expr)])?
                    #[arg($($aarg:tt)*)]
                    $(#[serde($($aserde:tt)*)])*
                    $aname:ident : $aty:ty = $arule:ident ( $($aval:tt)* );
                )*
            }
        )*
        method;
        {
            $(#[doc = $mdoc:literal])*
            #[arg($($marg:tt)*)]
            method: Methods = default($mdefault:expr);
        }
        $(
            $(#[doc = $tdoc:literal])*
            concern $sb:ident : $Sb:ident {
                $(
                    $(#[doc = $bdoc:literal])*
                    $(#[shown($bshown:expr)])?
                    #[arg($($barg:tt)*)]
                    $(#[serde($($bserde:tt)*)])*
                    $bname:ident : $bty:ty = $brule:ident ( $($bval:tt)* );
                )*
            }
        )*
    ) => {
        /// Every setting a run uses, resolved and grouped by concern: printed at the start,
        /// saved as the run's `config.json`, read back by `--resume` and `peft eval`.
        #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
        #[serde(deny_unknown_fields)]
        pub struct TrainConfig {
            $( $(#[doc = $sdoc])* pub $sa: $Sa, )*
            /// The method and its own settings.
            pub method: MethodConfig,
            $( $(#[doc = $tdoc])* pub $sb: $Sb, )*
        }

        $(
            $(#[doc = $sdoc])*
            #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
            #[serde(deny_unknown_fields)]
            pub struct $Sa {
                $(
                    $(#[doc = $adoc])*
                    $(#[serde($($aserde)*)])*
                    pub $aname: settings!(@type $arule $aty),
                )*
            }
        )*
        $(
            $(#[doc = $tdoc])*
            #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
            #[serde(deny_unknown_fields)]
            pub struct $Sb {
                $(
                    $(#[doc = $bdoc])*
                    $(#[serde($($bserde)*)])*
                    pub $bname: settings!(@type $brule $bty),
                )*
            }
        )*

        /// What a TOML file or the command line may set: every key, flat and optional,
        /// the method's own among them. On the command line the keys are flags
        /// (`batch_size` → `--batch-size`).
        #[derive(Debug, Clone, Default, Serialize, Deserialize, clap::Args)]
        pub struct Overrides {
            $($(
                #[arg($($aarg)*, help = help(
                    &[$($adoc),*],
                    settings!(@either
                        ($(Some(Shown::shown(&$ashown)))?)
                        (settings!(@shown $arule $aty, ($($aval)*))))
                ))]
                $(#[serde($($aserde)*)])*
                pub $aname: Option<$aty>,
            )*)*
            #[arg($($marg)*, help = help(&[$($mdoc),*], Some(Shown::shown(&$mdefault))))]
            pub method: Option<Methods>,
            #[command(flatten)]
            #[serde(flatten)]
            pub methods: MethodFlags,
            $($(
                #[arg($($barg)*, help = help(
                    &[$($bdoc),*],
                    settings!(@either
                        ($(Some(Shown::shown(&$bshown)))?)
                        (settings!(@shown $brule $bty, ($($bval)*))))
                ))]
                $(#[serde($($bserde)*)])*
                pub $bname: Option<$bty>,
            )*)*
        }

        impl Overrides {
            /// Keys set here win over `base`.
            pub fn over(self, base: Overrides) -> Overrides {
                Overrides {
                    $($($aname: self.$aname.or(base.$aname),)*)*
                    method: self.method.or(base.method),
                    methods: self.methods.or(base.methods),
                    $($($bname: self.$bname.or(base.$bname),)*)*
                }
            }

            /// Every key a file may set, for messages about unknown ones.
            pub fn keys() -> Vec<&'static str> {
                let mut keys = vec![$($(stringify!($aname),)*)* "method"];
                keys.extend(MethodFlags::keys());
                keys.extend([$($(stringify!($bname),)*)*]);
                keys
            }

            /// Every field by its rule, once the run's context is known.
            fn fill(self, $c: &Context) -> Result<TrainConfig> {
                let $o = self;
                $($( settings!(@check $o $c $aname $arule ($($aval)*)); )*)*
                $($( settings!(@check $o $c $bname $brule ($($bval)*)); )*)*
                Ok(TrainConfig {
                    $( $sa: $Sa {
                        $( $aname: settings!(@value $o $c $aname $arule ($($aval)*)), )*
                    }, )*
                    method: $o.methods.clone().resolve($c.method.clone())?,
                    $( $sb: $Sb {
                        $( $bname: settings!(@value $o $c $bname $brule ($($bval)*)), )*
                    }, )*
                })
            }
        }

        impl TrainConfig {
            /// The overrides that resolve to these settings: every key a run set, by its
            /// flat name, as `config.json` was saved before it was grouped (grid cells are
            /// named by its hash, reports compare runs by its keys).
            pub fn flat(&self) -> Overrides {
                Overrides {
                    $($( $aname: settings!(@back self.$sa.$aname, $arule), )*)*
                    method: Some(self.method.name.clone()),
                    methods: self.method.flags(),
                    $($( $bname: settings!(@back self.$sb.$bname, $brule), )*)*
                }
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
    (@back $v:expr, default) => { Some($v.clone()) };
    (@back $v:expr, computed) => { Some($v.clone()) };
    (@back $v:expr, $rule:ident) => { $v.clone() };
}

settings! {
    context(o, c);

    /// Which checkpoint, and what it runs on.
    concern model: ModelSettings {
        /// Base model: a directory in Hugging Face layout (config.json, model.safetensors,
        /// tokenizer.json), or a hub id such as bert-base-uncased, fetched into the Hugging
        /// Face cache (HF_HUB_OFFLINE=1: the cache only).
        #[arg(long)]
        model: PathBuf = computed(o.model.clone().ok_or_else(|| {
            user("no model: pass --model DIR (or a hub id) or set `model` in the config")
        })?);
        /// Start from a run's trained weights instead of --model's: its base with its
        /// trained tensors, adapters folded in, as `peft merge` would write them (the
        /// run's base is --model unless given). Child-Tuning's task transfer: --init
        /// MRPC_RUN --method head trains a new classifier over that encoder.
        #[arg(long, value_name = "RUN")]
        #[serde(default, skip_serializing_if = "Option::is_none")]
        init: PathBuf = optional(true);
        /// Branch, tag or commit of a hub --model [default: main].
        #[arg(long)]
        #[serde(default)]
        revision: String = optional(true);
        /// What the linear layers' and attention's products compute in: f32, or bf16 as
        /// autocast (f32 accumulation, weights, gradients and optimizer state; LayerNorm,
        /// softmax and the loss in f32). For GPUs; scoring stays f32.
        #[arg(long, value_enum)]
        #[serde(default)]
        precision: Precision = default(Precision::F32);
        /// cpu, cuda or cuda:N.
        #[arg(long)]
        device: String = default("cpu".to_string());
    }

    /// The task, where its examples come from and how they are cut into inputs.
    concern data: DataSettings {
        /// Task: the GLUE tasks cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli; squad
        /// (v1.1) or squad_v2 (any case, dashes allowed); or custom, with --train, --dev,
        /// --text-columns and --label-column.
        #[arg(long)]
        task: String = computed(c.task.to_string());
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
        /// custom: training file, .csv, .tsv (no quoting, as GLUE) or .jsonl; squad: a
        /// training file in the official JSON format.
        #[arg(long = "train", value_name = "FILE")]
        #[serde(default, skip_serializing_if = "Option::is_none")]
        train: PathBuf = optional(c.custom || c.qa);
        /// custom: dev file, scored after each epoch; its labels must occur in --train.
        /// squad: a dev file in the official JSON format.
        #[arg(long = "dev", value_name = "FILE")]
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dev: PathBuf = optional(c.custom || c.qa);
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
        /// Train on this many training examples (SQuAD: questions), a random sample drawn
        /// with --seed and kept in file order, as Child-Tuning's domain transfer
        /// down-samples its source [default: all].
        #[arg(long)]
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_train_examples: usize = optional(true);
        /// Truncate inputs (longest sentence first) to this many tokens; SQuAD's windows are
        /// this long.
        #[shown(format!("{MAX_SEQ_LEN}; {QA_MAX_SEQ_LEN} for squad, as run_qa.py"))]
        #[arg(long)]
        max_seq_len: usize = computed(o.max_seq_len.unwrap_or(if c.qa { QA_MAX_SEQ_LEN } else { MAX_SEQ_LEN }));
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
    }

    method;
    {
        /// Which parameters train: {methods}; or a union of them joined by `+`
        /// (lora+layernorm: the adapters, every LayerNorm and the head).
        #[arg(long)]
        method: Methods = default(Methods::one(DEFAULT_METHOD));
    }

    /// How the trainable parameters are updated.
    concern optimisation: Optimisation {
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
        /// Skip up to N optimizer steps whose loss or gradient is NaN or infinite instead
        /// of stopping at the first.
        #[arg(long)]
        #[serde(default)]
        skip_nonfinite: usize = default(0);
    }

    /// Where the run goes and when it is scored and saved.
    concern output: OutputSettings {
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
        /// Also evaluate on dev every N optimizer steps [default: only after each epoch].
        #[arg(long)]
        eval_steps: usize = optional(true);
        /// Examples per batch when scoring.
        #[arg(long)]
        eval_batch_size: usize = default(64);
        /// Save a resumable checkpoint every N optimizer steps, besides each epoch's end
        /// and Ctrl-C [default: only those].
        #[arg(long)]
        #[serde(default)]
        save_steps: usize = optional(true);
        /// Where the run reports, comma-separated: jsonl (RUN/metrics.jsonl, always
        /// written), tensorboard (event files in RUN/tensorboard/), mlflow (the server at
        /// $MLFLOW_TRACKING_URI).
        #[arg(long, value_delimiter = ',')]
        #[serde(default)]
        report_to: Vec<Tracker> = default(vec![Tracker::Jsonl]);
        /// Report the training loss, learning rate, gradient norm and tokens/s to the
        /// trackers every N optimizer steps (Hugging Face Trainer's logging_steps).
        #[arg(long)]
        #[serde(default)]
        logging_steps: usize = default(DEFAULT_LOGGING_STEPS);
        /// The MLflow experiment a run reports to [default: the task's name].
        #[arg(long)]
        #[serde(default)]
        mlflow_experiment: String = optional(true);
    }
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

/// A flag given for a run it does not apply to is refused, naming the method. (The custom
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
/// Hugging Face Trainer's default. (A run saved before the setting existed reads 0: no
/// step logging, which it had none of.)
const DEFAULT_LOGGING_STEPS: usize = 500;

/// A place a run reports to, beside its own files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Tracker {
    /// RUN/metrics.jsonl, which every run writes.
    Jsonl,
    /// TensorBoard event files in RUN/tensorboard/.
    Tensorboard,
    /// An MLflow tracking server, at $MLFLOW_TRACKING_URI.
    Mlflow,
}

impl Shown for Vec<Tracker> {
    fn shown(&self) -> String {
        let names: Vec<String> = self.iter().map(|t| t.shown()).collect();
        names.join(",")
    }
}
crate::shown_by_value_enum!(Tracker);

crate::shown_by_value_enum!(CustomProblem, Precision);

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
        let d = &self.data;
        if d.task == CUSTOM {
            crate::data::custom::spec(
                d.problem.unwrap_or(CustomProblem::Classification),
                labels,
                d.text_columns.as_deref().unwrap_or_default(),
            )
        } else {
            crate::data::task(&d.task)
        }
    }

    /// How a SQuAD run picks its answers (for other tasks, the defaults: unused).
    pub fn span_options(&self) -> SpanOptions {
        let d = &self.data;
        SpanOptions {
            n_best: d.n_best.unwrap_or(N_BEST),
            max_answer_length: d.max_answer_length.unwrap_or(MAX_ANSWER_LENGTH),
            null_threshold: d.null_threshold.unwrap_or(0.0),
            v2: d.task == "squad_v2",
        }
    }

    /// The method with the settings its selection reads.
    pub fn method_spec(&self) -> MethodSpec {
        self.method.spec(self.optimisation.seed)
    }

    /// `doc_stride`, with its default.
    pub fn doc_stride(&self) -> usize {
        self.data.doc_stride.unwrap_or(DOC_STRIDE)
    }

    /// The run's methods (`--method`).
    pub fn methods(&self) -> &Methods {
        &self.method.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::child_d::CHILD_TUNING_FISHER_BATCH;
    use crate::methods::fisher_layernorm::{Samples, FISHER_SAMPLES};
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
            (
                cfg.optimisation.lr,
                cfg.optimisation.epochs,
                cfg.method.name
            ),
            (0.5, 2, methods::layernorm::METHOD.into())
        );
        assert_eq!(cfg.data.task, "rte");
        assert_eq!(
            cfg.output.output_dir,
            PathBuf::from("runs/rte-layernorm-42")
        );
        assert_eq!(
            base().resolve().unwrap().optimisation.lr,
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
            assert!(text.contains(&format!("method = \"{}\"", cfg.method.name)));
        }
        let d = base()
            .over(Overrides::from_config(Path::new("child-tuning-d")).unwrap())
            .resolve()
            .unwrap();
        let o = &d.optimisation;
        assert_eq!(
            (o.lr, o.batch_size, o.epochs, o.warmup_ratio),
            (4e-5, 16, 3, 0.0)
        );
        assert_eq!(d.method.child_tuning.as_ref().unwrap().reserve, 0.3);
        let fisher = d.method.fisher.unwrap();
        assert_eq!(
            (fisher.batch_mean, fisher.samples),
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
            let mut o = Overrides {
                method: Some(methods::fisher_layernorm::METHOD.into()),
                ..base()
            };
            o.methods.subset.fraction = Some(0.2);
            o.over(extra).resolve().unwrap()
        };
        let fisher = |cfg: &TrainConfig| cfg.method.fisher.clone().unwrap();
        let cfg = ranked(Overrides::default());
        assert_eq!(fisher(&cfg).samples, Some(Samples::Count(FISHER_SAMPLES)));
        assert_eq!(fisher(&cfg).batch_mean, None);
        let all: Overrides = toml::from_str("fisher_samples = \"all\"").unwrap();
        assert_eq!(fisher(&ranked(all)).samples, Some(Samples::All));
        let n: Overrides = toml::from_str("fisher_samples = 200").unwrap();
        assert_eq!(fisher(&ranked(n)).samples, Some(Samples::Count(200)));
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
        assert_eq!(
            d.method.fisher.unwrap().batch_mean,
            Some(CHILD_TUNING_FISHER_BATCH)
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let err = Overrides::from_toml_text("lrr = 0.1", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("lrr"), "{err}");
        // A method's own key, misspelt, beside the flattened ones.
        let err = Overrides::from_toml_text("lora_rr = 4", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("c.toml:1: unknown key `lora_rr`; did you mean `lora_r`?"),
            "{err}"
        );
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
