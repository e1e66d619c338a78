//! A run's model card, `RUN/README.md`, in the Hugging Face hub's format: YAML front
//! matter (`base_model`, `library_name: peft` where the run exports PEFT's format,
//! `datasets`, `metrics`, `tags`, and the dev results as `model-index`), then what was
//! trained, how it scored, the resolved settings and how to load it. `peft merge` writes
//! one for the merged model. Values in the front matter are written as JSON scalars,
//! which YAML reads as they are (a quoted string stays a string, whatever it holds).

use std::path::Path;

use anyhow::Result;
use serde_json::Value;

use super::dir::{self as run_dir, RunInfo};
use super::record::EvalRecord;
use crate::data::TaskSpec;

/// The card's file name in a run or merged-model directory.
pub const CARD: &str = "README.md";

/// What a card describes: a run directory, or a model merged from one.
pub enum Kind<'a> {
    /// The run itself; `peft_format` says whether it holds PEFT's adapter files.
    Run { peft_format: bool },
    /// A full model written by `peft merge` from the run at this path.
    Merged { from: &'a Path },
}

/// The hub's dataset id for a task, where it has one.
fn dataset(task: &str) -> Option<&'static str> {
    match task {
        "squad" => Some("rajpurkar/squad"),
        "squad_v2" => Some("rajpurkar/squad_v2"),
        "cola" | "sst2" | "mrpc" | "stsb" | "qqp" | "mnli" | "qnli" | "rte" | "wnli" => {
            Some("nyu-mll/glue")
        }
        _ => None,
    }
}

/// A YAML list of JSON scalars, indented under its key.
fn list(key: &str, items: &[String]) -> String {
    let mut s = format!("{key}:\n");
    for i in items {
        s.push_str(&format!("- {}\n", Value::from(i.as_str())));
    }
    s
}

/// The card's text for the run `info` (of `spec`) at its evaluation `best` (None: a state
/// no evaluation scored, such as a WiSE-FT merge).
pub fn render(info: &RunInfo, spec: &TaskSpec, best: Option<&EvalRecord>, kind: Kind) -> String {
    let train = &info.train;
    let method = train.method.name.to_string();
    let base = train.model.model.to_string_lossy().into_owned();
    let task = spec.name;
    let pipeline = if spec.is_qa() {
        "question-answering"
    } else {
        "text-classification"
    };
    let mut front = format!("---\nbase_model: {}\n", Value::from(base.as_str()));
    if let Kind::Run { peft_format: true } = kind {
        front.push_str("library_name: peft\n");
    } else {
        front.push_str("library_name: transformers\n");
    }
    front.push_str(&format!("pipeline_tag: {pipeline}\n"));
    if let Some(d) = dataset(task) {
        front.push_str(&list("datasets", &[d.to_string()]));
    }
    let keys: Vec<String> = spec.metrics.iter().map(|m| m.key().to_string()).collect();
    front.push_str(&list("metrics", &keys));
    let mut tags = vec!["peft-rs".to_string(), method.clone(), task.to_string()];
    if let Kind::Merged { .. } = kind {
        tags.push("merged".into());
    }
    front.push_str(&list("tags", &tags));
    // The dev results, as the hub's model-index holds evaluation results.
    let results = best.map(|b| &b.dev).into_iter().flatten();
    if best.is_some() {
        front.push_str("model-index:\n");
        front.push_str(&format!(
            "- name: {}\n  results:\n",
            Value::from(format!("{base} {method} {task}"))
        ));
    }
    for (split, metrics) in results.clone() {
        front.push_str(&format!(
            "  - task:\n      type: {pipeline}\n    dataset:\n"
        ));
        front.push_str(&format!(
            "      name: {}\n      type: {}\n      split: {}\n    metrics:\n",
            Value::from(task),
            Value::from(dataset(task).unwrap_or(task)),
            Value::from(split.as_str())
        ));
        for k in &keys {
            if let Some(v) = metrics.get(k) {
                front.push_str(&format!(
                    "    - type: {k}\n      value: {}\n",
                    Value::from(*v)
                ));
            }
        }
    }
    front.push_str("---\n\n");

    let share = 100.0 * info.trainable_params as f64 / info.total_params.max(1) as f64;
    let mut body = format!(
        "# {method} on {task}\n\n`{base}` fine-tuned on {task} with `--method {method}` by \
         peft {} (a Rust fine-tuning toolkit): {} of {} parameters trained ({share:.3}%).\n\n",
        info.peft_version, info.trainable_params, info.total_params
    );
    if let Kind::Merged { from } = kind {
        body.push_str(&format!(
            "This directory is the run `{}` merged into a full model (`peft merge`): it \
             loads in transformers without peft.\n\n",
            from.display()
        ));
    }
    match best {
        Some(b) => body.push_str(&format!(
            "## Dev results (evaluation at epoch {:.2}, step {})\n\n| split | metric | value |\n|---|---|---:|\n",
            b.epoch, b.step
        )),
        None => body.push_str("## Dev results\n\nThis state was not scored during training.\n"),
    }
    for (split, metrics) in results {
        for k in &keys {
            if let Some(v) = metrics.get(k) {
                body.push_str(&format!("| {split} | {k} | {:.2} |\n", 100.0 * v));
            }
        }
    }
    let settings = serde_json::to_string_pretty(train).unwrap_or_default();
    body.push_str(&format!(
        "\n## Settings\n\n```json\n{settings}\n```\n\n## How to load it\n\n"
    ));
    match kind {
        Kind::Run { peft_format } => {
            body.push_str(
                "Score or use it with peft: `peft eval --checkpoint RUN`, `peft predict \
                 --checkpoint RUN --input FILE`, `peft merge --checkpoint RUN --output DIR`.\n",
            );
            if peft_format {
                let auto = match spec.is_qa() {
                    true => "AutoModelForQuestionAnswering",
                    false => "AutoModelForSequenceClassification",
                };
                let labels = match spec.is_qa() {
                    true => String::new(),
                    false => format!(", num_labels={}", info.num_labels),
                };
                body.push_str(&format!(
                    "\nWith Hugging Face PEFT (`adapter_config.json` and \
                     `adapter_model.safetensors` here):\n\n```python\nfrom peft import \
                     PeftModel\nfrom transformers import {auto}\n\nbase = \
                     {auto}.from_pretrained({}{labels})\nmodel = \
                     PeftModel.from_pretrained(base, \"RUN\")\n```\n",
                    Value::from(base.as_str())
                ));
            }
        }
        Kind::Merged { .. } => body.push_str(
            "`AutoModelForSequenceClassification.from_pretrained(DIR)` (or \
             `AutoModelForQuestionAnswering` for a SQuAD run), or `peft eval --model DIR \
             --task T`.\n",
        ),
    }
    front + &body
}

/// Write the card into `dir`, replacing any earlier one whole.
pub fn write(
    dir: &Path,
    info: &RunInfo,
    spec: &TaskSpec,
    best: Option<&EvalRecord>,
    kind: Kind,
) -> Result<()> {
    let text = render(info, spec, best, kind);
    run_dir::write_atomic(&dir.join(CARD), text.as_bytes())
}
