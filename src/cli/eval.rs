//! `peft eval`: rebuild a run's model from its base weights plus the trained tensors and
//! score it on a split; for a test split, write the GLUE submission file. With --alpha,
//! score interpolations between base and run instead.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::cli::weights::RunArgs;
use crate::data::{run_task, Problem, Source, CUSTOM};
use crate::error::user;
use crate::metrics::{evaluate, Predictions};
use crate::run_dir;
use crate::tokenize::TextEncoder;
use crate::train::dataset::{predict, Dataset};

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// dev, test, train, or a split's own name (dev_matched, test_mismatched, ...).
    #[arg(long, default_value = "dev")]
    pub split: String,
    /// GLUE data directory [default: the run's; none: nyu-mll/glue from the hub].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// cpu, cuda or cuda:N [default: the run's].
    #[arg(long)]
    pub device: Option<String>,
    /// Where to write the submission file for a test split [default: in the run directory].
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Print metrics as one JSON object per split.
    #[arg(long)]
    pub json: bool,
    /// Score θ₀ + A·(θ − θ₀) for each A (WiSE-FT): 0 is the base encoder with the trained
    /// head, 1 the run; for adapters, A scales their delta. E.g. --alpha 0,0.5,1.
    #[arg(long, value_delimiter = ',')]
    pub alpha: Option<Vec<f64>>,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let run = args.run.load()?;
    let info = &run.info;
    let alphas = match &args.alpha {
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
    let device = crate::device::parse(args.device.as_deref().unwrap_or(&info.train.device))?;
    let spec = run_task(&info.train, info.labels.as_deref())?;
    let encoder = TextEncoder::load(&run.model_dir, &run.config, info.train.max_seq_len)?;
    let source = match &args.data_dir {
        Some(_) if info.train.task == CUSTOM => {
            return Err(user(
                "--data-dir applies to GLUE runs; a custom run reads the files it trained on",
            ))
        }
        Some(dir) => Source::GlueDir(dir.clone()),
        None => Source::of(&info.train)?,
    };
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
    for &alpha in &alphas {
        let model = run.model(alpha, &device)?;
        for (split, data) in splits.iter().zip(&data) {
            let preds = predict(
                &model,
                data,
                encoder.pad_id(),
                info.train.eval_batch_size,
                &device,
            )?;
            if split.starts_with("test") {
                let path = match &args.output {
                    Some(p) if p.is_dir() => p.join(spec.submission_name(split)),
                    Some(p) => p.clone(),
                    None => args.run.checkpoint.join(spec.submission_name(split)),
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
    Ok(())
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
            .map(|(k, v)| format!("{k} {:.2}", 100.0 * v))
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
