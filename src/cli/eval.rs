//! `peft eval`: rebuild a run's model from its base weights plus the trained tensors and
//! score it on a split; for a test split, write the GLUE submission file. With --alpha,
//! score interpolations between base and run instead. Without a run, score a
//! sequence-classification checkpoint (`--model --task`) or a PEFT LoRA adapter over its
//! base (`--adapter --model --task`).

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::data::{Problem, Source, CUSTOM};
use crate::error::user;
use crate::metrics::{evaluate, Predictions};
use crate::run::dir as run_dir;
use crate::run::weights::{RunWeights, Which};
use crate::settings::Overrides;
use crate::{data::dataset::Dataset, eval::predict};

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A run directory written by `peft train`.
    #[arg(long, required_unless_present = "task")]
    pub checkpoint: Option<PathBuf>,
    /// Which saved state of the run to use.
    #[arg(long, value_enum, default_value_t = Which::Best, requires = "checkpoint")]
    pub which: Which,
    /// With --checkpoint: the base model, if it moved since training [default: the
    /// run's]. Without: the model to score, a sequence-classification checkpoint
    /// (directory or hub id), or the base of --adapter.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Branch, tag or commit of a hub --model [default: main].
    #[arg(long, requires = "model")]
    pub revision: Option<String>,
    /// Score --model (or --adapter over it) on this GLUE task; the checkpoint's labels
    /// (id2label) are matched to the task's by name. With --checkpoint: score the run on
    /// another classification task (domain transfer), its labels read as the task's by
    /// name or through --label-map, reported as that task's metrics.
    #[arg(long)]
    pub task: Option<String>,
    /// With --checkpoint and --task: which of the task's labels each of the run's labels
    /// counts as, e.g. neutral=not_entailment,contradiction=not_entailment (MNLI's onto
    /// RTE's); labels of the same name need no entry.
    #[arg(
        long,
        value_delimiter = ',',
        requires = "checkpoint",
        requires = "task"
    )]
    pub label_map: Option<Vec<String>>,
    /// A LoRA adapter directory saved by Hugging Face PEFT (adapter_config.json,
    /// adapter_model.safetensors with the classifier in modules_to_save), applied to --model.
    #[arg(long, requires = "task", conflicts_with = "checkpoint")]
    pub adapter: Option<PathBuf>,
    /// Without --checkpoint: truncate inputs to this many tokens [default: 128].
    #[arg(long, conflicts_with = "checkpoint")]
    pub max_seq_len: Option<usize>,
    /// dev, test, train, or a split's own name (dev_matched, test_mismatched, ...).
    #[arg(long, default_value = "dev")]
    pub split: String,
    /// GLUE data directory [default: the run's; none: nyu-mll/glue from the hub].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// cpu, cuda or cuda:N [default: the run's].
    #[arg(long)]
    pub device: Option<String>,
    /// Where to write the submission file for a test split [default: in the run directory,
    /// or the current directory without one].
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Also write every example's prediction and logits to FILE, one JSON object a line
    /// ({"split", "id", "prediction", "logits"}, with "alpha" under --alpha). SQuAD: the
    /// official predictions file ({"question id": "answer"}), and for squad_v2 the null
    /// score differences beside it (FILE.null_odds.json, the official --na-prob-file).
    #[arg(long, value_name = "FILE")]
    pub predictions: Option<PathBuf>,
    /// Print metrics as one JSON object per split.
    #[arg(long)]
    pub json: bool,
    /// Score θ₀ + A·(θ − θ₀) for each A (WiSE-FT): 0 is the base encoder with the trained
    /// head, 1 the run; for adapters, A scales their delta. E.g. --alpha 0,0.5,1.
    #[arg(long, value_delimiter = ',')]
    pub alpha: Option<Vec<f64>>,
}

pub fn run(args: EvalArgs) -> Result<()> {
    if args.checkpoint.is_none() && args.model.is_none() {
        return Err(user(
            "--task scores --model (or --adapter over it), or with --checkpoint a run on \
             another task: pass one of them",
        ));
    }
    let mut run = match &args.checkpoint {
        Some(dir) => RunWeights::load(
            dir,
            args.which,
            args.model.as_deref(),
            args.revision.as_deref(),
        )?,
        None => {
            let cfg = Overrides {
                model: args.model.clone(),
                revision: args.revision.clone(),
                task: args.task.clone(),
                data_dir: args.data_dir.clone(),
                max_seq_len: args.max_seq_len,
                ..Default::default()
            }
            .resolve()?;
            if cfg.data.task == CUSTOM {
                return Err(user(
                    "--task custom scores runs of `peft train --task custom` (--checkpoint); \
                     a checkpoint trained elsewhere is scored on a GLUE task",
                ));
            }
            RunWeights::external(cfg, args.adapter.as_deref())?
        }
    };
    // A copy: building each alpha's model borrows the run mutably.
    let info = &run.info.clone();
    let alphas = match &args.alpha {
        Some(_) if args.checkpoint.is_none() && args.adapter.is_none() => {
            return Err(user(
                "--alpha interpolates between a base model and its fine-tuned weights: it \
                 needs --checkpoint or --adapter",
            ))
        }
        Some(a) => {
            if let Some(bad) = a.iter().find(|v| !v.is_finite()) {
                return Err(user(format!("--alpha: {bad} is not a finite number")));
            }
            if args.split.starts_with("test") {
                return Err(user(
                    "--alpha scores labelled splits; it writes no test submissions",
                ));
            }
            a.clone()
        }
        None => vec![1.0],
    };
    let device = crate::device::parse(args.device.as_deref().unwrap_or(&info.train.model.device))?;
    let run_spec = info.train.task_spec(info.labels.as_deref())?;
    // Another task (domain transfer): its data and metrics, the run's outputs mapped.
    let transfer = match (&args.checkpoint, &args.task) {
        (Some(_), Some(task)) => {
            let to = crate::data::task(task)?;
            let map = crate::data::labels::parse_label_map(
                args.label_map.as_deref().unwrap_or_default(),
            )?;
            Some((to, crate::data::labels::transfer_map(run_spec, to, &map)?))
        }
        _ => None,
    };
    let spec = transfer.as_ref().map_or(run_spec, |(to, _)| *to);
    let encoder = crate::run::setup::encoder(&info.train, &run.model_dir, &run.config)?;
    let source = match &args.data_dir {
        Some(_) if info.train.data.task == CUSTOM && transfer.is_none() => {
            return Err(user(
                "--data-dir applies to GLUE runs; a custom run reads the files it trained on",
            ))
        }
        Some(dir) => Source::GlueDir(dir.clone()),
        // A custom run scored on a GLUE task reads it from the hub.
        None if transfer.is_some() && info.train.data.task == CUSTOM => Source::GlueHub,
        None => crate::run::setup::source(&info.train)?,
    };
    if let Some((to, ids)) = &transfer {
        let pairs: Vec<String> = run_spec
            .label_names()
            .iter()
            .zip(ids)
            .map(|(from, &i)| format!("{from}→{}", to.label_names()[i as usize]))
            .collect();
        eprintln!(
            "scoring the {} run on {} as {}",
            run_spec.name,
            to.name,
            pairs.join(", ")
        );
    }
    let splits: Vec<String> = match args.split.as_str() {
        "dev" => spec.dev_splits.iter().map(|s| s.to_string()).collect(),
        "test" => spec.test_splits.iter().map(|s| s.to_string()).collect(),
        other => vec![other.to_string()],
    };
    if splits.is_empty() {
        return Err(user(format!(
            "a {} run has no {} split",
            spec.name, args.split
        )));
    }
    let data = splits
        .iter()
        .map(|s| Dataset::load(spec, &source, s, &encoder))
        .collect::<Result<Vec<_>>>()?;
    if spec.is_qa() {
        return answers(&args, &mut run, &data, &alphas, &device, encoder.pad_id());
    }
    let mut lines = String::new();
    for &alpha in &alphas {
        let model = run.model(alpha, &device)?;
        for (split, data) in splits.iter().zip(&data) {
            if args.predictions.is_some() {
                let logits = crate::eval::logits(
                    &model,
                    &data.inputs,
                    encoder.pad_id(),
                    info.train.output.eval_batch_size,
                    &device,
                )?;
                for (id, row) in data.ids.iter().zip(&logits) {
                    // The run's own label, then, transferred, the task's it counts as.
                    let mut prediction = predicted(run_spec.problem, row);
                    if let (Some((to, ids)), Some(top)) = (&transfer, crate::eval::softmax_top(row))
                    {
                        prediction = to.label_names()[ids[top.0] as usize].into();
                    }
                    let mut v = serde_json::json!({
                        "split": split,
                        "id": id,
                        "prediction": prediction,
                        "logits": row,
                    });
                    if args.alpha.is_some() {
                        v["alpha"] = alpha.into();
                    }
                    let _ = writeln!(lines, "{v}");
                }
            }
            let mut preds = predict(
                &model,
                data,
                encoder.pad_id(),
                info.train.output.eval_batch_size,
                &device,
            )?;
            if let (Some((_, ids)), Predictions::Classes(classes)) = (&transfer, &mut preds) {
                for c in classes.iter_mut() {
                    *c = ids[*c as usize];
                }
            }
            if split.starts_with("test") {
                let path = match &args.output {
                    Some(p) if p.is_dir() => p.join(spec.submission_name(split)),
                    Some(p) => p.clone(),
                    None => match &args.checkpoint {
                        Some(dir) => dir.join(spec.submission_name(split)),
                        None => PathBuf::from(spec.submission_name(split)),
                    },
                };
                run_dir::write_atomic(&path, submission(spec.problem, data, &preds).as_bytes())?;
                println!(
                    "{split}: wrote {} predictions to {}",
                    data.len(),
                    path.display()
                );
                continue;
            }
            let metrics = evaluate(spec, &preds, &data.labels)?;
            print_metrics(
                split,
                &metrics,
                args.alpha.is_some().then_some(alpha),
                args.json,
            );
        }
    }
    if let Some(path) = &args.predictions {
        run_dir::write_atomic(path, lines.as_bytes())?;
    }
    Ok(())
}

/// SQuAD: answer every question, score the answers as the official script does, and
/// with --predictions write them in its format (`{"question id": "answer"}`), the null
/// score differences beside them for 2.0 (`FILE` → `FILE.null_odds.json`, its
/// `--na-prob-file`).
fn answers(
    args: &EvalArgs,
    run: &mut RunWeights,
    data: &[Dataset],
    alphas: &[f64],
    device: &candle_core::Device,
    pad: u32,
) -> Result<()> {
    let train = &run.info.train.clone();
    let opts = train.span_options();
    if args.predictions.is_some() && alphas.len() > 1 {
        return Err(user(
            "--predictions writes one answer per question: score one --alpha at a time",
        ));
    }
    for &alpha in alphas {
        let model = run.model(alpha, device)?;
        for d in data {
            let qa =
                d.qa.as_ref()
                    .ok_or_else(|| anyhow::anyhow!("a SQuAD split without questions"))?;
            let logits = crate::eval::spans::window_logits(
                &model,
                d,
                pad,
                train.output.eval_batch_size,
                device,
            )?;
            let a = crate::eval::spans::answers(qa, &logits, opts);
            let metrics = crate::metrics::squad::dev_metrics(
                &qa.examples,
                &a.map(),
                opts.v2.then_some(&a.null_diff[..]),
                opts.v2,
            );
            if let Some(path) = &args.predictions {
                let file: serde_json::Map<String, serde_json::Value> = a
                    .text
                    .iter()
                    .map(|(id, t)| (id.clone(), t.clone().into()))
                    .collect();
                run_dir::write_atomic(path, serde_json::to_string(&file)?.as_bytes())?;
                if opts.v2 {
                    let odds: serde_json::Map<String, serde_json::Value> = a
                        .null_diff
                        .iter()
                        .map(|(id, v)| (id.clone(), (*v).into()))
                        .collect();
                    let mut name = path.as_os_str().to_owned();
                    name.push(".null_odds.json");
                    run_dir::write_atomic(
                        &PathBuf::from(name),
                        serde_json::to_string(&odds)?.as_bytes(),
                    )?;
                }
            }
            print_metrics(
                &d.split,
                &metrics,
                args.alpha.is_some().then_some(alpha),
                args.json,
            );
        }
    }
    Ok(())
}

/// A label's name, or the regression score.
fn predicted(problem: Problem, logits: &[f32]) -> serde_json::Value {
    match problem {
        Problem::Span { .. } => serde_json::Value::Null,
        Problem::Regression { .. } => logits.first().copied().unwrap_or(f32::NAN).into(),
        Problem::Classification { labels } => crate::eval::softmax_top(logits)
            .and_then(|(i, _)| labels.get(i).copied())
            .unwrap_or("?")
            .into(),
    }
}

fn print_metrics(
    split: &str,
    metrics: &std::collections::BTreeMap<String, f64>,
    alpha: Option<f64>,
    json: bool,
) {
    if json {
        let mut v = serde_json::json!({ "split": split, "metrics": metrics });
        if let Some(a) = alpha {
            v["alpha"] = a.into();
        }
        println!("{v}");
    } else {
        let shown: Vec<String> = metrics
            .iter()
            .map(|(k, v)| match crate::metrics::squad::is_fraction(k) {
                true => format!("{k} {:.2}", 100.0 * v),
                false => format!("{k} {v}"),
            })
            .collect();
        let at = alpha.map(|a| format!("alpha {a} ")).unwrap_or_default();
        println!("{at}{split}: {}", shown.join(" "));
    }
}

/// GLUE leaderboard format: `index<TAB>prediction`, labels by name, STS-B scores in [0, 5].
fn submission(problem: Problem, data: &Dataset, preds: &Predictions) -> String {
    let mut out = String::from("index\tprediction\n");
    for (i, id) in data.ids.iter().enumerate() {
        let _ = match (problem, preds) {
            (Problem::Classification { labels }, Predictions::Classes(c)) => {
                writeln!(
                    out,
                    "{id}\t{}",
                    labels.get(c[i] as usize).copied().unwrap_or("?")
                )
            }
            (Problem::Regression { min, max }, Predictions::Scores(s)) => {
                writeln!(out, "{id}\t{:.3}", s[i].clamp(min, max))
            }
            _ => Ok(()),
        };
    }
    out
}
