//! Where settings come from besides flags: TOML files and the built-in recipes, and the
//! resolution of what is given into a checked [`TrainConfig`].

use std::path::Path;

use anyhow::Result;

use super::{Context, Overrides, TrainConfig, DEFAULT_METHOD};
use crate::data::CUSTOM;
use crate::error::{user, PathContext};
use crate::methods::Methods;

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
    ("loreft", include_str!("../../configs/loreft.toml")),
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
  loreft             LoReFT as pyreft's GLUE example (Wu et al., 2024)
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

    pub fn from_toml_text(text: &str, path: &Path) -> Result<Self> {
        // Keys are checked before the values: the methods' own come in flattened, and serde
        // cannot refuse unknown keys beside flattened ones.
        let table: toml::Table = toml::from_str(text).map_err(|e| located(text, path, e))?;
        if let Some(key) = Overrides::unknown_key(table.keys()) {
            let (msg, key) = explain_toml(&format!("unknown field `{key}`"));
            return Err(user(format!(
                "{}{}: {msg}",
                path.display(),
                line_of(text, key.as_deref())
                    .map(|l| format!(":{}", l + 1))
                    .unwrap_or_default()
            )));
        }
        toml::from_str(text).map_err(|e| located(text, path, e))
    }

    /// The first of `keys` that is no setting's.
    pub fn unknown_key<'a>(keys: impl IntoIterator<Item = &'a String>) -> Option<&'a str> {
        let known = Overrides::keys();
        keys.into_iter()
            .map(String::as_str)
            .find(|k| !known.contains(k))
    }
}

/// The line a key is set on.
fn line_of(text: &str, key: Option<&str>) -> Option<usize> {
    key.and_then(|k| {
        text.lines().position(|l| {
            l.trim_start()
                .strip_prefix(k)
                .is_some_and(|r| r.trim_start().starts_with('='))
        })
    })
}

/// A TOML error, with the file and the line it is on.
fn located(text: &str, path: &Path, e: toml::de::Error) -> anyhow::Error {
    {
        {
            let (msg, key) = explain_toml(e.message());
            // serde reports an unknown key at its table: find the key's own line.
            let at = line_of(text, key.as_deref()).or_else(|| {
                e.span()
                    .map(|s| text[..s.start.min(text.len())].lines().count().max(1) - 1)
            });
            let line = at.map(|l| format!(":{}", l + 1)).unwrap_or_default();
            user(format!("{}{line}: {msg}", path.display()))
        }
    }
}

impl Overrides {
    /// True when nothing is set: `--resume` takes the run's own settings and no others.
    pub fn is_empty(&self) -> bool {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_object().map(|o| o.values().all(|x| x.is_null())))
            .unwrap_or(false)
    }

    /// Fill what is unset with defaults and check every value.
    pub fn resolve(self) -> Result<TrainConfig> {
        let task_name = self
            .task
            .clone()
            .ok_or_else(|| user("no task: pass --task (e.g. --task rte)"))?;
        let custom = custom_data(&self, &task_name)?;
        let task = match custom {
            true => CUSTOM,
            false => crate::data::tasks::task(&task_name)?.name,
        };
        let method = self.method.clone().unwrap_or(Methods::one(DEFAULT_METHOD));
        let qa = !custom && crate::data::tasks::task(task)?.is_qa();
        let cfg = self.fill(&Context {
            method,
            custom,
            qa,
            task,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }
}

impl TrainConfig {
    /// A run's settings as its config.json holds them: grouped by concern, or flat as
    /// versions before the grouping saved them (and without `lora_rslora` before rsLoRA).
    /// Either way they are resolved as flags are (each value's range, the flags that apply
    /// to the method and task, the custom data's files), and a setting the run depends on
    /// that the file lacks is refused rather than filled with a default: a LoRA run
    /// without `lora_r` would silently score without its adapters.
    pub fn from_saved(value: serde_json::Value) -> Result<TrainConfig> {
        let grouped = value.get("optimisation").is_some();
        let given: Overrides = if grouped {
            // Named by its path (`method.lora: missing field `r``), not only its leaf.
            serde_path_to_error::deserialize::<_, TrainConfig>(value)
                .map_err(|e| user(format!("{}: {}", e.path(), e.inner())))?
                .flat()
        } else {
            let keys = value.as_object().map(|o| o.keys());
            if let Some(key) = keys.and_then(Overrides::unknown_key) {
                return Err(user(format!("unknown field `{key}`")));
            }
            serde_json::from_value(value).map_err(|e| user(e.to_string()))?
        };
        let mut resolved = given.clone().resolve()?;
        let (recorded, filled) = (
            serde_json::to_value(&given)?,
            serde_json::to_value(resolved.flat())?,
        );
        // `data_dir` may be filled from $PEFT_GLUE_DIR, `lora_rslora` reads as false when
        // absent, and where a run reports (`report_to`, `logging_steps`, added later)
        // changes nothing it trained.
        const MAY_BE_ABSENT: [&str; 4] = ["data_dir", "lora_rslora", "report_to", "logging_steps"];
        if let (Some(recorded), Some(filled)) = (recorded.as_object(), filled.as_object()) {
            for (key, v) in filled {
                let absent = recorded.get(key).is_none_or(|r| r.is_null());
                if absent && !v.is_null() && !MAY_BE_ABSENT.contains(&key.as_str()) {
                    return Err(user(format!(
                        "`{key}` is missing; a run of method {} records it",
                        resolved.method.name
                    )));
                }
            }
        }
        // Where the run read its data, as recorded, whatever $PEFT_GLUE_DIR says now.
        resolved.data.data_dir = given.data_dir;
        Ok(resolved)
    }
}

/// Whether `task` is custom data, after checking that the custom flags are given exactly
/// when it is.
fn custom_data(o: &Overrides, task: &str) -> Result<bool> {
    let custom = task.eq_ignore_ascii_case(CUSTOM);
    if !custom && crate::data::tasks::task(task).is_ok_and(|t| t.is_qa()) {
        return qa_files(o);
    }
    let flags = [
        ("--train", o.train.is_some()),
        ("--dev", o.dev.is_some()),
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
    for path in [&o.train, &o.dev].into_iter().flatten() {
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

/// SQuAD reads --train and --dev together, in the official format, instead of --data-dir.
fn qa_files(o: &Overrides) -> Result<bool> {
    let columns = [
        ("--text-columns", o.text_columns.is_some()),
        ("--label-column", o.label_column.is_some()),
        ("--problem", o.problem.is_some()),
    ];
    if let Some((flag, _)) = columns.iter().find(|(_, set)| *set) {
        return Err(user(format!(
            "{flag} applies to --task custom; SQuAD reads official-format JSON (--train FILE \
             --dev FILE, or --data-dir)"
        )));
    }
    match (&o.train, &o.dev, &o.data_dir) {
        (Some(_), None, _) | (None, Some(_), _) => Err(user(
            "SQuAD from your own files needs both --train FILE and --dev FILE",
        )),
        (Some(_), Some(_), Some(_)) => Err(user(
            "--data-dir and --train/--dev both name SQuAD files: give one or the other",
        )),
        _ => Ok(false),
    }
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
    // The keys of the methods' own settings come in flattened, and serde then lists none.
    let _ = expected;
    let valid = Overrides::keys();
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
