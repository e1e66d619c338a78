//! `peft merge`: turn a run into a plain Hugging Face model directory that
//! `AutoModelForSequenceClassification.from_pretrained` loads with no adapter code:
//! trained tensors (optionally WiSE-FT-interpolated) over the base, LoRA folded in.

use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::Tensor;
use clap::Args;
use serde_json::{json, Value};

use crate::cli::run_args::RunArgs;
use crate::data::Problem;
use crate::error::{user, PathContext};
use crate::model::Arch;
use crate::run::dir as run_dir;

/// Tokenizer files a model directory may carry; whichever the base has are copied.
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "spm.model",
    "spiece.model",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

#[derive(Args, Debug)]
pub struct MergeArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// The model directory to write.
    #[arg(long)]
    pub output: PathBuf,
    /// Write θ₀ + A·(θ − θ₀) (WiSE-FT; for LoRA, A scales the adapter's delta). The head
    /// is always the trained one.
    #[arg(long, default_value_t = 1.0)]
    pub alpha: f64,
    /// Write into a non-empty --output.
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run(args: MergeArgs) -> Result<()> {
    if !args.alpha.is_finite() {
        return Err(user(format!(
            "--alpha: {} is not a finite number",
            args.alpha
        )));
    }
    refuse_a_run(&args.output, &args.run.checkpoint)?;
    let run = args.run.load()?;
    let mut weights = run.merged(args.alpha)?;
    // XLNet's mask_emb (the query stream's) was left out of the run, which never reads
    // it; XLNetModel holds it, so the base's goes back. (DeBERTa's switched-off tables
    // stay out: transformers' DeBERTa has no module for them.)
    let arch = run.config.model_type;
    if arch == Arch::Xlnet {
        for (name, t) in crate::model::load::read_weights(&run.model_dir, arch)? {
            if run.config.leaves_out(&name) {
                weights.entry(name).or_insert(t);
            }
        }
    }
    prepare(&args.output, args.overwrite)?;
    let lock = crate::run::lock::acquire(&args.output)?;

    let spec = run.info.train.task_spec(run.info.labels.as_deref())?;
    // Without a pooler the task model has none (transformers would warn about it).
    let named = weights
        .into_iter()
        .map(|(n, t)| (arch.task_model_name(&n), t))
        .collect::<std::collections::HashMap<String, Tensor>>();
    run_dir::save_tensors(&args.output.join("model.safetensors"), &named)?;

    let base_cfg = run.model_dir.join("config.json");
    let text = std::fs::read_to_string(&base_cfg).path_context("cannot read", &base_cfg)?;
    let mut cfg: Value =
        serde_json::from_str(&text).map_err(|e| user(format!("{}: {e}", base_cfg.display())))?;
    set_task(&mut cfg, arch, spec.problem, run.info.num_labels)?;
    run_dir::write_atomic(
        &args.output.join("config.json"),
        serde_json::to_string_pretty(&cfg)?.as_bytes(),
    )?;
    for f in TOKENIZER_FILES {
        let src = run.model_dir.join(f);
        if src.is_file() {
            let dst = args.output.join(f);
            // Through a fresh temporary file, never std::fs::copy: that would write
            // through a symlink planted at the destination.
            let bytes = std::fs::read(&src).path_context("cannot read", &src)?;
            run_dir::write_atomic(&dst, &bytes)?;
        }
    }
    // The card: the merged state's evaluation (the best one, or the last), none for a
    // WiSE-FT mix, which no evaluation scored.
    let records = crate::report::runs::read_records(&args.run.checkpoint.join(run_dir::METRICS))?;
    let record = match args.run.which {
        crate::run::weights::Which::Best => records.iter().rev().find(|r| r.best),
        crate::run::weights::Which::Last => records.last(),
    }
    .filter(|_| args.alpha == 1.0);
    let from = crate::run::card::Kind::Merged {
        from: &args.run.checkpoint,
    };
    crate::run::card::write(&args.output, &run.info, spec, record, from)?;
    // A model directory, not a run: the lock file goes before the lock does (a writer
    // that comes later is welcome; one that came during the merge was refused).
    let _ = std::fs::remove_file(args.output.join(crate::run::lock::LOCK));
    drop(lock);
    println!(
        "wrote {} ({} tensors, alpha {})",
        args.output.display(),
        named.len(),
        args.alpha
    );
    Ok(())
}

/// `--output` may not be the run being merged, nor any other run: `--overwrite` would
/// replace that run's config.json with a model's.
fn refuse_a_run(output: &Path, checkpoint: &Path) -> Result<()> {
    let same = match (output.canonicalize(), checkpoint.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same {
        return Err(user(format!(
            "--output {} is the run being merged; write the model to another directory",
            output.display()
        )));
    }
    if output.join(run_dir::BEST).exists() || output.join(run_dir::METRICS).exists() {
        return Err(user(format!(
            "--output {} holds a peft run ({} or {}); write the model to another directory",
            output.display(),
            run_dir::BEST,
            run_dir::METRICS
        )));
    }
    Ok(())
}

fn prepare(dir: &Path, overwrite: bool) -> Result<()> {
    let non_empty = dir
        .read_dir()
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if non_empty && !overwrite {
        return Err(user(format!(
            "{} is not empty; pass --overwrite to write into it",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).path_context("cannot create", dir)
}

/// The base's config with the run's task head: architecture, labels, problem type.
fn set_task(cfg: &mut Value, arch: Arch, problem: Problem, num_labels: usize) -> Result<()> {
    let obj = cfg
        .as_object_mut()
        .ok_or_else(|| user("the base model's config.json is not a JSON object"))?;
    // transformers' AutoModelForQuestionAnswering builds XLNet's simple span head
    // (`qa_outputs`), which is ours.
    let head = match problem {
        Problem::Span { .. } if arch == Arch::Xlnet => "ForQuestionAnsweringSimple",
        Problem::Span { .. } => "ForQuestionAnswering",
        _ => "ForSequenceClassification",
    };
    let family = arch.class_stem();
    obj.insert("architectures".into(), json!([format!("{family}{head}")]));
    let names: Vec<String> = match problem {
        Problem::Classification { labels } if labels.len() == num_labels => {
            labels.iter().map(|s| s.to_string()).collect()
        }
        _ => (0..num_labels).map(|i| format!("LABEL_{i}")).collect(),
    };
    let id2label: serde_json::Map<String, Value> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (i.to_string(), json!(n)))
        .collect();
    let label2id: serde_json::Map<String, Value> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), json!(i)))
        .collect();
    obj.insert("num_labels".into(), json!(num_labels));
    obj.insert("id2label".into(), Value::Object(id2label));
    obj.insert("label2id".into(), Value::Object(label2id));
    if num_labels == 1 {
        obj.insert("problem_type".into(), json!("regression"));
    } else {
        obj.remove("problem_type");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::task;

    #[test]
    fn task_config_names_labels_and_regression() {
        let mut cfg = json!({"model_type": "bert", "id2label": {"0": "A", "1": "B", "2": "C"}});
        set_task(&mut cfg, Arch::Bert, task("rte").unwrap().problem, 2).unwrap();
        assert_eq!(
            cfg["architectures"],
            json!(["BertForSequenceClassification"])
        );
        assert_eq!(
            cfg["id2label"],
            json!({"0": "entailment", "1": "not_entailment"})
        );
        assert_eq!(cfg["num_labels"], 2);
        assert!(cfg.get("problem_type").is_none());

        set_task(&mut cfg, Arch::Roberta, task("stsb").unwrap().problem, 1).unwrap();
        assert_eq!(
            cfg["architectures"],
            json!(["RobertaForSequenceClassification"])
        );
        assert_eq!(cfg["problem_type"], "regression");
        assert_eq!(cfg["id2label"], json!({"0": "LABEL_0"}));
        assert_eq!(cfg["label2id"], json!({"LABEL_0": 0}));

        set_task(
            &mut cfg,
            Arch::Electra,
            task("squad_v2").unwrap().problem,
            2,
        )
        .unwrap();
        assert_eq!(cfg["architectures"], json!(["ElectraForQuestionAnswering"]));
        assert_eq!(cfg["num_labels"], 2);
        assert!(cfg.get("problem_type").is_none());
    }
}
